"""The step-record contract's vocabulary (engine/schema.py): the bounds, the field specs every step kind
shares, and what the per-kind tables (engine/schema_steps.py) are built and checked with.

engine/schema.py re-exports every name here (S.MAX_STEPS, S.TOKEN_TEXT, S.record, S.Kind keep working).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine.schema_types import MAX_COUNT, MAX_NAME, Enum, Float, Int, Invalid, List, Maybe, Obj, Str

# ---- bounds (generous: the engine stays well inside them) ------------------------------------
MAX_STEPS = 16_384          # the engine makes at most 4096 new tokens, and at least one per step
MAX_OUTPUT = 8_192          # output positions (max_new_tokens <= 4096)
MAX_POSITIONS = 2**17       # sequence positions: the prompt (up to a long context window) + the output
MAX_TOKEN_ID = 2**31 - 1
MAX_TEXT = 8_000_000        # characters of a prompt, a final text, a step's new text
MAX_TOKEN_TEXT = 1_024      # characters of one token's text
MAX_LAYERS = 256
MAX_HEADS = 256             # KV heads, and query heads (KV heads x group)
MAX_NODES = 512             # speculative tree nodes with the root and the appended token (engine: <= 258)
MAX_BLOCK = 256             # Jacobi guesses per iteration (engine: <= 128)
MAX_WINDOW = 256            # lookahead tokens per window level (engine: W + N - 3 <= 77)
MAX_LEVELS = 64             # lookahead window levels (engine: N - 1 <= 15)
MAX_NGRAM = 64              # tokens of one n-gram (engine: N <= 16)
MAX_CANDIDATES = 1_024      # top candidates of one AR step, n-grams verified in one lookahead step
MAX_POOL_ITEMS = 2**18      # n-grams seeded (from the prompt) in one step, vocabulary entries of one step
MAX_EVENTS = 16
MAX_GRID_CELLS = 2**25      # steps x positions of a step-by-position figure (KV map, diffusion grid)
MAX_SECONDS = 1e7

NODE_STATUSES = ("root", "accepted", "rejected", "unverified", "bonus", "corrected", "resampled")
DIFFUSION_STATES = ("mask", "committed", "new")


# ---- shared field specs ----------------------------------------------------------------------
ID = Int(0, MAX_TOKEN_ID)
COUNT = Int(0, MAX_COUNT)
PROB = Float(0.0, 1.0)
FINITE = Float()
SECONDS = Float(0.0, MAX_SECONDS)
BYTES = Float(0.0, 1e18)
NATS = Float(-0.01, 1e3)            # an entropy; rounding can leave a tiny negative
POSITION = Int(0, MAX_POSITIONS)     # a position in the sequence (prompt + output)
OUT_POS = Int(0, MAX_OUTPUT + MAX_BLOCK)  # a position in the output
TOKEN_TEXT = Str(MAX_TOKEN_TEXT)
TEXT = Str(MAX_TEXT)
NAME = Str(MAX_NAME)
IDS = List(ID, MAX_OUTPUT)
TEXTS = List(TOKEN_TEXT, MAX_OUTPUT)

TOTALS = Obj({}, {"tokens": COUNT, "target_forwards": COUNT, "draft_forwards": COUNT, "compute_s": SECONDS,
                  "wall": Float(0.0, 1e11)})
COMMON = {"kind": Enum(("ar", "speculative", "kv", "jacobi", "lookahead", "diffusion", "beam", "cautious")),
          "index": Int(0, MAX_STEPS), "new_ids": IDS}
COMMON_OPTIONAL = {"new_text": TEXT, "confidence": Maybe(PROB), "events": List(Str(64), MAX_EVENTS),
                   "compute_s": Maybe(SECONDS), "totals": TOTALS}


def record(kind: str, fields: dict, optional: dict) -> Obj:
    """A step record of `kind`: the common fields plus the kind's own."""
    return Obj({**COMMON, **fields}, {**COMMON_OPTIONAL, **optional}, name=f"every '{kind}' step")


def _nothing(_):
    return None


@dataclass(frozen=True)
class Kind:
    record: Obj                                           # the fields of one step record
    check: Callable[[dict], None] = _nothing              # what the fields cannot say alone, in one step
    check_steps: Callable[[list], None] = _nothing        # across the steps of one trace


def _need(cond: bool, msg: str, *path):
    if not cond:
        raise Invalid(msg, path)


def _same_len(step: dict, names: tuple[str, ...]) -> None:
    """Fields present among `names` must have the length of the first one present."""
    present = [n for n in names if n in step]
    if len(present) < 2:
        return
    n = len(step[present[0]])
    for name in present[1:]:
        _need(len(step[name]) == n, f"has {len(step[name])} items but {present[0]} has {n}", name)


def _below(rows: list, n: int, path: tuple, what: str) -> None:
    """Every position in the lists `rows` (or in the list itself) is < n."""
    flat = rows and isinstance(rows[0], list)
    top = max((max(r) for r in rows if r), default=-1) if flat else max(rows, default=-1)
    if top < n:
        return
    for i, r in enumerate(rows):
        for j, p in enumerate(r if flat else [r]):
            if p >= n:
                raise Invalid(f"must be < {n} ({what}), got {p}", path + ((i, j) if flat else (i,)))


def _grid(steps: list, width: int, what: str) -> None:
    cells = len(steps) * width
    _need(cells <= MAX_GRID_CELLS, f"{len(steps)} steps x {width} {what} make {cells} cells; "
          f"the views draw at most {MAX_GRID_CELLS}", "steps")
