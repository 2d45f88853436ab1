"""GPU placement from the home page (issue 28): the "Advanced: placement" expander (device, dtype, device_map,
quantization, max_memory) is checked by the engine before anything loads, and the decoder process keys its
models by (name, trust_remote_code, placement): one spelling-independent key per placement, never shared
between two placements."""
import importlib.util
import pickle

import pytest
import torch

from engine import models, remote, run
from engine.errors import ModelLoadError
from tests.conftest import app_test, save_tiny, shown

PROMPT = "a b a b c"
CAN_QUANTIZE = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


# ---- the key: one placement, one key ----------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [
    ({}, {"device": "auto", "dtype": "auto"}),
    ({}, {"device": models.auto_device().type, "dtype": str(models.auto_dtype(models.auto_device()))[6:]}),
    ({"dtype": "float32"}, {"dtype": "fp32"}),
    ({"device_map": "auto", "dtype": "float32"}, {"device_map": "auto", "device": "cpu", "dtype": "fp32"}),
    ({"device_map": "auto", "max_memory": {"cpu": "1GiB"}}, {"device_map": "auto", "max_memory": {" CPU ": 2**30}}),
    ({"device_map": "auto", "max_memory": {"cpu": "1GiB", "disk": "2GB"}},
     {"device_map": "auto", "max_memory": models.parse_max_memory("disk=2000MB; cpu=1024MiB")}),
    ({"device_map": {"model.layers": "cpu", "lm_head": "disk", "model.embed_tokens": "cpu"}},
     {"device_map": {"model.embed_tokens": "cpu", "lm_head": "disk", "model.layers": "cpu"}}),
])
def test_one_placement_spelled_two_ways_is_one_key(a, b):
    ka, kb = models.placement_key(a), models.placement_key(b)
    assert ka == kb and hash(ka) == hash(kb)
    assert pickle.loads(pickle.dumps(ka)) == ka, "the key travels to the decoder process"
    assert models.placement_key(models.placement_from_key(ka)) == ka, "canonical twice is canonical"
    assert remote.Server.model_key("m", False, a) == remote.Server.model_key("m", 0, ka)


@pytest.mark.parametrize("other", [{"device_map": "auto"}, {"device_map": "sequential"}, {"dtype": "bfloat16"},
                                   {"device_map": "auto", "max_memory": {"cpu": "1GiB"}},
                                   {"device_map": {"": "cpu"}}])
def test_different_placements_are_different_keys(other):
    assert models.placement_key(other) != models.placement_key()
    assert remote.Server.model_key("m", False) == ("m", False, models.placement_key()), "an old 2-tuple key"


