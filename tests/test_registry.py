"""Adding a method, a drafter, a KV policy or a remasking rule is one registered class or function with its
option specs: each toy here is registered in a single place and then runs through engine.run, shows up as
CLI flags with its allowed values, gets page widgets (ui/options.py), and has its values checked before
any model work."""
import pytest
import torch

from engine import cli, methods, run
from engine.diffusion import rules as R
from engine.diffusion.adapters import DiffusionAdapter
from engine.errors import OptionError
from engine.methods import Job, register
from engine.methods.kv.policies import POLICIES, Policy
from engine.methods.speculative.drafters import DRAFTERS, Drafter
from engine.methods.speculative.trees import trie_from_continuations
from engine.options import Opt
from tests.conftest import make_tiny_lm

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm(seed=5)


# ---- a toy method: greedy decoding that records `width` candidates per step ----------------------
@pytest.fixture
def toy_method():
    @register("toy_greedy", "autoregressive", "toy: greedy without a KV cache",
              options={"width": Opt(3, "candidates recorded per step", min=1, max=5)})
    def toy(job: Job, width=3):
        ids = job.input_ids
        for step in range(job.max_new_tokens):
            with job.counters.compute():
                logits = job.lm.model(input_ids=ids).logits[0, -1]
            job.counters.target_forwards += 1
            tok = int(logits.argmax())
            kept = job.commit([tok])
            yield {"kind": "ar", "index": step, "new_ids": kept, "token_id": tok,
                   "candidates": [{"id": int(t), "text": job.lm.token_text(t), "p_raw": None, "p_warped": None}
                                  for t in logits.topk(width).indices.tolist()]}
            if job.finished(kept):
                return
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
    yield "toy_greedy"
    methods.REGISTRY.pop("toy_greedy", None)


def test_toy_method_runs_checks_and_gets_flags(lm, toy_method, capsys, one_thread):
    want = run.run(lm, "ar", PROMPT, max_new_tokens=5).final_ids
    tr = run.run(lm, toy_method, PROMPT, max_new_tokens=5, options={"width": 2})
    assert tr.final_ids == want and len(tr.steps[0]["candidates"]) == 2
    with pytest.raises(OptionError, match=r"width must be an integer in 1\.\.5, got 9"):
        run.prepare(lm, toy_method, PROMPT, options={"width": 9})
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    assert "--width" in capsys.readouterr().out
    assert cli.main(["methods"]) == 0
    assert "toy_greedy" in capsys.readouterr().out


# ---- a toy drafter: proposes the last token repeated ---------------------------------------------
@pytest.fixture
def toy_drafter():
    @DRAFTERS.register("repeat_last", "toy: the last token, repeated", options={
        "repeats": Opt(2, "how many copies to propose", min=1, max=8)})
    class RepeatLast(Drafter):
        name = "repeat_last"

        def __init__(self, n):
            self.n = n

        @classmethod
        def from_options(cls, job, o):
            return cls(o["repeats"])

        def propose(self, ctx):
            return trie_from_continuations(ctx.seq[-1], [[ctx.seq[-1]] * self.n], ctx.shape)
    yield "repeat_last"
    DRAFTERS.unregister("repeat_last")


def test_toy_drafter_is_lossless_and_gets_its_option(lm, toy_drafter, capsys, one_thread):
    spec = methods.get("speculative")
    assert "repeat_last" in spec.options["drafter"].choice_list()
    assert spec.options["repeats"].when == {"drafter": ("repeat_last",)}
    want = run.run(lm, "ar", PROMPT, max_new_tokens=12).final_ids
    tr = run.run(lm, "speculative", PROMPT, max_new_tokens=12,
                 options={"drafter": "repeat_last", "repeats": 3, "num_assistant_tokens": 3})
    assert tr.final_ids == want
    assert all(s["draft_len"] <= 3 for s in tr.steps)
    with pytest.raises(OptionError, match="repeats must be an integer in 1..8"):
        run.prepare(lm, "speculative", PROMPT, options={"drafter": "repeat_last", "repeats": 0})
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    assert "--repeats" in capsys.readouterr().out


# ---- a toy KV policy: keep the most recent entries only ------------------------------------------
@pytest.fixture
def toy_policy():
    @POLICIES.register("recent_only", "toy: the most recent entries", options={
        "offset": Opt(0, "ignored offset (to show the option plumbing)", min=0, max=3)})
    class RecentOnly(Policy):
        name = "recent_only"

        def scores(self, layer, keys, pos, latest):
            return pos.float()
    yield "recent_only"
    POLICIES.unregister("recent_only")


def test_toy_policy_really_evicts(lm, toy_policy, one_thread):
    tr = run.run(lm, "kv", PROMPT * 3, max_new_tokens=4, options={"policy": "recent_only", "budget": 8,
                                                                  "watch_layers": "0"})
    last = tr.steps[-1]
    assert last["cache_len"] == 8 and last["seq_len"] > 8
    kept = last["layers"]["0"]["kept"]
    assert all(sorted(h) == list(range(last["seq_len"] - 8, last["seq_len"])) for h in kept)


# ---- a toy remasking rule: the leftmost masked position --------------------------------------------
@pytest.fixture
def toy_rule():
    @R.RULES.register("leftmost", "toy: the leftmost masked position", options={
        "per_step": Opt(1, "positions per step", min=1, max=4)})
    def leftmost(v, per_step=1):
        idx = v.candidates.nonzero()[:, 0][:per_step]
        commit = torch.zeros_like(v.candidates)
        commit[idx] = True
        return R.Choice(commit, torch.where(v.candidates, 1.0, float("-inf")).double())
    yield "leftmost"
    R.RULES.unregister("leftmost")


def test_toy_rule_fills_left_to_right(toy_rule, one_thread):
    m = make_tiny_lm(seed=3)
    m.diffusion = DiffusionAdapter(m.model, 16, shift=False, bidirectional=True, name="tiny", eos_ids=set())
    tr = run.run(m, "diffusion", PROMPT, max_new_tokens=8,
                 options={"rule": "leftmost", "per_step": 2, "stop_at_eos": False})
    assert [s["new_positions"] for s in tr.steps] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_page_widgets_follow_the_registry(toy_drafter):
    """The Speculative options drawn for the toy drafter include its own option, with its default."""
    from streamlit.testing.v1 import AppTest

    def page():
        import streamlit as st
        from ui.options import option_widgets
        st.session_state["values"] = option_widgets("speculative", "t", st.container())

    at = AppTest.from_function(page).run()
    assert not at.exception
    assert "t_repeats" not in [w.key for w in at.number_input]
    at.selectbox(key="t_drafter").set_value("repeat_last").run()
    assert not at.exception
    assert at.number_input(key="t_repeats").value == 2
    assert at.session_state["values"]["drafter"] == "repeat_last"
    assert "t_prompt_lookup_num_tokens" not in [w.key for w in at.number_input]
