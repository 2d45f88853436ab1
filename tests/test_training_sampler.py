"""gen-self's batched decoder (training/generate.py self_decode) on the embedded diffusion model: its answers
are pinned token for token (recorded before self_decode was moved onto the engine's batched step), and
the engine's batched step (engine.diffusion.sampler.choose_batch) equals the per-run choice of diffuse."""
import copy

import pytest

from engine.diffusion import smol

TEXTS = ["Name a colour.", "Write a short story about a fox in the snow.", "In one sentence, what is a violin?"]
# self_decode(model, prompts, MASK_ID, eos, gen_len=16, **settings) with the default delta, recorded with the
# decoder's own copy of the rules (commit 81aa82f); the prefix-cache rows differ from the others as Fast-dLLM's
# approximation does on a bidirectional model
GOLDEN = {
    "lowconf_b8_nocache": (dict(block=8, prefix_cache=False), [
        [504, 7302, 314, 253, 8685, 284, 3953, 11615, 282, 4461, 338, 314, 983, 281, 800, 4520],
        [788, 260, 1911, 282, 260, 12197, 28, 253, 16438, 281, 260, 5806, 436, 253, 10215, 282],
        [49, 29880, 314, 253, 7516, 5769, 338, 4566, 253, 1845, 282, 2556, 6907, 28, 1285, 253]]),
    "lowconf_b8_cache": (dict(block=8, prefix_cache=True), [
        [504, 7302, 314, 253, 8685, 284, 8685, 11615, 282, 4461, 338, 314, 1129, 2188, 351, 260],
        [788, 260, 1911, 282, 260, 12197, 28, 253, 16438, 281, 260, 5806, 436, 253, 10215, 282],
        [49, 29880, 314, 253, 7516, 5769, 338, 4566, 253, 1845, 282, 2477, 28, 1285, 8766, 28]]),
    "thr09_b16_nocache": (dict(block=16, prefix_cache=False, threshold=0.9), [
        [504, 7302, 314, 253, 8685, 284, 3953, 2380, 338, 416, 325, 983, 281, 1461, 2717, 28],
        [788, 260, 1911, 282, 260, 12197, 28, 253, 16438, 281, 260, 5806, 436, 253, 10215, 282],
        [49, 29880, 314, 253, 7516, 5769, 338, 4566, 253, 1845, 282, 2556, 6907, 28, 1285, 253]]),
    "thr07_b16_cache": (dict(block=16, prefix_cache=True, threshold=0.7), [
        [504, 7302, 314, 253, 8685, 284, 3953, 2380, 338, 416, 325, 983, 281, 1461, 2717, 28],
        [788, 260, 1911, 282, 260, 12197, 28, 253, 16438, 281, 260, 5806, 436, 253, 6968, 288],
        [49, 29880, 314, 253, 7516, 5769, 338, 4566, 253, 1845, 282, 2477, 28, 1285, 8766, 28]]),
}


@pytest.fixture(scope="module")
def default_delta_model(embedded_lm):
    model = copy.deepcopy(embedded_lm.model)
    smol.apply_delta(model, smol.DELTA_DIR, merge=True)
    return model.eval()


@pytest.mark.slow   # ~30 s on 2 threads: the embedded model, 4 x 3 short answers
@pytest.mark.parametrize("case", list(GOLDEN))
def test_self_decode_answers_are_unchanged(embedded_lm, default_delta_model, one_thread, case):
    from training.generate import self_decode
    settings, want = GOLDEN[case]
    eos = embedded_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [embedded_lm.encode(t)[0].tolist() for t in TEXTS]
    got = self_decode(default_delta_model, prompts, smol.MASK_ID, eos, gen_len=16, **settings)
    assert got == want




