"""Re-warp recorded steps: other sampling settings applied to the distributions a run recorded, with no forward.

For an autoregressive step recorded with record_logits, the step's full logits are at hand (float16) and the
new settings' warped distribution is exact (engine.sampling.warp, the same code a run uses). Without them
only the recorded top candidates' raw probabilities are known: the settings are then applied over those
candidates alone (renormalised among them), and the result says it is approximate (exact=False) -- close
when the candidates hold most of the mass and the temperature is <= 1, where the tail only shrinks.

    rewarp.step(rec, SamplingConfig(temperature=0.7, top_p=0.9))
      -> {"exact": True, "choice": id, "candidates": [{"id", "p_raw", "p_warped", "was_p_warped"}...],
          "chosen_p": probability of the token the run chose, under the new settings}
"""
from __future__ import annotations

import base64
import binascii

import numpy as np
import torch

from engine import sampling as S
from engine.errors import InputError
from engine.trace import clean_float


def logits_of(rec: dict) -> torch.Tensor | None:
    """The step's recorded full logits (float32), or None when the run did not record them."""
    enc = rec.get("logits_f16") if isinstance(rec, dict) else None
    if not enc:
        return None
    try:
        raw = base64.b64decode(enc, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("The step's recorded logits are damaged (not base64).") from None
    if len(raw) % 2 or not raw:
        raise InputError("The step's recorded logits are damaged (odd length).")
    x = torch.from_numpy(np.frombuffer(raw, dtype=np.float16).astype(np.float32))
    if not torch.isfinite(x).all():
        raise InputError("The step's recorded logits are damaged (not finite).")
    return x


def step(rec: dict, cfg: S.SamplingConfig, top: int = 10) -> dict:
    """The step under other sampling settings: the top candidates' warped probabilities, the token the new
    settings choose greedily (or the most likely one when sampling), and the run's own token's probability."""
    if not isinstance(cfg, S.SamplingConfig):
        raise InputError("rewarp needs a SamplingConfig.")
    if not isinstance(rec, dict) or rec.get("kind") != "ar":
        raise InputError("Only autoregressive steps can be re-warped (they record their candidates).")
    chosen = rec.get("token_id")
    was = {c["id"]: c.get("p_warped") for c in rec.get("candidates") or []}
    logits = logits_of(rec)
    if logits is not None and (logits.numel() < 2 or max([chosen if isinstance(chosen, int) else 0, *was]) >= logits.numel()):
        raise InputError(f"The step's recorded logits are damaged ({logits.numel()} entries, fewer than its token ids).")
    if logits is not None:
        raw = logits.softmax(-1)
        warped = S.warp(logits, cfg).softmax(-1)
        ids = torch.topk(warped, min(top, warped.numel())).indices.tolist()
        ids += [int(c) for c in was if c not in ids]
        cands = [{"id": int(t), "p_raw": clean_float(raw[t]), "p_warped": clean_float(warped[t]),
                  "was_p_warped": was.get(int(t))} for t in ids]
        choice = int(warped.argmax())
        chosen_p = clean_float(warped[chosen]) if isinstance(chosen, int) and 0 <= chosen < warped.numel() else None
        return {"exact": True, "choice": choice, "candidates": cands, "chosen_p": chosen_p}
    cands = [c for c in rec.get("candidates") or [] if isinstance(c.get("p_raw"), (int, float))]
    if not cands:
        raise InputError("This step recorded no candidates to re-warp.")
    ids = [int(c["id"]) for c in cands]
    p = torch.tensor([max(float(c["p_raw"]), 1e-30) for c in cands], dtype=torch.float64)
    logits = p.log()      # the recorded candidates only: the rest of the vocabulary is not known
    warped = S.warp(logits.float(), cfg).softmax(-1)
    cand_p = warped[:len(ids)]
    order = torch.argsort(cand_p, descending=True).tolist()
    out = [{"id": ids[i], "p_raw": clean_float(p[i]), "p_warped": clean_float(cand_p[i]),
            "was_p_warped": was.get(ids[i])} for i in order]
    chosen_p = next((o["p_warped"] for o in out if o["id"] == chosen), None)
    return {"exact": False, "choice": ids[order[0]], "candidates": out, "chosen_p": chosen_p}


def trace_steps(steps: list[dict], cfg: S.SamplingConfig, top: int = 10) -> list[dict | None]:
    """Every AR step re-warped (None for steps of other kinds): what the new settings would have done."""
    return [step(s, cfg, top) if isinstance(s, dict) and s.get("kind") == "ar" else None for s in steps]
