"""KV-cache eviction: decode with a cache that really shrinks to a budget, one policy at a time.

(335 lines, one file for now: the method's step loop with its prefill compression and policy switches (the policies are in policies.py); the next split is the step-record building into kv/record.py.)

One step = one token. Step 0 holds the prompt's forward (and the prefill compression to
`prefill_budget`); every later step feeds the last token, captures the attention the policy
needs, and evicts each layer (and head) down to `budget` entries. With `compression_ratio` > 0
the run is kvpress's instead: the prompt (L tokens) is compressed once, after its forward, to
max(1, int(L * (1 - compression_ratio))) entries per layer and head (ScorerPress.compress), and
decoding never evicts (the cache grows by one entry per token); budget and prefill_budget then
have no say, and giving them too is refused. An optional full-cache
shadow (`compare_full`) runs the same tokens through an uncompressed cache, to count top-1
agreement with the full cache and the first step where the greedy outputs would diverge; its
time is counted as recording, not compute.
"""
from __future__ import annotations

import math

import torch
from transformers import DynamicCache

from engine import sampling as S
from engine.layer_spec import parse_layers
from engine.methods import Job, MethodError, register
from engine.methods.ar import candidates_record
from engine.attention import install as install_attention
from engine.methods.kv.cache import CacheUnsupported, EvictingCache
from engine.methods.kv.policies import MAX_BUDGET, POLICIES, make as make_policy
from engine.errors import OptionError
from engine.options import Not, Opt
from engine.trace import clean_float

POSITION_MODES = ("original", "rerotate")

OPTIONS = {
    "policy": Opt("h2o", "eviction policy"),
    "budget": Opt(48, "decode budget: KV entries kept per layer and head after every step", min=1, max=MAX_BUDGET),
    "prefill_budget": Opt(0, "entries kept after the prompt's forward", min=1, max=MAX_BUDGET,
                          special={0: "same as budget", -1: "keep the whole prompt"}),
    "compression_ratio": Opt(0.0, "kvpress-style: compress the prompt once to int(L * (1 - ratio)) entries per "
                                  "layer and head (L = prompt tokens) and never evict while decoding; 0 = off "
                                  "(budget and prefill_budget decide). Replaces budget and prefill_budget: leave "
                                  "those at their defaults", min=0.0, max=1.0, max_open=True,
                             when={"policy": Not(("full",))}),
    "positions": Opt("original", "original: keys keep their original RoPE positions | rerotate: positions inside "
                                 "the cache, keys re-rotated after each eviction (StreamingLLM)", choices=POSITION_MODES),
    "watch_layers": Opt("first,mid,last", "layers recorded per head (attention rows, scores): 'all', 'none', "
                                          "'first,mid,last' or indices such as 0,5,29", max_len=2000,
                        presets=("first,mid,last", "mid", "all", "none")),
    "compare_full": Opt(True, "run a full-cache shadow to count top-1 agreement and the first divergence"),
}


def retained(prompt_len: int, compression_ratio: float) -> int:
    """kvpress's ScorerPress: entries kept of a prompt of prompt_len after compression."""
    return max(1, int(prompt_len * (1 - compression_ratio)))


def resolve(o: dict, prompt_len: int) -> tuple[int | None, int | None, int]:
    """(entries kept after the prompt's forward or None for all, the decode budget or None for no decode
    eviction (compression_ratio), the recent window)."""
    if o.get("compression_ratio", 0.0) > 0 and o["policy"] != "full":
        keep = retained(prompt_len, o["compression_ratio"])
        window = keep // 2 if o["window"] == -1 else o["window"]
        return keep, None, window
    budget, prefill_budget = o["budget"], o["prefill_budget"]
    window = budget // 2 if o["window"] == -1 else o["window"]
    prefill_keep = None if prefill_budget == -1 else (budget if prefill_budget == 0 else prefill_budget)
    return prefill_keep, budget, window


