"""AppTest: what-if forks on the KV-cache and Diffusion pages (ui/fork_form.py stateful_edit). The KV page forks its
run at a step with another policy and budget (the branch replays the run's tokens to there); the Diffusion page
forks with a canvas edit and with another rule; each branch finishes beside the original, no exception."""
from engine import fork
from engine.runner import DONE
from tests.conftest import app_test, shown, wait_done


def _branch(at, key, n=1):
    b = wait_done(at, f"{key}_b{n}")
    at.run()
    assert b.state == DONE and not at.exception, [e.value for e in at.exception]
    return b


def test_kv_page_forks_with_another_policy(embedded_lm):
    at = app_test("pages/3_KV_Cache.py").run()
    at.selectbox(key="kv_policy").set_value("h2o").run()
    at.number_input(key="kv_budget").set_value(24)
    at.number_input(key="kv_max_new").set_value(6)
    at.selectbox(key="kv_watch_layers_preset").set_value("mid")
    at.button(key="kv_go").click().run()
    r = wait_done(at, "runner_kv_a")
    at.run()
    assert r.state == DONE and not at.exception
    n = len(r.trace.steps)
    at.number_input(key=f"kv_fk_step_0_{n}_{n - 1}").set_value(3).run()
    assert at.selectbox(key="kv_fk_0_kv_policy").value == "h2o"      # the widgets start at the run's values
    assert at.number_input(key="kv_fk_0_kv_budget").value == 24
    at.selectbox(key="kv_fk_0_kv_policy").set_value("streaming_llm").run()
    at.number_input(key="kv_fk_0_kv_budget").set_value(16).run()
    at.button(key="kv_fk_go").click().run()
    assert not at.error, shown(at.error)
    b = _branch(at, "runner_kv_a")
    f = b.trace.meta["fork"]
    assert f["at_step"] == 3 and f["edit"]["options"] == {"policy": "streaming_llm", "budget": 16}
    # the decoder kept the run's snapshots (step 1): the page's fork replays steps 1-2 only
    assert f["replay_from"] == 1 and f["cost_forwards"] == 2, f
    assert fork.output_ids(b.trace)[:3] == r.trace.final_ids[:3]
    assert [s["cache_len"] for s in b.trace.steps] == [16] * (n - 3)
    html = "".join(m.value for m in at.markdown)
    assert "branch 1" in html and "2 replayed forwards" in "".join(c.value for c in at.caption)
    assert list(at.dataframe[-1].value["run"]) == ["original", "branch 1"] and not at.exception


def test_diffusion_page_forks_with_a_canvas_edit_and_another_rule(embedded_lm):
    at = app_test("pages/5_Diffusion.py").run()
    at.text_area(key="dlm_prompt").input("Name a fruit.")
    at.number_input(key="dlm_gen_length").set_value(8)
    at.number_input(key="dlm_block_length").set_value(4)
    at.number_input(key="dlm_steps").set_value(4)
    at.checkbox(key="dlm_stop_at_eos").uncheck()
    at.button(key="dlm_go").click().run()
    r = wait_done(at, "runner_diffusion")
    at.run()
    assert r.state == DONE and not at.exception, [e.value for e in at.exception]
    n = len(r.trace.steps)
    at.number_input(key=f"dlm_fk_step_0_{n}_{n - 1}").set_value(1).run()
    at.radio(key="dlm_fk_0_dlm_what").set_value("set a position to a token").run()
    at.number_input(key="dlm_fk_0_dlm_pos").set_value(6).run()
    at.text_input(key="dlm_fk_0_dlm_text").input(" apple").run()
    at.button(key="dlm_fk_go").click().run()
    assert not at.error, shown(at.error)
    b = _branch(at, "runner_diffusion")
    apple = embedded_lm.tokenizer.encode(" apple", add_special_tokens=False)[0]
    assert b.trace.meta["fork"]["edit"]["canvas"]["position"] == 6 and b.trace.final_ids[6] == apple
    assert "position 6" in "".join(c.value for c in at.caption)
    # another rule from step 2 on, no canvas edit
    at.radio(key="dlm_fk_0_dlm_what").set_value("none")
    at.number_input(key=f"dlm_fk_step_0_{n}_{n - 1}").set_value(2).run()
    at.checkbox(key="dlm_fk_0_dlm_rule_on").check().run()
    assert at.selectbox(key="dlm_fk_0_dlm_rule").value == "low_confidence"
    at.selectbox(key="dlm_fk_0_dlm_rule").set_value("threshold").run()
    at.button(key="dlm_fk_go").click().run()
    assert not at.error, shown(at.error)
    b2 = _branch(at, "runner_diffusion", 2)
    assert b2.trace.meta["params"]["rule"] == "threshold" and len(b2.trace.final_ids) == 8
    assert not at.exception
