"""KV-cache eviction: equals the full cache when nothing must go, really evicts, policies keep what they say."""
import pytest
import torch

from engine import run
from engine.methods import MethodError
from engine.methods.kv import build_cache
from engine.methods.kv.cache import attention_probs, capture
from engine.methods.kv.policies import POLICIES, make
from engine.methods.kv.quality import teacher_forced

PROMPT = "The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs far away."
EVICTING = [p for p in POLICIES if p != "full"]


def _opts(policy, budget, **kw):
    o = {"policy": policy, "budget": budget, "window": 8, "window_size": 8, "kernel_size": 3, "n_sink": 4,
         "compare_full": False}
    o.update(kw)
    return o


@pytest.mark.slow
@pytest.mark.parametrize("policy,positions", [(p, "original") for p in POLICIES]
                         + [(p, "rerotate") for p in ("streaming_llm", "h2o", "tova")])
def test_budget_above_length_equals_full_cache(tiny_lm, policy, positions):
    ref = run.run(tiny_lm, "ar", PROMPT, max_new_tokens=12).final_ids
    tr = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=12, options=_opts(policy, 512, positions=positions))
    assert tr.final_ids == ref
    assert all(s["evicted_count"] == 0 and "kv_evicted" not in s["events"] for s in tr.steps)


@pytest.mark.parametrize("policy", ["h2o", "snapkv", "tova", "streaming_llm"])
def test_budget_above_length_equals_full_cache_real_model(embedded_lm, policy):
    ref = run.run(embedded_lm, "ar", "Name three rivers in Europe.", max_new_tokens=16).final_ids
    tr = run.run(embedded_lm, "kv", "Name three rivers in Europe.", max_new_tokens=16,
                 options=_opts(policy, 256, watch_layers="all", compare_full=True))
    assert tr.final_ids == ref
    assert tr.extra["summary"]["agreement_vs_full"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("policy", EVICTING)
def test_cache_really_shrinks_to_budget(tiny_lm, policy):
    budget = 24
    per_tok = tiny_lm.kv_bytes_per_token()
    tr = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=10, options=_opts(policy, budget, watch_layers="all"))
    prompt_len = len(tr.meta["prompt_ids"])
    assert prompt_len > budget
    for s in tr.steps:
        assert s["cache_len"] == budget
        assert s["kv_bytes"] == budget * per_tok          # measured from the tensors themselves
        assert s["kv_bytes_full"] == s["seq_len"] * per_tok
        assert sum(s["kv_bytes_per_layer"]) == s["kv_bytes"]
        for lay in s["layers"].values():
            assert all(len(h) == budget for h in lay["kept"])
            assert all(len(set(h)) == budget for h in lay["kept"])
        assert "kv_evicted" in s["events"]
    # prefill evicted prompt_len - budget per layer and head, then one per step
    slots = tr.steps[0]["slots"]
    assert tr.steps[0]["evicted_count"] == (prompt_len - budget) * slots
    assert all(s["evicted_count"] == slots for s in tr.steps[1:])


def test_cache_tensors_hold_only_kept_entries(tiny_lm):
    ec = build_cache(tiny_lm, ["h2o"], window=4)
    ids = tiny_lm.encode(PROMPT)
    with torch.inference_mode():
        ec.forward(ids)
        ec.evict_to(20)
        for _ in range(3):
            ec.forward(torch.tensor([[42]]))
            ec.evict_to(20)
    for lay, pos in zip(ec.cache.layers, ec.pos):
        assert lay.keys.shape[2] == lay.values.shape[2] == 20 == pos.shape[2]
    assert ec.cache.get_seq_length() == 20


@pytest.mark.slow
def test_prefill_and_decode_budgets_are_separate(tiny_lm):
    tr = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=6, options=_opts("streaming_llm", 16, prefill_budget=12))
    assert [s["cache_len"] for s in tr.steps] == [12, 13, 14, 15, 16, 16]
    tr = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=3, options=_opts("streaming_llm", 16, prefill_budget=-1))
    assert tr.steps[0]["cache_len"] == len(tr.meta["prompt_ids"])
    assert tr.steps[1]["cache_len"] == 16


