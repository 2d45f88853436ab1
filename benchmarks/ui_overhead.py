"""What watching a run live costs the run: the same prompt and settings decoded through the engine API with
nobody watching, and watched live in a real browser (a `streamlit run` server + headless chromium, as the
browser tests drive it), in one run of this script.

Per row it prints the compute tokens/s of both (compute time only, as the pages show it) and their ratio,
how long after the first step was computed the page showed it, and the live view's render time per refresh
early (step ~10) and late in the run. The watched run's numbers come from its own trace, downloaded from the
page when it ends (per-step wall times and compute totals), and the render times from the page's
"live view: redrawn in ... ms" line.

    .venv/bin/python -m benchmarks.ui_overhead                 # every row (from the repository root)
    .venv/bin/python -m benchmarks.ui_overhead --only ar,kv    # some rows
    .venv/bin/python -m benchmarks.ui_overhead --long 1000     # + an AR run of 1,000 steps (render time at 10 vs 1000)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time

from tests.browser import browser, feed_frames, streamlit_server, wait_for_idle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC_PROMPT = ("Summarise the following text, reusing its wording.\n\nThe river rises in the hills north of the town "
               "and flows south through farmland before reaching the sea. In spring the river floods the low fields, "
               "and farmers plant rice in the flooded fields. In summer the river is low and the fields are dry.")
KV_PROMPT = ("Read this passage and continue it in the same style.\n\nWhen in the Course of human events, it becomes "
             "necessary for one people to dissolve the political bands which have connected them with another.")
STORY = "Write a long story about a lighthouse keeper and a storm."
CODE = "Write a Python class Point with methods add, sub, mul and div, each returning a new Point."

# name -> (page path, method, prompt, max new tokens, engine options, browser setup)
ROWS = {
    "ar": ("Autoregressive", "ar", STORY, 128, {}, []),
    "speculative": ("Speculative", "speculative", SPEC_PROMPT, 128, {"drafter": "prompt_lookup"}, []),
    "kv": ("KV_Cache", "kv", KV_PROMPT, 64, {"policy": "h2o", "budget": 48, "watch_layers": "all"},
           [("select", "watch_layers", "all")]),
    "lookahead": ("Jacobi_Lookahead", "lookahead", CODE, 128, {}, [("radio", "Lookahead")]),
    "diffusion": ("Diffusion", "diffusion", STORY, 128, {"gen_length": 128}, []),
}
RENDER_RE = re.compile(r"live view: redrawn in (\d+) ms")
STEP_RE = re.compile(r"showing step (\d+)")
DONE_RE = re.compile(r"\b(done|error|cancelled) · ")
RUNNING_RE = re.compile(r"\b(running|paused) · ")


def unwatched(method: str, prompt: str, max_new: int, options: dict, ignore_eos: bool = False) -> dict:
    from engine import models, run
    lm = models.load(models.EMBEDDED, device="cpu")
    tr = run.run(lm, method, prompt, max_new_tokens=max_new, options=options, ignore_eos=ignore_eos)
    c = tr.counters
    return {"tokens": c.generated_tokens, "compute_s": c.compute_s, "steps": len(tr.steps),
            "tps": c.generated_tokens / c.compute_s if c.compute_s else None}


def unwatched_pair(prompt: str, configs: list[dict]) -> list[dict]:
    """Two diffusion runs at the same time in one process (as two sessions share the decoder)."""
    out = [None] * len(configs)

    def one(i, o):
        out[i] = unwatched("diffusion", prompt, o["gen_length"], o)
    threads = [threading.Thread(target=one, args=(i, o)) for i, o in enumerate(configs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def set_spin(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=re.compile(label, re.I)).first
    box.fill(str(value))
    box.press("Enter")
    wait_for_idle(page)


def apply_setup(page, setup) -> None:
    for step in setup:
        if step[0] == "select":
            page.get_by_label(step[1], exact=True).first.click()
            page.get_by_role("option", name=step[2], exact=True).first.click()
        elif step[0] == "radio":
            page.get_by_text(step[1], exact=True).first.click()
        elif step[0] == "check":
            page.get_by_text(step[1], exact=True).first.click()
        wait_for_idle(page)


def main_text(page) -> str:
    return page.locator("[data-testid='stMain']").first.inner_text()


def _texts(page, selector_text: str) -> list[str]:
    """The texts of the (small) paragraphs containing `selector_text`, and the live status components' status
    lines (ui/live_feed.py): cheap to read, unlike the whole page (reading the whole page's text makes
    chromium lay it out, CPU the watched decoder would lose)."""
    out = []
    try:
        out += page.locator(f"p:has-text('{selector_text}')").all_inner_texts()
        for f in feed_frames(page):
            out += [t for t in f.locator("#status").all_inner_texts() if selector_text in t]
    except Exception:  # noqa: BLE001 -- the page is between two renders
        pass
    return out


def watch(page, timeout_s: float, n_runs: int = 1) -> dict:
    """Poll the page while the run(s) are live: when step 0 first shows, render times early and late. Fine
    polling (50 ms) only until the first step shows, then every 2 s."""
    first_seen, renders, end = None, [], time.time() + timeout_s
    while time.time() < end:
        status = " ".join(_texts(page, "showing step") + _texts(page, "no steps yet"))
        steps = [int(x) for x in STEP_RE.findall(status)]
        if steps and first_seen is None:
            first_seen = time.time()
        if first_seen is not None:
            for text in _texts(page, "live view: redrawn"):
                for ms in RENDER_RE.findall(text):
                    renders.append((max(steps) if steps else -1, int(ms)))
        if len(DONE_RE.findall(status)) >= n_runs and not RUNNING_RE.search(status):
            break
        time.sleep(0.05 if first_seen is None else 2.0)
    return {"first_seen": first_seen, "renders": renders}


def downloaded_traces(page, n: int) -> list[dict]:
    out = []
    buttons = page.get_by_role("button", name="Download trace JSON")
    for i in range(n):
        with page.expect_download() as d:
            buttons.nth(i).click()
        with open(d.value.path(), encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def render_at(renders, step: int) -> int | None:
    """The render time of the first refresh showing a step >= `step`."""
    for s, ms in renders:
        if s >= step:
            return ms
    return None


def watched(url, b, path: str, prompt: str, max_new: int, setup, timeout_s: float, ignore_eos: bool = False,
            pair: bool = False) -> dict:
    page = b.new_page(viewport={"width": 1500, "height": 1100})
    page.set_default_timeout(180_000)
    page.goto(f"{url}/{path}")
    go = "Run both on the prompt" if pair else "Generate"
    page.get_by_role("button", name="Generate").first.wait_for()     # the first tab's (the pair's is hidden)
    wait_for_idle(page)
    if pair:
        page.get_by_role("button", name="Use the measured ~2x setting").first.click()
        wait_for_idle(page)
        page.get_by_role("tab", name="Two rules side by side").first.click()
        page.get_by_role("button", name=go).first.wait_for()
    else:
        set_spin(page, "max new tokens" if path != "Diffusion" else "gen_length", max_new)
    apply_setup(page, setup)
    if ignore_eos:
        page.get_by_text("ignore end-of-text", exact=True).first.click()
        wait_for_idle(page)
    box = page.get_by_role("textbox", name="Prompt", exact=True).first
    box.fill(prompt)
    box.press("Control+Enter")
    wait_for_idle(page)
    page.get_by_role("button", name=go).first.click()
    seen = watch(page, timeout_s, n_runs=2 if pair else 1)
    wait_for_idle(page)
    traces = downloaded_traces(page, 2 if pair else 1)
    page.close()
    rows = []
    for tr in traces:
        c = tr["counters"]
        first_wall = tr["steps"][0]["totals"]["wall"] if tr["steps"] else None
        rows.append({"tokens": c["generated_tokens"], "compute_s": c["compute_s"], "steps": len(tr["steps"]),
                     "tps": c["generated_tokens"] / c["compute_s"] if c["compute_s"] else None,
                     "first_latency_s": (seen["first_seen"] - first_wall) if seen["first_seen"] and first_wall else None})
    early = render_at(seen["renders"], 10)
    late_step = max((s for s, _ in seen["renders"]), default=-1)
    late = next((ms for s, ms in reversed(seen["renders"]) if s == late_step), None)
    return {"runs": rows, "render_early_ms": early, "render_late_ms": late, "late_step": late_step}


def fmt(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def measure_row(url, b, name: str, repeats: int, timeout: float, long_steps: int = 0):
    """`repeats` alternating pairs (unwatched, then watched); medians of each run's compute tokens/s."""
    refs, gots = [], []
    for _ in range(repeats):
        if name == "pair":
            base = {"rule": "low_confidence", "gen_length": 64, "block_length": 0, "adapter": "embedded-fast"}
            refs.append(unwatched_pair(STORY, [base, dict(base, rule="threshold", threshold=0.7)]))
            gots.append(watched(url, b, "Diffusion", STORY, 64, [], timeout, pair=True))
        elif name == "long":
            refs.append([unwatched("ar", STORY, long_steps, {}, ignore_eos=True)])
            gots.append(watched(url, b, "Autoregressive", STORY, long_steps, [], timeout, ignore_eos=True))
        else:
            path, method, prompt, max_new, opts, setup = ROWS[name]
            refs.append([unwatched(method, prompt, max_new, opts)])
            gots.append(watched(url, b, path, prompt, max_new, setup, timeout))
    n_runs = len(refs[0])
    out = []
    for i in range(n_runs):
        ref_tps = median(r[i]["tps"] for r in refs)
        got_tps = median(g["runs"][i]["tps"] for g in gots)
        ratios = [g["runs"][i]["tps"] / r[i]["tps"] for r, g in zip(refs, gots) if r[i]["tps"] and g["runs"][i]["tps"]]
        out.append({"ref": ref_tps, "got": got_tps, "ratio": median(ratios), "ratios": ratios,
                    "first": median(g["runs"][i]["first_latency_s"] for g in gots),
                    "early": median(g["render_early_ms"] for g in gots),
                    "late": median(g["render_late_ms"] for g in gots), "late_step": max(g["late_step"] for g in gots)})
    return out


