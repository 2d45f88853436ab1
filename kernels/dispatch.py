"""One entry point per kernel: the Triton kernel on CUDA, the plain-torch reference elsewhere.

  tree_attention(q, k, v, prefix_len, parents)      -> [B, Hq, T, D]
  decode_attention_with_mass(q, k, v)               -> (out [B, Hq, Tq, D], mass [B, Hkv, S] fp32)
  confidence(logits, temperature, ids=None)         -> Confidence(max_prob, margin, entropy, argmax, token_prob)

and a transformers attention function (`lab_attention_forward`, also registered as "lab_tree") that
routes a model's attention through them. The engine calls it per forward, in the calling thread only,
with `with engine.attention.kernels(model): model(..., tree_parents=Tree | tree_visibility=... |
attention_mass={})`, so a model shared between sessions is never switched for everyone.
kernels/README.md says which call each method family makes.

Which path runs:
  - DECODING_LAB_FORCE_TORCH=1 -> always the torch reference (to compare on a GPU);
  - tensors on CUDA (and triton importable) -> the Triton kernel;
  - TRITON_INTERPRET=1 -> the Triton kernel through Triton's CPU interpreter (tests);
  - otherwise the torch reference (the app on CPU).
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from kernels import confidence as _conf
from kernels import decode_attention as _dec
from kernels import tree_attention as _tree
from kernels._triton import HAVE_TRITON, interpreting

FORCE_TORCH_ENV = "DECODING_LAB_FORCE_TORCH"
ATTENTION_NAME = "lab_tree"
Confidence = _conf.Confidence


def backend(*tensors: torch.Tensor) -> str:
    """"triton" or "torch": the path the dispatcher takes for these tensors."""
    if os.environ.get(FORCE_TORCH_ENV, "0") == "1" or not HAVE_TRITON:
        return "torch"
    if tensors and all(t.is_cuda for t in tensors):
        return "triton"
    return "triton" if interpreting() else "torch"


def enabled(device) -> bool:
    """True when tensors on `device` would run the Triton kernels (a method can then prefer the
    kernel path; elsewhere it keeps its usual one)."""
    dev = torch.device(device)
    if os.environ.get(FORCE_TORCH_ENV, "0") == "1" or not HAVE_TRITON:
        return False
    return dev.type == "cuda" or interpreting()


# ----------------------------------------------------------------------------------------------
# Trees

@dataclass(frozen=True)
class Tree:
    """The new tokens' visibility: T x T bool (self included) and its packed bitmask, from a parent
    list (`from_parents`: a token tree) or any pattern (`from_visibility`). Build it once per
    forward and pass it to every layer."""
    parents: torch.Tensor | None   # int64 [T] (None when built from a visibility matrix)
    ancestry: torch.Tensor         # bool [T, T]: row i = the new tokens token i sees, itself included
    bitmask: torch.Tensor          # int32 [T, ceil(T / 32)]
    chain: bool                    # plain causal (then the kernel needs no bitmask)

    @staticmethod
    def from_parents(parents, device=None) -> "Tree":
        if isinstance(parents, Tree):
            if device is None or parents.ancestry.device == torch.device(device):
                return parents
            if parents.parents is None:
                return Tree.from_visibility(parents.ancestry, device)
            parents = parents.parents
        # built on the CPU (a few small ops per tree level, no GPU syncs), then moved once
        p = torch.as_tensor(parents, dtype=torch.long).reshape(-1).cpu()
        p = _tree.as_parents(p, p.numel())
        anc = _tree.ancestor_matrix(p)
        dev = device if device is not None else torch.as_tensor(parents).device
        return Tree(p.to(dev), anc.to(dev), _tree.pack_bits(anc).to(dev), _tree.is_chain(p))

    @staticmethod
    def from_visibility(visibility, device=None) -> "Tree":
        vis = _tree.check_visibility(visibility, len(visibility))
        dev = device if device is not None else vis.device
        vis = vis.cpu()
        t = vis.shape[0]
        chain = bool(torch.equal(vis, torch.ones(t, t, dtype=torch.bool).tril()))
        return Tree(None, vis.to(dev), _tree.pack_bits(vis).to(dev), chain)

    def __len__(self) -> int:
        return self.ancestry.shape[0]

    def depths(self) -> torch.Tensor:
        """Depth of each node (roots 0): the number of other new tokens it sees."""
        return self.ancestry.sum(-1) - 1

    def position_ids(self, prefix_len: int) -> torch.Tensor:
        """[1, T] positions for the tree's tokens: a node at depth d sits at prefix_len + d."""
        return (prefix_len + self.depths()).unsqueeze(0)

    def dense_mask(self, prefix_len: int) -> torch.Tensor:
        """bool [T, prefix_len + T]: what the torch reference (and SDPA) needs."""
        t = len(self)
        ones = torch.ones(t, prefix_len, dtype=torch.bool, device=self.parents.device)
        return torch.cat([ones, self.ancestry], dim=1)


