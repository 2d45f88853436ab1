"""Batched masked diffusion over left-padded prompts: many answers at once, no step records.

The per-run sampler (engine.diffusion.sampler.diffuse) decodes one prompt and yields a Step per step for the
pages; this decodes a batch for training data (gen-self: the diffusion model answering its own training
instructions, training/generate.py). The schedule, the rule's choice and the at-least-one-commit rule are the
sampler's (`sampler.resolve_rule`, `step_count`, `choose_batch`); what is batched here is the forward: rows
left-padded to one width (pads attend only to themselves, positions count real tokens), answers in the same
columns, semi-autoregressive blocks, an optional Fast-dLLM prefix cache, and a row leaves the batch once its
answer ends (an EOS committed with nothing masked before it; the rest becomes EOS).

For a Dream-style (shifted: position i predicted by the hidden state at i-1) bidirectional Hugging Face model
with `.model` (the backbone) and `.lm_head`: the embedded SmolLM2 diffusion model. Greedy (the argmax is each
position's candidate). A rule sees the current block's positions (N = block_length, not gen_length as in
diffuse: the logits of the other positions are not computed), and its `state` starts afresh with each block.
The result equals diffuse's token for token for a batch of one (tests/test_training_sampler.py) for every rule
whose choice depends only on the block's candidates (all the shipped ones but `random`, whose draws cover N
positions, and `credit`, whose memory spans blocks; with a single block, those too).
"""
from __future__ import annotations

import torch

from engine.diffusion import sampler as SM
from engine.methods import MethodError
from engine.sampling import SamplingConfig


def padded_attention(A, start: int = 0):
    """4D bidirectional mask over left-padded rows (A: real tokens) for the queries from `start` on:
    real tokens see every real token, pads see only themselves."""
    att = A[:, None, start:, None] & A[:, None, None, :]
    return att | torch.eye(A.shape[1], dtype=torch.bool)[None, None, start:]


def padded_positions(A):
    return (A.long().cumsum(1) - 1).clamp(min=0)


def padded_hidden(model, E, A):
    """Bidirectional forward over left-padded rows (A: real tokens); pads attend only to themselves."""
    return model.model(inputs_embeds=E, attention_mask=padded_attention(A),
                       position_ids=padded_positions(A)).last_hidden_state


@torch.no_grad()
def denoise_batch(model, prompts: list[list[int]], mask_id: int, eos: int, gen_length: int, block_length: int = 0,
                  steps: int = 0, rule: str = "low_confidence", rule_params: dict | None = None,
                  prefix_cache: bool = False, stop_at_eos: bool = True) -> list[list[int]]:
    """The answers (gen_length ids each, EOS after a row's end) to `prompts` (lists of ids, any lengths).

    block_length / steps as in diffuse (0: gen_length; steps are over the whole answer, split evenly over the
    blocks); rule / rule_params: a rule of engine.diffusion.rules.RULES and its options (`schedule` included).
    prefix_cache: Fast-dLLM's approximation: the keys/values of the prompt and the committed blocks computed
    once per block (from the canvas at the block's start), the block and what follows it recomputed every step.

    One loop kept whole, as diffuse is (~80 lines): blocks, steps, the batched forward, each row's choice and the
    commit are the algorithm in order, the rows' bookkeeping (done, EOS) inside it (issue 29).
    """
    from transformers import DynamicCache
    from engine import kvcache
    B, width = len(prompts), max(map(len, prompts))
    block_length, steps = SM.validate(gen_length, block_length, steps, rule, min(map(len, prompts)), 0.0,
                                      prefix_cache)
    fn, params, schedule_kind = SM.resolve_rule(rule, rule_params)
    blocks = gen_length // block_length
    steps_per_block = steps // blocks
    generator = SamplingConfig().generator("cpu")   # the random rule's draws, seeded as diffuse's
    emb = model.get_input_embeddings().weight
    L = width + gen_length
    X = torch.full((B, L), eos)
    A = torch.zeros((B, L), dtype=torch.bool)
    for i, e in enumerate(prompts):
        X[i, width - len(e):width] = torch.tensor(e)
        A[i, width - len(e):] = True
    X[:, width:] = mask_id
    pos_all = padded_positions(A)
    ar = torch.arange(gen_length)
    active = torch.arange(B)
    for k in range(blocks):
        if len(active) == 0:  # every answer has ended
            break
        lo, hi = width + k * block_length, width + (k + 1) * block_length
        cache, start = None, 0
        if prefix_cache:  # keys/values of positions < lo - 1 (the hidden state at lo-1 predicts lo)
            cache = DynamicCache()
            model.model(input_ids=X[active], attention_mask=padded_attention(A[active]),
                        position_ids=pos_all[active], past_key_values=cache, use_cache=True)
            start = lo - 1
            kvcache.crop(cache, start)
            keep = active
        schedule = SM.num_transfer_tokens(block_length, steps_per_block)  # a block starts fully masked
        states = {int(r): {} for r in active}
        i = 0
        while True:
            x, a = X[active], A[active]
            if cache is not None:
                if len(active) < len(keep):  # finished rows leave the batch: drop their cache rows
                    sel = torch.nonzero(torch.isin(keep, active)).squeeze(1)
                    cache.batch_select_indices(sel)
                    keep = active
                h = model.model(input_ids=x[:, start:], attention_mask=padded_attention(a, start),
                                position_ids=pos_all[active, start:],
                                past_key_values=cache, use_cache=True).last_hidden_state
                kvcache.crop(cache, start)
                h = h[:, lo - 1 - start:hi - 1 - start]
            else:
                h = padded_hidden(model, emb[x], a)[:, lo - 1:hi - 1]  # shift: i-1 predicts i
            logits = model.lm_head(h).float()
            logits[..., mask_id] = float("-inf")
            cand = x[:, lo:hi] == mask_id
            still = (x[:, width:] == mask_id).sum(-1)
            ks = [SM.step_count(schedule_kind, schedule, int(c), i, steps_per_block) for c in cand.sum(-1)]
            progress = [(gen_length - int(m)) / gen_length for m in still]  # as diffuse
            x0, commit = SM.choose_batch(logits, cand, fn, params, schedule_kind, ks, i, steps_per_block, progress,
                                         {eos}, [states[int(r)] for r in active], generator)
            if bool((x0[commit] == mask_id).any()):
                raise MethodError("The model predicted the mask token itself; its logits are not usable.")
            X[active, lo:hi] = torch.where(commit, x0, X[active, lo:hi])
            i += 1
            if stop_at_eos:
                ans = X[active, width:]
                first_mask = torch.where(ans == mask_id, ar, gen_length).min(-1).values
                first_eos = torch.where(ans == eos, ar, gen_length).min(-1).values
                finished = first_eos < first_mask
                for r, fe in zip(active[finished].tolist(), first_eos[finished].tolist()):
                    X[r, width + fe:] = eos
                active = active[~finished]
            if len(active) == 0 or not bool((X[active, lo:hi] == mask_id).any()):
                break
    assert not bool((X[:, width:] == mask_id).any())
    return [X[i, width:].tolist() for i in range(B)]
