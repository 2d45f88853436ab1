"""The diffusion training script's batches and the delta save / load round trip (tiny model)."""
import random
from types import SimpleNamespace

import pytest
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


def test_certainty_forcing_batch_is_semi_autoregressive_and_complementary():
    from training.train_diffusion import make_batch_cf
    ex = _examples(6, seed=7)
    X, Y, A = make_batch_cf(ex, random.Random(2), MASK, PAD, block=16)
    assert X.shape[0] == 2 * len(ex)  # two rows per example
    width = X.shape[1]
    for i, e in enumerate(ex):
        P, ans = len(e["prompt"]), torch.tensor(e["answer"])
        rows = []
        for r in (2 * i, 2 * i + 1):
            a = width - GEN_LEN  # answers are right-aligned
            assert X[r, a - P:a].tolist() == e["prompt"] and (Y[r, :a] == -100).all()
            rows.append((X[r, a:], Y[r, a:]))
        (x1, y1), (x2, y2) = rows
        tgt1, tgt2 = y1 != -100, y2 != -100
        assert not (tgt1 & tgt2).any()  # complementary: each block token is a target exactly once
        block = (tgt1 | tgt2).nonzero()[:, 0]
        k0 = int(block[0])
        assert k0 % 16 == 0 and block.tolist() == list(range(k0, k0 + 16))  # one whole block
        for x, y, t in ((x1, y1, tgt1), (x2, y2, tgt2)):
            assert (x[:k0] == ans[:k0]).all()  # earlier blocks clean
            assert (x[k0 + 16:] == MASK).all() and (y[k0 + 16:] == -100).all()  # later blocks all [MASK], no loss
            assert (x[t] == MASK).all() and (y[t] == ans[t]).all()
            blk = torch.zeros(GEN_LEN, dtype=torch.bool)
            blk[k0:k0 + 16] = True
            assert (x[blk & ~t] == ans[blk & ~t]).all()  # the rest of the block is visible


def test_certainty_forcing_loss_sharpens_only_right_predictions():
    from training.train_diffusion import certainty_forcing_loss
    torch.manual_seed(0)
    logits = torch.randn(6, 50, requires_grad=True)
    targets = logits.detach().argmax(-1).clone()
    targets[3:] = (targets[3:] + 1) % 50  # rows 3..5 are wrong
    loss, ce, ent = certainty_forcing_loss(logits, targets, weight=2.0)
    assert torch.isclose(ce, torch.nn.functional.cross_entropy(logits, targets))
    p = torch.softmax(logits.detach()[:3] / 0.5, -1)
    assert torch.isclose(ent, -(p * p.log()).sum(-1).mean(), atol=1e-5)  # entropy over the right rows only
    assert torch.isclose(loss, ce + 2.0 * ent)
    # no right prediction: plain cross-entropy
    wrong = (logits.detach().argmax(-1) + 1) % 50
    loss0, ce0, ent0 = certainty_forcing_loss(logits, wrong, weight=2.0)
    assert torch.isclose(loss0, ce0) and ent0.item() == 0.0


def test_confident_error_penalty_hits_only_wrong_predictions():
    from training.train_diffusion import confident_error_penalty
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits.requires_grad_(True)
    top = logits.detach().argmax(-1)
    targets = top.clone()
    targets[4:] = (targets[4:] + 1) % 50  # rows 4, 5 are wrong
    pen = confident_error_penalty(logits, targets)
    p = torch.softmax(logits.detach()[4:], -1).max(-1).values
    assert torch.isclose(pen, -torch.log(1 - p).mean(), atol=1e-5)
    pen.backward()
    assert (logits.grad[:4] == 0).all()  # right rows untouched
    g = logits.grad[4:]
    assert (g[torch.arange(2), top[4:]] > 0).all()  # descent lowers the wrong top token's logit
    # every argmax right: no penalty
    assert confident_error_penalty(logits, top).item() == 0.0


