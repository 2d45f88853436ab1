"""Where a big model goes and how it is stored: accelerate device maps, bitsandbytes quantization, memory limits,
the device and dtype a model is loaded on, and a placement as a canonical, hashable key (the decoder process keys its models by it). Every check here runs
before anything is read; engine.models.load uses them and re-exports every name."""
from __future__ import annotations

import importlib.util
import json
import re
from typing import TYPE_CHECKING

import torch

from engine.errors import ModelLoadError, shorten
if TYPE_CHECKING:
    from engine.models import LM


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

def auto_device(device=None) -> torch.device:
    """cuda when available, else cpu; or the device asked for, if this machine has it (ModelLoadError)."""
    if device in (None, "auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"Unknown device {shorten(device)}: use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("device cuda was asked for, but this machine has no CUDA GPU (use cpu or auto).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {dev} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError("device mps was asked for, but it is not available here (use cpu or auto).")
    elif dev.type != "cpu":
        raise ModelLoadError(f"device {dev.type} is not supported: use auto, cpu, cuda or cuda:N.")
    return dev


def auto_dtype(device: torch.device, dtype=None) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere; or float32 / bfloat16 / float16 (ModelLoadError otherwise)."""
    if dtype in (None, "auto", ""):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ModelLoadError(f"dtype {shorten(dtype)} is not supported: use auto, float32, bfloat16 or float16.")
        return DTYPES[dtype.lower()]
    if dtype in DTYPES.values():
        return dtype
    raise ModelLoadError(f"dtype {shorten(dtype)} is not supported: use auto, float32, bfloat16 or float16.")


PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")   # accelerate's device_map strategies
QUANTIZATIONS = ("8bit", "4bit")                                     # bitsandbytes weights


def check_placement(device_map=None, quantization=None, max_memory=None) -> None:
    """Validate the big-model options before anything is read (ModelLoadError).
    device_map: None (the whole model on one device), one of PLACEMENTS, or {module name: device} with devices
    "cpu", "disk" (offloaded to the cache folder, loaded layer by layer), a GPU index or "cuda:N";
    quantization: None, "8bit" or "4bit" (bitsandbytes; a CUDA GPU); max_memory: {device: "10GiB", ...}."""
    if device_map is not None:
        if isinstance(device_map, str):
            if device_map not in PLACEMENTS:
                raise ModelLoadError(f"device_map {shorten(device_map)} is not known: use "
                                     f"{', '.join(PLACEMENTS)}, or a mapping of module names to devices.")
        elif isinstance(device_map, dict):
            if not device_map or len(device_map) > 10_000:
                raise ModelLoadError("device_map must map between 1 and 10,000 module names to devices.")
            for k, v in device_map.items():
                if not isinstance(k, str) or len(k) > 200:
                    raise ModelLoadError(f"device_map keys are module names, got {shorten(k)}.")
                if isinstance(v, bool) or not (v in ("cpu", "disk") or (isinstance(v, int) and v >= 0)
                                               or (isinstance(v, str) and v.startswith("cuda"))):
                    raise ModelLoadError(f"device_map[{shorten(k)}] = {shorten(v)}: use cpu, disk, a GPU index "
                                         "or cuda:N.")
                if (isinstance(v, int) or (isinstance(v, str) and v.startswith("cuda"))):
                    auto_device(f"cuda:{v}" if isinstance(v, int) else v)   # the GPU exists (else a message)
        else:
            raise ModelLoadError(f"device_map must be text or a mapping, got {type(device_map).__name__}.")
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory or device_map is None:
            raise ModelLoadError("max_memory is a mapping {device: size} and needs a device_map.")
        _canonical_max_memory(max_memory)   # devices that exist here, sizes that are sizes
    if quantization is not None:
        if quantization not in QUANTIZATIONS:
            raise ModelLoadError(f"quantization {shorten(quantization)} is not known: use 8bit or 4bit.")
        if not torch.cuda.is_available():
            raise ModelLoadError(f"quantization={quantization} (bitsandbytes) needs a CUDA GPU; this machine has "
                                 "none. Load the model unquantized, in bfloat16 or float32.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"quantization={quantization} needs the bitsandbytes package: "
                                 "pip install bitsandbytes (then restart the app).")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MAX_MEMORY_HELP = ("device=size pairs separated by commas, e.g. 0=20GiB,cpu=60GiB (devices: a GPU index or cuda:N, "
                   "cpu, disk; sizes in B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")


def _memory_device(k):
    """A max_memory key -> accelerate's spelling: a GPU index (int), "cpu", "disk" or "mps" (ModelLoadError)."""
    if isinstance(k, str):
        t = k.strip().lower()
        if t in ("cpu", "disk", "mps"):
            return t
        if t.isdigit():
            k = int(t)
        elif t == "cuda" or t.startswith("cuda:"):
            k = auto_device(t).index or 0
        else:
            raise ModelLoadError(f"max_memory: {shorten(k)} is not a device: use a GPU index (0, 1 ...), cuda:N, "
                                 "cpu or disk.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ModelLoadError(f"max_memory: {shorten(k)} is not a device: use a GPU index (0, 1 ...), cuda:N, cpu "
                             "or disk.")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"max_memory names GPU {k}, but this machine has no CUDA GPU: give cpu (and disk) "
                             "sizes only.")
    if k >= torch.cuda.device_count():
        raise ModelLoadError(f"max_memory names GPU {k}, which does not exist: this machine has "
                             f"{torch.cuda.device_count()} GPU(s).")
    return k


def _memory_size(k, v) -> int:
    """A max_memory size -> bytes (an int > 0; ModelLoadError)."""
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and (m := _SIZE.match(v)):
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    else:
        raise ModelLoadError(f"max_memory[{shorten(k)}] = {shorten(v)} is not a size: write e.g. 20GiB, 500MB or a "
                             "number of bytes.")
    if n <= 0:
        raise ModelLoadError(f"max_memory[{shorten(k)}] = {shorten(v)}: the size must be more than 0.")
    return n


def _canonical_max_memory(max_memory: dict) -> dict:
    """{device: size} with accelerate's device keys and sizes in bytes, in one order (GPUs first)."""
    out = {}
    for k, v in max_memory.items():
        dev = _memory_device(k)
        if dev in out:
            raise ModelLoadError(f"max_memory names {shorten(k)} twice.")
        out[dev] = _memory_size(k, v)
    return dict(sorted(out.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0]))))


