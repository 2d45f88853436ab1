"""Traces with branches (schema version 2): one JSON file holds the original and its what-if forks; version 1
files load unchanged; hostile branch entries are refused with a TraceError that says which and why."""
import copy
import json
from pathlib import Path

import pytest

from engine import fork, run
from engine import trace as T

PROMPT = "a b a b a b c d"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "traces"


@pytest.fixture(scope="module")
def tree(tiny_lm):
    orig = run.run(tiny_lm, "ar", PROMPT, max_new_tokens=8, ignore_eos=True)
    b1 = fork.run_fork(tiny_lm, orig, 3, token=9)
    b1.meta["fork"]["parent"] = 0
    b2 = fork.run_fork(tiny_lm, b1, 2, method="speculative", options={"drafter": "prompt_lookup"})
    b2.meta["fork"]["parent"] = 1
    orig.branches = [b1, b2]
    return orig


@pytest.mark.slow
def test_a_branched_trace_round_trips(tree, tmp_path):
    p = tmp_path / "t.json"
    tree.save(p)
    d = json.loads(p.read_text())
    assert d["schema_version"] == T.SCHEMA_VERSION == 2 and len(d["branches"]) == 2
    assert "schema_version" not in d["branches"][0]
    back = T.load(p)
    assert back.final_ids == tree.final_ids and len(back.branches) == 2
    for a, b in zip(back.branches, tree.branches):
        assert a.meta["fork"] == b.meta["fork"] and a.steps == b.steps
        assert fork.output_ids(a) == fork.output_ids(b)
    assert back.branches[1].meta["method"] == "speculative" and back.branches[1].meta["fork"]["parent"] == 1
    assert back.to_json() == tree.to_json()


def test_single_traces_old_and_new_load():
    for p in sorted(EXAMPLES.glob("*.json")):
        d = json.loads(p.read_text())
        assert d["schema_version"] == 1
        t = T.loads(p.read_bytes())
        assert t.branches == [] and "branches" not in t.to_dict()


def _hostile(tree, edit):
    d = copy.deepcopy(tree.to_dict())
    edit(d)
    return json.dumps(d)


@pytest.mark.parametrize("edit,words", [
    (lambda d: d.__setitem__("branches", {"a": 1}), "must be a list"),
    (lambda d: d.__setitem__("branches", [1]), "Branch 1 is not an object"),
    (lambda d: d.__setitem__("branches", d["branches"] * 40), "at most 64"),
    (lambda d: d["branches"][0]["meta"].pop("fork"), "Branch 1's meta.fork is missing"),
    (lambda d: d["branches"][0]["meta"]["fork"].__setitem__("parent", 1), "parent must be 0"),
    (lambda d: d["branches"][1]["meta"]["fork"].__setitem__("parent", 5), "parent must be 0"),
    (lambda d: d["branches"][0]["meta"]["fork"].__setitem__("parent", True), "parent must be 0"),
    (lambda d: d["branches"][0]["meta"]["fork"].__setitem__("at_step", 99), "at_step must be one of"),
    (lambda d: d["branches"][0]["meta"]["fork"].__setitem__("at_step", "3"), "at_step must be one of"),
    (lambda d: d["branches"][0]["meta"]["fork"].__setitem__("prefix_ids", ["x"]), "prefix_ids"),
    (lambda d: d["branches"][0].__setitem__("branches", []), "branches of its own"),
    (lambda d: d["branches"][0]["steps"][0].__setitem__("kind", "evil"), "Branch 1: Step 0 has an unknown kind"),
    (lambda d: d["branches"][1]["meta"].pop("method"), "Branch 2: The trace's meta has no 'method'"),
    (lambda d: d["branches"][0]["final"].__setitem__("token_ids", [1.5]), "Branch 1: 'final.token_ids'"),
])
def test_hostile_branches_are_refused(tree, edit, words):
    with pytest.raises(T.TraceError, match=words):
        T.loads(_hostile(tree, edit))


def test_the_aligned_view_and_the_tree_escape_trace_text():
    from viz import fork as vf
    evil = '<img src=x onerror=alert(1)>[link](http://x)'
    a = [vf.Tok(1, "ok", "own"), vf.Tok(2, evil, "own")]
    b = [vf.Tok(1, "ok", "inherited"), vf.Tok(3, evil, "edited")]
    html = vf.aligned_html([(evil, a, 1), ("branch 1", b, None)], 1, vf.first_divergence(a, b))
    assert "<img" not in html and "](" not in html and "first divergence at position 1" in html
    fig = vf.tree_figure([{"id": 0, "parent": None, "at": 0, "length": 2, "label": evil, "state": "done"},
                          {"id": 1, "parent": 0, "at": 1, "length": 2, "label": evil, "state": "done"}], selected=1)
    assert "<img" not in json.dumps(fig.to_plotly_json(), default=str)
    own = vf.own_tokens([{"kind": "speculative", "index": 0, "new_ids": [5, 6], "new_text": "ab"}], [5, 6])
    assert [t.text for t in own] == ["ab", "…"]
    assert vf.branch_tokens(a, {"prefix_ids": [1, 9], "edit": {"token": {"id": 9, "text": "z"}}}, []) == \
        [vf.Tok(1, "ok", "inherited"), vf.Tok(9, "z", "edited")]
