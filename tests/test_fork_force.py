"""What-if forks that override a decoder's own decision (engine/fork.py): a speculative round's verdict
forced (force-accept a rejected drafted node, force-reject an accepted one: the branch is labelled not
lossless and equals greedy decoding of the forced prefix), and a Jacobi / lookahead branch started from
edited guesses (greedy output unchanged, the iterations it takes changed). Tiny random model, greedy."""
import pytest
import torch

from engine import fork, run
from engine.errors import InputError

PROMPT = "a b a b a b c d a b a b"
N = 16


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def spec(lm):
    # a 2.2 tree of recycled tokens: rounds with accepted and rejected nodes on the tiny model
    return run.run(lm, "speculative", PROMPT, max_new_tokens=N, options={"drafter": "token_recycling", "tree": "2.2"},
                   ignore_eos=True)


def _greedy(lm, ids: list[int], n: int) -> list[int]:
    out = []
    with torch.inference_mode():
        for _ in range(n):
            logits = lm.model(torch.tensor([ids + out])).logits[0, -1]
            out.append(int(logits.argmax()))
    return out


def _rounds_with(spec, pred):
    for k, rec in enumerate(spec.steps):
        for n in rec.get("nodes") or []:
            if n.get("id") and not n.get("appended") and pred(rec, n):
                yield k, rec, n


def _path(rec, i):
    by = {n["id"]: n for n in rec["nodes"] if n.get("id") and not n.get("appended")}
    out = []
    while i in by:
        out.append(by[i]["token"])
        i = by[i]["parent"]
    return out[::-1]


def _check_branch(lm, spec, k, branch, forced):
    before = fork.tokens_before(spec, k)
    got = fork.output_ids(branch)
    assert got[:before] == spec.final_ids[:before]
    assert got[before:before + len(forced)] == forced
    rest = got[before + len(forced):]
    assert rest == _greedy(lm, spec.meta["prompt_ids"] + got[:before + len(forced)], len(rest))
    assert branch.meta["fork"]["not_lossless"] and branch.meta["edited"]
    # one prefill of the forced prefix, then one target forward per round: no replay of the original
    assert branch.counters.target_forwards <= len(branch.steps) + 1


@pytest.mark.slow
def test_force_accept_a_rejected_node(one_thread, lm, spec):
    k, rec, node = next(_rounds_with(spec, lambda r, n: n["status"] == "rejected"))
    branch = fork.run_fork(lm, spec, k, force={"node": node["id"], "accept": True})
    forced = _path(rec, node["id"])
    assert branch.meta["fork"]["edit"]["force"]["tokens"] == forced
    _check_branch(lm, spec, k, branch, forced)
    assert fork.output_ids(branch) != spec.final_ids   # the target would not have written it


@pytest.mark.slow
def test_force_reject_an_accepted_node_commits_the_targets_next_best(one_thread, lm, spec):
    k, rec, node = next(_rounds_with(spec, lambda r, n: n["status"] == "accepted"))
    branch = fork.run_fork(lm, spec, k, force={"node": node["id"], "accept": False})
    path = _path(rec, node["id"])
    before = fork.tokens_before(spec, k)
    ctx = spec.meta["prompt_ids"] + spec.final_ids[:before] + path[:-1]
    with torch.inference_mode():
        top2 = lm.model(torch.tensor([ctx])).logits[0, -1].topk(2).indices.tolist()
    assert top2[0] == node["token"]            # the node was the target's choice (greedy accepted it)
    forced = path[:-1] + [top2[1]]             # rejected: the target's best other token instead
    assert branch.meta["fork"]["edit"]["force"]["rejected"] == node["token"]
    _check_branch(lm, spec, k, branch, forced)


def test_bad_forces_are_refused_before_any_forward(one_thread, lm, spec):
    k, rec, acc = next(_rounds_with(spec, lambda r, n: n["status"] == "accepted"))
    ar = run.run(lm, "ar", PROMPT, max_new_tokens=4, ignore_eos=True)
    for tr, step, force, words in (
            (spec, k, {"node": 999, "accept": True}, "not a drafted node"),
            (spec, k, {"node": 0, "accept": True}, "not a drafted node"),
            (spec, k, {"node": acc["id"], "accept": True}, "accepted already"),
            (spec, k, {"node": acc["id"], "accept": "yes"}, "true or false"),
            (spec, k, {"nod": 1}, "force is"),
            (spec, k, "node 1", "force is"),
            (ar, 1, {"node": 1, "accept": True}, "not speculative")):
        with pytest.raises(InputError, match=words):
            fork.prepare(lm, tr, step, force=force)
    # an old trace without the recorded alternative: force-reject says why, force-accept still works
    old = run.run(lm, "speculative", PROMPT, max_new_tokens=N, options={"drafter": "token_recycling", "tree": "2.2"},
                  ignore_eos=True)
    for rec in old.steps:
        for n in rec.get("nodes") or []:
            n.pop("alt", None)
    with pytest.raises(InputError, match="other choice"):
        fork.prepare(lm, old, k, force={"node": acc["id"], "accept": False})


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("jacobi", {"block_size": 4}),
                                            ("jacobi", {"block_size": 4, "variant": "gauss_seidel"}),
                                            ("lookahead", {"window_size": 3, "level": 3, "guess_set_size": 3})])
def test_edited_guesses_keep_greedy_output(one_thread, lm, method, options):
    orig = run.run(lm, method, PROMPT, max_new_tokens=N, options=options, ignore_eos=True)
    k = len(orig.steps) // 2
    before = fork.tokens_before(orig, k)
    for guesses in ([1, 2, 3], " b a b", [int(t) for t in orig.final_ids[before:before + 4]]):
        branch = fork.run_fork(lm, orig, k, guesses=guesses)
        assert fork.output_ids(branch) == orig.final_ids, (method, guesses)
        assert branch.meta["fork"]["edit"]["guesses"]["ids"]


def test_jacobi_guesses_that_are_the_answer_converge_at_once(one_thread, lm):
    orig = run.run(lm, "jacobi", PROMPT, max_new_tokens=N, options={"block_size": 4}, ignore_eos=True)
    k = 2
    before = fork.tokens_before(orig, k)
    right = orig.final_ids[before:before + 4]
    branch = fork.run_fork(lm, orig, k, guesses=right)
    first = branch.steps[0]
    assert first["guess_ids"][:4] == right and first["guess_source"][:4] == ["edited"] * 4
    assert first["accepted"] == 4             # every guess was already its own prediction
    # the recorded guesses of iteration k give the branch the original's iteration k exactly
    same = fork.run_fork(lm, orig, k, guesses=orig.steps[k]["guess_ids"])
    assert same.steps[0]["pred_ids"] == orig.steps[k]["pred_ids"]
    assert same.steps[0]["accepted"] == orig.steps[k]["accepted"]


def test_bad_guesses_are_refused(one_thread, lm):
    orig = run.run(lm, "jacobi", PROMPT, max_new_tokens=8, ignore_eos=True)
    ar = run.run(lm, "ar", PROMPT, max_new_tokens=4, ignore_eos=True)
    vocab = lm.model.config.vocab_size
    for tr, kw, words in ((orig, {"guesses": [vocab]}, "outside the vocabulary"),
                          (orig, {"guesses": []}, "give 1"),
                          (orig, {"guesses": ["x"]}, "integers"),
                          (orig, {"guesses": 3}, "token ids or a text"),
                          (orig, {"guesses": [1], "method": "ar"}, "runs ar"),
                          (ar, {"guesses": [1]}, "runs ar")):
        with pytest.raises(InputError, match=words):
            fork.prepare(lm, tr, 1, **kw)