def test_max_memory_text():
    assert models.parse_max_memory("") is None and models.parse_max_memory("  ") is None
    mm = models.parse_max_memory("cpu=60GiB, disk=1TB")
    assert mm == {"cpu": 60 * 2**30, "disk": 10**12}
    assert models.format_max_memory(mm) == "cpu=60GiB,disk=1TB"
    assert models.parse_max_memory(models.format_max_memory(mm)) == mm
    for bad, words in [("cpu", "cannot read"), ("cpu=lots", "not a size"), ("gpu=1GB", "not a device"),
                       ("cpu=0", "more than 0"), ("cpu=1GiB,cpu=2GiB", "twice"), ("x" * 2000, "too long")]:
        with pytest.raises(ModelLoadError, match=words):
            models.parse_max_memory(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            models.parse_max_memory("0=20GiB,cpu=60GiB")


# ---- the home page: refused before any load -----------------------------------------------------------------------
class _Handle:
    device, dtype = "cpu", "float32"

    def __init__(self, name, placement):
        self.name = name
        self.info = {"params": 1e8, "layers": 2, "vocab": 100,
                     "placement": "device_map auto: everything on cpu" if placement else "cpu"}


@pytest.fixture
def loads(monkeypatch):
    """The home page's loader, faked: it records (name, trust_remote_code, placement)."""
    from ui import common
    asked = []

    def load(name, trust, placement=None):
        asked.append((name, trust, placement))
        return _Handle(name, placement)
    monkeypatch.setattr(common, "_load_model", load)
    return asked


def _no_traceback(at):
    assert not at.exception
    assert not any("Traceback" in e.value or "error id" in e.value for e in at.error)


@pytest.mark.skipif(CAN_QUANTIZE, reason="this machine can quantize")
def test_4bit_on_this_machine_is_refused_before_any_load(loads):
    at = app_test("app.py").run()
    assert loads == [(models.EMBEDDED, False, None)]
    at.text_input(key="home_model_input").input("my-org/big-model")
    at.selectbox(key="home_quantization").select("4bit")
    at.button(key="home_load").click().run()
    _no_traceback(at)
    with pytest.raises(ModelLoadError) as engine_says:
        models.check_placement(quantization="4bit")
    assert any(str(engine_says.value) in m for m in shown(at.error)), shown(at.error)
    assert all(name == models.EMBEDDED and p is None for name, _, p in loads), "no load started"
    assert "lab_model_name" not in at.session_state and at.success, "the current model (the default) stays"
    assert "model" not in at.query_params


@pytest.mark.slow
@pytest.mark.parametrize("device_map,text,words", [
    ("auto", "cpu=lots", "not a size"),
    ("auto", "cpu 8GiB", "cannot read"),
    ("auto", "gpu=1GiB", "not a device"),
    ("none", "cpu=8GiB", "needs a device_map"),
])
def test_a_bad_max_memory_is_refused_with_a_message(loads, device_map, text, words):
    at = app_test("app.py").run()
    at.selectbox(key="home_device_map").select(device_map)
    at.text_input(key="home_max_memory").input(text)
    at.button(key="home_load").click().run()
    _no_traceback(at)
    assert any("Could not load the model" in m and words in m for m in shown(at.error)), shown(at.error)
    assert len(loads) == 2 and all(p is None for _, _, p in loads), "only the current model, no new load"


def test_a_custom_device_map_that_is_not_json_is_refused(loads):
    at = app_test("app.py").run()
    at.selectbox(key="home_device_map").select("custom (JSON)").run()
    at.text_area(key="home_device_map_json").input("{model.layers: cpu}")
    at.button(key="home_load").click().run()
    _no_traceback(at)
    assert any("not valid JSON" in m for m in shown(at.error)), shown(at.error)
    assert all(p is None for _, _, p in loads)


def test_the_chosen_placement_reaches_the_loader_and_the_status(loads):
    at = app_test("app.py").run()
    at.selectbox(key="home_device_map").select("auto")
    at.selectbox(key="home_dtype").select("float32")
    at.text_input(key="home_max_memory").input("cpu=8GiB")
    at.button(key="home_load").click().run()
    _no_traceback(at)
    want = models.canonical_placement(device_map="auto", dtype="float32", max_memory={"cpu": "8GiB"})
    assert loads[-1] == (models.EMBEDDED, False, want)
    assert "on **device_map auto: everything on cpu** (float32)" in shown(at.success)[0], shown(at.success)
    assert "model" not in at.query_params, "the placement is not in the link"
    at.run()                                          # a rerun keeps the session's placement
    assert loads[-1][2] == want and at.text_input(key="home_max_memory").value == "cpu=8GiB"
    at.selectbox(key="home_device_map").select("none")
    at.text_input(key="home_max_memory").input("")
    at.selectbox(key="home_dtype").select("auto")
    at.button(key="home_load").click().run()
    assert loads[-1] == (models.EMBEDDED, False, None), "back to the default placement"


# ---- for real: the decoder process loads the placement it was given ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory, "tiny-home-placement", seed=5)


@pytest.mark.slow
def test_device_map_auto_from_the_page_loads_that_way_in_the_decoder(tiny_dir):
    from ui import common
    at = app_test("app.py")
    at.session_state["lab_model_name"] = tiny_dir          # (not the embedded model first: keep it fast)
    at.run()
    _no_traceback(at)
    at.selectbox(key="home_device_map").select("auto")
    at.button(key="home_load").click().run()
    _no_traceback(at)
    msg = shown(at.success)[0]
    where = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"device_map auto: everything on {where}" in msg, msg

    dec = remote.decoder()
    placed = dec.load(tiny_dir, placement={"device_map": "auto"})
    plain = dec.load(tiny_dir)
    spelled = dec.load(tiny_dir, placement={"device": "cpu", "dtype": "fp32"}) if not torch.cuda.is_available() \
        else dec.load(tiny_dir, placement={"device": "auto", "dtype": "auto"})
    assert placed.key != plain.key and spelled.key == plain.key
    page_keys = {h.key for h in common._handles.values() if h.name == tiny_dir}
    assert placed.key in page_keys and plain.key in page_keys, "the page's sessions share these keys"
    assert placed.info["placement"].startswith("device_map auto") and plain.info["placement"] == plain.device
    a = dec.start(placed, "ar", PROMPT, max_new_tokens=6)
    b = dec.start(plain, "ar", PROMPT, max_new_tokens=6)
    assert a.wait(60) and b.wait(60)
    assert a.trace.final_ids == b.trace.final_ids and len(a.trace.final_ids) == 6
    with pytest.raises(ModelLoadError, match="8bit or 4bit"):
        dec.load(tiny_dir, placement={"quantization": "3bit"})


@pytest.mark.slow
def test_the_status_says_where_the_layers_are(tiny_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
          "model.norm": "cpu", "lm_head": "cpu"}
    lm = models.load(tiny_dir, device_map=dm)
    assert models.placement_summary(lm) == "device_map custom: 1 layer on cpu, 1 on disk"
    assert lm.placement == models.canonical_placement(device_map=dm)
    whole = models.load(tiny_dir, device="cpu")
    assert models.placement_summary(whole) == "cpu"
    assert run.run(lm, "ar", PROMPT, max_new_tokens=4).final_ids == run.run(whole, "ar", PROMPT,
                                                                            max_new_tokens=4).final_ids