def check(o: dict, ctx) -> None:
    """Cross-option checks, before any forward: each policy's protected part must leave room to choose."""
    policy, n_sink = o["policy"], o["n_sink"]
    ratio = o.get("compression_ratio", 0.0)
    if ratio > 0 and policy != "full":
        given = [f"{k}={o[k]}" for k in ("budget", "prefill_budget") if o[k] != OPTIONS[k].default]
        if given:
            raise OptionError(f"compression_ratio ({ratio:g}) and {' and '.join(given)} both set how much is kept: "
                              "compression_ratio compresses the prompt once (kvpress) and never evicts while "
                              "decoding; budget / prefill_budget evict to a size. Give one of them.")
    if policy == "snapkv" and o["kernel_size"] % 2 == 0:
        raise MethodError(f"snapkv: kernel_size must be odd, got {o['kernel_size']}.")
    prefill_keep, budget, window = resolve(o, ctx.prompt_len)
    if budget is None:   # compression_ratio: one compression, to prefill_keep
        decode, keeps = prefill_keep, [prefill_keep]
        what = (f"the {prefill_keep} entries compression_ratio={ratio:g} keeps of the {ctx.prompt_len}-token "
                "prompt")
    else:
        decode, keeps = budget, [budget] + ([prefill_keep] if prefill_keep is not None else [])
        what = "the budget"
    if policy == "streaming_llm" and min(keeps) <= n_sink:
        raise MethodError(f"streaming_llm needs more entries kept than n_sink={n_sink} ({what}: {min(keeps)}): "
                          "sinks + a recent window.")
    if policy == "h2o" and window >= decode:
        raise MethodError(f"h2o: the recent window ({window}) must be smaller than {what} ({decode}) "
                          "to leave room for heavy hitters.")
    if policy == "lazy_eviction" and n_sink + window >= decode:
        raise MethodError(f"lazy_eviction: n_sink + window ({n_sink + window}) must be smaller than {what} "
                          f"({decode}).")
    if policy == "snapkv" and o["window_size"] >= min(keeps):
        raise MethodError(f"snapkv: window_size ({o['window_size']}) must be smaller than {what} "
                          f"({min(keeps)}) to leave room for the voted entries: raise it or lower window_size.")
    parse_layers(o["watch_layers"], ctx.lm.model.config.num_hidden_layers, "watch_layers")


def build_cache(lm, policy_names: list[str], positions="original", watch=(), seed=0, **pkw) -> EvictingCache:
    """One policy per batch row."""
    n_layers = lm.model.config.num_hidden_layers
    groups = [(make_policy(name, n_layers, seed=seed + i, **pkw), slice(i, i + 1))
              for i, name in enumerate(policy_names)]
    try:
        return EvictingCache(lm.model, groups, positions=positions, watch=set(watch))
    except CacheUnsupported as e:
        raise MethodError(str(e)) from e


def _r(x, d=4):
    return round(float(x), d)


def layer_record(ec: EvictingCache, li: int, detail: dict | None) -> dict:
    """Per-head kept positions, candidates with scores, evicted entries and the new token's attention row."""
    kept = ec.pos[li][0].tolist()
    rec = {"kept": kept}
    if detail is not None:
        cand = detail["cand_pos"][0]
        keep_idx = detail["keep_idx"][0]
        scores = detail["scores"][0]
        prot = detail["protected"][0]
        rec["cand_pos"] = cand.tolist()
        rec["scores"] = [[clean_float(v, 5) for v in row] for row in scores.tolist()]
        rec["protected"] = [[int(v) for v in row] for row in prot.tolist()]
        ev = []
        for h in range(cand.shape[0]):
            mask = torch.ones(cand.shape[1], dtype=torch.bool)
            mask[keep_idx[h]] = False
            ev.append([[int(p), clean_float(s, 5)] for p, s in zip(cand[h][mask].tolist(), scores[h][mask].tolist())])
        rec["evicted"] = ev
    if li in ec.last_probs:
        p = ec.last_probs[li][0]  # [Hkv, g, n] over the candidates (cache before eviction)
        rec["attn"] = [[_r(v) for v in row] for row in p.reshape(-1, p.shape[-1]).tolist()]
        rec["group"] = int(p.shape[1])
    return rec


def kept_count(ec: EvictingCache) -> list[int]:
    """How many (layer, KV head) slots keep each original position."""
    n = ec.next_pos
    tot = torch.zeros(n, dtype=torch.long)
    for li in range(ec.n_layers):
        tot += torch.bincount(ec.pos[li][0].flatten().cpu(), minlength=n)
    return tot.tolist()


SWITCHABLE = ("policy", "budget", "n_sink", "window", "window_size", "kernel_size", "hit_threshold")


