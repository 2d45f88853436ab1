"""Speculative decoding: a drafter proposes a chain or tree, the target verifies it in ONE forward.

(~335 lines, one file for now: the round loop, the one target forward and the round record; the next split is round_record and summary into speculative/record.py.)

Round: propose a tree after the committed sequence; run the target once over the root (the last
committed token) and every drafted node with a tree attention mask (each node sees the prefix
and its own ancestors; position = prefix length + depth); a verification rule picks the
accepted path and the token appended after it; the KV entries of the accepted nodes are
compacted into place and the rest dropped, so no prefix is ever recomputed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from engine import attention, kvcache
from engine import sampling as S
from engine.methods import Job, MethodError, register
from engine.methods.ar import check_lens, lens_rows
from engine.methods.speculative import verify as V
from engine.methods.speculative.draft_models import truncated_view  # noqa: F401  (benchmarks use it)
from engine.methods.speculative.drafters import DRAFTERS, MAX_K, Drafter  # noqa: F401
from engine.methods.speculative import head_drafters  # noqa: F401,E402  (registers medusa, eagle)
from engine.methods.speculative.trees import MAX_NODES, MAX_SPEC_CHARS, ShapeError, parse_shape, tree_mask
from engine.options import Not, Opt
from engine.trace import clean_float
from kernels import dispatch as KD

RULES = ("auto", "greedy", "sampling", "typical")
SCHEDULES = ("constant", "heuristic")
TREE_PRESETS = ("chain", "2.2.2", "3.2.1", "[[0],[1],[2],[0,0],[0,1],[1,0],[0,0,0]]", "dynamic")

OPTIONS = {
    "drafter": Opt("prompt_lookup", "who drafts"),
    "tree": Opt("chain", "draft shape: chain, a template like 2.2.2 (children per depth), Medusa choices "
                         "[[0],[1],[0,0]] or dynamic", max_len=MAX_SPEC_CHARS, presets=TREE_PRESETS, lower=True),
    "num_assistant_tokens": Opt(5, "draft length k (chain length / dynamic tree depth)", min=1, max=MAX_K,
                                when={"drafter": Not(("prompt_lookup",))}),
    "schedule": Opt("constant", "draft length schedule: constant, or heuristic (HF: +2 after a full accept, "
                                "else -1)", choices=SCHEDULES),
    "confidence_threshold": Opt(0.0, "adaptive length: stop a branch when its cumulative draft confidence < this "
                                     "(0 off)", min=0.0, max=1.0, max_open=True, slider=True, step=0.05),
    "verify": Opt("auto", "rule: auto (greedy at temperature 0, else sampling), greedy, sampling, typical (lossy)",
                  choices=RULES),
    "tree_budget": Opt(16, "dynamic tree: drafted nodes per round", min=1, max=MAX_NODES,
                       when={"tree": ("dynamic",)}),
    "tree_topk": Opt(4, "dynamic tree: children per node and nodes kept per depth", min=1, max=32,
                     when={"tree": ("dynamic",)}),
    "typical_epsilon": Opt(0.09, "typical acceptance: epsilon", min=0.0, max=1.0, min_open=True,
                           when={"verify": ("typical",)}),
    "typical_alpha": Opt(0.3, "typical acceptance: alpha", min=0.0, max=1.0, min_open=True,
                         when={"verify": ("typical",)}),
    "logit_lens": Opt(False, "also record, per round, the top token after every layer at each committed position, "
                             "read through the final norm and the LM head (a head projection per layer)"),
    "dense_mask_max": Opt(64, "record the dense tree mask when the tree has at most this many nodes", min=0,
                          max=MAX_NODES + 1),
}


@dataclass
class Ctx:
    lm: object
    seq: list[int]
    cache: DynamicCache
    prefix_len: int
    sampling: S.SamplingConfig
    gen: torch.Generator | None
    counters: object
    vocab: int
    shape: object = None
    stochastic: bool = False
    min_cum: float = 0.0
    round_draft_forwards: int = 0
    extra: dict = field(default_factory=dict)


# ---- validation -------------------------------------------------------------------------------

def check_attention(lm):
    impl = attention.original(lm.model)   # the implementation under the lab's per-call dispatcher
    if impl not in ("sdpa", "eager"):
        raise MethodError(f"Tree verification passes a 4D attention mask, which the '{impl}' attention does not "
                          "accept; load the model with attn_implementation='sdpa' or 'eager'.")


def draft_length(o: dict) -> int:
    return o["prompt_lookup_num_tokens"] if o["drafter"] == "prompt_lookup" else o["num_assistant_tokens"]


def shape_nodes(shape) -> int:
    """The most nodes a round of this shape drafts."""
    if shape.kind == "chain":
        return shape.depth
    if shape.kind == "dynamic":
        return shape.budget
    return len(shape.choices)


def check(o: dict, ctx) -> None:
    """engine.run.prepare's hook: options against the sampling settings and the model, the drafter's own
    checks (a draft model's tokenizer is compared before its weights load), positions against the context."""
    _, shape0, _ = check_options(ctx.lm, ctx.sampling, o)
    DRAFTERS.get(o["drafter"]).obj.check(o, ctx)
    if o["logit_lens"]:
        check_lens(ctx.lm)
    ctx.need_positions(ctx.prompt_len + ctx.max_new_tokens + shape_nodes(shape0) + 1,
                       f"Speculative decoding with trees of up to {shape_nodes(shape0)} nodes after a "
                       f"{ctx.prompt_len}-token prompt")


# ---- one round ------------------------------------------------------------------------------

def target_forward(lm, tree, cache, prefix_len, cfg=None, hidden: bool = False) -> V.Rows:
    """ONE target forward over root + drafted nodes with the tree mask.

    Returns the per-node logits lazily: for Llama-style models the LM head runs only on the rows
    the verifier visits; other models return all logits. `hidden`: keep every layer's hidden states in
    `rows.hidden_states` (the logit lens; Llama-style models only, checked before the run)."""
    dev = lm.device
    ids = torch.tensor([tree.tokens], device=dev)
    pos = torch.tensor([[prefix_len + d for d in tree.depths]], device=dev)
    cfg = cfg or S.SamplingConfig()
    base, head = getattr(lm.model, "model", None), getattr(lm.model, "lm_head", None)
    lazy_head = base is not None and head is not None and hasattr(base, "layers") and hasattr(base, "norm") \
        and getattr(lm.model.config, "final_logit_softcapping", None) is None
    if KD.enabled(dev):
        # Triton tree attention: ancestors as a bitmask, no dense [T, prefix + T] mask built
        kw = dict(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True,
                  tree_parents=KD.Tree.from_parents(tree.parents, device=dev))
        with attention.kernels(lm.model):
            if lazy_head:
                return _rows(base(**kw, output_hidden_states=hidden), head, cfg)
            return V.Rows(None, logits=lm.model(**kw).logits[0].float(), cfg=cfg)
    mask = tree_mask(tree.parents, prefix_len, lm.dtype, dev)
    if lazy_head:
        out = base(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                   output_hidden_states=hidden)
        return _rows(out, head, cfg)
    out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    return V.Rows(None, logits=out.logits[0].float(), cfg=cfg)


def _rows(out, head, cfg) -> V.Rows:
    rows = V.Rows(out.last_hidden_state[0], head, cfg=cfg)
    rows.hidden_states = getattr(out, "hidden_states", None)
    return rows


def check_options(lm, cfg, o: dict):
    """Validate the options; return (rule, shape, draft length). Raises MethodError."""
    rule = o["verify"]
    if rule not in RULES:
        raise MethodError(f"verify must be one of {', '.join(RULES)}, got '{rule}'.")
    if rule == "auto":
        rule = "greedy" if cfg.greedy else "sampling"
    if rule == "greedy" and not cfg.greedy:
        raise MethodError("verify=greedy needs greedy decoding (temperature 0); use verify=sampling to sample.")
    if rule == "typical" and cfg.greedy:
        raise MethodError("verify=typical (Medusa) needs a temperature > 0; at temperature 0 use greedy.")
    if rule == "sampling" and cfg.greedy:
        rule = "greedy"  # p is a point mass at the argmax: speculative sampling reduces to greedy matching
    if o["drafter"] not in DRAFTERS:
        raise MethodError(f"Unknown drafter '{o['drafter']}'. Known: {', '.join(DRAFTERS)}.")
    if o["schedule"] not in SCHEDULES:
        raise MethodError(f"schedule must be constant or heuristic, got '{o['schedule']}'.")
    if not 0 <= float(o["confidence_threshold"]) < 1:
        raise MethodError(f"confidence_threshold must be in [0, 1), got {o['confidence_threshold']}.")
    if not (0 < o["typical_epsilon"] <= 1 and 0 < o["typical_alpha"] <= 1):
        raise MethodError("typical_epsilon and typical_alpha must be in (0, 1].")
    k = o["prompt_lookup_num_tokens"] if o["drafter"] == "prompt_lookup" else o["num_assistant_tokens"]
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise MethodError(f"num_assistant_tokens must be in 1..{MAX_K}, got {k!r}.")
    try:
        shape0 = parse_shape(o["tree"], k, o["tree_budget"], o["tree_topk"])
    except ShapeError as e:
        raise MethodError(str(e)) from None
    check_attention(lm)
    return rule, shape0, k


@register("speculative", "speculative",
          "Draft a chain or tree (registered drafters), verify it in one target forward with a tree mask; "
          "lossless unless verify=typical.", options=OPTIONS, lossless=True, check=check,
          components={"drafter": DRAFTERS})
def generate(job: Job, **o):
    """The speculative round loop, kept whole (~90 lines): propose, verify in one forward, keep the accepted
    path in the cache, count and record, in the order of the algorithm."""
    lm, cfg, c = job.lm, job.sampling, job.counters
    rule, shape0, k = check_options(lm, cfg, o)   # checked by engine.run.prepare already; cheap
    drafter = DRAFTERS.get(o["drafter"]).obj.from_options(job, o)
    lossless = rule != "typical"
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    lens = o["logit_lens"] and job.record

    seq = job.input_ids[0].tolist()
    cache = DynamicCache()
    ctx = Ctx(lm, seq, cache, len(seq) - 1, cfg, gen, c, vocab=0, min_cum=float(o["confidence_threshold"]))
    stats = {"rounds": 0, "drafted": 0, "accepted": 0, "reached": {}, "accepted_at": {}, "draft_s": 0.0,
             "verify_s": 0.0, "nodes": 0, "dropped": 0, "rejected_rounds": 0}
    job.extra["summary"] = {}
    with torch.inference_mode():
        with c.compute():
            if len(seq) > 1:  # the prompt minus its last token: that one is the first round's root
                if hasattr(drafter, "prefill"):   # a head drafter runs it and keeps the hidden states
                    drafter.prefill(ctx, job.input_ids[:, :-1])
                else:
                    lm.model(input_ids=job.input_ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
                c.target_forwards += 1
            ctx.vocab = lm.model.get_output_embeddings().weight.shape[0]
        index = 0
        while True:
            remaining = job.max_new_tokens - len(job.output_ids) - 1
            ctx.shape = shape0.with_depth(min(k, remaining))
            ctx.stochastic = (rule == "sampling" and drafter.model_based
                              and (ctx.shape.kind != "static" or ctx.shape.rank_closed))
            ctx.round_draft_forwards = 0
            ctx.prefix_len = len(seq) - 1
            with c.compute():
                t0 = time.perf_counter()
                tree = drafter.propose(ctx)
                t1 = time.perf_counter()
                rows = target_forward(lm, tree, cache, ctx.prefix_len, cfg, hidden=lens)
                c.target_forwards += 1
                if rule == "greedy":
                    verdict = V.greedy(tree, rows)
                elif rule == "sampling":
                    verdict = V.sampling(tree, rows, gen)
                else:
                    verdict = V.typical(tree, rows, gen, o["typical_epsilon"], o["typical_alpha"])
                dropped = kvcache.keep(cache, ctx.prefix_len, verdict.path)
                t2 = time.perf_counter()
                drafter.observe(ctx, tree, rows, verdict)
            accepted = [tree.nodes[i].token for i in verdict.path[1:]]
            new = accepted + [verdict.token]
            kept = job.commit(new)
            seq.extend(new)
            # -- statistics
            depth_drafted = tree.max_depth if len(tree) > 1 else 0
            stats["rounds"] += 1
            stats["drafted"] += len(tree) - 1
            stats["nodes"] += len(tree) - 1
            stats["accepted"] += len(accepted)
            stats["dropped"] += dropped
            stats["draft_s"] += t1 - t0
            stats["verify_s"] += t2 - t1
            rejected = any(s == "rejected" for s in verdict.status)
            stats["rejected_rounds"] += rejected
            for d in range(1, depth_drafted + 1):
                # depth d was reachable if the path reached d-1 and there was a node at depth d under it
                if len(accepted) >= d - 1 and any(tree.nodes[ch].depth == d for ch in tree.children(verdict.path[d - 1])):
                    stats["reached"][d] = stats["reached"].get(d, 0) + 1
                    if len(accepted) >= d:
                        stats["accepted_at"][d] = stats["accepted_at"].get(d, 0) + 1
            job.extra["summary"] = summary(stats, c, o, drafter, rule, lossless, k)
            rec = {"kind": "speculative", "index": index, "new_ids": kept, "accepted_len": len(accepted),
                   "draft_len": depth_drafted, "tree_size": len(tree) - 1, "origin": verdict.origin,
                   "kv_dropped": dropped, "prefix_len": ctx.prefix_len, "k": min(k, max(remaining, 0)),
                   "draft_s": clean_float(t1 - t0), "verify_s": clean_float(t2 - t1),
                   "compute_s": clean_float(t2 - t0), "draft_forwards": ctx.round_draft_forwards,
                   "target_forwards": 1, "events": ["draft_rejected"] if rejected else [], "lossless": lossless,
                   "rule": rule, "stochastic": ctx.stochastic}
            if job.record:
                with c.recording():
                    rec.update(round_record(lm, tree, verdict, rows, rule, kept, o["dense_mask_max"]))
                    if lens and kept and getattr(rows, "hidden_states", None) is not None:
                        # the rows that predicted the committed tokens: the accepted path, root first
                        rec["lens"] = lens_rows(lm, rows.hidden_states, verdict.path[: len(kept)], kept)
            yield rec
            index += 1
            if job.finished(kept):
                return
            if o["schedule"] == "heuristic":
                k = min(MAX_K, k + 2) if depth_drafted and len(accepted) == depth_drafted else max(1, k - 1)


def round_record(lm, tree, verdict, rows, rule, kept, dense_max) -> dict:
    logits = rows.all_logits()   # the rows the verifier skipped are computed here, timed as recording
    p_all = logits.softmax(-1) if rule == "greedy" else rows.all_p()
    nodes = []
    alt = None
    if logits is not None and len(tree) > 1:
        # the target's best token other than each node's own, at the node's parent row: what a forced
        # rejection of the node commits instead (engine.fork force=...), from this forward's logits
        par = torch.tensor(tree.parents[1:], device=logits.device)
        top2 = logits[par].topk(2, dim=-1).indices
        own = torch.tensor(tree.tokens[1:], device=logits.device)
        alt = torch.where(top2[:, 0] == own, top2[:, 1], top2[:, 0]).tolist()
    for i, n in enumerate(tree.nodes):
        d = {"id": i, "token": n.token, "text": lm.token_text(n.token), "parent": n.parent, "depth": n.depth,
             "status": verdict.status[i], "q": clean_float(n.q) if i else None,
             "p": clean_float(p_all[n.parent, n.token]) if i else None}
        if verdict.u[i] is not None:
            d["u"] = clean_float(verdict.u[i])
        if verdict.ratio[i] is not None:
            d["ratio"] = clean_float(verdict.ratio[i])
        if i and logits is not None:
            d["target_top"] = int(logits[n.parent].argmax())
            d["alt"] = int(alt[i - 1])
        if i and getattr(tree, "proposer", None) and i in tree.proposer:
            d["proposer"] = tree.proposer[i]   # which head / draft step proposed the node (medusa, eagle)
        nodes.append(d)
    last = verdict.path[-1]
    tok_p = float(p_all[last, verdict.token])
    nodes.append({"id": len(tree), "token": verdict.token, "text": lm.token_text(verdict.token), "parent": last,
                  "depth": tree.nodes[last].depth + 1, "status": verdict.origin, "q": None,
                  "p": clean_float(tok_p), "appended": True})
    origins = ["accepted"] * (len(verdict.path) - 1) + [verdict.origin]
    conf = [float(p_all[tree.nodes[i].parent, tree.nodes[i].token]) for i in verdict.path[1:]] + [tok_p]
    rec = {"nodes": nodes, "parents": tree.parents, "path": verdict.path, "origins": origins[:len(kept)],
           "new_text": lm.decode(kept), "token_texts": [lm.token_text(t) for t in kept],
           "confidence": clean_float(min(conf[:max(1, len(kept))]))}
    if len(tree) <= dense_max:
        from engine.methods.speculative.trees import ancestor_matrix
        rec["mask"] = ancestor_matrix(tree.parents).int().tolist()
    return rec


def summary(st, c, o, drafter, rule, lossless, k) -> dict:
    rounds = max(1, st["rounds"])
    by_depth = {str(d): clean_float(st["accepted_at"].get(d, 0) / n) for d, n in sorted(st["reached"].items())}
    out = {"tau": clean_float(c.generated_tokens / rounds), "rounds": st["rounds"],
           "drafted_tokens": st["drafted"], "accepted_tokens": st["accepted"],
           "acceptance_rate": clean_float(st["accepted"] / st["drafted"]) if st["drafted"] else None,
           "acceptance_by_depth": by_depth, "target_forwards": c.target_forwards, "draft_forwards": c.draft_forwards,
           "target_forwards_per_token": clean_float(c.target_forwards / max(1, c.generated_tokens)),
           "mean_tree_size": clean_float(st["nodes"] / rounds), "kv_dropped": st["dropped"],
           "draft_s": clean_float(st["draft_s"]), "verify_s": clean_float(st["verify_s"]),
           "rule": rule, "lossless": lossless, "tree": o["tree"], "k_last": k}
    out.update(drafter.describe())
    return out

