"""Beam search and diverse beam search (engine/methods/beam.py).

Beam search equals Hugging Face's generate(num_beams=...) on the embedded model (answer, n-best list and
scores), with and without a length penalty and for each early_stopping rule. Diverse beam search moved out of
transformers to a Hub repository (generate(num_beam_groups>1) asks for trust_remote_code and a download), so
it is checked against a reference written here from the paper's formula ("Diverse Beam Search", Vijayakumar
et al.: group g's beams maximise log p - lambda * Hamming overlap with the tokens groups 1..g-1 chose at the
same step), without a KV cache.
"""
from __future__ import annotations

import json

import pytest
import torch

from engine import run, trace as T
from engine.errors import MethodError, OptionError
from engine.sampling import SamplingConfig
from tests.conftest import make_tiny_lm

PROMPTS = ["What is 2 + 2? Answer with a number only.", "Reply with only the word yes.",
           "Translate 'good morning' into Spanish and German."]
N = 16


def hf_beams(lm, prompt, n, **kw):
    ids = lm.encode(prompt)
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                pad_token_id=lm.tokenizer.eos_token_id, eos_token_id=sorted(lm.eos_ids),
                                return_dict_in_generate=True, output_scores=True, **kw)
    return out, ids.shape[1]


@pytest.mark.parametrize("prompt,length_penalty,early_stopping,num_beams", [
    (PROMPTS[0], 1.0, "false", 4), (PROMPTS[1], 1.0, "false", 4), (PROMPTS[2], 1.0, "false", 4),
    (PROMPTS[0], 0.0, "false", 4), (PROMPTS[1], 0.0, "false", 4), (PROMPTS[2], 0.0, "false", 4),
    (PROMPTS[1], 2.0, "never", 4), (PROMPTS[0], 1.0, "true", 4), (PROMPTS[1], 1.0, "true", 5),
    (PROMPTS[0], 0.5, "never", 3)])
def test_beam_search_equals_hf_generate(embedded_lm, one_thread, prompt, length_penalty, early_stopping, num_beams):
    lm = embedded_lm
    tr = run.run(lm, "beam", prompt, max_new_tokens=N, options={
        "num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": early_stopping})
    hf_stop = {"false": False, "true": True}.get(early_stopping, early_stopping)
    out, L = hf_beams(lm, prompt, N, num_beams=num_beams, num_return_sequences=num_beams,
                      length_penalty=length_penalty, early_stopping=hf_stop)
    nbest = tr.extra["nbest"]
    assert tr.final_ids == nbest[0]["ids"]
    assert len(nbest) == num_beams
    pad = lm.tokenizer.eos_token_id
    for h, row, score in zip(nbest, out.sequences, out.sequences_scores):
        gen = row[L:].tolist()
        assert gen[:len(h["ids"])] == h["ids"] and all(t == pad for t in gen[len(h["ids"]):])
        assert h["score"] == pytest.approx(float(score), abs=1e-4)
    # the answer alone (num_return_sequences=1): the tokens HF returns, EOS included
    best = lm.model.generate(lm.encode(prompt), attention_mask=torch.ones_like(lm.encode(prompt)), max_new_tokens=N,
                             num_beams=num_beams, do_sample=False, length_penalty=length_penalty,
                             early_stopping=hf_stop,
                             pad_token_id=pad, eos_token_id=sorted(lm.eos_ids))
    assert tr.final_ids == best[0, L:].tolist()
    assert tr.counters.target_forwards == len(tr.steps)      # the prefill, then one forward per step for all beams
    T.loads(tr.to_json())                                     # the records pass the schema


