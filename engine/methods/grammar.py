"""Grammar-constrained decoding: at every step only the tokens a grammar accepts may be chosen.

(~360 lines, one file on purpose: the xgrammar compiler cache, the Constraint and the method that
uses them, read together with the example schema.)

Each step is an autoregressive step (one forward with a KV cache) with one more stage between the logits and the
choice: the grammar's matcher computes the set of tokens that keep the text a prefix of some sentence of the
grammar (a bitmask over the vocabulary), every other logit becomes -inf, and the usual sampling settings
(engine.sampling: temperature, top-k, top-p ...) choose among what is left; the chosen token then advances the
matcher. End-of-text is allowed exactly where the grammar accepts the text so far. A run ends

  * when the model chooses end-of-text (the grammar accepts: the answer is complete),
  * when the grammar admits nothing but end-of-text after a token (e.g. a regex for one fixed string, a JSON
    object's closing brace): the run stops there, complete, without a forward for the end-of-text,
  * when the grammar admits no continuation at all (a dead end: the matcher only allows tokens that can still
    lead to a sentence, so this should not happen, but it ends the run with that status if it does),
  * at the token budget, complete or not (the status says which).
The status is the last step's `grammar.stop` and `trace.extra["summary"]["stop"]`.

Grammar kinds: "json_schema" (a JSON Schema; compact JSON: ", " and ": " separators, no other whitespace),
"regex", "ebnf" (xgrammar's EBNF, as llama.cpp's GBNF: `root ::= ...`; or Lark: `start: ...`, told apart by
"::="), "json" (any JSON object; the grammar text is not used) and "any" (no constraint: every token allowed, no
matcher; the output equals autoregressive decoding token for token, greedy or sampled with the same seed).

Library: xgrammar (mlc-ai, PyPI `xgrammar`). Both xgrammar 0.2.9 and llguidance 1.9.1 were installed and measured
on the SmolLM2 vocabulary (49,152 tokens): the mask (fill the bitmask, unpack it to a bool tensor, gate EOS) and
the acceptance of the chosen token, per step, replaying the tokens of one constrained run of the embedded model
through each library 20 times (benchmarks/grammar_overhead.py, 2026-12-02, 2 shared CPU cores;
benchmarks/results_grammar.md has the whole output):

    ms per step, mask / accept     xgrammar         llguidance       model forward (SmolLM2-135M, 2 CPU threads)
    json_schema (a person)         0.010 / 0.001    0.058 / 0.003    ~43 ms
    regex (a sentence)             0.020 / 0.002    0.219 / 0.004
    ebnf (arithmetic)              0.008 / 0.001    0.014 / 0.001

(a run on a more loaded machine: llguidance 0.30 and 0.99 ms for the JSON schema and the regex, xgrammar 0.011 and
0.020 ms). xgrammar precomputes most of a grammar's token masks when it compiles it (the JSON schema ~5 ms, a regex
< 1 ms); llguidance computes them lazily. In the decoding loop itself (colder caches after the forward) the mask
is ~0.13-0.16 ms and the acceptance ~0.04 ms with xgrammar: ~0.4% of a CPU step; on a GPU forward of a few ms
xgrammar's margin matters. It integrates cleanly with a Hugging Face tokenizer:
`TokenizerInfo.from_huggingface(tokenizer, vocab_size=<the logits' width>, stop_token_ids=<the model's EOS ids>)`
detects the byte-level vocabulary itself. Its dependencies: apache-tvm-ffi (pinned in requirements.txt), and it
declares torch / transformers / triton / numpy / pydantic, all already installed and the first four pinned there,
so installing it pulls no other torch. Compile errors name a position ("at line 1, column 16", "at position 5",
Lark with a caret); the C++ source location xgrammar puts in front is removed.
"""
from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import torch
from transformers import DynamicCache

from engine import sampling as S
from engine.errors import MethodError, OptionError
from engine.methods import Job, register
from engine.methods.ar import candidates_record, prefill
from engine.options import Not, Opt
from engine.trace import clean_float

LIBRARY = "xgrammar"
KINDS = ("json_schema", "regex", "ebnf", "json", "any")
TEXT_KINDS = ("json_schema", "regex", "ebnf")     # the kinds that read the grammar text
MAX_GRAMMAR = 20_000
MAX_MESSAGE = 1_500                               # characters of a library error message quoted back
DEFAULT_SCHEMA = ('{"type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, '
                  '"age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], '
                  '"additionalProperties": false}')
# compact JSON: a small model given free whitespace can spend its budget on newlines and indentation
JSON_FORMAT = {"any_whitespace": False, "separators": (", ", ": ")}
ANY_JSON_OBJECT = '{"type": "object"}'
CACHE_BYTES = 64 << 20                            # the compiler's cache of compiled grammars

