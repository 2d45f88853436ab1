"""A KV cache that really evicts, and attention capture that leaves the model's outputs unchanged.

`EvictingCache` wraps a transformers `DynamicCache`. After each forward it asks one policy per
batch row which entries to keep and gathers `cache.layers[i].keys/.values` down to them, per
layer and per KV head (every head keeps the same number of entries, so the tensors stay
rectangular: `[batch, kv_heads, kept, head_dim]`). It tracks the original position of every
cached entry, so that:

- positions="original": keys keep the RoPE rotation of their original position and the next
  query is fed its true position (explicit `position_ids`);
- positions="rerotate": as StreamingLLM, positions are positions *inside the cache*: after each
  eviction every key is re-rotated to its new cache index (RoPE(a) R(b) = RoPE(a+b)) and the
  next query gets position = cache length.

Attention mask: for a single decode query, transformers' `create_causal_mask` sizes the mask
from the cache (`kv_length = cache_len + 1`, `q_offset = cache_len`), so with a shrunken cache
every kept key stays visible and nothing else is needed. Prefill runs on an empty cache.

Capture: `engine.attention.capture(model, layers)` stores the post-RoPE query of the watched
layers during this thread's forwards and calls the original attention unchanged (the model is
switched once, at load, to a per-call dispatcher, so another session sharing the model never sees
the capture). The probabilities are then recomputed
from the stored query and the cached keys: softmax(q K^T * scaling) with the causal mask,
chunked over queries for long prompts.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from engine.attention import capture, install as install_attention, kernels
from kernels import dispatch as KD


class CacheUnsupported(ValueError):
    """The model's attention cannot be handled by the evicting cache."""


# ----------------------------------------------------------------------------- capture
# engine.attention.capture records the post-RoPE queries of the watched layers in the calling thread
# only (the model is switched once, at load, to a dispatcher; no shared config is touched per step).

def attention_probs(query: torch.Tensor, keys: torch.Tensor, scaling: float, chunk: int = 128):
    """Yield (q_start, probs) with probs [B, Hkv, g, c, n] (float32) for query chunks.

    query [B, Hq, q, D] (the last q entries of the cache are these queries' own keys), keys
    [B, Hkv, n, D]. Query i (0-based among the q) sees cache entries j <= n - q + i.
    """
    b, hq, q, d = query.shape
    hkv, n = keys.shape[1], keys.shape[2]
    g = hq // hkv
    qg = query.reshape(b, hkv, g, q, d).float()
    kf = keys.float()
    for s in range(0, q, chunk):
        e = min(q, s + chunk)
        sc = torch.einsum("bhgqd,bhnd->bhgqn", qg[:, :, :, s:e], kf) * scaling
        if e - s > 1 or q > 1:
            qi = torch.arange(s, e, device=keys.device)[:, None]
            kj = torch.arange(n, device=keys.device)[None, :]
            sc = sc.masked_fill(kj > (n - q + qi), float("-inf"))
        yield s, sc.softmax(-1)


# ----------------------------------------------------------------------------- rotation

