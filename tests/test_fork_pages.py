"""AppTest: what-if forks on the pages (ui/branches.py). The Autoregressive page forks its run at a step with
another token (the form, and a clicked candidate bar's request), the branch decodes beside the original and
both runs' metrics are drawn; a refused fork is a message; the Speculative page forks to another method."""
import pytest

from engine import fork
from engine.runner import DONE
from tests.conftest import app_test, shown, wait_done

N = 10


def _generate(at, prompt="Name a fruit.", n=N, ignore_eos=True):
    at.text_area(key="ar_prompt").input(prompt)
    at.number_input(key="ar_max_new").set_value(n)
    if ignore_eos:
        at.checkbox(key="ar_ignore_eos").check()
    at.button(key="ar_go").click().run()
    r = wait_done(at, "runner_ar")
    at.run()
    assert r.state == DONE and not at.exception
    return r


def _branch(at, n=1, key="runner_ar"):
    b = wait_done(at, f"{key}_b{n}")
    at.run()
    assert b.state == DONE and not at.exception, [e.value for e in at.exception]
    return b


def test_fork_with_the_form_and_side_by_side(embedded_lm):
    at = app_test("pages/1_Autoregressive.py").run()
    r = _generate(at)
    n = len(r.trace.steps)
    at.number_input(key=f"ar_fk_step_0_{n}_{n - 1}").set_value(4).run()
    rec = r.trace.steps[4]
    other = next(c["id"] for c in rec["candidates"] if c["id"] != rec["token_id"])
    at.selectbox(key="ar_fk_tok_0_4").set_value(other)
    at.button(key="ar_fk_go").click().run()
    assert not at.exception and not at.error, shown(at.error)
    b = _branch(at)
    out = fork.output_ids(b.trace)
    assert out[:4] == r.trace.final_ids[:4] and out[4] == other and len(out) == N
    assert b.trace.meta["fork"]["parent"] == 0 and b.trace.meta["fork"]["at_step"] == 4
    html = "".join(m.value for m in at.markdown)
    assert "first divergence at position 4" in html and "branch 1" in html
    table = at.dataframe[-1].value
    assert list(table["run"]) == ["original", "branch 1"] and list(table["first divergence"]) == [4, 4]
    assert list(table["tokens"]) == [N, N] and table["judged perplexity"].notna().all()
    # step-through controls on each side: the branch's Back moves the branch only
    at.button(key="runner_ar_b1_back").click().run()
    assert b.cursor == len(b.trace.steps) - 2 and r.cursor == n - 1 and not at.exception
    at.button(key="runner_ar__orig_back").click().run()
    assert r.cursor == n - 2 and not at.exception
    # a branch of the branch, and the tree holds both
    at.selectbox(key="ar_fk_from").set_value(1).run()
    at.button(key="ar_fk_go").click().run()
    b2 = _branch(at, 2)
    assert fork.output_ids(b2.trace) == out and b2.trace.meta["fork"]["parent"] == 1
    assert len(at.get("plotly_chart")) >= 3 and not at.exception
    # the download holds the original and both branches
    from ui.branches import bundle
    t = bundle(r.trace, [(1, 0, b.trace), (2, 1, b2.trace)])
    assert [x.meta["fork"]["parent"] for x in t.branches] == [0, 1]


def test_a_clicked_bar_forks_and_bad_forks_are_messages(embedded_lm):
    at = app_test("pages/1_Autoregressive.py").run()
    r = _generate(at, n=6)
    rec = r.trace.steps[2]
    other = next(c["id"] for c in rec["candidates"] if c["id"] != rec["token_id"])
    at.session_state["runner_ar__pending"] = (2, other)     # what the chart's selection callback leaves
    at.run()
    b = _branch(at)
    assert fork.output_ids(b.trace)[2] == other and fork.output_ids(b.trace)[:2] == r.trace.final_ids[:2]
    # a typed text that is not one token: the engine's reason, no traceback, the original untouched
    before = r.trace.to_json()
    at.text_input(key="ar_fk_text").input("hello world and more")
    at.button(key="ar_fk_go").click().run()
    assert not at.exception
    assert any("not one" in e for e in shown(at.error)), shown(at.error)
    assert r.trace.to_json() == before and "runner_ar_b2" not in at.session_state


def _finished(page: str, p: str, runner: str, prompt: str, max_new: int):
    """The page run to the end on `prompt` (keys f"{p}_prompt", f"{p}_max_new", f"{p}_go"): (app, runner)."""
    at = app_test(page).run()
    at.text_area(key=f"{p}_prompt").input(prompt)
    at.number_input(key=f"{p}_max_new").set_value(max_new)
    at.button(key=f"{p}_go").click().run()
    r = wait_done(at, runner)
    at.run()
    assert r.state == DONE and not at.exception
    return at, r


def test_speculative_page_forks_to_another_method(embedded_lm):
    at, r = _finished("pages/2_Speculative.py", "spec", "runner_spec", "Repeat: the cat sat on the mat. the cat sat on the mat.", 10)
    at.selectbox(key="spec_fk_method").set_value("ar").run()
    at.button(key="spec_fk_go").click().run()
    assert not at.error, shown(at.error)
    b = _branch(at, key="runner_spec")
    assert b.trace.meta["method"] == "ar" and fork.output_ids(b.trace) == r.trace.final_ids   # greedy, lossless
    assert not at.exception