def parse_max_memory(text: str | None) -> dict | None:
    """"0=20GiB,cpu=60GiB" -> {0: 21474836480, "cpu": 64424509440}; empty text -> None (ModelLoadError if not
    readable, or a device this machine does not have)."""
    if text is None or not str(text).strip():
        return None
    text = str(text)
    if len(text) > 1000:
        raise ModelLoadError("max_memory: the text is too long; write " + MAX_MEMORY_HELP + ".")
    pairs = {}
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        dev, eq, size = part.partition("=")
        if not eq or not dev.strip() or not size.strip():
            raise ModelLoadError(f"max_memory: cannot read {shorten(part)}; write " + MAX_MEMORY_HELP + ".")
        if dev.strip() in pairs:
            raise ModelLoadError(f"max_memory names {shorten(dev.strip())} twice.")
        pairs[dev.strip()] = size.strip()
    return _canonical_max_memory(pairs)


def format_max_memory(max_memory: dict | None) -> str:
    """The inverse of parse_max_memory, in the largest binary unit that divides each size."""
    if not max_memory:
        return ""
    out = []
    for k, n in max_memory.items():
        unit = max((u for u in ("B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB") if n % _UNITS[u.lower()] == 0),
                   key=lambda u: _UNITS[u.lower()])
        out.append(f"{k}={n // _UNITS[unit.lower()]}{unit}")
    return ",".join(out)


