"""The `medusa` and `eagle` drafters: trained (or untrained, random:SEED) heads on the target's own features.

Both learn the target's final hidden states (after its final norm) from the verification forward's rows
(`observe`: the root and the accepted nodes, `verify.Rows.hidden`) and from the prefill, which they run
themselves (`prefill`: the same forward over the prompt minus its last token, keeping its hidden states).

medusa: from the feature of the row that predicted the root (the last committed token), head d (1-based) gives
the distribution of the token at depth d; a chain, template or Medusa choices tree takes the top-ranked tokens
of each head at each node (or draws them without replacement when sampling), so every node's q is the head's
softmax and sampling verification stays lossless. The tree is at most as deep as the heads are many.

eagle: EAGLE-1/2 drafting: the head runs autoregressively on its own predicted features, one forward per
depth over every node of that level (tree attention over its own KV cache of the committed pairs); chain,
static trees, or the dynamic tree (EAGLE-2: per depth the nodes with the highest cumulative draft probability).

Every drafted node records which head / step proposed it (`proposer` in the step record's node).
"""
from __future__ import annotations

import os

import torch
from transformers import DynamicCache

from engine import kvcache
from engine.errors import MethodError, shorten
from engine.methods.speculative import heads as H
from engine.methods.speculative.drafters import DRAFTERS, Drafter, draft_dist, vocab_fix
from engine.methods.speculative.trees import DraftTree, additive_mask, grow
from engine.options import Opt

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                       "models")
HEADS = Opt("trained", "draft heads: trained (the heads shipped in models/heads-KIND, trained for the embedded "
                       "SmolLM2-135M-Instruct), a local checkpoint (directory or file) in the Medusa / EAGLE layout, "
                       "or random:SEED for untrained heads built for this model (lossless, rarely accepted)",
            max_len=1000, presets=("trained", "random:0"))


def shipped_heads(kind: str) -> str:
    """The directory of the lab's trained `kind` heads (models/heads-eagle, models/heads-medusa)."""
    return os.path.join(SHIPPED, f"heads-{kind}")


def parse_heads(value, name: str) -> tuple[str, object]:
    """('random', seed) or ('path', path); MethodError for an empty or malformed value. 'trained' is the
    shipped checkpoint of this drafter."""
    s = str(value or "").strip()
    if not s:
        raise MethodError(f"drafter={name} needs heads: trained (the shipped heads for the embedded model), a local "
                          f"directory or file with trained {name} heads, or random:SEED for untrained heads.")
    if s.lower() == "trained":
        path = shipped_heads(name)
        if not os.path.isdir(path):
            raise MethodError(f"The trained {name} heads are not in this checkout ({path}); rebuild them with "
                              f"`python -m training.train_heads gen` then `python -m training.train_heads {name}`, "
                              f"or choose heads random:0.")
        return "path", path
    if s.lower().startswith("random"):
        seed = s.split(":", 1)[1].strip() if ":" in s else ""
        if not (seed.isascii() and seed.isdigit() and len(seed) <= 9):
            raise MethodError(f"heads {shorten(s)}: write random:SEED with SEED a non-negative integer, e.g. random:0.")
        return "random", int(seed)
    return "path", s


