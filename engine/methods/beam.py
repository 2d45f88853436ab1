"""Beam search and diverse beam search, one KV-cache row per beam and one forward per step over all beams.

Every step extends each running beam by one token. The beams are split into `num_beam_groups` groups of
`num_beams / num_beam_groups` (one group: plain beam search). Group by group, in order, a continuation
`token` of beam `b` scores

    score(b) + log p(token | b) - diversity_penalty * (times `token` was chosen at this step by earlier groups)

(the Hamming diversity term of "Diverse Beam Search", Vijayakumar et al.; the penalty stays in the beam's
score). A group keeps its K best continuations (K = max(2, 1 + #EOS tokens) x group size, so that enough of
them do not end), moves those among its best `group size` that end (an EOS token, or the token budget) to
its finished hypotheses, scored `score / length ** length_penalty`, and runs on with its best `group size`
continuations that do not end. The cache rows are then reordered to the new beams (DynamicCache.reorder_cache).

Stopping follows Hugging Face's beam search (early_stopping): "true" closes a group once it holds `group
size` hypotheses; "false" once no running beam can beat its worst hypothesis, judged at the current length;
"never" the same, judged at the longest possible length when length_penalty > 0 (the exact bound).
The answer is the best hypothesis of all groups; the n-best list is every group's hypotheses, best first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from engine.methods import MethodError, OptionError, register
from engine.methods.ar import prefill
from engine.options import Not, Opt
from engine.trace import clean_float

MAX_BEAMS = 32
MAX_RECORDED = 512        # pruned candidates recorded per step (the views draw fewer)
NEG = -1.0e9              # the score of a beam that must not be chosen (Hugging Face's value)
STOPPING = {"false": False, "true": True, "never": "never"}


@dataclass
class Hypothesis:
    score: float          # cumulative score / length ** length_penalty
    total: float          # cumulative score (log-probs, minus diversity penalties)
    ids: list[int]
    group: int
    step: int             # the step it finished at, and its place in that step's "finished" list
    slot: int


def check(o: dict, ctx) -> None:
    n, groups = o["num_beams"], o["num_beam_groups"]
    if n % groups:
        raise OptionError(f"num_beam_groups must divide num_beams: {groups} groups of {n} beams are not equal groups "
                          f"(try {', '.join(str(d) for d in range(1, n + 1) if n % d == 0)}).")
    if groups > 1 and o["diversity_penalty"] == 0:
        raise OptionError("diversity_penalty must be > 0 with num_beam_groups > 1: without it every group finds "
                          "the same beams.")
    if not ctx.sampling.greedy:
        raise MethodError("Beam search here is deterministic: set temperature to 0 (beam sampling is not "
                          "implemented).")


@register("beam", "search", "Beam search (diverse beam search with groups): the best beams per step, with "
          "length penalty and early stopping, as Hugging Face's generate(num_beams=...).",
          options={
              "num_beams": Opt(4, "beams kept per step", min=1, max=MAX_BEAMS),
              "num_beam_groups": Opt(1, "groups of beams (diverse beam search when > 1); must divide num_beams",
                                     min=1, max=MAX_BEAMS),
              "diversity_penalty": Opt(0.5, "subtracted from a token's log-prob for every earlier group that chose "
                                            "it at the same step (Hamming diversity)", min=0.0, max=100.0,
                                       when={"num_beam_groups": Not((1,))}),
              "length_penalty": Opt(1.0, "finished scores are divided by length ** length_penalty (0: none; "
                                         "> 0 favours longer answers)", min=-10.0, max=10.0),
              "early_stopping": Opt("false", "when a group stops: true (once it has num_beams hypotheses), false "
                                             "(when its best beam cannot win, judged now), never (judged at the "
                                             "longest length)", choices=tuple(STOPPING)),
              "candidates_per_beam": Opt(3, "pruned continuations recorded per beam (the view's grey leaves)",
                                         min=0, max=20),
          }, check=check, lossless=False)
def generate(job, num_beams: int = 4, num_beam_groups: int = 1, diversity_penalty: float = 0.5,
             length_penalty: float = 1.0, early_stopping: str = "false", candidates_per_beam: int = 3):
    """One decoding loop that reads better whole: every step's stages (each group's top-k under the
    diversity penalty, the finished hypotheses, the early-stop test, the record) share the running scores,
    hypotheses and back-pointers; apart, they would pass a dozen values to each other (issue 29)."""
    lm, c = job.lm, job.counters
    stop_rule = STOPPING[early_stopping]
    G, B = num_beam_groups, num_beams
    g = B // G
    penalty = diversity_penalty if G > 1 else 0.0
    eos = sorted(job.eos_ids)
    K = max(2, 1 + len(eos)) * g
    dev = lm.device
    eos_t = torch.tensor(eos, dtype=torch.long, device=dev)
    per_token = lm.kv_bytes_per_token()
    L = job.input_ids.shape[1]
    cache = DynamicCache()
    finished: list[list[Hypothesis]] = [[] for _ in range(G)]   # per group, best first, at most g
    can_improve = [True] * G     # Hugging Face's early-stop heuristic not yet satisfied
    back: list[tuple[list[int], list[int]]] = []   # per step: the running beams' parent slots and tokens
    kv_peak = 0
    with torch.inference_mode():
        with c.compute():
            logits = prefill(lm, job.input_ids, cache).expand(B, -1)
            cache.batch_repeat_interleave(B)     # one cache row per beam
            scores = torch.full((G, g), NEG, device=dev)
            scores[:, 0] = 0.0                   # one live beam per group: the prompt
        c.target_forwards += 1
        for t in range(job.max_new_tokens):
            last = t + 1 >= job.max_new_tokens
            with c.compute():
                logp = torch.log_softmax(logits.float(), -1)                  # [B, V]
                V = logp.shape[-1]
                chosen = torch.zeros(V, device=dev)                           # tokens earlier groups chose now
                new_scores = torch.empty_like(scores)
                parents, tokens, groups_out = [], [], []
                for i in range(G):
                    lp = logp[i * g:(i + 1) * g]
                    pen = penalty * chosen if penalty and i else None
                    if pen is not None:
                        lp = lp - pen
                    total = lp + scores[i, :, None]                           # [g, V]
                    top_s, top_i = torch.topk(total.reshape(-1), K)
                    parent, tok = top_i // V, top_i % V
                    eos_hit = torch.isin(tok, eos_t) if eos else torch.zeros_like(tok, dtype=torch.bool)
                    ends = eos_hit | last
                    running = top_s + ends.float() * NEG
                    nxt = torch.topk(running, g).indices
                    new_scores[i] = running[nxt]
                    if penalty:   # the tokens of the group's beams that go on (at the last step: that do not end in EOS)
                        goes_on = nxt if not last else torch.topk(top_s + eos_hit.float() * NEG, g).indices
                        chosen += torch.bincount(tok[goes_on], minlength=V).float()
                    norm = top_s[:g] / ((t + 1) ** length_penalty)
                    groups_out.append(dict(top_s=top_s, parent=parent, tok=tok, ends=ends, nxt=nxt, norm=norm,
                                           total=total, pen=pen))
                    parents.append(parent[nxt] + i * g)
                    tokens.append(tok[nxt])
                beam_idx = torch.cat(parents)
                new_tokens = torch.cat(tokens)
                # finished hypotheses: the ending continuations among each group's best g
                done_now: list[list[dict]] = []     # per group: {j (place among the K), score, total, slot, kept}
                slot = 0
                for i, d in enumerate(groups_out):
                    open_ = can_improve[i] and not (stop_rule is True and len(finished[i]) == g)
                    rows = []
                    for j in d["ends"][:g].nonzero().flatten().tolist():
                        row = {"j": j, "score": float(d["norm"][j]), "total": float(d["top_s"][j]), "slot": slot,
                               "kept": open_}
                        slot += 1
                        if open_:
                            ids = _backtrack(back, int(d["parent"][j]) + i * g, len(back)) + [int(d["tok"][j])]
                            finished[i].append(Hypothesis(row["score"], row["total"], ids, i, t, row["slot"]))
                        rows.append(row)
                    finished[i].sort(key=lambda h: -h.score)
                    del finished[i][g:]
                    kept = {h.slot for h in finished[i] if h.step == t}
                    for row in rows:
                        row["kept"] = row["kept"] and row["slot"] in kept
                    done_now.append(rows)
                back.append((beam_idx.tolist(), new_tokens.tolist()))
                # can a running beam still beat a group's worst hypothesis? (after this step's token)
                for i in range(G):
                    if len(finished[i]) == g:
                        length = job.max_new_tokens if stop_rule == "never" and length_penalty > 0 else t + 1
                        best = new_scores[i, :1] / (length ** length_penalty)
                        worst = min(h.score for h in finished[i])
                        can_improve[i] = can_improve[i] and bool(best[0] > worst)
                all_end = all(bool(d["ends"].all()) for d in groups_out)
                all_full = all(len(f) == g for f in finished) and stop_rule is True
                stop = last or all_end or all_full or not any(can_improve)
            kv_peak = max(kv_peak, B * (L + t) * per_token)
            best_now = _best(finished)
            if stop and best_now is not None:
                job.output_ids[:] = best_now.ids           # the answer
            elif job.record:                               # so far: the best running beam
                job.output_ids[:] = _backtrack(back, int(torch.argmax(new_scores.reshape(-1))), len(back))
            c.generated_tokens = len(job.output_ids)
            rec = {"kind": "beam", "index": t, "length": t + 1, "groups": G, "group_size": g,
                   "length_penalty": length_penalty,
                   "done": bool(stop), "kv_bytes": B * (L + t) * per_token}
            if stop:
                rec["stop"] = ("token budget" if last else "every continuation ended" if all_end else
                               "every group has its hypotheses (early_stopping)" if all_full else
                               "no running beam can beat the hypotheses")
            if job.record:
                with c.recording():
                    rec.update(_record(lm, t, logp, groups_out, done_now, finished, g,
                                       candidates_per_beam))
            lead = rec.get("beams") or []
            rec["new_ids"] = [lead[0]["token"]] if lead else []
            if lead:
                rec["new_text"] = lead[0]["text"]
                rec["confidence"] = clean_float(math.exp(lead[0]["logprob"]))
            yield rec
            if stop:
                break
            with c.compute():
                cache.reorder_cache(beam_idx)
                scores = new_scores
                out_ = lm.model(input_ids=new_tokens[:, None], past_key_values=cache, use_cache=True)
                logits = out_.logits[:, -1, :]
            c.target_forwards += 1
    nbest = sorted((h for f in finished for h in f), key=lambda h: -h.score)
    job.extra["nbest"] = [{"ids": h.ids, "text": lm.decode(h.ids), "score": clean_float(h.score),
                           "total": clean_float(h.total), "group": h.group, "length": len(h.ids)} for h in nbest]
    job.extra["summary"] = {"num_beams": B, "num_beam_groups": G, "hypotheses": len(nbest),
                            "kv_bytes_peak": kv_peak, "forwarded_tokens": L + B * (c.target_forwards - 1)}


def _backtrack(back: list[tuple[list[int], list[int]]], slot: int, upto: int) -> list[int]:
    """The tokens of the running beam in `slot` after step `upto - 1`, from the first step on."""
    out = []
    for s in range(upto - 1, -1, -1):
        parents, toks = back[s]
        out.append(toks[slot])
        slot = parents[slot]
    return out[::-1]


def _best(finished: list[list[Hypothesis]]) -> Hypothesis | None:
    return max((h for f in finished for h in f), key=lambda h: h.score, default=None)


def _cand(lm, parent: int, tok: int, logprob: float, score: float, group: int, pen: float | None) -> dict:
    d = {"parent": parent, "token": tok, "text": lm.token_text(tok), "logprob": clean_float(max(logprob, -1e4)),
         "score": clean_float(max(score, -1e8)), "group": group}
    if pen:
        d["penalty"] = clean_float(pen)
    return d


def _record(lm, t, logp, groups_out, done_now, finished, g, per_beam) -> dict:
    """The step's kept beams, pruned continuations and finished hypotheses. `parent` is the slot of the beam
    extended in the previous step's `beams` (-1: the prompt, at step 0)."""
    beams, pruned, fin = [], [], []
    for i, d in enumerate(groups_out):
        parent, tok, top_s = d["parent"].tolist(), d["tok"].tolist(), d["top_s"].tolist()
        nxt = d["nxt"].tolist()
        ends = d["ends"].tolist()
        pen = d["pen"]

        def pslot(p):
            return -1 if t == 0 else p + i * g

        def penalty_of(tk):
            return float(pen[tk]) if pen is not None else None

        taken = set()
        for j in nxt:
            if ends[j]:        # (only when fewer than g continuations go on: the last step)
                continue
            taken.add((parent[j], tok[j]))
            beams.append(_cand(lm, pslot(parent[j]), tok[j], float(logp[parent[j] + i * g, tok[j]]), top_s[j], i,
                               penalty_of(tok[j])))
        for row in done_now[i]:
            j = row["j"]
            taken.add((parent[j], tok[j]))
            c = _cand(lm, pslot(parent[j]), tok[j], float(logp[parent[j] + i * g, tok[j]]), row["total"], i,
                      penalty_of(tok[j]))
            c.update(norm_score=clean_float(row["score"]), length=t + 1, kept=bool(row["kept"]),
                     eos=tok[j] in lm.eos_ids)
            fin.append(c)
        extra = list(zip(parent, tok, top_s))        # the group's K best, then each beam's own best
        if per_beam:
            live = (d["total"].max(-1).values > NEG / 2).nonzero().flatten().tolist()
            if t == 0:
                live = live[:1]
            for b in live:
                vals, ids = torch.topk(d["total"][b], per_beam)
                extra += [(b, int(k), float(v)) for k, v in zip(ids.tolist(), vals.tolist())]
        for b, tk, s in extra:
            if (b, tk) in taken or len(pruned) >= MAX_RECORDED:
                continue
            taken.add((b, tk))
            pruned.append(_cand(lm, pslot(b), tk, float(logp[b + i * g, tk]), s, i, penalty_of(tk)))
    nbest = sorted((h for f in finished for h in f), key=lambda h: -h.score)
    return {"beams": beams, "pruned": pruned, "finished": fin,
            "nbest": [{"step": h.step, "slot": h.slot, "score": clean_float(h.score), "group": h.group}
                      for h in nbest]}
