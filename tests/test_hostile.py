"""Hostile input, as a new user (or a shared link, or a script) would give it: every case gets a clear typed
error (engine, model loading), a clear message (CLI, pages), checked before any expensive work, and the next
normal run is still correct. Trace files and URL parameters are in tests/test_hostile_traces.py."""
import json
import os
import time

import pytest
import torch

from engine import cli, models, run
from engine.diffusion.adapters import DiffusionAdapter
from engine.errors import LabError, MethodError, ModelLoadError, OptionError, PromptError, SamplingError
from engine.sampling import SamplingConfig
from tests.conftest import app_test, make_tiny_lm, shown

PROMPT = "The quick brown fox"
FAST_S = 2.0   # every bad input must be refused within this (no tree of ten million nodes built first)


@pytest.fixture(scope="module")
def lm():
    m = make_tiny_lm(seed=21)
    m.diffusion = DiffusionAdapter(m.model, 16, shift=False, bidirectional=True, name="tiny", eos_ids=m.eos_ids)
    return m


@pytest.fixture(scope="module")
def normal(lm):
    """The reference output a normal run must keep producing after every bad input."""
    return run.run(lm, "ar", PROMPT, max_new_tokens=6).final_ids


def still_works(lm, normal):
    assert run.run(lm, "ar", PROMPT, max_new_tokens=6).final_ids == normal


