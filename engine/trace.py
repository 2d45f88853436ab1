"""Step records and traces: what a decoding run did, step by step, saved as JSON.

A step record is a plain JSON-able dict with at least `kind` (the method family) and `index`.
A trace holds metadata, the steps, the final output and counters, and (schema version 2) the what-if
branches forked from it (engine/fork.py): each one a trace of its own whose meta["fork"] names its parent
(0: this trace, n: its n-th branch) and the step it was forked at. Compute time (model
forwards and the method's own arithmetic) and recording time (building step records) are
kept apart so that speed figures are honest.
"""
from __future__ import annotations

import json
import math
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engine import schema

SCHEMA_VERSION = 2          # 2: "branches" (what-if forks); version 1 files load unchanged
MAX_BRANCHES = 64
MAX_TRACE_BYTES = 50 * 1024 * 1024
KINDS = set(schema.STEPS)  # ar, speculative, kv, jacobi, lookahead, diffusion: engine/schema.py says what each holds
COUNTER_KEYS = ("target_forwards", "draft_forwards", "generated_tokens", "compute_s", "record_s")


from engine.errors import TraceError  # noqa: E402,F401  (re-exported: a trace file that is not a trace)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "triton"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


@dataclass
class Counters:
    target_forwards: int = 0
    draft_forwards: int = 0
    generated_tokens: int = 0
    compute_s: float = 0.0
    record_s: float = 0.0

    @contextmanager
    def compute(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.compute_s += time.perf_counter() - t

    @contextmanager
    def recording(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.record_s += time.perf_counter() - t

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in COUNTER_KEYS}
        d["tokens_per_s"] = self.generated_tokens / self.compute_s if self.compute_s > 0 else None
        d["tokens_per_forward"] = (
            self.generated_tokens / self.target_forwards if self.target_forwards else None
        )
        return d


@dataclass
class Trace:
    meta: dict[str, Any]
    steps: list[dict] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    final_text: str = ""
    final_ids: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # per-family summaries (e.g. quality)
    branches: list["Trace"] = field(default_factory=list)  # what-if forks of this run (meta["fork"]["parent"])

    @classmethod
    def new(cls, model: str, method: str, params: dict, prompt: str, seed: int | None = None) -> "Trace":
        return cls(meta={
            "model": model, "method": method, "params": params, "prompt": prompt, "seed": seed,
            "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })

    def to_dict(self) -> dict:
        d = {
            "schema_version": SCHEMA_VERSION,
            "meta": self.meta,
            "steps": self.steps,
            "final": {"text": self.final_text, "token_ids": self.final_ids},
            "counters": self.counters.as_dict(),
            "extra": self.extra,
        }
        if self.branches:
            d["branches"] = [{k: v for k, v in b.to_dict().items() if k != "schema_version"} for b in self.branches]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, default=_jsonable)

    def save(self, path) -> None:
        """Write the trace atomically: a temporary file beside `path`, renamed over it; on any failure the
        temporary file is removed (never a half-written trace, never a stray .tmp)."""
        import os
        text = self.to_json()
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_float(x: float | None, digits: int = 6) -> float | None:
    """Round, and map NaN/inf to None so that traces stay strict JSON."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return None
    return round(x, digits)


def _reject_constant(name):
    raise TraceError(f"The trace contains {name}, which is not valid JSON.")


def loads(data: str | bytes) -> Trace:
    """Parse and validate a trace. Never evaluates code; raises TraceError with a clear reason."""
    if isinstance(data, bytes):
        if len(data) > MAX_TRACE_BYTES:
            raise TraceError(f"The file is {len(data) / 1e6:.1f} MB; traces are limited to {MAX_TRACE_BYTES // 2**20} MB.")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TraceError("The file is not UTF-8 text, so it is not a trace JSON file.") from e
    if len(data) > MAX_TRACE_BYTES:
        raise TraceError(f"The file is larger than {MAX_TRACE_BYTES // 2**20} MB.")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except TraceError:
        raise
    except RecursionError as e:
        raise TraceError("The file is nested too deeply to be a trace.") from e
    except json.JSONDecodeError as e:
        raise TraceError(f"The file is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise TraceError(f"The file cannot be read as a trace: {str(e)[:200]}") from e
    return from_dict(obj)


def load(path) -> Trace:
    with open(path, "rb") as f:
        return loads(f.read(MAX_TRACE_BYTES + 1))


def _need(cond: bool, msg: str):
    if not cond:
        raise TraceError(msg)


def from_dict(obj: Any) -> Trace:
    _need(isinstance(obj, dict), "A trace must be a JSON object at the top level.")
    v = obj.get("schema_version")
    _need(isinstance(v, int), "This is not a decoding-lab trace: 'schema_version' is missing.")
    _need(v <= SCHEMA_VERSION, f"Trace schema version {v} is newer than this app understands ({SCHEMA_VERSION}).")
    raw = obj.get("branches", [])
    _need(isinstance(raw, list), "'branches' must be a list of traces.")
    _need(len(raw) <= MAX_BRANCHES, f"The trace has {len(raw)} branches; at most {MAX_BRANCHES} are read.")
    tree = [_one(obj)]
    for i, b in enumerate(raw, 1):
        _need(isinstance(b, dict), f"Branch {i} is not an object.")
        _need("branches" not in b, f"Branch {i} has branches of its own; a branch names its parent in "
                                   "meta.fork.parent instead.")
        try:
            t = _one(b)
        except TraceError as e:
            raise TraceError(f"Branch {i}: {e}") from None
        _check_fork(i, t.meta.get("fork"), tree)
        tree.append(t)
    tree[0].branches = tree[1:]
    return tree[0]


def _check_fork(i: int, f: Any, tree: list[Trace]) -> None:
    """A branch's meta.fork: its parent is the trace (0) or an earlier branch, at one of the parent's steps."""
    where = f"Branch {i}'s meta.fork"
    _need(isinstance(f, dict), f"{where} is missing (a branch says where it was forked from).")
    p, k, ids = f.get("parent"), f.get("at_step"), f.get("prefix_ids")
    _need(type(p) is int and 0 <= p < i, f"{where}.parent must be 0 (the original) or an earlier branch "
                                         f"(0..{i - 1}), got {str(p)[:20]!r}.")
    n = len(tree[p].steps)
    _need(type(k) is int and 0 <= k < max(n, 1), f"{where}.at_step must be one of its parent's steps "
                                                 f"(0..{max(n - 1, 0)}), got {str(k)[:20]!r}.")
    _need(isinstance(ids, list) and len(ids) <= 1 << 20 and all(type(t) is int and 0 <= t < 1 << 31 for t in ids),
          f"{where}.prefix_ids must be a list of token ids.")


def _one(obj: dict) -> Trace:
    """One trace (the original or a branch), checked."""
    meta = obj.get("meta")
    _need(isinstance(meta, dict), "The trace has no 'meta' object.")
    for key in ("model", "method"):
        _need(isinstance(meta.get(key), str), f"The trace's meta has no '{key}' string.")
    steps = obj.get("steps")
    _need(isinstance(steps, list), "The trace has no 'steps' list.")
    for i, s in enumerate(steps):
        _need(isinstance(s, dict), f"Step {i} is not an object.")
        _need(isinstance(s.get("kind"), str) and s["kind"] in KINDS,
              f"Step {i} has an unknown kind {s.get('kind')!r} (expected one of {sorted(KINDS)}).")
        _need(isinstance(s.get("index"), int), f"Step {i} has no integer 'index'.")
    final = obj.get("final", {})
    _need(isinstance(final, dict), "'final' must be an object.")
    text = final.get("text", "")
    ids = final.get("token_ids", [])
    _need(isinstance(text, str), "'final.text' must be a string.")
    _need(isinstance(ids, list) and all(isinstance(t, int) for t in ids), "'final.token_ids' must be a list of integers.")
    c = obj.get("counters", {})
    _need(isinstance(c, dict), "'counters' must be an object.")
    extra = obj.get("extra", {})
    _need(isinstance(extra, dict), "'extra' must be an object.")
    try:
        schema.check_trace(obj)  # every field the views read, per step kind (counters finite, too)
    except schema.Invalid as e:
        raise TraceError(f"{e}.") from None
    counters = Counters()
    for k in COUNTER_KEYS:
        if k in c:
            setattr(counters, k, type(getattr(counters, k))(c[k]))
    return Trace(meta=meta, steps=steps, counters=counters, final_text=text, final_ids=ids, extra=extra)