@pytest.mark.slow
def test_streaming_keeps_sinks_and_recent_window(tiny_lm):
    budget, sinks = 20, 4
    tr = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=8, options=_opts("streaming_llm", budget, watch_layers="all"))
    for s in tr.steps:
        latest = s["seq_len"] - 1
        want = list(range(sinks)) + list(range(latest - (budget - sinks) + 1, latest + 1))
        for lay in s["layers"].values():
            for head in lay["kept"]:
                assert head == want


def _policy(name, n=8, **kw):
    p = make(name, 1, n_sink=kw.pop("n_sink", 2), window=kw.pop("window", 2), window_size=kw.pop("window_size", 2),
             kernel_size=kw.pop("kernel_size", 3), hit_threshold=kw.pop("hit_threshold", 1.0))
    p.extend(0, n, rows_n=1, hkv=2, device="cpu")
    return p


def _pos(n=8, h=2):
    return torch.arange(n)[None, None].expand(1, h, n).clone()


def _probs_from_rows(rows):
    """rows: list over queries of per-head attention vectors [Hkv][n] -> probs [1, Hkv, g=1, c, n]."""
    t = torch.tensor(rows, dtype=torch.float32)  # [c, Hkv, n]
    return t.permute(1, 0, 2)[None, :, None]


def test_h2o_keeps_heavy_hitters_by_accumulated_attention():
    p = _policy("h2o", window=2)
    n = 8
    # two queries; head 0 piles attention on positions 1 and 3, head 1 on 0 and 2
    q1 = [[0, .5, 0, .3, 0, 0, .2, 0], [.6, 0, .2, 0, 0, .1, 0, .1]]
    q2 = [[0, .4, 0, .4, .1, 0, 0, .1], [.3, 0, .5, 0, .1, 0, 0, .1]]
    p.observe(0, _probs_from_rows([q1, q2]), torch.tensor([6, 7]), torch.tensor([7, 8]), _pos(n))
    acc = p.s[0]["acc"][0]
    assert torch.allclose(acc[0], torch.tensor([0, .9, 0, .7, .1, 0, .2, .1]))
    _, prot, idx = p.select(0, torch.zeros(1, 2, n, 4), _pos(n), 4, latest=7)
    assert idx[0, 0].tolist() == [1, 3, 6, 7]   # recent 6, 7 + heavy 1, 3
    assert idx[0, 1].tolist() == [0, 2, 6, 7]
    assert prot[0, 0].tolist() == [False] * 6 + [True, True]


def test_snapkv_pools_window_votes():
    """kvpress's scoring: only the entries outside the window are pooled; the window is added back on top."""
    n = 10
    p = _policy("snapkv", n=n, window_size=2, kernel_size=3)
    rows = [[[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]] * 2, [[0, 0, 0, 0, 0, 0, 1, 0, 0, 0]] * 2,
            [[.5, 0, 0, 0, 0, 0, 0, 0, .5, 0]] * 2]
    # three queries: only the last two (the observation window) vote
    p.observe(0, _probs_from_rows(rows), torch.tensor([7, 8, 9]), torch.tensor([8, 9, 10]), _pos(n))
    votes = torch.tensor([.5, 0, 0, 0, 0, 0, 1, 0])  # outside the window: query 8 -> pos 6, query 9 -> pos 0
    pooled = torch.nn.functional.avg_pool1d(votes[None, None], 3, stride=1, padding=1)[0, 0]
    sc, _, idx = p.select(0, torch.zeros(1, 2, n, 4), _pos(n), 5, latest=9)
    assert torch.allclose(sc[0, 0, :8].float(), pooled)
    assert torch.allclose(sc[0, 0, 8:].float(), pooled.max().expand(2))
    # (pooling over every entry, position 7 would have picked up the window's vote for 8: 1/3 + 1/6)
    kept = set(idx[0, 0].tolist())
    # window (8, 9) + the 3 best pooled: 5, 6, 7 (1/3 each) beat 0, 1 (1/6)
    assert kept == {5, 6, 7, 8, 9}
    # position 3 was voted only by a query outside the window: never kept
    assert 3 not in kept