class HeadDrafter(Drafter):
    """Common part: the option, the checks, the prefill that keeps the target's features."""
    model_based = True
    kind = "base"

    def __init__(self, lm, module, source: str):
        self.lm, self.module, self.source = lm, module, source

    @classmethod
    def build(cls, lm, o) -> tuple[object, str]:
        raise NotImplementedError

    @classmethod
    def check(cls, o, ctx):
        H.target_dims(ctx.lm)              # a Llama-style target
        how, arg = parse_heads(o["heads"], cls.kind)
        if how == "path":
            cls.build(ctx.lm, o)           # loads (cached) and checks the checkpoint before any forward

    @classmethod
    def from_options(cls, job, o):
        module, source = cls.build(job.lm, o)
        return cls(job.lm, module, source)

    def prefill(self, ctx, ids: torch.Tensor) -> None:
        """The target's prefill over the prompt minus its last token, keeping the features (one target forward)."""
        out = ctx.lm.model.model(input_ids=ids, past_key_values=ctx.cache, use_cache=True)
        self.take(out.last_hidden_state[0])

    def observe(self, ctx, tree, rows, verdict):
        if rows.hidden is None:
            raise MethodError(f"drafter={self.kind} needs the target's hidden states (a Llama-style model).")
        self.take(rows.hidden[verdict.path])

    def take(self, feats: torch.Tensor) -> None:
        raise NotImplementedError

    def describe(self):
        src = "trained (shipped)" if os.path.realpath(self.source) == os.path.realpath(shipped_heads(self.kind)) \
            else self.source
        return {"drafter": self.name, "heads": src, "trained": not self.source.startswith("random:")}


@DRAFTERS.register("medusa", "Medusa heads on the target's last hidden state: head d proposes the token at depth d "
                   "(top-k per head, arranged by the tree shape)", options={"heads": HEADS})
class MedusaDrafter(HeadDrafter):
    name = kind = "medusa"

    @classmethod
    def build(cls, lm, o):
        how, arg = parse_heads(o["heads"], cls.kind)
        if how == "random":
            k = max(1, min(H.MAX_HEADS, int(o.get("num_assistant_tokens") or 4)))
            return H.random_medusa(lm, arg, num_heads=k), f"random:{arg}"
        return H.load_medusa(arg, lm), arg

    def __init__(self, lm, module, source):
        super().__init__(lm, module, source)
        self.last: torch.Tensor | None = None     # the feature of the row that predicted the root

    def take(self, feats):
        self.last = feats[-1]

    def propose(self, ctx) -> DraftTree:
        depth = min(ctx.shape.depth, self.module.num_heads)
        if self.last is None or depth < 1:
            return DraftTree.rooted(ctx.seq[-1])
        h = self.last.to(ctx.lm.device)
        logits = self.module.first(h, depth).float()
        dists = [draft_dist(vocab_fix(logits[i], ctx.vocab), ctx.sampling) for i in range(depth)]
        ctx.counters.draft_forwards += 1
        ctx.round_draft_forwards += 1

        def expand(tree, frontier):
            d = tree.nodes[frontier[0]].depth   # every frontier node is at this depth: children use head d + 1
            if d >= len(dists):
                return [[] for _ in frontier]
            return [dists[d]] * len(frontier)

        tree = grow(ctx.seq[-1], ctx.shape, expand, ctx.stochastic, ctx.gen, ctx.min_cum)
        tree.proposer = {i: f"medusa head {n.depth}" for i, n in enumerate(tree.nodes) if i}
        return tree

    def describe(self):
        return {**super().describe(), "medusa_heads": self.module.num_heads,
                "medusa_layers": self.module.num_layers}


@DRAFTERS.register("eagle", "an EAGLE-1/2 head (fc + one decoder layer) drafting autoregressively on its own "
                   "features, read by the target's LM head (dynamic tree: EAGLE-2)", options={"heads": HEADS})
