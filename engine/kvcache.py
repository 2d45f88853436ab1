"""KV-cache surgery on a transformers DynamicCache, in one place.

Every family keeps a cache of the committed prefix and changes it after a step:
- crop(cache, n): keep the first n entries of every layer (Jacobi drops rejected guesses, the diffusion
  prefix cache drops the recomputed suffix);
- crop(cache, n, layers): the same for some layers only (the self-speculative drafters wrote into the
  target's cache through a subset of its layers);
- keep(cache, start, offsets): keep [0, start) and the entries start + offsets[j], moved to start + j
  (speculative decoding keeps the accepted path of a tree, lookahead the accepted n-gram).
Entries are [batch, kv_heads, seq, head_dim]; each layer is cut on its own device.
"""
from __future__ import annotations

import torch


def length(cache) -> int:
    return int(cache.get_seq_length())


def _layers(cache, layers=None):
    for i, layer in enumerate(cache.layers):
        if layers is not None and i not in layers:
            continue
        if getattr(layer, "keys", None) is None or not layer.keys.numel():
            continue
        yield layer


def crop(cache, n: int, layers=None) -> int:
    """Keep the first `n` entries (of `layers`, or all). Returns the entries dropped per layer (the last
    layer cut)."""
    dropped = 0
    for layer in _layers(cache, layers):
        total = layer.keys.shape[2]
        if total > n:
            layer.keys = layer.keys[:, :, :n]
            layer.values = layer.values[:, :, :n]
            dropped = total - n
    return dropped


def keep(cache, start: int, offsets: list[int]) -> int:
    """Keep entries [0, start) and start + offsets[j] moved to start + j; drop the rest. `offsets` must be
    increasing (a path read from the root), so moving in place never overwrites an entry still to move.
    Returns the entries dropped per layer."""
    dropped = 0
    n = len(offsets)
    moved = list(offsets) != list(range(n))
    src_cpu = torch.tensor(offsets, dtype=torch.long) + start
    for layer in _layers(cache):
        total = layer.keys.shape[2]
        if moved:
            src = src_cpu.to(layer.keys.device)
            layer.keys[:, :, start:start + n] = layer.keys[:, :, src]
            layer.values[:, :, start:start + n] = layer.values[:, :, src]
        layer.keys = layer.keys[:, :, :start + n]
        layer.values = layer.values[:, :, :start + n]
        dropped = total - start - n
    return dropped