def parse_device_map(text: str | None):
    """A device_map typed as text: a strategy (auto, balanced ...) or a JSON object {module: device}; empty -> None."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    if text in PLACEMENTS or text == "none":
        return None if text == "none" else text
    if len(text) > 200_000:
        raise ModelLoadError("device_map: the text is too long.")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ModelLoadError(f"device_map is not valid JSON ({e.msg} at character {e.pos}): write an object such as "
                             '{"model.embed_tokens": 0, "model.layers": "cpu", "lm_head": 0}.') from None
    if not isinstance(value, dict):
        raise ModelLoadError('device_map must be a JSON object such as {"model.layers": "cpu"}, or one of '
                             f"{', '.join(PLACEMENTS)}.")
    check_placement(value)
    return value


def _map_device(v):
    """A device_map value in one spelling: a GPU index (int), "cpu" or "disk"."""
    if isinstance(v, str) and v.startswith("cuda"):
        return auto_device(v).index or 0
    return v


def canonical_placement(device=None, dtype=None, device_map=None, quantization=None, max_memory=None) -> dict:
    """Where and how load() places a model, checked and spelled one way (ModelLoadError before anything is read).
    Two spellings of one placement give the same dict: device auto -> the device it means here, cuda -> cuda:0;
    dtype auto / fp32 -> the dtype's name; quantization without a device_map -> device_map auto (as load() does);
    with a device_map the device only chose the dtype, so it is left out; GPU devices as indices; max_memory
    sizes in bytes. Every key is always there (values None when unset)."""
    check_placement(device_map, quantization, max_memory)
    dev = auto_device(device)
    dt = auto_dtype(dev, dtype)
    if quantization is not None and device_map is None:
        device_map = "auto"
    if isinstance(device_map, dict):
        device_map = {k: _map_device(v) for k, v in sorted(device_map.items())}
    return {"device": None if device_map is not None else (f"cuda:{dev.index or 0}" if dev.type == "cuda" else str(dev)),
            "dtype": str(dt).replace("torch.", ""), "device_map": device_map, "quantization": quantization,
            "max_memory": _canonical_max_memory(max_memory) if max_memory is not None else None}


def placement_key(placement: dict | None = None) -> tuple:
    """A placement (load()'s keyword arguments, any spelling) as a hashable, picklable key: equal exactly when
    the canonical placements are equal."""
    p = canonical_placement(**(placement or {}))
    return tuple((k, tuple(v.items()) if isinstance(v, dict) else v) for k, v in sorted(p.items()))


def placement_from_key(key: tuple) -> dict:
    """placement_key's inverse: load()'s keyword arguments."""
    return {k: dict(v) if isinstance(v, tuple) else v for k, v in key}


def placement_summary(lm: LM) -> str:
    """Where the model is, in words: "cpu", "cuda:0", or "device_map auto: 30 layers on cuda:0, 2 on cpu"
    (with "4bit (bitsandbytes)" in front when quantized)."""
    p = lm.placement or {}
    dm = p.get("device_map")
    if dm is None:
        return str(lm.device)
    name = dm if isinstance(dm, str) else "custom"
    placed = getattr(lm.model, "hf_device_map", None) or {}
    n_layers = getattr(lm.model.config, "num_hidden_layers", None)
    layers = None
    if n_layers:
        layers = next((n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.ModuleList)
                       and len(m) == n_layers), None)
    word = lambda d: f"cuda:{d}" if isinstance(d, int) else str(d)   # noqa: E731
    if not placed or len(set(placed.values())) == 1:
        where = word(next(iter(placed.values()))) if placed else str(lm.device)
        text = f"device_map {name}: everything on {where}"
    elif layers is None:
        text = f"device_map {name}: " + ", ".join(sorted({word(d) for d in placed.values()}))
    else:
        counts: dict[str, int] = {}
        for i in range(n_layers):
            module = f"{layers}.{i}"
            owner = max((k for k in placed if k == "" or module == k or module.startswith(k + ".")), key=len,
                        default=None)
            d = word(placed[owner]) if owner is not None else "?"
            counts[d] = counts.get(d, 0) + 1
        parts = [f"{n} layer{'s' if n != 1 else ''} on {d}" if i == 0 else f"{n} on {d}"
                 for i, (d, n) in enumerate(counts.items())]
        text = f"device_map {name}: " + ", ".join(parts)
    if p.get("quantization"):
        text = f"{p['quantization']} (bitsandbytes), {text}"
    return text
