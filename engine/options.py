"""Typed option specs: one declaration per option drives the engine's validation, the CLI flag and
the page widget, so a default or a range is written once.

(~330 lines, one file on purpose: Opt and Components are the one declaration the engine, the CLI and
the pages all read.)

    Opt(8, "guessed tokens per iteration", min=1, max=128)
    Opt("pad", "initial guesses", choices=("pad", "repeat", "random"))
    Opt(0.9, "confidence threshold", min=0.0, max=1.0, min_open=True)
    Opt(-1, "recent window (-1 = half the budget)", min=0, max=16384, special={-1: "half the budget"})
    Opt(3, "longest n-gram matched", min=1, max=16, when={"drafter": ("prompt_lookup",)})

`coerce(name, value)` turns a value (a Python value, or the text of a CLI flag / URL parameter) into
the option's type and checks its range, raising OptionError that names the option and what is
allowed. `when` says which values of another option (a selector such as `drafter`, `policy`,
`rule`) the option applies to: the page shows it only then, and the engine refuses a non-default
value where it would have no effect.

Components (drafters, KV policies, diffusion rules) register with a `Components` registry and bring
their own options; a method that selects among them lists the registry, and its option set is its
own options plus every component's, each tagged with `when={selector: (components using it,)}`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from engine.errors import MethodError, OptionError, shorten

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
MAX_STR = 500


class Not(tuple):
    """In `when`: the option applies when the selector is NOT one of these, e.g. when={"drafter": Not(("x",))}."""

    def __contains__(self, value) -> bool:
        return not tuple.__contains__(self, value)

    def __repr__(self) -> str:
        return f"Not({tuple(self)!r})"


def _when_text(when: Mapping[str, tuple]) -> str:
    return "; ".join(f"{k} is {'not ' if isinstance(vs, Not) else ''}{' / '.join(map(str, tuple(vs)))}"
                     for k, vs in when.items())


@dataclass(frozen=True)
class Opt:
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    min_open: bool = False          # the range excludes `min`
    max_open: bool = False          # the range excludes `max`
    choices: tuple | Callable[[], tuple] | None = None
    special: Mapping[Any, str] = field(default_factory=dict)  # values allowed outside the range, and their meaning
    when: Mapping[str, tuple] | None = None
    max_len: int = MAX_STR          # str options
    multiline: bool = False         # str options: line breaks allowed and the text kept as given (a grammar)
    presets: tuple = ()             # str options: suggested values the page offers (a custom value stays possible)
    lower: bool = False             # str options: compare and keep in lower case
    label: str | None = None        # page label (default: the option's name, as the reference code spells it)
    slider: bool = False            # float options: draw a slider (needs min and max)
    step: float | None = None       # page widget step
    # choices options: a value the option knows but cannot take in this checkout -> why, and what to do
    # (the refusal's message); None where the value is simply unknown
    unavailable: Callable[[Any], str | None] | None = None

    # -- type ----------------------------------------------------------------------------------
    @property
    def type(self) -> type:
        d = self.default
        if isinstance(d, bool):
            return bool
        if isinstance(d, int):
            return int
        if isinstance(d, float):
            return float
        if isinstance(d, str):
            return str
        raise TypeError(f"option defaults must be bool, int, float or str, got {type(d).__name__}")

    def choice_list(self) -> tuple | None:
        c = self.choices() if callable(self.choices) else self.choices
        return tuple(c) if c is not None else None

    # -- what is allowed, in words --------------------------------------------------------------
    def allowed(self) -> str:
        t = self.type
        choices = self.choice_list()
        if choices is not None:
            return "one of " + ", ".join(str(c) for c in choices)
        if t is bool:
            return "true or false"
        if t is str:
            return f"text of at most {self.max_len} characters"
        word = "an integer" if t is int else "a number"
        if self.min is not None and self.max is not None:
            if t is int and not self.min_open and not self.max_open:
                rng = f"{word} in {_num(self.min)}..{_num(self.max)}"
            else:
                rng = f"{word} in {'(' if self.min_open else '['}{_num(self.min)}, {_num(self.max)}{')' if self.max_open else ']'}"
        elif self.min is not None:
            rng = f"{word} {'>' if self.min_open else '>='} {_num(self.min)}"
        elif self.max is not None:
            rng = f"{word} {'<' if self.max_open else '<='} {_num(self.max)}"
        else:
            rng = word
        if self.special:
            rng += " (or " + ", ".join(f"{_num(k)} = {v}" for k, v in self.special.items()) + ")"
        return rng

    # -- validation ----------------------------------------------------------------------------
    def coerce(self, name: str, value: Any) -> Any:
        """`value` (a Python value of the option's type) checked against the range; OptionError naming
        `name` otherwise. Text from a CLI flag or a URL goes through `parse` first."""
        def fail(why: str = ""):
            raise OptionError(f"{name} must be {self.allowed()}, got {shorten(value)}{why}.")

        t = self.type
        if t is bool:
            if not isinstance(value, bool):
                fail()
            return value
        if t is str:
            if not isinstance(value, str):
                fail()
            if len(value) > self.max_len:
                raise OptionError(f"{name} is {len(value)} characters long; at most {self.max_len} are allowed.")
            ok = "\t\n\r" if self.multiline else "\t"
            if any(ord(ch) < 32 and ch not in ok for ch in value):
                fail(" (control characters are not allowed)")
            v = value if self.multiline else value.strip().lower() if self.lower else value.strip()
        elif t is int:
            if isinstance(value, bool) or not isinstance(value, int):
                fail()
            v = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail()
            v = float(value)
        choices = self.choice_list()
        if choices is not None:
            if v not in choices:
                why = self.unavailable(v) if self.unavailable is not None else None
                if why:
                    raise OptionError(f"{name} {shorten(value)}: {why}")
                fail()
            return v
        if t in (int, float) and v not in self.special:
            lo, hi = self.min, self.max
            if lo is not None and (v < lo or (self.min_open and v == lo)):
                fail()
            if hi is not None and (v > hi or (self.max_open and v == hi)):
                fail()
        return v

    def parse(self, name: str, text: str) -> Any:
        """A value given as text (CLI flag, URL parameter), converted to the option's type and checked."""
        if not isinstance(text, str):
            return self.coerce(name, text)
        t = self.type
        if t is bool:
            word = text.strip().lower()
            if word not in TRUE_WORDS + FALSE_WORDS:
                raise OptionError(f"{name} must be true or false, got {shorten(text)}.")
            return word in TRUE_WORDS
        if t is int:
            v = _as_int(text)
        elif t is float:
            v = _as_float(text)
        else:
            return self.coerce(name, text)
        if v is None:
            raise OptionError(f"{name} must be {self.allowed()}, got {shorten(text)}.")
        return self.coerce(name, v)

    def applies(self, values: Mapping[str, Any]) -> bool:
        """True when this option has an effect given the other options' values."""
        return not self.when or all(values.get(k) in vs for k, vs in self.when.items())

    def describe(self) -> str:
        """Help for a CLI flag or a tooltip: what it does, what is allowed, the default, when it applies."""
        parts = [self.help.rstrip(".")] if self.help else []
        parts.append(f"allowed: {self.allowed()}")
        parts.append(f"default {self.default!r}")
        if self.when:
            parts.append("applies when " + _when_text(self.when))
        return "; ".join(parts)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value == int(value) else None
    if isinstance(value, str):
        s = value.strip()
        digits = s[1:] if s[:1] in ("+", "-") else s
        if digits.isascii() and digits.isdigit() and len(digits) <= 30:  # "²".isdigit() is True: isascii first
            return int(s)
    return None


def _as_float(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str) and len(value) <= 40 and value.strip().isascii():
        try:
            v = float(value)
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def as_opt(spec) -> Opt:
    """Accept the old `(default, help)` pairs too."""
    if isinstance(spec, Opt):
        return spec
    default, help_ = spec
    return Opt(default, help_)


# ------------------------------------------------------------------------------------------------
# components: drafters, KV policies, diffusion rules

@dataclass
class Component:
    name: str
    obj: Any                      # the class or function
    help: str
    options: dict[str, Opt]


class Components:
    """A registry of interchangeable parts, chosen by one selector option of a method.

        DRAFTERS = Components("drafter")
        @DRAFTERS.register("prompt_lookup", "copy the continuation of ...",
                           options={"max_matching_ngram_size": Opt(3, ..., min=1, max=16)})
        class PromptLookup(Drafter): ...
    """

    def __init__(self, selector: str):
        self.selector = selector
        self.items: dict[str, Component] = {}

    def register(self, name: str, help: str, options: Mapping[str, Opt] | None = None):
        """Decorator: register a class or function under `name`, with its own options (name -> Opt)."""
        def deco(obj):
            self.items[name] = Component(name, obj, help, {k: as_opt(v) for k, v in (options or {}).items()})
            return obj
        return deco

    def unregister(self, name: str) -> None:
        self.items.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self.items)

    # the registry reads like the tuple of its names: `"h2o" in POLICIES`, `list(POLICIES)`, `POLICIES.index(...)`
    def __iter__(self):
        return iter(self.items)

    def __contains__(self, name) -> bool:
        return name in self.items

    def __len__(self) -> int:
        return len(self.items)

    def index(self, name) -> int:
        return list(self.items).index(name)

    def get(self, name: str) -> Component:
        if name not in self.items:
            raise OptionError(f"{self.selector} must be one of {', '.join(self.items)}, got {shorten(name)}.")
        return self.items[name]

    def help_text(self) -> str:
        return "; ".join(f"{c.name}: {c.help}" for c in self.items.values())

    def options(self) -> dict[str, Opt]:
        """Every component's options, each tagged with the components it applies to. A name that two
        components share must be declared the same way in both (one default, one range)."""
        out: dict[str, Opt] = {}
        users: dict[str, list[str]] = {}
        for comp in self.items.values():
            for name, opt in comp.options.items():
                if name in out and replace(out[name], when=None) != replace(opt, when=None):
                    raise MethodError(f"option {name} is declared differently by two {self.selector}s "
                                      f"({', '.join(users[name])} and {comp.name})")
                out.setdefault(name, opt)
                users.setdefault(name, []).append(comp.name)
        return {name: replace(opt, when={self.selector: tuple(users[name])}) for name, opt in out.items()}


