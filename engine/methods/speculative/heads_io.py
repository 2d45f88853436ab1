"""Reading draft-head checkpoints for heads.py: the target's dimensions, the weight files of a local directory or
file (safetensors, or torch.load(weights_only=True): a pickle that needs code is refused), key and target checks
that name every mismatch, and the small cache of loaded heads (keyed by path, file stamps, device, dtype and the
target's dimensions)."""
from __future__ import annotations

import json
import os
import threading

import torch
from torch import nn

from engine.errors import MethodError, shorten

WEIGHT_FILES = ("model.safetensors", "medusa_lm_head.safetensors", "pytorch_model.bin", "medusa_lm_head.pt",
                "model.pt", "model.bin")
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 2


# ---- the target's dimensions ----------------------------------------------------------------------

def target_dims(lm) -> tuple[int, int]:
    """(hidden size, vocabulary rows of the LM head) of a Llama-style target."""
    from engine.methods.speculative.draft_models import layers_of
    layers_of(lm)    # Llama-style: model.embed_tokens, layers, norm, lm_head
    w = lm.model.get_output_embeddings().weight
    return int(w.shape[1]), int(w.shape[0])


def head_config(lm, layers: int = 1):
    """A LlamaConfig of the target's dimensions with `layers` decoder layers (random EAGLE heads)."""
    from transformers import LlamaConfig
    d = lm.model.config.to_dict()
    d["num_hidden_layers"] = layers
    if isinstance(d.get("layer_types"), list):
        d["layer_types"] = d["layer_types"][:layers]
    for k in ("architectures", "model_type", "auto_map"):
        d.pop(k, None)
    return LlamaConfig.from_dict(d)


# ---- reading checkpoints ------------------------------------------------------------------------

def _files(path: str) -> tuple[list[str], dict | None]:
    """The weight files and the parsed config.json (or None) of a checkpoint path."""
    p = os.path.expanduser(path)
    if not os.path.exists(p):
        raise MethodError(f"No draft-head checkpoint at {shorten(path)} (give a local directory or file).")
    if os.path.isfile(p):
        return [p], None
    config = None
    cj = os.path.join(p, "config.json")
    if os.path.isfile(cj):
        try:
            with open(cj, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise MethodError(f"Cannot read {shorten(cj)}: {str(e)[:200]}") from None
        if not isinstance(config, dict):
            raise MethodError(f"{shorten(cj)} is not a JSON object.")
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(p, name)):
            return [os.path.join(p, name)], config
    names = sorted(os.listdir(p))
    st = [os.path.join(p, n) for n in names if n.endswith(".safetensors")]
    if st:
        return st, config       # shards
    pt = [os.path.join(p, n) for n in names if n.endswith((".pt", ".bin", ".pth"))]
    if len(pt) == 1:
        return pt, config
    if pt:
        raise MethodError(f"{shorten(path)} holds several .pt / .bin files ({', '.join(os.path.basename(x) for x in pt[:4])}); "
                          "keep one, or give the file itself.")
    raise MethodError(f"{shorten(path)} holds no weights (*.safetensors, *.pt or *.bin).")


def read_state(path: str) -> tuple[dict, dict | None]:
    """(state dict of tensors on the CPU, config.json or None). Pickles are read with weights_only=True."""
    files, config = _files(path)
    sd: dict = {}
    for f in files:
        if f.endswith(".safetensors"):
            from safetensors.torch import load_file
            try:
                part = load_file(f, device="cpu")
            except Exception as e:  # not a safetensors file, truncated
                raise MethodError(f"Cannot read {shorten(f)} as safetensors: {str(e)[:200]}") from None
        else:
            try:
                part = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # UnpicklingError for a pickle that needs code; a corrupt file
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise MethodError(f"Refused {shorten(f)}: it is not a plain file of tensors (read with "
                                  f"torch.load(weights_only=True); a checkpoint that needs code to load is never "
                                  f"unpickled). {first}") from None
        if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in part.items()):
            raise MethodError(f"{shorten(f)} is not a state dict (a mapping of names to tensors).")
        sd.update(part)
    if not sd:
        raise MethodError(f"{shorten(path)} holds no tensors.")
    return sd, config


def _keys_match(sd: dict, module: nn.Module, what: str, optional: set = frozenset()) -> None:
    want = module.state_dict()
    missing = [k for k in want if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:6])}" + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:6])}"
                         + (f" (+{len(unexpected) - 6} more)" if len(unexpected) > 6 else ""))
        raise MethodError(f"{what} does not have the expected layout: {'; '.join(parts)}.")
    for k, v in want.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise MethodError(f"{what}: {k} has shape {list(sd[k].shape)}, expected {list(v.shape)} for this model.")


def check_target(config: dict | None, lm, where: str) -> None:
    """The lab's heads record the target they were trained for (target_model, target_num_hidden_layers):
    a head trained on another model's features is refused even when its shapes happen to fit."""
    want = (config or {}).get("target_num_hidden_layers")
    if want is None:
        return
    have = getattr(lm.model.config, "num_hidden_layers", None)
    if not isinstance(want, int) or want != have:
        raise MethodError(f"{where} were trained on the features of a {shorten(want)}-layer model "
                          f"({shorten((config or {}).get('target_model', 'unknown'))}); this model has {have} layers.")


def _cached(kind: str, path: str, lm, build):
    p = os.path.realpath(os.path.expanduser(path))
    try:
        st = os.stat(p)
        stamp = (st.st_mtime_ns, st.st_size) if os.path.isfile(p) else \
            tuple((n, os.stat(os.path.join(p, n)).st_mtime_ns) for n in sorted(os.listdir(p)))
    except OSError:
        stamp = None
    key = (kind, p, stamp, str(lm.device), str(lm.dtype), target_dims(lm))
    with _CACHE_LOCK:
        if key not in _CACHE:
            mod = build()
            while len(_CACHE) >= _CACHE_MAX:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = mod
        return _CACHE[key]
