"""The embedded diffusion deltas: the two that ship (default smol-diffusion, and smol-diffusion-fast: par with a
heavier confident-error penalty), the four that no longer ship (cf, cal, div, par: rebuilt by
training/rebuild_variant.py), and the one table they are described in (engine/diffusion/variants.py)."""
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from engine import run
from engine.diffusion import adapters, smol, variants
from engine.errors import OptionError
from engine.methods import MethodError
from tests.conftest import ROOT, make_tiny_lm


def test_the_shipped_deltas_are_present_and_small():
    shipped = [v for v in variants.TABLE if v.shipped]
    assert [v.key for v in shipped] == ["default", "fast"]
    for v in shipped:
        assert v.key in smol.VARIANTS and smol.VARIANTS[v.key][0] == v.path
    for variant, (d, _) in smol.VARIANTS.items():
        f = d / "delta.safetensors"
        assert f.exists(), variant
        assert f.stat().st_size < 12 * 2 ** 20  # LoRA r=16 + mask row, fp16
    total = sum((d / "delta.safetensors").stat().st_size for d, _ in smol.VARIANTS.values())
    assert total <= 60 * 2 ** 20  # the budget for shipped weights
    # git tracks the shipped deltas only
    tracked = subprocess.run(["git", "ls-files", "models"], cwd=ROOT, capture_output=True, text=True, check=True)
    dirs = {line.split("/")[1] for line in tracked.stdout.split()}
    heads = {d for d in dirs if d.startswith("heads-")}     # the speculative draft heads (issue 25)
    assert dirs - heads == {v.dirname for v in shipped}, dirs
    assert heads == {"heads-eagle", "heads-medusa"}, heads
    head_bytes = sum(f.stat().st_size for d in heads for f in Path(ROOT, "models", d).iterdir())
    assert head_bytes < 30 * 2 ** 20, head_bytes          # "well under 30 MB"


def test_only_the_variants_whose_files_exist_are_offered():
    from engine.methods.diffusion import adapter_choices
    for v in variants.TABLE:
        assert (v.key in smol.VARIANTS) == v.present(), v.key
        assert (v.adapter in adapter_choices()) == v.present(), v.key
        assert v.shipped or v.rebuild, v.key   # every variant is in git or can be rebuilt
    assert "sd" not in variants.BY_KEY  # the looping self-distilled delta is a stage of cal's rebuild, no variant


def test_rebuild_lines_parse_and_chain_to_a_present_variant():
    """Every rebuild line is a valid train_diffusion command line, each variant resumes from its parent's
    directory, and the chain of an absent variant ends at a present one."""
    from training.train_diffusion import parser
    for v in variants.TABLE:
        resumed = []
        for line in v.rebuild:
            args = parser().parse_args(shlex.split(line))
            if args.cmd == "train":
                assert args.resume
                resumed.append(args.resume_from or str(smol.DELTA_DIR.relative_to(ROOT)))
                last_out = args.out
        if v.rebuild:
            assert last_out == f"models/{v.dirname}", v.key   # the last run writes the variant
            assert resumed[0] == f"models/{variants.BY_KEY[v.parent].dirname}", v.key
        if not v.present():
            todo = variants.chain(v.key)
            assert todo[-1] is v and variants.BY_KEY[todo[0].parent].present()


def test_rebuild_variant_prints_the_command_lines(capsys):
    from training.rebuild_variant import main
    assert main(["par", "--print"]) == 0
    out = capsys.readouterr().out.splitlines()
    todo = variants.chain("par")
    assert len(out) == sum(len(v.rebuild) for v in todo)
    assert all(line.startswith(".venv/bin/python -m training.train_diffusion ") for line in out)
    assert "--out models/smol-diffusion-par" in out[-1]


def test_generated_tables_are_current():
    """README's status table and docs/DIFFUSION_MODEL.md's figures and rebuild lines are variants.py's."""
    for rel, blocks in variants.GENERATED.items():
        text = (variants.MODELS.parent / rel).read_text()
        for marker, make in blocks.items():
            assert variants.splice(text, marker, make()) == text, f"{rel} {marker}: run python -m engine.diffusion.variants"


