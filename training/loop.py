"""The training loop (train): LoRA on every linear layer + the mask-token row, the objectives mixed per batch."""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from training.common import DATA, GEN_LEN, load_base, log
from training.data import batch_pools, draw_batch, load_data, loop_pool, make_batch, make_batch_cf, make_batch_seq, padded_hidden, split_heldout
from training.evaluate import evaluate, evaluate_ahead
from training.losses import certainty_forcing_loss, confident_error_penalty, neighbour_penalty, repeat_unlikelihood, unlikelihood


def objective_text(args) -> str:
    """The certainty-forcing objective with its weights, as logged at train-start."""
    text = ("certainty forcing (semi-AR complementary block masking, block %d, ratio 0.5; mean CE + %g x entropy "
            "at T=%g of correctly predicted masked tokens; prefix-cut share %g)"
            % (args.cf_block, args.certainty, args.cf_temperature, args.cf_cut_share))
    if args.wrong_penalty > 0:
        text += "; + %g x -log(1 - p_top) of wrongly predicted masked tokens" % args.wrong_penalty
    if args.neighbour_penalty > 0:
        text += "; + %g x -log(1 - p(neighbour's token)) for adjacent masked targets" % args.neighbour_penalty
    if args.repeat_penalty > 0:
        text += ("; + %g x sum of -log(1 - p(c)) over the other tokens c within %d positions of each masked target "
                 "(token-level unlikelihood against copying)" % (args.repeat_penalty, args.repeat_window))
    if args.seq_penalty > 0:
        text += ("; + %g x mean -log(1 - p(token)) over the masked tokens of %d of the model's own decodes per step that "
                 "repeat an earlier %d-gram (sequence-level unlikelihood)" % (args.seq_penalty, args.seq_rows, args.seq_ngram))
    return text


def cmd_train(args):
    from engine.diffusion.smol import MASK_ID, save_delta
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    lm = load_base()
    model = lm.model
    pad_id = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    lora, mask_row, resumed = _trainable(model, args)
    opt = torch.optim.AdamW([{"params": lora, "lr": args.lr}, {"params": [mask_row], "lr": args.lr}],
                            weight_decay=0.0)
    prior_steps = (resumed or {}).get("steps", 0)
    prior_seconds = (resumed or {}).get("train_seconds", 0)
    train, heldout, pools, loops, seq_pool = _train_data(args, pad_id)
    held_by_kind = {k: [e for e in heldout if e.get("kind", "long") == k] for k in ("long", "short", "greedy")}
    _log_train_start(args, train, heldout, loops, seq_pool, prior_steps)
    meta = {"base": "smollm2-135m-instruct", "mask_id": MASK_ID, "shift": 1, "bidirectional": True,
            "lora_r": args.r, "lora_alpha": args.alpha, "gen_length": GEN_LEN, "seed": args.seed}
    t0, step, best = time.time(), 0, float("inf")
    emas: dict[str, float] = {}  # running averages of the loss terms (printed every 10 steps)

    def track(name: str, value: float):
        emas[name] = value if name not in emas else 0.95 * emas[name] + 0.05 * value
    while time.time() - t0 < args.minutes * 60 and step < args.max_steps:
        X, Y, A, W = _make_batch(args, rng, pools, pad_id)
        lr = _schedule_lr(opt, args, step, (time.time() - t0) / (args.minutes * 60))
        loss, ce = _loss(args, rng, model, mask_row, (X, Y, A, W), seq_pool, pad_id, track)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora + [mask_row], 1.0)
        opt.step()
        step += 1
        track("ce", ce.mean().item())
        if step % 10 == 0:
            print(f"step {step} {time.time() - t0:.0f}s loss {loss.item():.3f} "
                  + " ".join(f"{k}_ema {v:.3f}" for k, v in emas.items()), flush=True)
        if step % args.save_every == 0 or step >= args.max_steps or time.time() - t0 >= args.minutes * 60:
            ev = _evaluate_heldout(model, mask_row, held_by_kind, heldout, pad_id)
            entry = {"stage": "train", "step": step, "total_steps": prior_steps + step,
                     "seconds": round(time.time() - t0, 1), "lr": round(lr, 6), "ce_ema": round(emas["ce"], 4), **ev}
            # certainty forcing trades held-out cross-entropy for confidence by design: keep the latest
            # checkpoint (benchmarks/diffusion.py decides whether it ships); otherwise the best one
            if ev["heldout_ce_all"] < best or args.certainty > 0:
                best = min(best, ev["heldout_ce_all"])
                save_delta(model, Path(args.out), {**meta, "steps": prior_steps + step,
                                                   "train_seconds": prior_seconds + round(time.time() - t0),
                                                   "examples": len(train), **ev})
                entry["saved"] = True
            log(entry)
            model.train()
    log({"stage": "train-end", "steps": step, "seconds": round(time.time() - t0, 1), "best_heldout_ce": best})


