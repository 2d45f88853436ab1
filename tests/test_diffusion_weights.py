"""The shipped embedded diffusion deltas: default (smol-diffusion), certainty-forced (smol-diffusion-cf),
calibrated (smol-diffusion-cal), calibrated retrained on sampled answers (smol-diffusion-div), div trained
against its own loops (smol-diffusion-par), and par with a heavier confident-error penalty (smol-diffusion-fast)."""
import pytest
import torch

from engine import run
from engine.diffusion import adapters, smol
from engine.methods import MethodError
from tests.conftest import make_tiny_lm


def test_both_deltas_ship_and_are_small():
    for variant, (d, _) in smol.VARIANTS.items():
        f = d / "delta.safetensors"
        assert f.exists(), variant
        assert f.stat().st_size < 12 * 2 ** 20  # LoRA r=16 + mask row, fp16
    total = sum((d / "delta.safetensors").stat().st_size for d, _ in smol.VARIANTS.values())
    assert total <= 60 * 2 ** 20  # the budget for shipped weights


def test_certainty_forced_delta_is_more_confident(embedded_lm, one_thread):
    base = adapters.for_lm(embedded_lm, "embedded")
    assert base is adapters.for_lm(embedded_lm)  # auto = the default delta (the cache keeps the 2 newest)
    cf = adapters.for_lm(embedded_lm, "embedded-cf")
    cal = adapters.for_lm(embedded_lm, "embedded-cal")
    div = adapters.for_lm(embedded_lm, "embedded-div")
    par = adapters.for_lm(embedded_lm, "embedded-par")
    fast = adapters.for_lm(embedded_lm, "embedded-fast")
    assert cf is not base and cf.name != base.name and "cf" in cf.name
    assert "sd" not in smol.VARIANTS  # the looping self-distilled delta no longer ships
    prompt = embedded_lm.encode("Write a short story about a fox in the snow.")[0]
    x = torch.cat([prompt, torch.full((16,), smol.MASK_ID)])[None]
    conf = {}
    for name, ad in (("base", base), ("cf", cf), ("cal", cal), ("div", div), ("par", par), ("fast", fast)):
        with torch.no_grad():
            logits = ad.logits(x)[0, prompt.shape[0]:].float()
        logits[:, smol.MASK_ID] = -1e4
        conf[name] = logits.softmax(-1).max(-1).values
    # the point of certainty forcing: a fully masked block is predicted with more confidence
    assert conf["cf"].mean() > conf["base"].mean() + 0.05, conf
    assert conf["cal"].mean() > conf["base"].mean() + 0.05, conf
    assert conf["div"].mean() > conf["base"].mean() + 0.05, conf
    assert cal is not cf and "-cal" in cal.name
    assert div is not cal and "-div" in div.name
    assert conf["par"].mean() > conf["base"].mean() + 0.05, conf
    assert par is not div and "-par" in par.name
    # fast is par taught to be less sure where it is wrong: still more confident than the default
    assert conf["fast"].mean() > conf["base"].mean() + 0.05, conf
    assert fast is not par and "-fast" in fast.name


def test_weights_option_reaches_the_trace(embedded_lm, one_thread):
    tr = run.run(embedded_lm, "diffusion", "Name a colour.", max_new_tokens=8,
                 options={"rule": "threshold", "gen_length": 8, "block_length": 8, "adapter": "embedded-cf"})
    assert tr.extra["summary"]["model"].startswith("smol-diffusion-cf")
    assert tr.meta["params"]["adapter"] == "embedded-cf"


def test_bad_weights_are_clear_errors(embedded_lm):
    with pytest.raises(MethodError, match="variant"):
        adapters.embedded(embedded_lm, "nope")
    with pytest.raises(MethodError, match="embedded-cf"):
        adapters.for_lm(make_tiny_lm(), "embedded-cf")
    with pytest.raises(MethodError, match="embedded-cf"):  # the error lists the choices
        adapters.for_lm(embedded_lm, "whatever")


def test_a_checkpoint_directory_loads_as_a_variant(embedded_lm, monkeypatch, tmp_path):
    """benchmarks --delta DIR: a training checkpoint is evaluated through the same adapter path."""
    monkeypatch.setattr(smol, "VARIANTS", dict(smol.VARIANTS))
    name = smol.register_checkpoint(smol.DELTA_DIR_CF, "test-ckpt")
    ad = adapters.for_lm(embedded_lm, smol.adapter_name(name))
    assert ad.name.startswith("test-ckpt") and ad is not adapters.for_lm(embedded_lm, "embedded-cf")
    with pytest.raises(FileNotFoundError, match="delta.safetensors"):
        smol.register_checkpoint(tmp_path)
