"""Draft trees: their shapes (chain, static choices, dynamic budget), growth and attention masks.

(~315 lines, one file on purpose: a draft tree, its shapes and its growth are one data structure's code.)

A tree's node 0 is the root: the last committed token, whose KV entry is not yet in the target
cache. Every other node is a drafted token; parents always come before their children, so the
node list can be fed to a model in order. Node depth d sits at position prefix_len + d.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch

MAX_NODES = 256
MAX_DEPTH = 64
MAX_SPEC_CHARS = 4000


class ShapeError(ValueError):
    pass


@dataclass
class Node:
    token: int
    parent: int          # -1 for the root
    depth: int
    q: float = 1.0       # draft probability of this token at its parent (1.0: point-mass proposal)
    path: tuple = ()     # sibling ranks from the root (static trees)
    cum: float = 1.0     # product of q along the path


@dataclass
class DraftTree:
    nodes: list[Node]
    q_dists: dict[int, torch.Tensor] = field(default_factory=dict)  # node -> draft distribution of its children
    stochastic: bool = False   # children drawn from q_dists (without replacement, in order)

    @classmethod
    def rooted(cls, token: int) -> "DraftTree":
        return cls([Node(int(token), -1, 0)])

    def add(self, token: int, parent: int, q: float = 1.0, path: tuple = ()) -> int:
        par = self.nodes[parent]
        self.nodes.append(Node(int(token), parent, par.depth + 1, float(q), path, par.cum * float(q)))
        return len(self.nodes) - 1

    def __len__(self):
        return len(self.nodes)

    @property
    def tokens(self) -> list[int]:
        return [n.token for n in self.nodes]

    @property
    def parents(self) -> list[int]:
        return [n.parent for n in self.nodes]

    @property
    def depths(self) -> list[int]:
        return [n.depth for n in self.nodes]

    @property
    def max_depth(self) -> int:
        return max(n.depth for n in self.nodes)

    def children(self, i: int) -> list[int]:
        return [j for j, n in enumerate(self.nodes) if n.parent == i]

    def child_lists(self) -> list[list[int]]:
        out = [[] for _ in self.nodes]
        for j, n in enumerate(self.nodes[1:], 1):
            out[n.parent].append(j)
        return out

    def ancestors(self, i: int) -> list[int]:
        """i and its ancestors, root last."""
        out = []
        while i >= 0:
            out.append(i)
            i = self.nodes[i].parent
        return out


def ancestor_matrix(parents: list[int]) -> torch.Tensor:
    """Boolean [n, n]: row i attends to column j iff j is i or an ancestor of i."""
    n = len(parents)
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            m[i, j] = True
            j = parents[j]
    return m


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """Boolean [q, kv] -> the 4D float mask [1, 1, q, kv] HF attention adds to its scores."""
    m = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=device)
    m.masked_fill_(allowed.to(device), 0.0)
    return m[None, None]


def tree_mask(parents: list[int], prefix_len: int, dtype, device) -> torch.Tensor:
    """Mask for verifying a whole tree in one forward: every node sees the prefix and its ancestors."""
    n = len(parents)
    allowed = torch.ones(n, prefix_len + n, dtype=torch.bool)
    allowed[:, prefix_len:] = ancestor_matrix(parents)
    return additive_mask(allowed, dtype, device)


# ---- shapes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    kind: str                        # "chain" | "static" | "dynamic"
    depth: int                       # chain length / maximum depth
    choices: frozenset = frozenset()  # static: allowed rank paths
    budget: int = 16                 # dynamic: drafted nodes
    topk: int = 4                    # dynamic: children per node and nodes per depth
    spec: str = "chain"

    def child_ranks(self, path: tuple) -> list[int]:
        """Static trees: the sibling ranks a node at `path` gets children at."""
        return sorted(p[-1] for p in self.choices if len(p) == len(path) + 1 and p[:-1] == path)

    @property
    def rank_closed(self) -> bool:
        """Every node's children are ranks 0..m-1 (no gaps): sampled without replacement they stay lossless."""
        return all(p[:-1] + (r,) in self.choices for p in self.choices for r in range(p[-1]))

    def with_depth(self, depth: int) -> "Shape":
        """The same shape limited to `depth` (remaining token budget, adaptive schedules)."""
        depth = max(0, depth)
        if self.kind == "static":
            return Shape(self.kind, min(self.depth, depth), frozenset(p for p in self.choices if len(p) <= depth),
                         self.budget, self.topk, self.spec)
        return Shape(self.kind, depth, self.choices, self.budget, self.topk, self.spec)