def check_resume(job: Job, o: dict) -> tuple[list[int], dict[int, dict]]:
    """job.resume of a fork (engine.fork), checked before any forward: {"force_ids": the tokens of the first
    steps, replayed and not yielded; "switches": [{"at": step, option: value ...}]: from step `at` on the policy
    and its knobs are these (SWITCHABLE only; each switched set checked like a run's options)}."""
    from engine.methods import CheckContext, get
    r = job.resume
    force = r.get("force_ids", [])
    vocab = int(getattr(job.lm.model.config, "vocab_size", 0) or len(job.lm.tokenizer))
    if not isinstance(force, list) or any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab
                                          for t in force):
        raise MethodError(f"resume: force_ids must be a list of token ids in 0..{vocab - 1}.")
    if len(force) + job.max_new_tokens > MAX_BUDGET * 8:
        raise MethodError(f"resume: {len(force)} forced tokens is too many.")
    L = int(job.input_ids.shape[1])
    ctx = CheckContext(job.lm, job.sampling, L, job.max_new_tokens, job.lm.context_length)
    ctx.need_positions(L + len(force) + job.max_new_tokens, f"A {L}-token prompt + {len(force)} replayed tokens + "
                                                            f"{job.max_new_tokens} new tokens")
    switches: dict[int, dict] = {}
    cur = dict(o)
    for sw in r.get("switches") or []:
        if not isinstance(sw, dict) or isinstance(sw.get("at"), bool) or not isinstance(sw.get("at"), int):
            raise MethodError("resume: every switch is a dict with an integer 'at'.")
        at = sw["at"]
        bad = [k for k in sw if k != "at" and k not in SWITCHABLE]
        if bad:
            raise MethodError(f"resume: {', '.join(map(str, bad))} cannot change during a run (switchable: "
                              f"{', '.join(SWITCHABLE)}).")
        if not 0 < at <= len(force) + job.max_new_tokens or (switches and at <= max(switches)):
            raise MethodError(f"resume: switch steps must increase and lie in 1..{len(force) + job.max_new_tokens}, "
                              f"got {at}.")
        if o.get("compression_ratio", 0.0) > 0 and o["policy"] != "full":
            raise MethodError("A compression_ratio run compresses the prompt once and never evicts afterwards: its "
                              "policy cannot switch later (fork it at step 0).")
        cur = get("kv").values({**cur, **{k: v for k, v in sw.items() if k != "at"}})
        check(cur, ctx)
        switches[at] = dict(cur)
    return force, switches


@register("kv", "kv", "KV-cache eviction with a budget (StreamingLLM, H2O, SnapKV, TOVA, L2-norm, LazyEviction, "
          "random): the cache really shrinks; quality vs the full cache.", options=OPTIONS, lossless=False,
          check=check, components={"policy": POLICIES})
def generate(job: Job, **o):
    """Options were checked by engine.run.prepare (check above); build the cache now, return the steps."""
    prefill_keep, budget, window = resolve(o, job.input_ids.shape[1])
    watch = parse_layers(o["watch_layers"], job.lm.model.config.num_hidden_layers, "watch_layers")
    force, switches = check_resume(job, o) if job.resume is not None else ([], {})
    ec = build_cache(job.lm, [o["policy"]], positions=o["positions"], watch=watch if job.record else (),
                     seed=0 if job.sampling.seed is None else int(job.sampling.seed), n_sink=o["n_sink"],
                     window=window, window_size=o["window_size"], kernel_size=o["kernel_size"],
                     hit_threshold=float(o["hit_threshold"]))
    if any(POLICIES.get(sw["policy"]).obj.needs_attention for sw in switches.values()) and \
            not install_attention(job.lm.model):
        raise MethodError(f"{type(job.lm.model).__name__} does not use transformers' attention interface, so the "
                          "attention a switched-to policy needs cannot be captured.")
    return _steps(job, ec, o["policy"], budget, prefill_keep, o["n_sink"], watch, o["compare_full"],
                  o["compression_ratio"] if budget is None else None, force, switches)


def switch_policy(job: Job, ec: EvictingCache, o: dict) -> tuple[str, int, int]:
    """From this step on the cache is evicted by policy o["policy"] with o's knobs: a fresh policy whose
    per-entry statistics start now (the entries already cached count as just arrived). (policy, budget, n_sink)"""
    _, budget, window = resolve(o, job.input_ids.shape[1])
    pol = make_policy(o["policy"], ec.n_layers, seed=0 if job.sampling.seed is None else int(job.sampling.seed),
                      n_sink=o["n_sink"], window=window, window_size=o["window_size"], kernel_size=o["kernel_size"],
                      hit_threshold=float(o["hit_threshold"]))
    for li in range(ec.n_layers):
        if ec.pos[li] is not None:
            b, hkv, n = ec.pos[li].shape
            pol.extend(li, n, rows_n=b, hkv=hkv, device=ec.pos[li].device)
    ec.groups = [(pol, slice(0, 1))]
    ec.needs_attention = pol.needs_attention
    return o["policy"], budget, o["n_sink"]


