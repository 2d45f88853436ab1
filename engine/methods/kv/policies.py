"""KV eviction policies: one small class each, kvpress-style (a score per cached entry; keep the best).

Every policy sees, per layer, tensors for its batch rows: keys [b, Hkv, n, D], the original
positions of the cached entries [b, Hkv, n], and (if `needs_attention`) the attention
probabilities of every query fed, [b, Hkv, g, c, n] (g query heads share a KV head). It keeps
per-entry state whose last dimension is the cache entry, so that eviction gathers it with the
cache. `select` returns (scores, protected, keep_idx): higher score = keep; protected entries
(sinks / recent window) are always kept; keep_idx [b, Hkv, n_keep] is sorted (chronological).

Definitions (what each keeps when the cache holds n > n_keep entries):
- full: never evicts.
- random: n_keep entries chosen uniformly at random, independently per head (the baseline).
- streaming_llm: the first n_sink positions plus the n_keep - n_sink most recent ones.
- h2o: the `window` most recent plus the n_keep - window entries with the largest attention
  accumulated over all queries so far (per KV head: summed over its query heads).
- snapkv: the `window_size` most recent (default 64, as kvpress) plus the top entries by the
  attention the last `window_size` queries gave them (summed over the window and the group's query
  heads), average-pooled with `kernel_size` over the entries outside the window only (kvpress's
  SnapKVPress.score: the window's own votes never leak into the entries just before it). At
  prefill this is SnapKV's observation window; during decoding the window slides with the newest
  queries.
- tova: the entries with the highest attention from the current (last) query, averaged over
  all query heads of the layer: one kept set per layer, as in TOVA.
- l2norm: the keys with the lowest L2 norm (per head); no attention needed.
- lazy_eviction (LazyEviction-style recurrence): a key is "hit" by a query when its attention
  (mean over the group's query heads) is >= hit_threshold x uniform (1 / visible keys). Each
  entry tracks its last hit and its maximum recurrence interval (MRI: longest gap between
  consecutive hits, creation counting as a hit). Score = [steps since last hit <= MRI]
  (still expected to recur) + mean attention received per query; plus n_sink sinks and the
  `window` most recent protected. The cache still shrinks to the budget every step (no lag).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.options import Components, Opt

PROTECT_BONUS = 1e12
MAX_BUDGET = 16384
SNAPKV_WINDOW = 64   # kvpress's SnapKVPress default (the SnapKV paper uses 32-64)
# The registry of policies, read like the tuple of their names. A new policy is one class registered
# here with its options: the KV method, its CLI flags and the page's widgets pick it up.
POLICIES = Components("policy")

N_SINK = Opt(4, "attention-sink tokens always kept", min=0, max=1024)
WINDOW = Opt(-1, "recent window always kept", min=0, max=MAX_BUDGET, special={-1: "half the budget"})


class Policy:
    name = "base"
    needs_attention = False
    # per-entry state: name -> fill value for new entries (tensors [b, Hkv, *, n])
    entry_state: dict[str, float] = {}

    def __init__(self, n_layers: int, n_sink: int = 4, window: int = 16, window_size: int = SNAPKV_WINDOW,
                 kernel_size: int = 5, hit_threshold: float = 1.0, seed: int = 0):
        self.n_sink, self.window, self.window_size = n_sink, window, window_size
        self.kernel_size, self.hit_threshold = kernel_size, hit_threshold
        self.s: list[dict[str, torch.Tensor]] = [dict() for _ in range(n_layers)]
        self.gen = torch.Generator().manual_seed(int(seed))

    # -- state plumbing
    def extend(self, layer, q, rows_n, hkv, device):
        st = self.s[layer]
        for name, fill in self.entry_state.items():
            if name not in st:
                st[name] = self._new_state(name, rows_n, hkv, 0, device)
            t = st[name]
            pad = torch.full((*t.shape[:-1], q), fill, dtype=t.dtype, device=t.device)
            st[name] = torch.cat([t, pad], -1)

    def _new_state(self, name, b, hkv, n, device):
        return torch.zeros(b, hkv, n, device=device)

    def gather(self, layer, idx):
        st = self.s[layer]
        for name in self.entry_state:
            t = st[name]
            ix = idx.reshape(*idx.shape[:2], *([1] * (t.dim() - 3)), idx.shape[-1]).expand(*t.shape[:-1], idx.shape[-1])
            st[name] = t.gather(-1, ix)

    def observe(self, layer, probs, q_pos, visible, pos):
        """probs [b, Hkv, g, c, n] of c queries at original positions q_pos [c]."""

    def after_observe(self, layer, keys, pos, latest):
        pass

    # -- the policy
    def scores(self, layer, keys, pos, latest) -> torch.Tensor:
        raise NotImplementedError

    def protected(self, layer, pos, n_keep, latest) -> torch.Tensor | None:
        return None

    def preview(self, layer, keys, pos, n_keep, latest):
        """Scores and protection without evicting (for the step record); draws no random numbers."""
        return self.scores(layer, keys, pos, latest).to(torch.float64), self.protected(layer, pos, n_keep, latest)

    def select(self, layer, keys, pos, n_keep, latest):
        sc = self.scores(layer, keys, pos, latest).to(torch.float64)
        prot = self.protected(layer, pos, n_keep, latest)
        comb = sc if prot is None else torch.where(prot, PROTECT_BONUS + pos.to(torch.float64), sc)
        idx = comb.topk(n_keep, dim=-1).indices.sort(-1).values
        return sc, prot, idx

    # helpers
    def _recent(self, pos, r, latest):
        return pos > latest - r if r > 0 else torch.zeros_like(pos, dtype=torch.bool)

    def _sinks(self, pos, k):
        return pos < k


@POLICIES.register("full", "no eviction (the reference)")
class Full(Policy):
    name = "full"

    def scores(self, layer, keys, pos, latest):
        return torch.ones(pos.shape, device=pos.device)


@POLICIES.register("random", "random entries, per head (the baseline every policy must beat)")
class Random(Policy):
    name = "random"

    def preview(self, layer, keys, pos, n_keep, latest):
        return torch.zeros(pos.shape, dtype=torch.float64), None

    def scores(self, layer, keys, pos, latest):
        return torch.rand(pos.shape, generator=self.gen).to(pos.device)


@POLICIES.register("streaming_llm", "the first n_sink tokens + the most recent ones (StreamingLLM)",
                   options={"n_sink": N_SINK})
class StreamingLLM(Policy):
    name = "streaming_llm"

    def scores(self, layer, keys, pos, latest):
        # score = recency; sinks protected
        return pos.float()

    def protected(self, layer, pos, n_keep, latest):
        sinks = min(self.n_sink, n_keep)
        return self._sinks(pos, sinks) | self._recent(pos, n_keep - sinks, latest)


@POLICIES.register("h2o", "recent window + heavy hitters by accumulated attention (H2O)",
                   options={"window": WINDOW})
class H2O(Policy):
    name = "h2o"
    needs_attention = True
    entry_state = {"acc": 0.0}

    def observe(self, layer, probs, q_pos, visible, pos):
        self.s[layer]["acc"] += probs.sum(dim=(2, 3))

    def scores(self, layer, keys, pos, latest):
        return self.s[layer]["acc"]

    def protected(self, layer, pos, n_keep, latest):
        return self._recent(pos, min(self.window, n_keep), latest)


@POLICIES.register("snapkv", "recent window + entries voted by the last window_size queries, pooled (SnapKV)",
                   options={"window_size": Opt(SNAPKV_WINDOW, "SnapKV observation window (queries that vote; also the "
                                                              "recent entries it keeps; kvpress's default 64)",
                                               min=1, max=MAX_BUDGET),
                            "kernel_size": Opt(5, "SnapKV average-pooling kernel over the votes (odd)", min=1, max=63)})
class SnapKV(Policy):
    """Scored as kvpress's SnapKVPress: the votes (attention of the last window_size queries) of the
    entries OUTSIDE the window are average-pooled among themselves (zero padding at both ends, as
    F.avg_pool1d), and the window is added back with the highest score (it is always kept). Votes are
    sums over the window's queries and the KV group's query heads, kvpress takes means: the same order.
    The window is the newest window_size cache entries (always kept, so always the last ones)."""
    name = "snapkv"
    needs_attention = True
    entry_state = {"obs": 0.0}   # [b, Hkv, w, n]: the last window_size queries' attention rows

    def _new_state(self, name, b, hkv, n, device):
        return torch.zeros(b, hkv, 0, n, device=device)

    def observe(self, layer, probs, q_pos, visible, pos):
        rows = probs.sum(2)  # [b, Hkv, c, n]
        st = self.s[layer]
        st["obs"] = torch.cat([st["obs"], rows], 2)[:, :, -self.window_size:]

    def scores(self, layer, keys, pos, latest):
        votes = self.s[layer]["obs"].sum(2)  # [b, Hkv, n]
        b, h, n = votes.shape
        outside = votes[..., :max(0, n - self.window_size)]
        m = outside.shape[-1]
        if m == 0:
            return torch.ones_like(votes)
        if self.kernel_size > 1:
            outside = F.avg_pool1d(outside.reshape(b * h, 1, m), self.kernel_size, stride=1,
                                   padding=self.kernel_size // 2).reshape(b, h, m)
        top = outside.amax(-1, keepdim=True).expand(b, h, n - m)
        return torch.cat([outside, top], -1)

    def protected(self, layer, pos, n_keep, latest):
        return self._recent(pos, min(self.window_size, n_keep), latest)


@POLICIES.register("tova", "highest attention from the current token, averaged over heads (TOVA)")
class TOVA(Policy):
    name = "tova"
    needs_attention = True
    entry_state = {"last": 0.0}

    def observe(self, layer, probs, q_pos, visible, pos):
        # the last query's attention averaged over every query head of the layer, shared by all KV heads
        last = probs[:, :, :, -1].mean(dim=(1, 2), keepdim=False)  # [b, n]
        self.s[layer]["last"] = last[:, None, :].expand(-1, probs.shape[1], -1).clone()

    def scores(self, layer, keys, pos, latest):
        return self.s[layer]["last"]


@POLICIES.register("l2norm", "keys with the lowest L2 norm (no attention needed)")
class L2Norm(Policy):
    name = "l2norm"

    def scores(self, layer, keys, pos, latest):
        return -keys.float().norm(dim=-1)


@POLICIES.register("lazy_eviction", "sinks + recent + entries expected to be re-attended (recurrence interval, "
                   "LazyEviction-style)",
                   options={"n_sink": N_SINK, "window": WINDOW,
                            "hit_threshold": Opt(1.0, "attention >= this x uniform counts as a re-attention", min=0.0,
                                                 max=1000.0, min_open=True)})
class LazyEviction(Policy):
    name = "lazy_eviction"
    needs_attention = True
    entry_state = {"acc": 0.0, "last_hit": -1.0, "mri": 0.0, "born": -1.0}

    def extend(self, layer, q, rows_n, hkv, device):
        super().extend(layer, q, rows_n, hkv, device)

    def observe(self, layer, probs, q_pos, visible, pos):
        st = self.s[layer]
        # creation counts as a hit at the entry's own position
        new = st["born"] < 0
        if new.any():
            st["born"] = torch.where(new, pos.float(), st["born"])
            st["last_hit"] = torch.where(new, pos.float(), st["last_hit"])
        mean = probs.mean(2)  # [b, Hkv, c, n]
        st["acc"] += mean.sum(2)
        thr = self.hit_threshold / visible.float()  # [c]
        hits = mean >= thr[None, None, :, None]      # [b, Hkv, c, n]
        # a query cannot "re-hit" the entry it created
        qp = q_pos.float()[None, None, :, None]
        hits &= pos.float()[:, :, None, :] < qp
        times = torch.where(hits, qp.expand_as(mean), torch.full_like(mean, -1.0))
        prev = torch.cat([st["last_hit"][:, :, None, :], times[:, :, :-1]], 2).cummax(2).values
        gaps = torch.where(hits & (prev >= 0), qp - prev, torch.zeros_like(mean))
        st["mri"] = torch.maximum(st["mri"], gaps.max(2).values)
        st["last_hit"] = torch.maximum(st["last_hit"], times.max(2).values)

    def scores(self, layer, keys, pos, latest):
        st = self.s[layer]
        since = latest - st["last_hit"]
        expected = (since <= st["mri"]).float()
        seen_by = (latest - pos.float() + 1).clamp(min=1)
        return expected + st["acc"] / seen_by

    def protected(self, layer, pos, n_keep, latest):
        sinks = min(self.n_sink, n_keep)
        return self._sinks(pos, sinks) | self._recent(pos, min(self.window, n_keep - sinks), latest)


def make(name: str, n_layers: int, **kw) -> Policy:
    return POLICIES.get(name).obj(n_layers, **kw)
