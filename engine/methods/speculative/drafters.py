"""Drafters: one small class each, the same interface, registered in DRAFTERS with their options.

(~380 lines, one small class per drafter by design, each well under 60 lines; the next split is the model drafters apart from the table drafters.)

    from_options(job, o) -> Drafter  build from the method's option values (classmethod)
    check(o, ctx)                    cheap checks before any forward (classmethod; optional)
    propose(ctx) -> DraftTree        candidates after the committed sequence (chain or tree)
    observe(ctx, tree, rows, verdict)  learn from the target's verification (called every round)

A new drafter is one class registered here: the speculative method, its CLI flags and the page's
widgets pick it up, with its options.

Model drafters (a separate draft LM, the target's first layers, the target with skipped layers)
return full draft distributions q per node and can draw sampled proposals; table drafters
(prompt lookup, Token Recycling, tri-gram) propose point masses.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from engine import kvcache
from engine import sampling as S
from engine.errors import MethodError
from engine.layer_spec import parse_layers
from engine.methods.speculative.draft_models import check_draft, layers_of, load_draft
from engine.methods.speculative.trees import DraftTree, additive_mask, grow, trie_from_continuations
from engine.options import Components, Opt

DRAFTERS = Components("drafter")
MAX_K = 32
EXIT_LAYER = Opt(0, "number of target layers the draft runs", min=1, max=1024, special={0: "80% of the layers"})


class Drafter:
    name = "base"
    model_based = False      # gives a full distribution q per node (can draw sampled proposals)

    @classmethod
    def check(cls, o: dict, ctx) -> None:
        """Cheap checks of the options against the model, before any forward (raise MethodError)."""

    @classmethod
    def from_options(cls, job, o: dict) -> "Drafter":
        return cls()

    def propose(self, ctx) -> DraftTree:
        raise NotImplementedError

    def observe(self, ctx, tree, rows, verdict) -> None:
        """After verification: `rows` gives the target's logits per tree node (verify.Rows, lazy)."""

    def describe(self) -> dict:
        return {"drafter": self.name}


def vocab_fix(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """A draft's logits on the target's vocabulary: cut, or padded with -inf (a draft vocabulary of another size)."""
    if logits.shape[-1] > vocab:
        return logits[..., :vocab]
    if logits.shape[-1] < vocab:
        pad = torch.full((*logits.shape[:-1], vocab - logits.shape[-1]), float("-inf"), device=logits.device)
        return torch.cat([logits, pad], -1)
    return logits


def draft_dist(logits: torch.Tensor, cfg) -> torch.Tensor:
    """q: the draft's warped distribution when sampling; its plain softmax when greedy."""
    return logits.float().softmax(-1) if cfg.greedy else S.warp(logits, cfg).softmax(-1)


# ---- model drafters -------------------------------------------------------------------------

class ModelDrafter(Drafter):
    """Draft with a causal LM forward, one forward per tree depth (all nodes of a level at once).

    shared=True: the drafter writes into the target's own KV cache (early exit / layer skip use
    the target's layers, whose prefix entries they reuse) and crops what it added afterwards.
    shared=False: the drafter keeps its own cache of the committed tokens it has seen.
    """
    model_based = True
    shared = False

    def __init__(self, device, dtype):
        self.device, self.dtype = device, dtype
        self.cache = DynamicCache()
        self.seen = 0            # committed tokens in an own cache

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, keep: int, cache) -> torch.Tensor:
        raise NotImplementedError

    def vocab_fix(self, logits: torch.Tensor, vocab: int) -> torch.Tensor:
        return vocab_fix(logits, vocab)

    def propose(self, ctx) -> DraftTree:
        seq = ctx.seq
        cache = ctx.cache if self.shared else self.cache
        base = ctx.prefix_len if self.shared else self.seen
        pending = seq[base:]
        root_pos = base + len(pending) - 1
        slots: dict[int, int] = {}
        state = {"len": base}
        dev = self.device

        def expand(tree, frontier):
            if frontier == [0]:
                n = len(pending)
                ids = torch.tensor([pending], device=dev)
                pos = torch.arange(base, base + n, device=dev)[None]
                allowed = torch.ones(n, base + n, dtype=torch.bool)
                allowed[:, base:] = torch.ones(n, n, dtype=torch.bool).tril()
                logits = self.forward(ids, pos, additive_mask(allowed, self.dtype, dev), 1, cache)
                slots[0] = root_pos
                state["len"] = base + n
            else:
                n, L0 = len(frontier), state["len"]
                allowed = torch.zeros(n, L0 + n, dtype=torch.bool)
                allowed[:, :root_pos + 1] = True
                for r, f in enumerate(frontier):
                    for a in tree.ancestors(f)[1:-1]:
                        allowed[r, slots[a]] = True
                    allowed[r, L0 + r] = True
                    slots[f] = L0 + r
                ids = torch.tensor([[tree.nodes[f].token for f in frontier]], device=dev)
                pos = torch.tensor([[root_pos + tree.nodes[f].depth for f in frontier]], device=dev)
                logits = self.forward(ids, pos, additive_mask(allowed, self.dtype, dev), n, cache)
                state["len"] = L0 + n
            ctx.counters.draft_forwards += 1
            ctx.round_draft_forwards += 1
            logits = self.vocab_fix(logits, ctx.vocab)
            return [draft_dist(row, ctx.sampling) for row in logits]

        try:
            tree = grow(seq[-1], ctx.shape, expand, ctx.stochastic, ctx.gen, ctx.min_cum, self.min_conf(ctx))
        finally:
            if self.shared:
                kvcache.crop(cache, base, self.layer_set)
            elif state["len"] > base:
                kvcache.crop(cache, base + len(pending))
                self.seen = base + len(pending)
        return tree

    def min_conf(self, ctx) -> float:
        return 0.0


