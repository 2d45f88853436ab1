"""Lookahead decoding ("Break the Sequential Dependency of LLM Inference Using Lookahead Decoding",
hao-ai-lab/LookaheadDecoding): a lookahead branch and a verification branch in ONE forward pass.

(~350 lines, one file on purpose: the window, the n-gram pool, the one forward's input layout and
its verification are the parts of one loop, read together with it.)

Lookahead branch: a 2-D window of N-1 levels of past Jacobi guesses. Level 0 holds W-1 tokens at positions
P+1.. (P = position of the last committed token); level l >= 1 holds W tokens, token c at position P+l+c.
Column c is one Jacobi trajectory seen along a diagonal: token (l, c) attends the committed prefix, the
level-0 tokens before column c and the tokens of its own column at levels 1..l, so it sees the contiguous
sequence [last, level0[:c], level1[c], ..., level_l[c]] and its prediction is the next token of that chain.
Each step the window moves up one level (the oldest level is dropped, the predictions of the newest level
become the new top level), and every column yields an N-gram
    (level0[c-1] or the last token for c = 0, level1[c], ..., level_{N-2}[c], prediction[c])
that goes into a pool keyed by its first token, at most G per key with LRU replacement. The first N-2
steps fill the levels (warm-up), as in the reference code.

Verification branch: up to G pool n-grams whose key is the last committed token, each N-1 tokens at
positions P+1..P+N-1, each attending the prefix and its own earlier tokens only. Greedy verification
keeps the longest candidate prefix whose every token equals the model's argmax after its parent, plus the
model's own next token: the output is identical to autoregressive greedy decoding. When sampling, each
depth tries the surviving candidates' distinct tokens in turn and accepts x with probability p(x) (the
draft is a point mass); a rejected token is zeroed in p and p renormalised; if all are rejected the token
is drawn from what is left of p (the reference code's rule, which keeps the output distribution exact).
Both rules run through speculative/verify.py: the candidates form one trie of point-mass drafts (`verify`).

The KV cache keeps only the committed tokens: the accepted candidate's entries are moved next to the
prefix and everything after them is cropped. The lookahead branch always uses argmax (as the reference).
"""
from __future__ import annotations

import random

import torch
from transformers import DynamicCache

from engine import attention, kvcache
from engine.methods import Job, register
from engine.methods.jacobi import resume_guesses, texts
from engine.methods.speculative import verify as V
from engine.methods.speculative.trees import DraftTree
from engine.options import Opt
from engine.trace import clean_float
from kernels import dispatch as KD

MAX_W, MAX_N, MAX_G = 64, 16, 64


class NgramPool:
    """n-grams keyed by their first token; at most `cap` tails per key, least recently used dropped first."""

    def __init__(self, n: int, cap: int):
        self.n, self.cap = n, cap
        self.map: dict[int, list[tuple[int, ...]]] = {}

    def add(self, key: int, tail: tuple[int, ...]) -> None:
        lst = self.map.setdefault(int(key), [])
        if tail in lst:
            lst.remove(tail)
        elif len(lst) >= self.cap:
            lst.pop(0)
        lst.append(tail)

    def add_sequence(self, tokens: list[int]) -> list[list[int]]:
        """Add every n-gram of `tokens`; return them (for the record)."""
        added = []
        for i in range(len(tokens) - self.n + 1):
            g = tokens[i:i + self.n]
            self.add(g[0], tuple(g[1:]))
            added.append(list(g))
        return added

    def get(self, key: int) -> list[tuple[int, ...]]:
        return list(self.map.get(int(key), []))

    def size(self) -> int:
        return sum(len(v) for v in self.map.values())


