"""Lookahead decoding: greedy identical to autoregressive, the combined mask gives every token a valid causal
context, the KV cache keeps only accepted tokens, the pool is an LRU, sampling keeps the distribution."""
import random
from collections import Counter

import pytest
import torch
from transformers import DynamicCache

from engine import run
from engine.methods import MethodError
from engine.methods.lookahead import NgramPool, build_inputs, candidate_trie, keep_accepted_kv, verify
from engine.sampling import SamplingConfig
from engine.trace import loads
from viz import jacobi as vz

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Count from one to ten in words: one, two, three,",
]
N_TOKENS = 20


CONFIGS = [{}, {"window_size": 7, "level": 5, "guess_set_size": 7}, {"window_size": 1, "level": 3, "guess_set_size": 1},
           {"pool_from_prompt": False, "window_size": 3, "level": 6}]


@pytest.fixture(scope="module")
def ar_greedy(embedded_lm):
    return {p: run.run(embedded_lm, "ar", p, max_new_tokens=N_TOKENS).final_ids for p in PROMPTS}


@pytest.mark.parametrize("opts", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_greedy_identical_to_autoregressive(embedded_lm, ar_greedy, opts):
    for prompt in PROMPTS:
        tr = run.run(embedded_lm, "lookahead", prompt, max_new_tokens=N_TOKENS, options=opts)
        assert tr.final_ids == ar_greedy[prompt], (opts, prompt)
        assert sum(s["committed"] for s in tr.steps) == len(tr.final_ids) == tr.counters.generated_tokens
        assert tr.counters.target_forwards == len(tr.steps)


def test_repetitive_prompt_commits_more_than_one_token_per_forward(embedded_lm):
    prompt = PROMPTS[2]
    tr = run.run(embedded_lm, "lookahead", prompt, max_new_tokens=N_TOKENS)
    assert tr.counters.generated_tokens / tr.counters.target_forwards > 1.0
    assert any(s["accepted_len"] >= 2 for s in tr.steps)


def _chains(pending, levels, cands, cache_len):
    ids, pos, mask, lay = build_inputs(pending, levels, cands, cache_len, torch.float32, "cpu")
    allowed = mask[0, 0] == 0
    return ids[0].tolist(), pos[0].tolist(), allowed, lay


@pytest.mark.parametrize("sizes", [(1, [6]), (1, [5, 6]), (3, [4, 5, 5, 5]), (1, [2, 3, 3])])
def test_mask_gives_every_token_a_contiguous_causal_context(sizes):
    k, lens = sizes
    rnd = random.Random(0)
    levels = [[rnd.randrange(100) for _ in range(n)] for n in lens]
    cands = [tuple(rnd.randrange(100) for _ in range(3)) for _ in range(2)]
    cache_len = 5
    ids, pos, allowed, lay = _chains(list(range(k)), levels, cands, cache_len)
    T = len(ids)
    for r in range(T):
        seen = [c for c in range(cache_len)] + [pos[j] for j in range(T) if allowed[r, cache_len + j]]
        # exactly the positions 0..pos[r], each once: a valid left-to-right sequence ending at the token itself
        assert sorted(seen) == list(range(pos[r] + 1)), r
        assert allowed[r, cache_len + r]


def test_branch_logits_equal_plain_forward_of_each_chain(one_thread, tiny_lm):
    lm = tiny_lm
    rnd = random.Random(1)
    prefix = lm.encode("Lookahead decoding test")[0].tolist()
    cache = DynamicCache()
    with torch.inference_mode():
        lm.model(input_ids=torch.tensor([prefix[:-1]]), past_key_values=cache, use_cache=True)
        levels = [[rnd.randrange(1000) for _ in range(3)], [rnd.randrange(1000) for _ in range(4)],
                  [rnd.randrange(1000) for _ in range(4)]]
        cands = [(5, 6, 7), (5, 9, 11)]
        ids, pos, mask, lay = build_inputs([prefix[-1]], levels, cands, len(prefix) - 1, torch.float32, "cpu")
        out = lm.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=cache, use_cache=True)
        C = len(prefix) - 1
        flat = ids[0].tolist()
        for r in range(len(flat)):
            ctx = sorted((pos[0, j].item(), flat[j]) for j in range(len(flat)) if mask[0, 0, r, C + j] == 0)
            chain = prefix[:-1] + [t for _, t in ctx]
            ref = lm.model(input_ids=torch.tensor([chain])).logits[0, -1]
            assert torch.allclose(out.logits[0, r], ref, atol=1e-4), r


