"""Tree-verification attention: the nodes of a token tree attend to the cached prefix and to their
own ancestors, in one pass.

Layout (as transformers hands it to an attention function, after the cache update):
  q [B, Hq, T, D]   one query per tree node, nodes in topological order (parent before child)
  k, v [B, Hkv, P + T, D]   the cached prefix (P entries), then the tree's own T nodes
  parents [T]       parents[i] in [-1, i): -1 = a root (child of the last prefix token)

Node i sees every prefix key and the tree keys of its ancestors and itself. The Triton kernel reads
the ancestry as a bitmask of T x ceil(T/32) int32 words (or, for a chain, the rule j <= i); it never
builds the T x (P + T) mask. The query heads of one KV group are packed into the rows of one
program, so each K/V tile is loaded once per group (GQA).

`tree_attention_torch` is the reference: the dense mask built from the parent list, then SDPA.
"""
from __future__ import annotations

import math

import torch

from kernels._triton import (HAVE_TRITON, LOG2E, dot_precision, jitted, next_pow2, online_softmax_tile, plan_splits, tl,
                             upcast_dot)


# ----------------------------------------------------------------------------------------------
# Tree structure helpers (plain torch, small: T x T at most)

def as_parents(parents, num_nodes: int, device=None) -> torch.Tensor:
    """Validate a parent list and return it as an int64 tensor [T]."""
    p = torch.as_tensor(parents, dtype=torch.long, device=device).reshape(-1)
    if p.numel() != num_nodes:
        raise ValueError(f"parents has {p.numel()} entries for {num_nodes} tree nodes")
    idx = torch.arange(num_nodes, device=p.device)
    if num_nodes and (bool((p < -1).any()) or bool((p >= idx).any())):
        raise ValueError("parents[i] must be -1 (root) or the index of an earlier node (topological order)")
    return p


def ancestor_matrix(parents: torch.Tensor) -> torch.Tensor:
    """bool [T, T]: entry (i, j) is True when node j is node i itself or one of its ancestors."""
    t = parents.numel()
    idx = torch.arange(t, device=parents.device)
    anc = torch.zeros(t, t, dtype=torch.bool, device=parents.device)
    anc[idx, idx] = True
    cur = parents.clone()
    while t and bool((cur >= 0).any()):  # one round per tree level
        live = cur >= 0
        anc[idx[live], cur[live]] = True
        cur = torch.where(live, parents[cur.clamp(min=0)], cur)
    return anc


def check_visibility(visibility, num_nodes: int) -> torch.Tensor:
    """A bool [T, T] visibility among the new tokens (any pattern, not only a tree: lookahead's
    window, several candidate chains...). Every token must see itself."""
    vis = torch.as_tensor(visibility).bool()
    if vis.shape != (num_nodes, num_nodes):
        raise ValueError(f"visibility must be [{num_nodes}, {num_nodes}] (got {tuple(vis.shape)})")
    if num_nodes and not bool(vis.diagonal().all()):
        raise ValueError("visibility: every token must see itself (the diagonal must be True)")
    return vis


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [T, N] -> int32 [T, ceil(N / 32)]; bit b of word w is column 32 * w + b."""
    t, n = mask.shape
    words = (n + 31) // 32
    padded = torch.zeros(t, words * 32, dtype=torch.int64, device=mask.device)
    padded[:, :n] = mask.to(torch.int64)
    shifts = torch.arange(32, device=mask.device, dtype=torch.int64)
    packed = (padded.view(t, words, 32) << shifts).sum(-1)
    return (((packed + 2**31) % 2**32) - 2**31).to(torch.int32)  # two's complement wrap to int32


def ancestor_bitmask(parents: torch.Tensor) -> torch.Tensor:
    return pack_bits(ancestor_matrix(parents))


def is_chain(parents: torch.Tensor) -> bool:
    """True when the tree is a single chain 0 <- 1 <- 2 ... (then attention is plainly causal)."""
    t = parents.numel()
    return bool((parents == torch.arange(-1, t - 1, device=parents.device)).all())


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [batch, heads, length, head_dim]")
    b, hq, t, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if hq % k.shape[1]:
        raise ValueError(f"{hq} query heads cannot be grouped over {k.shape[1]} KV heads")
    if k.shape[2] != prefix_len + t:
        raise ValueError(f"keys hold {k.shape[2]} entries; expected prefix {prefix_len} + {t} tree nodes")


# ----------------------------------------------------------------------------------------------
# Reference

def tree_attention_torch(q, k, v, prefix_len: int, parents=None, scale: float | None = None,
                         visibility: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA with the dense [T, P + T] mask built from the parent list (or from `visibility`, a bool
    [T, T] saying which new tokens each new token sees). Returns [B, Hq, T, D]."""
    check_shapes(q, k, v, prefix_len)
    t = q.shape[2]
    among = ancestor_matrix(as_parents(parents, t, device=q.device)) if visibility is None \
        else check_visibility(visibility, t).to(q.device)
    mask = torch.cat([torch.ones(t, prefix_len, dtype=torch.bool, device=q.device), among], dim=1)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