# ---- engine API: (method, options, extra prepare kwargs, error type, message fragment) -------------------
G = SamplingConfig()
HOT = SamplingConfig(temperature=0.8)
ENGINE_CASES = [
    ("nope", {}, {}, MethodError, "Unknown method"),
    (None, {}, {}, MethodError, "Unknown method"),
    (123, {}, {}, MethodError, "Unknown method"),
    ("ar", {}, {"prompt": ""}, PromptError, "empty"),
    ("ar", {}, {"prompt": "  \n\t "}, PromptError, "empty"),
    ("ar", {}, {"prompt": None}, PromptError, "must be text"),
    ("ar", {}, {"prompt": 123}, PromptError, "must be text"),
    ("ar", {}, {"prompt": b"hello"}, PromptError, "must be text"),
    ("ar", {}, {"prompt": "bad \udcff byte"}, PromptError, "not valid text"),
    ("ar", {}, {"prompt": "x" * 2048 * 40}, PromptError, "characters"),
    ("ar", {}, {"prompt": "word " * 2100}, PromptError, "context window"),
    ("ar", {}, {"prompt": "word " * 2000, "max_new_tokens": 64}, MethodError, "context window"),
    ("ar", {}, {"max_new_tokens": 0}, OptionError, "max_new_tokens"),
    ("ar", {}, {"max_new_tokens": -5}, OptionError, "max_new_tokens"),
    ("ar", {}, {"max_new_tokens": 10 ** 9}, OptionError, "1..4096"),
    ("ar", {}, {"max_new_tokens": "10"}, OptionError, "max_new_tokens"),
    ("ar", {}, {"max_new_tokens": 2.5}, OptionError, "max_new_tokens"),
    ("ar", {}, {"max_new_tokens": True}, OptionError, "max_new_tokens"),
    ("ar", {}, {"max_new_tokens": None}, OptionError, "max_new_tokens"),
    ("ar", {}, {"sampling": "greedy"}, SamplingError, "SamplingConfig"),
    ("ar", {}, {"chat": "yes"}, PromptError, "chat"),
    ("ar", "top_candidates=3", {}, MethodError, "dict"),
    ("ar", {"top_k": 5}, {}, OptionError, "Unknown option"),
    ("ar", {"top_candidates": -1}, {}, OptionError, "top_candidates"),
    ("ar", {"top_candidates": "5"}, {}, OptionError, "top_candidates"),
    ("ar", {"top_candidates": 10 ** 6}, {}, OptionError, "1..100"),
    ("ar", {"top_candidates": float("nan")}, {}, OptionError, "top_candidates"),
    ("speculative", {"drafter": "nope"}, {}, OptionError, "drafter must be one of"),
    ("speculative", {"drafter": None}, {}, OptionError, "drafter"),
    ("speculative", {"tree": "10000000"}, {}, MethodError, "more than 256 nodes"),
    ("speculative", {"tree": "999999.999999.999999"}, {}, MethodError, "more than 256 nodes"),
    ("speculative", {"tree": "2.x"}, {}, MethodError, "unknown tree shape"),
    ("speculative", {"tree": "[[0,1]]"}, {}, MethodError, "prefix"),
    ("speculative", {"tree": "[" * 3000}, {}, MethodError, "choices"),
    ("speculative", {"tree": "x" * 5000}, {}, OptionError, "characters long"),
    ("speculative", {"tree": ".".join(["1"] * 100)}, {}, MethodError, "levels deep"),
    ("speculative", {"tree": '{"a": 1}'}, {}, MethodError, "unknown tree shape"),
    ("speculative", {"tree": 7}, {}, OptionError, "tree must be text"),
    ("speculative", {"drafter": "early_exit", "num_assistant_tokens": 0}, {}, OptionError, "num_assistant_tokens"),
    ("speculative", {"drafter": "early_exit", "num_assistant_tokens": 33}, {}, OptionError, "1..32"),
    ("speculative", {"drafter": "layer_skip", "skip_layers": "0-100000000"}, {}, MethodError, "outside 0..1"),
    ("speculative", {"drafter": "layer_skip", "skip_layers": "abc"}, {}, MethodError, "a list like"),
    ("speculative", {"drafter": "layer_skip", "skip_layers": "1-0"}, {}, MethodError, "backwards"),
    ("speculative", {"drafter": "layer_skip", "skip_layers": "0-1"}, {}, MethodError, "keep at least one"),
    ("speculative", {"drafter": "layer_skip", "skip_layers": "1" * 400}, {}, MethodError, "outside"),
    ("speculative", {"drafter": "early_exit", "exit_layer": 2}, {}, MethodError, "exit_layer must be in 1..1"),
    ("speculative", {"drafter": "early_exit", "exit_layer": -3}, {}, OptionError, "exit_layer"),
    ("speculative", {"drafter": "kangaroo", "exit_threshold": 1.0}, {}, OptionError, "exit_threshold"),
    ("speculative", {"drafter": "draft_model"}, {}, MethodError, "needs draft_model"),
    ("speculative", {"drafter": "draft_model", "draft_model": "self:abc"}, {}, MethodError, "self:K"),
    ("speculative", {"drafter": "draft_model", "draft_model": "self:99"}, {}, MethodError, "self:K"),
    ("speculative", {"drafter": "draft_model", "draft_model": "/nonexistent/draft"}, {}, MethodError,
     "tokenizer cannot be read"),
    ("speculative", {"drafter": "draft_model", "draft_model": "no-such-org/no-such-draft"}, {}, MethodError,
     "tokenizer cannot be read"),
    ("speculative", {"drafter": "draft_model", "draft_model": "x" * 600}, {}, OptionError, "characters long"),
    ("speculative", {"verify": "typical"}, {}, MethodError, "temperature"),
    ("speculative", {"verify": "greedy"}, {"sampling": HOT}, MethodError, "greedy decoding"),
    ("speculative", {"verify": "maybe"}, {}, OptionError, "verify must be one of"),
    ("speculative", {"confidence_threshold": 1.0}, {}, OptionError, "confidence_threshold"),
    ("speculative", {"verify": "typical", "typical_epsilon": 0.0}, {"sampling": HOT}, OptionError,
     "typical_epsilon"),
    ("speculative", {"tree": "dynamic", "tree_budget": 0}, {}, OptionError, "tree_budget"),
    ("speculative", {"tree": "dynamic", "tree_budget": 10 ** 6}, {}, OptionError, "1..256"),
    ("speculative", {"schedule": "fast"}, {}, OptionError, "schedule"),
    ("kv", {"policy": "nope"}, {}, OptionError, "policy must be one of"),
    ("kv", {"budget": 0}, {}, OptionError, "budget"),
    ("kv", {"budget": "abc"}, {}, OptionError, "budget"),
    ("kv", {"budget": 10 ** 7}, {}, OptionError, "1..16384"),
    ("kv", {"policy": "streaming_llm", "budget": 4}, {}, MethodError, "n_sink"),
    ("kv", {"policy": "h2o", "budget": 48, "window": 48}, {}, MethodError, "recent window"),
    ("kv", {"policy": "snapkv", "budget": 48, "window_size": 64}, {}, MethodError, "window_size"),
    ("kv", {"policy": "snapkv", "kernel_size": 4}, {}, MethodError, "odd"),
    ("kv", {"watch_layers": "99"}, {}, MethodError, "does not exist"),
    ("kv", {"watch_layers": "a,b"}, {}, MethodError, "not a layer index"),
    ("kv", {"watch_layers": "x" * 3000}, {}, OptionError, "characters long"),
    ("kv", {"positions": "sideways"}, {}, OptionError, "positions"),
    ("kv", {"policy": "lazy_eviction", "hit_threshold": 0.0}, {}, OptionError, "hit_threshold"),
    ("kv", {"prefill_budget": -2}, {}, OptionError, "prefill_budget"),
    ("kv", {"compare_full": "no"}, {}, OptionError, "compare_full"),
    ("jacobi", {"variant": "x"}, {}, OptionError, "variant"),
    ("jacobi", {"block_size": 0}, {}, OptionError, "block_size"),
    ("jacobi", {"block_size": 1000}, {}, OptionError, "1..128"),
    ("jacobi", {"init": "zeros"}, {}, OptionError, "init"),
    ("jacobi", {"variant": "hybrid", "hybrid_length": -1}, {}, OptionError, "hybrid_length"),
    ("lookahead", {"window_size": 0}, {}, OptionError, "window_size"),
    ("lookahead", {"level": 2}, {}, OptionError, "level"),
    ("lookahead", {"level": 17}, {}, OptionError, "3..16"),
    ("lookahead", {"guess_set_size": 0}, {}, OptionError, "guess_set_size"),
    ("lookahead", {"pool_from_prompt": "yes"}, {}, OptionError, "pool_from_prompt"),
    ("diffusion", {"rule": "nope"}, {}, OptionError, "rule must be one of"),
    ("diffusion", {"rule": "threshold", "threshold": "high"}, {}, OptionError, "threshold"),
    ("diffusion", {"rule": "threshold", "threshold": 0.0}, {}, OptionError, "threshold"),
    ("diffusion", {"rule": "threshold", "threshold": 1.5}, {}, OptionError, "threshold"),
    ("diffusion", {"gen_length": 8, "block_length": 5}, {}, MethodError, "divide"),
    ("diffusion", {"gen_length": 8, "steps": 20}, {}, MethodError, "exceed"),
    ("diffusion", {"gen_length": 8, "steps": 3, "block_length": 4}, {}, MethodError, "multiple"),
    ("diffusion", {"cfg_scale": -1.0}, {}, OptionError, "cfg_scale"),
    ("diffusion", {"cfg_scale": 1.0, "prefix_cache": True}, {}, MethodError, "prefix cache"),
    ("diffusion", {"adapter": "nope"}, {}, OptionError, "adapter must be one of"),
    ("diffusion", {"mask_id": -5}, {}, OptionError, "mask_id"),
    ("diffusion", {"rule": "local_leap", "anchor": 0.5, "relaxed": 0.8}, {}, MethodError, "relaxed"),
    ("diffusion", {"gen_length": 5000}, {}, OptionError, "1..1024"),
    ("diffusion", {"gen_length": 64, "block_length": 8}, {"prompt": "word " * 2000}, MethodError,
     "context window"),
    ("cad", {"context": ""}, {}, OptionError, "context is empty"),
    ("cad", {"context": "x" * 30_000}, {}, OptionError, "characters long"),
    ("cad", {"alpha": float("inf")}, {}, OptionError, "alpha"),
    ("cad", {"context": "word " * 3000}, {}, OptionError, "context with the question does not fit"),
    ("cautious", {"entropy_low": 1.0, "entropy_high": 1.0}, {}, OptionError, "entropy_high must be > entropy_low"),
    ("cautious", {"max_trials": "many"}, {}, OptionError, "max_trials"),
    ("contrastive", {"penalty_alpha": 2.0}, {}, OptionError, "penalty_alpha"),
    ("contrastive", {}, {"sampling": HOT}, MethodError, "temperature"),
    ("grammar", {"grammar_kind": "regex", "grammar": "[a-"}, {}, OptionError, "position"),
    ("grammar", {"grammar_kind": "ebnf", "grammar": "root ::= "}, {}, OptionError, "grammar"),
    ("grammar", {"grammar_kind": "json_schema", "grammar": "{not json"}, {}, OptionError, "grammar"),
    ("grammar", {"grammar_kind": "xml"}, {}, OptionError, "grammar_kind must be one of"),
]