STOP_EOS = "complete: the model ended the answer (end-of-text) where the grammar accepts"
STOP_DONE = "complete: the grammar admits nothing more after this token (only end-of-text could follow)"
STOP_DEAD = "dead end: the grammar admits no continuation here (and does not accept the text so far)"
STOP_BUDGET_OK = "token budget reached: the grammar accepts the text so far (the answer is complete)"
STOP_BUDGET = "token budget reached before the grammar was complete (the answer is cut off)"


def _lib():
    try:
        import xgrammar
    except ImportError as e:   # pragma: no cover - the pinned requirement is installed
        raise MethodError("Grammar-constrained decoding needs the xgrammar package (pip install xgrammar, "
                          f"see requirements.txt): {e}") from None
    return xgrammar


def library_version() -> str:
    try:
        from importlib.metadata import version
        return f"{LIBRARY} {version(LIBRARY)}"
    except Exception:   # pragma: no cover
        return LIBRARY


# ---- the compiler: one per tokenizer (reading the vocabulary takes ~0.3 s); it caches compiled grammars -----------
_LOCK = threading.Lock()
_COMPILERS: dict = {}                        # (id(tokenizer), n_vocab, eos ids) -> (tokenizer, GrammarCompiler)


def vocab_size(lm) -> int:
    """The width of the model's logits (the bitmask covers it; tokens past the tokenizer's are never allowed)."""
    n = int(getattr(lm.model.config, "vocab_size", 0) or 0)
    return max(n, len(lm.tokenizer))


def _compiler(lm):
    n_vocab = vocab_size(lm)
    eos = sorted(lm.eos_ids)
    key = (id(lm.tokenizer), n_vocab, tuple(eos))
    with _LOCK:
        hit = _COMPILERS.get(key)
        if hit is not None and hit[0] is lm.tokenizer:
            return hit[1]
        xgr = _lib()
        try:
            info = xgr.TokenizerInfo.from_huggingface(lm.tokenizer, vocab_size=n_vocab, stop_token_ids=eos or None)
            comp = xgr.GrammarCompiler(info, max_threads=2, cache_limit_bytes=CACHE_BYTES)
        except Exception as e:
            raise MethodError(f"Grammar-constrained decoding cannot read this model's tokenizer ({LIBRARY}): "
                              f"{_message(e)[:300]}") from None
        _COMPILERS[key] = (lm.tokenizer, comp)
        return comp


_NOISE = re.compile(r"\[\d{1,2}:\d{2}:\d{2}\] \S+?:\d+: |Check failed: \(.*?\) is false: ")


def _message(e) -> str:
    """The library's message without the C++ source location it starts with, cut to MAX_MESSAGE characters."""
    msg = _NOISE.sub("", str(e)).strip()
    return msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE - 1] + "…"


def is_lark(text: str) -> bool:
    """An "ebnf" grammar in Lark syntax (`start: ...`) rather than xgrammar's EBNF / GBNF (`root ::= ...`)."""
    return "::=" not in text


def compile_grammar(lm, kind: str, text: str):
    """The compiled grammar (xgrammar.CompiledGrammar; the compiler caches it). OptionError, with the library's
    message, when it does not compile. No forward: cheap enough for `check`."""
    if kind not in TEXT_KINDS + ("json",):
        raise OptionError(f"grammar_kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    if kind in TEXT_KINDS and not text.strip():
        raise OptionError(f"grammar is empty: write a {kind.replace('_', ' ')} (grammar_kind={kind}).")
    comp = _compiler(lm)
    what = {"json_schema": "JSON schema", "regex": "regex", "ebnf": "EBNF grammar", "json": "JSON grammar"}[kind]
    try:
        if kind == "json":
            return comp.compile_json_schema(ANY_JSON_OBJECT, **JSON_FORMAT)
        if kind == "json_schema":
            return comp.compile_json_schema(text, **JSON_FORMAT)
        if kind == "regex":
            return comp.compile_regex(text)
        return comp.compile_lark(text) if is_lark(text) else comp.compile_grammar(text)
    except (RuntimeError, ValueError, TypeError) as e:
        if kind == "ebnf":
            what = "Lark grammar" if is_lark(text) else "EBNF grammar"
        raise OptionError(f"grammar: the {what} does not compile: {_message(e)}") from None


class Constraint:
    """The matcher of one run, with the model's EOS tokens allowed exactly where the grammar accepts (none with
    ignore_eos), and its bitmask unpacked to a bool tensor over the model's logits."""

    def __init__(self, compiled, n_vocab: int, all_eos: set[int], eos: set[int], device):
        xgr = _lib()
        self.m = xgr.GrammarMatcher(compiled)
        self.n, self.device = n_vocab, device
        self.bitmask = xgr.allocate_token_bitmask(1, n_vocab)
        self.all_eos = sorted(t for t in all_eos if t < n_vocab)
        self.eos = sorted(t for t in eos if t < n_vocab)

    def accepting(self) -> bool:
        return bool(self.m.is_completed())

    def allowed(self) -> torch.Tensor:
        """[V] bool: the tokens the grammar allows next."""
        self.m.fill_next_token_bitmask(self.bitmask)
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), count=self.n, bitorder="little")
        mask = bits.view(np.bool_)
        mask[self.all_eos] = False
        if self.eos and self.accepting():
            mask[self.eos] = True
        t = torch.from_numpy(mask)
        return t if self.device in ("cpu", torch.device("cpu")) else t.to(self.device)

    def eos_allowed(self, mask: torch.Tensor) -> int:
        return int(mask[self.eos].sum()) if self.eos else 0

    def consume(self, token: int) -> bool:
        return bool(self.m.accept_token(int(token)))

    def consume_all(self, tokens) -> bool:
        return all(self.consume(t) for t in tokens)

    def error(self) -> str:
        return "the matcher does not accept it"