def _rope_inv_freq(model) -> torch.Tensor:
    cfg = model.config
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rtype = rp.get("rope_type", rp.get("type", "default")) if isinstance(rp, dict) else "default"
    if rtype not in ("default", "linear", "llama3"):
        raise CacheUnsupported(f"positions='rerotate' supports default / linear / llama3 RoPE, not '{rtype}'.")
    base = getattr(model, "model", model)
    rot = getattr(base, "rotary_emb", None)
    if rot is None or not hasattr(rot, "inv_freq"):
        raise CacheUnsupported("positions='rerotate' needs a model with a rotary embedding (model.model.rotary_emb).")
    return rot.inv_freq.float()


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys [B, H, n, D] by `delta` positions [B, H, n] (half-split RoPE layout)."""
    ang = delta.float()[..., None] * inv_freq.to(keys.device)  # [B, H, n, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    k = keys.float()
    half = k.shape[-1] // 2
    rot_half = torch.cat([-k[..., half:], k[..., :half]], -1)
    return (k * cos + rot_half * sin).to(keys.dtype)


# ----------------------------------------------------------------------------- the cache

class EvictingCache:
    """A DynamicCache plus, per layer, the original position of each cached entry [B, Hkv, n].

    `groups` is a list of (policy, rows): the policy decides for those batch rows.
    """

    def __init__(self, model, groups, positions: str = "original", watch: set[int] | None = None):
        cfg = model.config
        self.model = model
        self.n_layers = cfg.num_hidden_layers
        self.cache = DynamicCache(config=cfg)
        if any(getattr(self.cache, "is_sliding", [False])) or any(getattr(self.cache, "is_linear", [False])):
            raise CacheUnsupported("The evicting cache supports full-attention layers only (no sliding / linear).")
        if getattr(cfg, "attn_logit_softcapping", None):
            raise CacheUnsupported("Attention logit soft-capping is not supported by the attention capture.")
        self.groups = groups
        self.positions = positions
        self.inv_freq = _rope_inv_freq(model) if positions == "rerotate" else None
        self.pos: list[torch.Tensor | None] = [None] * self.n_layers
        self.next_pos = 0            # original position of the next token fed
        self.watch = set(watch or ())
        self.last_probs: dict[int, torch.Tensor] = {}   # watched layers: last query's probs [B, Hkv, g, n]
        self.needs_attention = any(p.needs_attention for p, _ in groups)
        if (self.needs_attention or self.watch) and not install_attention(model):
            raise CacheUnsupported(f"{type(model).__name__} does not use transformers' attention interface, so the "
                                   "attention the policies need cannot be captured.")

    # -- sizes
    def length(self, layer: int = 0) -> int:
        return 0 if self.pos[layer] is None else int(self.pos[layer].shape[-1])

    def layer_bytes(self, layer: int) -> int:
        lay = self.cache.layers[layer]
        if lay.keys is None:
            return 0
        return lay.keys.numel() * lay.keys.element_size() + lay.values.numel() * lay.values.element_size()

    def bytes_per_layer(self) -> list[int]:
        return [self.layer_bytes(i) for i in range(self.n_layers)]

    # -- forward
    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 1, broadcast: int = 1) -> torch.Tensor:
        """Feed input_ids [B, q]; update positions and policy state; return logits [B, k, V]. No eviction.

        broadcast=R (empty cache, B=1): run the model once and give every one of R batch rows the same
        cache and attention (the common prompt of a batched comparison)."""
        b, q = input_ids.shape
        dev = input_ids.device
        if broadcast > 1 and (b != 1 or self.length() > 0):
            raise ValueError("broadcast needs a single row and an empty cache")
        start = self.next_pos if self.positions == "original" else self.length()
        pos_ids = torch.arange(start, start + q, device=dev)[None].expand(b, q)
        layers = set(range(self.n_layers)) if self.needs_attention else set(self.watch)
        masses = {}
        if q == 1 and broadcast == 1 and layers and KD.enabled(dev):
            # CUDA (or the Triton interpreter): one fused kernel gives each key's attention mass summed
            # over its KV group, instead of recomputing q.K per layer. Per-query-head rows are then the
            # group mean (what the policies use; the view shows it per KV head).
            store = {"q": {}, "scaling": {}}
            with kernels(self.model):
                out = self.model(input_ids=input_ids, past_key_values=self.cache, position_ids=pos_ids,
                                 use_cache=True, logits_to_keep=logits_to_keep, attention_mass=masses)
        else:
            with capture(self.model, layers) as store:
                out = self.model(input_ids=input_ids, past_key_values=self.cache, position_ids=pos_ids,
                                 use_cache=True, logits_to_keep=logits_to_keep)
        if broadcast > 1:
            self.cache.batch_repeat_interleave(broadcast)
            b = broadcast
        new_pos = torch.arange(self.next_pos, self.next_pos + q, device=dev)
        q_pos = new_pos
        self.next_pos += q
        self.last_probs = {}
        for li in range(self.n_layers):
            keys = self.cache.layers[li].keys
            hkv = keys.shape[1]
            add = new_pos[None, None].expand(b, hkv, q)
            self.pos[li] = add.clone() if self.pos[li] is None else torch.cat([self.pos[li], add], -1)
            for pol, rows in self.groups:
                pol.extend(li, q, rows_n=len(range(b)[rows]), hkv=hkv, device=dev)
            if li in store["q"] or li in masses:
                n = keys.shape[2]
                if li in masses:
                    g = self.model.config.num_attention_heads // hkv
                    chunks = [(0, (masses[li].float() / g)[:, :, None, None, :].expand(-1, -1, g, 1, -1))]
                else:
                    query = store["q"][li]
                    chunks = attention_probs(query, keys[:query.shape[0]], store["scaling"][li])
                for s, probs in chunks:
                    if probs.shape[0] != b:
                        probs = probs.expand(b, *probs.shape[1:])
                    c = probs.shape[3]
                    visible = (n - q) + torch.arange(s, s + c, device=dev) + 1
                    for pol, rows in self.groups:
                        if pol.needs_attention:
                            pol.observe(li, probs[rows], q_pos[s:s + c], visible, self.pos[li][rows])
                    if li in self.watch and s + c == q:
                        self.last_probs[li] = probs[:, :, :, -1].clone()
            for pol, rows in self.groups:
                pol.after_observe(li, keys[rows], self.pos[li][rows], self.next_pos - 1)
        return out.logits

    # -- eviction
    def evict_to(self, n_keep: int, record_layers: set[int] | None = None) -> dict:
        """Evict every layer down to n_keep entries per head. Returns per-layer details for record_layers
        ({layer: {"cand_pos", "scores", "protected", "keep_idx"}}) and the number of entries evicted."""
        record_layers = record_layers or set()
        details, evicted = {}, 0
        latest = self.next_pos - 1
        for li in range(self.n_layers):
            lay = self.cache.layers[li]
            n = lay.keys.shape[2]
            need = n > n_keep
            if not need and li not in record_layers:
                continue
            b, hkv = lay.keys.shape[:2]
            keep_idx = torch.empty(b, hkv, min(n, n_keep), dtype=torch.long, device=lay.keys.device)
            rec_scores = torch.zeros(b, hkv, n, dtype=torch.float64)
            rec_prot = torch.zeros(b, hkv, n, dtype=torch.bool)
            for pol, rows in self.groups:
                if need:
                    scores, prot, idx = pol.select(li, lay.keys[rows], self.pos[li][rows], n_keep, latest)
                    keep_idx[rows] = idx
                else:
                    scores, prot = pol.preview(li, lay.keys[rows], self.pos[li][rows], n_keep, latest)
                    keep_idx[rows] = torch.arange(n, device=keep_idx.device)
                rec_scores[rows] = scores.double().cpu()
                if prot is not None:
                    rec_prot[rows] = prot.cpu()
            if li in record_layers:
                details[li] = {"cand_pos": self.pos[li].cpu(), "scores": rec_scores, "protected": rec_prot,
                               "keep_idx": keep_idx.cpu()}
            if need:
                self._gather(li, keep_idx)
                evicted += b * hkv * (n - n_keep)
        return {"layers": details, "evicted": evicted}

    def _gather(self, li: int, idx: torch.Tensor):
        lay = self.cache.layers[li]
        d = lay.keys.shape[-1]
        gi = idx[..., None].expand(-1, -1, -1, d)
        keys = lay.keys.gather(2, gi)
        values = lay.values.gather(2, gi)
        if self.positions == "rerotate":
            # entries sat at cache indices idx; they move to 0..k-1
            k = idx.shape[-1]
            new_index = torch.arange(k, device=idx.device)[None, None].expand_as(idx)
            keys = rotate_keys(keys, new_index - idx, self.inv_freq)
        lay.keys, lay.values = keys.contiguous(), values.contiguous()
        self.pos[li] = self.pos[li].gather(2, idx)
        for pol, rows in self.groups:
            pol.gather(li, idx[rows])
