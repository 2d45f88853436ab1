"""What one live-status refresh costs a browser on this machine, by how it is drawn (why ui/live_feed.py).

    .venv/bin/python -m benchmarks.refresh_cost            # every variant, 20 s each
    .venv/bin/python -m benchmarks.refresh_cost --seconds 10 --only 0:B,5:B

Serves benchmarks/refresh_cost/app.py with `streamlit run` (static serving on), opens each variant in headless
chromium (as the browser tests do), lets it settle, then prints the CPU all chromium processes used per second
of wall time (in cores). Variants: "<v>[:<css>][B]", v and css as in app.py, B: the page carries our pages'
load of widgets and charts.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import psutil

from tests.browser import browser, streamlit_server

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {"0:B": "nothing refreshes", "1:aB": "a fragment rerun per second: one status line",
            "3:aB": "a fragment rerun per second: status line + 120 token spans (the old live status)",
            "5:aB": "a component iframe fetching a JSON feed per second (ui/live_feed.py)",
            "1:a": "as 1:aB on a bare page", "3:a": "as 3:aB on a bare page"}


def chromium_cpu() -> float:
    total = 0.0
    for p in psutil.process_iter():
        try:
            if "chrom" in p.name():
                t = p.cpu_times()
                total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--only", default="")
    a = ap.parse_args(argv)
    todo = [v.strip() for v in a.only.split(",") if v.strip()] or list(VARIANTS)
    os.environ["STREAMLIT_SERVER_ENABLE_STATIC_SERVING"] = "true"
    os.makedirs(os.path.join(HERE, "static"), exist_ok=True)
    print(f"| variant | what refreshes | chromium CPU (cores), {a.seconds:g} s |\n|---|---|---|")
    with streamlit_server(os.path.join(HERE, "app.py")) as url, browser() as b:
        for v in todo:
            kind, _, css = v.partition(":")
            big = "1" if css.endswith("B") else ""
            page = b.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{url}/?v={kind}&big={big}&css={css.rstrip('B')}")
            page.get_by_text("refresh cost").first.wait_for()
            time.sleep(a.settle)
            c0, t0 = chromium_cpu(), time.time()
            time.sleep(a.seconds)
            c1, t1 = chromium_cpu(), time.time()
            print(f"| {v} | {VARIANTS.get(v, '')} | {(c1 - c0) / (t1 - t0):.3f} |", flush=True)
            page.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