def test_l2norm_keeps_lowest_norm_keys():
    n = 6
    p = _policy("l2norm", n=n)
    keys = torch.zeros(1, 2, n, 4)
    norms = torch.tensor([[5., 1., 3., 0.5, 4., 2.], [1., 2., 3., 4., 5., 6.]])
    keys[..., 0] = norms
    _, _, idx = p.select(0, keys, _pos(n), 3, latest=5)
    assert idx[0, 0].tolist() == [1, 3, 5]
    assert idx[0, 1].tolist() == [0, 1, 2]


def test_tova_uses_last_query_averaged_over_heads():
    n = 6
    p = _policy("tova", n=n)
    rows = [[[.9, 0, 0, 0, 0, .1], [.9, 0, 0, 0, 0, .1]],         # an earlier query: ignored
            [[0, .4, .1, .2, .3, 0], [0, .2, .1, .4, .1, .2]]]
    p.observe(0, _probs_from_rows(rows), torch.tensor([4, 5]), torch.tensor([5, 6]), _pos(n))
    _, _, idx = p.select(0, torch.zeros(1, 2, n, 4), _pos(n), 3, latest=5)
    # mean over heads: [0, .3, .1, .3, .2, .1] -> keep 1, 3, 4 in both heads
    assert idx[0, 0].tolist() == [1, 3, 4] and idx[0, 1].tolist() == [1, 3, 4]


def test_lazy_eviction_tracks_recurrence_intervals():
    n = 8
    p = _policy("lazy_eviction", n=n, n_sink=1, window=1, hit_threshold=1.0)
    pos = _pos(n)
    # queries at 5, 6, 7: position 2 re-attended at 5 and 7 (interval 2), position 3 only at 5
    rows = []
    for qp in (5, 6, 7):
        r = [0.0] * n
        r[0] = 0.5
        if qp in (5, 7):
            r[2] = 0.3
        if qp == 5:
            r[3] = 0.2
        rest = 1 - sum(r)
        r[qp] += rest
        rows.append([r, r])
    p.observe(0, _probs_from_rows(rows), torch.tensor([5, 6, 7]), torch.tensor([6, 7, 8]), pos)
    st = p.s[0]
    assert st["last_hit"][0, 0, 2] == 7 and st["mri"][0, 0, 2] == 3   # born at 2, hit 5 (gap 3), hit 7 (gap 2)
    assert st["last_hit"][0, 0, 3] == 5 and st["mri"][0, 0, 3] == 2   # born at 3, hit at 5
    assert st["last_hit"][0, 0, 1] == 1 and st["mri"][0, 0, 1] == 0   # never re-attended
    sc, _, idx = p.select(0, torch.zeros(1, 2, n, 4), pos, 4, latest=7)
    # sink 0 and the newest (7) are protected; 2 is "due" (0 steps since its last hit), 3 has waited 2 <= MRI 2
    assert idx[0, 0].tolist() == [0, 2, 3, 7]


def test_random_is_per_head_and_seeded():
    a = _policy("random", n=32)
    _, _, ia = a.select(0, torch.zeros(1, 2, 32, 4), _pos(32), 8, latest=31)
    b = _policy("random", n=32)
    _, _, ib = b.select(0, torch.zeros(1, 2, 32, 4), _pos(32), 8, latest=31)
    assert torch.equal(ia, ib)
    assert ia[0, 0].tolist() != ia[0, 1].tolist()


