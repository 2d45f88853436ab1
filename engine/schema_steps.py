"""The step-record contract per step kind (engine/schema.py): one table of fields per kind, and the checks of
what its fields cannot say alone, in one step and across the steps of a trace.

(~310 lines, one file on purpose: one section per kind, all alike, read together; engine/schema.py names
them in STEPS and re-exports every name here.)
"""
from __future__ import annotations

from engine.schema_fields import (BYTES, COUNT, DIFFUSION_STATES, FINITE, ID, IDS, MAX_BLOCK, MAX_CANDIDATES,
                                  MAX_HEADS, MAX_LAYERS, MAX_LEVELS, MAX_NGRAM, MAX_NODES, MAX_OUTPUT,
                                  MAX_POOL_ITEMS, MAX_POSITIONS, MAX_STEPS, MAX_TOKEN_ID, MAX_WINDOW, NAME, NATS,
                                  NODE_STATUSES, OUT_POS, POSITION, PROB, SECONDS, TEXT, TEXTS, TOKEN_TEXT, record,
                                  _below, _grid, _need, _same_len)
from engine.schema_types import (MAX_COUNT, MAX_NAME, Bool, Enum, Float, Int, IntKey, Invalid, List, Map, Maybe, Obj,
                                 Str, Tuple)


# ---- ar --------------------------------------------------------------------------------------
CANDIDATE = Obj({"id": ID, "text": TOKEN_TEXT}, {"p_raw": Maybe(PROB), "p_warped": Maybe(PROB)},
                name="every candidate")
LENS_ROW = Obj({"id": ID, "text": TOKEN_TEXT, "p": PROB}, {"p_chosen": Maybe(PROB)}, name="every logit-lens row")
AR_FIELDS = {"token_id": ID, "token_text": TOKEN_TEXT}
AR_OPTIONAL = {"position": POSITION, "prob": Maybe(PROB), "prob_warped": Maybe(PROB), "entropy": Maybe(NATS),
               "entropy_warped": Maybe(NATS), "candidates": List(CANDIDATE, MAX_CANDIDATES),
               "logits_f16": Str(1_400_000),   # base64 of the step's full logits (record_logits; engine/rewarp.py)
               "lens": List(LENS_ROW, MAX_LAYERS + 1)}  # logit lens: one row per layer, first layer first

# AR-kind steps of search-family methods carry one extra block each (ui/render_ar.py EXTRAS draws it):
# ---- contrastive search: AR_OPTIONAL["contrastive"] ----
COSINE = Float(-1.0, 1.0)
CONTRASTIVE_CAND = Obj({"id": ID, "text": TOKEN_TEXT, "chosen": Bool()},
                       {"p": Maybe(PROB), "penalty": Maybe(COSINE), "score": Maybe(COSINE)},
                       name="every contrastive candidate")
AR_OPTIONAL["contrastive"] = Obj({"candidates": List(CONTRASTIVE_CAND, MAX_CANDIDATES, min_len=1)},
                                 {"alpha": Maybe(PROB), "argmax_prob_id": ID}, name="every contrastive block")
# ---- context-aware decoding: AR_OPTIONAL["cad"] ----
CAD_ROW = Obj({"id": ID, "text": TOKEN_TEXT, "p_with": PROB, "p_without": PROB, "p_cad": PROB},
              name="every context-aware decoding row")
AR_OPTIONAL["cad"] = Obj({"rows": List(CAD_ROW, 64)}, {"alpha": Float(0.0, 1e3), "top_with": ID, "top_without": ID,
                                                      "top_cad": ID, "kl": NATS}, name="the cad block")
# ---- grammar-constrained decoding: AR_OPTIONAL["grammar"] ----
GRAMMAR_CANDIDATE = Obj({"id": ID, "text": TOKEN_TEXT}, {"p_raw": Maybe(PROB), "p_warped": Maybe(PROB),
                                                    "allowed": Bool()}, name="every unconstrained candidate")