def build_inputs(pending: list[int], levels: list[list[int]], cands: list[tuple[int, ...]], cache_len: int,
                 dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Token ids, position ids and the combined 4D attention mask of one lookahead step.

    Layout of the new tokens: [pending][level 0][level 1]..[level f][candidate 0]..[candidate g-1].
    """
    k = len(pending)
    last_pos = cache_len + k - 1
    toks, pos = list(pending), list(range(cache_len, cache_len + k))
    offsets = []
    for l, lv in enumerate(levels):
        offsets.append(len(toks))
        toks += lv
        start = last_pos + 1 if l == 0 else last_pos + l
        pos += list(range(start, start + len(lv)))
    cand_offsets = []
    for cnd in cands:
        cand_offsets.append(len(toks))
        toks += list(cnd)
        pos += list(range(last_pos + 1, last_pos + 1 + len(cnd)))
    T = len(toks)
    allowed = torch.zeros(T, T, dtype=torch.bool)
    allowed[:k, :k] = torch.ones(k, k, dtype=torch.bool).tril()
    allowed[k:, :k] = True
    L0 = len(levels[0]) if levels else 0
    o0 = offsets[0] if levels else k
    if L0:
        allowed[o0:o0 + L0, o0:o0 + L0] = torch.ones(L0, L0, dtype=torch.bool).tril()
    for l in range(1, len(levels)):
        ol, L = offsets[l], len(levels[l])
        if L0:
            allowed[ol:ol + L, o0:o0 + L0] = torch.ones(L, L0, dtype=torch.bool).tril(-1)  # level0[:c]
        for l2 in range(1, l + 1):
            o2 = offsets[l2]
            idx = torch.arange(L)
            allowed[ol + idx, o2 + idx] = True  # own column at levels 1..l (incl. itself)
    for oc, cnd in zip(cand_offsets, cands):
        n = len(cnd)
        allowed[oc:oc + n, oc:oc + n] = torch.ones(n, n, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, T, cache_len + T, dtype=dtype)
    mask[0, 0, :, cache_len:] = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)
    layout = {"k": k, "level_offsets": offsets, "cand_offsets": cand_offsets, "T": T}
    return (torch.tensor([toks], device=device), torch.tensor([pos], device=device), mask.to(device), layout)


def keep_accepted_kv(cache: DynamicCache, cache_len: int, k: int, src_offset: int, a: int) -> None:
    """Keep the prefix and the k window entries, move the accepted candidate's a KV entries next to them,
    drop everything after."""
    kvcache.keep(cache, cache_len, list(range(k)) + list(range(src_offset, src_offset + a)))


def candidate_trie(cands) -> tuple[DraftTree, list[tuple[int, int]]]:
    """The verification branch's n-grams as one trie under the last committed token (a point-mass draft tree,
    siblings in the candidates' order). Also, per node, the first candidate with that prefix and the depth:
    whose logits the node reads (candidates with the same prefix see the same context)."""
    tree = DraftTree.rooted(-1)
    src: list[tuple[int, int]] = [(-1, -1)]
    index: dict[tuple[int, int], int] = {}
    for g, cnd in enumerate(cands):
        node = 0
        for d, x in enumerate(cnd):
            key = (node, int(x))
            if key not in index:
                index[key] = tree.add(int(x), node)
                src.append((g, d))
            node = index[key]
    return tree, src


def verify(cands, root_logits: torch.Tensor, cand_logits: list[torch.Tensor], cfg, gen):
    """Verify the candidates as a trie with the speculative rules (engine/methods/speculative/verify.py):
    greedy, the longest prefix equal to the argmax chain; sampling, each depth tries the surviving candidates'
    distinct tokens in turn, accepting x with probability p(x) (point-mass drafts), a rejection zeroes x in p,
    and with none accepted the token is drawn from what is left (the reference code's rule).
    Returns (the accepted candidate or -1, accepted length, committed tokens, accepted length of every
    candidate, the sampling tests in the order they were made (None when greedy))."""
    tree, src = candidate_trie(cands)
    node_logits = [root_logits] + [cand_logits[g][d] for g, d in src[1:]]
    rows = V.Rows(None, logits=torch.stack(node_logits), cfg=cfg)
    verdict = V.greedy(tree, rows) if cfg.greedy else V.sampling(tree, rows, gen)
    path = verdict.path
    a = len(path) - 1
    committed = [tree.nodes[i].token for i in path[1:]] + [int(verdict.token)]
    best = src[path[-1]][0] if a else -1
    lens = []
    for cnd in cands:
        n = 0
        while n < a and cnd[n] == committed[n]:
            n += 1
        lens.append(n)
    tests = None
    if not cfg.greedy:
        tried = sorted((tree.nodes[i].depth, i) for i in range(1, len(tree)) if verdict.u[i] is not None)
        tests = [{"depth": d - 1, "token": int(tree.nodes[i].token), "p": clean_float(verdict.ratio[i]),
                  "u": clean_float(verdict.u[i]), "accepted": verdict.status[i] == "accepted"} for d, i in tried]
    return best, a, committed, lens, tests


def check(o: dict, ctx) -> None:
    W, N = o["window_size"], o["level"]
    ctx.need_positions(ctx.prompt_len + ctx.max_new_tokens + W + N,
                       f"Lookahead with W={W}, N={N} after a {ctx.prompt_len}-token prompt")


@register(
    "lookahead", "lookahead",
    "Lookahead decoding: a 2-D Jacobi window harvests n-grams into a pool; pool n-grams starting with the "
    "last token are verified in the same forward pass.",
    options={
        "window_size": Opt(5, "W: window width (parallel Jacobi trajectories); reference README 7, code 60",
                           min=1, max=MAX_W),
        "level": Opt(4, "N: n-gram size; the window keeps N-1 levels; reference README 5, code 8", min=3, max=MAX_N),
        "guess_set_size": Opt(5, "G: n-grams kept per first token (LRU) and verified per step; README 7",
                              min=1, max=MAX_G),
        "pool_from_prompt": Opt(True, "seed the n-gram pool with the prompt's n-grams and add the output's"),
    }, check=check)
def generate(job: Job, window_size: int = 5, level: int = 4, guess_set_size: int = 5, pool_from_prompt: bool = True):
    """Options were checked by engine.run.prepare; return the steps."""
    return _run(job, window_size, level, guess_set_size, pool_from_prompt)


def _run(job: Job, W: int, N: int, G: int, pool_from_prompt: bool):
    """The lookahead loop, kept whole: build the one forward's inputs (window + candidates), verify,
    keep the accepted KV, shift the window, update the pool, record; each stage reads the ones before (issue 29)."""
    lm, cfg, c = job.lm, job.sampling, job.counters
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    rng = random.Random(0 if cfg.seed is None else int(cfg.seed))
    eos = job.eos_ids
    out = job.output_ids
    context = job.input_ids[0].tolist()
    pending = list(context)
    pool = NgramPool(N, G)
    seeded = pool.add_sequence(context) if pool_from_prompt else []

    def from_context() -> int:
        return context[rng.randrange(len(context))]

    levels = [[from_context() for _ in range(W + N - 3)]]  # level 0; the other levels fill during warm-up
    edited = resume_guesses(job, len(levels[0]))
    if edited is not None:   # a fork's edited window: level 0's first guesses (engine.fork guesses=...)
        levels[0][:len(edited)] = edited
    cache = DynamicCache()
    st = {"verify_steps": 0, "accepted": 0, "input_tokens": 0}
    seen: set[int] = set()  # token ids whose text a record already carries (for replaying the pool)
    step = 0
    with torch.inference_mode():
        while True:
            cache_len = cache.get_seq_length()
            last = pending[-1]
            base = len(out)  # output index of the first token committed this step
            cands = pool.get(last)[-G:]
            f = len(levels) - 1
            with c.compute():
                ids, pos, mask, lay = build_inputs(pending, levels, cands, cache_len, lm.model.dtype, lm.device)
                k = lay["k"]
                off_last = lay["level_offsets"][f]
                rows = [k - 1] + list(range(off_last, off_last + len(levels[f])))
                for oc in lay["cand_offsets"]:
                    rows += list(range(oc, oc + N - 1))
                keep = torch.tensor(rows, device=lm.device)
                if KD.enabled(lm.device):
                    # Triton: the window + candidates' visibility as a bitmask, no dense mask over the prefix
                    vis = KD.Tree.from_visibility(mask[0, 0, :, cache_len:] == 0, device=lm.device)
                    with attention.kernels(lm.model):
                        o = lm.model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True,
                                     logits_to_keep=keep, tree_visibility=vis)
                else:
                    o = lm.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=cache,
                                 use_cache=True, logits_to_keep=keep)
                logits = o.logits[0].float()
                root = logits[0]
                level_out = logits[1:1 + len(levels[f])].argmax(-1).tolist()
                cand_logits = [logits[1 + len(levels[f]) + g * (N - 1): 1 + len(levels[f]) + (g + 1) * (N - 1)]
                               for g in range(len(cands))]
                best, a, committed, lens, tests = verify(cands, root, cand_logits, cfg, gen)
                keep_accepted_kv(cache, cache_len, k, lay["cand_offsets"][best] if a else 0, a)

                # window update: harvest n-grams (steady state), move up one level
                harvested = []
                if f < N - 2:
                    new = level_out if f == 0 else level_out[1:]
                    levels = [lv[1:] for lv in levels] + [new]
                else:
                    for col in range(W):
                        key = last if col == 0 else levels[0][col - 1]
                        tail = tuple(levels[l][col] for l in range(1, N - 1)) + (level_out[col],)
                        pool.add(key, tail)
                        harvested.append([int(key), *tail])
                    levels = [levels[1][1:]] + [list(lv) for lv in levels[2:]] + [level_out]
                levels[-1] = [from_context() if t in eos else t for t in levels[-1]]
            c.target_forwards += 1
            st["input_tokens"] += lay["T"]
            st["verify_steps"] += bool(cands)
            st["accepted"] += a
            window = [list(lv) for lv in levels]  # after the update (the next step's input) is below
            kept = job.commit(committed)
            context.extend(kept)
            appended = []
            if pool_from_prompt:
                for i in range(len(kept)):
                    g = context[len(context) - len(kept) + i - N + 1: len(context) - len(kept) + i + 1]
                    if len(g) == N:
                        pool.add(g[0], tuple(g[1:]))
                        appended.append(list(g))
            n_pending, pending = len(pending), [committed[-1]]
            finished = job.finished(kept)

            rec = {"kind": "lookahead", "index": step, "phase": "warmup" if f < N - 2 else "lookahead",
                   "fill_level": f, "accepted_len": a, "new_ids": kept, "committed": len(kept),
                   "committed_total": len(out), "pool_size": pool.size()}
            if job.record:
                with c.recording():
                    in_levels = _input_levels(ids, lay, f)
                    rec.update({
                        "base": base, "last_id": int(last), "last_text": lm.token_text(last),
                        "pending_len": n_pending, "input_tokens": lay["T"],
                        "window": [{"level": l, "ids": lv, "text": texts(lm, lv),
                                    "positions": _level_positions(base, l, len(lv))}
                                   for l, lv in enumerate(in_levels)],
                        "level_out": level_out, "level_out_text": texts(lm, level_out),
                        "next_window": window,
                        "harvested": harvested, "seeded": seeded if step == 0 else [], "appended": appended,
                        "pool_keys": len(pool.map),
                        "candidates": [{"ids": list(cnd), "text": texts(lm, cnd), "accepted_len": ln}
                                       for cnd, ln in zip(cands, lens)],
                        "best": best if a else None,
                        "accepted_ngram": list(committed[:a]), "accepted_text": texts(lm, committed[:a]),
                        "bonus_id": int(committed[-1]), "bonus_text": lm.token_text(committed[-1]),
                        "new_text": lm.decode(kept),
                        "confidence": _confidence(root, cand_logits[best] if a else None, committed[:len(kept)]),
                        "events": (["draft_rejected"] if cands and a < N - 1 else []),
                    })
                    if tests is not None:
                        rec["tests"] = tests
                    new_ids = {t for grams in (rec["seeded"], harvested, appended) for gram in grams for t in gram}
                    new_ids |= set(kept) | {int(last)}
                    rec["vocab"] = {str(t): lm.token_text(t) for t in sorted(new_ids - seen)}
                    seen |= new_ids
            job.extra["summary"] = _summary(job, st, W, N, G, pool)
            yield rec
            step += 1
            if finished:
                return


def _input_levels(ids: torch.Tensor, lay: dict, f: int) -> list[list[int]]:
    flat = ids[0].tolist()
    offs = lay["level_offsets"] + [lay["cand_offsets"][0] if lay["cand_offsets"] else lay["T"]]
    return [flat[offs[l]:offs[l + 1]] for l in range(f + 1)]


def _level_positions(base: int, l: int, n: int) -> list[int]:
    """Output indices of a level's tokens (base = output index right after the last committed token)."""
    start = base if l == 0 else base - 1 + l
    return list(range(start, start + n))


def _confidence(root: torch.Tensor, cand_logits, committed: list[int]) -> float | None:
    if not committed:
        return None
    rows = [root] + ([cand_logits[i] for i in range(len(committed) - 1)] if cand_logits is not None else [])
    ps = [float(r.softmax(-1)[t]) for r, t in zip(rows, committed)]
    return clean_float(min(ps))


def _summary(job: Job, st: dict, W: int, N: int, G: int, pool: NgramPool) -> dict:
    c = job.counters
    f = c.target_forwards
    return {"window_size": W, "level": N, "guess_set_size": G, "forwards": f,
            "compression_ratio": clean_float(c.generated_tokens / f, 4) if f else None,
            "steps_with_candidates": st["verify_steps"],
            "mean_accepted_len": clean_float(st["accepted"] / f, 4) if f else None,
            "mean_input_tokens": clean_float(st["input_tokens"] / f, 2) if f else None,
            "pool_size": pool.size()}