def merge_options(own: Mapping[str, Opt], components: Mapping[str, Components]) -> dict[str, Opt]:
    """A method's options: its own, then its components' (own names win: a component can't redefine them)."""
    out = {k: as_opt(v) for k, v in own.items()}
    for reg in components.values():
        for name, opt in reg.options().items():
            out.setdefault(name, opt)
    return out


def check_values(options: Mapping[str, Opt], given: Mapping[str, Any], where: str) -> dict:
    """Coerce the given values and fill defaults; refuse unknown options. Returns the full option dict."""
    unknown = [k for k in given if k not in options]
    if unknown:
        raise OptionError(f"Unknown option(s) for {where}: {', '.join(sorted(map(str, unknown)))[:300]}. "
                          f"Known: {', '.join(options) or 'none'}.")
    values = {name: opt.default for name, opt in options.items()}
    for name, v in given.items():
        values[name] = options[name].coerce(name, v)
    return values


def ignored(options: Mapping[str, Opt], given: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, str]:
    """Options given a non-default value that has no effect with the other values: name -> why."""
    out = {}
    for name in given:
        opt = options[name]
        if not opt.applies(values) and values[name] != opt.default:
            out[name] = f"{name}={shorten(values[name])} has no effect: it applies only when {_when_text(opt.when)}"
    return out