AR_OPTIONAL["grammar"] = Obj(
    {"allowed": COUNT, "vocab": Int(1, MAX_COUNT), "allowed_share": PROB, "removed_mass": PROB, "wanted_id": ID,
     "wanted_text": TOKEN_TEXT, "wanted_p": Maybe(PROB), "chosen_p_unconstrained": Maybe(PROB), "forced": Bool(),
     "accepting": Bool(), "candidates_unconstrained": List(GRAMMAR_CANDIDATE, MAX_CANDIDATES)},
    {"stop": Maybe(Str(MAX_NAME)), "complete": Bool(), "mask_ms": Maybe(SECONDS), "accept_ms": Maybe(SECONDS)},
    name="every grammar block")

# ---- speculative -----------------------------------------------------------------------------
NODE = Obj({"id": Int(0, MAX_NODES), "parent": Int(-1, MAX_NODES), "depth": Int(0, MAX_NODES),
            "status": Enum(NODE_STATUSES)},
           {"token": ID, "text": TOKEN_TEXT, "q": Maybe(PROB), "p": Maybe(PROB), "u": Maybe(PROB),
            "ratio": Maybe(PROB), "target_top": ID, "appended": Bool()}, name="every tree node")
SPECULATIVE = record("speculative", {"accepted_len": Int(0, MAX_NODES), "draft_len": Int(0, MAX_NODES),
                                     "tree_size": Int(0, MAX_NODES)}, {
    "nodes": List(NODE, MAX_NODES), "parents": List(Int(-1, MAX_NODES), MAX_NODES),
    "mask": List(List(Int(0, 1), MAX_NODES), MAX_NODES), "path": List(Int(0, MAX_NODES), MAX_NODES),
    "origins": List(Str(64), MAX_NODES), "token_texts": List(TOKEN_TEXT, MAX_NODES), "origin": Str(64),
    "rule": NAME, "stochastic": Bool(), "lossless": Bool(), "draft_s": Maybe(SECONDS), "verify_s": Maybe(SECONDS),
    "kv_dropped": COUNT, "draft_forwards": COUNT, "target_forwards": COUNT, "prefix_len": POSITION,
    "k": Int(0, MAX_NODES),
    "lens": List(List(LENS_ROW, MAX_LAYERS + 1), MAX_NODES)})   # logit lens: per committed token, per layer


def _speculative(s: dict) -> None:
    nodes = s.get("nodes", [])
    for i, n in enumerate(nodes):
        _need(n["id"] == i, f"must be {i} (nodes are listed by id), got {n['id']}", "nodes", i, "id")
        parent = n["parent"]
        _need(parent < i, f"must be an integer < {i} (a parent comes before its children), got {parent}",
              "nodes", i, "parent")
        depth = 0 if parent < 0 else nodes[parent]["depth"] + 1
        _need(n["depth"] == depth, f"must be {depth} (its parent's depth + 1), got {n['depth']}", "nodes", i, "depth")
    for i, p in enumerate(s.get("parents", [])):
        _need(p < i, f"must be an integer < {i} (a parent comes before its children), got {p}", "parents", i)
    mask = s.get("mask")
    if mask is not None:
        for i, row in enumerate(mask):
            _need(len(row) == len(mask), f"has {len(row)} items; the mask is {len(mask)} x {len(mask)}", "mask", i)
        if nodes:
            tree = sum(1 for n in nodes if not n.get("appended"))
            _need(len(mask) == tree, f"is {len(mask)} x {len(mask)} but the tree has {tree} nodes", "mask")
    lens = s.get("lens")
    if lens is not None:
        _need(len(lens) <= len(s["new_ids"]), f"has {len(lens)} positions for {len(s['new_ids'])} committed tokens",
              "lens")


# ---- kv --------------------------------------------------------------------------------------
HEAD_POSITIONS = List(List(POSITION, MAX_POSITIONS), MAX_HEADS)
LAYER = Obj({"kept": List(List(POSITION, MAX_POSITIONS), MAX_HEADS, min_len=1)}, {
    "cand_pos": HEAD_POSITIONS, "scores": List(List(Maybe(FINITE), MAX_POSITIONS), MAX_HEADS),
    "protected": List(List(Int(0, 1), MAX_POSITIONS), MAX_HEADS),
    "evicted": List(List(Tuple((POSITION, Maybe(FINITE))), MAX_POSITIONS), MAX_HEADS),
    "attn": List(List(PROB, MAX_POSITIONS), MAX_HEADS), "group": Int(1, MAX_HEADS)}, name="every watched layer")