def parse_shape(spec: str, depth: int, budget: int, topk: int) -> Shape:
    """'chain', 'dynamic', a template '2.2.2' (children per depth) or Medusa choices '[[0],[1],[0,0]]'."""
    s = (spec or "").strip().lower()
    if not isinstance(depth, int) or not (1 <= depth <= MAX_DEPTH):
        raise ShapeError(f"the draft length (num_assistant_tokens) must be in 1..{MAX_DEPTH}, got {depth!r}")
    if s == "chain":
        return Shape("chain", depth, spec="chain")
    if s == "dynamic":
        if not (1 <= budget <= MAX_NODES):
            raise ShapeError(f"tree_budget must be in 1..{MAX_NODES}, got {budget}")
        if not (1 <= topk <= 32):
            raise ShapeError(f"tree_topk must be in 1..32, got {topk}")
        return Shape("dynamic", depth, budget=budget, topk=topk, spec="dynamic")
    if len(s) > MAX_SPEC_CHARS:
        raise ShapeError(f"the tree shape is {len(s)} characters long; at most {MAX_SPEC_CHARS} are allowed")
    if re.fullmatch(r"\d{1,12}(\.\d{1,12})*", s):
        widths = [int(w) for w in s.split(".")]
        if any(w < 1 for w in widths):
            raise ShapeError(f"every width in the template '{spec}' must be >= 1")
        if len(widths) > MAX_DEPTH:
            raise ShapeError(f"the template '{spec}' is {len(widths)} levels deep; at most {MAX_DEPTH} are allowed")
        nodes, level_n = 0, 1
        for w in widths:      # count before building: 10000000 must not build ten million paths
            level_n *= w
            nodes += level_n
            if nodes > MAX_NODES:
                raise ShapeError(f"the template '{spec}' has more than {MAX_NODES} nodes")
        paths, level = set(), [()]
        for w in widths:
            level = [p + (r,) for p in level for r in range(w)]
            paths.update(level)
            if len(paths) > MAX_NODES:
                raise ShapeError(f"the template '{spec}' has more than {MAX_NODES} nodes")
        return Shape("static", len(widths), frozenset(paths), spec=s)
    if s.startswith("["):
        try:
            raw = json.loads(s)
            paths = {tuple(int(r) for r in p) for p in raw}
        except (ValueError, TypeError, RecursionError) as e:
            raise ShapeError(f"cannot read the choices list {spec[:60]!r}: {str(e)[:100]}") from None
        if not paths or any(len(p) == 0 or min(p) < 0 for p in paths):
            raise ShapeError("choices must be a non-empty list of non-empty rank lists, e.g. [[0],[1],[0,0]]")
        missing = [p for p in paths if len(p) > 1 and p[:-1] not in paths]
        if missing:
            raise ShapeError(f"choices must contain every prefix of a path; {list(missing[0][:-1])} is missing")
        if len(paths) > MAX_NODES or max(len(p) for p in paths) > MAX_DEPTH:
            raise ShapeError(f"choices may have at most {MAX_NODES} nodes and depth {MAX_DEPTH}")
        return Shape("static", max(len(p) for p in paths), frozenset(paths), spec=s)
    raise ShapeError(f"unknown tree shape {spec[:60]!r}: use chain, dynamic, a template like 2.2.2 "
                     "or Medusa choices like [[0],[1],[0,0]]")


# ---- growth -------------------------------------------------------------------------------

def gumbel_order(q: torch.Tensor, m: int, gen) -> list[int]:
    """m tokens drawn from q without replacement, in draw order (Gumbel-top-k)."""
    u = torch.rand(q.shape, generator=gen, device=q.device).clamp_(1e-20, 1.0)
    keys = q.clamp_min(0).log() - torch.log(-torch.log(u))
    top = torch.topk(keys, min(m, q.shape[-1]))
    return [int(t) for t, k in zip(top.indices.tolist(), top.values.tolist()) if k != float("-inf")]


def ranked(cands, m: int) -> list[tuple[int, float]]:
    """Top-m (token, prob) of a dense distribution or of a sparse ranked list."""
    if isinstance(cands, torch.Tensor):
        top = torch.topk(cands, min(m, cands.shape[-1]))
        return [(int(t), float(p)) for t, p in zip(top.indices.tolist(), top.values.tolist()) if p > 0]
    return list(cands[:m])


