"""Grammar-constrained decoding (engine/methods/grammar.py): outputs parse under their grammar (JSON schema, regex,
EBNF), "any" equals autoregressive decoding, a grammar that does not compile is refused with the library's message
before any forward, a run ends with a clear status when the grammar is complete, at a dead end or at the token
budget, sampling is seeded and respects the grammar, EOS is allowed only where the grammar accepts; the Search page
runs it and shows a bad grammar as an error; trace text is escaped in the figures."""
import json
import re

import jsonschema
import pytest

from engine import run, trace as T
from engine.errors import OptionError
from engine.methods import grammar as G
from engine.runner import DONE
from engine.sampling import SamplingConfig
from tests.conftest import app_test, make_tiny_lm, shown, wait_done
from viz import grammar as vz

DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
GBNF = ('root ::= expr\nexpr ::= term (" "? ("+" | "-") " "? term)*\nterm ::= factor (" "? ("*" | "/") " "? factor)*\n'
        'factor ::= [0-9]+ | "(" " "? expr " "? ")"\n')
LARK = ('start: expr\nexpr: term (" "? ("+" | "-") " "? term)*\nterm: factor (" "? ("*" | "/") " "? factor)*\n'
        'factor: /[0-9]+/ | "(" " "? expr " "? ")"\n')


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lm(seed=5)


def answer(lm, tr) -> str:
    """The output without its end-of-text token."""
    return lm.tokenizer.decode([t for t in tr.final_ids if t not in lm.eos_ids])


def grammar_run(lm, prompt, kind, text=None, n=40, **kw):
    opts = {"grammar_kind": kind, **({"grammar": text} if text is not None else {})}
    tr = run.run(lm, "grammar", prompt, max_new_tokens=n, options=opts, **kw)
    return T.loads(tr.to_json())      # every trace passes the schema (engine/schema.py AR_OPTIONAL["grammar"])


def parses_arithmetic(s: str) -> bool:
    """A recursive-descent parser of the grammar above: expr = term (+|- term)*, term = factor (*|/ factor)*,
    factor = digits | ( expr ), with at most one space around an operator or inside a parenthesis."""
    pos = 0

    def space():
        nonlocal pos
        if pos < len(s) and s[pos] == " ":
            pos += 1

    def factor():
        nonlocal pos
        if pos < len(s) and s[pos] == "(":
            pos += 1
            space()
            if not expr():
                return False
            space()
            if pos >= len(s) or s[pos] != ")":
                return False
            pos += 1
            return True
        start = pos
        while pos < len(s) and s[pos] in "0123456789":
            pos += 1
        return pos > start

    def chain(item, ops):
        nonlocal pos
        if not item():
            return False
        while True:
            back = pos
            space()
            if pos >= len(s) or s[pos] not in ops:
                pos = back
                return True
            pos += 1
            space()
            if not item():
                return False

    def term():
        return chain(factor, "*/")

    def expr():
        return chain(term, "+-")

    return expr() and pos == len(s)


def test_the_arithmetic_parser():
    for ok in ("1", "(3 + 4) * 5", "( 2+3 )/4-1", "10*(2 - (3))"):
        assert parses_arithmetic(ok), ok
    for bad in ("", "1 2", "(1", "1 +", "1  + 2", "a"):
        assert not parses_arithmetic(bad), bad


# ---- the real model: outputs parse under their grammar --------------------------------------------------------
@pytest.mark.parametrize("prompt", ["Describe a person called Bob as JSON.",
                                    "Give me the name and the age of a famous scientist as JSON."])
def test_json_schema_outputs_validate(embedded_lm, prompt):
    tr = grammar_run(embedded_lm, prompt, "json_schema", G.DEFAULT_SCHEMA, n=40)
    obj = json.loads(answer(embedded_lm, tr))
    jsonschema.validate(obj, G.example_schema())
    s = tr.extra["summary"]
    assert s["complete"] and s["stop"].startswith("complete") and s["library"].startswith("xgrammar")
    g = tr.steps[-1]["grammar"]
    assert g["stop"] == s["stop"] and g["complete"]
    for step in tr.steps:
        g = step["grammar"]
        assert 1 <= g["allowed"] <= g["vocab"] and 0 <= g["removed_mass"] <= 1
        assert g["forced"] == (g["allowed"] == 1)
        assert abs(g["allowed_share"] - g["allowed"] / g["vocab"]) < 1e-5
        blocked = {c["id"] for c in g["candidates_unconstrained"] if not c["allowed"]}
        assert not any(c["p_raw"] for c in step["candidates"] if c["id"] in blocked)    # after the mask: none left
        top = max(g["candidates_unconstrained"], key=lambda c: c["p_raw"])
        assert top["id"] == g["wanted_id"]