def test_fast_delta_is_more_confident(embedded_lm, one_thread):
    base = adapters.for_lm(embedded_lm, "embedded")
    assert base is adapters.for_lm(embedded_lm)  # auto = the default delta (the cache keeps the 2 newest)
    fast = adapters.for_lm(embedded_lm, "embedded-fast")
    assert fast is not base and fast.name != base.name and "-fast" in fast.name
    prompt = embedded_lm.encode("Write a short story about a fox in the snow.")[0]
    x = torch.cat([prompt, torch.full((16,), smol.MASK_ID)])[None]
    conf = {}
    for name, ad in (("base", base), ("fast", fast)):
        with torch.no_grad():
            logits = ad.logits(x)[0, prompt.shape[0]:].float()
        logits[:, smol.MASK_ID] = -1e4
        conf[name] = logits.softmax(-1).max(-1).values
    # the point of certainty forcing (fast descends from it): a fully masked block is predicted with more
    # confidence; fast is par taught to be less sure where it is wrong, still more confident than the default
    assert conf["fast"].mean() > conf["base"].mean() + 0.05, conf


def test_weights_option_reaches_the_trace(embedded_lm, one_thread):
    tr = run.run(embedded_lm, "diffusion", "Name a colour.", max_new_tokens=8,
                 options={"rule": "threshold", "gen_length": 8, "block_length": 8, "adapter": "embedded-fast"})
    assert tr.extra["summary"]["model"].startswith("smol-diffusion-fast")
    assert tr.meta["params"]["adapter"] == "embedded-fast"


def test_bad_weights_are_clear_errors(embedded_lm):
    with pytest.raises(MethodError, match="variant"):
        adapters.embedded(embedded_lm, "nope")
    with pytest.raises(MethodError, match="embedded-fast"):
        adapters.for_lm(make_tiny_lm(), "embedded-fast")
    with pytest.raises(MethodError, match="embedded-fast"):  # the error lists the choices
        adapters.for_lm(embedded_lm, "whatever")


@pytest.mark.parametrize("key", [v.key for v in variants.TABLE if not v.shipped])
def test_an_absent_variant_names_the_command_that_rebuilds_it(embedded_lm, key):
    """A variant that no longer ships: the engine, the CLI's option check and the adapter all say which
    command rebuilds it, before any forward (nothing is loaded)."""
    v = variants.BY_KEY[key]
    if v.present():
        pytest.skip(f"{v.dirname} was rebuilt in this checkout")
    want = f"python -m training.rebuild_variant {key}"
    with pytest.raises(MethodError, match=want):
        adapters.embedded(embedded_lm, key)
    with pytest.raises(MethodError, match=want):
        adapters.for_lm(embedded_lm, v.adapter)
    with pytest.raises(OptionError, match=want) as e:
        run.prepare(embedded_lm, "diffusion", "Name a colour.", max_new_tokens=8, options={"adapter": v.adapter})
    assert v.dirname in str(e.value) and "smol-diffusion-fast" in str(e.value)   # what ships instead
    with pytest.raises(OptionError, match="auto, embedded, embedded-fast"):       # unknown: the plain choices
        run.prepare(embedded_lm, "diffusion", "Name a colour.", max_new_tokens=8, options={"adapter": "embedded-x"})


def test_a_checkpoint_directory_loads_as_a_variant(embedded_lm, monkeypatch, tmp_path):
    """benchmarks --delta DIR: a training checkpoint is evaluated through the same adapter path."""
    monkeypatch.setattr(smol, "VARIANTS", dict(smol.VARIANTS))
    name = smol.register_checkpoint(smol.DELTA_DIR_FAST, "test-ckpt")
    ad = adapters.for_lm(embedded_lm, smol.adapter_name(name))
    assert ad.name.startswith("test-ckpt") and ad is not adapters.for_lm(embedded_lm, "embedded-fast")
    with pytest.raises(FileNotFoundError, match="delta.safetensors"):
        smol.register_checkpoint(tmp_path)
