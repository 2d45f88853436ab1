"""Speculative decoding: greedy == autoregressive greedy for every drafter x tree shape on the real
model, lossless sampling (distribution test on a tiny model), KV compaction, clear errors."""
from __future__ import annotations

import itertools

import pytest
import torch

from engine import run
from engine.methods import MethodError
from engine.sampling import SamplingConfig

N = 24
PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Summarise in one sentence, repeating the key words: The cat sat on the mat. The cat was happy on the mat "
    "because the mat was warm and the cat liked warm mats.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n# write mul and div in the same style\n",
    "List three colours.",
]
DRAFTERS = ["draft_model", "early_exit", "layer_skip", "kangaroo", "prompt_lookup", "token_recycling", "trigram"]
SHAPES = ["chain", "2.2.2", "[[0],[1],[0,0],[0,1],[0,0,0],[1,0]]", "dynamic"]

pytestmark = pytest.mark.usefixtures("one_thread_module")



def options(drafter, tree):
    o = {"drafter": drafter, "tree": tree, "num_assistant_tokens": 4}
    # cheap drafts keep the test fast; acceptance on the real model comes from the table drafters
    if drafter == "draft_model":
        o["draft_model"] = "self:4"
    if drafter in ("early_exit", "kangaroo"):
        o["exit_layer"] = 4
    if drafter == "kangaroo":
        o["exit_threshold"] = 0.05
    if drafter == "layer_skip":
        o["skip_layers"] = "4-27"
    return o


@pytest.fixture(scope="module")
def ar_refs(embedded_lm):
    return {p: run.run(embedded_lm, "ar", p, max_new_tokens=N).final_ids for p in PROMPTS}


# every drafter x shape, prompts rotating so that every drafter meets every prompt
CASES = [(d, s, PROMPTS[i % len(PROMPTS)]) for i, (d, s) in enumerate(itertools.product(DRAFTERS, SHAPES))]


@pytest.mark.parametrize("drafter,tree,prompt", CASES,
                         ids=[f"{d}-{s[:8]}-p{PROMPTS.index(p)}" for d, s, p in CASES])
def test_greedy_equals_autoregressive(embedded_lm, ar_refs, drafter, tree, prompt):
    tr = run.run(embedded_lm, "speculative", prompt, max_new_tokens=N, options=options(drafter, tree))
    assert tr.final_ids == ar_refs[prompt]
    s = tr.extra["summary"]
    assert s["lossless"] is True
    # forwards: one prefill + one per round, and every round commits >= 1 token
    assert s["target_forwards"] == len(tr.steps) + 1
    assert sum(len(st["new_ids"]) for st in tr.steps) == len(tr.final_ids)
    assert abs(s["tau"] - len(tr.final_ids) / len(tr.steps)) < 1e-6


def test_prompt_lookup_accepts_on_input_grounded_prompt(embedded_lm, ar_refs):
    """The summarisation prompt repeats its input: copying must be accepted (tau > 1)."""
    p = PROMPTS[1]
    tr = run.run(embedded_lm, "speculative", p, max_new_tokens=N, options={"drafter": "prompt_lookup"})
    assert tr.final_ids == ar_refs[p]
    assert tr.extra["summary"]["tau"] > 1.3
    assert tr.counters.target_forwards < len(tr.final_ids)


def test_step_records(embedded_lm):
    tr = run.run(embedded_lm, "speculative", PROMPTS[0], max_new_tokens=12,
                 options={"drafter": "early_exit", "tree": "2.2"})
    for st in tr.steps:
        nodes = st["nodes"]
        assert nodes[0]["status"] == "root" and nodes[-1].get("appended")
        assert {n["status"] for n in nodes[1:-1]} <= {"accepted", "rejected", "unverified"}
        acc = [n for n in nodes if n["status"] == "accepted"]
        assert len(acc) == st["accepted_len"] and st["new_ids"][:len(acc)] == [n["token"] for n in acc]
        assert st["kv_dropped"] == st["tree_size"] - st["accepted_len"]
        assert ("draft_rejected" in st["events"]) == any(n["status"] == "rejected" for n in nodes)
        m = torch.tensor(st["mask"])
        assert m.shape == (len(nodes) - 1,) * 2 and bool(m.diagonal().all())
        for n in nodes[1:-1]:   # a node attends to its parent and the parent's ancestors
            assert m[n["id"], n["parent"]] == 1
            assert torch.equal(m[n["id"]][:n["id"]] | m[n["parent"]][:n["id"]], m[n["id"]][:n["id"]])
        assert st["draft_s"] >= 0 and st["verify_s"] > 0


