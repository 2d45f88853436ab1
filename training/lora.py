"""LoRA deltas: exact weight interpolation of two deltas as one LoRA of twice the rank."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from training.common import log


def interpolate_deltas(src0, src1, a: float, out) -> Path:
    """Weight interpolation (WiSE-FT style) of two LoRA deltas trained from the same one: the merged
    update (1 - a) B0 A0 + a B1 A1 written exactly as one LoRA of twice the rank,
    [B0, B1] @ [(1 - a) A0; a A1] (same alpha / r scale), and the mask row interpolated."""
    from safetensors.torch import load_file

    from engine.diffusion.smol import write_delta
    src0, src1, out = Path(src0), Path(src1), Path(out)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"interpolation weight a={a} must be in [0, 1]")
    m0, m1 = (json.loads((d / "config.json").read_text()) for d in (src0, src1))
    if (m0["lora_r"], m0["lora_alpha"]) != (m1["lora_r"], m1["lora_alpha"]):
        raise ValueError("the two deltas need the same LoRA rank and alpha")
    d0, d1 = load_file(str(src0 / "delta.safetensors")), load_file(str(src1 / "delta.safetensors"))
    if set(d0) != set(d1):
        raise ValueError("the two deltas adapt different layers")
    state = {}
    for k in d0:
        x0, x1 = d0[k].float(), d1[k].float()
        if k.endswith("lora_A"):
            state[k] = torch.cat([(1 - a) * x0, a * x1], 0)
        elif k.endswith("lora_B"):
            state[k] = torch.cat([x0, x1], 1)
        else:  # the mask embedding row
            state[k] = (1 - a) * x0 + a * x1
    write_delta(state, out, {**m1, "lora_r": 2 * m0["lora_r"], "lora_alpha": 2 * m0["lora_alpha"],
                             "interpolation": {"from": str(src0), "to": str(src1), "a": a}})
    return out


def cmd_interpolate(args):
    out = interpolate_deltas(args.src0, args.src1, args.a, args.out)
    log({"stage": "interpolate", "from": args.src0, "to": args.src1, "a": args.a, "out": str(out)})
