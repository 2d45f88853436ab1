"""Quality of the embedded diffusion LM (smol-diffusion = SmolLM2-135M + the shipped delta).

1. Masked-token accuracy on held-out text at mask ratios 0.15 / 0.5 / 0.9 (one forward, argmax
   at every masked answer position), against a unigram baseline (the held-out text's most frequent
   token, leave-one-out) and against the base SmolLM2 used the same way without the delta.
   Held-out text = SmolLM2-135M-Instruct answers (temperature 0.8, top-p 0.95, seed 1234) to
   instructions on topics never used in training (training/prompts.py HELDOUT_TOPICS).
2. 64-token samples (low_confidence, steps = 64) on held-out instructions, judged by SmolLM2-135M:
   median perplexity of the answer given the prompt, distinct-2 (unique / total bigrams over
   all samples), and loops: the share of answers that repeat a run of four words
   (engine.quality.loops, "A sea of light, a sea of light, ...") with the mean share of words inside
   such repeats (engine.quality.repeated_share), against SmolLM2's own samples and the same samples
   with tokens shuffled.
3. `--settings`: a few page settings (rule, temperature, block length, weights) on the same few
   held-out instructions, each answer printed so that it can be read, with the same measures; the
   Diffusion page's defaults are the best of these (pages/5_Diffusion.py).
4. `--prefix-cache`: how many answer positions the Fast-dLLM prefix cache changes (same settings,
   cache on vs off).

    python benchmarks/diffusion_quality.py [--n-heldout 32] [--n-samples 12]
    python benchmarks/diffusion_quality.py --skip-accuracy --skip-samples --settings all --n-settings 6
    python benchmarks/diffusion_quality.py --skip-accuracy --skip-samples --prefix-cache --n-settings 4
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from engine import models, quality, run  # noqa: E402
from engine.diffusion import adapters, smol  # noqa: E402
from engine.diffusion.adapters import DiffusionAdapter  # noqa: E402
from engine.diffusion.smol import MASK_ID  # noqa: E402
from engine.sampling import SamplingConfig  # noqa: E402
from training.prompts import HELDOUT_TOPICS, SHORT_TEMPLATES, TEMPLATES  # noqa: E402

GEN = 64


def heldout_prompts(n: int, seed: int = 7, short: bool = False) -> list[str]:
    """Held-out-topic instructions: the long-answer TEMPLATES, or the one-line SHORT_TEMPLATES."""
    ps = [t.format(x) for x in HELDOUT_TOPICS for t in (SHORT_TEMPLATES if short else TEMPLATES)]
    random.Random(seed).shuffle(ps)
    return ps[:n]


@torch.inference_mode()
def smollm_answers(lm, prompts, temperature=0.8, seed=1234, batch=16):
    """SmolLM2's own answers (64 tokens, EOS-padded like the training data)."""
    eos = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch):
        enc = [lm.encode(p)[0].tolist() for p in prompts[i:i + batch]]
        w = max(map(len, enc))
        ids = torch.full((len(enc), w), eos)
        att = torch.zeros_like(ids)
        for j, e in enumerate(enc):
            ids[j, w - len(e):] = torch.tensor(e)
            att[j, w - len(e):] = 1
        kw = dict(do_sample=True, temperature=temperature, top_p=0.95) if temperature > 0 else dict(do_sample=False)
        gen = lm.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=GEN, pad_token_id=eos,
                                eos_token_id=eos, **kw)
        for j, e in enumerate(enc):
            a = gen[j, w:].tolist()
            if eos in a:
                a = a[:a.index(eos) + 1]
            out.append((e, (a + [eos] * GEN)[:GEN]))
    return out


def answer_len(ans, eos_ids):
    for i, t in enumerate(ans):
        if t in eos_ids:
            return i + 1
    return len(ans)


@torch.inference_mode()
def masked_accuracy(adapter, examples, ratio, eos_ids, seed=0):
    rng = random.Random(seed)
    correct = n = 0
    for prompt, ans in examples:
        x = torch.tensor([prompt + ans])
        scored = answer_len(ans, eos_ids)
        P = len(prompt)
        m = torch.zeros_like(x, dtype=torch.bool)
        for j in range(GEN):
            m[0, P + j] = rng.random() < ratio
        if not bool(m[0, P:P + scored].any()):
            m[0, P + rng.randrange(scored)] = True
        xm = x.clone()
        xm[m] = adapter.mask_id
        pred = adapter.logits(xm)[0].argmax(-1)
        score = m.clone()
        score[0, P + scored:] = False
        correct += int((pred[score[0]] == x[0][score[0]]).sum())
        n += int(score.sum())
    return correct / max(n, 1), n


