"""KV-cache forks (engine/fork.py, engine.methods.kv resume): the evicted cache at step k is not the prefix, so a
fork replays the parent's recorded tokens through the parent's policy up to k (forced tokens: the same forwards and
evictions; from the run's snapshot at step 1 here, tests/test_fork_kv_snapshots.py has the later ones and the full
replay), then decodes on with the new policy / budget / knobs.

- A fork with no edit reproduces the original continuation: tokens, cache sizes, kept positions, the
  full-cache agreement (greedy; sampled and the random policy too, the seeded draws being replayed).
- A fork that changes the policy at k equals a run whose policy switches at k (the engine option
  run.prepare(resume={"switches": [{"at": k, ...}]}), and a fork of that fork a run with both switches.
"""
import pytest

from engine import fork, run
from engine.errors import InputError
from engine.sampling import SamplingConfig

PROMPT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
N = 12
A = {"policy": "h2o", "budget": 12, "watch_layers": "first,last"}


@pytest.fixture(scope="module")
def orig(embedded_lm):
    return run.run(embedded_lm, "kv", PROMPT, max_new_tokens=N, options=A, ignore_eos=True)


def _view(steps):
    return [(s["token_id"], s["cache_len"], s["policy"], s["budget"], s["layers"]["0"]["kept"],
             s["quality"]["agree"]) for s in steps]


def test_a_fork_without_edit_reproduces_the_original(embedded_lm, orig):
    for k in (0, 1, 5, N - 1):
        b = fork.run_fork(embedded_lm, orig, k)
        assert fork.output_ids(b) == orig.final_ids, k
        assert _view(b.steps) == _view(orig.steps[k:]), k
        assert [s["index"] for s in b.steps] == list(range(N - k))
        assert [s["position"] for s in b.steps] == [s["position"] for s in orig.steps[k:]]
        # the cost: from the run's snapshot at step 1 (after the prompt's forward), k - 1 one-token forwards
        replayed = k - 1 if k else 0
        assert b.meta["fork"]["cost_forwards"] == b.meta["fork"]["cost_tokens"] == replayed
        assert b.counters.target_forwards == replayed + N - k
        assert b.meta["fork"]["exact"]


@pytest.mark.parametrize("policy,sampling", [("random", None), ("h2o", SamplingConfig(temperature=1.0, seed=7))])
def test_seeded_draws_are_replayed(embedded_lm, policy, sampling):
    o = dict(A, policy=policy)
    t = run.run(embedded_lm, "kv", PROMPT, max_new_tokens=8, options=o, sampling=sampling, ignore_eos=True)
    b = fork.run_fork(embedded_lm, t, 4)
    assert fork.output_ids(b) == t.final_ids and _view(b.steps) == _view(t.steps[4:])


def test_a_policy_fork_is_a_run_whose_policy_switches_at_k(embedded_lm, orig):
    k = 4
    b = fork.run_fork(embedded_lm, orig, k, options={"policy": "streaming_llm", "budget": 8})
    ref = run.run(embedded_lm, "kv", PROMPT, max_new_tokens=N, options=A, ignore_eos=True,
                  resume={"switches": [{"at": k, "policy": "streaming_llm", "budget": 8}]})
    assert fork.output_ids(b) == ref.final_ids
    assert _view(b.steps) == _view(ref.steps[k:])
    assert [s["cache_len"] for s in ref.steps] == [12] * k + [8] * (N - k)
    assert [s["policy"] for s in ref.steps] == ["h2o"] * k + ["streaming_llm"] * (N - k)
    assert ref.steps[:k] == orig.steps[:k] or _view(ref.steps[:k]) == _view(orig.steps[:k])
    assert b.meta["fork"]["edit"]["options"] == {"policy": "streaming_llm", "budget": 8}
    # a fork of the fork: the original's policy, then streaming_llm from 4, then tova from 4 + 3
    bb = fork.run_fork(embedded_lm, b, 3, options={"policy": "tova"})
    ref2 = run.run(embedded_lm, "kv", PROMPT, max_new_tokens=N, options=A, ignore_eos=True,
                   resume={"switches": [{"at": k, "policy": "streaming_llm", "budget": 8},
                                        {"at": k + 3, "policy": "tova", "budget": 8}]})
    assert fork.output_ids(bb) == ref2.final_ids and _view(bb.steps) == _view(ref2.steps[k + 3:])
    assert bb.meta["fork"]["prefix_ids"] == ref2.final_ids[:k + 3] and bb.meta["fork"]["cost_forwards"] == k + 3 - 1


def test_bad_kv_forks_are_refused(embedded_lm, orig):
    for kw, words in (({"token": 5}, "autoregressive fork"), ({"position": 2, "mask": True}, "autoregressive fork"),
                      ({"options": {"positions": "rerotate"}}, "cannot change in the middle"),
                      ({"options": {"budget": 0}}, "budget"), ({"options": {"policy": "nope"}}, "policy"),
                      ({"method": "ar"}, "forks to kv only"), ({"step": 99}, "no step")):
        with pytest.raises(InputError, match=words):
            fork.prepare(embedded_lm, orig, kw.pop("step", 3), **kw)
    # at step 0 nothing is replayed: any option may change
    b = fork.prepare(embedded_lm, orig, 0, options={"positions": "rerotate"})[0]
    assert b.meta["params"]["positions"] == "rerotate" and b.meta["fork"]["resume"] is None