def test_keep_accepted_kv_equals_a_plain_prefix(one_thread, tiny_lm):
    lm = tiny_lm
    prefix = lm.encode("Key value cache")[0].tolist()
    C = len(prefix) - 1
    cands = [(11, 12, 13), (21, 22, 23)]
    levels = [[1, 2, 3], [4, 5, 6, 7]]
    with torch.inference_mode():
        cache = DynamicCache()
        lm.model(input_ids=torch.tensor([prefix[:-1]]), past_key_values=cache, use_cache=True)
        ids, pos, mask, lay = build_inputs([prefix[-1]], levels, cands, C, torch.float32, "cpu")
        lm.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=cache, use_cache=True)
        keep_accepted_kv(cache, C, 1, lay["cand_offsets"][1], 2)  # accept 21, 22
        ref = DynamicCache()
        lm.model(input_ids=torch.tensor([prefix + [21, 22]]), past_key_values=ref, use_cache=True)
        assert cache.get_seq_length() == ref.get_seq_length() == len(prefix) + 2
        for a, b in zip(cache.layers, ref.layers):
            assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)


def test_ngram_pool_is_lru_per_key():
    pool = NgramPool(3, 2)
    pool.add(1, (2, 3))
    pool.add(1, (4, 5))
    pool.add(1, (2, 3))          # refresh: (4, 5) is now the oldest
    pool.add(1, (6, 7))          # evicts (4, 5)
    assert pool.get(1) == [(2, 3), (6, 7)]
    assert pool.add_sequence([9, 8, 7, 6]) == [[9, 8, 7], [8, 7, 6]]
    assert pool.size() == 4 and pool.get(42) == []


@pytest.mark.slow
def test_sampled_verification_keeps_the_distribution():
    """First token ~ p_root; after accepting token 0 via the candidates, the next token ~ p of that branch."""
    g = torch.Generator().manual_seed(0)
    V = 5
    p_root = torch.tensor([0.35, 0.05, 0.3, 0.2, 0.1])
    p_after0 = torch.tensor([0.1, 0.5, 0.1, 0.2, 0.1])
    p_after2 = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    cands = [(0, 1), (2, 4), (0, 3)]
    to_logits = lambda p: p.log()
    cand_logits = [torch.stack([to_logits(p_after0), to_logits(torch.full((V,), 0.2))]),
                   torch.stack([to_logits(p_after2), to_logits(torch.full((V,), 0.2))]),
                   torch.stack([to_logits(p_after0), to_logits(torch.full((V,), 0.2))])]
    cfg = SamplingConfig(temperature=1.0)
    trials = 20000
    first, second = Counter(), Counter()
    for _ in range(trials):
        best, a, hits, lens, tests = verify(cands, to_logits(p_root), cand_logits, cfg, g)
        first[hits[0]] += 1
        if hits[0] == 0:
            second[hits[1]] += 1
    for t in range(V):
        assert abs(first[t] / trials - float(p_root[t])) < 0.015
    n0 = sum(second.values())
    for t in range(V):
        assert abs(second[t] / n0 - float(p_after0[t])) < 0.02


def test_bad_options_raise_before_model_work(one_thread, tiny_lm):
    for opts, word in (({"window_size": 0}, "window_size"), ({"level": 2}, "level"), ({"level": 17}, "level"),
                       ({"guess_set_size": 0}, "guess_set_size"), ({"pool_from_prompt": "yes"}, "pool_from_prompt")):
        with pytest.raises(MethodError, match=word):
            run.prepare(tiny_lm, "lookahead", "Hello", max_new_tokens=4, options=opts)


def test_records_window_pool_replay_and_figures(one_thread, tiny_lm):
    W, N, G = 4, 4, 3
    tr = run.run(tiny_lm, "lookahead", "a b a b a b a b", max_new_tokens=30,
                 options={"window_size": W, "level": N, "guess_set_size": G})
    ref = run.run(tiny_lm, "ar", "a b a b a b a b", max_new_tokens=30)
    assert tr.final_ids == ref.final_ids
    steps = loads(tr.to_json()).steps
    for i, s in enumerate(steps):
        f = s["fill_level"]
        assert f == min(i, N - 2)
        sizes = [len(lv["ids"]) for lv in s["window"]]
        L = W + N - 2 - f
        assert sizes == [L - 1] + [L] * f
        assert s["phase"] == ("warmup" if f < N - 2 else "lookahead")
        assert len(s["harvested"]) == (W if f == N - 2 else 0)
        assert all(len(c["ids"]) == N - 1 for c in s["candidates"]) and len(s["candidates"]) <= G
        pool = vz.replay_pool(steps, i, G)
        assert sum(len(v) for v in pool.values()) == s["pool_size"]
        if i + 1 < len(steps):  # the next step verifies exactly the pool entries for its last token
            nxt = steps[i + 1]
            assert [tuple(c["ids"]) for c in nxt["candidates"]] == pool.get(nxt["last_id"], [])
        assert vz.lookahead_window_figure(s, tr.final_ids).data
    assert len(vz.pool_table(steps, len(steps) - 1, G, str)) == steps[-1]["pool_size"]
    assert vz.progress_figure(steps).data
    assert vz.lookahead_stats(steps)["tokens"] == len(tr.final_ids)


