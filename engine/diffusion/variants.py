"""The embedded diffusion variants: the one table every other place reads.

Each variant is a LoRA delta on SmolLM2-135M-Instruct in models/<dirname>/, trained by
training/train_diffusion.py from the variant above it (`parent`). Two ship in git: the default and
fast. The other four were stepping stones with known defects (loops, low diversity); they stay
reproducible: `rebuild` holds the exact training command lines of the runs that made them
(training/train_log.jsonl), and `python -m training.rebuild_variant KEY` runs them. engine.diffusion.smol
offers only the variants whose files exist; asking for an absent one names that command.

`python -m engine.diffusion.variants` rewrites the generated tables in README.md (status) and
docs/DIFFUSION_MODEL.md (figures); tests/test_diffusion_weights.py checks both are current.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"
TD = "training.train_diffusion"   # every rebuild line is `python -m training.train_diffusion ARGS`

# The data the default delta was trained on (Nov 24, training/train_log.jsonl lines 1-53); cf, cal and div
# were trained on it, plus what their own stages add.
# (the log records a batch of 48 for the first; 1,008 short answers need a batch that divides it)
_DATA_NOV24 = ("gen --n 624 --seed 0 --batch 48", "gen --n 576 --seed 1 --batch 48", "gen --n 576 --seed 2 --batch 48",
               "gen --n 1008 --seed 3 --templates short --batch 48", "gen --greedy --n 1500 --seed 4")
# par and fast were trained on a machine with fresh data (Dec 1, lines 246-249)
_DATA_DEC01 = ("gen --n 576 --seed 1", "gen --n 288 --seed 3 --templates short", "gen --greedy --n 1500 --seed 4",
               "gen-self --delta models/smol-diffusion-div --kind loops --block 64 --threshold 0.9 --seed 10 --n 160")
_SD12 = ("--certainty 2 --wrong-penalty 1 --repeat-penalty 1 --repeat-window 8 --seq-penalty 1 --seq-rows 4 "
         "--seq-ngram 5 --cf-block 64 --cf-temperature 1.0 --cf-cut-share 0.85 --greedy-share 0.85 --batch 4 "
         "--threads 2")


@dataclass(frozen=True)
class Variant:
    key: str                 # "default", "fast", ...: the adapter is "embedded" or "embedded-<key>"
    dirname: str             # models/<dirname>
    label: str               # one line, for the weights picker
    shipped: bool            # in git
    parent: str | None       # the variant it continues
    trained: str             # how it was trained further (docs table)
    accuracy: str            # masked-token accuracy at ratio 0.15
    samples: str             # one-block greedy samples: judged perplexity / distinct-2
    speed: str               # Fast-dLLM threshold vs one token per step
    cost: str                # what it buys and costs, for the page's help
    rebuild: tuple[str, ...] = ()   # train_diffusion command lines from the parent, in order
    fresh_data: bool = False        # its rebuild starts from an empty training/data
    minutes: int = 0                # about how long those lines took on the 2-core CPU

    @property
    def path(self) -> Path:
        return MODELS / self.dirname

    @property
    def adapter(self) -> str:
        return "embedded" if self.key == "default" else f"embedded-{self.key}"

    def present(self) -> bool:
        return (self.path / "delta.safetensors").exists()


TABLE: tuple[Variant, ...] = (
    Variant("default", "smol-diffusion", "smol-diffusion (SmolLM2-135M + delta)", True, None,
            "LLaDA / Dream masked-diffusion loss, 3,371 steps of 8 (~3.4 h)", "61.8%", "3.8 / 0.62",
            "1.43x / 1.42x fewer at +0% (one block, two prompt sets); 1.05x with blocks of 16",
            "1.4x fewer steps with one block, distinct-2 0.62"),
    Variant("cf", "smol-diffusion-cf", "smol-diffusion-cf (certainty-forced: parallel, more repetitive)", False,
            "default", "certainty forcing (dParallel), 1,800 steps", "62.5%", "4.8 / 0.39",
            "1.56x at +1% (blocks of 16, 6 prompts)",
            "certainty-forcing distillation: 1.56x with blocks of 16, distinct-2 0.39",
            rebuild=_DATA_NOV24 + (
                # run A, stopped by hand after its step-500 checkpoint (log line 104)
                "train --resume --out models/smol-diffusion-cf --certainty 2 --cf-temperature 0.5 --greedy-share 0.7 "
                "--batch 4 --lr 3e-4 --threads 2 --minutes 62 --max-steps 500",
                # run B, from run A's checkpoint
                "train --resume --resume-from models/smol-diffusion-cf --out models/smol-diffusion-cf --certainty 2 "
                "--cf-temperature 1.0 --cf-cut-share 0.5 --greedy-share 0.7 --batch 4 --lr 4e-4 --threads 2 "
                "--minutes 55"),
            fresh_data=True, minutes=115),
    Variant("cal", "smol-diffusion-cal", "smol-diffusion-cal (calibrated self-distillation: ~1.7x parallel, "
            "repetitive)", False, "cf",
            "certainty forcing on its own answers (self-distillation, 1,167 steps; that stage, smol-diffusion-sd, "
            "looped at distinct-2 0.24 and no longer ships), then + a penalty on confident mistakes, 700 steps",
            "63.8%", "3.8 / 0.30", "2.75x / 2.61x at +15% / +4% (one block)",
            "cf on its own answers + a penalty on confident mistakes: 2.6-2.75x with one block at +4-15%, but it "
            "loops (distinct-2 0.30)",
            rebuild=(
                "gen-self --n 592 --seed 0",   # the default delta answers; stage sd trained on these 592
                "train --resume --resume-from models/smol-diffusion-cf --out models/smol-diffusion-sd --certainty 2 "
                "--cf-temperature 1.0 --cf-cut-share 0.5 --self-share 0.8 --greedy-share 0.2 --batch 4 --lr 3e-4 "
                "--threads 2 --minutes 52",
                "gen-self --start 592 --n 640 --seed 0",
                # run sd2a, stopped by hand after step 700 (log line 130)
                "train --resume --resume-from models/smol-diffusion-sd --out models/smol-diffusion-cal --certainty 2 "
                "--wrong-penalty 1 --cf-temperature 1.0 --cf-cut-share 0.5 --self-share 0.8 --greedy-share 0.2 "
                "--batch 4 --lr 2e-4 --threads 2 --minutes 56 --max-steps 700"),
            minutes=165),
    Variant("div", "smol-diffusion-div", "smol-diffusion-div (cal retrained on sampled answers: ~1.9x parallel in "
            "one block, less repetitive)", False, "cal", "retrained on sampled answers only, 690 steps", "63.1%",
            "4.7 / 0.51", "1.95x / 1.81x at +0% / +4% (one block)",
            "cal retrained on sampled answers: 1.8-1.95x with one block at +0-4%, distinct-2 0.51, though ~80% of "
            "the tokens it commits two or more at a time repeat its own earlier text",
            rebuild=(
                "gen --n 576 --seed 1", "gen --n 288 --seed 3 --templates short",
                # run sd5 (log line 167)
                "train --resume --resume-from models/smol-diffusion-cal --out models/smol-diffusion-div --certainty 2 "
                "--wrong-penalty 1 --cf-block 64 --cf-temperature 1.0 --cf-cut-share 0.5 --self-share 0.001 "
                "--greedy-share 0 --batch 4 --lr 2e-4 --threads 2 --minutes 35"),
            minutes=40),
    Variant("par", "smol-diffusion-par", "smol-diffusion-par (div + certainty forcing on greedy answers and "
            "unlikelihood against its own loops: parallel on new text, not loops)", False, "div",
            "certainty forcing on greedy answers (left-to-right layout) + unlikelihood against its own loops, "
            "985 steps (from div)", "61.8%", "7.3 / 0.64",
            "1.66x / 1.80x / 1.71x at +0% / +0% / +23% (one block, three prompt sets); threshold 0.75: 2.08x / "
            "2.18x / 2.12x at -1% / +12% / +73%",
            "div + certainty forcing on greedy answers and unlikelihood against its own loops: 1.7-1.8x at "
            "threshold 0.9 and 2.1-2.2x at 0.75 with one block, distinct-2 0.64, most of its parallel commits new "
            "text; at 0.75 judged perplexity -1% / +12% on two prompt sets but +73% on a third",
            rebuild=_DATA_DEC01 + (
                # run sd12 (log line 250)
                "train --resume --resume-from models/smol-diffusion-div --out models/smol-diffusion-par " + _SD12
                + " --lr 2e-4 --minutes 75 --seed 12",),
            fresh_data=True, minutes=100),
    Variant("fast", "smol-diffusion-fast", "smol-diffusion-fast (par + a penalty on confident mistakes: ~2x fewer "
            "steps at threshold 0.7 in one block)", True, "par",
            "+ a 3x penalty on confident mistakes, 200 steps (from par)", "62.5%", "5.2 / 0.69",
            "1.59x at -1% (one block, 12 prompts); **threshold 0.7: 2.06x at +6% (48 prompts), 2.29x at +13% "
            "(24 fresh ones)**; per 12-prompt set 1.97x / 2.09x / 2.08x / 2.13x at -8% / +11% / +21% / -8%",
            "par + a heavier penalty on confident mistakes: at threshold 0.7 with one block (gen_length 64, "
            "block_length 0), 2.06x fewer steps at +6% judged perplexity over 48 prompts, distinct-2 0.69",
            rebuild=(
                # run sd13 (log line 272), on par's data
                "train --resume --resume-from models/smol-diffusion-par --out models/smol-diffusion-fast "
                + _SD12.replace("--wrong-penalty 1", "--wrong-penalty 3") + " --lr 1.5e-4 --minutes 14 --seed 13",),
            minutes=15),
)
BY_KEY = {v.key: v for v in TABLE}


def chain(key: str) -> list[Variant]:
    """The variants to train, in order, to get `key`: back to the nearest one present in models/."""
    out, v = [], BY_KEY[key]
    while not v.present():
        if not v.rebuild:
            raise ValueError(f"{v.dirname} has no rebuild recipe")
        out.append(v)
        v = BY_KEY[v.parent]
    return out[::-1]


def rebuild_command(key: str) -> str:
    return f".venv/bin/python -m training.rebuild_variant {key}"


def missing_message(key: str) -> str:
    """What a person asking for an absent variant is told: what ships, and the command that rebuilds it."""
    v = BY_KEY[key]
    todo = chain(key)
    hours = sum(s.minutes for s in todo) / 60
    via = " -> ".join(s.key for s in todo)
    shipped = ", ".join(s.dirname for s in TABLE if s.shipped)
    return (f"{v.dirname} ({v.adapter}) is not in models/: only {shipped} ship. Rebuild it with "
            f"`{rebuild_command(key)}` (trains {via}, about {hours:.1f} h on a 2-core CPU; the command lines are "
            "in docs/DIFFUSION_MODEL.md).")


# --- generated tables -------------------------------------------------------------------------
def status_table() -> str:
    """README: which variants ship, and how to get the others."""
    rows = ["| variant | `--adapter` | in models/ | what it is |", "|---|---|---|---|"]
    for v in TABLE:
        how = "shipped" if v.shipped else f"rebuild: `{rebuild_command(v.key)}` (~{v.minutes / 60:.1f} h, from {v.parent})"
        what = v.label.removeprefix(v.dirname).strip().removeprefix("(").removesuffix(")")
        rows.append(f"| {v.dirname} | `{v.adapter}` | {how} | {what} |")
    return "\n".join(rows)


def figures_table() -> str:
    """docs/DIFFUSION_MODEL.md: how each was trained and what it measures."""
    rows = ["| variant (`--adapter`) | in models/ | trained further with | masked accuracy at 0.15 | one-block greedy "
            "samples: judged perplexity / distinct-2 | Fast-dLLM threshold 0.9: steps vs 1 token/step, judged "
            "perplexity |", "|---|---|---|---|---|---|"]
    for v in TABLE:
        name = f"{v.dirname} (`{v.adapter}`{', default' if v.key == 'default' else ''})"
        rows.append(f"| {name} | {'shipped' if v.shipped else 'rebuild'} | {v.trained} | {v.accuracy} | "
                    f"{v.samples} | {v.speed} |")
    return "\n".join(rows)


def rebuild_lines() -> str:
    """docs/DIFFUSION_MODEL.md: the command lines of every variant, from its parent."""
    out = []
    for v in TABLE:
        if not v.rebuild:
            continue
        out.append(f"- **{v.dirname}** (from {BY_KEY[v.parent].dirname}"
                   + (", starting from an empty training/data" if v.fresh_data else "") + f", ~{v.minutes} min):")
        out += [f"  `.venv/bin/python -m {TD} {line}`" for line in v.rebuild]
    return "\n".join(out)


def weights_help(keys) -> str:
    """The Diffusion page's help for its weights picker: the variants offered (`keys`), what each costs."""
    parts = ["Fast-dLLM threshold 0.9 vs one token per step, and one-block greedy samples' distinct-2 (quality bar "
             ">= 0.5)."]
    parts += [f"{k}: {BY_KEY[k].cost}." for k in keys if k in BY_KEY]
    absent = [v.key for v in TABLE if v.key not in keys]
    if absent:
        parts.append(f"Not in models/ ({', '.join(absent)}): rebuild one with `{rebuild_command('KEY')}`.")
    return " ".join(parts)


GENERATED = {  # file -> {marker: text}
    "README.md": {"variants-status": status_table},
    "docs/DIFFUSION_MODEL.md": {"variants-figures": figures_table, "variants-rebuild": rebuild_lines},
}


def splice(text: str, marker: str, body: str) -> str:
    """Replace what lies between <!-- marker:begin --> and <!-- marker:end --> in text."""
    begin, end = f"<!-- {marker}:begin (generated by python -m engine.diffusion.variants) -->", f"<!-- {marker}:end -->"
    i, j = text.index(begin) + len(begin), text.index(end)
    return text[:i] + "\n" + body + "\n" + text[j:]


def main() -> None:
    root = MODELS.parent
    for rel, blocks in GENERATED.items():
        path = root / rel
        text = path.read_text()
        for marker, make in blocks.items():
            text = splice(text, marker, make())
        path.write_text(text)
        print("wrote", rel)


if __name__ == "__main__":
    sys.exit(main())