def _steps(job: Job, ec: EvictingCache, policy, budget, prefill_keep, n_sink, watch, compare_full, ratio=None,
           force=(), switches=None):
    """budget None: compression_ratio's run (compressed once after the prompt, no decode eviction).
    force: tokens of the first steps, replayed (their forward and eviction, the random draws too) and not
    yielded nor committed; switches: step -> the options from that step on (engine.fork, check_resume).
    One loop kept whole (~100 lines): forward, capture, evict and record are one step of the algorithm and read
    best in order."""
    switches = switches or {}
    hidden = len(force)
    lm, cfg, c = job.lm, job.sampling, job.counters
    n_layers = lm.model.config.num_hidden_layers
    evicting = policy != "full"
    will_evict = evicting or any(sw["policy"] != "full" for sw in switches.values())
    shadow = DynamicCache(config=lm.model.config) if (compare_full and will_evict) else None
    gen = cfg.generator(lm.device) if not cfg.greedy else None
    per_tok = lm.kv_bytes_per_token()
    record_layers = set(watch) if job.record else set()
    L = job.input_ids.shape[1]
    agree_n = steps_n = 0
    first_div = None
    evicted_total = 0
    nll_sum = nll_full_sum = 0.0
    pending = []       # replayed inputs the full-cache shadow has not seen yet (fed with the first own step)
    with torch.inference_mode():
        step = 0
        tok_in = job.input_ids
        while True:
            if step in switches:
                policy, budget, n_sink = switch_policy(job, ec, switches[step])
                evicting = policy != "full"
            with c.compute():
                logits = ec.forward(tok_in)[:, -1, :].float()
                n_keep = (prefill_keep if step == 0 else budget) if evicting else None   # None: no eviction
                if n_keep is not None or record_layers:
                    info = ec.evict_to(n_keep if n_keep is not None else 10 ** 9, record_layers)
                else:
                    info = {"layers": {}, "evicted": 0}
                tok = int(S.choose(logits[0], cfg, gen))
            c.target_forwards += 1
            if step < hidden:        # a replayed step of the parent run: its token, nothing shown
                pending.append(tok_in)
                tok_in = torch.tensor([[int(force[step])]], device=lm.device)
                step += 1
                continue
            evicted_total += info["evicted"]
            q = None
            if shadow is not None:
                with c.recording():
                    feed = torch.cat(pending + [tok_in], 1) if pending else tok_in
                    pending = []
                    start = ec.next_pos - feed.shape[1]
                    pos_ids = torch.arange(start, start + feed.shape[1], device=lm.device)[None]
                    full_logits = lm.model(input_ids=feed, past_key_values=shadow, position_ids=pos_ids,
                                           use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
                    fa, pa = int(full_logits[0].argmax()), int(logits[0].argmax())
                    agree = fa == pa
                    agree_n += agree
                    steps_n += 1
                    if not agree and first_div is None:
                        first_div = step - hidden
                    nll = -float(logits[0].log_softmax(-1)[tok])
                    nll_full = -float(full_logits[0].log_softmax(-1)[tok])
                    nll_sum += nll
                    nll_full_sum += nll_full
                    q = {"full_argmax": fa, "full_argmax_text": lm.token_text(fa), "agree": bool(agree),
                         "nll": clean_float(nll), "nll_full": clean_float(nll_full),
                         "agreement": clean_float(agree_n / steps_n), "first_divergence": first_div}
            job.commit([tok])
            rec = {"kind": "kv", "index": step - hidden, "position": L + step,
                   "phase": "prefill" if step == 0 else "decode",
                   "new_ids": [tok], "token_id": tok}
            if job.record:
                with c.recording():
                    rec.update(candidates_record(lm, logits[0], cfg, tok, 10))
                    rec["new_text"], rec["confidence"] = rec["token_text"], rec["prob"]
                    kv_bytes = sum(ec.bytes_per_layer())
                    rec.update({
                        "events": ["kv_evicted"] if info["evicted"] else [],
                        "policy": policy, "budget": budget if budget is not None else
                        (prefill_keep if step == 0 else ec.length()),
                        "cache_len": ec.length(), "seq_len": ec.next_pos,
                        "kv_bytes": kv_bytes, "kv_bytes_full": ec.next_pos * per_tok,
                        "kv_bytes_per_layer": ec.bytes_per_layer(),
                        "evicted_count": info["evicted"],
                        "n_sink": n_sink if policy in ("streaming_llm", "lazy_eviction") else 0,
                        "layers": {str(li): layer_record(ec, li, info["layers"].get(li)) for li in watch},
                        "kept_count": kept_count(ec), "slots": n_layers * ec.cache.layers[0].keys.shape[1],
                    })
                    if q is not None:
                        rec["quality"] = q
            else:
                rec["events"] = ["kv_evicted"] if info["evicted"] else []
            job.extra["summary"] = {
                "policy": policy, "budget": budget, **({"compression_ratio": ratio, "retained": prefill_keep}
                                                       if ratio is not None else {}), "kv_bytes_kept": sum(ec.bytes_per_layer()),
                "kv_bytes_full": ec.next_pos * per_tok, "cache_len": ec.length(), "evicted_entries": evicted_total,
                **({"agreement_vs_full": agree_n / steps_n, "first_divergence": first_div,
                    "ppl": math.exp(nll_sum / steps_n), "ppl_full": math.exp(nll_full_sum / steps_n)}
                   if steps_n else {}),
            }
            yield rec
            step += 1
            if job.finished([tok]):
                return
            tok_in = torch.tensor([[tok]], device=lm.device)
