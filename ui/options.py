"""Page widgets generated from a method's typed option specs (engine.options.Opt).

`option_widgets("kv", "kv")` draws one widget per option that applies (a drafter's options only
when that drafter is chosen, and so on), with the spec's default, range and help, and returns the
values. A page therefore gets a new option, drafter, policy or rule without a hand-written widget,
and its defaults cannot drift from the engine's.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import streamlit as st

from engine import methods
from engine.options import Opt

CUSTOM = "custom..."


def _label(name: str, opt: Opt) -> str:
    return opt.label or name


def _keep(key: str, value: Any) -> dict:
    """`value=` for a widget, unless the session already holds its value (then Streamlit warns)."""
    return {} if key in st.session_state else {"value": value}


def widget(c, name: str, opt: Opt, key: str, choices: Iterable | None = None,
           format_func: Callable | None = None, help_: str | None = None, disabled: bool = False) -> Any:
    """One widget for one option; returns its value."""
    label, help_ = _label(name, opt), help_ or opt.describe()
    options = list(choices) if choices is not None else opt.choice_list()
    t = opt.type
    if options is not None:
        if key in st.session_state and st.session_state[key] not in options:
            del st.session_state[key]      # e.g. a registry that lost an entry, or an edited URL
        index = options.index(opt.default) if opt.default in options else 0
        kw = {} if key in st.session_state else {"index": index}
        return c.selectbox(label, options, key=key, help=help_, format_func=format_func or str, disabled=disabled,
                           **kw)
    if t is bool:
        return c.checkbox(label, key=key, help=help_, disabled=disabled, **_keep(key, opt.default))
    if t is str:
        if opt.presets:
            presets = list(opt.presets) + [CUSTOM]
            pick_key = f"{key}_preset"
            default_pick = opt.default if opt.default in opt.presets else CUSTOM
            kw = {} if pick_key in st.session_state else {"index": presets.index(default_pick)}
            pick = c.selectbox(label, presets, key=pick_key, help=help_, disabled=disabled, **kw)
            if pick != CUSTOM:
                return pick
            return c.text_input(f"{label} (custom)", key=key, max_chars=opt.max_len, disabled=disabled,
                                **_keep(key, opt.default))
        return c.text_input(label, key=key, help=help_, max_chars=opt.max_len, disabled=disabled,
                            **_keep(key, opt.default))
    lows = [v for v in (opt.min, *opt.special) if v is not None]
    highs = [v for v in (opt.max, *opt.special) if v is not None]
    lo, hi = (min(lows) if lows else None), (max(highs) if highs else None)
    if t is int:
        return int(c.number_input(label, min_value=None if lo is None else int(lo),
                                  max_value=None if hi is None else int(hi), step=int(opt.step or 1), key=key,
                                  help=help_, disabled=disabled, **_keep(key, int(opt.default))))
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if opt.slider and lo is not None and hi is not None:
        return float(c.slider(label, lo, hi, step=float(opt.step or 0.05), key=key, help=help_, disabled=disabled,
                              **_keep(key, float(opt.default))))
    return float(c.number_input(label, min_value=lo, max_value=hi, step=float(opt.step or 0.01), key=key,
                                help=help_, disabled=disabled, format="%g", **_keep(key, float(opt.default))))


def option_widgets(method: str, prefix: str, container=None, *, only: Iterable[str] | None = None,
                   skip: Iterable[str] = (), fixed: Mapping[str, Any] | None = None,
                   choices: Mapping[str, Iterable] | None = None, formats: Mapping[str, Callable] | None = None,
                   helps: Mapping[str, str] | None = None) -> dict:
    """Widgets for `method`'s options that apply, in declaration order (selectors come first, so the
    options of the chosen drafter / policy / rule follow it). Keys are f"{prefix}_{option}".

    only / skip: which options to draw; fixed: values set by the page (not drawn, but used to decide
    what applies); choices / formats / helps: per option, a narrower list of choices, a label function
    for a select, a help text. Returns the values drawn plus `fixed`."""
    spec = methods.get(method)
    c = container or st.sidebar
    fixed = dict(fixed or {})
    only = set(only) if only is not None else None
    skip = set(skip)
    values: dict[str, Any] = dict(fixed)
    current = {**spec.defaults(), **fixed}
    for name, opt in spec.options.items():
        if name in fixed or name in skip or (only is not None and name not in only):
            continue
        if not opt.applies(current):
            continue
        v = widget(c, name, opt, f"{prefix}_{name}", choices=(choices or {}).get(name),
                   format_func=(formats or {}).get(name) or _component_format(spec, name),
                   help_=(helps or {}).get(name))
        values[name] = current[name] = v
    return values


def _component_format(spec, name: str) -> Callable | None:
    reg = spec.components.get(name)
    if reg is None:
        return None
    return lambda v: f"{v} — {reg.items[v].help}" if v in reg.items else str(v)


def max_new_tokens_widget(prefix: str, default: int = 64, container=None, hi: int = 1024, key: str | None = None,
                          label: str | None = None) -> int:
    """The run-level token budget (engine.run.MAX_NEW), capped for the page."""
    from engine.run import MAX_NEW
    c = container or st.sidebar
    key = key or f"{prefix}_max_new"
    return int(c.number_input(label or _label("max_new_tokens", MAX_NEW), min_value=int(MAX_NEW.min), max_value=hi,
                              step=1, key=key, help=MAX_NEW.describe(), **_keep(key, default)))