# ---- diverse beam search: a reference from the paper's formula, no KV cache ----------------------------
def reference_diverse(lm, prompt, n, num_beams, groups, lam, length_penalty):
    """Group by group at each step: candidate score = beam score + log p(token) - lam * (times earlier groups'
    continuing beams took `token` at this step); a group keeps its best 2 x group size candidates; those among
    its best group-size that end (EOS or the budget) become hypotheses (score / length ** length_penalty; a
    group keeps its best group-size); its best group-size that do not end go on. Run to the budget (with
    early_stopping 'never' and length_penalty >= 0 stopping earlier cannot change the result)."""
    eos = set(lm.eos_ids)
    g = num_beams // groups
    k = max(2, 1 + len(eos)) * g
    prompt_ids = lm.encode(prompt)[0].tolist()
    beams = [[(0.0, [])] for _ in range(groups)]
    done = [[] for _ in range(groups)]
    for t in range(n):
        last = t + 1 == n
        taken: dict[int, int] = {}
        for i in range(groups):
            ids = torch.tensor([prompt_ids + seq for _, seq in beams[i]])
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(input_ids=ids).logits[:, -1].float(), -1)
            for tok, times in taken.items():
                logp[:, tok] -= lam * times
            cands = []
            for b, (score, seq) in enumerate(beams[i]):
                vals, toks = torch.topk(logp[b] + score, k)
                cands += [(float(v), seq + [int(x)]) for v, x in zip(vals, toks)]
            cands.sort(key=lambda c: -c[0])
            cands = cands[:k]
            for score, seq in cands[:g]:
                if seq[-1] in eos or last:
                    done[i].append((score / len(seq) ** length_penalty, seq))
            done[i] = sorted(done[i], key=lambda h: -h[0])[:g]
            beams[i] = [c for c in cands if c[1][-1] not in eos][:g]
            for _, seq in beams[i]:
                taken[seq[-1]] = taken.get(seq[-1], 0) + 1
    return sorted((h for d in done for h in d), key=lambda h: -h[0])


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_lm(seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("num_beams,groups,lam,length_penalty", [(4, 2, 0.5, 1.0), (6, 3, 2.0, 0.0),
                                                                  (4, 4, 1.0, 1.0)])
def test_diverse_beam_search_equals_the_paper_reference_tiny(tiny, one_thread, num_beams, groups, lam, length_penalty):
    prompt = "Once upon a time"
    tr = run.run(tiny, "beam", prompt, max_new_tokens=8, options={
        "num_beams": num_beams, "num_beam_groups": groups, "diversity_penalty": lam,
        "length_penalty": length_penalty, "early_stopping": "never"})
    ref = reference_diverse(tiny, prompt, 8, num_beams, groups, lam, length_penalty)
    got = [(h["score"], h["ids"]) for h in tr.extra["nbest"]]
    assert [ids for _, ids in got] == [ids for _, ids in ref]
    assert [s for s, _ in got] == pytest.approx([s for s, _ in ref], abs=1e-4)
    assert tr.final_ids == ref[0][1]


def test_diverse_beam_search_equals_the_reference_on_the_embedded_model(embedded_lm, one_thread):
    lm, prompt = embedded_lm, PROMPTS[0]
    ids = lm.encode(prompt)
    with pytest.raises(ValueError, match="trust_remote_code"):   # HF's group beam search now lives on the Hub
        lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, num_beams=4,
                          num_beam_groups=2, diversity_penalty=0.5, do_sample=False)
    tr = run.run(lm, "beam", prompt, max_new_tokens=12, options={
        "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.7, "early_stopping": "never"})
    ref = reference_diverse(lm, prompt, 12, 4, 2, 0.7, 1.0)
    assert [h["ids"] for h in tr.extra["nbest"]] == [ids for _, ids in ref]
    plain = run.run(lm, "beam", prompt, max_new_tokens=12, options={"num_beams": 4, "early_stopping": "never"})
    assert {tuple(h["ids"]) for h in tr.extra["nbest"]} != {tuple(h["ids"]) for h in plain.extra["nbest"]}


# ---- the engine's contract on a tiny model ----------------------------------------------------------
def test_one_forward_per_step_over_all_beams_and_one_cache_row_each(tiny, one_thread, monkeypatch):
    shapes = []
    real = tiny.model.forward

    def spy(*a, **kw):
        out = real(*a, **kw)
        cache = kw.get("past_key_values")
        shapes.append((tuple(kw["input_ids"].shape), cache.layers[0].keys.shape[0]))
        return out
    monkeypatch.setattr(tiny.model, "forward", spy)
    tr = run.run(tiny, "beam", "Once upon a time", max_new_tokens=6, options={"num_beams": 3})
    L = len(tr.meta["prompt_ids"])
    assert shapes[0] == ((1, L), 1)                               # the prompt once
    assert all(s == ((3, 1), 3) for s in shapes[1:])              # then [beams, 1] against one cache row per beam
    assert len(shapes) == tr.counters.target_forwards == len(tr.steps)
    assert tr.extra["summary"]["kv_bytes_peak"] == 3 * (L + len(tr.steps) - 1) * tiny.kv_bytes_per_token()


def test_one_beam_is_greedy(tiny, one_thread):
    want = run.run(tiny, "ar", "Once upon a time", max_new_tokens=10).final_ids
    assert run.run(tiny, "beam", "Once upon a time", max_new_tokens=10, options={"num_beams": 1}).final_ids == want


def test_step_records_tree(tiny, one_thread):
    tr = run.run(tiny, "beam", "The quick brown fox", max_new_tokens=7,
                 options={"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0})
    obj = json.loads(tr.to_json())
    T.loads(json.dumps(obj))
    steps = obj["steps"]
    assert all(s["kind"] == "beam" for s in steps)
    assert all(c["parent"] == -1 for c in steps[0]["beams"] + steps[0]["pruned"])
    for prev, s in zip(steps, steps[1:]):
        for c in s["beams"] + s["pruned"] + s["finished"]:
            assert 0 <= c["parent"] < len(prev["beams"])
        assert len(s["beams"]) == 4 or s["done"]
        for grp in (0, 1):   # the groups' beams, best first
            sc = [b["score"] for b in s["beams"] if b["group"] == grp]
            assert sc == sorted(sc, reverse=True)
        assert all(p["penalty"] > 0 for p in s["beams"] if p["group"] == 1 and "penalty" in p)
    last = steps[-1]
    assert last["done"] and last["stop"]
    ref = last["nbest"][0]
    assert steps[ref["step"]]["finished"][ref["slot"]]["kept"]
    assert [h["score"] for h in last["nbest"]] == sorted((h["score"] for h in last["nbest"]), reverse=True)


@pytest.mark.parametrize("options,sampling,match", [
    ({"num_beams": 0}, None, r"num_beams must be an integer in 1\.\.32"),
    ({"num_beams": 33}, None, r"num_beams must be an integer in 1\.\.32"),
    ({"num_beams": 4, "num_beam_groups": 3}, None, r"num_beam_groups must divide num_beams.*try 1, 2, 4"),
    ({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.0}, None, r"diversity_penalty must be > 0"),
    ({"diversity_penalty": -1.0, "num_beam_groups": 2}, None, r"diversity_penalty must be"),
    ({"length_penalty": float("nan")}, None, r"length_penalty"),
    ({"early_stopping": "maybe"}, None, r"early_stopping must be one of"),
    ({}, SamplingConfig(temperature=0.7), r"set temperature to 0"),
])
def test_bad_options_refused_before_any_forward(tiny, options, sampling, match, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a forward ran")
    monkeypatch.setattr(tiny.model, "forward", boom)
    with pytest.raises((OptionError, MethodError), match=match):
        run.prepare(tiny, "beam", "Hello", max_new_tokens=4, options=options, sampling=sampling)


def test_diversity_penalty_without_groups_is_reported_ignored(tiny, one_thread):
    tr, _ = run.prepare(tiny, "beam", "Hello", max_new_tokens=2, options={"diversity_penalty": 2.0})
    assert "diversity_penalty" in tr.meta.get("ignored_options", {})
