"""The measured line under each page's header (benchmarks/page_defaults.py -> page_defaults.json): the
benchmark's table mirrors the pages' defaults (prompt, max new tokens), every line names a page that exists,
and a page shows its line (escaped as text)."""
import json
import re
from pathlib import Path

from benchmarks import page_defaults as PD
from ui import common

ROOT = Path(__file__).resolve().parent.parent
PAGE_FILES = {"Autoregressive": "1_Autoregressive.py", "Speculative decoding": "2_Speculative.py",
              "KV cache": "3_KV_Cache.py", "Jacobi & lookahead": "4_Jacobi_Lookahead.py",
              "Diffusion": "5_Diffusion.py", "Search": "9_Search.py"}


def test_the_table_mirrors_the_pages():
    assert PD.AR_PROMPT == common.DEFAULT_PROMPT
    for title, (methods_, prompt, n) in PD.pages().items():
        src = (ROOT / "pages" / PAGE_FILES[title]).read_text()
        assert re.search(rf'page_header\(\s*"{re.escape(title)}"', src) or f'page_header("{title}"' in src, title
        first = re.search(r"max_new_tokens_widget\([^,]+,\s*(\d+)", src)
        assert first and int(first.group(1)) == n, title
        if "DEFAULT_PROMPT = (" in src:
            assert prompt == PD._page_prompt(PAGE_FILES[title])
        elif title == "Diffusion":
            assert f'"{prompt}"' in src


def test_every_measured_line_is_a_page_and_is_shown(tmp_path, monkeypatch):
    d = json.loads(PD.OUT_JSON.read_text())
    assert set(d["pages"]) <= set(PAGE_FILES) and d["pages"]
    line = common.measured_defaults("Speculative decoding")
    assert line.startswith("On this page's defaults") and "tau" in line
    fake = tmp_path / "p.json"
    fake.write_text(json.dumps({"measured": "x", "command": "c", "pages": {"Search": "**bold** <b>x</b>"}}))
    monkeypatch.setattr(common, "PAGE_DEFAULTS", fake)
    shown = common.measured_defaults("Search")
    assert "**bold**" not in shown and "<b>" not in shown       # markdown / HTML from the file shown as text
    assert common.measured_defaults("Nope") is None
    fake.write_text("{not json")
    assert common.measured_defaults("Search") is None
