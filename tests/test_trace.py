"""Trace JSON: round trip, and clear errors for malformed or hostile files."""
import json

import pytest

from engine import models, run, trace as T
from engine.methods import MethodError


def test_round_trip(tiny_lm, tmp_path):
    tr = run.run(tiny_lm, "ar", "Hi there", max_new_tokens=5)
    p = tmp_path / "t.json"
    tr.save(p)
    back = T.load(p)
    assert back.steps == tr.steps
    assert back.final_ids == tr.final_ids and back.final_text == tr.final_text
    assert back.meta["method"] == "ar" and back.meta["versions"]["torch"]
    assert back.counters.generated_tokens == tr.counters.generated_tokens
    assert back.counters.compute_s == pytest.approx(tr.counters.compute_s)
    assert json.loads(p.read_text())["schema_version"] == T.SCHEMA_VERSION


@pytest.mark.parametrize("data, msg", [
    (b"not json at all", "not valid JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (b'{"meta": {}}', "schema_version"),
    (b'{"schema_version": 99, "meta": {"model": "m", "method": "ar"}, "steps": []}', "newer"),
    (b'{"schema_version": 1, "meta": {"model": "m"}, "steps": []}', "method"),
    (b'{"schema_version": 1, "meta": {"model": "m", "method": "ar"}, "steps": [{"kind": "evil", "index": 0}]}',
     "unknown kind"),
    (b'{"schema_version": 1, "meta": {"model": "m", "method": "ar"}, "steps": [], "final": {"token_ids": ["x"]}}',
     "integers"),
    (b'{"schema_version": 1, "meta": {"model": "m", "method": "ar"}, "steps": [], "counters": {"compute_s": NaN}}',
     "NaN"),
    (b"\xff\xfe\x00garbage", "UTF-8"),
    (b"[" * 100000 + b"]" * 100000, "nested"),
    (b'{"__class__": "os.system", "schema_version": "1"}', "schema_version"),
])
def test_malformed_traces_are_rejected_clearly(data, msg):
    with pytest.raises(T.TraceError, match=msg):
        T.loads(data)


def test_too_large_trace_is_rejected():
    with pytest.raises(T.TraceError, match="limited"):
        T.loads(b" " * (T.MAX_TRACE_BYTES + 1))


def test_empty_prompt_and_bad_parameters(tiny_lm):
    with pytest.raises(models.PromptError, match="empty"):
        run.prepare(tiny_lm, "ar", "   ")
    with pytest.raises(MethodError, match="max_new_tokens"):
        run.prepare(tiny_lm, "ar", "hi", max_new_tokens=0)
    with pytest.raises(MethodError, match="Unknown method"):
        run.prepare(tiny_lm, "nope", "hi")
    with pytest.raises(MethodError, match="Unknown option"):
        run.prepare(tiny_lm, "ar", "hi", options={"bogus": 1})


def test_huge_prompt_is_rejected(tiny_lm):
    with pytest.raises(models.PromptError, match="at most"):
        run.prepare(tiny_lm, "ar", "word " * 20000)


def test_unknown_model_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError, match="not found"):
        models.load("no-such-org/definitely-not-a-model")
    with pytest.raises(models.ModelLoadError, match="not found"):
        models.load("/nonexistent/local/dir")


def test_not_a_causal_lm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"],
                                                      "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                                                      "num_attention_heads": 1, "intermediate_size": 8}))
    with pytest.raises(models.ModelLoadError, match="not a causal language model"):
        models.load(str(tmp_path))
