"""Attention behaviour per forward call, on a model that several sessions share.

Some methods need more from the attention than its output: the KV view captures the post-RoPE
queries of the layers it watches, and on CUDA the speculative / lookahead / KV families route
attention through the Triton kernels (tree masks, attention mass). Switching the shared model's
`config._attn_implementation` for that is visible to every other session's forward and
validation at the same moment, so the model is switched ONCE, at load (`install`), to a
dispatcher registered as "dlab|<original>": with nothing asked for it calls the original
implementation (same mask function, same numbers); inside `capture(...)` / `kernels(...)` the
request lives in a context variable, i.e. in the calling thread only. Another session's forward
in another thread never sees it.
"""
from __future__ import annotations

import contextvars
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

PREFIX = "dlab|"
_CALL: contextvars.ContextVar["CallState | None"] = contextvars.ContextVar("dlab_attention_call", default=None)
_install_lock = threading.Lock()


class AttentionUnsupported(ValueError):
    """The model's attention cannot be routed through the dispatcher (remote code, custom modules)."""


@dataclass
class CallState:
    capture_layers: frozenset = frozenset()
    store: dict = field(default_factory=lambda: {"q": {}, "scaling": {}})
    kernels: bool = False


def original(model_or_config) -> str:
    """The implementation the dispatcher wraps (or the model's own, when not installed)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    name = getattr(cfg, "_attn_implementation", None) or "eager"
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def installed(model) -> bool:
    return (getattr(model.config, "_attn_implementation", None) or "").startswith(PREFIX)


def _original_fn(orig: str, module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    if orig == "eager" or orig not in ALL_ATTENTION_FUNCTIONS:
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise AttentionUnsupported(f"{type(module).__name__} has no eager attention to fall back on.")
        return eager
    return ALL_ATTENTION_FUNCTIONS[orig]


def _dispatcher(orig: str):
    def dlab_attention(module, query, key, value, attention_mask, **kwargs):
        state = _CALL.get()
        if state is not None:
            layer = getattr(module, "layer_idx", None)
            if layer in state.capture_layers:
                state.store["q"][layer] = query.detach()
                state.store["scaling"][layer] = kwargs.get("scaling", getattr(module, "scaling", None))
            if state.kernels:
                from kernels import dispatch as KD
                # attention_mask is None here unless the caller passed its own 4D mask (_mask_fn builds
                # none on this path): the kernels know the pattern (tree_parents / tree_visibility / causal)
                return KD.lab_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return _original_fn(orig, module)(module, query, key, value, attention_mask, **kwargs)
    return dlab_attention


def _mask_fn(orig_mask):
    """The original implementation's mask function, except on the kernels path, which needs no mask.
    (A caller's own 4D mask never reaches a mask function: transformers passes it through as given.)"""
    def dlab_mask(*args, **kwargs):
        state = _CALL.get()
        if state is not None and state.kernels:
            return None
        return orig_mask(*args, **kwargs)
    return dlab_mask


def _ensure_registered(orig: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
    name = PREFIX + orig
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _dispatcher(orig))
        orig_mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(orig)
        if orig_mask is not None:
            AttentionMaskInterface.register(name, _mask_fn(orig_mask))
    return name


def install(model) -> bool:
    """Switch `model` to the dispatcher, once (idempotent, thread-safe). Returns False when the model
    cannot be switched (its own remote code); then `capture` / `kernels` raise AttentionUnsupported."""
    if installed(model):
        return True
    with _install_lock:
        if installed(model):
            return True
        name = _ensure_registered(original(model))
        try:
            model.set_attn_implementation(name)
        except Exception:  # remote code or a model that does not use the attention interface
            return False
        return installed(model)


def _require(model):
    if not install(model):
        raise AttentionUnsupported(f"{type(model).__name__} does not use transformers' attention interface, so "
                                   "its attention cannot be captured or routed through the lab's kernels.")


@contextmanager
def capture(model, layers):
    """Record the post-RoPE queries of `layers` during the forwards this thread runs inside the block.
    Yields the store {"q": {layer: [B, Hq, T, D]}, "scaling": {layer: float}}."""
    layers = frozenset(layers)
    if not layers:
        yield {"q": {}, "scaling": {}}
        return
    _require(model)
    outer = _CALL.get()
    state = CallState(capture_layers=layers, kernels=bool(outer and outer.kernels))
    token = _CALL.set(state)
    try:
        yield state.store
    finally:
        _CALL.reset(token)


@contextmanager
def kernels(model):
    """Route this thread's forwards inside the block through the lab's kernels (kernels.dispatch):
    pass `tree_parents=` / `tree_visibility=` / `attention_mass=` to the model call (a caller's own 4D
    attention_mask falls back to SDPA, as kernels.dispatch.lab_attention_forward documents)."""
    _require(model)
    outer = _CALL.get()
    state = CallState(capture_layers=outer.capture_layers if outer else frozenset(),
                      store=outer.store if outer else {"q": {}, "scaling": {}}, kernels=True)
    token = _CALL.set(state)
    try:
        yield model
    finally:
        _CALL.reset(token)