def unigram_accuracy(examples, ratio, eos_ids, seed=0):
    """Leave-one-out: predict the most frequent token of the other held-out answers."""
    from collections import Counter
    rng = random.Random(seed)
    counts = [Counter(a[:answer_len(a, eos_ids)]) for _, a in examples]
    total = sum(counts, Counter())
    correct = n = 0
    for (prompt, ans), c in zip(examples, counts):
        best = (total - c).most_common(1)[0][0]
        scored = answer_len(ans, eos_ids)
        picks = [j for j in range(GEN) if rng.random() < ratio and j < scored] or [0]
        correct += sum(ans[j] == best for j in picks)
        n += len(picks)
    return correct / max(n, 1)


def judge_perplexity(judge, prompt_ids, ans_ids, eos_ids):
    """Perplexity of the answer (up to and including its first EOS) given the prompt, under SmolLM2:
    engine.quality.judged_perplexity, the one definition (NaN for an empty answer, for the medians)."""
    ppl = quality.judged_perplexity(judge, prompt_ids, ans_ids)
    return float("nan") if ppl is None else ppl


def distinct2(answers, eos_ids):
    grams, total = set(), 0
    for a in answers:
        a = [t for t in a[:answer_len(a, eos_ids)] if t not in eos_ids]
        for i in range(len(a) - 1):
            grams.add((a[i], a[i + 1]))
            total += 1
    return len(grams) / max(total, 1)


def diffusion_samples(lm, prompts, options, sampling=None):
    outs, steps, nfe, t_compute, toks = [], 0, 0, 0.0, 0
    for p in prompts:
        tr = run.run(lm, "diffusion", p, max_new_tokens=GEN, sampling=sampling or SamplingConfig(),
                     options=options, record=False)
        outs.append((tr.meta["prompt_ids"], tr.final_ids))
        steps += len(tr.steps)
        nfe += tr.counters.target_forwards
        t_compute += tr.counters.compute_s
        toks += tr.counters.generated_tokens
    return outs, {"steps": steps / len(prompts), "nfe": nfe / len(prompts), "compute_s": t_compute, "tokens": toks}


def judged(judge, samples, eos_ids):
    ppl = [judge_perplexity(judge, p, a, eos_ids) for p, a in samples]
    ppl = [x for x in ppl if x == x]
    return statistics.median(ppl) if ppl else float("nan"), distinct2([a for _, a in samples], eos_ids)


def answer_texts(lm, samples, eos_ids):
    """Each answer's text, up to (not including) its first EOS."""
    out = []
    for _, a in samples:
        n = answer_len(a, eos_ids)
        out.append(lm.decode([t for t in a[:n] if t not in eos_ids]))
    return out


def repetition(lm, samples, eos_ids):
    """(share of answers that loop, mean share of words inside a repeated 4-gram): engine.quality."""
    texts = answer_texts(lm, samples, eos_ids)
    return quality.loop_share(texts), statistics.mean(quality.repeated_share(t) for t in texts)