# ---- the engine's batched decoder with a batch of one = the engine's diffusion method (engine.run) --------------
ONE_CASES = {   # rule, block_length, steps and the rule's options, gen_length 16; every rule whose choice is the
    # block's own (engine/diffusion/batched.py), and random / credit in a single block
    "lowconf_b8": dict(rule="low_confidence", block_length=8),                      # two blocks, a token a step
    "lowconf_b8_s8": dict(rule="low_confidence", block_length=8, steps=8),          # two tokens a step
    "lowconf_b8_cache": dict(rule="low_confidence", block_length=8, prefix_cache=True),
    "lowconf_dream": dict(rule="low_confidence", block_length=8, steps=8, schedule="dream"),
    "thr05_b16": dict(rule="threshold", block_length=16, threshold=0.5),           # several tokens in a step
    "thr05_b8_cache": dict(rule="threshold", block_length=8, threshold=0.5, prefix_cache=True),
    "margin": dict(rule="topk_margin", block_length=8, steps=8),
    "entropy": dict(rule="entropy", block_length=8, steps=8),
    "maskgit_plus": dict(rule="maskgit_plus", block_length=8, steps=8),
    "eos_ascending": dict(rule="eos_ascending", block_length=8, steps=8),
    "prophet": dict(rule="prophet", block_length=8, steps=8),
    "local_leap": dict(rule="local_leap", block_length=8, anchor=0.6, relaxed=0.3),
    "random_b16": dict(rule="random", block_length=16),
    "credit_b16": dict(rule="credit", block_length=16, threshold=0.5),
    "lowconf_eos": dict(rule="low_confidence", block_length=16, eos=48687),       # the stop rule (see below)
}


@pytest.fixture(scope="module")
def tiny_diffusion_lm():
    """A tiny random Llama as a shifted bidirectional diffusion model (the embedded one's layout). As drawn it
    predicts one token everywhere (ties that would test nothing): the mask embedding is zeroed so that masked
    positions read the prompt, attention is sharpened so that they read it differently (RoPE), and the final
    norm scaled so that confidences spread over (0, 1) and a threshold of 0.5 commits several tokens at once."""
    import torch
    from engine.diffusion.adapters import DiffusionAdapter
    from tests.conftest import make_tiny_lm
    lm = make_tiny_lm(seed=7)
    with torch.no_grad():
        lm.model.get_input_embeddings().weight[smol.MASK_ID].zero_()
        for layer in lm.model.model.layers:
            a = layer.self_attn
            for proj, scale in ((a.q_proj, 16), (a.k_proj, 16), (a.v_proj, 8), (a.o_proj, 8)):
                proj.weight.mul_(scale)
        lm.model.model.norm.weight.mul_(30)
    lm.diffusion = DiffusionAdapter(lm.model, smol.MASK_ID, shift=True, bidirectional=True, name="tiny",
                                    eos_ids=lm.eos_ids)
    return lm


def _with_eos(lm, eos: int):
    """The same LM whose EOS is `eos` (a token this tiny model predicts often, so that answers end early)."""
    import dataclasses

    from engine import models
    from engine.diffusion.adapters import DiffusionAdapter

    class OtherEos(models.LM):
        eos_ids = property(lambda self: {eos})
    other = OtherEos(**{f.name: getattr(lm, f.name) for f in dataclasses.fields(lm)})
    other.diffusion = DiffusionAdapter(lm.model, smol.MASK_ID, shift=True, bidirectional=True, name="tiny",
                                       eos_ids={eos})
    return other


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ONE_CASES))
def test_batched_decoder_of_one_equals_the_engine_diffusion_method(tiny_diffusion_lm, one_thread_module, case):
    import random

    from engine import run
    from engine.diffusion.batched import denoise_batch
    o = dict(ONE_CASES[case])
    lm = _with_eos(tiny_diffusion_lm, o.pop("eos")) if "eos" in o else tiny_diffusion_lm
    (eos,) = lm.eos_ids
    rule, block, steps, cache = o.pop("rule"), o.pop("block_length"), o.pop("steps", 0), o.pop("prefix_cache", False)
    lengths, most, seen = [], 0, set()
    for n in (5, 11):
        rng = random.Random(n)
        prompt = [rng.randrange(100, 400) for _ in range(n)]
        trace = run.run(lm, "diffusion", "", prompt_ids=prompt, max_new_tokens=16, record=False,
                        options={"rule": rule, "block_length": block, "steps": steps, "prefix_cache": cache, **o})
        want = trace.final_ids      # up to and including a settled EOS
        got = denoise_batch(lm.model, [prompt], smol.MASK_ID, eos, gen_length=16, block_length=block, steps=steps,
                            rule=rule, rule_params=o, prefix_cache=cache)[0]
        assert got[:len(want)] == want and all(t == eos for t in got[len(want):]), (n, got, want)
        lengths.append(len(want))
        seen |= set(want)
        most = max([most] + [len(st["new_ids"]) for st in trace.steps])
    assert len(seen) > 3           # not one token everywhere
    if rule == "threshold":
        assert most > 1            # some step committed several tokens
    if case == "lowconf_eos":
        assert min(lengths) < 16   # an answer ended at its EOS
