"""The embedded diffusion LM: SmolLM2-135M-Instruct turned into a masked diffusion LM.

Dream's recipe on a small model: a mask token (the unused special token `<empty_output>`,
id 16, whose embedding row is trained), logits shifted by one (position i is predicted from
the hidden state at i-1, as the AR model was trained), bidirectional attention (a 4D
all-True mask), and LoRA adapters on every linear layer of the transformer. Only the delta
ships (models/smol-diffusion/delta.safetensors): LoRA A/B matrices and the mask row.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

from engine.diffusion import variants

MASK_ID = 16  # '<empty_output>' in the SmolLM2 tokenizer: never produced by the chat template
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DELTA_DIR = variants.BY_KEY["default"].path
# Every variant (the default, fast, and the four that no longer ship) is described once, in
# engine.diffusion.variants.TABLE. VARIANTS: those whose files this checkout has (the shipped two, and any
# rebuilt with training/rebuild_variant.py), {key: (directory, label)}; register_checkpoint adds to it.
DELTA_DIR_FAST = variants.BY_KEY["fast"].path
VARIANTS = {v.key: (v.path, v.label) for v in variants.TABLE if v.present()}


def register_checkpoint(delta_dir, variant: str = "checkpoint") -> str:
    """Make a delta directory (e.g. a training checkpoint) loadable as embedded variant `variant`, so
    the benchmarks can evaluate it before it ships (`--delta DIR`). Returns the variant name."""
    delta_dir = Path(delta_dir)
    if not (delta_dir / "delta.safetensors").exists():
        raise FileNotFoundError(f"no delta.safetensors in {delta_dir}")
    VARIANTS[variant] = (delta_dir, f"{variant} ({delta_dir})")
    return variant


def adapter_name(variant: str) -> str:
    """The diffusion method's `adapter` option for an embedded variant: embedded, embedded-cf, ..."""
    return "embedded" if variant == "default" else f"embedded-{variant}"


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) B A x, with W frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.r, self.scale = r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        lin = copy.deepcopy(self.base)
        with torch.no_grad():
            lin.weight += (self.lora_B @ self.lora_A * self.scale).to(lin.weight.dtype)
        return lin


def add_lora(model: nn.Module, r: int = 16, alpha: float = 32.0) -> list[nn.Parameter]:
    """Wrap the target linears of every decoder layer; return the new trainable parameters."""
    params = []
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                if hasattr(parent, name):
                    wrapped = LoRALinear(getattr(parent, name), r, alpha)
                    setattr(parent, name, wrapped)
                    params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def merge_lora(model: nn.Module) -> None:
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                mod = getattr(parent, name, None)
                if isinstance(mod, LoRALinear):
                    setattr(parent, name, mod.merged())


def bidirectional_mask(batch: int, length: int, device) -> torch.Tensor:
    """A 4D boolean mask that lets every position attend to every other one.

    transformers passes a 4D mask to the attention as it is (masking_utils), so the causal
    mask is not applied."""
    return torch.ones(batch, 1, length, length, dtype=torch.bool, device=device)


def diffusion_logits(model: nn.Module, ids: torch.Tensor, bidirectional: bool = True) -> torch.Tensor:
    """Logits over the whole sequence, shifted right by one (Dream): out[:, i] predicts ids[:, i]."""
    mask = bidirectional_mask(ids.shape[0], ids.shape[1], ids.device) if bidirectional else None
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def write_delta(state: dict[str, torch.Tensor], out_dir: Path, meta: dict) -> Path:
    """Write a delta (LoRA factors + "mask_embedding", stored fp16) and its config; the tensor file is
    replaced atomically, so a reader never sees half a file."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "delta.safetensors.tmp"
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(out_dir / "delta.safetensors")
    (out_dir / "config.json").write_text(json.dumps(meta, indent=1))
    return out_dir / "delta.safetensors"


def save_delta(model: nn.Module, out_dir: Path, meta: dict) -> Path:
    state = lora_state(model)
    state["mask_embedding"] = model.get_input_embeddings().weight[MASK_ID].detach().clone()
    return write_delta(state, out_dir, meta)


def apply_delta(model: nn.Module, delta_dir: Path = DELTA_DIR, merge: bool = True) -> dict:
    """Load the shipped delta into `model` (a copy of the base SmolLM2); return its config."""
    from safetensors.torch import load_file
    meta = json.loads((Path(delta_dir) / "config.json").read_text())
    state = load_file(str(Path(delta_dir) / "delta.safetensors"))
    add_lora(model, meta["lora_r"], meta["lora_alpha"])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            if k == "mask_embedding":
                model.get_input_embeddings().weight[MASK_ID] = v.to(model.get_input_embeddings().weight.dtype)
            else:
                params[k].copy_(v.to(params[k].dtype))
    if merge:
        merge_lora(model)
    return meta