def grow(root_token: int, shape: Shape, expand, stochastic: bool = False, gen=None,
         min_cum: float = 0.0, min_conf: float = 0.0) -> DraftTree:
    """Grow a draft tree level by level.

    expand(tree, frontier) -> one candidate set per frontier node: a dense draft distribution
    (tensor [V]) or a ranked list [(token, prob), ...]. Exactly one call per level, so a model
    drafter runs one forward per depth.

    stochastic: children are drawn from the dense q without replacement (lossless speculative
    sampling then uses min(1, p/q) and the recursive residual); otherwise the top-ranked tokens
    are taken and sampling verification treats each proposal as a point mass.
    Every decision to grow uses only what is already drawn (the parent's path and the maximum
    of its q), never the value of the child being decided, so sampled proposals stay unbiased.
    min_cum: stop below a node whose path confidence x max q falls below it (adaptive length).
    min_conf: stop below a node whose own max q falls below it (Kangaroo's early stop).
    One loop over the levels, kept whole: each level's choice reads the state the level before left (issue 29).
    """
    tree = DraftTree.rooted(root_token)
    tree.stochastic = stochastic
    frontier = [0]
    for depth in range(1, shape.depth + 1):
        if shape.kind == "static":
            frontier = [f for f in frontier if shape.child_ranks(tree.nodes[f].path)]
        if not frontier:
            break
        cand_sets = expand(tree, frontier)
        new = []
        proposals = []  # (score, parent, rank, token, q)
        for f, cands in zip(frontier, cand_sets):
            node = tree.nodes[f]
            if isinstance(cands, torch.Tensor):
                conf = float(cands.max())
                if stochastic:
                    tree.q_dists[f] = cands
            else:
                conf = cands[0][1] if cands else 0.0
            if conf <= 0 or conf < min_conf or node.cum * conf < min_cum:
                continue
            if shape.kind == "chain":
                m = 1
            elif shape.kind == "static":
                ranks = shape.child_ranks(node.path)
                m = max(ranks) + 1
            else:
                m = shape.topk
            if stochastic:
                toks = gumbel_order(cands, m, gen)
                picks = [(t, float(cands[t])) for t in toks]
            else:
                picks = ranked(cands, m)
            if shape.kind == "static":
                picks = [(r, t, q) for r, (t, q) in enumerate(picks) if r in set(ranks)]
            else:
                picks = [(r, t, q) for r, (t, q) in enumerate(picks)]
            for r, t, q in picks:
                proposals.append((node.cum * q, f, r, t, q))
        if shape.kind == "dynamic":
            room = min(shape.topk, shape.budget - (len(tree) - 1))
            if stochastic:
                # rank by what is known before the draw: the parent's path and sibling order
                proposals.sort(key=lambda x: (-tree.nodes[x[1]].cum, x[2]))
            else:
                proposals.sort(key=lambda x: -x[0])
            chosen = proposals[:max(0, room)]
            # a parent's children must be a prefix of its draw order: drop gaps
            keep = []
            for x in chosen:
                if x[2] == 0 or any(y[1] == x[1] and y[2] == x[2] - 1 for y in keep):
                    keep.append(x)
            proposals = sorted(keep, key=lambda x: (x[1], x[2]))
        for _, f, r, t, q in proposals:
            new.append(tree.add(t, f, q, tree.nodes[f].path + (r,)))
        frontier = new
        if shape.kind == "dynamic" and len(tree) - 1 >= shape.budget:
            break
    return tree


def trie_from_continuations(root_token: int, conts: list[list[int]], shape: Shape) -> DraftTree:
    """Merge ranked continuations (most trusted first) into a tree the shape allows."""
    tree = DraftTree.rooted(root_token)
    kids: dict[int, dict[int, int]] = {0: {}}
    for cont in conts:
        cur = 0
        for tok in cont:
            node = tree.nodes[cur]
            if tok in kids[cur]:
                cur = kids[cur][tok]
                continue
            rank = len(kids[cur])
            path = node.path + (rank,)
            if shape.kind == "chain":
                ok = rank == 0 and len(path) <= shape.depth
            elif shape.kind == "static":
                ok = path in shape.choices
            else:
                ok = rank < shape.topk and len(path) <= shape.depth and len(tree) - 1 < shape.budget
            if not ok:
                break
            j = tree.add(tok, cur, 1.0, path)
            kids[cur][tok] = j
            kids[j] = {}
            cur = j
    return tree