@pytest.mark.parametrize("method,opts,kw,exc,msg", ENGINE_CASES,
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(ENGINE_CASES)])
def test_engine_refuses_bad_input_before_any_work(lm, normal, method, opts, kw, exc, msg, monkeypatch, one_thread):
    forwards = []
    monkeypatch.setattr(lm.model, "forward", lambda *a, **k: forwards.append(1) or (_ for _ in ()).throw(
        AssertionError("a forward ran before the input was checked")))
    kw = dict(kw)
    prompt = kw.pop("prompt", PROMPT)
    t = time.perf_counter()
    with pytest.raises(exc) as e:
        run.prepare(lm, method, prompt, options=opts, **{"max_new_tokens": 8, **kw})
    assert time.perf_counter() - t < FAST_S
    assert msg in str(e.value), str(e.value)
    assert len(str(e.value)) < 1200
    assert isinstance(e.value, LabError)
    assert not forwards
    monkeypatch.undo()
    still_works(lm, normal)


SAMPLING_CASES = [
    {"temperature": -1}, {"temperature": float("nan")}, {"temperature": float("inf")}, {"temperature": "hot"},
    {"temperature": 1e-9}, {"temperature": 5000}, {"top_k": 2.5}, {"top_k": -1}, {"top_k": "5"}, {"top_p": 0},
    {"top_p": 1.5}, {"min_p": 1.0}, {"min_p": -0.1}, {"typical_p": -0.1}, {"typical_p": 0}, {"seed": -1},
    {"seed": "x"}, {"seed": 2.5}, {"temperature": True},
]


