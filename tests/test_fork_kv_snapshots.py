"""KV forks from snapshots (engine/methods/kv/resume.py): a kv run made in this process keeps its state at step 1 and
every S = min(16, prompt tokens) steps, so a fork at a late step replays at most S - 1 one-token forwards (fewer
token positions than the prompt's prefill) instead of k, and still continues exactly as the full replay does.

- A fork at step 40 of a 48-step run: <= S - 1 forwards and <= L token positions (counted by the loop, by the
  job's counters and by a wrapper around the model's forward); its continuation equals the original (no edit) and
  the full replay's (a trace round-tripped through JSON has no snapshots), also with a policy switch; for h2o
  (accumulated attention), streaming_llm (sinks + window) and random (seeded draws).
- Sampled runs: a no-edit fork reproduces the draws; a fork with other sampling settings equals its full replay.
- The memory cap: over it every other snapshot goes and the spacing doubles (bound 2S - 1); a snapshot alone over
  it: none kept, full replay.
- A fork of a fork at its step 0 with no edit continues as the branch (the branch's switch there is kept).
"""
import pytest

from engine import fork, run, trace as T
from engine.methods.kv import resume as R
from engine.sampling import SamplingConfig

PROMPT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
N, K = 48, 40


def _view(steps, quality=True):
    return [(s["token_id"], s["cache_len"], s["policy"], s["budget"], s["layers"]["0"]["kept"],
             s["quality"]["agree"] if quality else None) for s in steps]


def _opts(policy, **kw):
    return {"policy": policy, "budget": 12, "watch_layers": "first,last", **kw}


@pytest.fixture(scope="module")
def L(tiny_lm):
    n = int(tiny_lm.encode(PROMPT).shape[1])
    assert n >= R.EVERY
    return n


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["h2o", "streaming_llm", "random"])
def test_a_late_fork_replays_at_most_S_minus_1_tokens_and_equals_the_full_replay(tiny_lm, L, one_thread, policy):
    S = min(R.EVERY, L)
    orig = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=N, options=_opts(policy), ignore_eos=True)
    assert sorted(R.snapshots_of(orig).snaps) == [1, 16, 32]
    loaded = T.loads(orig.to_json())                 # no snapshots: the full replay
    assert R.snapshots_of(loaded) is None and "snapshots" not in orig.to_json()
    b, full = fork.run_fork(tiny_lm, orig, K), fork.run_fork(tiny_lm, loaded, K)
    f, ff = b.meta["fork"], full.meta["fork"]
    assert (f["cost_forwards"], f["cost_tokens"], f["replay_from"]) == (K - 32, K - 32, 32)
    assert f["cost_forwards"] <= S - 1 and f["cost_tokens"] <= L
    assert b.counters.target_forwards == f["cost_forwards"] + N - K
    assert (ff["cost_forwards"], ff["cost_tokens"], ff["replay_from"]) == (K, L + K - 1, 0)
    assert full.counters.target_forwards == K + N - K
    assert fork.output_ids(b) == fork.output_ids(full) == orig.final_ids
    assert _view(b.steps) == _view(full.steps) == _view(orig.steps[K:])
    # another policy from K: the same from a snapshot as from the prompt
    sw = {"policy": "tova" if policy != "tova" else "h2o", "budget": 8}
    b2, full2 = fork.run_fork(tiny_lm, orig, K, options=sw), fork.run_fork(tiny_lm, loaded, K, options=sw)
    assert b2.meta["fork"]["cost_forwards"] == K - 32 and full2.meta["fork"]["cost_forwards"] == K
    assert _view(b2.steps) == _view(full2.steps) and [s["cache_len"] for s in b2.steps] == [8] * (N - K)


def test_the_replay_forwards_counted_at_the_model(tiny_lm, L, one_thread, monkeypatch):
    orig = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=N, options=_opts("h2o", compare_full=False), ignore_eos=True)
    lens = []
    forward = tiny_lm.model.forward

    def counting(*a, **kw):
        lens.append(int((kw["input_ids"] if "input_ids" in kw else a[0]).shape[1]))
        return forward(*a, **kw)

    monkeypatch.setattr(tiny_lm.model, "forward", counting)
    for src, want in ((orig, (K - 32, K - 32)), (T.loads(orig.to_json()), (K, L + K - 1))):
        lens.clear()
        b, steps = fork.prepare(tiny_lm, src, K)
        next(steps)                                   # the replay, then the branch's first own forward
        replay = lens[:-1]
        assert (len(replay), sum(replay)) == want == (b.meta["fork"]["cost_forwards"], b.meta["fork"]["cost_tokens"])
        assert lens[-1] == 1
        for _ in steps:
            pass
        assert fork.output_ids(b) == orig.final_ids and _view(b.steps, False) == _view(orig.steps[K:], False)


