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