def test_sampling_runs_and_is_reproducible(one_thread, tiny_lm):
    cfg = SamplingConfig(temperature=0.8, seed=3)
    a = run.run(tiny_lm, "lookahead", "x y x y x y", max_new_tokens=15, sampling=cfg)
    b = run.run(tiny_lm, "lookahead", "x y x y x y", max_new_tokens=15, sampling=cfg)
    assert a.final_ids == b.final_ids and len(a.final_ids) >= 1


# ---- the trie verification through speculative/verify.py equals the reference code's own loops ---------------
def _reference_greedy(cands, root_logits, cand_logits):
    """The reference's greedy rule, candidate by candidate (as hao-ai-lab/LookaheadDecoding verifies)."""
    y0 = int(root_logits.argmax())
    best, best_a, lens = -1, 0, []
    for g, (cnd, lg) in enumerate(zip(cands, cand_logits)):
        pred = lg.argmax(-1).tolist()
        a = 0
        if cnd[0] == y0:
            a = 1
            while a < len(cnd) and cnd[a] == pred[a - 1]:
                a += 1
        lens.append(a)
        if a > best_a:
            best, best_a = g, a
    if best < 0:
        return -1, 0, [y0], lens
    pred = cand_logits[best].argmax(-1).tolist()
    return best, best_a, list(cands[best][:best_a]) + [pred[best_a - 1]], lens


def _reference_sampled(cands, root_logits, cand_logits, cfg, gen):
    """The reference's sampled rule: per depth, the alive candidates' distinct tokens in turn, accept x
    with probability p(x), zero it in p on a rejection; none accepted -> draw from what is left."""
    from engine import sampling as S
    p = S.warp(root_logits, cfg).softmax(-1)
    alive, hits, tests, best = list(range(len(cands))), [], [], -1
    for d in range(len(cands[0]) if cands else 0):
        acc, tried = None, set()
        for g in alive:
            x = cands[g][d]
            if x in tried:
                continue
            tried.add(x)
            u = float(torch.rand((), generator=gen))
            tests.append((d, int(x), round(float(p[x]), 6), round(u, 6), u < float(p[x])))
            if u < float(p[x]):
                acc = x
                break
            p = p.clone()
            p[x] = 0.0
            p = p / p.sum()
        if acc is None:
            hits.append(int(S.sample(p, gen)))
            break
        hits.append(int(acc))
        alive = [g for g in alive if cands[g][d] == acc]
        best = alive[0]
        p = S.warp(cand_logits[best][d], cfg).softmax(-1)
    else:
        hits.append(int(S.sample(p, gen)))
    return best, len(hits) - 1, hits, tests


def _random_case(seed: int, V: int = 6, G: int = 5, depth: int = 3):
    """Candidates over a small vocabulary (so prefixes repeat), sharp logits so acceptance happens."""
    g = torch.Generator().manual_seed(seed)
    cands = [tuple(int(x) for x in torch.randint(0, 3, (depth,), generator=g)) for _ in range(G)]
    root = torch.randn(V, generator=g) * 3
    cand_logits = [torch.randn(depth, V, generator=g) * 3 for _ in cands]
    for g_, cnd in enumerate(cands):           # same prefix, same context: the same logits
        for h in range(g_):
            for d in range(depth):
                if cands[h][:d + 1] == cnd[:d + 1]:
                    cand_logits[g_][d] = cand_logits[h][d]
    return cands, root, cand_logits


def test_candidate_trie_shares_prefixes():
    tree, src = candidate_trie([(1, 2, 3), (1, 2, 4), (5, 6, 7), (1, 9, 9)])
    assert tree.tokens[1:] == [1, 2, 3, 4, 5, 6, 7, 9, 9]
    assert tree.parents[1:] == [0, 1, 2, 2, 0, 5, 6, 1, 8]
    assert src[1:] == [(0, 0), (0, 1), (0, 2), (1, 2), (2, 0), (2, 1), (2, 2), (3, 1), (3, 2)]


def test_trie_verification_equals_the_reference_rules():
    from engine.sampling import SamplingConfig as SC
    greedy, sampled = SC(), SC(temperature=0.9, top_k=4)
    accepted_some = 0
    for seed in range(200):
        cands, root, cl = _random_case(seed)
        best, a, committed, lens, tests = verify(cands, root, cl, greedy, None)
        assert (best, a, committed, lens) == _reference_greedy(cands, root, cl) and tests is None
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        best, a, committed, lens, tests = verify(cands, root, cl, sampled, g1)
        r_best, r_a, r_hits, r_tests = _reference_sampled(cands, root, cl, sampled, g2)
        assert (best, a, committed) == (r_best, r_a, r_hits), seed
        assert [(t["depth"], t["token"], round(t["p"], 6), round(t["u"], 6), t["accepted"]) for t in tests] == r_tests
        assert lens == [next((n for n in range(a) if c[n] != committed[n]), a) for c in cands]
        accepted_some += a > 0
    assert accepted_some > 20      # the cases exercise acceptance, not only the root token