def test_neighbour_penalty_targets_the_adjacent_masked_token():
    from training.train_diffusion import neighbour_penalty
    V = 20
    Yt = torch.tensor([[-100, 5, 7, 7, -100, 9]])  # masked targets at 1, 2, 3 and 5
    sel = Yt != -100
    logits = torch.zeros(4, V, requires_grad=True)
    pen = neighbour_penalty(logits, Yt, sel)
    # pairs with different tokens: (1 -> right 7), (2 -> left 5); 2/3 are both 7 (no penalty); 5 has none
    assert torch.isclose(pen, -torch.log(torch.tensor(1 - 1 / V)))
    pen.backward()
    g = logits.grad
    assert g[0, 7] > 0 and g[1, 5] > 0  # descent lowers the neighbour's token
    assert g[0, 5] < 0 and (g[2] == 0).all() and (g[3] == 0).all()
    # no adjacent masked pair: no penalty
    Y2 = torch.tensor([[5, -100, 7]])
    assert neighbour_penalty(torch.zeros(2, V), Y2, Y2 != -100).item() == 0.0


def test_repeat_unlikelihood_penalises_nearby_tokens_other_than_the_target():
    from training.train_diffusion import repeat_unlikelihood
    V = 20
    # row: pad, 3, [7], 4, [3], 3, [MASK outside the targets]; targets (masked) at columns 2 and 4
    Xt = torch.tensor([[PAD, 3, MASK, 4, MASK, 3, MASK]])
    Yt = torch.tensor([[-100, -100, 7, -100, 3, -100, -100]])
    At = torch.tensor([[False, True, True, True, True, True, True]])
    sel = Yt != -100
    logits = torch.zeros(2, V, requires_grad=True)
    pen = repeat_unlikelihood(logits, Yt, Xt, At, sel, window=2, mask_id=MASK)
    # target 7 (col 2) sees the pad at col 0 (not a candidate), 3 (cols 1 and 4: counted once) and 4: 2 candidates.
    # target 3 (col 4) sees 7, 4 and 3 (its own token: excluded); the [MASK] at col 6 is no candidate: 2 candidates
    one = -torch.log(torch.tensor(1 - 1 / V))
    assert torch.isclose(pen, 2 * one)
    pen.backward()
    g = logits.grad
    assert g[0, 3] > 0 and g[0, 4] > 0 and g[0, 7] < 0  # descent lowers 3 and 4 where 7 is right
    assert g[1, 7] > 0 and g[1, 4] > 0 and g[1, 3] < 0
    assert (g[0, 10:] < 0).all()  # every other token gains
    # a wider window reaches no further token: the row's ends are a pad and a [MASK]
    pen6 = repeat_unlikelihood(torch.zeros(2, V), Yt, Xt, At, sel, window=6, mask_id=MASK)
    assert torch.isclose(pen6, 2 * one)
    # a row that repeats only the target's own token: no penalty
    Y2 = torch.tensor([[5, 5]])
    X2 = torch.full_like(Y2, MASK)
    A2 = torch.ones_like(Y2, dtype=torch.bool)
    assert repeat_unlikelihood(torch.zeros(2, V), Y2, X2, A2, Y2 != -100, 4, MASK).item() == 0.0


