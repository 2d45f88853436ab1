"""The step-record contract: for each step kind, the fields the views read, with types and bounds.

(This file: STEPS, the trace around the steps and the two checks. The per-kind tables and their checks are
in engine/schema_steps.py, the bounds, shared field specs and checking helpers they are built with in
engine/schema_fields.py, the spec types in engine/schema_types.py; all re-exported here, so `S.MAX_OUTPUT`,
`S.SPECULATIVE`, `S.TOKEN_TEXT`, `S.Obj` keep working.)

`engine.trace.from_dict` checks every trace against it (so `load`, `loads` and uploads do), and
a trace that passes is one the views in ui/render_*.py and viz/ can draw: every field a view reads
has the type it expects, every size a view allocates from is bounded, and what one field cannot
say alone (lengths that must agree, parents before children, positions inside the sequence) is
checked per kind.

A kind is one entry in STEPS: the fields of its records (an `Obj`) and, optionally, a check of one
record and a check across the steps of a trace. Unknown fields are allowed and ignored, so the
engine can record more than the views read.

Checking is cheap: lists of numbers and strings go through C-level builtins (`min`, `max`,
`set(map(type, ...))`), and the path to an offending field is only built once something is wrong.
"""
from __future__ import annotations

from typing import Any

# the bounds, the shared field specs, record() and Kind; re-exported: S.MAX_OUTPUT, S.TOKEN_TEXT, ...
from engine.schema_fields import (BYTES, COMMON, COMMON_OPTIONAL, COUNT, DIFFUSION_STATES, FINITE, ID,  # noqa: F401
                                  IDS, MAX_BLOCK, MAX_CANDIDATES, MAX_EVENTS, MAX_GRID_CELLS, MAX_HEADS, MAX_LAYERS,
                                  MAX_LEVELS, MAX_NGRAM, MAX_NODES, MAX_OUTPUT, MAX_POOL_ITEMS, MAX_POSITIONS,
                                  MAX_SECONDS, MAX_STEPS, MAX_TEXT, MAX_TOKEN_ID, MAX_TOKEN_TEXT, MAX_WINDOW, NAME,
                                  NATS, NODE_STATUSES, OUT_POS, POSITION, PROB, SECONDS, TEXT, TEXTS, TOKEN_TEXT,
                                  TOTALS, Kind, record, _need)
# one table (and its checks) per step kind; re-exported: S.SPECULATIVE, S.AR_OPTIONAL, S.NODE, ...
from engine.schema_steps import (AR_FIELDS, AR_OPTIONAL, BEAM, BEAM_CAND, BEAM_SLOT, BLOCK_IDS,  # noqa: F401
                                 BLOCK_TEXTS, CAD_ROW, CANDIDATE, CAUTIOUS, CONTRASTIVE_CAND, COSINE, DETAIL,
                                 DIFFUSION, GRAMMAR_CANDIDATE, HEAD_POSITIONS, JACOBI, JACOBI_TEST, KV, LAYER,
                                 LENS_ROW, LEVEL, LOOKAHEAD, MAX_BEAMS, MAX_BEAM_CANDIDATES, MAX_TRIALS,
                                 MAX_TRIAL_TOKENS, NBEST_REF, NGRAMS, NGRAM_CANDIDATE, NODE, QUALITY, SPECULATIVE,
                                 TRIAL, _beam_steps, _cautious, _diffusion, _diffusion_steps, _jacobi, _jacobi_steps,
                                 _kv, _kv_steps, _lookahead, _speculative)
# the spec types (Int, Float, ..., Obj, Map) and their two default bounds; re-exported: S.Obj, S.Invalid, ...
from engine.schema_types import (MAX_COUNT, MAX_NAME, Bool, Enum, Float, Int, IntKey, Invalid, List,  # noqa: F401
                                 Map, Maybe, Obj, Scalar, Spec, Str, Tuple, _got, format_path)


STEPS: dict[str, Kind] = {
    "ar": Kind(record("ar", AR_FIELDS, AR_OPTIONAL)),
    "speculative": Kind(SPECULATIVE, _speculative),
    "kv": Kind(KV, _kv, _kv_steps),
    "jacobi": Kind(JACOBI, _jacobi, _jacobi_steps),
    "lookahead": Kind(LOOKAHEAD, _lookahead),
    "diffusion": Kind(DIFFUSION, _diffusion, _diffusion_steps),
    "beam": Kind(BEAM, check_steps=_beam_steps),
    "cautious": Kind(CAUTIOUS, _cautious),
}
assert set(STEPS) == set(COMMON["kind"].values)

# ---- the trace around the steps: only what the views read -------------------------------------
PARAMS = Obj({}, {"policy": NAME, "variant": Scalar(), "init": Scalar(), "block_size": Scalar(),
                  "window_size": Scalar(), "level": Scalar(), "guess_set_size": Int(1, 4096)})
META = Obj({"model": NAME, "method": NAME}, {"prompt": TEXT, "params": PARAMS}, name="a trace's meta")
FINAL = Obj({}, {"text": TEXT, "token_ids": IDS})
COUNTERS = Obj({}, {k: Float(0.0, 1e15) for k in
                    ("target_forwards", "draft_forwards", "generated_tokens", "compute_s", "record_s")})
TABLE_ROWS = List(Map(Scalar(), 64), 64)
EXTRA = Obj({}, {
    "summary": Obj({}, {"model": NAME, "rule": NAME, "forwarded_tokens": COUNT, "lossless": Bool()}),
    "speedup_vs_ar": Obj({k: Float(0.0, 1e12) for k in ("speedup", "ar_tokens_per_s", "spec_tokens_per_s")}),
    "vs_ar": Obj({"rows": TABLE_ROWS}, {"identical": Maybe(Bool())})})
TRACE = Obj({"meta": META, "steps": List(Obj({}), MAX_STEPS)}, {"final": FINAL, "counters": COUNTERS,
                                                               "extra": EXTRA}, name="every trace")


def check_trace(obj: Any) -> None:
    """Raise Invalid, naming the step and the field, unless `obj` is a trace the views can draw."""
    TRACE.check(obj)
    check_steps(obj["steps"])


def check_steps(steps: list) -> None:
    if not steps:
        return
    kind = steps[0].get("kind")
    for i, s in enumerate(steps):
        try:
            _need(s.get("kind") == kind or s.get("kind") not in STEPS,
                  f"is {s.get('kind')!r} but step 0 is {kind!r}: a trace holds steps of one kind", "kind")
            _need(s.get("index") == i, f"must be {i} (the step's place in the trace), got {_got(s.get('index'))}",
                  "index")
            k = STEPS.get(s.get("kind"))
            if k is None:
                raise Invalid(f"must be one of {', '.join(sorted(STEPS))}, got {_got(s.get('kind'))}", ("kind",))
            k.record.check(s)
            k.check(s)
        except Invalid as e:
            raise e.at("steps", i) from None
    STEPS[kind].check_steps(steps)