@pytest.mark.parametrize("kw", SAMPLING_CASES, ids=[str(k) for k in SAMPLING_CASES])
def test_sampling_config_refuses_impossible_values(kw):
    with pytest.raises(SamplingError) as e:
        SamplingConfig(**kw)
    assert next(iter(kw)) in str(e.value)


@pytest.mark.slow
def test_draft_with_another_tokenizer_is_refused_before_its_weights_load(lm, normal, tmp_path, monkeypatch):
    """A draft model whose vocabulary differs: the tokenizer is compared first; no weights are read."""
    tok = lm.tokenizer
    tok2 = type(tok).from_pretrained(str(models.prepare_embedded()))
    tok2.add_tokens(["<extra-token-a>", "<extra-token-b>"])
    tok2.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(models, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("weights loaded")))
    with pytest.raises(MethodError, match="does not share the target's tokenizer"):
        run.prepare(lm, "speculative", PROMPT, options={"drafter": "draft_model", "draft_model": str(tmp_path)})
    monkeypatch.undo()
    still_works(lm, normal)


# ---- model loading ---------------------------------------------------------------------------------------
def _tiny_dir(tmp_path, lm):
    d = tmp_path / "tiny"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


LOAD_CASES = [
    ("", {}, "No model name"), ("   ", {}, "No model name"), (None, {}, "No model name"),
    (123, {}, "named by text"), ("no-such-org/no-such-model-xyz", {}, "not found"),
    ("/nonexistent/model/dir", {}, "not found"), ("bad\x00name", {}, "not a model id"),
    ("x" * 5000, {}, "not a model id"), ("ok", {"device": "banana"}, "Unknown device"),
    ("ok", {"device": "tpu"}, "Unknown device"), ("ok", {"dtype": "float64"}, "float64"),
    ("ok", {"dtype": "int8"}, "int8"), ("ok", {"dtype": torch.int8}, "not supported"),
    ("ok", {"trust_remote_code": "yes"}, "trust_remote_code"),
]
if not torch.cuda.is_available():
    LOAD_CASES += [("ok", {"device": "cuda"}, "no CUDA GPU"), ("ok", {"device": "cuda:3"}, "no CUDA GPU")]


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,msg", LOAD_CASES, ids=[f"load{i}" for i in range(len(LOAD_CASES))])
def test_model_loading_errors_are_clear(name, kw, msg, monkeypatch, lm, normal):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if name == "ok":
        name = "/nonexistent/but/checked/after/the/device"
    t = time.perf_counter()
    with pytest.raises(ModelLoadError) as e:
        models.load(name, **kw)
    assert msg in str(e.value) and time.perf_counter() - t < 10
    still_works(lm, normal)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["config_not_json", "config_empty", "not_causal", "weights_corrupt",
                                    "weights_missing", "config_is_a_list"])
