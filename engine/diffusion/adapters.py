"""Model adapters: one interface over the masked diffusion LMs the sampler can drive.

An adapter turns a sequence containing mask tokens into logits aligned with it: `out[:, i]` is
the model's distribution for the token at position i. Two conventions exist:
- LLaDA-style (GSAI-ML/LLaDA-8B-Instruct): the model predicts position i at position i
  (no shift); the mask id comes from the config (126336 for LLaDA-8B).
- Dream-style (Dream-org/Dream-v0-Instruct-7B, and the embedded SmolLM2 diffusion model):
  the model was initialised from an autoregressive LM, so position i is predicted by the
  hidden state at i-1: logits are shifted right by one.

LLaDA and Dream ship their own modelling code: they load only when the user ticks "trust
remote code" (engine.models.load(..., trust_remote_code=True)). The embedded model is the
base SmolLM2 from engine.models plus the delta in models/smol-diffusion (engine.diffusion.smol).
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict

import torch

from engine import kvcache
from engine.methods import MethodError


class DiffusionAdapter:
    """Logits over a sequence with masks, for the sampler.

    model: the network; mask_id: the [MASK] token; shift: Dream-style shift by one;
    bidirectional: pass a 4D all-True attention mask (for HF models whose native attention is
    causal, e.g. the embedded SmolLM2 diffusion model); native: call the model with its own
    remote-code conventions (LLaDA: model(x); Dream: model(x, "full")).
    """

    def __init__(self, model, mask_id: int, shift: bool, bidirectional: bool = True, style: str = "hf",
                 name: str = "", eos_ids: set[int] | None = None):
        self.model, self.mask_id, self.shift = model, int(mask_id), bool(shift)
        self.bidirectional, self.style, self.name = bidirectional, style, name
        self.eos_ids = set(eos_ids or ())

    # -- one forward -------------------------------------------------------------------------
    def _call(self, x: torch.Tensor, past=None, start: int = 0):
        if self.style == "llada":
            if past is not None:
                raise MethodError("The prefix KV cache is not available for LLaDA's remote code in this lab.")
            return self.model(x).logits
        if self.style == "dream":
            if past is not None:
                raise MethodError("The prefix KV cache is not available for Dream's remote code in this lab.")
            return self.model(x, "full").logits
        L = x.shape[1]
        kv_len = start + L
        mask = None
        if self.bidirectional:
            mask = torch.ones(x.shape[0], 1, L, kv_len, dtype=torch.bool, device=x.device)
        elif past is not None:  # causal over the cached prefix + the new tokens
            q = torch.arange(start, kv_len, device=x.device)[:, None]
            k = torch.arange(kv_len, device=x.device)[None, :]
            mask = (k <= q)[None, None].expand(x.shape[0], 1, L, kv_len)
        pos = torch.arange(start, kv_len, device=x.device)[None].expand(x.shape[0], L)
        out = self.model(input_ids=x, attention_mask=mask, position_ids=pos, past_key_values=past,
                         use_cache=past is not None)
        return out.logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full forward: [B, L] ids -> [B, L, V] float32 logits aligned with x."""
        lg = self._call(x).float()
        if self.shift:
            lg = torch.cat([lg[:, :1], lg[:, :-1]], dim=1)
        lg[..., self.mask_id] = float("-inf")
        return lg

    # -- Fast-dLLM prefix cache --------------------------------------------------------------
    def supports_prefix_cache(self) -> bool:
        return self.style == "hf"

    def prefix_cache(self, x: torch.Tensor, start: int):
        """Forward the whole sequence once and keep the keys/values of positions < cache_len.

        Returns (logits aligned with x, cache, cache_len). For a shifted model the hidden
        state at start-1 is needed to predict position start, so it is left out of the cache
        and recomputed with the block."""
        from transformers import DynamicCache
        cache = DynamicCache()
        L = x.shape[1]
        mask = torch.ones(x.shape[0], 1, L, L, dtype=torch.bool, device=x.device) if self.bidirectional else None
        lg = self.model(input_ids=x, attention_mask=mask, use_cache=True, past_key_values=cache).logits.float()
        cache_len = max(0, start - 1) if self.shift else start
        kvcache.crop(cache, cache_len)
        if self.shift:
            lg = torch.cat([lg[:, :1], lg[:, :-1]], dim=1)
        lg[..., self.mask_id] = float("-inf")
        return lg, cache, cache_len

    def logits_from(self, x: torch.Tensor, cache, cache_len: int) -> torch.Tensor:
        """Forward x[:, cache_len:] over the cached prefix; out[:, j] predicts x[:, cache_len + j]
        (for a shifted model out[:, 0] is a placeholder: that position is committed)."""
        lg = self._call(x[:, cache_len:], past=cache, start=cache_len).float()
        kvcache.crop(cache, cache_len)  # drop the keys/values of the recomputed suffix again
        if self.shift:  # out[j] predicts x[cache_len + j + 1]; re-align (first entry unused)
            lg = torch.cat([lg[:, :1], lg[:, :-1]], dim=1)
        lg[..., self.mask_id] = float("-inf")
        return lg


