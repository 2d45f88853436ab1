"""Context-aware decoding (Shi et al. 2023, "Trusting Your Evidence: Hallucinate Less with Context-aware
Decoding"): every token is chosen from

    (1 + alpha) * log p(y | context, question, y_<t)  -  alpha * log p(y | question, y_<t)

(the paper writes logits; log-probabilities differ from them by a constant per distribution, so the softmax
is the same). The second term takes out what the model would say without the context, amplifying what the
context changes: the answer leans on the given evidence over the model's prior. alpha = 0 is ordinary
decoding with the context.

The prompt is the question; the `context` option is the evidence (a document, a passage). The model reads
"<context>\\n\\n<question>" (in the chat template for an instruct model) on one KV cache and the question
alone on a second; each step is two one-token forwards (counted as two target forwards). Sampling settings
apply to the combined logits.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from engine import sampling as S
from engine.errors import MethodError, OptionError, PromptError
from engine.methods import Job, register
from engine.methods.ar import candidates_record, prefill
from engine.trace import clean_float
from engine.options import Opt

MAX_CONTEXT = 20_000      # characters of the context option
ROWS = 6                  # per step: the top tokens of each of the three distributions (union, recorded)


def joined(context: str, question: str) -> str:
    """What the model reads with the context."""
    return f"{context.strip()}\n\n{question}"


def check(o: dict, ctx) -> None:
    if not o["context"].strip():
        raise OptionError("context is empty: context-aware decoding contrasts the answer with and without a "
                          "context (a passage the answer should follow); give one.")
    try:
        n = int(ctx.lm.encode(joined(o["context"], "x")).shape[1]) - 1 + ctx.prompt_len
    except PromptError as e:
        raise OptionError(f"The context with the question does not fit: {e}") from None
    ctx.need_positions(n + ctx.max_new_tokens, f"The context + question (~{n} tokens) + {ctx.max_new_tokens} new "
                                               "tokens")


@register("cad", "search", "Context-aware decoding: (1 + alpha) log p(y | context, question) - alpha log p(y | "
          "question) per token, so that the answer follows the given context over the model's prior.",
          options={
              "context": Opt("The Eiffel Tower was moved to Rome in 2031, where it now stands beside the Colosseum.",
                             "the passage the answer should follow (the prompt is the question)", max_len=MAX_CONTEXT,
                             multiline=True),
              "alpha": Opt(0.5, "how much the no-context prediction is subtracted (0: ordinary decoding with the "
                                "context; the paper uses 0.5 to 1)", min=0.0, max=10.0, slider=True),
              "top_candidates": Opt(10, "candidates recorded per step", min=1, max=100),
          }, check=check, lossless=False)
def generate(job: Job, context: str = "", alpha: float = 0.5, top_candidates: int = 10):
    lm, cfg, c = job.lm, job.sampling, job.counters
    with_ids = lm.encode(joined(context, job.prompt))
    if with_ids.shape[1] <= job.input_ids.shape[1]:
        raise MethodError("The context adds no tokens to the prompt.")
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    cache_c, cache_q = DynamicCache(), DynamicCache()
    job.extra["summary"] = {"alpha": alpha, "context_tokens": int(with_ids.shape[1] - job.input_ids.shape[1])}
    changed = 0
    with torch.inference_mode():
        with c.compute():
            lc = prefill(lm, with_ids, cache_c)[0]
            lq = prefill(lm, job.input_ids, cache_q)[0]
        c.target_forwards += 2
        step = 0
        while True:
            with c.compute():
                logp_c, logp_q = torch.log_softmax(lc, -1), torch.log_softmax(lq, -1)
                combined = (1.0 + alpha) * logp_c - alpha * logp_q
                tok = int(S.choose(combined, cfg, gen))
            job.commit([tok])
            rec = {"kind": "ar", "index": step, "position": job.input_ids.shape[1] + step, "new_ids": [tok]}
            top_c, top_x = int(logp_c.argmax()), int(combined.argmax())
            if top_x != top_c:
                changed += 1
                rec["events"] = ["changed"]
            if job.record:
                with c.recording():
                    rec.update(candidates_record(lm, combined, cfg, tok, top_candidates))
                    rec["new_text"], rec["confidence"] = rec["token_text"], rec["prob"]
                    rec["cad"] = block(lm, logp_c, logp_q, combined, tok, alpha)
            else:
                rec["token_id"] = tok
            job.extra["summary"]["changed_steps"] = changed
            yield rec
            step += 1
            if job.finished([tok]):
                return
            with c.compute():
                t = torch.tensor([[tok]], device=lm.device)
                lc = lm.model(input_ids=t, past_key_values=cache_c, use_cache=True).logits[0, -1].float()
                lq = lm.model(input_ids=t, past_key_values=cache_q, use_cache=True).logits[0, -1].float()
            c.target_forwards += 2


def block(lm, logp_c: torch.Tensor, logp_q: torch.Tensor, combined: torch.Tensor, tok: int, alpha: float) -> dict:
    """One step's three distributions over the union of their top tokens, and where they disagree."""
    p_c, p_q, p_x = logp_c.exp(), logp_q.exp(), torch.softmax(combined, -1)
    ids: list[int] = []
    for p in (p_c, p_q, p_x):
        for t in torch.topk(p, ROWS).indices.tolist():
            if t not in ids:
                ids.append(t)
    if tok not in ids:
        ids.append(tok)
    kl = float((p_c * (logp_c - logp_q)).sum().clamp(min=0.0))
    return {"alpha": clean_float(alpha),
            "rows": [{"id": int(t), "text": lm.token_text(t), "p_with": clean_float(p_c[t]),
                      "p_without": clean_float(p_q[t]), "p_cad": clean_float(p_x[t])} for t in ids],
            "top_with": int(p_c.argmax()), "top_without": int(p_q.argmax()), "top_cad": int(p_x.argmax()),
            "kl": clean_float(min(kl, 1e3))}
