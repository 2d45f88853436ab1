"""SnapKV as kvpress scores it, and kvpress's compression_ratio, checked against a reference written
for this test from reading kvpress (NVIDIA/kvpress: SnapKVPress.score, ScorerPress.compress):

- the last window_size prompt queries' attention (softmax over every key, causal) is taken for the
  keys OUTSIDE the window only, averaged over those queries, average-pooled with kernel_size
  (zero padding), averaged over the query heads of each KV head, and the window is appended with
  the highest score, so it is always kept;
- the prompt of L tokens keeps max(1, int(L * (1 - compression_ratio))) entries per layer and head,
  the top scores; nothing is evicted afterwards.
"""
import pytest
import torch
import torch.nn.functional as F

from engine import run
from engine.errors import MethodError, OptionError

TEXT = (
    "Read this passage and continue it in the same style.\n\n"
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, and to assume among the powers of the earth, the separate and equal "
    "station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of "
    "mankind requires that they should declare the causes which impel them to the separation. We hold these "
    "truths to be self-evident, that all men are created equal, that they are endowed by their Creator with "
    "certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.")


def kvpress_kept(attn: torch.Tensor, n_kv: int, window: int, kernel: int, ratio: float) -> list[set[int]]:
    """attn: [Hq, L, L] one layer's attention probabilities over the prompt. Per KV head, the positions
    kvpress's SnapKV keeps."""
    hq, L, _ = attn.shape
    votes = attn[:, L - window:, :L - window].float().mean(1)                 # [Hq, L - window]
    pooled = F.avg_pool1d(votes[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
    per_kv = pooled.reshape(n_kv, hq // n_kv, L - window).mean(1)             # [Hkv, L - window]
    scores = torch.cat([per_kv, torch.full((n_kv, window), float(per_kv.max()))], -1)
    n_kept = max(1, int(L * (1 - ratio)))
    return [set(scores[h].topk(n_kept).indices.tolist()) for h in range(n_kv)]


def pooled_over_everything_kept(attn, n_kv, window, kernel, ratio):
    """The lab's scoring before issue 31: votes pooled over every entry, the window included."""
    hq, L, _ = attn.shape
    votes = attn[:, L - window:, :].float().sum(1)
    pooled = F.avg_pool1d(votes[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
    per_kv = pooled.reshape(n_kv, hq // n_kv, L).sum(1)
    per_kv[:, L - window:] = float("inf")
    n_kept = max(1, int(L * (1 - ratio)))
    return [set(per_kv[h].topk(n_kept).indices.tolist()) for h in range(n_kv)]


@pytest.fixture(scope="module")
def eager_attentions(embedded_lm):
    model = embedded_lm.model
    ids = embedded_lm.encode(TEXT)
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    return ids.shape[1], [a[0] for a in out.attentions]


@pytest.mark.parametrize("ratio,window,kernel", [(0.5, 64, 5), (0.7, 32, 5), (0.25, 16, 3)])
def test_snapkv_keeps_what_kvpress_keeps(embedded_lm, eager_attentions, ratio, window, kernel):
    L, attns = eager_attentions
    assert L > 140
    tr = run.run(embedded_lm, "kv", TEXT, max_new_tokens=1,
                 options={"policy": "snapkv", "compression_ratio": ratio, "window_size": window, "kernel_size": kernel,
                          "watch_layers": "all", "compare_full": False})
    step = tr.steps[0]
    n_kv = embedded_lm.model.config.num_key_value_heads
    assert step["cache_len"] == max(1, int(L * (1 - ratio)))
    differ_before = 0
    for li, attn in enumerate(attns):
        got = [set(h) for h in step["layers"][str(li)]["kept"]]
        assert got == kvpress_kept(attn, n_kv, window, kernel, ratio), li
        differ_before += sum(a != b for a, b in zip(pooled_over_everything_kept(attn, n_kv, window, kernel, ratio),
                                                    got))
    if kernel > 1:   # the reference tells the two scorings apart on this prompt
        assert differ_before > 0


@pytest.mark.slow
def test_compression_ratio_compresses_once_and_never_evicts_while_decoding(tiny_lm):
    prompt = TEXT[:400]
    L = tiny_lm.encode(prompt).shape[1]
    for policy, extra in (("snapkv", {"window_size": 8}), ("h2o", {}), ("tova", {}), ("streaming_llm", {})):
        tr = run.run(tiny_lm, "kv", prompt, max_new_tokens=5,
                     options={"policy": policy, "compression_ratio": 0.6, "compare_full": False, **extra})
        keep = max(1, int(L * 0.4))
        assert [s["cache_len"] for s in tr.steps] == [keep + i for i in range(5)], policy
        assert tr.steps[0]["evicted_count"] > 0 and all(s["evicted_count"] == 0 for s in tr.steps[1:])
        assert tr.extra["summary"]["compression_ratio"] == 0.6 and tr.extra["summary"]["retained"] == keep


def test_compression_ratio_and_a_budget_are_exclusive(tiny_lm):
    for given in ({"budget": 64}, {"prefill_budget": 20}, {"prefill_budget": -1}):
        with pytest.raises(OptionError, match="compression_ratio.*Give one of them"):
            run.prepare(tiny_lm, "kv", TEXT, max_new_tokens=2, options={"compression_ratio": 0.5, **given})
    for bad in (1.0, -0.1, 2):
        with pytest.raises(OptionError, match="compression_ratio"):
            run.prepare(tiny_lm, "kv", TEXT, max_new_tokens=2, options={"compression_ratio": bad})
    # what is kept must leave SnapKV room beyond its window
    with pytest.raises(MethodError, match="window_size"):
        run.prepare(tiny_lm, "kv", "a short prompt", max_new_tokens=2,
                    options={"policy": "snapkv", "compression_ratio": 0.5})
    # the full cache never compresses: the ratio is accepted and reported as having no effect
    tr, _ = run.prepare(tiny_lm, "kv", TEXT, max_new_tokens=2, options={"policy": "full", "compression_ratio": 0.5})
    assert "compression_ratio" in tr.meta["ignored_options"]


def test_snapkv_default_window_is_kvpress(tiny_lm):
    from engine import methods
    assert methods.get("kv").options["window_size"].default == 64


@pytest.mark.slow
def test_a_compression_ratio_trace_passes_the_schema(tiny_lm):
    from engine.trace import loads
    tr = run.run(tiny_lm, "kv", TEXT[:400], max_new_tokens=3,
                 options={"policy": "snapkv", "window_size": 8, "compression_ratio": 0.5, "watch_layers": "all"})
    back = loads(tr.to_json())
    assert [s["cache_len"] for s in back.steps] == [s["cache_len"] for s in tr.steps]
    assert back.steps[0]["budget"] == tr.steps[0]["cache_len"]
