"""Page widgets generated from a method's typed option specs (engine.options.Opt).

`option_widgets("kv", "kv")` draws one widget per option that applies (a drafter's options only
when that drafter is chosen, and so on), with the spec's default, range and help, and returns the
values. A page therefore gets a new option, drafter, policy or rule without a hand-written widget,
and its defaults cannot drift from the engine's.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import streamlit as st

from engine import methods
from engine.errors import OptionError
from engine.options import Opt
from viz.safe import md_text

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
    if t is int:
        return int(checked_number(c, label, key, opt, name, int(opt.default), step=int(opt.step or 1), help_=help_,
                                  disabled=disabled))
    if opt.slider and opt.min is not None and opt.max is not None:
        lo, hi = (min(float(v) for v in (opt.min, *opt.special)), max(float(v) for v in (opt.max, *opt.special)))
        return float(c.slider(label, lo, hi, step=float(opt.step or 0.05), key=key, help=help_, disabled=disabled,
                              **_keep(key, float(opt.default))))
    return float(checked_number(c, label, key, opt, name, float(opt.default), step=float(opt.step or 0.01),
                                help_=help_, disabled=disabled, format="%g"))


def _refused_key(key: str) -> str:
    return f"{key}__refused"


def _good_key(key: str) -> str:
    return f"{key}__good"


def _check_typed(key: str, opt: Opt, name: str, default) -> None:
    """on_change of a number widget: a value outside the option's range is refused with a reason (kept for the
    next run to show) and the widget goes back to the last good value. The browser's own min / max check would
    only outline the box in red and silently keep the old value."""
    value = st.session_state.get(key)
    good = st.session_state.get(_good_key(key), default)
    try:
        if value is None:
            raise OptionError("empty")
        opt.coerce(name, value)
    except OptionError:
        typed = "an empty box" if value is None else f"{value:g}"
        st.session_state[_refused_key(key)] = (f"{name}: {typed} was refused; allowed is {opt.allowed()}. "
                                               f"Kept {good:g}.")
        st.session_state[key] = good
        return
    st.session_state.pop(_refused_key(key), None)


def checked_number(c, label: str, key: str, opt: Opt, name: str, default, *, step, help_: str | None = None,
                   disabled: bool = False, format: str | None = None):
    """A number input whose typed value is checked by `opt` (its range, its special values) on the server: an
    out-of-range value is refused with a visible message that says what is allowed, and the last good value
    stays. The widget itself has no min / max, so the browser passes every typed value on."""
    help_ = help_ or opt.describe()
    kw = {"format": format} if format else {}
    v = c.number_input(label, step=step, key=key, help=help_, disabled=disabled,
                       on_change=_check_typed, args=(key, opt, name, default), **kw, **_keep(key, default))
    try:
        opt.coerce(name, v)
        st.session_state[_good_key(key)] = v
    except OptionError:   # set by the page itself: passed on as it is, and the engine refuses it with its reason
        pass
    msg = st.session_state.get(_refused_key(key))
    if msg:
        c.warning(md_text(msg, 300))
    return v


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
    spec = replace(MAX_NEW, max=hi) if hi != MAX_NEW.max else MAX_NEW
    help_ = spec.describe() + (f" on this page (the engine allows up to {int(MAX_NEW.max)})" if hi != MAX_NEW.max else "")
    return int(checked_number(c, label or _label("max_new_tokens", MAX_NEW), key, spec, "max new tokens", int(default),
                              step=1, help_=help_))