LABELS = {"ar": "ar (128 tokens)", "speculative": "speculative, prompt lookup (128 tokens)",
          "kv": "kv, H2O budget 48, watched layers 'all' (64 tokens)", "lookahead": "lookahead W5 N4 G5 (128 tokens)",
          "diffusion": "diffusion, gen_length 128, one token per step", "pair": "diffusion, two 64-position runs side by side"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated rows: " + ", ".join([*ROWS, "pair"]))
    ap.add_argument("--long", type=int, default=0, help="also an AR run of this many steps (ignore end-of-text)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating unwatched / watched pairs per row (medians)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--live-feed", default="1", choices=["0", "1"],
                    help="the live status: 1 the component fed by JSON (ui/live_feed.py), 0 the Streamlit fragment")
    ap.add_argument("--unwatched-threads", type=int, default=0,
                    help="torch threads of the unwatched runs (default: the decoder process's, "
                         "engine.decoder_server.decoder_threads)")
    a = ap.parse_args(argv)
    import torch
    from engine.decoder_server import decoder_threads
    torch.set_num_threads(a.unwatched_threads or decoder_threads())
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    todo = [r for r in [*ROWS, "pair"] if not only or r in only] + (["long"] if a.long else [])
    results = []
    with streamlit_server(live_feed=a.live_feed) as url, browser() as b:
        home = b.new_page()
        home.goto(url)
        home.get_by_text("Loaded", exact=False).filter(visible=True).first.wait_for(timeout=300_000)   # the decoder has the model
        home.close()
        for name in todo:
            rows = measure_row(url, b, name, 1 if name == "long" else a.repeats, a.timeout, a.long)
            label = f"ar, {a.long} steps (ignore end-of-text)" if name == "long" else LABELS[name]
            results.append((label, rows))
            print(f"{label}: " + "; ".join(f"{fmt(r['ref'], 1)} vs {fmt(r['got'], 1)} tok/s "
                                           f"({', '.join(f'{x:.2f}' for x in r['ratios'])}), first step shown after "
                                           f"{fmt(r['first'])} s, figures render {r['early']} ms early / "
                                           f"{r['late']} ms at step {r['late_step']}" for r in rows), flush=True)
    print(f"\n## UI overhead ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores, headless chromium on the "
          f"same machine; medians of {a.repeats} alternating pairs; torch threads: unwatched {torch.get_num_threads()}, "
          f"decoder {decoder_threads()})\n")
    print("| row | unwatched tokens/s | watched tokens/s | ratio (median) | first step shown after | figures render, "
          "step ~10 | figures render, last redraw |")
    print("|---|---|---|---|---|---|---|")
    for label, rows in results:
        for i, r in enumerate(rows):
            side = f" [{'left' if i == 0 else 'right'}]" if len(rows) > 1 else ""
            print(f"| {label}{side} | {fmt(r['ref'], 1)} | {fmt(r['got'], 1)} | {fmt(r['ratio'])}x | {fmt(r['first'])} s | "
                  f"{'-' if r['early'] is None else r['early']} ms | "
                  f"{'-' if r['late'] is None else r['late']} ms (step {r['late_step']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