class SubModelDrafter(ModelDrafter):
    """The target's own layers as the draft: the first k (early exit) or all but some (layer skip)."""
    shared = True

    def __init__(self, lm, layers: list[int], name: str, exit_threshold: float = 0.0):
        super().__init__(lm.device, lm.dtype)
        self.lm, self.layers, self.layer_set, self.name = lm, list(layers), set(layers), name
        self.exit_threshold = exit_threshold

    def forward(self, ids, pos, mask, keep, cache):
        inner = self.lm.model.model
        h = inner.embed_tokens(ids)
        pe = inner.rotary_emb(h, position_ids=pos)
        for i in self.layers:
            h = inner.layers[i](h, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                                position_embeddings=pe)
            if isinstance(h, tuple):
                h = h[0]
        h = inner.norm(h[:, -keep:])
        return self.lm.model.lm_head(h)[0].float()

    def min_conf(self, ctx) -> float:
        return self.exit_threshold

    def describe(self):
        return {"drafter": self.name, "draft_layers": self.layers}


@DRAFTERS.register("early_exit", "the target's first exit_layer layers + final norm + LM head, sharing the "
                   "target's KV cache", options={"exit_layer": EXIT_LAYER})
class EarlyExit(SubModelDrafter):
    @staticmethod
    def exit_layers(lm, o) -> list[int]:
        n = len(layers_of(lm))
        k = o["exit_layer"] or max(1, round(0.8 * n))
        if not 1 <= k < n:
            raise MethodError(f"exit_layer must be in 1..{n - 1} for this {n}-layer model, got {k}.")
        return list(range(k))

    @classmethod
    def check(cls, o, ctx):
        cls.exit_layers(ctx.lm, o)

    @classmethod
    def from_options(cls, job, o):
        return cls(job.lm, cls.exit_layers(job.lm, o), "early_exit")


@DRAFTERS.register("kangaroo", "early exit that stops drafting when the draft's confidence < exit_threshold",
                   options={"exit_layer": EXIT_LAYER,
                            "exit_threshold": Opt(0.6, "stop drafting when the draft's top probability < this",
                                                  min=0.0, max=1.0, max_open=True, slider=True, step=0.01)})