def _trainable(model, args):
    """The model set up for training: every base weight frozen, LoRA on every linear layer (new, or the resumed
    delta's, whose r / alpha then replace args.r / args.alpha) and the mask-token row as a separate parameter.
    -> (the LoRA parameters, the mask row, the resumed delta's meta or None)."""
    from engine.diffusion.smol import MASK_ID, add_lora
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings().weight
    resumed = None
    if args.resume:  # continue from the shipped delta (LoRA + mask row), same r / alpha
        from engine.diffusion.smol import apply_delta
        resumed = apply_delta(model, Path(args.resume_from), merge=False)
        args.r, args.alpha = resumed["lora_r"], resumed["lora_alpha"]
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
    else:
        lora = add_lora(model, args.r, args.alpha)
        with torch.no_grad():  # start the mask row at the mean embedding
            emb[MASK_ID] = emb.mean(0)
    for p in lora:
        p.requires_grad_(True)
    mask_row = torch.nn.Parameter(emb[MASK_ID].detach().clone())
    return lora, mask_row, resumed


def _train_data(args, pad_id):
    """-> (training examples, held-out examples, the batch pools, the loop decodes and the pool of their
    repeating rows for --seq-penalty: both empty without it)."""
    examples = load_data()
    train, heldout = split_heldout(examples, {"long": args.heldout, "short": args.heldout_short,
                                              "greedy": args.heldout_short})
    pools = batch_pools(train)
    loops, seq_pool = [], []
    if args.seq_penalty > 0:
        loops = load_data("loops")
        try:
            seq_pool = loop_pool(loops, args.seq_ngram, pad_id)
        except ValueError:
            raise SystemExit(f"--seq-penalty needs decodes that repeat a {args.seq_ngram}-gram in {DATA}/loops*.pt "
                             "(make them with gen-self --kind loops)")
    return train, heldout, pools, loops, seq_pool


def _log_train_start(args, train, heldout, loops, seq_pool, prior_steps) -> None:
    log({"stage": "train-start", "examples": len(train), "heldout": len(heldout),
         "by_kind": {k: sum(e.get("kind", "long") == k for e in train) for k in ("long", "short", "greedy", "self")},
         "greedy_share": args.greedy_share, "self_share": args.self_share, "sampled_only": args.sampled_only,
         "seed": args.seed,
         "lr": args.lr, "lora_r": args.r, "lora_alpha": args.alpha, "batch": args.batch, "threads": args.threads,
         "minutes": args.minutes, "data": "training/data (SmolLM2-135M-Instruct answers, see gen stage)",
         "resumed_from_steps": prior_steps, "out": str(args.out),
         **({"loops": len(loops), "loops_repeating": len(seq_pool)} if loops else {}),
         **({"objective": objective_text(args)} if args.certainty > 0 else {}), "lr_schedule": "20-step warmup, linear decay to 10% over --minutes"})


def _make_batch(args, rng, pools, pad_id):
    """One training batch -> (X, Y, A, W): certainty forcing's block masking (W None) or the LLaDA/Dream one."""
    from engine.diffusion.smol import MASK_ID
    batch = draw_batch(rng, pools, args)
    if args.certainty > 0:
        X, Y, A = make_batch_cf(batch, rng, MASK_ID, pad_id, block=args.cf_block, cut_share=args.cf_cut_share)
        return X, Y, A, None
    return make_batch(batch, rng, MASK_ID, pad_id)