def tree_attention(q, k, v, prefix_len: int, parents, scale: float | None = None) -> torch.Tensor:
    """Tree-verification attention. q [B, Hq, T, D]; k, v [B, Hkv, prefix_len + T, D] (the tree's
    keys last, as after a cache update); parents: list / tensor [T] (-1 = root) or a `Tree`
    (`Tree.from_visibility(bool [T, T])` for a pattern that is not a tree). Returns [B, Hq, T, D]."""
    tree = Tree.from_parents(parents, device=q.device)
    if len(tree) != q.shape[2]:
        raise ValueError(f"the tree has {len(tree)} nodes for {q.shape[2]} queries")
    if backend(q, k, v) == "triton":
        if tree.chain:
            return _tree.tree_attention_triton(q, k, v, prefix_len, causal=True, scale=scale)
        return _tree.tree_attention_triton(q, k, v, prefix_len, ancestors=tree.bitmask, causal=False, scale=scale)
    _tree.check_shapes(q, k, v, prefix_len)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=tree.dense_mask(prefix_len), scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def causal_attention(q, k, v, scale: float | None = None) -> torch.Tensor:
    """The T queries are the last T keys, each seeing everything before it (prefill, a drafted
    chain, or one decode step). Same as `tree_attention` with a chain of parents."""
    t = q.shape[2]
    prefix = k.shape[2] - t
    if backend(q, k, v) == "triton":
        return _tree.tree_attention_triton(q, k, v, prefix, causal=True, scale=scale)
    return tree_attention(q, k, v, prefix, torch.arange(-1, t - 1, device=q.device), scale=scale)


def decode_attention_with_mass(q, k, v, scale: float | None = None):
    """Attention of the new query (or last Tq queries, causal) over all kept keys, plus per key the
    probability mass it received summed over its KV group's query heads (and the Tq queries).
    Returns (out [B, Hq, Tq, D], mass [B, Hkv, S] fp32)."""
    if backend(q, k, v) == "triton":
        return _dec.decode_attention_triton(q, k, v, scale=scale)
    return _dec.decode_attention_torch(q, k, v, scale=scale)


def confidence(logits: torch.Tensor, temperature: float = 1.0, ids: torch.Tensor | None = None) -> Confidence:
    """max_prob, top1 - top2 margin, entropy (nats) and argmax of softmax(logits / temperature)
    over the last dim (and token_prob, the probability of `ids`, when given: [...] token ids),
    without writing the probabilities on the Triton path."""
    if backend(logits) == "triton":
        return _conf.confidence_triton(logits, temperature, ids)
    return _conf.confidence_torch(logits, temperature, ids)


# ----------------------------------------------------------------------------------------------
# transformers attention function

def lab_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                          tree_parents=None, tree_visibility=None, attention_mass=None, **kwargs):
    """A transformers attention function (AttentionInterface signature; query [B, Hq, T, D], key /
    value [B, Hkv, S, D] after the cache update; returns ([B, T, Hq, D], None)).

    - `tree_parents` (list / tensor / `Tree`, forwarded from `model(..., tree_parents=...)`): the T
      new tokens are a tree over the cached prefix -> `tree_attention`. `tree_visibility` (bool
      [T, T]) does the same for any pattern among the new tokens (each still sees the whole prefix).
    - `attention_mass` (a dict, or a callable(layer_idx, mass)): also return, per layer, each key's
      attention mass [B, Hkv, S] -> `decode_attention_with_mass` (causal over the new tokens).
    - otherwise: causal attention of the new tokens over cache + themselves (prefill, decode).
    A 4D attention_mask passed by the caller, or a non-causal attention module (is_causal False),
    is handled by falling back to SDPA. Padding masks are
    not supported (the engine decodes one sequence at a time); the model builds no mask for this
    implementation."""
    if tree_visibility is not None:
        if tree_parents is not None:
            raise ValueError("lab_tree attention: pass tree_parents or tree_visibility, not both")
        tree_parents = tree_visibility if isinstance(tree_visibility, Tree) else Tree.from_visibility(tree_visibility)
    bidirectional = kwargs.get("is_causal", getattr(module, "is_causal", True)) is False
    if attention_mask is not None or (bidirectional and tree_parents is None and attention_mass is None):
        if tree_parents is not None or attention_mass is not None:
            raise ValueError("lab_tree attention: pass tree_parents / attention_mass or a 4D attention_mask, not both")
        # a caller's own mask, or a bidirectional model (e.g. a diffusion LM): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if tree_parents is not None:
        if attention_mass is not None:
            raise ValueError("lab_tree attention: attention_mass is not computed for tree verification")
        out = tree_attention(query, key, value, key.shape[2] - query.shape[2], tree_parents, scale=scaling)
    elif attention_mass is not None:
        out, mass = decode_attention_with_mass(query, key, value, scale=scaling)
        layer = getattr(module, "layer_idx", None)
        if isinstance(attention_mass, MutableMapping):
            attention_mass[layer] = mass
        else:
            attention_mass(layer, mass)
    else:
        out = causal_attention(query, key, value, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    AttentionInterface.register(ATTENTION_NAME, lab_attention_forward)


register()