class EagleDrafter(HeadDrafter):
    name = kind = "eagle"

    @classmethod
    def build(cls, lm, o):
        how, arg = parse_heads(o["heads"], cls.kind)
        if how == "random":
            return H.random_eagle(lm, arg), f"random:{arg}"
        return H.load_eagle(arg, lm), arg

    def __init__(self, lm, module, source):
        super().__init__(lm, module, source)
        self.cache = DynamicCache()
        self.fed = 0                         # pairs (feature t, token t+1) in the head's cache: t = 0 .. fed-1
        self.buf: list[torch.Tensor] = []    # target features of positions fed, fed+1, ... not yet fed

    def take(self, feats):
        self.buf.append(feats)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.module.embed_tokens if self.module.embed_tokens is not None else self.lm.model.model.embed_tokens
        return emb(ids)

    def read(self, g: torch.Tensor, vocab: int) -> torch.Tensor:
        """Predicted features [n, hidden] -> logits [n, vocab] through the target's LM head (no norm, as EAGLE).
        A head with a draft vocabulary reads only those rows (-inf elsewhere): on a CPU the full LM head's weight
        pass costs a quarter of a target token; the rows the head was trained on cost a tenth of that."""
        ids = getattr(self.module, "draft_ids", None)
        if ids is None:
            return vocab_fix(self.lm.model.get_output_embeddings()(g).float(), vocab)
        out = torch.full((g.shape[0], vocab), float("-inf"), device=g.device)
        out[:, ids] = self.module.draft_read(g).float()
        return out

    def propose(self, ctx) -> DraftTree:
        seq, L = ctx.seq, len(ctx.seq)
        feats = torch.cat(self.buf) if self.buf else None
        m = 0 if feats is None else feats.shape[0]
        if self.fed + m != L - 1:
            raise RuntimeError(f"eagle drafter out of step: {self.fed} + {m} features for {L} tokens")
        if m == 0 or ctx.shape.depth < 1:
            return DraftTree.rooted(seq[-1])
        dev, dtype = ctx.lm.device, ctx.lm.dtype
        g: dict[int, torch.Tensor] = {}      # node -> the head's predicted feature at the node's position
        slots: dict[int, int] = {}
        state = {"len": self.fed}
        committed = L - 1                    # pairs 0 .. L-2 are committed: (f_t from the target, token t+1)

        def expand(tree, frontier):
            if frontier == [0]:
                base = self.fed
                ids = torch.tensor([seq[base + 1:L]], device=dev)
                pos = torch.arange(base, committed, device=dev)[None]
                allowed = torch.ones(m, committed, dtype=torch.bool)
                allowed[:, base:] = torch.ones(m, m, dtype=torch.bool).tril()
                out = self.module(feats[None].to(dev), self.embed(ids), pos, additive_mask(allowed, dtype, dev),
                                  self.cache)
                self.fed, self.buf = committed, []
                g[0] = out[0, -1]
                state["len"] = committed
            else:
                n, L0 = len(frontier), state["len"]
                allowed = torch.zeros(n, L0 + n, dtype=torch.bool)
                allowed[:, :committed] = True
                for r, f in enumerate(frontier):
                    for a in tree.ancestors(f)[1:-1]:
                        allowed[r, slots[a]] = True
                    allowed[r, L0 + r] = True
                    slots[f] = L0 + r
                fin = torch.stack([g[tree.nodes[f].parent] for f in frontier])[None]
                ids = torch.tensor([[tree.nodes[f].token for f in frontier]], device=dev)
                pos = torch.tensor([[committed - 1 + tree.nodes[f].depth for f in frontier]], device=dev)
                out = self.module(fin, self.embed(ids), pos, additive_mask(allowed, dtype, dev), self.cache)
                for r, f in enumerate(frontier):
                    g[f] = out[0, r]
                state["len"] = L0 + n
            ctx.counters.draft_forwards += 1
            ctx.round_draft_forwards += 1
            logits = self.read(torch.stack([g[f] for f in frontier]), ctx.vocab)
            return [draft_dist(row, ctx.sampling) for row in logits]

        try:
            tree = grow(seq[-1], ctx.shape, expand, ctx.stochastic, ctx.gen, ctx.min_cum)
        finally:
            kvcache.crop(self.cache, self.fed)   # keep the committed pairs only
        tree.proposer = {i: f"eagle step {n.depth}" for i, n in enumerate(tree.nodes) if i}
        return tree

    def describe(self):
        ids = getattr(self.module, "draft_ids", None)
        return {**super().describe(), "eagle_layers": len(self.module.layers),
                "draft_vocab": None if ids is None else int(ids.numel())}