def _schedule_lr(opt, args, step: int, frac: float) -> float:
    """20-step warmup, then linear decay to 10% as `frac` of --minutes passes; set on every group. -> the lr."""
    lr = args.lr * min(1.0, (step + 1) / 20) * max(0.1, 1.0 - 0.9 * frac)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def _target_logits(model, mask_row, X, Y, A):
    """Bidirectional forward (the mask row a separate trainable parameter, fed as inputs_embeds), shifted
    (hidden at i-1 predicts token i): (logits at the targets, [MASK] never predicted; Yt; sel = Yt != -100)."""
    from engine.diffusion.smol import MASK_ID
    E = model.get_input_embeddings().weight[X].detach()
    E = torch.where((X == MASK_ID)[..., None], mask_row.expand_as(E), E)
    h, Yt = padded_hidden(model, E, A)[:, :-1], Y[:, 1:]
    sel = Yt != -100
    logits = model.lm_head(h[sel]).float()
    logits[:, MASK_ID] = -1e4
    return logits, Yt, sel


def _loss(args, rng, model, mask_row, batch, seq_pool, pad_id, track):
    """The batch's loss with every term --certainty and the penalties ask for (each term's value passed to
    `track`) -> (loss, per-token cross-entropy)."""
    from engine.diffusion.smol import MASK_ID
    X, Y, A, W = batch
    logits, Yt, sel = _target_logits(model, mask_row, X, Y, A)
    if args.certainty > 0:
        loss, ce, ent = certainty_forcing_loss(logits, Yt[sel], args.certainty, args.cf_temperature)
        track("entropy", ent.item())
        if args.wrong_penalty > 0:
            pen = confident_error_penalty(logits, Yt[sel])
            loss = loss + args.wrong_penalty * pen
            track("wrong_penalty", pen.item())
        if args.neighbour_penalty > 0:
            nb = neighbour_penalty(logits, Yt, sel)
            loss = loss + args.neighbour_penalty * nb
            track("neighbour_penalty", nb.item())
        if args.repeat_penalty > 0:
            rp = repeat_unlikelihood(logits, Yt, X[:, 1:], A[:, 1:], sel, args.repeat_window, MASK_ID)
            loss = loss + args.repeat_penalty * rp
            track("repeat_penalty", rp.item())
    else:
        ce = torch.nn.functional.cross_entropy(logits, Yt[sel], reduction="none")
        rows = sel.nonzero()[:, 0]
        loss = (ce * W[rows]).sum() / (X.shape[0] * GEN_LEN)
    if args.seq_penalty > 0:  # sequence-level unlikelihood on the model's own loops
        ls, Yst, sels = _target_logits(model, mask_row, *make_batch_seq(seq_pool, rng, MASK_ID, pad_id, args.seq_rows))
        ps = torch.softmax(ls, -1).gather(1, Yst[sels][:, None]).squeeze(1)
        sq = unlikelihood(ps).mean()
        loss = loss + args.seq_penalty * sq
        track("seq_penalty", sq.item())
        track("p_loop", ps.mean().item())
    return loss, ce


def _evaluate_heldout(model, mask_row, held_by_kind, heldout, pad_id) -> dict:
    """Write the trained mask row into the embeddings and evaluate on every held-out set: the long one's
    scores as they are, the short / greedy ones' suffixed, heldout_ce_all over all of them (what picks the
    checkpoint), and the left-to-right decoder's confidence ahead on the greedy set."""
    from engine.diffusion.smol import MASK_ID
    with torch.no_grad():
        model.get_input_embeddings().weight[MASK_ID] = mask_row
    long_h = held_by_kind["long"]
    ev = evaluate(model, long_h, rng_seed=123, mask_id=MASK_ID, pad_id=pad_id)  # same set as earlier runs
    tot = ev["heldout_ce"] * len(long_h)
    for kind in ("short", "greedy"):
        hk = held_by_kind[kind]
        if hk:
            evk = evaluate(model, hk, rng_seed=123, mask_id=MASK_ID, pad_id=pad_id)
            ev.update({f"{k}_{kind}": v for k, v in evk.items()})
            tot += evk["heldout_ce"] * len(hk)
    ev["heldout_ce_all"] = round(tot / len(heldout), 4)  # checkpoint selection: every held-out set
    if held_by_kind["greedy"]:  # the left-to-right decoder's state: how confident ahead, how often right
        ev.update(evaluate_ahead(model, held_by_kind["greedy"], MASK_ID, pad_id))
    return ev

