"""The Lessons page: every part lands on a recorded step that shows what its text says, and every lesson
runs with no model loaded; odd links give a message."""
import pytest

from engine import models, remote
from engine import trace as T
from tests.conftest import app_test, shown
from ui.lessons import BY_KEY, LESSONS, TRACES

PAGE = "pages/8_Lessons.py"


def _part(key, title_start):
    lesson = BY_KEY[key]
    part = next(p for p in lesson.parts if p.title.startswith(title_start))
    tr = T.load(TRACES / f"{part.trace}.json")
    return tr, part.find(tr.steps, tr)


def test_every_part_finds_a_step_and_draws_it():
    for lesson in LESSONS:
        for part in lesson.parts:
            tr = T.load(TRACES / f"{part.trace}.json")
            cur = part.find(tr.steps, tr)
            assert 0 <= cur < len(tr.steps), (lesson.key, part.title)
            assert part.figures(tr.steps, cur, tr), (lesson.key, part.title)


def test_the_parts_show_their_point():
    tr, cur = _part("speculative", "Sampling")
    statuses = {n["status"] for n in tr.steps[cur]["nodes"]}
    assert {"rejected", "resampled"} <= statuses and tr.meta["params"]["sampling"]["temperature"] > 0
    tr, cur = _part("speculative", "A rejected draft")
    assert tr.steps[cur]["accepted_len"] == 0 and tr.steps[cur]["draft_len"] > 0
    tr, cur = _part("speculative", "Draft, then")
    assert tr.steps[cur]["accepted_len"] >= 3
    tr, cur = _part("kv", "An eviction")
    assert tr.steps[cur]["quality"]["agree"] is False
    tr, cur = _part("jacobi", "Guess a block")
    assert tr.steps[cur]["committed"] >= 2
    tr, cur = _part("jacobi", "Lookahead")
    assert tr.steps[cur]["accepted_len"] >= 2
    tr, cur = _part("diffusion", "Parallel commits")
    s = tr.steps[cur]
    assert sum(1 for p in s["new_positions"] if "<|" not in s["texts"][p]) >= 2
    tr, cur = _part("autoregressive", "Sampling")
    c = tr.steps[cur]["candidates"]
    assert any(x["p_warped"] == 0 and x["p_raw"] > 0 for x in c)


def test_the_search_parts_show_their_point():
    from viz import contrastive
    tr, cur = _part("search", "Beam search")
    assert tr.steps[cur]["beams"][0]["parent"] not in (0, -1)        # a beam that was behind took the lead
    tr, cur = _part("search", "Contrastive")
    assert contrastive.differs(tr.steps[cur])
    tr, cur = _part("search", "Context-aware")
    assert "changed" in tr.steps[cur]["events"] and "Rome" in tr.final_text
    tr, cur = _part("search", "Cautious")
    assert tr.steps[cur]["branched"] and tr.steps[cur]["n_trials"] >= 5
    tr, cur = _part("search", "A grammar")
    assert tr.steps[cur]["grammar"]["removed_mass"] > 0.5
    import json
    json.loads(tr.final_text.replace("<|im_end|>", ""))                # the output parses


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a lesson must not need a model")
    monkeypatch.setattr(models, "load", refuse)
    monkeypatch.setattr(remote, "decoder", refuse)


@pytest.mark.slow
@pytest.mark.parametrize("key", [lesson.key for lesson in LESSONS])
def test_each_lesson_walks_through_with_no_model(key, no_model):
    at = app_test(PAGE)
    at.query_params["lesson"] = key
    at.run()
    n = len(BY_KEY[key].parts)
    for k in range(n):
        assert not at.exception, at.exception
        assert not at.error, shown(at.error)
        assert at.subheader[0].value.startswith(f"{k + 1}.")
        assert at.get("plotly_chart") or at.markdown
        if k < n - 1:
            at.button(key="lesson_next").click().run()
    assert at.button(key="lesson_next").disabled
    at.button(key="lesson_prev").click().run()
    assert at.subheader[0].value.startswith(f"{n - 1}.")
    at.toggle(key="lesson_presenter").set_value(True).run()
    assert not at.exception


@pytest.mark.slow
@pytest.mark.parametrize("lesson,part", [("nope", "1"), ("speculative", "99"), ("kv", "²"), ("<b>x</b>", "-1")])
def test_odd_links_give_a_message(lesson, part, no_model):
    at = app_test(PAGE)
    at.query_params["lesson"] = lesson
    at.query_params["part"] = part
    at.run()
    assert not at.exception
    assert at.warning and at.subheader[0].value.startswith("1.")
    assert not any("<b>" in w.value for w in at.warning)