def test_repeated_ngrams_marks_later_copies_up_to_the_eos():
    from training.train_diffusion import repeated_ngrams
    E = 2
    # "5 6 7 8 | 5 6 7 8 | 9" then EOS, then a copy after the EOS (ignored)
    a = [5, 6, 7, 8, 5, 6, 7, 8, 9, E, 5, 6, 7, 8]
    assert repeated_ngrams(a, 4, E) == [False] * 4 + [True] * 4 + [False] * 6
    # a loop entered mid-sentence: "1 5 6 7 8 5 6 7 8 5 6 7": every 4-gram from the second "5" on repeats
    b = [1, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    assert repeated_ngrams(b, 4, E) == [False] * 5 + [True] * 7
    # a 3-gram repeat is no 4-gram repeat; one token repeated 5 times is (overlapping copies)
    assert not any(repeated_ngrams([5, 6, 7, 1, 5, 6, 7, 2], 4, E))
    assert repeated_ngrams([3, 3, 3, 3, 3], 4, E) == [False, True, True, True, True]


def test_make_batch_seq_targets_only_masked_repeats_with_the_first_copy_in_view():
    from training.train_diffusion import loop_pool, make_batch_seq, repeated_ngrams
    E = 2
    loop = {"prompt": [100, 101, 102], "answer": ([20, 21, 22, 23, 24] * 12 + [E] * 4)[:GEN_LEN]}
    plain = {"prompt": [100], "answer": list(range(200, 200 + GEN_LEN))}
    marks = repeated_ngrams(loop["answer"], 4, E)
    rng = random.Random(0)
    for _ in range(20):
        X, Y, A = make_batch_seq(loop_pool([loop, plain], 4, E), rng, MASK, PAD, rows=2)
        assert X.shape[0] == 1  # the decode without a repeat is never drawn
        P = 3
        x, y = X[0, -(P + GEN_LEN):], Y[0, -(P + GEN_LEN):]
        assert (x[:P] == torch.tensor(loop["prompt"])).all()
        ans_x, ans_y = x[P:].tolist(), y[P:].tolist()
        tg = [j for j, v in enumerate(ans_y) if v != -100]
        assert tg and all(marks[j] and ans_x[j] == MASK and ans_y[j] == loop["answer"][j] for j in tg)
        cut = next(j for j, v in enumerate(ans_x) if v == MASK)
        assert min(tg) - cut <= 8  # cut at most 8 tokens before the drawn repeated token
        assert all(v == loop["answer"][j] for j, v in enumerate(ans_x[:cut]))  # clean before the cut
    with pytest.raises(ValueError, match="4-gram"):
        loop_pool([plain], 4, E)


def test_penalties_without_certainty_forcing_are_refused(capsys):
    from training.train_diffusion import main
    for flag in ("--wrong-penalty", "--neighbour-penalty", "--repeat-penalty", "--seq-penalty"):
        with pytest.raises(SystemExit):
            main(["train", flag, "1"])
        assert "--certainty" in capsys.readouterr().err


def _engine_low_confidence(lm, prompt, eos):
    from engine.diffusion.adapters import DiffusionAdapter
    from engine.diffusion.sampler import diffuse
    ad = DiffusionAdapter(lm.model, MASK, shift=True, bidirectional=True, name="tiny", eos_ids={eos})
    x = None
    for s in diffuse(ad, torch.tensor([prompt]), gen_length=GEN_LEN, block_length=16, steps=GEN_LEN,
                     rule="low_confidence"):
        x = s.x.tolist()
    return x


@pytest.mark.slow   # ~10-35 s: left out of make test-fast
def test_self_decode_matches_the_engine_low_confidence_sampler(one_thread):
    """gen-self's batched decoder (left-padded rows, no cache) = the engine's greedy low_confidence
    sampler, one prompt at a time, token for token; with the prefix cache (Fast-dLLM's approximation on
    a bidirectional model, not exact) it still fills every mask."""
    from training.train_diffusion import self_decode
    lm = make_tiny_lm(seed=7)
    eos = 2
    rng = random.Random(4)
    prompts = [[rng.randrange(100, 400) for _ in range(n)] for n in (3, 9, 6)]
    got = self_decode(lm.model, prompts, MASK, eos, block=16, prefix_cache=False)
    for p, g in zip(prompts, got):
        want = _engine_low_confidence(lm, p, eos)
        n = next((i + 1 for i, t in enumerate(want) if t == eos), GEN_LEN)  # engine stops at a settled EOS
        assert g[:n] == want[:n]
        assert all(t == eos for t in g[n:])
    cached = self_decode(lm.model, prompts, MASK, eos, block=16, prefix_cache=True)
    assert all(len(a) == GEN_LEN and MASK not in a for a in cached)


@pytest.mark.slow   # ~10-35 s: left out of make test-fast
def test_self_decode_threshold_matches_the_engine_threshold_rule(one_thread):
    """gen-self --threshold: the batched decoder with Fast-dLLM's rule (one block of 64, no cache) = the
    engine's threshold rule, token for token, in steps that commit several tokens; a threshold of 1.0 is
    one token per step (= low_confidence)."""
    from engine.diffusion.adapters import DiffusionAdapter
    from engine.diffusion.sampler import diffuse
    from training.train_diffusion import self_decode
    lm = make_tiny_lm(seed=7)
    with torch.no_grad():  # sharper logits (tied embeddings): confidences spread enough to straddle a threshold
        lm.model.get_input_embeddings().weight.mul_(20)
    eos = 2
    rng = random.Random(5)
    prompts = [[rng.randrange(100, 400) for _ in range(n)] for n in (4, 8)]
    ad = DiffusionAdapter(lm.model, MASK, shift=True, bidirectional=True, name="tiny", eos_ids={eos})
    run = lambda p, rule, **kw: list(diffuse(ad, torch.tensor([p]), gen_length=GEN_LEN, block_length=GEN_LEN,  # noqa: E731
                                             steps=GEN_LEN, rule=rule, rule_params=kw))
    for p in prompts:
        # the prompt's median first-step confidence: about half the masks clear it at once, fewer later
        thr = float(run(p, "low_confidence")[0].conf.median())
        g = self_decode(lm.model, [p], MASK, eos, block=GEN_LEN, prefix_cache=False, threshold=thr)[0]
        steps = run(p, "threshold", threshold=thr)
        assert 1 < len(steps) < GEN_LEN and max(int(s.committed.sum()) for s in steps) > 1
        want = steps[-1].x.tolist()
        n = next((i + 1 for i, t in enumerate(want) if t == eos), GEN_LEN)
        assert g[:n] == want[:n]
    # batched (left-padded rows), threshold 1.0: one token per step
    one = self_decode(lm.model, prompts, MASK, eos, block=GEN_LEN, prefix_cache=False, threshold=1.0)
    for p, g in zip(prompts, one):
        want = run(p, "low_confidence")[-1].x.tolist()
        n = next((i + 1 for i, t in enumerate(want) if t == eos), GEN_LEN)
        assert g[:n] == want[:n]


@pytest.mark.slow
def test_interpolated_delta_is_the_exact_weighted_update(tmp_path, one_thread):
    """training interpolate: (1 - a) B0 A0 + a B1 A1 as one LoRA of rank 2r, mask row interpolated."""
    from training.train_diffusion import interpolate_deltas
    deltas, rows = [], []
    for seed in (1, 2):
        model = make_tiny_lm(seed=5).model
        smol.add_lora(model, r=4, alpha=8)
        torch.manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.1)
            model.get_input_embeddings().weight[MASK].normal_()
        smol.save_delta(model, tmp_path / f"d{seed}", {"lora_r": 4, "lora_alpha": 8})
        smol.merge_lora(model)
        deltas.append({n: p.detach().clone() for n, p in model.named_parameters()})
        rows.append(model.get_input_embeddings().weight[MASK].detach().clone())
    base = {n: p.detach().clone() for n, p in make_tiny_lm(seed=5).model.named_parameters()}
    a = 0.3
    interpolate_deltas(tmp_path / "d1", tmp_path / "d2", a, tmp_path / "mix")
    fresh = make_tiny_lm(seed=5).model
    meta = smol.apply_delta(fresh, tmp_path / "mix", merge=True)
    assert meta["lora_r"] == 8 and meta["interpolation"]["a"] == a
    got = dict(fresh.named_parameters())
    changed = 0
    for n, w in base.items():
        if "embed" in n:
            continue
        want = w + (1 - a) * (deltas[0][n] - w) + a * (deltas[1][n] - w)
        assert torch.allclose(got[n], want, atol=3e-3), n  # fp16 LoRA factors
        changed += not torch.allclose(w, want)
    assert changed > 0
    row = fresh.get_input_embeddings().weight[MASK]
    assert torch.allclose(row, (1 - a) * rows[0] + a * rows[1], atol=3e-3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate_deltas(tmp_path / "d1", tmp_path / "d2", 1.5, tmp_path / "bad")


def test_draw_batch_pools():
    """--sampled-only draws only SmolLM2's sampled answers; the shares pick self / greedy slots; no shares: all but self."""
    from argparse import Namespace

    from training.train_diffusion import batch_pools, draw_batch
    train = ([{"kind": "self", "i": i} for i in range(20)] + [{"kind": "greedy", "i": i} for i in range(20)]
             + [{"kind": "long", "i": i} for i in range(20)] + [{"kind": "short", "i": i} for i in range(20)]
             + [{"i": i} for i in range(5)])  # early data has no kind: it is "long"
    pools = batch_pools(train)
    assert len(pools["sampled"]) == 45 and len(pools["base"]) == 65
    rng = random.Random(0)
    kinds = lambda b: {e.get("kind", "long") for e in b}  # noqa: E731
    args = Namespace(batch=8, sampled_only=True, self_share=0.8, greedy_share=0.2)
    seen = set().union(*(kinds(draw_batch(rng, pools, args)) for _ in range(50)))
    assert seen == {"long", "short"}
    args = Namespace(batch=8, sampled_only=False, self_share=0.0, greedy_share=0.0)
    seen = set().union(*(kinds(draw_batch(rng, pools, args)) for _ in range(50)))
    assert seen == {"long", "short", "greedy"}
    args = Namespace(batch=8, sampled_only=False, self_share=1.0, greedy_share=0.0)
    assert all(kinds(draw_batch(rng, pools, args)) == {"self"} for _ in range(10))
    args = Namespace(batch=8, sampled_only=False, self_share=0.0, greedy_share=1.0)
    assert all(kinds(draw_batch(rng, pools, args)) == {"greedy"} for _ in range(10))


class _Oracle(torch.nn.Module):
    """A 'model' whose logits (read shifted, as diffusion_logits does) put all mass on the answer's true
    token at every position, except `wrong_at` offsets after each row's first [MASK] where it is sure of a wrong one."""

    def __init__(self, full, vocab=400, wrong_at=()):
        super().__init__()
        self.full, self.vocab, self.wrong_at = full, vocab, set(wrong_at)

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        logits = torch.full((B, L, self.vocab), -30.0)
        for b in range(B):
            target = torch.tensor(self.full[:L])
            masked = (input_ids[b] == MASK).nonzero()
            first = int(masked[0]) if len(masked) else L
            for d in self.wrong_at:
                if first + d < L:
                    target[first + d] = (target[first + d] + 1) % self.vocab
            # out[:, i] predicts ids[:, i] after the shift: the raw logits at i - 1 carry token i
            logits[b, torch.arange(L - 1), target[1:]] = 30.0
        return SimpleNamespace(logits=logits)


def test_evaluate_ahead_counts_confident_and_right_predictions_per_offset():
    from training.train_diffusion import evaluate_ahead
    eos = 2
    prompt, answer = [101, 102, 103], [200 + i for i in range(20)] + [eos] * (GEN_LEN - 20)
    ex = [{"prompt": prompt, "answer": answer}]
    ev = evaluate_ahead(_Oracle(prompt + answer), ex, MASK, eos, cuts=5)
    assert ev["ahead0_conf>=0.9"] == 1.0 and ev["ahead1_acc_if_conf"] == 1.0 and ev["ahead2_acc_if_conf"] == 1.0
    ev = evaluate_ahead(_Oracle(prompt + answer, wrong_at=(1,)), ex, MASK, eos, cuts=5)
    assert ev["ahead0_acc_if_conf"] == 1.0 and ev["ahead1_acc_if_conf"] == 0.0 and ev["ahead2_acc_if_conf"] == 1.0
    assert ev["ahead1_conf>=0.9"] == 1.0