def check(o: dict, ctx) -> None:
    """Compile the grammar (no forward): OptionError with the library's message when it does not compile, or when
    it admits no text at all."""
    if o["grammar_kind"] == "any":
        return
    compiled = compile_grammar(ctx.lm, o["grammar_kind"], o["grammar"])
    con = Constraint(compiled, vocab_size(ctx.lm), ctx.lm.eos_ids, ctx.lm.eos_ids, "cpu")
    if not bool(con.allowed().any()):
        raise OptionError("grammar: it admits no text at all (no token can start a sentence of it).")


@register("grammar", "search", "Grammar-constrained decoding: only tokens that a JSON schema, a regex or an EBNF "
          "grammar accepts may be chosen (the mask applies to the logits before sampling).",
          options={
              "grammar_kind": Opt("json_schema", "what the grammar text is: a JSON schema, a regex, an EBNF grammar "
                                                 "(Lark or GBNF); json: any JSON object; any: no constraint "
                                                 "(equals autoregressive decoding)", choices=KINDS),
              "grammar": Opt(DEFAULT_SCHEMA, "the grammar text (a JSON schema, a regex or an EBNF grammar, as "
                                             "grammar_kind says)", max_len=MAX_GRAMMAR, multiline=True,
                             when={"grammar_kind": Not(("json", "any"))}),
              "top_candidates": Opt(10, "candidates recorded per step, before and after the mask", min=1, max=100),
          }, check=check, lossless=False)
