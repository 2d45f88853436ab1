"""The spec types of the step-record contract (engine/schema.py): one class per kind of field.

(~300 lines, one file on purpose: one small class per kind of field, all alike.)

Each type checks one value (`check`, raising `Invalid` with the path to the offending field) and, where
it can, a whole list at C speed (`fits_all`). engine/schema.py builds the per-kind tables from these and
re-exports every name here, so `from engine import schema as S; S.Obj, S.List, S.Invalid` keep working.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_COUNT = 2**53           # counters, bytes (Int's default upper bound)
MAX_NAME = 1_024            # characters of a model / method / policy / rule name (Str's default bound)


class Invalid(ValueError):
    """A value breaks the schema; `path` leads to it from the object that was checked."""

    def __init__(self, msg: str, path: tuple = ()):
        super().__init__(msg)
        self.msg, self.path = msg, tuple(path)

    def at(self, *segments) -> "Invalid":
        self.path = segments + self.path
        return self

    def __str__(self) -> str:
        path, head = self.path, ""
        if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
            head, path = f"step {path[1]}", path[2:]
        where = ", ".join(p for p in (head, format_path(path)) if p)
        return f"{where}: {self.msg}" if where else self.msg


def format_path(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _got(v) -> str:
    """A short description of a value for an error message."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int) and v.bit_length() > 128:
        return "a very large integer"  # (repr of one over 4300 digits raises)
    if isinstance(v, (int, float)):
        s = repr(v)
        return s if len(s) <= 40 else s[:20] + "…"
    if isinstance(v, str):
        return repr(v) if len(v) <= 40 else f"a string of {len(v)} characters"
    if isinstance(v, list):
        return f"a list of {len(v)} item(s)"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _types(values) -> set:
    return set(map(type, values))


# ---- the helper constructors -----------------------------------------------------------------
class Spec:
    """One field's contract. `check` raises Invalid; `fits_all` is a fast test for a whole list."""
    leaf = False  # a leaf's fits_all is a real test (not just False)

    def check(self, v) -> None:
        raise NotImplementedError

    def fits_all(self, values: list) -> bool:
        return False  # containers: check item by item

    def check_all(self, values: list) -> None:
        if self.fits_all(values):
            return
        for i, x in enumerate(values):
            try:
                self.check(x)
            except Invalid as e:
                raise e.at(i) from None


@dataclass(frozen=True)
class Int(Spec):
    leaf = True
    lo: int = 0
    hi: int = MAX_COUNT

    def check(self, v):
        if type(v) is not int or not self.lo <= v <= self.hi:
            raise Invalid(f"must be an integer in {self.lo}..{self.hi}, got {_got(v)}")

    def fits_all(self, values):
        return not values or (_types(values) == {int} and self.lo <= min(values) and max(values) <= self.hi)


@dataclass(frozen=True)
class Float(Spec):
    """A finite number (an int is fine) in [lo, hi]."""
    leaf = True
    lo: float = -1e300
    hi: float = 1e300

    def check(self, v):
        t = type(v)
        ok = (t is int or (t is float and math.isfinite(v))) and self.lo <= v <= self.hi
        if not ok:
            raise Invalid(f"must be a finite number in [{self.lo:g}, {self.hi:g}], got {_got(v)}")

    def fits_all(self, values):
        if not values:
            return True
        types = _types(values)
        if not types <= {int, float}:
            return False
        try:
            finite = float not in types or all(map(math.isfinite, values))
        except OverflowError:  # an int too large for a float
            return False
        return finite and self.lo <= min(values) and max(values) <= self.hi


@dataclass(frozen=True)
class Bool(Spec):
    leaf = True

    def check(self, v):
        if type(v) is not bool:
            raise Invalid(f"must be true or false, got {_got(v)}")

    def fits_all(self, values):
        return _types(values) <= {bool}


@dataclass(frozen=True)
class Str(Spec):
    leaf = True
    max_len: int = MAX_NAME

    def check(self, v):
        if type(v) is not str:
            raise Invalid(f"must be a string, got {_got(v)}")
        if len(v) > self.max_len:
            raise Invalid(f"must be at most {self.max_len} characters long, has {len(v)}")

    def fits_all(self, values):
        return not values or (_types(values) == {str} and max(map(len, values)) <= self.max_len)


@dataclass(frozen=True)
class Enum(Spec):
    leaf = True
    values: tuple

    def check(self, v):
        if type(v) is not str or v not in self.values:
            raise Invalid(f"must be one of {', '.join(map(repr, self.values))}, got {_got(v)}")

    def fits_all(self, values):
        return _types(values) <= {str} and set(values) <= set(self.values)