@pytest.mark.parametrize("prompt", ["When did the Apollo 11 landing happen? Give the date.",
                                    "What is today's date?"])
def test_regex_outputs_match(embedded_lm, prompt):
    tr = grammar_run(embedded_lm, prompt, "regex", DATE, n=20)
    assert re.fullmatch(DATE, answer(embedded_lm, tr))
    assert tr.extra["summary"]["complete"]


def test_ebnf_outputs_parse(embedded_lm):
    for prompt, text in (("Write an arithmetic expression whose value is 24, using parentheses.", GBNF),
                         ("Write the expression: three plus four, times five.", LARK)):
        tr = grammar_run(embedded_lm, prompt, "ebnf", text, n=24)
        out = answer(embedded_lm, tr)
        assert parses_arithmetic(out) == tr.extra["summary"]["complete"], out
        # the library's own matcher accepts it too (a prefix of a sentence when the budget cut it)
        con = G.Constraint(G.compile_grammar(embedded_lm, "ebnf", text), G.vocab_size(embedded_lm),
                           embedded_lm.eos_ids, embedded_lm.eos_ids, "cpu")
        assert con.consume_all([t for t in tr.final_ids if t not in embedded_lm.eos_ids])
        assert con.accepting() == tr.extra["summary"]["complete"]


def test_any_equals_autoregressive(embedded_lm):
    prompt = "Write a haiku about the sea."
    for cfg in (SamplingConfig(), SamplingConfig(temperature=0.9, top_p=0.9, seed=3)):
        ar = run.run(embedded_lm, "ar", prompt, max_new_tokens=16, sampling=cfg).final_ids
        tr = grammar_run(embedded_lm, prompt, "any", n=16, sampling=cfg)
        assert tr.final_ids == ar
        assert all(s["grammar"]["removed_mass"] == 0 and s["grammar"]["allowed_share"] == 1 for s in tr.steps)