def generate(job: Job, grammar_kind: str = "json_schema", grammar: str = DEFAULT_SCHEMA, top_candidates: int = 10):
    """One decoding loop that reads better whole: mask, choose, advance the matcher, record, with the
    stop reasons where they arise; the record's block is `_block` (issue 29)."""
    lm, cfg, c = job.lm, job.sampling, job.counters
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    free = grammar_kind == "any"
    n_vocab = vocab_size(lm)
    con = None if free else Constraint(compile_grammar(lm, grammar_kind, grammar), n_vocab, lm.eos_ids, job.eos_ids,
                                       lm.device)
    eos = job.eos_ids
    times = {"mask": 0.0, "accept": 0.0}
    last = {"mask": 0.0, "accept": 0.0}        # this step's: the mask it chose under, the token's acceptance
    stats = {"steps": 0, "forced": 0, "overridden": 0, "share": 0.0, "removed": 0.0}
    summary = {"grammar_kind": grammar_kind, "library": library_version() if not free else "none (any)"}
    job.extra["summary"] = summary

    def timed(what, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        last[what] = time.perf_counter() - t0
        times[what] += last[what]
        return out

    def finish(stop: str, complete: bool):
        n = max(stats["steps"], 1)
        summary.update(stop=stop, complete=complete, steps=stats["steps"], forced_steps=stats["forced"],
                       overridden_steps=stats["overridden"],
                       mask_ms_per_step=clean_float(1e3 * times["mask"] / n, 4),
                       accept_ms_per_step=clean_float(1e3 * times["accept"] / n, 4))
        if job.record and stats["steps"]:
            summary.update(mean_allowed_share=clean_float(stats["share"] / n),
                           mean_removed_mass=clean_float(stats["removed"] / n))

    cache = DynamicCache()
    with torch.inference_mode():
        with c.compute():
            logits = prefill(lm, job.input_ids, cache)
        c.target_forwards += 1
        V = logits.shape[-1]
        allowed = None
        if con is not None:
            with c.compute():
                allowed = timed("mask", con.allowed)[:V]
            if not bool(allowed.any()):    # (check refuses a grammar that admits nothing; ignore_eos can leave this)
                finish(STOP_DONE if con.accepting() else STOP_DEAD, con.accepting())
                return
        step = 0
        while True:
            mask_s, last["accept"] = last["mask"], 0.0
            with c.compute():
                masked = logits if allowed is None else logits.masked_fill(~allowed, S.NEG_INF)
                tok = int(S.choose(masked[0], cfg, gen))
                ok = True
                if con is not None and tok not in eos:
                    ok = timed("accept", con.consume, tok)
            job.commit([tok])
            stats["steps"] += 1
            stop, complete, nxt = None, False, None
            if tok in eos:
                stop, complete = STOP_EOS, True
            elif not ok:
                stop = f"error: the grammar rejected the token ({con.error() or 'no reason given'})"
            elif len(job.output_ids) >= job.max_new_tokens:
                complete = con is None or con.accepting()
                stop = STOP_BUDGET_OK if complete else STOP_BUDGET
            elif con is not None:
                with c.compute():
                    nxt = timed("mask", con.allowed)[:V]
                n_next = int(nxt.sum())
                if n_next == 0 or (n_next == con.eos_allowed(nxt) and con.accepting()):
                    complete = con.accepting()     # only end-of-text can follow (or nothing): stop without it
                    stop = STOP_DONE if complete else STOP_DEAD
            rec = {"kind": "ar", "index": step, "position": job.input_ids.shape[1] + step}
            n_allowed = V if allowed is None else int(allowed.sum())
            if n_allowed == 1:
                stats["forced"] += 1
            if job.record:
                with c.recording():
                    rec.update(candidates_record(lm, masked[0], cfg, tok, min(top_candidates, n_allowed)))
                    rec["grammar"] = _block(lm, logits[0], allowed, tok, n_allowed, top_candidates,
                                            con is None or con.accepting(), stop, complete)
                    if con is not None:
                        rec["grammar"]["mask_ms"] = clean_float(1e3 * mask_s, 4)
                        rec["grammar"]["accept_ms"] = clean_float(1e3 * last["accept"], 4)
                    g = rec["grammar"]
                    stats["share"] += g["allowed_share"]
                    stats["removed"] += g["removed_mass"]
                    stats["overridden"] += int(allowed is not None and not bool(allowed[g["wanted_id"]]))
                    rec["new_text"], rec["confidence"] = rec["token_text"], rec["prob"]
            else:
                rec["token_id"] = tok
            rec["new_ids"] = [tok]
            if stop is not None:
                finish(stop, complete)
            yield rec
            if stop is not None:
                return
            allowed = nxt
            step += 1
            with c.compute():
                out = lm.model(input_ids=torch.tensor([[tok]], device=lm.device), past_key_values=cache,
                               use_cache=True)
                logits = out.logits[:, -1, :].float()
            c.target_forwards += 1


def _block(lm, logits: torch.Tensor, allowed: torch.Tensor | None, tok: int, n_allowed: int, k: int,
           accepting: bool, stop: str | None, complete: bool) -> dict:
    """The step's grammar block: how much of the vocabulary and of the model's probability the mask kept, what the
    model wanted (its argmax without the mask) against what was chosen, the top candidates without the mask."""
    raw = logits.float().softmax(-1)
    V = raw.shape[-1]
    kept = 1.0 if allowed is None else float(raw[allowed].sum())
    wanted = int(raw.argmax())
    ids = torch.topk(raw, min(k, V)).indices.tolist()
    if tok not in ids:
        ids.append(tok)
    cands = [{"id": int(t), "text": lm.token_text(t), "p_raw": clean_float(raw[t]),
              "allowed": allowed is None or bool(allowed[t])} for t in ids]
    block = {"allowed": n_allowed, "vocab": V, "allowed_share": clean_float(n_allowed / V),
             "removed_mass": clean_float(min(1.0, max(0.0, 1.0 - kept))), "wanted_id": wanted,
             "wanted_text": lm.token_text(wanted), "wanted_p": clean_float(raw[wanted]),
             "chosen_p_unconstrained": clean_float(raw[tok]), "forced": n_allowed == 1, "accepting": accepting,
             "candidates_unconstrained": cands}
    if stop is not None:
        block["stop"], block["complete"] = stop, complete
    return block


def example_schema() -> dict:
    """The default JSON schema, parsed (tests and the page's examples)."""
    return json.loads(DEFAULT_SCHEMA)