def test_capture_leaves_outputs_unchanged_and_matches_eager_attention(tiny_lm):
    model = tiny_lm.model
    ids = tiny_lm.encode(PROMPT)
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with capture(model, range(model.config.num_hidden_layers)) as store:
            cap = model(input_ids=ids).logits
        from engine import attention
        assert attention.original(model) == "sdpa"
        assert torch.equal(plain, cap)
        before = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            eager = model(input_ids=ids, output_attentions=True)
        finally:
            model.set_attn_implementation(before)
        from transformers import DynamicCache
        for li in range(model.config.num_hidden_layers):
            # recompute keys as the cache would hold them
            c = DynamicCache(config=model.config)
            model(input_ids=ids, past_key_values=c, use_cache=True)
            probs = torch.cat([p for _, p in attention_probs(store["q"][li], c.layers[li].keys,
                                                             store["scaling"][li], chunk=7)], 3)
            b, hkv, g, q, n = probs.shape
            assert torch.allclose(probs.reshape(b, hkv * g, q, n), eager.attentions[li].float(), atol=1e-5)


def test_evicted_cache_equals_masked_full_attention(tiny_lm):
    """Decoding with the shrunken cache computes exactly attention over the kept set at original positions."""
    model = tiny_lm.model
    ids = tiny_lm.encode(PROMPT)[0]
    extra = torch.tensor([11, 22, 33, 44, 55, 66])
    seq = torch.cat([ids, extra])
    budget, sinks = 16, 4
    L = ids.shape[0]
    ec = build_cache(tiny_lm, ["streaming_llm"], n_sink=sinks)
    got = []
    kept_at = {}
    with torch.inference_mode():
        ec.forward(ids[None])
        ec.evict_to(budget)
        for t in range(L, seq.shape[0]):
            kept_at[t] = set(ec.pos[0][0, 0].tolist())
            got.append(ec.forward(seq[t:t + 1][None])[0, -1])
            ec.evict_to(budget)
        # reference: one forward over the whole sequence; query t sees the kept set at its step plus itself
        n = seq.shape[0]
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
        for t, kept in kept_at.items():
            mask[t] = False
            mask[t, sorted(kept | {t})] = True
        ref = model(input_ids=seq[None], attention_mask=mask[None, None]).logits[0]
    for i, t in enumerate(range(L, seq.shape[0])):
        assert torch.allclose(got[i], ref[t], atol=1e-4), t


@pytest.mark.parametrize("positions", ["original", "rerotate"])
def test_layer0_keys_sit_at_the_right_rope_positions(tiny_lm, positions):
    model = tiny_lm.model
    ids = tiny_lm.encode(PROMPT)[0]
    ec = build_cache(tiny_lm, ["h2o"], positions=positions, window=4)
    with torch.inference_mode():
        ec.forward(ids[None])
        ec.evict_to(12)
        for tok in (7, 8, 9):
            ec.forward(torch.tensor([[tok]]))
            ec.evict_to(12)
        seq = torch.cat([ids, torch.tensor([7, 8, 9])])
        kept = ec.pos[0][0]  # [Hkv, 12] original positions
        attn = model.model.layers[0].self_attn
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(seq[None]))
        k = attn.k_proj(h).view(1, seq.shape[0], -1, attn.head_dim).transpose(1, 2)  # [1, Hkv, n, D]
        for head in range(k.shape[1]):
            raw = k[:, head:head + 1, kept[head]]                            # [1, 1, 12, D]
            rot_pos = kept[head] if positions == "original" else torch.arange(12)
            cos, sin = model.model.rotary_emb(raw, rot_pos[None])
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
            _, want = apply_rotary_pos_emb(raw, raw, cos, sin)
            assert torch.allclose(ec.cache.layers[0].keys[:, head:head + 1], want, atol=1e-5)


