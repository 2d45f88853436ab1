"""The diffusion training script's batches and the delta save / load round trip (tiny model)."""
import random

import torch

from engine.diffusion import smol
from tests.conftest import make_tiny_lm
from training.train_diffusion import GEN_LEN, make_batch

MASK, PAD = smol.MASK_ID, 2


def _examples(n=4, seed=0):
    rng = random.Random(seed)
    return [{"prompt": [rng.randrange(100, 200) for _ in range(rng.randrange(3, 9))],
             "answer": [rng.randrange(200, 300) for _ in range(GEN_LEN)]} for _ in range(n)]


def test_make_batch_masks_only_answers_and_left_pads():
    ex = _examples()
    X, Y, A, W = make_batch(ex, random.Random(1), MASK, PAD)
    width = max(len(e["prompt"]) + GEN_LEN for e in ex)
    assert X.shape == Y.shape == A.shape == (len(ex), width)
    for i, e in enumerate(ex):
        n = len(e["prompt"]) + GEN_LEN
        pad = width - n
        assert not A[i, :pad].any() and A[i, pad:].all()  # left padding, real tokens attended
        assert (X[i, :pad] == PAD).all() and (Y[i, :pad] == -100).all()
        prompt = slice(pad, pad + len(e["prompt"]))
        assert X[i, prompt].tolist() == e["prompt"]  # the prompt is never masked
        assert (Y[i, prompt] == -100).all()
        ans_x, ans_y = X[i, pad + len(e["prompt"]):], Y[i, pad + len(e["prompt"]):]
        masked = ans_x == MASK
        assert masked.any()  # at least one target per example
        assert (ans_y[masked] == torch.tensor(e["answer"])[masked]).all()  # targets = the hidden tokens
        assert (ans_y[~masked] == -100).all() and (ans_x[~masked] == torch.tensor(e["answer"])[~masked]).all()
    assert ((W >= 1.0) & (W <= 50.0)).all()  # 1 / t with t ~ U(0.02, 1)


def test_mask_ratio_follows_t():
    rng = random.Random(3)
    ex = _examples(64, seed=2)
    X, Y, A, W = make_batch(ex, rng, MASK, PAD)
    ratio = ((X == MASK).sum(1).float() / GEN_LEN)
    t = 1.0 / W
    assert torch.corrcoef(torch.stack([ratio, t.float()]))[0, 1] > 0.9


def test_delta_round_trip(tmp_path, one_thread):
    lm = make_tiny_lm(seed=5)
    model = lm.model
    smol.add_lora(model, r=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # B starts at zero; give the delta an effect
        model.get_input_embeddings().weight[MASK].normal_()
    ids = torch.tensor([[5, 17, MASK, MASK, 40, MASK]])
    want = smol.diffusion_logits(model, ids)
    smol.save_delta(model, tmp_path, {"lora_r": 4, "lora_alpha": 8, "steps": 3})
    fresh = make_tiny_lm(seed=5).model
    assert not torch.allclose(smol.diffusion_logits(fresh, ids), want, atol=1e-3)
    meta = smol.apply_delta(fresh, tmp_path, merge=True)
    assert meta["steps"] == 3
    got = smol.diffusion_logits(fresh, ids)
    assert torch.allclose(got, want, atol=2e-2)  # fp16 delta
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


def test_split_heldout_keeps_the_long_set_when_short_data_is_added():
    from training.train_diffusion import split_heldout
    old = _examples(10, seed=4)  # earlier data carries no "kind": long
    train0, held0 = split_heldout(old, {"long": 3, "short": 2})
    assert held0 == old[-3:] and train0 == old[:-3]
    short = [{**e, "kind": "short"} for e in _examples(6, seed=5)]
    train, held = split_heldout(old + short, {"long": 3, "short": 2})
    assert [e for e in held if e.get("kind") is None] == held0  # the long held-out set is unchanged
    assert [e for e in held if e.get("kind") == "short"] == short[-2:]
    assert len(train) == 10 + 6 - 5 and not any(e in held for e in train)