class Kangaroo(EarlyExit):
    @classmethod
    def from_options(cls, job, o):
        return cls(job.lm, cls.exit_layers(job.lm, o), "kangaroo", float(o["exit_threshold"]))


@DRAFTERS.register("layer_skip", "the target with skip_layers skipped (SWIFT-style self-speculation)",
                   options={"skip_layers": Opt("", "layers to skip, e.g. 5,7,9-20 (empty: every other layer of "
                                                   "the back half)", max_len=1000)})
class LayerSkip(SubModelDrafter):
    @staticmethod
    def kept_layers(lm, o) -> list[int]:
        n = len(layers_of(lm))
        spec = str(o["skip_layers"]).strip()
        skip = parse_layers(spec, n, "skip_layers") if spec else [i for i in range(n // 2, n - 1) if i % 2 == 1]
        keep = [i for i in range(n) if i not in set(skip)]
        if not skip or not keep:
            raise MethodError("layer_skip must skip at least one layer and keep at least one.")
        return keep

    @classmethod
    def check(cls, o, ctx):
        cls.kept_layers(ctx.lm, o)

    @classmethod
    def from_options(cls, job, o):
        return cls(job.lm, cls.kept_layers(job.lm, o), "layer_skip")


@DRAFTERS.register("draft_model", "a separate causal LM sharing the tokenizer ('self:K' = the target's first K "
                   "layers as a model)",
                   options={"draft_model": Opt("", "draft model: HF id, local path, or self:K", max_len=500,
                                               presets=("self:24", "self:16", "self:8"))})
class DraftModelDrafter(ModelDrafter):
    """A separate causal LM sharing the target's tokenizer, with its own KV cache."""

    @classmethod
    def check(cls, o, ctx):
        check_draft(ctx.lm, o["draft_model"])      # the tokenizer, before any weights are loaded

    @classmethod
    def from_options(cls, job, o):
        return cls(load_draft(job.lm, o["draft_model"]))

    def __init__(self, draft_lm, name: str = "draft_model"):
        super().__init__(draft_lm.device, draft_lm.dtype)
        self.lm, self.name = draft_lm, name
        self.layer_set = None

    def forward(self, ids, pos, mask, keep, cache):
        out = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=keep)
        return out.logits[0, -keep:].float()

    def describe(self):
        return {"drafter": self.name, "draft_model": self.lm.name}


# ---- table drafters ---------------------------------------------------------------------------

@DRAFTERS.register("prompt_lookup", "copy the continuation of the last n-gram's latest earlier occurrence "
                   "(n = max..1)",
                   options={"max_matching_ngram_size": Opt(3, "longest n-gram matched", min=1, max=16),
                            "prompt_lookup_num_tokens": Opt(10, "tokens copied after a match", min=1, max=MAX_K)})
class PromptLookup(Drafter):
    """Copy what followed the most recent earlier occurrence of the last n tokens (n = max..1) that
    still has num_tokens tokens after it (a truncated continuation is used only when none has)."""
    name = "prompt_lookup"

    def __init__(self, max_ngram: int = 3, num_tokens: int = 10, max_continuations: int = 16):
        self.max_ngram, self.num_tokens, self.max_cont = max_ngram, num_tokens, max_continuations

    @classmethod
    def from_options(cls, job, o):
        return cls(o["max_matching_ngram_size"], o["prompt_lookup_num_tokens"])

    def continuations(self, seq: list[int], want: int) -> list[list[int]]:
        arr = np.asarray(seq, dtype=np.int64)
        out, seen = [], set()
        for n in range(min(self.max_ngram, len(arr) - 1), 0, -1):
            win = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
            hits = np.flatnonzero((win == arr[-n:]).all(axis=1))
            # most recent first, but a match whose continuation runs into the end of the sequence
            # (shorter than num_tokens) goes after the full-length ones
            hits = sorted(hits[::-1], key=lambda i: len(arr) - (i + n) < self.num_tokens)
            for i in hits:
                cont = arr[i + n:i + n + self.num_tokens].tolist()
                key = tuple(cont)
                if cont and key not in seen:
                    seen.add(key)
                    out.append(cont)
                    if len(out) >= want:
                        return out
        return out

    def propose(self, ctx) -> DraftTree:
        want = 1 if ctx.shape.kind == "chain" else self.max_cont
        return trie_from_continuations(ctx.seq[-1], self.continuations(ctx.seq, want), ctx.shape)

    def describe(self):
        return {"drafter": self.name, "max_matching_ngram_size": self.max_ngram,
                "prompt_lookup_num_tokens": self.num_tokens}


@DRAFTERS.register("token_recycling", "adjacency matrix of each token's latest top-k successors from verified logits",
                   options={"recycle_k": Opt(8, "successors kept per token", min=1, max=64)})
class TokenRecycling(Drafter):
    """Adjacency matrix vocab x k of each token's latest top-k successors from verified logits."""
    name = "token_recycling"

    def __init__(self, vocab: int, k: int = 8):
        self.k = k
        self.ids = torch.full((vocab, k), -1, dtype=torch.long)
        self.probs = torch.zeros(vocab, k)

    @classmethod
    def from_options(cls, job, o):
        return cls(job.lm.model.get_output_embeddings().weight.shape[0], o["recycle_k"])

    def propose(self, ctx) -> DraftTree:
        def expand(tree, frontier):
            out = []
            for f in frontier:
                row, pr = self.ids[tree.nodes[f].token].tolist(), self.probs[tree.nodes[f].token].tolist()
                out.append([(t, p) for t, p in zip(row, pr) if t >= 0])
            return out
        return grow(ctx.seq[-1], ctx.shape, expand, False, None, ctx.min_cum)

    def observe(self, ctx, tree, rows, verdict):
        # every verified position updates its token's row, rejected branches included
        probs = rows.all_logits().softmax(-1)
        top = torch.topk(probs.cpu(), self.k, dim=-1)
        toks = torch.tensor(tree.tokens)
        self.ids[toks] = top.indices
        self.probs[toks] = top.values

    def describe(self):
        return {"drafter": self.name, "successors": self.k}


@DRAFTERS.register("trigram", "online tri-gram table of the committed text (bigram fallback)")
class Trigram(Drafter):
    """Online tri-gram table of the committed text (bigram fallback), most frequent first."""
    name = "trigram"

    def __init__(self):
        self.tri: dict[tuple, dict[int, int]] = {}
        self.bi: dict[int, dict[int, int]] = {}
        self.fed = 0

    def feed(self, seq):
        for i in range(max(self.fed, 1), len(seq)):
            self.bi.setdefault(seq[i - 1], {}).setdefault(seq[i], 0)
            self.bi[seq[i - 1]][seq[i]] += 1
            if i >= 2:
                d = self.tri.setdefault((seq[i - 2], seq[i - 1]), {})
                d[seq[i]] = d.get(seq[i], 0) + 1
        self.fed = len(seq)

    @staticmethod
    def _ranked(d: dict[int, int]) -> list[tuple[int, float]]:
        tot = sum(d.values())
        # most frequent first; among equals the most recently added
        items = sorted(enumerate(d.items()), key=lambda x: (-x[1][1], -x[0]))
        return [(t, c / tot) for _, (t, c) in items]

    def propose(self, ctx) -> DraftTree:
        self.feed(ctx.seq)
        prev = ctx.seq[-2] if len(ctx.seq) > 1 else None

        def expand(tree, frontier):
            out = []
            for f in frontier:
                b = tree.nodes[f].token
                a = tree.nodes[tree.nodes[f].parent].token if f else prev
                d = self.tri.get((a, b)) or self.bi.get(b) or {}
                out.append(self._ranked(d) if d else [])
            return out
        return grow(ctx.seq[-1], ctx.shape, expand, False, None, ctx.min_cum)
