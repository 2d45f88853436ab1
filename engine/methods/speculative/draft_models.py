"""The models a drafter runs: the target's own layers, or a separate draft LM sharing the tokenizer.

Checks here are cheap and run before any forward: a separate draft model's tokenizer is compared
with the target's before its weights are loaded (layer lists: engine/layer_spec.py).
"""
from __future__ import annotations

import copy
import threading

import torch

from engine.errors import MethodError, shorten

_DRAFT_LMS: dict = {}
_DRAFT_LOCK = threading.Lock()
MAX_NAME = 500


def layers_of(lm):
    """The target's decoder layers, for the self-speculative drafters (Llama-style models only)."""
    inner = getattr(lm.model, "model", None)
    need = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, a) for a in need) or not hasattr(lm.model, "lm_head"):
        raise MethodError(f"The self-speculative drafters need a Llama-style model (model.layers, norm, lm_head); "
                          f"{type(lm.model).__name__} is not one. Use prompt_lookup, token_recycling or trigram.")
    return inner.layers


def truncated_view(lm, k: int):
    """The target's first k layers + final norm + LM head as a standalone causal LM (shared weights)."""
    from transformers import AutoModelForCausalLM
    from engine.models import LM
    layers = layers_of(lm)
    if not 1 <= k < len(layers):
        raise MethodError(f"self:K needs 1 <= K < {len(layers)} (the target's layer count), got {k}.")
    cfg = copy.deepcopy(lm.model.config)
    cfg.num_hidden_layers = k
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:k]
    with torch.device("meta"):
        small = AutoModelForCausalLM.from_config(cfg)
    inner, src = small.model, lm.model.model
    inner.embed_tokens, inner.norm, inner.rotary_emb = src.embed_tokens, src.norm, src.rotary_emb
    inner.layers = torch.nn.ModuleList(list(layers[:k]))
    small.lm_head = lm.model.lm_head
    small.generation_config = copy.deepcopy(lm.model.generation_config)
    small.eval()
    return LM(model=small, tokenizer=lm.tokenizer, name=f"self:{k}", device=lm.device, dtype=lm.dtype,
              is_instruct=lm.is_instruct)


def _self_k(name: str) -> int | None:
    if not name.lower().startswith("self:"):
        return None
    k = name.split(":", 1)[1].strip()
    if not (k.isascii() and k.isdigit() and len(k) < 6):
        raise MethodError(f"draft_model {shorten(name)}: write self:K with K an integer, e.g. self:8.")
    return int(k)


def check_draft(lm, name: str) -> None:
    """Everything about a draft model that can be checked without loading its weights."""
    name = (name or "").strip()
    if not name:
        raise MethodError("drafter=draft_model needs draft_model: a Hugging Face id or local path of a causal LM "
                          "with the target's tokenizer, or self:K for the target's first K layers.")
    k = _self_k(name)
    if k is not None:
        n = len(layers_of(lm))
        if not 1 <= k < n:
            raise MethodError(f"self:K needs 1 <= K < {n} (the target's layer count), got {k}.")
        return
    key = (name, str(lm.device), str(lm.dtype))
    if key in _DRAFT_LMS:
        return
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # not found offline, not a model directory, a broken tokenizer file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MethodError(f"Cannot load the draft model {shorten(name)}: its tokenizer cannot be read "
                          f"(this machine cannot download; give a local directory or a cached id). {first}") from None
    check_tokenizers(lm.tokenizer, tok, name)


def load_draft(lm, name: str):
    """The draft LM (loaded once per process and device): `self:K` is a view of the target."""
    name = (name or "").strip()
    check_draft(lm, name)
    k = _self_k(name)
    if k is not None:
        return truncated_view(lm, k)
    key = (name, str(lm.device), str(lm.dtype))
    with _DRAFT_LOCK:
        if key not in _DRAFT_LMS:
            from engine import models
            try:
                _DRAFT_LMS[key] = models.load(name, device=lm.device, dtype=lm.dtype)
            except models.ModelLoadError as e:
                raise MethodError(f"Cannot load the draft model: {e}") from e
    draft = _DRAFT_LMS[key]
    check_tokenizers(lm.tokenizer, draft.tokenizer, draft.name)
    return draft


def check_tokenizers(target_tok, draft_tok, draft_name: str) -> None:
    va, vb = target_tok.get_vocab(), draft_tok.get_vocab()
    if va != vb:
        diff = sum(1 for t, i in vb.items() if va.get(t) != i) + sum(1 for t in va if t not in vb)
        raise MethodError(
            f"The draft model {shorten(draft_name)} does not share the target's tokenizer ({len(vb)} vs {len(va)} "
            f"tokens, {diff} entries differ): speculative decoding compares token ids, so the draft must use the "
            "same vocabulary. Pick a draft from the same model family.")
