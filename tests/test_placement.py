"""Big-model loading on CPU: a model split by a device_map (CPU + disk offload through accelerate) decodes
exactly as the same model on one device, for every family; placement and quantization options are checked
before anything is read, with messages that say what to do."""
import pytest
import torch

from engine import models, run
from engine.errors import ModelLoadError
from tests.conftest import PREFIX_FAMILIES, save_tiny

PROMPT = "a b a b a b c"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory, "tiny-split", seed=11, layers=4)


@pytest.fixture(scope="module")
def whole(tiny_dir):
    return models.load(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def split(tiny_dir, tmp_path_factory):
    import os
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
          "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    # the offload cache for this module only: left set, every later make_tiny_lm (models.prepare_embedded)
    # would dequantise the embedded model again into the empty cache (a minute on this machine)
    with pytest.MonkeyPatch.context() as mp:
        if models.CACHE_ENV not in os.environ:
            mp.setenv(models.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield models.load(tiny_dir, device="cpu", device_map=dm)


def test_the_split_model_is_really_split(split):
    placed = split.model.hf_device_map
    assert placed["model.layers.3"] == "disk" and placed["model.layers.0"] == "cpu"
    assert split.model.model.layers[3].self_attn.q_proj.weight.device.type == "meta"   # loaded per forward
    assert split.device == torch.device("cpu")


def test_same_logits(whole, split):
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.inference_mode():
        a, b = whole.model(ids).logits, split.model(ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method,options", PREFIX_FAMILIES + [
    ("kv", {"policy": "h2o", "budget": 8}),
    ("kv", {"policy": "streaming_llm", "budget": 8}),
])
def test_every_family_decodes_the_same_split(whole, split, method, options):
    a = run.run(whole, method, PROMPT, max_new_tokens=12, options=options)
    b = run.run(split, method, PROMPT, max_new_tokens=12, options=options)
    assert b.final_ids == a.final_ids and len(b.final_ids) == 12


@pytest.mark.slow
def test_auto_placement_on_a_cpu_machine(tiny_dir, whole):
    lm = models.load(tiny_dir, device_map="auto")
    assert lm.device.type == "cpu"
    assert run.run(lm, "ar", PROMPT, max_new_tokens=6).final_ids == run.run(whole, "ar", PROMPT,
                                                                             max_new_tokens=6).final_ids


@pytest.mark.parametrize("kw,words", [
    ({"device_map": "everywhere"}, "not known"),
    ({"device_map": {}}, "between 1"),
    ({"device_map": {"model": "gpu7"}}, "cpu, disk"),
    ({"device_map": {"model": True}}, "cpu, disk"),
    ({"device_map": {"model": 0}}, "no CUDA" if not torch.cuda.is_available() else "exist"),
    ({"device_map": 3}, "text or a mapping"),
    ({"max_memory": {"cpu": "1GiB"}}, "needs a device_map"),
    ({"quantization": "3bit"}, "8bit or 4bit"),
    ({"quantization": "4bit"}, "CUDA" if not torch.cuda.is_available() else "bitsandbytes"),
])
def test_placement_options_are_checked_before_anything_is_read(kw, words):
    import importlib.util
    if kw.get("quantization") == "4bit" and torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can quantize")
    # the model does not exist: the placement error comes first, before any lookup
    with pytest.raises(ModelLoadError, match=words):
        models.load("/nonexistent/model/dir", **kw)


@pytest.mark.slow
def test_two_threads_load_at_once(tiny_dir, whole):
    """from_pretrained is not thread-safe; load() serialises it (two threads got meta tensors before)."""
    import threading
    out, errors = [], []

    def one():
        try:
            out.append(models.load(tiny_dir, device="cpu"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 3
    ids = torch.tensor([[1, 5, 9]])
    with torch.inference_mode():
        for lm in out:
            torch.testing.assert_close(lm.model(ids).logits, whole.model(ids).logits)
