"""The decoder process (engine.remote): runs there stream their steps into a mirror with the Runner's
interface; controls, breakpoints, errors and the decoder's death behave as in-process runs would."""
import gc
import os
import threading
import time

import pytest
import torch

from engine import remote, run
from engine.errors import OptionError, PromptError
from engine.runner import CANCELLED, DONE, ERROR, PAUSED, Breakpoint, Runner
from tests.conftest import save_tiny

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved like any local model, so the decoder process loads it by path."""
    return save_tiny(tmp_path_factory, "tiny-model", seed=7)


@pytest.fixture(scope="module")
def local(tiny_dir):
    from engine import models
    return models.load(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def handle(tiny_dir):
    return remote.decoder().load(tiny_dir)


@pytest.mark.slow
def test_a_run_streams_the_same_steps_as_in_process(local, handle):
    want = run.run(local, "speculative", PROMPT, max_new_tokens=10, options={"tree": "2.2"})
    r = remote.decoder().start(handle, "speculative", PROMPT, max_new_tokens=10, options={"tree": "2.2"})
    assert r.wait(60) and r.state == DONE
    assert r.trace.final_ids == want.final_ids and r.trace.final_text == want.final_text
    assert len(r.trace.steps) == len(want.steps)
    strip = lambda s: {k: v for k, v in s.items() if k not in ("totals", "draft_s", "verify_s", "compute_s")}
    assert [strip(s) for s in r.trace.steps] == [strip(s) for s in want.steps]
    assert r.trace.counters.generated_tokens == 10 and r.trace.extra["summary"]["tau"] > 0
    assert r.token_texts == [local.token_text(t) for t in want.final_ids]
    assert r.trace.meta["finished"] and r.trace.meta["prompt_ids"] == want.meta["prompt_ids"]
    assert r.live_text == want.final_text


def test_refusals_arrive_typed_and_at_once(handle):
    t = time.perf_counter()
    with pytest.raises(OptionError, match="budget"):
        remote.decoder().start(handle, "kv", PROMPT, options={"budget": 0})
    with pytest.raises(PromptError, match="empty"):
        remote.decoder().start(handle, "ar", "  ")
    assert time.perf_counter() - t < 5


def test_step_through_and_breakpoints(handle, local):
    want = run.run(local, "ar", PROMPT, max_new_tokens=8)
    probs = [s["prob"] for s in want.steps]
    low = min(range(1, 8), key=lambda i: probs[i])
    dec = remote.decoder()
    r = dec.start(handle, "ar", PROMPT, max_new_tokens=8, start_paused=True)
    r.wait_idle()
    assert r.state == PAUSED and not r.trace.steps
    for k in range(3):
        r.step_forward()
        r.wait_idle()
        assert len(r.trace.steps) == k + 1 and r.cursor == k and r.state == PAUSED
    r.step_back()
    assert r.cursor == 1
    r.jump(0)
    assert r.cursor == 0
    # a breakpoint set while paused stops the run at the low-confidence step
    r.set_breakpoints([Breakpoint("confidence_below", probs[low] + 1e-6)])
    r.resume()
    end = time.time() + 30
    while r.state != PAUSED and not r.finished and time.time() < end:
        time.sleep(0.01)
    if low >= 3:
        assert r.state == PAUSED and r.break_reason and len(r.trace.steps) == low + 1
    r.set_breakpoints([])
    r.resume()
    assert r.wait(30) and r.state == DONE and r.trace.final_ids == want.final_ids


def test_cancel_ends_the_run(handle):
    r = remote.decoder().start(handle, "ar", PROMPT, max_new_tokens=2000)
    time.sleep(0.3)
    r.cancel()
    assert r.state == CANCELLED
    assert r.wait(30) and r.state == CANCELLED and len(r.trace.steps) < 2000


def test_errors_in_a_run_are_reported(handle, tiny_dir, tmp_path):
    """A run that fails in the decoder after it started (a draft model whose tokenizer matches but whose
    weights are damaged): state error, the message, and the typed exception."""
    import shutil
    bad = tmp_path / "damaged-draft"
    shutil.copytree(tiny_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00not weights" * 10)
    r = remote.decoder().start(handle, "speculative", PROMPT, max_new_tokens=8,
                               options={"drafter": "draft_model", "draft_model": str(bad)})
    assert r.wait(30) and r.state == ERROR
    assert "Cannot load the draft model" in r.error
    from engine.errors import MethodError
    assert isinstance(r.exception, MethodError)


@pytest.mark.slow
def test_sessions_run_at_once_in_the_decoder(handle, local):
    want = {m: run.run(local, m, PROMPT, max_new_tokens=8).final_ids for m in ("ar", "jacobi", "lookahead")}
    runs = {m: remote.decoder().start(handle, m, PROMPT, max_new_tokens=8) for m in want}
    for m, r in runs.items():
        assert r.wait(60) and r.state == DONE and r.trace.final_ids == want[m], m


def test_tasks(handle, local):
    r = remote.decoder().start(handle, "ar", PROMPT, max_new_tokens=6)
    assert r.wait(30)
    from engine import quality
    got = remote.decoder().task(handle, "judged", prompt_ids=r.trace.meta["prompt_ids"],
                                output_ids=r.trace.final_ids)
    assert got == pytest.approx(quality.judged_perplexity(local, r.trace.meta["prompt_ids"], r.trace.final_ids),
                                rel=1e-4)
    vs = remote.decoder().task(handle, "vs_autoregressive", meta=r.trace.meta, final_ids=r.trace.final_ids)
    assert vs["identical"] is True and vs["same_as_recorded"] and vs["speedup"] > 0


@pytest.mark.slow
def test_a_dead_decoder_is_reported_and_replaced(handle, tiny_dir):
    dec = remote.decoder()
    r = dec.start(handle, "ar", PROMPT, max_new_tokens=2000)
    time.sleep(0.2)
    dec.proc.kill()
    assert r.wait(30) and r.state == ERROR and "decoder process stopped" in r.error
    with pytest.raises(remote.DecoderError):
        dec.call("ping")
    fresh = remote.decoder()
    assert fresh is not dec and fresh.call("ping") == "pong"
    r2 = fresh.start(handle, "ar", PROMPT, max_new_tokens=4)   # the model loads again there, on demand
    assert r2.wait(60) and r2.state == DONE


def test_a_cancelled_run_leaves_no_inference_mode_behind(local):
    """A method suspended inside torch.inference_mode() is closed in its own thread when cancelled, so the
    garbage collector never restores some other thread's grad mode in the middle of its work."""
    trace, steps = run.prepare(local, "ar", PROMPT, max_new_tokens=50)
    r = Runner(trace, steps, start_paused=True).start()
    r.step_forward()
    r.wait_idle()
    r.cancel()
    assert r.wait(10)
    seen = {}

    def other():
        with torch.inference_mode():
            del r.__dict__["_it"]
            gc.collect()
            seen["inference"] = torch.is_inference_mode_enabled()
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["inference"] is True
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_the_decoder_leaves_a_core_to_the_ui(handle, monkeypatch):
    """The decoder process runs decoder_threads() torch threads: every core but one (a browser and the server on
    the same 2 cores otherwise stall its parallel ops; benchmarks/results_ui.md), or DECODING_LAB_DECODER_THREADS."""
    from engine.decoder_server import decoder_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert handle.info["torch_threads"] == decoder_threads() == max(1, min(torch.get_num_threads(), cores - 1))
    monkeypatch.setenv("DECODING_LAB_DECODER_THREADS", "3")
    assert decoder_threads() == 3
    for bad in ("0", "-1", "two", ""):
        monkeypatch.setenv("DECODING_LAB_DECODER_THREADS", bad)
        assert decoder_threads() == max(1, min(torch.get_num_threads(), cores - 1))
