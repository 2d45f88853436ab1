"""One grammar for a list of decoder layers, read by every option that names layers.

    spec  := "all" | "none" | "" | part ("," part)*
    part  := end | end "-" end          (a range, both ends included)
    end   := index | "first" | "mid" | "middle" | "last"
    index := [+-]? ascii digits         (negative counts from the end: -1 is the last layer)

Whitespace anywhere and empty parts are ignored, names are case-insensitive. The result is sorted,
without repeats. Every index and range end is checked against the model before a range is expanded,
so '0-100000000' fails at once instead of building a huge list.

Used by kv's watch_layers and the layer_skip drafter's skip_layers (the grammar is the union of the
two they had: names and negative indices from one, ranges and empty parts from the other).
"""
from __future__ import annotations

import re

from engine.errors import MethodError, shorten

_END = r"[+-]?[0-9]+|first|mid|middle|last"
_PART = re.compile(rf"({_END})(?:-({_END}))?", re.ASCII)
_MAX_DIGITS = 9             # an index longer than this is outside any model; int() is not asked to read it


def _index(end: str, n_layers: int, what: str) -> int:
    named = {"first": 0, "mid": n_layers // 2, "middle": n_layers // 2, "last": n_layers - 1}
    if end in named:
        return named[end]
    v = int(end) if len(end.lstrip("+-")) <= _MAX_DIGITS else n_layers * 2 + 10**_MAX_DIGITS
    if v < 0:
        v += n_layers
    if not 0 <= v < n_layers:
        raise MethodError(f"{what}: layer {shorten(end, 40)} does not exist: it is outside 0..{n_layers - 1} "
                          f"(the model has {n_layers} layers; -1 is the last).")
    return v


def parse_layers(spec, n_layers: int, what: str = "layers") -> list[int]:
    """'0,5,9-20', 'first,mid,last', '-1', 'all', 'none' -> sorted layer indices (MethodError names `what`)."""
    spec = "".join(str(spec).split()).lower()
    if spec == "all":
        return list(range(n_layers))
    if spec == "none":
        return []
    out: set[int] = set()
    for part in spec.split(","):
        if not part:
            continue
        m = _PART.fullmatch(part)
        if m is None:
            raise MethodError(f"{what}: {shorten(part, 40)} is not a layer index, range or name; write a list like "
                              "0,5,9-20 or first,mid,last (-1 is the last layer), or 'all' / 'none'.")
        a = _index(m.group(1), n_layers, what)
        b = a if m.group(2) is None else _index(m.group(2), n_layers, what)
        if b < a:
            raise MethodError(f"{what}: the range {shorten(part, 40)} runs backwards ({a} > {b}).")
        out.update(range(a, b + 1))
    return sorted(out)