def test_kv_cache_keeps_only_accepted_path(tiny_lm):
    """After a round the cache equals the cache of the committed sequence computed from scratch."""
    from transformers import DynamicCache
    from engine.kvcache import keep as keep_path
    from engine.methods.speculative import target_forward
    from engine.methods.speculative.trees import DraftTree
    lm = tiny_lm
    seq = [5, 17, 42, 9, 11]
    with torch.inference_mode():
        cache = DynamicCache()
        lm.model(input_ids=torch.tensor([seq[:-1]]), past_key_values=cache, use_cache=True)
        tree = DraftTree.rooted(seq[-1])
        a = tree.add(7, 0)
        b = tree.add(8, 0)
        tree.add(3, a)
        c = tree.add(4, b)
        tree.add(6, c)
        rows = target_forward(lm, tree, cache, len(seq) - 1)
        dropped = keep_path(cache, len(seq) - 1, [0, b, c])
        assert dropped == 3
        full = DynamicCache()
        out = lm.model(input_ids=torch.tensor([seq + [8, 4]]), past_key_values=full, use_cache=True)
        for la, lb in zip(cache.layers, full.layers):
            assert la.keys.shape == lb.keys.shape
            assert torch.allclose(la.keys, lb.keys, atol=1e-5) and torch.allclose(la.values, lb.values, atol=1e-5)
        # the tree logits at node c equal the plain causal logits after seq + [8, 4]
        assert torch.allclose(rows.logits(c), out.logits[0, -1].float(), atol=1e-4)
        assert torch.allclose(rows.all_logits()[c], out.logits[0, -1].float(), atol=1e-4)


@pytest.mark.parametrize("opts,msg", [
    ({"drafter": "nope"}, "drafter must be one of"),
    ({"tree": "2.x"}, "unknown tree shape"),
    ({"tree": "[[0,1]]"}, "prefix"),
    ({"drafter": "draft_model"}, "needs draft_model"),
    ({"drafter": "draft_model", "draft_model": "self:99"}, "self:K"),
    ({"drafter": "early_exit", "exit_layer": 2}, "exit_layer"),
    ({"drafter": "layer_skip", "skip_layers": "0-1"}, "keep at least one"),
    ({"drafter": "layer_skip", "skip_layers": "7"}, "outside"),
    ({"verify": "typical"}, "temperature"),
    ({"num_assistant_tokens": 0, "drafter": "early_exit"}, "num_assistant_tokens"),
    ({"schedule": "fast"}, "schedule"),
])
def test_bad_options_raise_clear_errors(tiny_lm, opts, msg):
    with pytest.raises(MethodError, match=msg):
        run.run(tiny_lm, "speculative", "Hello", max_new_tokens=4, options=opts)


def test_greedy_verify_with_sampling_is_an_error(tiny_lm):
    with pytest.raises(MethodError, match="temperature 0"):
        run.run(tiny_lm, "speculative", "Hello", max_new_tokens=4, options={"verify": "greedy"},
                sampling=SamplingConfig(temperature=1.0))


def test_mismatched_draft_tokenizer_is_a_clear_error(tiny_lm, tmp_path):
    from tests.conftest import make_tiny_lm
    other = make_tiny_lm(seed=1, vocab=len(tiny_lm.tokenizer) + 8)
    tok = other.tokenizer
    tok.add_tokens([f"<extra_{i}>" for i in range(8)])
    other.model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(MethodError, match="does not share the target's tokenizer"):
        run.run(tiny_lm, "speculative", "Hello", max_new_tokens=4,
                options={"drafter": "draft_model", "draft_model": str(tmp_path)})


@pytest.mark.slow
def test_separate_draft_model_from_disk_is_lossless(tiny_lm, tmp_path):
    from tests.conftest import make_tiny_lm
    draft = make_tiny_lm(seed=3, layers=1)
    draft.model.save_pretrained(tmp_path)
    draft.tokenizer.save_pretrained(tmp_path)
    ref = run.run(tiny_lm, "ar", "Once upon a time", max_new_tokens=16).final_ids
    for tree in ("chain", "2.2", "dynamic"):
        tr = run.run(tiny_lm, "speculative", "Once upon a time", max_new_tokens=16,
                     options={"drafter": "draft_model", "draft_model": str(tmp_path), "tree": tree})
        assert tr.final_ids == ref
        assert tr.counters.draft_forwards > 0


def test_heuristic_schedule_and_confidence_stop(embedded_lm, ar_refs):
    p = PROMPTS[0]
    tr = run.run(embedded_lm, "speculative", p, max_new_tokens=N,
                 options={"drafter": "early_exit", "schedule": "heuristic", "num_assistant_tokens": 3,
                          "confidence_threshold": 0.2})
    assert tr.final_ids == ar_refs[p]
    ks = [st["k"] for st in tr.steps]
    assert len(set(ks)) > 1   # the schedule moved the draft length


def test_typical_acceptance_is_labelled_lossy(tiny_lm):
    tr = run.run(tiny_lm, "speculative", "Hello there", max_new_tokens=8,
                 options={"drafter": "early_exit", "exit_layer": 1, "verify": "typical", "tree": "2.2"},
                 sampling=SamplingConfig(temperature=0.8, seed=0))
    assert tr.extra["summary"]["lossless"] is False
    assert all(st["lossless"] is False for st in tr.steps)
    assert len(tr.final_ids) == 8
