"""The training losses beyond masked cross-entropy: certainty forcing, confident-error and neighbour
penalties, sequence-level unlikelihood against the model's own loops."""
from __future__ import annotations


import torch


def certainty_forcing_loss(logits, targets, weight: float, temperature: float = 0.5):
    """Mean cross-entropy over the masked targets + weight x mean entropy (at `temperature`) of the
    positions whose argmax is already the target: confident where the model is right (dParallel).
    Temperature 0.5 is dParallel's; 1.0 sharpens the very probabilities a threshold rule reads."""
    ce = torch.nn.functional.cross_entropy(logits, targets)
    right = logits.argmax(-1) == targets
    if not right.any():
        return ce, ce, torch.zeros(())
    logp = torch.log_softmax(logits[right] / temperature, -1)
    ent = -(logp.exp() * logp).sum(-1).mean()
    return ce + weight * ent, ce, ent


def unlikelihood(p):
    """-log(1 - p): the unlikelihood of a probability the model should not give (clamped below 1)."""
    return -torch.log1p(-p.clamp(max=1 - 1e-6))


def confident_error_penalty(logits, targets):
    """Mean over the masked positions whose argmax is wrong of -log(1 - p(argmax)) at T = 1: an
    unlikelihood term on confident mistakes. A threshold rule commits whatever clears 0.9, so a wrong
    token at 0.9 (e.g. the neighbour's token one position off, "like like") is what costs quality;
    certainty forcing alone sharpens right predictions and lets wrong ones sharpen with them.
    Zero when every argmax is right."""
    wrong = logits.argmax(-1) != targets
    if not wrong.any():
        return torch.zeros(())
    p_top = torch.softmax(logits[wrong], -1).max(-1).values
    return unlikelihood(p_top).mean()


def neighbour_penalty(logits, Yt, sel):
    """Unlikelihood on the off-by-one mistake of parallel decoding ("type type", "ice ice"): for each
    masked target whose left or right neighbour is also a masked target with a different token,
    -log(1 - p(neighbour's token)), averaged over those pairs. logits: rows for Yt[sel] in row-major
    order (as lm_head(h[sel])); Yt: targets, -100 where there is none. Zero when no pair exists."""
    left = torch.full_like(Yt, -100)
    left[:, 1:] = Yt[:, :-1]
    right = torch.full_like(Yt, -100)
    right[:, :-1] = Yt[:, 1:]
    y = Yt[sel]
    logp = torch.log_softmax(logits, -1)
    terms = []
    for yn in (left[sel], right[sel]):
        ok = (yn != -100) & (yn != y)
        if ok.any():
            p = logp[ok].gather(1, yn[ok][:, None]).squeeze(1).exp()
            terms.append(unlikelihood(p))
    return torch.cat(terms).mean() if terms else torch.zeros(())


def repeat_unlikelihood(logits, Yt, Xt, At, sel, window: int, mask_id: int):
    """Token-level unlikelihood (Welleck et al. 2019) against copying, for a bidirectional model: for
    each masked target, the candidates are the distinct tokens of the row's text (the target where the
    position is masked, the input otherwise; not [MASK], not padding) within `window` positions either
    side, minus the target itself; the term is the sum over candidates of -log(1 - p(candidate)),
    averaged over the targets. A greedy parallel decoder loops ("is a cat is a cat") when repeating a
    nearby token is its most confident move; this lowers exactly those probabilities where the text
    does not repeat. logits: rows for Yt[sel] in row-major order; Xt / At: inputs and real-token mask
    aligned with Yt. Zero when no target has a candidate."""
    G = torch.where(Yt != -100, Yt, Xt)
    ok_tok = At & (G != mask_id)
    rows, cols = sel.nonzero(as_tuple=True)
    y = Yt[rows, cols]
    L = G.shape[1]
    cand, ok = [], []
    for d in [d for d in range(-window, window + 1) if d != 0]:
        c = cols + d
        cc = c.clamp(0, L - 1)
        tok = G[rows, cc]
        cand.append(tok)
        ok.append((c >= 0) & (c < L) & ok_tok[rows, cc] & (tok != y))
    cand, ok = torch.stack(cand, 1), torch.stack(ok, 1)
    # each distinct token once: drop a candidate equal to an earlier kept one
    same = cand[:, :, None] == cand[:, None, :]
    earlier = torch.ones(same.shape[1:], dtype=torch.bool).tril(-1)
    ok = ok & ~(same & earlier & ok[:, None, :]).any(-1)
    if not ok.any():
        return torch.zeros(())
    p = torch.softmax(logits, -1).gather(1, torch.where(ok, cand, 0))
    terms = unlikelihood(p) * ok
    return terms.sum(1).mean()