QUALITY = Obj({}, {"agreement": Maybe(PROB), "first_divergence": Maybe(Int(0, MAX_STEPS)), "agree": Bool(),
                   "full_argmax": ID, "full_argmax_text": TOKEN_TEXT, "nll": Maybe(FINITE),
                   "nll_full": Maybe(FINITE)})
KV = record("kv", {"seq_len": Int(1, MAX_POSITIONS), "cache_len": Int(0, MAX_POSITIONS), "kv_bytes": BYTES,
                   "kv_bytes_full": BYTES, "layers": Map(LAYER, MAX_LAYERS, keys=IntKey(MAX_LAYERS - 1))}, {
    **AR_FIELDS, **AR_OPTIONAL, "policy": NAME, "budget": Int(1, MAX_COUNT), "phase": Str(64),
    "evicted_count": COUNT, "n_sink": POSITION, "kept_count": List(Int(0, MAX_LAYERS * MAX_HEADS), MAX_POSITIONS),
    "slots": Int(1, MAX_LAYERS * MAX_HEADS), "kv_bytes_per_layer": List(BYTES, MAX_LAYERS), "quality": QUALITY})
DETAIL = ("cand_pos", "scores", "protected")


def _kv(s: dict) -> None:
    n = s["seq_len"]
    if "kept_count" in s:
        _need(len(s["kept_count"]) == n, f"has {len(s['kept_count'])} items; seq_len is {n}", "kept_count")
        if "slots" in s and s["kept_count"]:
            top = max(s["kept_count"])
            _need(top <= s["slots"], f"counts up to {top}, more than slots ({s['slots']})", "kept_count")
    if s["layers"]:
        for name in ("kept_count", "slots"):
            _need(name in s, "is missing (a step with watched layers needs it)", name)
    for key, lay in s["layers"].items():
        _kv_layer(lay, n, ("layers", key))