def shuffled(samples, eos_ids, seed=0):
    rng = random.Random(seed)
    out = []
    for p, a in samples:
        n = answer_len(a, eos_ids)
        body = a[:n - 1] if a[n - 1] in eos_ids else a[:n]
        body = body[:]
        rng.shuffle(body)
        out.append((p, body + a[len(body):n]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-heldout", type=int, default=32)
    ap.add_argument("--n-samples", type=int, default=12)
    ap.add_argument("--block-length", type=int, default=0, help="block length of the samples (0: 64)")
    ap.add_argument("--temperature", type=float, default=0.0, help="diffusion sampling temperature")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-accuracy", action="store_true", help="only the judged samples")
    ap.add_argument("--skip-samples", action="store_true", help="skip the 64-token sample table")
    ap.add_argument("--settings", default="", help="comma-separated names of SETTINGS to compare, or 'all'")
    ap.add_argument("--n-settings", type=int, default=6, help="instructions per setting (--settings, --prefix-cache)")
    ap.add_argument("--prefix-cache", action="store_true", help="count the positions the prefix cache changes")
    ap.add_argument("--weights", choices=list(smol.VARIANTS), default="default",
                    help="the embedded delta: " + "; ".join(f"{k}: {d}" for k, (_, d) in smol.VARIANTS.items()))
    ap.add_argument("--delta", default=None,
                    help="evaluate this delta directory (e.g. a training checkpoint) instead of --weights")
    a = ap.parse_args(argv)
    if a.delta:
        a.weights = smol.register_checkpoint(a.delta)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    lm = models.load(models.EMBEDDED, device="cpu")
    eos_ids = lm.eos_ids
    dlm = adapters.embedded(lm, a.weights)
    base = DiffusionAdapter(lm.model, MASK_ID, shift=True, bidirectional=False, name="SmolLM2 as-is (causal)",
                            eos_ids=eos_ids)
    print(f"# Embedded diffusion model quality ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    if not a.skip_accuracy:
        accuracy_table(lm, dlm, base, a.n_heldout)
    if not a.skip_samples:
        sample_tables(lm, a, t0)
    if a.settings:
        names = list(SETTINGS) if a.settings == "all" else [x.strip() for x in a.settings.split(",") if x.strip()]
        unknown = [x for x in names if x not in SETTINGS]
        if unknown:
            raise SystemExit(f"--settings: unknown {unknown}; choose among {', '.join(SETTINGS)}")
        settings_table(lm, names, a.n_settings)
    if a.prefix_cache:
        prefix_cache_table(lm, a.n_settings)
    print(f"\n(total {time.time() - t0:.0f} s, torch threads {a.threads})")


def accuracy_table(lm, dlm, base, n_heldout):
    eos_ids = lm.eos_ids
    held = smollm_answers(lm, heldout_prompts(n_heldout, seed=11))
    print(f"delta: {dlm.name}; held-out answers: {len(held)} SmolLM2 answers to held-out-topic instructions\n")
    print("## Masked-token accuracy (held-out text, one forward, argmax)\n")
    print(f"| mask ratio | {dlm.name.split(' ')[0]} | SmolLM2 as-is (causal, shift) | unigram baseline | scored tokens |")
    print("|---|---|---|---|---|")
    for r in (0.15, 0.5, 0.9):
        acc, n = masked_accuracy(dlm, held, r, eos_ids)
        acc_b, _ = masked_accuracy(base, held, r, eos_ids)
        print(f"| {r} | {acc:.1%} | {acc_b:.1%} | {unigram_accuracy(held, r, eos_ids):.1%} | {n} |", flush=True)


def sample_tables(lm, a, t0):
    eos_ids = lm.eos_ids
    prompts = heldout_prompts(a.n_samples, seed=23)
    opts = {"rule": "low_confidence", "steps": GEN, "gen_length": GEN, "block_length": a.block_length,
            "adapter": smol.adapter_name(a.weights)}
    samp = SamplingConfig(temperature=a.temperature, seed=0) if a.temperature > 0 else SamplingConfig()
    dsamples, stats = diffusion_samples(lm, prompts, opts, samp)
    own = smollm_answers(lm, prompts, temperature=0.8, seed=99)
    own_greedy = smollm_answers(lm, prompts, temperature=0.0)
    rows = [(smol.VARIANTS[a.weights][1].split(" ")[0] + ", low_confidence, steps=64" + (f", block {a.block_length}" if a.block_length else "")
             + (f", T={a.temperature}" if a.temperature else ", greedy"), dsamples),
            ("SmolLM2-135M own samples (AR, T=0.8, top-p 0.95)", own),
            ("SmolLM2-135M own samples (AR, greedy)", own_greedy),
            ("shuffled-token baseline (SmolLM2 T=0.8 samples, tokens shuffled)", shuffled(own, eos_ids))]
    print(f"\n## 64-token samples on {len(prompts)} held-out instructions, judged by SmolLM2-135M\n")
    print("| samples | median judged perplexity | distinct-2 | loops (answers repeating 4 words) | words in "
          "repeats | mean answer tokens |")
    print("|---|---|---|---|---|---|")
    for name, s in rows:
        ppl, d2 = judged(lm, s, eos_ids)
        loop, rep = repetition(lm, s, eos_ids)
        mean_len = statistics.mean(answer_len(x, eos_ids) for _, x in s)
        print(f"| {name} | {ppl:.1f} | {d2:.2f} | {loop:.0%} | {rep:.0%} | {mean_len:.1f} |", flush=True)
    print(f"\nDiffusion sampling: {stats['steps']:.1f} steps and {stats['nfe']:.1f} NFE per sample, "
          f"{stats['tokens'] / max(stats['compute_s'], 1e-9):.1f} tokens/s (compute).")
    print("\nExamples:")
    for (p, x), prompt in list(zip(dsamples, prompts))[:3]:
        print(f"- {prompt!r} -> {lm.decode(x[:answer_len(x, eos_ids)])!r}")


# name -> (diffusion options, sampling): the page's knobs. gen_length 64, one token per step unless said.
GREEDY = SamplingConfig()
WARM = SamplingConfig(temperature=0.7, top_p=0.95, seed=0)
SETTINGS = {
    "default, low_confidence, one block, greedy (the page before)": ({"rule": "low_confidence"}, GREEDY),
    "default, low_confidence, blocks of 16, greedy": ({"rule": "low_confidence", "block_length": 16}, GREEDY),
    "default, low_confidence, blocks of 8, greedy": ({"rule": "low_confidence", "block_length": 8}, GREEDY),
    "default, maskgit_plus, one block, T=0.7 top-p 0.95": ({"rule": "maskgit_plus"}, WARM),
    "default, maskgit_plus, blocks of 8, T=0.7 top-p 0.95": ({"rule": "maskgit_plus", "block_length": 8}, WARM),
    "par, low_confidence, one block, greedy": ({"rule": "low_confidence", "adapter": "embedded-par"}, GREEDY),
    "par, low_confidence, blocks of 8, greedy": ({"rule": "low_confidence", "block_length": 8,
                                                  "adapter": "embedded-par"}, GREEDY),
    "fast, threshold 0.7, one block, greedy (the ~2x preset)": ({"rule": "threshold", "threshold": 0.7,
                                                                 "adapter": "embedded-fast"}, GREEDY),
}


def settings_table(lm, names, n):
    eos_ids = lm.eos_ids
    prompts = heldout_prompts(n, seed=23)
    print(f"\n## Page settings on {len(prompts)} held-out instructions (gen_length {GEN}), judged by SmolLM2-135M\n")
    print("| setting | median judged perplexity | distinct-2 | loops | words in repeats | steps | answers |")
    print("|---|---|---|---|---|---|---|")
    read = []
    for name in names:
        opts, samp = SETTINGS[name]
        from engine.methods.diffusion import adapter_unavailable
        why = adapter_unavailable(opts.get("adapter"))
        if why:   # a variant that no longer ships and was not rebuilt here
            print(f"| {name} | not run: {why} | | | | | |", flush=True)
            continue
        opts = {"steps": GEN, "gen_length": GEN, **opts}
        t = time.time()
        samples, stats = diffusion_samples(lm, prompts, opts, samp)
        ppl, d2 = judged(lm, samples, eos_ids)
        loop, rep = repetition(lm, samples, eos_ids)
        texts = answer_texts(lm, samples, eos_ids)
        flags = " ".join("L" if quality.loops(x) else "." for x in texts)
        print(f"| {name} | {ppl:.1f} | {d2:.2f} | {loop:.0%} | {rep:.0%} | {stats['steps']:.1f} | {flags} |",
              flush=True)
        read.append((name, texts, time.time() - t))
    own = smollm_answers(lm, prompts, temperature=0.0)
    ppl, d2 = judged(lm, own, eos_ids)
    loop, rep = repetition(lm, own, eos_ids)
    texts = answer_texts(lm, own, eos_ids)
    print(f"| SmolLM2-135M itself (AR, greedy) | {ppl:.1f} | {d2:.2f} | {loop:.0%} | {rep:.0%} | - | "
          f"{' '.join('L' if quality.loops(x) else '.' for x in texts)} |")
    read.append(("SmolLM2-135M itself (AR, greedy)", texts, 0.0))
    print("\n(answers: L = loops, . = does not; in prompt order)\n")
    print("### The answers, to read\n")
    for i, p in enumerate(prompts):
        print(f"**{p}**\n")
        for name, texts, _ in read:
            print(f"- {name}: {texts[i]!r}")
        print()


def prefix_cache_table(lm, n):
    """Same prompts and settings with the prefix cache off and on: answer positions that differ."""
    prompts = heldout_prompts(n, seed=23)
    print(f"\n## Prefix KV cache on vs off ({len(prompts)} held-out instructions, greedy)\n")
    print("| setting | positions that differ | of | answers changed |")
    print("|---|---|---|---|")
    for gen, block, rule in ((32, 8, "low_confidence"), (32, 8, "threshold")):
        diff = total = changed = 0
        for p in prompts:
            outs = []
            for cache in (False, True):
                tr = run.run(lm, "diffusion", p, max_new_tokens=gen, record=False,
                             options={"rule": rule, "gen_length": gen, "block_length": block, "steps": gen,
                                      "prefix_cache": cache, "stop_at_eos": False})
                outs.append(tr.final_ids)
            a, b = (o + [-1] * (gen - len(o)) for o in outs)
            d = sum(x != y for x, y in zip(a, b))
            diff, total, changed = diff + d, total + gen, changed + (d > 0)
        print(f"| {rule}, gen_length {gen}, blocks of {block} | {diff} | {total} | {changed} of {len(prompts)} |",
              flush=True)


if __name__ == "__main__":
    main()