def _branched(tiny_lm):
    from engine import run
    orig = run.run(tiny_lm, "ar", "a b a b a b c d", max_new_tokens=8, ignore_eos=True)
    b1 = fork.run_fork(tiny_lm, orig, 3, token=9)
    b1.meta["fork"]["parent"] = 0
    b2 = fork.run_fork(tiny_lm, b1, 2, method="speculative", options={"drafter": "prompt_lookup"})
    b2.meta["fork"]["parent"] = 1
    orig.branches = [b1, b2]
    return orig


@pytest.mark.slow
def test_replay_shows_a_branched_trace(tiny_lm):
    data = _branched(tiny_lm).to_json().encode()
    at = app_test("pages/7_Replay.py")
    at.query_params["source"] = "upload"
    at.query_params["branch"] = "1"
    at.query_params["step"] = "2"
    at.run()
    at.file_uploader(key="replay_upload").set_value(("tree.json", data, "application/json")).run()
    assert not at.exception and not at.error and not at.warning, shown(at.error) + shown(at.warning)
    v = at.session_state["runner_replay"]
    assert v.trace.meta["fork"]["edit"]["token"]["id"] == 9 and v.cursor == 2     # the link: branch 1, step 2
    assert at.query_params["branch"] in ("1", ["1"]) and at.query_params["step"] in ("2", ["2"])
    md = "".join(m.value for m in at.markdown)
    assert "holds the original run and **2** what-if branches" in md and "first divergence at position 3" in md
    assert len(at.get("plotly_chart")) >= 2
    at.selectbox(key="replay_branch_sel_1").set_value(2).run()
    assert not at.exception
    assert at.session_state["runner_replay"].trace.meta["method"] == "speculative"
    assert at.query_params["branch"] in ("2", ["2"])
    at.selectbox(key="replay_branch_sel_2").set_value(0).run()
    assert at.session_state["runner_replay"].trace.meta.get("fork") is None and not at.exception
    assert at.query_params["branch"] in ("0", ["0"])


@pytest.mark.slow
def test_replay_of_an_odd_branch_link(tiny_lm):
    data = _branched(tiny_lm).to_json().encode()
    at = app_test("pages/7_Replay.py")
    at.query_params["source"] = "upload"
    at.query_params["branch"] = "7"
    at.run()
    at.file_uploader(key="replay_upload").set_value(("tree.json", data, "application/json")).run()
    assert not at.exception and any("not one of them" in w for w in shown(at.warning))
    assert at.session_state["runner_replay"].trace.meta.get("fork") is None


def test_jacobi_page_forks_to_lookahead_with_other_sampling(embedded_lm):
    at, r = _finished("pages/4_Jacobi_Lookahead.py", "jl", "runner_jacobi", "Count: 1 2 3 4 5", 8)
    at.selectbox(key="jl_fk_method").set_value("lookahead").run()
    assert at.number_input(key="jl_fk_lookahead_window_size")       # the chosen method's own option widgets
    at.checkbox(key="jl_fk_samp").check().run()
    at.radio(key="jl_fk_mode").set_value("sample").run()
    at.button(key="jl_fk_go").click().run()
    assert not at.error, shown(at.error)
    b = _branch(at, key="runner_jacobi")
    e = b.trace.meta["fork"]["edit"]
    assert b.trace.meta["method"] == "lookahead" and e["method"] == "lookahead" and e["sampling"]["temperature"] > 0
    prefix = b.trace.meta["fork"]["prefix_ids"]
    assert prefix == r.trace.final_ids[:len(prefix)] and fork.output_ids(b.trace)[:len(prefix)] == prefix
    assert not at.exception


def _at_step(at, k):
    box = next(w for w in at.number_input if w.label == "at step")
    box.set_value(k).run()


def test_speculative_page_forces_a_verdict(embedded_lm):
    """The 'verdict of this round' radio: force-accept a rejected drafted node; the branch says not lossless."""
    at, r = _finished("pages/2_Speculative.py", "spec", "runner_spec", "Repeat: the cat sat on the mat. the cat sat on the mat.", 12)
    k = next((i for i, s in enumerate(r.trace.steps) if any(n.get("status") == "rejected" for n in s.get("nodes") or [])),
             None)
    assert k is not None, "no round with a rejected node"
    _at_step(at, k)
    at.radio(key=f"spec_fk_0_{k}_force").set_value("force-accept a node").run()
    node = at.selectbox(key=f"spec_fk_0_{k}_force_node").value
    at.button(key="spec_fk_go").click().run()
    assert not at.error, shown(at.error)
    b = _branch(at, key="runner_spec")
    f = b.trace.meta["fork"]
    assert f["edit"]["force"]["node"] == node and f["edit"]["force"]["accept"] and f["not_lossless"]
    assert any("not lossless" in c for c in shown(at.caption)), shown(at.caption)


def test_jacobi_page_forks_with_edited_guesses(embedded_lm):
    at, r = _finished("pages/4_Jacobi_Lookahead.py", "jl", "runner_jacobi", "Count: 1 2 3 4 5", 8)
    _at_step(at, 1)
    at.checkbox(key="jl_fk_0_1_g_on").check().run()
    box = at.text_input(key="jl_fk_0_1_g_ids")
    assert box.value == ", ".join(map(str, r.trace.steps[1]["guess_ids"]))   # the recorded guesses, to edit
    box.input("abc").run()
    assert any("whole numbers" in e for e in shown(at.error))
    box.input("1, 2, 3").run()
    at.button(key="jl_fk_go").click().run()
    assert not at.error, shown(at.error)
    b = _branch(at, key="runner_jacobi")
    assert b.trace.steps[0]["guess_ids"][:3] == [1, 2, 3] and fork.output_ids(b.trace) == r.trace.final_ids
