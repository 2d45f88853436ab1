"""Shared fixtures: the real embedded model (loaded once per test session) and tiny random models."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# AppTest runs pages with no browser (no JavaScript), so a live run's status there is the Streamlit fragment
# (ui/live.py), which AppTest can read. The browser tests' servers run the app's default, the live status
# component (ui/live_feed.py; tests/browser.py: DECODING_LAB_BROWSER_LIVE_FEED=0 runs them on the fragment).
os.environ.setdefault("DECODING_LAB_LIVE_FEED", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def embedded_lm():
    """SmolLM2-135M-Instruct, the app's default model (fp32 on CPU)."""
    from engine import models
    return models.load(models.EMBEDDED, device="cpu")


def make_tiny_lm(seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                 vocab: int | None = None):
    """A tiny random Llama sharing the embedded model's tokenizer (fast unit tests)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from engine import models
    tok = AutoTokenizer.from_pretrained(str(models.prepare_embedded()))
    cfg = LlamaConfig(vocab_size=vocab or len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    return models.LM(model=model, tokenizer=tok, name=f"tiny-random-{seed}", device=torch.device("cpu"),
                     dtype=torch.float32, is_instruct=True, lock=threading.RLock())


def save_tiny(tmp_path_factory, name: str, **kw) -> str:
    """A tiny random Llama saved like any local model (loaded by path: the decoder process, device maps)."""
    lm = make_tiny_lm(**kw)
    d = tmp_path_factory.mktemp(name)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return str(d)


# every family whose state at a step is its committed prefix, with small options (forks, device maps)
PREFIX_FAMILIES = [
    ("ar", {}),
    ("speculative", {"drafter": "prompt_lookup"}),
    ("speculative", {"drafter": "token_recycling", "tree": "2.2"}),
    ("jacobi", {}),
    ("lookahead", {"window_size": 3, "level": 3, "guess_set_size": 3}),
]


@pytest.fixture(scope="session")
def tiny_lm():
    return make_tiny_lm()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def app_test(rel_path: str, timeout: float = 180):
    """An AppTest for a script given relative to the repository root."""
    from streamlit.testing.v1 import AppTest
    return AppTest.from_file(os.path.join(ROOT, rel_path), default_timeout=timeout)


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def one_thread():
    """Tiny-model ops are too small for threads; on a shared CPU two threads spin-wait and run far slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    with torch_threads(1):
        yield


def wait_done(at, key: str, timeout: float = 180):
    """Wait for the runner stored under `key` in an AppTest's session state to finish; return it."""
    r = at.session_state[key]
    end = time.time() + timeout
    while not r.finished and time.time() < end:
        time.sleep(0.1)
    return r


def shown(elements) -> list[str]:
    """The texts of AppTest message elements (st.error, st.warning, ...) as a person reads them: the app
    backslash-escapes markdown in messages that quote user input (viz.safe.md_text)."""
    import html
    import re
    return [html.unescape(re.sub(r"\\(.)", r"\1", e.value)) for e in elements]


# ---- markers: `make test-fast` leaves out the slow ones (the real model, browsers, the Triton interpreter) ----
SLOW_FIXTURES = {"embedded_lm"}


def pytest_collection_modifyitems(config, items):
    """browser: tests/test_browser*.py; interp: the Triton-interpreter module; slow: tests that load the real
    embedded model (or marked slow by hand)."""
    for item in items:
        name = os.path.basename(str(item.fspath))
        if name.startswith("test_browser"):
            item.add_marker(pytest.mark.browser)
        if name == "test_kernels_interp.py":
            item.add_marker(pytest.mark.interp)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