# ----------------------------------------------------------------------------------------------
# Triton kernel

def _tree_attention_kernel(
        Q, K, V, O, ANC, MP, LP, AP,
        sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
        T, P, D, G, HKV, W, SPLIT_LEN, NUM_SPLITS, ROWS_PAD, qk_scale,
        CAUSAL: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # grid (prefix split, batch * KV head, row block). Rows: (query head in the KV group, tree node)
    # packed as g * T + node. A long prefix is cut into NUM_SPLITS key ranges (split-K, so that a
    # few heads still fill the GPU); the last split also does the tree's own keys. With SPLIT the
    # program writes its running max / sum / weighted values for the merge kernel, else the output.
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    kvh = (pid_bh % HKV).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < G * T
    node = rows % T
    head = kvh * G + rows // T
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D

    q_ptrs = Q + b * sqb + head[:, None] * sqh + node[:, None] * sqt + dims[None, :] * sqd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)

    # 1) the cached prefix (this split's range): every node sees all of it
    lo = split * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, P)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        m_i, l_i, acc = online_softmax_tile(q, k_base, v_base, cols, col_ok, col_ok[None, :], dims, dim_ok, skt, skd, svt, svd,
                                            qk_scale, m_i, l_i, acc, DOT_PRECISION, UPCAST)

    # 2) the tree's own nodes (last split only): ancestors and self
    tree_end = tl.where(split == NUM_SPLITS - 1, T, 0)
    if CAUSAL:  # no node of this block sees past its own index: stop after the block's last node
        tree_end = tl.minimum(tree_end, tl.max(tl.where(row_ok, node, 0), 0) + 1)
    for start in range(0, tree_end, BLOCK_N):
        knode = start + tl.arange(0, BLOCK_N)
        col_ok = knode < T
        if CAUSAL:
            allowed = knode[None, :] <= node[:, None]
        else:
            words = tl.load(ANC + node[:, None] * W + knode[None, :] // 32,
                            mask=row_ok[:, None] & col_ok[None, :], other=0)
            allowed = ((words >> (knode[None, :] % 32)) & 1) != 0
        allowed = allowed & col_ok[None, :]
        cols = P + knode
        m_i, l_i, acc = online_softmax_tile(q, k_base, v_base, cols, col_ok, allowed, dims, dim_ok, skt, skd, svt, svd,
                                            qk_scale, m_i, l_i, acc, DOT_PRECISION, UPCAST)

    if SPLIT:  # partials laid out [B * Hkv, NUM_SPLITS, ROWS_PAD(, D)], as the decode kernel's
        base = (pid_bh.to(tl.int64) * NUM_SPLITS + split) * ROWS_PAD
        tl.store(MP + base + rows, m_i)
        tl.store(LP + base + rows, l_i)
        tl.store(AP + (base + rows[:, None]) * D + dims[None, :], acc, mask=dim_ok[None, :])
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = O + b * sob + head[:, None] * soh + node[:, None] * sot + dims[None, :] * sod
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def tree_attention_triton(q, k, v, prefix_len: int, parents=None, ancestors: torch.Tensor | None = None,
                          scale: float | None = None, causal: bool | None = None,
                          block_m: int | None = None, block_n: int | None = None,
                          split_len: int | None = None) -> torch.Tensor:
    """The Triton kernel. Give `parents` (validated, turned into the bitmask here) or `ancestors`
    (int32 [T, ceil(T/32)] from `ancestor_bitmask`, or `pack_bits` of any [T, T] visibility: the
    kernel only reads bits, so the pattern need not be a tree); `causal=True` (or a chain-shaped parent list)
    uses the rule j <= i and no bitmask. Returns [B, Hq, T, D] (a view of a [B, T, Hq, D] buffer,
    so `.transpose(1, 2)` gives the layout transformers expects without a copy)."""
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    check_shapes(q, k, v, prefix_len)
    bsz, hq, t, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    if causal is None:
        if ancestors is None:
            par = as_parents(parents, t, device=q.device)
            causal = is_chain(par)
            if not causal:
                ancestors = ancestor_bitmask(par)
        else:
            causal = False
    if not causal:
        if ancestors is None:
            ancestors = ancestor_bitmask(as_parents(parents, t, device=q.device))
        ancestors = ancestors.to(device=q.device, dtype=torch.int32).contiguous()
        if ancestors.shape != (t, (t + 31) // 32):
            raise ValueError(f"ancestor bitmask must be [{t}, {(t + 31) // 32}] int32 words")
    anc = ancestors if not causal else torch.zeros(1, dtype=torch.int32, device=q.device)
    words = anc.shape[1] if anc.dim() == 2 else 1
    out = torch.empty(bsz, t, hq, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    if t == 0:
        return out
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    block_m = block_m or min(64, next_pow2(g * t))
    block_n = block_n or 64
    row_blocks = (g * t + block_m - 1) // block_m
    rows_pad = row_blocks * block_m
    prefix_len = int(prefix_len)
    if split_len is None:
        split_len, num_splits = plan_splits(prefix_len, bsz * hkv * row_blocks, block_n)
    else:
        split_len = -(-split_len // block_n) * block_n
        num_splits = max(1, -(-prefix_len // split_len))
    common = dict(DOT_PRECISION=dot_precision(q.dtype), UPCAST=upcast_dot(q.dtype),
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=next_pow2(d), num_warps=4)
    if num_splits > 1:
        f32 = dict(dtype=torch.float32, device=q.device)
        m_part = torch.empty(bsz * hkv, num_splits, rows_pad, **f32)
        l_part = torch.empty(bsz * hkv, num_splits, rows_pad, **f32)
        a_part = torch.empty(bsz * hkv, num_splits, rows_pad, d, **f32)
    else:
        m_part = l_part = a_part = anc  # unused
    sizes = (t, prefix_len, d, g, hkv, words, split_len, num_splits, rows_pad, float(scale) * LOG2E)
    jitted(_tree_attention_kernel)[(num_splits, bsz * hkv, row_blocks)](
        q, k, v, out, anc, m_part, l_part, a_part,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *sizes,
        CAUSAL=bool(causal), SPLIT=num_splits > 1, **common)
    if num_splits > 1:
        from kernels.decode_attention import _decode_merge_mass_kernel
        jitted(_decode_merge_mass_kernel)[(1, bsz * hkv, row_blocks)](
            q, k, out, m_part, l_part, a_part, m_part, *q.stride(), *k.stride(), *out.stride(),
            t, prefix_len + t, d, g, hkv, split_len, num_splits, rows_pad, float(scale) * LOG2E,
            COMPUTE_MASS=False, **common)
    return out