# ----------------------------------------------------------------------------------------------
_EMBEDDED: "OrderedDict[tuple, DiffusionAdapter]" = OrderedDict()
_EMBEDDED_LOCK = threading.Lock()
MAX_EMBEDDED = 2   # each adapter is a merged copy of the base model (540 MB for SmolLM2-135M in fp32)


def embedded(lm, variant: str = "default") -> DiffusionAdapter:
    """The embedded diffusion model: a copy of the base SmolLM2 (lm) with a shipped delta merged.

    variant: a key of engine.diffusion.smol.VARIANTS, the variants this checkout has ("default":
    models/smol-diffusion; each is described in engine.diffusion.variants.TABLE). A known variant whose files
    are absent (it no longer ships) is a MethodError naming the command that rebuilds it."""
    from engine.diffusion import smol, variants
    if variant in smol.VARIANTS:
        delta_dir, name = smol.VARIANTS[variant]
    else:
        known = variants.BY_KEY.get(variant)
        if known is None:
            raise MethodError(f"Unknown embedded diffusion variant '{variant}': choose {', '.join(smol.VARIANTS)}.")
        if known.rebuild:
            raise MethodError(variants.missing_message(variant))
        delta_dir, name = known.path, known.label   # the default without its files: the message below
    with _EMBEDDED_LOCK:
        # keyed by what the copy is made of (never by id(): a freed model's id can be reused), at most
        # MAX_EMBEDDED copies, the least recently used dropped first
        key = (lm.name, str(lm.device), str(lm.dtype), sum(p.numel() for p in lm.model.parameters()), variant)
        if key in _EMBEDDED:
            _EMBEDDED.move_to_end(key)
        else:
            if not (delta_dir / "delta.safetensors").exists():
                raise MethodError(f"The embedded diffusion weights are missing ({delta_dir}): "
                                  "train them with `python -m training.train_diffusion`.")
            model = copy.deepcopy(lm.model)
            smol.apply_delta(model, delta_dir, merge=True)
            model.eval()
            _EMBEDDED[key] = DiffusionAdapter(model, smol.MASK_ID, shift=True, bidirectional=True, style="hf",
                                              name=name, eos_ids=lm.eos_ids)
            while len(_EMBEDDED) > MAX_EMBEDDED:
                _EMBEDDED.popitem(last=False)
        return _EMBEDDED[key]


def _mask_id_from_config(cfg, default=None):
    for key in ("mask_token_id", "mask_id"):
        v = getattr(cfg, key, None)
        if v is not None:
            return int(v)
    return default


def for_lm(lm, adapter: str = "auto", mask_id: int = -1) -> DiffusionAdapter:
    """Pick the adapter for an engine LM.

    auto: an adapter attached to the LM (lm.diffusion), LLaDA / Dream by model_type, or the
    embedded diffusion model when lm is the embedded SmolLM2."""
    from engine import models
    attached = getattr(lm, "diffusion", None)
    if adapter == "auto" and attached is not None:
        return attached
    mtype = str(getattr(lm.config, "model_type", "")).lower()
    if adapter == "auto":
        if "llada" in mtype:
            adapter = "llada"
        elif "dream" in mtype:
            adapter = "dream"
        elif lm.name == models.EMBEDDED:
            adapter = "embedded"
        else:
            raise MethodError(f"'{lm.name}' is not a masked diffusion LM (model_type '{mtype}'). Use the embedded "
                              "model, LLaDA-8B-Instruct or Dream-v0-Instruct-7B, or choose adapter llada/dream.")
    from engine.diffusion import smol
    from engine.diffusion import variants as V
    variants = {smol.adapter_name(v): v for v in smol.VARIANTS}
    absent = {v.adapter: v.key for v in V.TABLE if v.key not in smol.VARIANTS}
    if adapter in variants or adapter in absent:
        if lm.name != models.EMBEDDED:
            raise MethodError(f"adapter '{adapter}' needs the embedded SmolLM2 model as base.")
        return embedded(lm, variants.get(adapter) or absent[adapter])
    if adapter in ("llada", "dream"):
        mid = mask_id if mask_id >= 0 else _mask_id_from_config(lm.config)
        if mid is None:
            mid = _mask_id_from_config(getattr(lm.model, "generation_config", None) or object())
        if mid is None and adapter == "llada":
            mid = 126336  # LLaDA-8B's [MASK]
        if mid is None:
            raise MethodError(f"No mask token id in {lm.name}'s config: pass mask_id.")
        remote = "llada" in mtype or "dream" in mtype
        return DiffusionAdapter(lm.model, mid, shift=(adapter == "dream"), bidirectional=not remote,
                                style=adapter if remote else "hf", name=f"{lm.name} ({adapter}-style)",
                                eos_ids=lm.eos_ids)
    raise MethodError(f"Unknown adapter '{adapter}': choose auto, {', '.join(variants)}, llada or dream.")
