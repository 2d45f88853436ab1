"""Trained draft heads on the target's own features: Medusa heads and an EAGLE-1/2 head (issue 25).

(The checkpoint reading and checks live in heads_io.py.)

Both read the target's final hidden state after its final norm (what the LM head reads; `verify.Rows.hidden`
holds it for every verified node).

Medusa (FasterDecoding/Medusa, `medusa/model/medusa_model.py`): k heads; head i (0-based) is
`Sequential(ResBlock x medusa_num_layers, Linear(hidden, vocab, bias=False))`, ResBlock(x) = x + SiLU(Linear(x)).
From the feature at position t the target's LM head predicts token t+1 and head i predicts token t+2+i.
Checkpoint: the state dict of the ModuleList (`medusa_lm_head.pt`: keys `0.0.linear.weight`, `0.0.linear.bias`,
`0.1.weight`, ...; a `medusa_head.` prefix is accepted) and a config.json with `medusa_num_heads`,
`medusa_num_layers`.

EAGLE-1/2 (SafeAILab/EAGLE, `eagle/model/cnets1.py`): `fc = Linear(2 * hidden, hidden)` over
concat(embedding of token t+1, target feature at t) -- embedding first -- then decoder layers (one in the
published heads; layer 0 has no input_layernorm); the output approximates the target's feature at t+1 and the
target's LM head reads it directly (no norm) for token t+2. The pair (feature t, token t+1) sits at position t.
Checkpoint: keys `fc.weight`, `fc.bias`, `layers.0.self_attn.q_proj.weight`, ..., `layers.0.mlp.*`,
`layers.0.post_attention_layernorm.weight`, optionally `embed_tokens.weight` (else the target's embeddings are
used); config.json a LlamaConfig of the head (num_hidden_layers = 1).

Weights: a local directory (config.json + *.safetensors, or a .pt / .bin) or one such file. A .pt / .bin is read
with torch.load(weights_only=True): a pickle that needs code is refused, never run. Every mismatch with the target
(hidden size, vocabulary, missing or unexpected keys, shapes) is a MethodError that names it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from engine import cpu_linear
from engine.errors import MethodError, shorten
from engine.methods.speculative.heads_io import (  # noqa: F401  (re-exported: tests and drafters use them)
    WEIGHT_FILES, _CACHE, _CACHE_LOCK, _CACHE_MAX, _cached, _files, _keys_match, check_target, head_config,
    read_state, target_dims)

MAX_HEADS = 16



# ---- modules --------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """x + SiLU(Linear(x)) (Medusa's residual block; the linear has a bias)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    """k Medusa heads; `medusa_head` is the ModuleList whose state dict is Medusa's checkpoint."""

    def __init__(self, hidden: int, vocab: int, num_heads: int, num_layers: int = 1, shared_head: nn.Module = None):
        """shared_head: every head ends with this module (the target's LM head: untrained heads) instead of a
        Linear(hidden, vocab) of its own."""
        super().__init__()
        self.hidden, self.vocab, self.num_heads, self.num_layers = hidden, vocab, num_heads, num_layers
        self.medusa_head = nn.ModuleList([
            nn.Sequential(*[ResBlock(hidden) for _ in range(num_layers)],
                          shared_head if shared_head is not None else nn.Linear(hidden, vocab, bias=False))
            for _ in range(num_heads)])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., hidden] -> logits [num_heads, ..., vocab]; head i predicts i+2 positions after h's."""
        return torch.stack([head(h) for head in self.medusa_head])

    def first(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """The first n heads' logits for one feature h [hidden] -> [n, vocab]. Heads that end with the same LM
        head (the lab's shared layout) are read out in ONE call over n rows: on a CPU the LM head's weight pass
        dominates a head (the embedded model's packed 49152 x 576 head, 2026-12-04: 5.9 ms for one row, 14.4 ms
        for five at once), so one call over 4 rows costs at most ~60% of 4 separate ones."""
        heads = list(self.medusa_head)[:n]
        ends = [seq[-1] for seq in heads]
        if n > 1 and all(e is ends[0] for e in ends):
            z = torch.stack([seq[:-1](h) for seq in heads])
            return ends[0](z)
        return torch.stack([seq(h) for seq in heads])


class EagleHead(nn.Module):
    """EAGLE-1/2's draft head: fc over concat(embedding, feature), then Llama decoder layer(s)."""

    def __init__(self, config, fc_bias: bool = True, input_norm: bool = False, own_embed: bool = False):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
        config = copy.deepcopy(config)
        config._attn_implementation = "sdpa"   # a 4D tree mask is passed
        self.config = config
        h = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, h) if own_embed else None
        self.fc = nn.Linear(2 * h, h, bias=fc_bias)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        if not input_norm:
            self.layers[0].input_layernorm = nn.Identity()   # EAGLE's layer 0 reads fc's output unnormalised
        self.rotary_emb = LlamaRotaryEmbedding(config)
        # set by eagle_from_state for a head with a reduced draft vocabulary: its ids, and x -> x @ W[ids].T over
        # those rows of the LM head's weight W (engine.cpu_linear.linear_fn)
        self.draft_ids = self.draft_read = None

    def forward(self, feats, embeds, pos, mask, cache):
        """feats, embeds [1, n, hidden]; pos [1, n]; mask [1, 1, n, kv] additive -> predicted features [1, n, hidden]."""
        x = self.fc(torch.cat([embeds.to(feats.dtype), feats], -1))
        pe = self.rotary_emb(x, position_ids=pos)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                      position_embeddings=pe)
            if isinstance(x, tuple):
                x = x[0]
        return x



# ---- Medusa ---------------------------------------------------------------------------------

def medusa_from_state(sd: dict, config: dict | None, lm, where: str = "the Medusa heads") -> MedusaHeads:
    hidden, vocab = target_dims(lm)
    sd = {k[len("medusa_head."):] if k.startswith("medusa_head.") else k: v for k, v in sd.items()}
    heads = {int(k.split(".")[0]) for k in sd if k.split(".")[0].isdigit()}
    if not heads:
        raise MethodError(f"{where}: no Medusa head keys (expected 0.0.linear.weight, 0.1.weight, ...); "
                          f"found {', '.join(list(sd)[:4])}.")
    n = int((config or {}).get("medusa_num_heads") or max(heads) + 1)
    depth = {int(k.split(".")[1]) for k in sd if k.startswith("0.") and k.split(".")[1].isdigit()}
    layers = int((config or {}).get("medusa_num_layers", max(depth) if depth else 1))
    if not 1 <= n <= MAX_HEADS or not 0 <= layers <= 8:
        raise MethodError(f"{where}: {n} heads of {layers} layers; at most {MAX_HEADS} heads of 8 layers are allowed.")
    check_target(config, lm, where)
    shared = (config or {}).get("shared_lm_head", False)
    if not isinstance(shared, bool):
        raise MethodError(f"{where}: config.json shared_lm_head must be true or false, got {shorten(shared)}.")
    if shared:   # the lab's own layout: every head ends with the target's LM head (only the ResBlocks are stored)
        return _shared_medusa(sd, n, layers, lm, where)
    last = sd.get(f"0.{layers}.weight")
    if last is not None and last.dim() == 2:
        if last.shape[1] != hidden:
            raise MethodError(f"{where} were trained for hidden size {last.shape[1]}; this model's hidden size is "
                              f"{hidden}.")
        if last.shape[0] != vocab:
            raise MethodError(f"{where} predict a vocabulary of {last.shape[0]} tokens; this model's LM head has "
                              f"{vocab}.")
    with torch.device("meta"):
        skel = MedusaHeads(hidden, vocab, n, layers)
    _keys_match(sd, skel.medusa_head, where)
    mod = MedusaHeads(hidden, vocab, n, layers)
    mod.medusa_head.load_state_dict(sd, strict=True)
    return _packed(mod.to(device=lm.device, dtype=lm.dtype).eval())


def _packed(mod: nn.Module) -> nn.Module:
    cpu_linear.install(mod)    # a float32 CPU head: packed linears, as the target's (engine/cpu_linear.py)
    return mod


def _shared_medusa(sd: dict, n: int, layers: int, lm, where: str) -> MedusaHeads:
    hidden, vocab = target_dims(lm)
    if layers < 1:
        raise MethodError(f"{where}: shared_lm_head needs at least one ResBlock per head (medusa_num_layers >= 1).")
    w = sd.get("0.0.linear.weight")
    if w is not None and w.dim() == 2 and w.shape[1] != hidden:
        raise MethodError(f"{where} were trained for hidden size {w.shape[1]}; this model's hidden size is {hidden}.")
    want = {f"{i}.{j}.linear.{p}": (hidden, hidden) if p == "weight" else (hidden,)
            for i in range(n) for j in range(layers) for p in ("weight", "bias")}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        raise MethodError(f"{where} (shared LM head) do not have the expected layout: "
                          + "; ".join(x for x in (f"missing keys: {', '.join(missing[:6])}" if missing else "",
                                                  f"unexpected keys: {', '.join(unexpected[:6])}" if unexpected else "")
                                      if x) + ".")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise MethodError(f"{where}: {k} has shape {list(sd[k].shape)}, expected {list(shape)} for this model.")
    mod = MedusaHeads(hidden, vocab, n, layers, shared_head=lm.model.get_output_embeddings())
    with torch.no_grad():
        for i, seq in enumerate(mod.medusa_head):
            for j, blk in enumerate(list(seq)[:layers]):
                blk.linear.weight.copy_(sd[f"{i}.{j}.linear.weight"])
                blk.linear.bias.copy_(sd[f"{i}.{j}.linear.bias"])
                blk.to(device=lm.device, dtype=lm.dtype)
    return _packed(mod.eval())


def load_medusa(path: str, lm) -> MedusaHeads:
    """Medusa heads from a local checkpoint (FasterDecoding/Medusa layout), checked against the target."""
    def build():
        sd, config = read_state(path)
        return medusa_from_state(sd, config, lm, f"The Medusa heads in {shorten(path)}")
    return _cached("medusa", path, lm, build)


def random_medusa(lm, seed: int, num_heads: int = 4, num_layers: int = 1) -> MedusaHeads:
    """Untrained heads as Medusa initialises them -- the final linear is the target's LM head (shared, not
    copied) -- with the ResBlocks' weights drawn N(0, 0.02) from `seed` (Medusa starts them at zero)."""
    hidden, vocab = target_dims(lm)
    mod = MedusaHeads(hidden, vocab, num_heads, num_layers, shared_head=lm.model.get_output_embeddings())
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for seq in mod.medusa_head:
            for blk in list(seq)[:num_layers]:
                blk.linear.weight.copy_(torch.randn(hidden, hidden, generator=gen) * 0.02)
                blk.linear.bias.zero_()
                blk.to(device=lm.device, dtype=lm.dtype)
    return _packed(mod.eval())


# ---- EAGLE ----------------------------------------------------------------------------------

def draft_ids_from_state(sd: dict, vocab: int, where: str) -> torch.Tensor | None:
    """The optional reduced draft vocabulary (`draft_ids`: sorted unique token ids, as FR-Spec / EAGLE-3's d2t): the
    head reads out only these rows of the LM head (q is 0 elsewhere: still lossless). Popped from `sd`."""
    ids = sd.pop("draft_ids", None)
    if ids is None:
        return None
    if ids.dim() != 1 or ids.numel() == 0 or ids.dtype.is_floating_point:
        raise MethodError(f"{where}: draft_ids must be a non-empty 1-D tensor of token ids.")
    ids = ids.long()
    if int(ids.min()) < 0 or int(ids.max()) >= vocab or ids.unique().numel() != ids.numel():
        raise MethodError(f"{where}: draft_ids must be distinct token ids in 0..{vocab - 1} (this model's vocabulary).")
    return ids.sort().values


def eagle_from_state(sd: dict, config: dict | None, lm, where: str = "The EAGLE head") -> EagleHead:
    from transformers import LlamaConfig
    hidden, vocab = target_dims(lm)
    sd = dict(sd)
    draft_ids = draft_ids_from_state(sd, vocab, where)
    if config is not None:
        for k in ("hidden_size", "vocab_size"):
            if k in config and not isinstance(config[k], int):
                raise MethodError(f"{where}: config.json {k} must be an integer, got {shorten(config[k])}.")
        if config.get("hidden_size", hidden) != hidden:
            raise MethodError(f"{where} was trained for hidden size {config['hidden_size']} (config.json); this "
                              f"model's hidden size is {hidden}.")
        if config.get("vocab_size", vocab) != vocab:
            raise MethodError(f"{where} has a vocabulary of {config['vocab_size']} tokens (config.json); this model's "
                              f"LM head has {vocab}.")
    check_target(config, lm, where)
    fc = sd.get("fc.weight")
    if fc is None:
        raise MethodError(f"{where} does not have the expected layout: missing key fc.weight "
                          f"(found {', '.join(list(sd)[:4])}).")
    if tuple(fc.shape) != (hidden, 2 * hidden):
        raise MethodError(f"{where}: fc.weight has shape {list(fc.shape)}; this model (hidden size {hidden}) needs "
                          f"[{hidden}, {2 * hidden}].")
    emb = sd.get("embed_tokens.weight")
    if emb is not None and tuple(emb.shape) != (vocab, hidden):
        raise MethodError(f"{where}: embed_tokens.weight has shape {list(emb.shape)}; this model's vocabulary x "
                          f"hidden is [{vocab}, {hidden}].")
    layer_ids = {int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.split(".")[1].isdigit()}
    n_layers = max(layer_ids) + 1 if layer_ids else 1
    if config is not None:
        d = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "auto_map")}
        try:
            cfg = LlamaConfig.from_dict(d)
        except Exception as e:  # a config that LlamaConfig refuses
            raise MethodError(f"{where}: config.json is not a LlamaConfig: {str(e)[:200]}") from None
        if not 1 <= cfg.num_hidden_layers <= 8:
            raise MethodError(f"{where}: config.json num_hidden_layers must be in 1..8, got {cfg.num_hidden_layers}.")
    else:
        cfg = head_config(lm, n_layers)
    cfg.vocab_size, cfg.hidden_size = vocab, hidden
    kw = dict(fc_bias="fc.bias" in sd, input_norm="layers.0.input_layernorm.weight" in sd, own_embed=emb is not None)
    with torch.device("meta"):
        skel = EagleHead(cfg, **kw)
    _keys_match(sd, skel, where)
    mod = EagleHead(cfg, **kw)
    mod.load_state_dict(sd, strict=True)
    mod = mod.to(device=lm.device, dtype=lm.dtype).eval()
    if draft_ids is not None:
        w = lm.model.get_output_embeddings().weight.detach()
        mod.draft_ids = draft_ids.to(w.device)
        mod.draft_read = cpu_linear.linear_fn(w[mod.draft_ids].clone())   # the LM head's rows of the draft vocabulary
    return _packed(mod)


def load_eagle(path: str, lm) -> EagleHead:
    """An EAGLE-1/2 head from a local checkpoint (SafeAILab/EAGLE layout), checked against the target."""
    def build():
        sd, config = read_state(path)
        return eagle_from_state(sd, config, lm, f"The EAGLE head in {shorten(path)}")
    return _cached("eagle", path, lm, build)


def random_eagle(lm, seed: int, layers: int = 1) -> EagleHead:
    """An untrained EAGLE head for the target, drawn from `seed`: fc starts as [0 | I] (it passes the target's
    feature through) plus N(0, 0.02) noise, the decoder layer's linears N(0, initializer_range), norms at one.
    Untrained, it guesses that the next feature is about the current one."""
    cfg = head_config(lm, layers)
    gen = torch.Generator().manual_seed(int(seed))
    mod = EagleHead(cfg)
    std = float(getattr(cfg, "initializer_range", 0.02) or 0.02)
    h = cfg.hidden_size
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        mod.fc.weight[:, h:] += torch.eye(h)
    return _packed(mod.to(device=lm.device, dtype=lm.dtype).eval())