@pytest.mark.slow
def test_sampled_forks_from_a_snapshot(tiny_lm, L, one_thread):
    sampling = SamplingConfig(temperature=1.0, seed=7)
    orig = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=36, options=_opts("random"), sampling=sampling,
                   ignore_eos=True)
    loaded = T.loads(orig.to_json())
    b = fork.run_fork(tiny_lm, orig, 34)
    assert b.meta["fork"]["cost_forwards"] == 2 and fork.output_ids(b) == orig.final_ids
    assert _view(b.steps) == _view(orig.steps[34:])
    # other sampling settings (and seed) from 34: the sampling stream is the full replay's; the evictions before
    # 34 keep the run's seed
    for other in (SamplingConfig(temperature=0.7, top_k=20, seed=3), SamplingConfig()):
        b1, b2 = fork.run_fork(tiny_lm, orig, 34, sampling=other), fork.run_fork(tiny_lm, loaded, 34, sampling=other)
        assert b1.meta["fork"]["cost_forwards"] == 2 and b2.meta["fork"]["cost_forwards"] == 34
        assert _view(b1.steps) == _view(b2.steps)
        assert b1.steps[0]["layers"]["0"]["kept"] == orig.steps[34]["layers"]["0"]["kept"]


@pytest.mark.slow
def test_the_memory_cap_thins_the_snapshots(tiny_lm, L, one_thread, monkeypatch):
    o = _opts("h2o")
    one = R.snapshots_of(run.run(tiny_lm, "kv", PROMPT, max_new_tokens=2, options=o)).snaps[1].nbytes
    monkeypatch.setattr(R, "CAP_BYTES", int(2.5 * one))
    orig = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=N, options=o, ignore_eos=True)
    st = R.snapshots_of(orig)
    assert st.nbytes <= st.cap == int(2.5 * one) and sorted(st.snaps) == [1, 32]    # 16 dropped at 32
    assert (st.every, st.halvings) == (32, 1)
    b = fork.run_fork(tiny_lm, orig, 31)              # the bound is now 2S - 1 forwards
    assert b.meta["fork"]["cost_forwards"] == 30 <= 2 * 16 - 1 and fork.output_ids(b) == orig.final_ids
    assert _view(b.steps) == _view(orig.steps[31:])
    monkeypatch.setattr(R, "CAP_BYTES", one - 1)     # no snapshot fits: none kept, forks replay from the prompt
    orig = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=20, options=o, ignore_eos=True)
    st = R.snapshots_of(orig)
    assert st.off and not st.snaps and st.nbytes == 0
    b = fork.run_fork(tiny_lm, orig, 18)
    assert b.meta["fork"]["cost_forwards"] == 18 and fork.output_ids(b) == orig.final_ids


@pytest.mark.slow
def test_forks_of_forks(tiny_lm, L, one_thread):
    o = _opts("h2o")
    orig = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=36, options=o, ignore_eos=True)
    b = fork.run_fork(tiny_lm, orig, 20, options={"policy": "streaming_llm"})
    assert b.meta["fork"]["replay_from"] == 16 and sorted(R.snapshots_of(b).snaps) == [16, 32]
    same = fork.run_fork(tiny_lm, b, 0)                # no edit at the branch's first step: its switch is kept
    assert same.meta["fork"]["resume"]["switches"][-1]["at"] == 20 and same.meta["fork"]["cost_forwards"] == 4
    assert _view(same.steps) == _view(b.steps) and fork.output_ids(same) == fork.output_ids(b)
    late = fork.run_fork(tiny_lm, b, 14)               # step 34 of the lineage: from the branch's own snapshot
    assert (late.meta["fork"]["replay_from"], late.meta["fork"]["cost_forwards"]) == (32, 2)
    assert _view(late.steps) == _view(b.steps[14:]) == _view(fork.run_fork(tiny_lm, T.loads(b.to_json()), 14).steps)