def test_bad_options_raise_before_model_work(tiny_lm):
    bad = [
        {"policy": "lru"},
        {"budget": 0},
        {"policy": "streaming_llm", "budget": 4, "n_sink": 4},
        {"policy": "h2o", "budget": 16, "window": 16},
        {"policy": "snapkv", "budget": 16, "window_size": 16},
        {"policy": "snapkv", "kernel_size": 4},
        {"positions": "sideways"},
        {"watch_layers": "7"},
        {"prefill_budget": -2},
    ]
    for opts in bad:
        with pytest.raises(MethodError):
            run.prepare(tiny_lm, "kv", PROMPT, max_new_tokens=2, options=opts)  # before any forward


@pytest.mark.slow
def test_teacher_forced_batch_rows_are_independent(tiny_lm):
    ids = tiny_lm.encode(PROMPT + " " + PROMPT)[0].tolist()
    both = teacher_forced(tiny_lm, ids, ["tova", "streaming_llm"], 20, window=8)
    one = teacher_forced(tiny_lm, ids, ["streaming_llm"], 20, window=8)
    assert both["n_eval"] == len(ids) - 22
    assert abs(both["streaming_llm"]["nll"] - one["streaming_llm"]["nll"]) < 1e-4
    assert both["streaming_llm"]["agreement"] == one["streaming_llm"]["agreement"]
    assert both["tova"]["kv_bytes"] == 20 * tiny_lm.kv_bytes_per_token()


def test_step_records_for_the_view(tiny_lm):
    tr = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=4, options=_opts("h2o", 20, watch_layers="0,1",
                                                                         compare_full=True))
    s = tr.steps[1]
    lay = s["layers"]["0"]
    hkv = len(lay["kept"])
    assert len(lay["attn"]) == hkv * lay["group"]
    assert all(abs(sum(r) - 1) < 1e-2 for r in lay["attn"])
    assert all(len(r) == len(lay["cand_pos"][0]) for r in lay["attn"])
    for h in range(hkv):
        ev = {p for p, _ in lay["evicted"][h]}
        assert ev.isdisjoint(lay["kept"][h])
        assert ev | set(lay["kept"][h]) == set(lay["cand_pos"][h])
    assert len(s["kept_count"]) == s["seq_len"]
    assert sum(s["kept_count"]) == s["slots"] * s["cache_len"]
    assert s["quality"]["agreement"] is not None


@pytest.mark.slow
def test_viz_figures_from_a_saved_trace(tiny_lm):
    from engine import trace as T
    from viz import kv as vz
    tr = run.run(tiny_lm, "kv", PROMPT, max_new_tokens=5,
                 options=_opts("streaming_llm", 16, watch_layers="all", compare_full=True))
    steps = T.loads(tr.to_json()).steps  # the view works from JSON alone
    z, width = vz.eviction_matrix(steps, 0, 0)
    last = z[-1]
    n = steps[-1]["seq_len"]
    assert width == n
    assert last[:4] == [vz.SINK] * 4
    assert last[n - 1] == vz.NEWEST
    assert last.count(vz.EVICTED) == n - 16
    assert set(last[n - 12:n - 1]) == {vz.KEPT}
    frac, _ = vz.eviction_matrix(steps, "all", "all")
    assert frac[-1][:4] == [1.0] * 4 and frac[-1][5] == 0.0
    att, _ = vz.attention_matrix(steps, 1, 3)
    assert abs(sum(v for v in att[-1] if v == v) - 1) < 1e-2
    figs = [vz.eviction_map_figure(steps, 0, 1, cursor=2), vz.eviction_map_figure(steps, 0, "all"),
            vz.attention_heatmap_figure(steps, 0, 0), vz.score_bars_figure(steps[-1], 1, 0),
            vz.memory_figure({"a": steps}), vz.agreement_figure({"a": steps}),
            vz.quality_figure([{"policy": "h2o", "fraction": 0.25, "agreement": 0.8, "ppl": 9.0, "ppl_full": 8.0}])]
    assert all(len(f.data) >= 1 for f in figs)
    assert "<div" in vz.tokens_html(steps, 3)