@dataclass(frozen=True)
class Maybe(Spec):
    """The value, or null."""
    inner: Spec

    @property
    def leaf(self):
        return self.inner.leaf

    def check(self, v):
        if v is not None:
            try:
                self.inner.check(v)
            except Invalid as e:
                msg = e.msg.replace(", got", " (or null), got", 1) if not e.path else e.msg
                raise Invalid(msg, e.path) from None

    def fits_all(self, values):
        return self.inner.fits_all([v for v in values if v is not None])


@dataclass(frozen=True)
class Scalar(Spec):
    """A table cell: null, true/false, a finite number or a short string."""

    def check(self, v):
        t = type(v)
        ok = v is None or t in (bool, int) or (t is float and math.isfinite(v)) or (t is str and len(v) <= MAX_NAME)
        if not ok:
            raise Invalid(f"must be null, true/false, a finite number or a string of at most {MAX_NAME} "
                          f"characters, got {_got(v)}")


@dataclass(frozen=True)
class List(Spec):
    item: Spec
    max_len: int
    min_len: int = 0

    def check(self, v):
        if type(v) is not list:
            raise Invalid(f"must be a list, got {_got(v)}")
        if not self.min_len <= len(v) <= self.max_len:
            raise Invalid(f"must have {self.min_len}..{self.max_len} items, has {len(v)}")
        self.item.check_all(v)


@dataclass(frozen=True)
class Tuple(Spec):
    """A list of fixed length, one spec per place."""
    items: tuple

    def check(self, v):
        if type(v) is not list or len(v) != len(self.items):
            raise Invalid(f"must be a list of {len(self.items)} items, got {_got(v)}")
        for i, (spec, x) in enumerate(zip(self.items, v)):
            try:
                spec.check(x)
            except Invalid as e:
                raise e.at(i) from None


@dataclass(frozen=True)
class Obj(Spec):
    """An object with required and optional fields; other fields are allowed and not checked."""
    fields: dict
    optional: dict = field(default_factory=dict)
    name: str = "this object"  # in "is missing (every tree node has it)"

    def check(self, v):
        if type(v) is not dict:
            raise Invalid(f"must be an object, got {_got(v)}")
        for k, spec in self.fields.items():
            if k not in v:
                raise Invalid(f"is missing ({self.name} has it)", (k,))
            self._field(spec, v[k], k)
        for k, spec in self.optional.items():
            if k in v:
                self._field(spec, v[k], k)

    def fits_all(self, values):
        """Column by column, for objects whose fields are all leaves (tree nodes, candidates)."""
        specs = {**self.fields, **self.optional}
        if not all(spec.leaf for spec in specs.values()) or not _types(values) <= {dict}:
            return False
        for k, spec in self.fields.items():
            if not all(k in v for v in values) or not spec.fits_all([v[k] for v in values]):
                return False
        return all(spec.fits_all([v[k] for v in values if k in v]) for k, spec in self.optional.items())

    @staticmethod
    def _field(spec, x, k):
        try:
            spec.check(x)
        except Invalid as e:
            raise e.at(k) from None


@dataclass(frozen=True)
class IntKey(Spec):
    """An object key that is a number: decimal ASCII digits (not '²', which str.isdigit accepts)."""
    hi: int

    def check(self, v):
        ok = type(v) is str and 0 < len(v) <= 10 and v.isascii() and v.isdecimal() and int(v) <= self.hi \
            and str(int(v)) == v  # the views look keys up as str(number): no "01"
        if not ok:
            raise Invalid(f"must be a key of digits for a number in 0..{self.hi}, got {_got(v)}")


@dataclass(frozen=True)
class Map(Spec):
    """An object whose keys are data (layer numbers, token ids), all with the same kind of value."""
    value: Spec
    max_len: int
    keys: Spec = Str(64)

    def check(self, v):
        if type(v) is not dict:
            raise Invalid(f"must be an object, got {_got(v)}")
        if len(v) > self.max_len:
            raise Invalid(f"must have at most {self.max_len} entries, has {len(v)}")
        if self.value.fits_all(list(v.values())) and isinstance(self.keys, IntKey) and _digit_keys(v, self.keys.hi):
            return
        for k, x in v.items():
            try:
                self.keys.check(k)
                self.value.check(x)
            except Invalid as e:
                raise e.at(k) from None


def _digit_keys(d: dict, hi: int) -> bool:
    """All keys are numbers <= hi written as str(number) (a fast test; IntKey.check says what is wrong)."""
    width = len(str(hi))
    return all(type(k) is str and k.isascii() and k.isdecimal() and 0 < len(k) <= width and (k[0] != "0" or k == "0")
               for k in d) and all(int(k) <= hi for k in d)