# ---- refusals before any forward -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,text,says", [
    ("regex", r"[0-9]{4", "Regex parsing error at position 8: Invalid repetition count"),
    ("regex", "(ab", "at position 4: The parenthesis is not closed"),
    ("json_schema", '{"type": "object",, }', "syntax error at line 1 near: , }"),
    ("json_schema", '{"type": "strin"}', 'Unsupported type "strin"'),
    ("ebnf", "root ::= foo\n", 'at line 1, column 10: Rule "foo" is not defined'),
    ("ebnf", 'start: "a" (\n', "Lark error at line 1, column 13: expected ')' after group"),
    ("regex", "[^\\s\\S]", "admits no text at all"),
    ("regex", "   ", "grammar is empty"),
])
def test_bad_grammar_is_refused_before_any_forward(tiny, monkeypatch, kind, text, says):
    calls = []
    monkeypatch.setattr(tiny.model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(OptionError, match=re.escape(says)) as e:
        run.prepare(tiny, "grammar", "hi", max_new_tokens=8, options={"grammar_kind": kind, "grammar": text})
    assert str(e.value).startswith("grammar") and "/project/" not in str(e.value) and not calls


def test_grammar_text_keeps_line_breaks_and_other_options_do_not():
    from engine import methods
    spec = methods.get("grammar")
    assert spec.values({"grammar": GBNF, "grammar_kind": "ebnf"})["grammar"] == GBNF
    with pytest.raises(OptionError, match="control characters"):
        spec.values({"grammar_kind": "regex\n"})


# ---- how a run ends ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fixed_string_ends_right_after_it(tiny):
    text = "The answer is 42."
    for ignore_eos in (False, True):
        tr = grammar_run(tiny, "Say it.", "regex", re.escape(text), n=40, ignore_eos=ignore_eos)
        assert answer(tiny, tr) == text and not set(tr.final_ids) & tiny.eos_ids
        s = tr.extra["summary"]
        assert s["stop"] == G.STOP_DONE and s["complete"] and len(tr.steps) == len(tr.final_ids)
        assert tr.steps[-1]["grammar"]["stop"] == G.STOP_DONE
        assert tr.counters.target_forwards == len(tr.steps)        # no forward for an end-of-text


def test_budget_too_small_ends_with_a_clear_status(tiny):
    tr = grammar_run(tiny, "A person as JSON.", "json_schema", G.DEFAULT_SCHEMA, n=4)
    s = tr.extra["summary"]
    assert len(tr.final_ids) == 4 and s["stop"] == G.STOP_BUDGET and s["complete"] is False
    out = answer(tiny, tr)       # the schema's fixed start, cut after four tokens
    assert out and ('{"name": "'.startswith(out) or out.startswith('{"name": "')), out


def test_nothing_to_generate_ends_without_steps(tiny):
    tr = grammar_run(tiny, "Say nothing.", "regex", "()", n=8, ignore_eos=True)    # only the empty text; no EOS
    assert tr.steps == [] and tr.extra["summary"]["stop"] == G.STOP_DONE
    tr = grammar_run(tiny, "Say nothing.", "regex", "()", n=8)                      # with EOS: one forced step
    assert len(tr.steps) == 1 and tr.final_ids[0] in tiny.eos_ids and tr.steps[0]["grammar"]["forced"]


@pytest.mark.slow
def test_eos_only_where_the_grammar_accepts(tiny):
    eos = sorted(tiny.eos_ids)
    con = G.Constraint(G.compile_grammar(tiny, "regex", "[0-9]+"), G.vocab_size(tiny), tiny.eos_ids, tiny.eos_ids,
                       "cpu")
    first = con.allowed()
    assert not first[eos].any() and first.sum() >= 10
    assert con.consume(tiny.tokenizer.encode("7")[0])
    after = con.allowed()
    assert after[eos].all() and after.sum() > len(eos)               # digits or the end
    tr = grammar_run(tiny, "A number.", "regex", "[0-9]+", n=16)
    for i, s in enumerate(tr.steps):
        eos_p = sum(c["p_raw"] or 0 for c in s["candidates"] if c["id"] in tiny.eos_ids)
        if i == 0:
            assert eos_p == 0 and not any(c["allowed"] for c in s["grammar"]["candidates_unconstrained"]
                                          if c["id"] in tiny.eos_ids)
    assert re.fullmatch("[0-9]+", answer(tiny, tr))


@pytest.mark.slow
def test_sampling_is_seeded_and_respects_the_grammar(tiny):
    outs = []
    for seed in (1, 1, 2):
        cfg = SamplingConfig(temperature=1.0, top_k=50, seed=seed)
        tr = grammar_run(tiny, "A date.", "regex", DATE, n=24, sampling=cfg)
        out = answer(tiny, tr)
        assert re.fullmatch(DATE, out) and tr.extra["summary"]["complete"]
        outs.append(tr.final_ids)
    assert outs[0] == outs[1]
    cfg = SamplingConfig(temperature=1.0, seed=4)
    tr = grammar_run(tiny, "A person.", "json", n=24, sampling=cfg)    # any JSON object: a prefix of one
    assert answer(tiny, tr).startswith("{")


# ---- views -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_trace(tiny):
    return grammar_run(tiny, "A date.", "regex", DATE, n=16)


def test_figures_and_rows(tiny_trace):
    steps = tiny_trace.steps
    last = len(steps) - 1
    for cur in (0, last):
        assert vz.candidates_figure(steps[cur]).data
        assert vz.run_figure(steps, cur).data
    rows = vz.wanted_rows(steps, last, n=5)
    assert [r["step"] for r in rows] == list(range(last, last - len(rows), -1))
    s = vz.run_summary(steps, last)
    assert s["steps"] == len(steps) and s["stop"] == tiny_trace.extra["summary"]["stop"]


def test_trace_strings_are_escaped(tiny_trace):
    obj = json.loads(tiny_trace.to_json())
    bad = "<img src=x onerror=alert(1)>"
    for s in obj["steps"]:
        s["token_text"] = s["grammar"]["wanted_text"] = bad
        for c in s["candidates"] + s["grammar"]["candidates_unconstrained"]:
            c["text"] = bad
    tr = T.loads(json.dumps(obj))
    for fig in (vz.candidates_figure(tr.steps[-1]), vz.run_figure(tr.steps, len(tr.steps) - 1)):
        blob = json.dumps(fig.to_plotly_json(), default=str)
        assert "<img" not in blob
    assert "&lt;img" in json.dumps(vz.candidates_figure(tr.steps[-1]).to_plotly_json(), default=str)


def test_replay_renderer_draws_a_saved_trace(tiny_trace):
    from streamlit.testing.v1 import AppTest

    def script(text):
        from engine import trace as T
        from engine.runner import TraceView
        from ui import renderers
        tr = T.loads(text)
        renderers.render(TraceView(tr, len(tr.steps) - 1), "t")
        renderers.render(TraceView(tr, 0), "u")
    at = AppTest.from_function(script, kwargs={"text": tiny_trace.to_json()}, default_timeout=60)
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 8 and len(at.dataframe) == 2   # AR figures + the grammar block, twice



def test_a_minimal_grammar_block_renders(tiny_trace):
    """Any block the schema lets through draws: no candidates, no probabilities, nothing allowed."""
    from streamlit.testing.v1 import AppTest
    obj = json.loads(tiny_trace.to_json())
    for s in obj["steps"]:
        s["grammar"] = {"allowed": 0, "vocab": 1, "allowed_share": 0, "removed_mass": 1, "wanted_id": 0,
                        "wanted_text": "", "wanted_p": None, "chosen_p_unconstrained": None, "forced": False,
                        "accepting": False, "candidates_unconstrained": [], "stop": None}

    def script(text):
        from engine import trace as T
        from engine.runner import TraceView
        from ui import renderers
        tr = T.loads(text)
        renderers.render(TraceView(tr, len(tr.steps) - 1), "t")
    at = AppTest.from_function(script, kwargs={"text": json.dumps(obj)}, default_timeout=60)
    at.run()
    assert not at.exception

# ---- the Search page -----------------------------------------------------------------------------------------
PAGE = "pages/9_Search.py"
KEY = "runner_grammar"


def _grammar_page():
    at = app_test(PAGE).run()
    assert not at.exception
    at.selectbox(key="search_method").set_value("grammar").run()
    assert not at.exception
    return at


def test_search_page_generates_under_a_grammar(embedded_lm):
    at = _grammar_page()
    assert at.text_area(key="grammar_grammar_text").value == json.dumps(G.example_schema(), indent=2)
    at.selectbox(key="grammar_grammar_kind").set_value("regex").run()
    assert at.text_area(key="grammar_grammar_text").value == DATE         # the example follows the kind
    at.text_area(key="grammar_prompt").input("When did the Apollo 11 landing happen? Give the date.")
    at.number_input(key="grammar_max_new").set_value(16)
    at.button(key="grammar_go").click().run()
    r = wait_done(at, KEY, 180)
    assert r.state == DONE and r.trace.steps[0]["kind"] == "ar" and "grammar" in r.trace.steps[0]
    assert re.fullmatch(DATE, answer(embedded_lm, r.trace))
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 4 and len(at.dataframe) >= 1
    assert any("Stopped" in m for m in shown(at.success) + shown(at.warning))


def test_search_page_example_and_bad_grammar(embedded_lm):
    at = _grammar_page()
    at.selectbox(key="grammar_grammar_example").set_value("EBNF: arithmetic").run()
    at.button(key="grammar_grammar_use").click().run()
    assert not at.exception
    assert at.selectbox(key="grammar_grammar_kind").value == "ebnf"
    assert at.text_area(key="grammar_grammar_text").value.startswith("root ::= expr")
    assert "arithmetic" in at.text_area(key="grammar_prompt").value
    at.selectbox(key="grammar_grammar_kind").set_value("regex").run()
    at.text_area(key="grammar_grammar_text").input(r"[0-9]{4").run()
    at.button(key="grammar_go").click().run()
    assert not at.exception
    assert any("does not compile" in m and "Invalid repetition count" in m for m in shown(at.error))