def test_damaged_model_directories(damage, tmp_path, lm, normal):
    d = _tiny_dir(tmp_path, lm)
    if damage == "config_not_json":
        (d / "config.json").write_text("{not json")
    elif damage == "config_empty":
        (d / "config.json").write_text("{}")
    elif damage == "config_is_a_list":
        (d / "config.json").write_text("[1, 2]")
    elif damage == "not_causal":
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"] = ["LlamaForSequenceClassification"]
        (d / "config.json").write_text(json.dumps(cfg))
    elif damage == "weights_corrupt":
        (d / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    elif damage == "weights_missing":
        os.remove(d / "model.safetensors")
    with pytest.raises(ModelLoadError) as e:
        models.load(str(d), device="cpu")
    assert len(str(e.value)) < 1000
    still_works(lm, normal)


# ---- CLI -----------------------------------------------------------------------------------------------
@pytest.fixture
def cli_tiny(lm, monkeypatch):
    """The CLI on the tiny model (the argument handling is what is tested, not the embedded model)."""
    monkeypatch.setattr(models, "load", lambda *a, **k: lm)


CLI_ERRORS = [  # argv, message fragment (stderr), exit code
    (["--method", "kv", "--budget", "abc"], "--budget must be an integer", 2),
    (["--method", "kv", "--budget", "0"], "--budget must be an integer in 1..16384", 2),
    (["--method", "ar", "--top-candidates", "-1"], "--top-candidates", 2),
    (["--method", "ar", "--threshold", "0.5"], "--threshold", 2),
    (["--method", "diffusion", "--threshold", "high"], "--threshold must be", 2),
    (["--method", "diffusion", "--rule", "threshold", "--threshold", "nan"], "--threshold must be", 2),
    (["--method", "lookahead", "--pool-from-prompt", "maybe"], "--pool-from-prompt must be true or false", 2),
    (["--method", "speculative", "--tree", "10000000"], "more than 256 nodes", 2),
    (["--method", "speculative", "--drafter", "layer_skip", "--skip-layers", "0-100000000"], "outside", 2),
    (["--method", "nope"], "Unknown method", 2),
    (["--prompt", ""], "empty", 2),
    (["--prompt", "bad \udcff byte"], "not valid text", 2),
    (["--trace-out", "/nonexistent/dir/t.json"], "does not exist", 2),
    (["--method", "jacobi", "--block-size", "²"], "--block-size must be", 2),
    (["--method", "jacobi", "--block-size", "1e3"], "--block-size must be", 2),
]


@pytest.mark.parametrize("argv,msg,rc", CLI_ERRORS, ids=[f"cli{i}" for i in range(len(CLI_ERRORS))])
def test_cli_errors_name_the_flag(argv, msg, rc, cli_tiny, capsys, lm, normal, one_thread):
    if "--prompt" not in argv:
        argv = argv + ["--prompt", PROMPT]
    assert cli.main(["generate", *argv, "--max-new-tokens", "4"]) == rc
    err = capsys.readouterr().err
    assert msg in err, err
    assert "Traceback" not in err
    still_works(lm, normal)


ARGPARSE_ERRORS = [
    (["--max-new-tokens", "abc"], "--max-new-tokens"), (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"), (["--top-p", "2"], "--top-p"), (["--top-k", "2.5"], "--top-k"),
    (["--dtype", "float64"], "--dtype"), (["--seed", "x"], "--seed"),
]


@pytest.mark.parametrize("argv,flag", ARGPARSE_ERRORS, ids=[a[0] + a[1] for a, _ in ARGPARSE_ERRORS])
def test_cli_typed_flags(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--prompt", PROMPT, *argv])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_device_errors_before_loading(capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["generate", "--prompt", PROMPT, "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert cli.main(["generate", "--prompt", PROMPT, "--device", "banana"]) == 2
    assert "Unknown device" in capsys.readouterr().err


def test_cli_trace_out_checks(cli_tiny, capsys, tmp_path, one_thread):
    """A directory as --trace-out: refused before the run, nothing left behind; a good path writes the trace
    after printing the text."""
    assert cli.main(["generate", "--prompt", PROMPT, "--max-new-tokens", "3", "--trace-out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [] and not list(tmp_path.parent.glob(f"{tmp_path.name}*.tmp"))
    out = tmp_path / "t.json"
    assert cli.main(["generate", "--prompt", PROMPT, "--max-new-tokens", "3", "--trace-out", str(out)]) == 0
    assert out.exists() and not list(tmp_path.glob("*.tmp"))
    assert "trace written" in capsys.readouterr().out


def test_cli_ignored_option_is_said(cli_tiny, capsys, one_thread):
    assert cli.main(["generate", "--method", "speculative", "--prompt", PROMPT, "--max-new-tokens", "3",
                     "--exit-layer", "1"]) == 0
    assert "--exit-layer" in capsys.readouterr().err


# ---- pages (AppTest, the embedded model) --------------------------------------------------------------------
def _no_traceback(at):
    texts = [e.value for e in at.error] + [m.value for m in at.markdown] + [c.value for c in at.code]
    assert not any("Traceback (most recent call last)" in t or 'File "/' in t for t in texts)


PAGE_CASES = [  # page, setup (at -> None), message fragment shown
    ("pages/1_Autoregressive.py", lambda at: at.text_area(key="ar_prompt").input(""), "empty"),
    ("pages/1_Autoregressive.py", lambda at: at.text_area(key="ar_prompt").input("word " * 9000),
     "context window"),
    ("pages/2_Speculative.py", lambda at: (at.selectbox(key="spec_tree_preset").set_value("custom...").run(),
                                           at.text_input(key="spec_tree").input("10000000")), "more than 256 nodes"),
    ("pages/2_Speculative.py", lambda at: (at.selectbox(key="spec_drafter").set_value("layer_skip").run(),
                                           at.text_input(key="spec_skip_layers").input("0-100000000")), "outside"),
    ("pages/2_Speculative.py", lambda at: (at.selectbox(key="spec_drafter").set_value("draft_model").run(),
                                           at.selectbox(key="spec_draft_model_preset").set_value("custom...").run(),
                                           at.text_input(key="spec_draft_model").input("/nonexistent/draft")),
     "tokenizer cannot be read"),
    ("pages/2_Speculative.py", lambda at: (at.selectbox(key="spec_drafter").set_value("draft_model").run(),
                                           at.selectbox(key="spec_draft_model_preset").set_value("custom...").run(),
                                           at.text_input(key="spec_draft_model").input("![x](http://example.invalid/p.png)")),
     "tokenizer cannot be read"),
    ("pages/3_KV_Cache.py", lambda at: (at.selectbox(key="kv_watch_layers_preset").set_value("custom...").run(),
                                        at.text_input(key="kv_watch_layers").input("99")), "does not exist"),
    ("pages/3_KV_Cache.py", lambda at: (at.selectbox(key="kv_policy").set_value("h2o").run(),
                                        at.number_input(key="kv_budget").set_value(8),
                                        at.number_input(key="kv_window").set_value(8)), "recent window"),
    ("pages/4_Jacobi_Lookahead.py", lambda at: at.text_area(key="jl_prompt").input("\n\n"), "empty"),
    ("pages/5_Diffusion.py", lambda at: (at.number_input(key="dlm_gen_length").set_value(10),
                                         at.number_input(key="dlm_block_length").set_value(4)), "divide"),
]
GO = {"pages/1_Autoregressive.py": "ar_go", "pages/2_Speculative.py": "spec_go", "pages/3_KV_Cache.py": "kv_go",
      "pages/4_Jacobi_Lookahead.py": "jl_go", "pages/5_Diffusion.py": "dlm_go"}


@pytest.mark.parametrize("page,setup,msg", PAGE_CASES, ids=[f"page{i}" for i in range(len(PAGE_CASES))])
def test_pages_show_a_message_not_a_traceback(embedded_lm, page, setup, msg):
    at = app_test(page).run()
    assert not at.exception
    setup(at)
    t = time.perf_counter()
    at.button(key=GO[page]).click().run()
    assert time.perf_counter() - t < 20
    assert not at.exception, at.exception
    assert any(msg in m for m in shown(at.error)), shown(at.error)
    _no_traceback(at)
    # an image link in the input is shown as text, not fetched
    assert not any("](http" in e.value and "\\]" not in e.value for e in at.error)


def test_home_page_unknown_model_is_a_message(embedded_lm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = app_test("app.py").run()
    for bad in ("no-such-org/no-such-model", "/etc", "![x](http://example.invalid/p.png)"):
        at.text_input(key="home_model_input").input(bad)
        at.button(key="home_load").click().run()
        assert not at.exception
        assert any("Could not load the model" in m for m in shown(at.error)), shown(at.error)
        assert not any("](http" in e.value and "\\]" not in e.value for e in at.error)
        _no_traceback(at)
    at.text_input(key="home_model_input").input(models.EMBEDDED)
    at.button(key="home_load").click().run()
    assert not at.exception and at.success


@pytest.mark.parametrize("where", ["ui", "decoder"])
def test_a_bug_shows_an_id_not_a_traceback(embedded_lm, monkeypatch, caplog, where):
    """An unexpected exception, in the page or in the decoder process: a short error id on the page, the
    traceback (the decoder's too) in the server log."""
    from engine import remote

    def broken(*a, **k):
        if where == "ui":
            raise KeyError("internal detail")
        raise remote.RemoteError("KeyError: internal detail", "Traceback (most recent call last):\n  remote frame")
    monkeypatch.setattr(remote.Decoder, "start", broken)
    at = app_test("pages/1_Autoregressive.py").run()
    with caplog.at_level("ERROR", logger="decoding_lab"):
        at.button(key="ar_go").click().run()
    assert not at.exception
    msgs = shown(at.error)
    assert any("error id" in m for m in msgs), msgs
    assert not any("internal detail" in m or "KeyError" in m for m in msgs)
    _no_traceback(at)


# ---- trace files and links (more in tests/test_schema.py and tests/test_replay.py) ---------------------------
def _good_trace() -> dict:
    from pathlib import Path
    from tests.conftest import ROOT
    return json.loads((Path(ROOT) / "examples" / "traces" / "autoregressive.json").read_text())


def _bad_traces():
    good = _good_trace()
    yield "not json", b"{not json"
    yield "binary", b"\x00\xff\xfe" * 100
    yield "a list", b"[1, 2, 3]"
    yield "NaN", json.dumps(good).replace('"prob": ', '"prob": NaN, "x": ', 1).encode()
    yield "deep nesting", ("[" * 100000 + "]" * 100000).encode()
    yield "huge number", json.dumps(good).replace('"index": 0', '"index": 1' + "0" * 5000, 1).encode()
    t = _good_trace()
    t["steps"][0]["kind"] = "kv"
    yield "relabelled kind", json.dumps(t).encode()
    t = _good_trace()
    t["steps"][0]["seq_len"] = 2_000_000
    t["steps"][0]["kind"] = "kv"
    yield "absurd size", json.dumps(t).encode()
    t = _good_trace()
    t["steps"][1]["candidates"] = "oops"
    yield "wrong type", json.dumps(t).encode()
    t = _good_trace()
    del t["steps"][2]["index"]
    yield "missing field", json.dumps(t).encode()
    t = _good_trace()
    t["schema_version"] = 99
    yield "future schema", json.dumps(t).encode()
    yield "too big", b" " * (51 * 1024 * 1024)


@pytest.mark.parametrize("name,data", list(_bad_traces()), ids=[n for n, _ in _bad_traces()])
def test_hostile_trace_files_are_refused_with_a_reason(name, data):
    from engine import trace as T
    t = time.perf_counter()
    with pytest.raises(T.TraceError) as e:
        T.loads(data)
    assert str(e.value) and len(str(e.value)) < 600 and time.perf_counter() - t < 10


REPLAY_LINKS = [{"trace": "autoregressive", "step": "²"}, {"trace": "autoregressive", "step": "-1"},
                {"trace": "autoregressive", "step": "9" * 40}, {"trace": "../../etc/passwd"},
                {"trace": "<img src=x onerror=alert(1)>", "step": "1"}, {"trace": "x" * 5000}]


@pytest.mark.slow
@pytest.mark.parametrize("params", REPLAY_LINKS, ids=[f"link{i}" for i in range(len(REPLAY_LINKS))])
def test_odd_replay_links_give_a_message(params):
    at = app_test("pages/7_Replay.py")
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception
    assert at.warning or at.info
    assert not any("<img" in w.value for w in list(at.warning) + list(at.info) + list(at.markdown))
    _no_traceback(at)


# every place that hands HTML to Streamlit, and what makes it safe; a new one must be added here knowingly
ALLOWED_HTML = {
    "ui/render_kv.py": ("vz.tokens_html", "legend.legend_html"),
    "ui/render_jacobi.py": ("vz.token_stream_html", "legend.legend_html"),
    "ui/render_diffusion.py": ("vz.text_html", "legend.legend_html"),
    "ui/render_speculative.py": ("legend.legend_html", "vz.stream_html"),
    "ui/render_ar.py": ("legend.legend_html", "vz.token_stream_html"),
    "pages/8_Lessons.py": ("fig", "PRESENTER_CSS"),
    "pages/6_Compare.py": ("vc.diff_html",),
    "ui/live.py": ("html",),   # renderers.stream_html: the viz token-stream builders above
    "ui/branches.py": ("vf.aligned_html",),
    "ui/branch_view.py": ("vf.aligned_html",),   # a saved trace's branch beside its parent (moved from ui/branches.py)
    "ui/rewarp.py": ("vr.stream_html",),   # tests/test_rewarp_page.py: escaping
    "ui/render_grammar.py": ("legend.legend_html",),
    "ui/render_cautious.py": ("legend.legend_html", "vz.stream_html"),   # tests/test_cautious.py: escaping   # what-if forks: tests/test_fork_trace.py checks its escaping
}


def test_unsafe_html_only_from_escaping_builders():
    """`grep unsafe_allow_html ui viz pages`: every use passes the output of a builder that escapes every
    trace string (viz.safe), or static text; the builders' escaping is tested in tests/test_replay.py."""
    import re
    from pathlib import Path
    from tests.conftest import ROOT
    root = Path(ROOT)
    found = {}
    for path in [*root.glob("ui/*.py"), *root.glob("viz/*.py"), *root.glob("pages/*.py"), root / "app.py"]:
        if path.name == "safe.py":
            continue
        text = path.read_text()
        for m in re.finditer(r"unsafe_allow_html\s*=\s*True", text):
            call = text.rfind("st.markdown(", 0, m.start())
            assert call >= 0, f"{path}: unsafe_allow_html outside st.markdown"
            source = re.match(r"[\w.]+", text[call + len("st.markdown("):]).group(0)
            found.setdefault(str(path.relative_to(root)), set()).add(source)
    for file, sources in found.items():
        assert file in ALLOWED_HTML, f"{file} hands HTML to Streamlit: add it to ALLOWED_HTML once it escapes"
        assert sources <= set(ALLOWED_HTML[file]), (file, sources)
    assert found, "the audit found nothing: the pattern is broken"
