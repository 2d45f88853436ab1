"""KV-cache eviction: decode with a cache that really shrinks to a budget, one policy at a time.

(300 lines, one file for now: the options, their checks and the step loop with its prefill compression and policy switches read together (the policies are in policies.py, a fork's replay, policy switches and snapshots in resume.py); the next split is the step-record building into kv/record.py.)

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
from engine.methods.kv.resume import SWITCHABLE, Plan, check_resume, plan, restore, switch_policy  # noqa: F401
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


@register("kv", "kv", "KV-cache eviction with a budget (StreamingLLM, H2O, SnapKV, TOVA, L2-norm, LazyEviction, "
          "random): the cache really shrinks; quality vs the full cache.", options=OPTIONS, lossless=False,
          check=check, components={"policy": POLICIES})
def generate(job: Job, **o):
    """Options were checked by engine.run.prepare (check above); build the cache now, return the steps."""
    prefill_keep, budget, window = resolve(o, job.input_ids.shape[1])
    watch = parse_layers(o["watch_layers"], job.lm.model.config.num_hidden_layers, "watch_layers")
    p = plan(job, o)    # a fork's replay (resume.py): forced tokens, switches, the snapshot it starts from
    ec = build_cache(job.lm, [o["policy"]], positions=o["positions"], watch=watch if job.record else (),
                     seed=p.policy_seed, n_sink=o["n_sink"],
                     window=window, window_size=o["window_size"], kernel_size=o["kernel_size"],
                     hit_threshold=float(o["hit_threshold"]))
    if any(POLICIES.get(sw["policy"]).obj.needs_attention for sw in p.switches.values()) and \
            not install_attention(job.lm.model):
        raise MethodError(f"{type(job.lm.model).__name__} does not use transformers' attention interface, so the "
                          "attention a switched-to policy needs cannot be captured.")
    return _steps(job, ec, o["policy"], budget, prefill_keep, o["n_sink"], watch, o["compare_full"],
                  o["compression_ratio"] if budget is None else None, p)


def _steps(job: Job, ec: EvictingCache, policy, budget, prefill_keep, n_sink, watch, compare_full, ratio=None,
           p: Plan | None = None):
    """budget None: compression_ratio's run (compressed once after the prompt, no decode eviction).
    p.force: tokens of the first steps, replayed (their forward and eviction, the random draws too) and not
    yielded nor committed, from p.start's snapshot when there is one; p.switches: step -> the options from that
    step on; p.store: this run's snapshots, taken at the top of their steps (engine/methods/kv/resume.py).
    One loop kept whole (~120 lines): forward, capture, evict and record are one step of the algorithm and read
    best in order."""
    p = p or Plan()
    force, switches, store = p.force, p.switches, p.store
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
    replayed = [0, 0]  # forwards, token positions
    logits = None
    with torch.inference_mode():
        step = 0
        tok_in = job.input_ids
        if p.start is not None:
            step, tok_in, pending, (policy, budget, n_sink) = restore(p, ec, job, gen)
            evicting = policy != "full"
        while True:
            if step == hidden and hidden:
                p.reported(*replayed)
            if store is not None and logits is not None and store.due(step):
                with c.recording():
                    store.take(step, ec, (policy, budget, n_sink), gen, logits.shape[-1])
            if step in switches:
                policy, budget, n_sink = switch_policy(job, ec, switches[step], p.policy_seed)
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
                replayed[0] += 1
                replayed[1] += tok_in.shape[1]
                pending.append(tok_in)
                tok_in = torch.tensor([[int(force[step])]], device=lm.device)
                if store is not None:
                    store.fed.append(int(force[step]))
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
            if store is not None:
                store.fed.append(tok)
            tok_in = torch.tensor([[tok]], device=lm.device)