def _kv_layer(lay: dict, n: int, at: tuple) -> None:
    heads = len(lay["kept"])
    _below(lay["kept"], n, at + ("kept",), f"seq_len is {n}")
    detail = [f for f in DETAIL if f in lay]
    if detail:
        for f in DETAIL:
            _need(f in lay, f"is missing ({', '.join(DETAIL)} come together)", *at, f)
            _need(len(lay[f]) == heads, f"has {len(lay[f])} heads; kept has {heads}", *at, f)
        for h in range(heads):
            m = len(lay["cand_pos"][h])
            for f in ("scores", "protected"):
                _need(len(lay[f][h]) == m, f"has {len(lay[f][h])} items; cand_pos[{h}] has {m}", *at, f, h)
        _below(lay["cand_pos"], n, at + ("cand_pos",), f"seq_len is {n}")
    if "evicted" in lay:
        _need(len(lay["evicted"]) == heads, f"has {len(lay['evicted'])} heads; kept has {heads}", *at, "evicted")
        for h, pairs in enumerate(lay["evicted"]):
            _below([p for p, _ in pairs], n, at + ("evicted", h), f"seq_len is {n}")
    if "attn" in lay:
        for f in ("cand_pos", "group"):
            _need(f in lay, "is missing (attn needs it)", *at, f)
        g = lay["group"]
        _need(len(lay["attn"]) == heads * g, f"has {len(lay['attn'])} query heads; {heads} KV heads x group {g} "
              f"is {heads * g}", *at, "attn")
        for q, row in enumerate(lay["attn"]):
            m = len(lay["cand_pos"][q // g])
            _need(len(row) == m, f"has {len(row)} items; cand_pos[{q // g}] has {m}", *at, "attn", q)


def _kv_steps(steps: list) -> None:
    first = steps[0]["layers"]
    for i, s in enumerate(steps[1:], 1):
        lay = s["layers"]
        _need(set(lay) == set(first), f"watches layers {sorted(lay, key=int)}, step 0 watches {sorted(first, key=int)}",
              "steps", i, "layers")
        for key, l0 in first.items():
            _need(len(lay[key]["kept"]) == len(l0["kept"]),
                  f"has {len(lay[key]['kept'])} KV heads, step 0 has {len(l0['kept'])}",
                  "steps", i, "layers", key, "kept")
            if "group" in lay[key] and "group" in l0:
                _need(lay[key]["group"] == l0["group"], f"is {lay[key]['group']}, step 0's is {l0['group']}",
                      "steps", i, "layers", key, "group")
    if first:
        _grid(steps, max(s["seq_len"] for s in steps), "positions")


# ---- jacobi ----------------------------------------------------------------------------------
JACOBI_TEST = Obj({}, {"pos": Int(0, MAX_BLOCK), "p": Maybe(PROB), "q": Maybe(PROB), "accept_prob": Maybe(PROB),
                       "u": Maybe(PROB), "accepted": Bool()}, name="every test")
BLOCK_IDS = List(ID, MAX_BLOCK + 1)
BLOCK_TEXTS = List(TOKEN_TEXT, MAX_BLOCK + 1)
JACOBI = record("jacobi", {"block_start": Int(0, MAX_OUTPUT), "accepted": Int(0, MAX_BLOCK),
                           "committed": Int(0, MAX_BLOCK + 1), "pred_ids": BLOCK_IDS}, {
    "variant": NAME, "phase": Str(64), "front": OUT_POS, "committed_total": Int(0, MAX_OUTPUT),
    "block_index": Maybe(Int(0, MAX_STEPS)), "iteration_in_block": Maybe(Int(0, MAX_STEPS)),
    "pending_len": POSITION, "guess_ids": BLOCK_IDS, "guess_text": BLOCK_TEXTS,
    "guess_source": List(Str(64), MAX_BLOCK + 1),
    "pred_text": BLOCK_TEXTS, "changed": List(Bool(), MAX_BLOCK + 1), "fixed": List(Bool(), MAX_BLOCK + 1),
    "next_start": Int(0, MAX_OUTPUT), "next_guess_ids": BLOCK_IDS, "carried": Int(0, MAX_BLOCK + 1),
    "forced": List(Tuple((OUT_POS, OUT_POS, OUT_POS)), MAX_BLOCK + 1), "tests": List(JACOBI_TEST, MAX_BLOCK + 1),
    "resampled": Bool()})


def _jacobi(s: dict) -> None:
    _same_len(s, ("guess_ids", "guess_text"))
    _same_len(s, ("pred_ids", "pred_text"))
    for i, (_, first, last) in enumerate(s.get("forced", [])):
        _need(first <= last <= first + 2 * MAX_BLOCK, f"must be a range [first, last] of at most {2 * MAX_BLOCK} "
              f"positions, got [{first}, {last}]", "forced", i)


def _jacobi_steps(steps: list) -> None:
    _grid(steps, max(s["block_start"] + len(s["pred_ids"]) for s in steps), "output positions")


# ---- lookahead -------------------------------------------------------------------------------
LEVEL = Obj({"level": Int(0, MAX_LEVELS), "ids": List(ID, MAX_WINDOW), "text": List(TOKEN_TEXT, MAX_WINDOW),
             "positions": List(Int(-1, MAX_OUTPUT + MAX_WINDOW), MAX_WINDOW)}, name="every window level")
NGRAM_CANDIDATE = Obj({"ids": List(ID, MAX_NGRAM), "text": List(TOKEN_TEXT, MAX_NGRAM)},
                      {"accepted_len": Int(0, MAX_NGRAM)}, name="every candidate n-gram")
NGRAMS = List(List(ID, MAX_NGRAM, min_len=1), MAX_POOL_ITEMS)
LOOKAHEAD = record("lookahead", {"base": Int(0, MAX_OUTPUT), "window": List(LEVEL, MAX_LEVELS)}, {
    "phase": Str(64), "fill_level": Int(0, MAX_LEVELS), "accepted_len": Int(0, MAX_NGRAM),
    "committed": Int(0, MAX_NGRAM + 1), "committed_total": Int(0, MAX_OUTPUT), "pool_size": COUNT,
    "last_id": ID, "last_text": TOKEN_TEXT, "pending_len": POSITION, "input_tokens": COUNT,
    "level_out": List(ID, MAX_WINDOW), "level_out_text": List(TOKEN_TEXT, MAX_WINDOW),
    "next_window": List(List(ID, MAX_WINDOW), MAX_LEVELS), "harvested": NGRAMS, "seeded": NGRAMS,
    "appended": NGRAMS, "pool_keys": COUNT, "candidates": List(NGRAM_CANDIDATE, MAX_CANDIDATES),
    "best": Maybe(Int(0, MAX_CANDIDATES)), "accepted_ngram": List(ID, MAX_NGRAM),
    "accepted_text": List(TOKEN_TEXT, MAX_NGRAM), "bonus_id": ID, "bonus_text": TOKEN_TEXT,
    "vocab": Map(TOKEN_TEXT, MAX_POOL_ITEMS, keys=IntKey(MAX_TOKEN_ID)), "tests": List(Obj({}), MAX_CANDIDATES)})


def _lookahead(s: dict) -> None:
    window = s["window"]
    for i, lv in enumerate(window):
        try:
            _same_len(lv, ("ids", "text", "positions"))
        except Invalid as e:
            raise e.at("window", i) from None
    if window and "fill_level" in s:
        _need(s["fill_level"] < len(window), f"must be < {len(window)} (the window's levels), got {s['fill_level']}",
              "fill_level")
    for i, c in enumerate(s.get("candidates", [])):
        _need(len(c["text"]) == len(c["ids"]), f"has {len(c['text'])} items; ids has {len(c['ids'])}",
              "candidates", i, "text")
    _same_len(s, ("level_out", "level_out_text"))
    _same_len(s, ("accepted_ngram", "accepted_text"))


# ---- diffusion -------------------------------------------------------------------------------
DIFFUSION = record("diffusion", {
    "block_range": Tuple((Int(0, MAX_OUTPUT), Int(0, MAX_OUTPUT))),
    "state": List(Enum(DIFFUSION_STATES), MAX_OUTPUT), "tokens": IDS, "texts": TEXTS,
    "conf": List(Maybe(PROB), MAX_OUTPUT), "score": List(Maybe(FINITE), MAX_OUTPUT)}, {
    "block": Int(0, MAX_OUTPUT), "step_in_block": Int(0, MAX_STEPS), "threshold": Maybe(FINITE),
    "k": Maybe(Int(0, MAX_OUTPUT)), "new_positions": List(Int(0, MAX_OUTPUT), MAX_OUTPUT), "nfe": COUNT,
    "forwarded_tokens": COUNT, "remasked": Int(0, MAX_OUTPUT)})


def _diffusion(s: dict) -> None:
    _same_len(s, ("state", "tokens", "texts", "conf", "score"))
    lo, hi = s["block_range"]
    n = len(s["state"])
    _need(lo <= hi <= n, f"must be [lo, hi] with lo <= hi <= {n} (the positions), got [{lo}, {hi}]", "block_range")


def _diffusion_steps(steps: list) -> None:
    n = len(steps[0]["state"])
    for i, s in enumerate(steps):
        _need(len(s["state"]) == n, f"has {len(s['state'])} positions, step 0 has {n}", "steps", i, "state")
    _grid(steps, n, "positions")


# ---- cautious next-token prediction (search) -------------------------------------------------
MAX_TRIALS = 64             # trials per step (engine: <= 32)
MAX_TRIAL_TOKENS = 512      # tokens of one trial (engine: <= 256)
TRIAL = Obj({"ids": List(ID, MAX_TRIAL_TOKENS, min_len=1), "p": List(PROB, MAX_TRIAL_TOKENS, min_len=1),
             "ppl": Float(1.0 - 1e-6, 1e30), "stop": Enum(("single", "eos", "punctuation", "length"))},
            {"text": TEXT}, name="every trial")
CAUTIOUS = record("cautious", {"entropy": NATS, "n_trials": Int(1, MAX_TRIALS), "chosen": Int(0, MAX_TRIALS - 1),
                               "branched": Bool()}, {
    "position": POSITION, "token_id": ID, "token_text": TOKEN_TEXT, "candidates": List(CANDIDATE, MAX_CANDIDATES),
    "trials": List(TRIAL, MAX_TRIALS)})


def _cautious(s: dict) -> None:
    trials = s.get("trials")
    if trials is None:
        return
    _need(len(trials) == s["n_trials"], f"has {len(trials)} trials but n_trials is {s['n_trials']}", "trials")
    _need(s["chosen"] < len(trials), f"must be a trial (0..{len(trials) - 1}), got {s['chosen']}", "chosen")
    for i, t in enumerate(trials):
        _need(len(t["p"]) == len(t["ids"]), f"has {len(t['p'])} probabilities for {len(t['ids'])} tokens", "trials", i,
              "p")
    ids = trials[s["chosen"]]["ids"]
    _need(s["new_ids"] == ids[: len(s["new_ids"])], "must be the start of the chosen trial's ids", "new_ids")


# ---- beam (search) -----------------------------------------------------------------------------
MAX_BEAMS = 64              # beams per step (engine: <= 32)
MAX_BEAM_CANDIDATES = 1_024  # pruned continuations recorded per step (engine: <= 512)
BEAM_SLOT = Int(-1, MAX_BEAMS - 1)   # a beam of the previous step (-1: the prompt, at step 0)
BEAM_CAND = Obj({"parent": BEAM_SLOT, "token": ID, "text": TOKEN_TEXT, "score": FINITE},
                {"group": Int(0, MAX_BEAMS - 1), "logprob": Maybe(Float(-1e5, 0.0)), "penalty": Maybe(Float(0.0, 1e9)),
                 "norm_score": Maybe(FINITE), "length": Int(1, MAX_OUTPUT), "kept": Bool(), "eos": Bool()},
                name="every beam candidate")
NBEST_REF = Obj({"step": Int(0, MAX_STEPS), "slot": Int(0, MAX_BEAMS - 1)},
                {"score": Maybe(FINITE), "group": Int(0, MAX_BEAMS - 1)}, name="every n-best entry")
BEAM = record("beam", {}, {   # an unrecorded run (record=False) keeps none of them
    "beams": List(BEAM_CAND, MAX_BEAMS), "pruned": List(BEAM_CAND, MAX_BEAM_CANDIDATES),
    "finished": List(BEAM_CAND, MAX_BEAMS), "nbest": List(NBEST_REF, MAX_BEAMS), "length": Int(1, MAX_OUTPUT),
    "groups": Int(1, MAX_BEAMS), "group_size": Int(1, MAX_BEAMS), "done": Bool(), "stop": Str(64), "kv_bytes": BYTES,
    "length_penalty": Float(-10.0, 10.0)})   # the engine option's range: length ** it stays finite


def _beam_steps(steps: list) -> None:
    """Parents name a beam of the step before (the prompt, -1, at step 0); n-best entries name a finished
    hypothesis of this step or an earlier one."""
    for i, s in enumerate(steps):
        n_prev = len(steps[i - 1].get("beams", [])) if i else 0
        for f in ("beams", "pruned", "finished"):
            for j, c in enumerate(s.get(f, [])):
                ok = c["parent"] == -1 if i == 0 else 0 <= c["parent"] < n_prev
                _need(ok, "must be -1 (the prompt) at step 0" if i == 0 else
                      f"must be a beam of the step before (0..{n_prev - 1}), got {c['parent']}",
                      "steps", i, f, j, "parent")
        for j, r in enumerate(s.get("nbest", [])):
            _need(r["step"] <= i, f"must be a step up to {i}, got {r['step']}", "steps", i, "nbest", j, "step")
            n_fin = len(steps[r["step"]].get("finished", []))
            _need(r["slot"] < n_fin, f"must name one of step {r['step']}'s {n_fin} finished hypotheses, got "
                  f"{r['slot']}", "steps", i, "nbest", j, "slot")
