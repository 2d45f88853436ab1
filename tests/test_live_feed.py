"""The live status component's feed (ui/live_feed.py): the document a live view's browser fetches, rewritten
from the run while it is live, final (with the value that redraws the page) once it is not, text escaped."""
from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

from engine.runner import DONE, RUNNING
from engine.trace import Trace
from ui import controls  # noqa: F401 -- first: ui.controls re-exports ui.live's names
from ui import live, live_feed  # noqa: E402


def ar_step(i: int, text: str) -> dict:
    return {"kind": "ar", "index": i, "token_id": 1, "token_text": text, "new_text": text, "prob": 0.5,
            "entropy": 1.0, "candidates": []}


class FakeRun(SimpleNamespace):
    """What the feed reads of a runner (weakly referenced, as a runner is)."""


def fake_run(texts, state=RUNNING):
    t = Trace(meta={"params": {"max_new_tokens": 10}, "prompt_ids": [1, 2, 3]})
    t.steps = [ar_step(i, x) for i, x in enumerate(texts)]
    t.counters.generated_tokens = len(texts)
    t.counters.compute_s = 0.5
    return FakeRun(trace=t, state=state, working=False, break_reason=None,
                           cursor=len(texts) - 1 if texts else None, started_at=time.time() - 1, following=True,
                           finished=state != RUNNING)


def read(feed) -> dict:
    with open(feed.path, encoding="utf-8") as f:
        return json.load(f)


def test_the_document_follows_the_run_and_ends_final():
    r = fake_run(["Hello", " world"])
    f = live_feed.Feed(r, live.feed_doc)
    try:
        d = read(f)
        assert "running" in d["status_html"] and "showing step 1 (steps 0–1)" in d["status_html"]
        assert "2 / 10 tokens" in d["progress_text"] and "tokens/s (compute)" in d["progress_text"]
        assert 0.19 < d["frac"] < 0.21 and "world" in d["stream_html"] and not d.get("final")
        seq = d["seq"]
        r.trace.steps.append(ar_step(2, "!"))
        r.trace.counters.generated_tokens = 3
        r.cursor = 2
        deadline = time.time() + 5
        while read(f)["seq"] == seq and time.time() < deadline:
            time.sleep(0.05)
        d = read(f)
        assert d["seq"] > seq and "3 / 10 tokens" in d["progress_text"]
        r.state, r.finished = DONE, True
        deadline = time.time() + 5
        while not read(f).get("final") and time.time() < deadline:
            time.sleep(0.05)
        d = read(f)
        assert d["final"] and d["rerun"] == "done:3"      # the value that makes the page redraw
        f._thread.join(5)
        assert not f._thread.is_alive(), "the writer stops once the run is no longer live"
    finally:
        f.stop()


def test_the_component_polls_fast_until_the_first_step():
    """The document says whether a step is there: the component polls every FIRST_POLL_MS until then (it used to
    slow to POLL_MS after its first fetch, a 'no steps yet' document, so a first step waited up to a second more)."""
    r = fake_run([])
    f = live_feed.Feed(r, live.feed_doc)
    try:
        assert read(f)["stepped"] is False
        r.trace.steps.append(ar_step(0, "Hi"))
        r.trace.counters.generated_tokens, r.cursor = 1, 0
        deadline = time.time() + 5
        while not read(f)["stepped"] and time.time() < deadline:
            time.sleep(0.05)
        assert read(f)["stepped"] is True
        with open(os.path.join(live_feed.folder(), "index.html"), encoding="utf-8") as fh:
            page = fh.read()
        assert "stepped ? args.poll_ms : args.first_poll_ms" in page
    finally:
        f.stop()


def test_unchanged_runs_are_not_rewritten():
    r = fake_run(["a"])
    f = live_feed.Feed(r, live.feed_doc)
    try:
        r.started_at = None          # (the time left changes every second otherwise)
        f.write()
        seq = read(f)["seq"]
        assert f.write() and read(f)["seq"] == seq
    finally:
        f.stop()


def test_text_is_escaped():
    r = fake_run(["<script>alert(1)</script>", "<b>x</b>"])
    d = live.feed_doc(r)
    assert "<script>" not in d["stream_html"] and "&lt;script&gt;" in d["stream_html"]
    assert "<b>x</b>" not in d["stream_html"]
    assert live_feed.status_html("**running** · <img src=x onerror=alert(1)>") == \
        "<b>running</b> · &lt;img src=x onerror=alert(1)&gt;"


def test_prefill_shows_a_message():
    r = fake_run([])
    d = live.feed_doc(r)
    assert "Prefilling the prompt (3 tokens)" in d["stream_html"] and d["live"] and d["steps"] == 0


def test_one_feed_per_view_and_run():
    r1, r2 = fake_run(["a"]), fake_run(["b"])
    a = live_feed.feed_for("view:s1", r1, live.feed_doc)
    try:
        assert live_feed.feed_for("view:s1", r1, live.feed_doc) is a          # a rerun of the same page
        b = live_feed.feed_for("view:s2", r1, live.feed_doc)                   # another session
        c = live_feed.feed_for("view:s1", r2, live.feed_doc)                   # a new run in the same view
        assert len({a.token, b.token, c.token}) == 3 and a._stop.is_set()
        assert os.path.dirname(a.path) == os.path.join(live_feed.folder(), "feeds")
        assert os.path.exists(os.path.join(live_feed.folder(), "index.html"))
    finally:
        for f in list(live_feed._feeds.values()):
            f.stop()


def test_a_connected_page_is_fed_past_the_orphan_time(monkeypatch):
    """A live run's page does not rerun while the feed serves it: a run watched for longer than ORPHAN_S goes on
    being fed while its browser session is connected (a side-by-side diffusion demo on a slow machine stalled at
    'running' after 120 s because of this), and stops being fed once the session is gone."""
    monkeypatch.setattr(live_feed, "ORPHAN_S", 0.6)
    monkeypatch.setattr(live_feed, "WRITE_S", 0.05)
    monkeypatch.setattr(live_feed, "FIRST_WRITE_S", 0.05)
    connected = {"v": True}
    r, gone = fake_run(["a"]), fake_run(["a"])
    kept = live_feed.Feed(r, live.feed_doc, connected=lambda: connected["v"])
    unknown = live_feed.Feed(gone, live.feed_doc)
    try:
        time.sleep(1.5)                          # past ORPHAN_S, no page run in between
        assert not unknown._thread.is_alive()    # no way to tell: nobody asked for it for ORPHAN_S, it stopped
        r.trace.steps.append(ar_step(1, "b"))
        r.trace.counters.generated_tokens = 2
        deadline = time.time() + 3
        while "2 / 10 tokens" not in read(kept)["progress_text"] and time.time() < deadline:
            time.sleep(0.05)
        assert "2 / 10 tokens" in read(kept)["progress_text"], "a connected page's feed went on"
        connected["v"] = False
        kept._thread.join(timeout=3)
        assert not kept._thread.is_alive(), "a disconnected page's feed stops after ORPHAN_S"
    finally:
        kept.stop()
        unknown.stop()
