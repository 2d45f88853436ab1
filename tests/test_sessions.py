"""Two sessions sharing one model never disturb each other.

Sessions are threads here, as in the app (one worker thread per browser session, the model shared):
every pair of families runs at the same time, each session interleaving its decoding steps with option
validations (engine.run.prepare, what a page does on every click), and every greedy output must equal
the single-session run, with no error at all. A KV run's attention capture, or a kernel routing, lives
in the calling thread only (engine.attention), so another session's validation and forwards see the
plain model.
"""
import itertools
import threading

import pytest
import torch

from engine import attention, run
from engine.diffusion.adapters import DiffusionAdapter
from tests.conftest import make_tiny_lm

PROMPT = "Once upon a time"
MAX_NEW = 8
CONFIGS = {
    "ar": ("ar", {}),
    "speculative": ("speculative", {"drafter": "early_exit", "exit_layer": 1, "tree": "2.2",
                                    "num_assistant_tokens": 2}),
    "kv": ("kv", {"policy": "h2o", "budget": 8, "watch_layers": "all"}),
    "jacobi": ("jacobi", {"block_size": 4}),
    "lookahead": ("lookahead", {"window_size": 3, "level": 3, "guess_set_size": 3}),
    "diffusion": ("diffusion", {"rule": "low_confidence", "gen_length": 8, "block_length": 4}),
}


@pytest.fixture(scope="module")
def lm():
    m = make_tiny_lm(seed=11)
    m.diffusion = DiffusionAdapter(m.model, 16, shift=False, bidirectional=True, name="tiny", eos_ids=m.eos_ids)
    return m


@pytest.fixture(scope="module")
def alone(lm):
    """Every configuration's output, run by one session with nobody else around."""
    with torch.inference_mode():
        return {name: run.run(lm, method, PROMPT, max_new_tokens=MAX_NEW, options=opts).final_ids
                for name, (method, opts) in CONFIGS.items()}


def session(lm, name, other, results, errors, counts, barrier):
    """One browser session: two runs of its configuration, stepping one step at a time, and between
    steps it validates its own and the other page's settings (prepare), as a page's reruns do."""
    method, opts = CONFIGS[name]
    o_method, o_opts = CONFIGS[other]
    try:
        barrier.wait(timeout=30)
        outs = []
        for _ in range(2):
            trace, steps = run.prepare(lm, method, PROMPT, max_new_tokens=MAX_NEW, options=opts)
            for _rec in steps:
                counts[name] += 1
                run.prepare(lm, o_method, PROMPT, max_new_tokens=MAX_NEW, options=o_opts)
                run.prepare(lm, method, PROMPT, max_new_tokens=MAX_NEW, options=opts)
                counts[name] += 2
            outs.append(trace.final_ids)
        results[name] = outs
    except Exception as e:  # noqa: BLE001 -- any error at all fails the test
        errors.append(f"{name} (beside {other}): {type(e).__name__}: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("pair", list(itertools.combinations(CONFIGS, 2)), ids="+".join)
def test_two_sessions_interleaved(lm, alone, pair, one_thread):
    a, b = pair
    results, errors, counts = {}, [], {a: 0, b: 0}
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=session, args=(lm, x, y, results, errors, counts, barrier))
               for x, y in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for name in pair:
        assert results[name] == [alone[name], alone[name]], name
    assert sum(counts.values()) >= 40


def test_pairs_total_at_least_200_interleaved_operations():
    """The parametrised pairs above: 15 pairs x >= 40 validations / steps each."""
    assert len(list(itertools.combinations(CONFIGS, 2))) * 40 >= 200


def test_capture_is_invisible_to_another_thread(lm, one_thread):
    """While this thread captures queries inside a forward, another thread's validation passes and its
    forwards are neither captured nor changed."""
    model = lm.model
    ids = lm.encode(PROMPT)
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    out, errs = {}, []

    def other():
        try:
            run.prepare(lm, "speculative", PROMPT, max_new_tokens=4, options={"tree": "2.2"})
            with torch.inference_mode():
                out["logits"] = model(input_ids=ids).logits
        except Exception as e:  # noqa: BLE001
            errs.append(e)

    with torch.inference_mode(), attention.capture(model, range(model.config.num_hidden_layers)) as store:
        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=60)
        assert not store["q"], "the other thread's forward was captured"
        model(input_ids=ids)
        assert sorted(store["q"]) == list(range(model.config.num_hidden_layers))
    assert not errs, errs
    assert torch.equal(out["logits"], want)
    assert attention.installed(model) and attention.original(model) == "sdpa"
