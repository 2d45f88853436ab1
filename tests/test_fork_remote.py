"""The decoder process's fork op (engine.remote.Decoder.fork): a branch of a recorded run is a RemoteRunner like
any start; it equals engine.fork.prepare's result; bad edits come back as the engine's typed errors with the
original run untouched; a session has at most MAX_LIVE_BRANCHES branches decoding at a time."""
import pytest

from engine import fork, remote, run
from engine.errors import InputError, LabError
from engine.fork import ForkError
from engine.runner import CANCELLED, DONE, PAUSED
from tests.conftest import save_tiny

# slow: every test here runs in the decoder process (a second Python process, started once per session)
pytestmark = pytest.mark.slow

PROMPT = "a b a b a b c d"
N = 12


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory, "tiny-fork", seed=3)


@pytest.fixture(scope="module")
def local(tiny_dir):
    from engine import models
    return models.load(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def handle(tiny_dir):
    return remote.decoder().load(tiny_dir)


@pytest.fixture(scope="module")
def original(handle):
    r = remote.decoder().start(handle, "ar", PROMPT, max_new_tokens=N, ignore_eos=True)
    assert r.wait(60) and r.state == DONE
    return r


def test_a_fork_without_edit_reproduces_the_original(handle, original):
    for k in (0, 5, len(original.trace.steps) - 1):
        b = remote.decoder().fork(handle, original.trace, k)
        assert b.wait(60) and b.state == DONE, b.error
        assert fork.output_ids(b.trace) == original.trace.final_ids, k
        f = b.trace.meta["fork"]
        assert f["at_step"] == k and f["parent"] == 0 and f["prefix_ids"] == original.trace.final_ids[:k]
        assert b.token_texts and len(b.trace.steps) == N - k


def test_a_token_fork_equals_the_engines(handle, local, original):
    want_orig = run.run(local, "ar", PROMPT, max_new_tokens=N, ignore_eos=True)
    assert want_orig.final_ids == original.trace.final_ids      # the same weights in both processes
    step = original.trace.steps[5]
    other = next(c["id"] for c in step["candidates"] if c["id"] != step["token_id"])
    b = remote.decoder().fork(handle, original.trace, 5, token=other)
    assert b.wait(60) and b.state == DONE
    want = fork.run_fork(local, want_orig, 5, token=other)
    assert fork.output_ids(b.trace) == fork.output_ids(want)
    assert [s["token_id"] for s in b.trace.steps] == [s["token_id"] for s in want.steps]
    assert b.trace.meta["fork"]["edit"] == want.meta["fork"]["edit"] and b.trace.meta["edited"]
    # a fork of the branch (parent_id names it in the tree) continues it exactly
    b2 = remote.decoder().fork(handle, b.trace, 2, parent_id=1)
    assert b2.wait(60) and fork.output_ids(b2.trace) == fork.output_ids(b.trace)
    assert b2.trace.meta["fork"]["parent"] == 1


def test_a_method_fork(handle, original):
    b = remote.decoder().fork(handle, original.trace, 3, method="speculative", options={"drafter": "prompt_lookup"})
    assert b.wait(60) and b.state == DONE
    assert fork.output_ids(b.trace) == original.trace.final_ids
    assert b.trace.meta["method"] == "speculative" and b.trace.steps[0]["kind"] == "speculative"


def test_forced_verdicts_and_edited_guesses_in_the_decoder(handle, local):
    """force (a speculative round's verdict) and guesses (Jacobi's first guesses) reach the decoder process and
    give the engine's own branch."""
    opts = {"drafter": "token_recycling", "tree": "2.2"}
    r = remote.decoder().start(handle, "speculative", PROMPT, max_new_tokens=N, options=opts, ignore_eos=True)
    assert r.wait(60) and r.state == DONE
    want_orig = run.run(local, "speculative", PROMPT, max_new_tokens=N, options=opts, ignore_eos=True)
    k, node = next((k, n) for k, s in enumerate(want_orig.steps) for n in s["nodes"]
                   if n.get("id") and not n.get("appended") and n["status"] == "rejected")
    b = remote.decoder().fork(handle, r.trace, k, force={"node": node["id"], "accept": True})
    assert b.wait(60) and b.state == DONE, b.error
    want = fork.run_fork(local, want_orig, k, force={"node": node["id"], "accept": True})
    assert fork.output_ids(b.trace) == fork.output_ids(want) and b.trace.meta["fork"]["not_lossless"]
    j = remote.decoder().start(handle, "jacobi", PROMPT, max_new_tokens=N, ignore_eos=True)
    assert j.wait(60) and j.state == DONE
    g = remote.decoder().fork(handle, j.trace, 2, guesses=[1, 2, 3])
    assert g.wait(60) and g.state == DONE, g.error
    assert fork.output_ids(g.trace) == j.trace.final_ids and g.trace.steps[0]["guess_ids"][:3] == [1, 2, 3]


def test_a_kv_fork_in_the_decoder_restores_its_snapshot(handle, local):
    """A finished kv run's snapshots stay in the decoder (until its runner is forgotten): a late fork of it
    (parent_run = its run id) replays a few steps, not the whole run, and equals the engine's full replay."""
    p = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
    o = {"policy": "h2o", "budget": 12, "watch_layers": "first,last", "compare_full": False}
    r = remote.decoder().start(handle, "kv", p, max_new_tokens=40, options=o, ignore_eos=True)
    assert r.wait(60) and r.state == DONE
    k = 36
    cheap = remote.decoder().fork(handle, r.trace, k, options={"budget": 8}, parent_run=r.run_id)
    full = remote.decoder().fork(handle, r.trace, k, options={"budget": 8})      # no run id: a copy, replayed
    assert cheap.wait(60) and full.wait(60) and cheap.state == full.state == DONE, (cheap.error, full.error)
    assert fork.output_ids(cheap.trace) == fork.output_ids(full.trace)
    fc, ff = cheap.trace.meta["fork"], full.trace.meta["fork"]
    assert ff["replay_from"] == 0 and ff["cost_forwards"] >= k
    assert fc["replay_from"] > 0 and fc["cost_forwards"] <= k - fc["replay_from"] + 1 < ff["cost_forwards"], fc
    # the decoder holds the parent's trace only while the UI holds its runner
    import gc
    import time
    trace, rid = r.trace, r.run_id
    del r
    gc.collect()
    deadline, replayed = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        late = remote.decoder().fork(handle, trace, k, options={"budget": 8}, parent_run=rid)
        assert late.wait(60) and late.state == DONE
        replayed = late.trace.meta["fork"]["replay_from"]
        if replayed == 0:
            break
        time.sleep(0.5)
    assert replayed == 0


@pytest.mark.parametrize("step,kw,words", [
    (99, {}, "no step 99"),
    (2, {"token": 10 ** 9}, "outside the vocabulary"),
    (2, {"token": "hello world and more"}, "not one"),
    (2, {"method": "kv"}, "evicted cache"),
    (2, {"method": "diffusion"}, "canvas"),
    (2, {"options": {"nonsense": 1}}, "nonsense"),
])
def test_bad_forks_are_typed_and_leave_the_original_untouched(handle, original, step, kw, words):
    before = original.trace.to_json()
    with pytest.raises(InputError, match=words) as e:
        remote.decoder().fork(handle, original.trace, step, **kw)
    assert isinstance(e.value, LabError) and not isinstance(e.value, remote.RemoteError)
    assert original.trace.to_json() == before and original.state == DONE


def test_unforkable_and_cancelled_runs(handle):
    dec = remote.decoder()
    kv = dec.start(handle, "kv", PROMPT, max_new_tokens=4, options={"policy": "h2o", "budget": 8})
    assert kv.wait(60)
    with pytest.raises(ForkError, match="forks to kv only"):
        dec.fork(handle, kv.trace, 1, method="ar")
    r = dec.start(handle, "ar", PROMPT, max_new_tokens=N, start_paused=True)
    for _ in range(3):
        r.step_forward()
        r.wait_idle()
    r.cancel()
    r.wait_idle()
    assert r.state == CANCELLED and len(r.trace.steps) == 3
    with pytest.raises(ForkError, match="no step 3"):        # beyond its last good step
        dec.fork(handle, r.trace, 3)
    b = dec.fork(handle, r.trace, 2, max_new_tokens=4)        # its good steps can be forked
    assert b.wait(60) and fork.output_ids(b.trace)[:2] == r.trace.final_ids[:2]


def test_live_branches_are_capped_per_session(handle, original):
    dec = remote.decoder()
    live = [dec.fork(handle, original.trace, 1, session="s1", start_paused=True)
            for _ in range(remote.MAX_LIVE_BRANCHES)]
    try:
        with pytest.raises(ForkError, match=f"at most {remote.MAX_LIVE_BRANCHES}"):
            dec.fork(handle, original.trace, 1, session="s1", start_paused=True)
        other = dec.fork(handle, original.trace, 1, session="s2", start_paused=True)   # another session
        other.cancel()
        live[0].cancel()
        live.append(dec.fork(handle, original.trace, 1, session="s1", start_paused=True))
        assert live[-1].state == PAUSED
    finally:
        for b in live:
            b.cancel()
