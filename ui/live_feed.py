"""The live status of a run, updated in the browser without Streamlit reruns.

Why. A Streamlit fragment rerun makes the browser re-render the page's element tree and lay the page out
again: measured in headless chromium on this 2-core machine, a status fragment refreshed every second cost
the browser 0.11-0.16 cores on a page the size of ours (0.01 with nothing refreshing), CPU the decoder
process loses (a 2-thread torch op waits for the slower thread). Here the status, progress and newest
tokens live in a small component iframe that fetches a JSON document every second and updates only its own
DOM (0.05 cores in the same measurement); the page reruns only when the run stops being live (a pause, a
breakpoint, the end, an error), when the component sends the page a value.

How. One folder per UI process (a temporary directory) holds the component's index.html and, under
feeds/, one JSON document per live view, named by a random token (the component's URL is not guessable;
the server listens on localhost only). A writer thread per live view rebuilds the document from the
mirrored run every WRITE_S (every FIRST_WRITE_S until the first step, which the component polls for every
FIRST_POLL_MS) and stops once the run is no longer
live, or once its page has been gone for ORPHAN_S (its browser session disconnected; outside a server, where
that cannot be told, once no page run has asked for it for ORPHAN_S: no page run comes while a run is live and
fed, so a server always says). Its text is built by the same viz functions as the
page's (escaped HTML), so a trace's or prompt's text is never markup.

On by default; DECODING_LAB_LIVE_FEED=0 turns it off (then the Streamlit fragment of ui/live.py draws the
live status, refreshed every second; AppTest runs use that path, tests/conftest.py).
"""
from __future__ import annotations

import atexit
import html
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref

WRITE_S = 0.5
FIRST_WRITE_S = 0.2
POLL_MS = 1000
FIRST_POLL_MS = 250
ORPHAN_S = 120.0
_lock = threading.Lock()
_folder: str | None = None
_component = None
_feeds: dict[str, "Feed"] = {}


def enabled() -> bool:
    return os.environ.get("DECODING_LAB_LIVE_FEED", "1") != "0"


INDEX_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><style>
body { margin: 0; padding: 0 2px; font-family: "Source Sans Pro", sans-serif; font-size: 16px; line-height: 1.6; }
#bar { height: 8px; border-radius: 4px; background: rgba(128,128,128,0.25); margin: 6px 0 2px 0; }
#fill { height: 8px; border-radius: 4px; background: #ff4b4b; width: 0; }
#ptext { font-size: 14px; }
#stream { margin-top: 6px; }
</style></head>
<body><div id="status"></div><div id="bar"><div id="fill"></div></div><div id="ptext"></div><div id="stream"></div>
<script>
let args = null, seq = -1, sent = null, timer = null, done = false, lastH = 0, stepped = false;
function post(type, extra) { window.parent.postMessage(Object.assign({isStreamlitMessage: true, type: type}, extra || {}), "*"); }
function fit() { const h = document.body.scrollHeight + 4; if (Math.abs(h - lastH) > 1) { lastH = h; post("streamlit:setFrameHeight", {height: h}); } }
function show(d) {
  document.getElementById("status").innerHTML = d.status_html;
  document.getElementById("fill").style.width = (100 * Math.max(0, Math.min(1, d.frac))) + "%";
  document.getElementById("ptext").textContent = d.progress_text;
  document.getElementById("stream").innerHTML = d.stream_html;
  fit();
}
async function tick() {
  timer = null;
  if (!args || done) return;
  try {
    const r = await fetch(args.url + "?s=" + Date.now(), {cache: "no-store"});
    if (r.ok) {
      const d = await r.json();
      if (d.seq !== seq) { seq = d.seq; show(d); }
      stepped = !!d.stepped;
      if (d.rerun && d.rerun !== sent) { sent = d.rerun; post("streamlit:setComponentValue", {value: d.rerun, dataType: "json"}); }
      if (d.final) { done = true; document.body.dataset.final = "1"; return; }   // the page redraws now
    }
  } catch (e) {}
  timer = setTimeout(tick, stepped ? args.poll_ms : args.first_poll_ms);   // fast until the first step shows
}
window.addEventListener("message", function (ev) {
  const m = ev.data || {};
  if (m.type !== "streamlit:render") return;
  const t = m.theme || {};
  if (t.textColor) document.body.style.color = t.textColor;
  if (t.font) document.body.style.fontFamily = t.font;
  if (t.primaryColor) document.getElementById("fill").style.background = t.primaryColor;
  const fresh = !args || args.url !== m.args.url;
  args = m.args;
  if (fresh) { seq = -1; done = false; stepped = false; if (timer) clearTimeout(timer); }
  if (seq < 0 && args.initial) show(args.initial);   // the page run's own view of the run, until the first fetch
  if (fresh) tick();
  fit();
});
post("streamlit:componentReady", {apiVersion: 1});
</script></body></html>
"""


def folder() -> str:
    """This UI process's folder: the component's index.html and feeds/ (removed at exit)."""
    global _folder
    with _lock:
        if _folder is None:
            d = tempfile.mkdtemp(prefix="decoding-lab-live-")
            os.makedirs(os.path.join(d, "feeds"))
            with open(os.path.join(d, "index.html"), "w", encoding="utf-8") as f:
                f.write(INDEX_HTML)
            atexit.register(shutil.rmtree, d, True)
            _folder = d
        return _folder


def component():
    global _component
    d = folder()
    with _lock:
        if _component is None:
            import streamlit.components.v1 as components
            _component = components.declare_component("live_feed", path=d)
        return _component


def status_html(line: str) -> str:
    """The status line's markdown (bold marks only, as controls.status_line writes them while a run is live)
    as HTML; everything else escaped."""
    out = html.escape(line.replace("\\", ""), quote=False)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)


class Feed:
    """One live view's document, rewritten by a thread from the mirrored run until the run is no longer live."""

    def __init__(self, r, build, connected=None):
        self.token = secrets.token_urlsafe(16)
        self.path = os.path.join(folder(), "feeds", self.token + ".json")
        self._run = weakref.ref(r)
        self._build = build          # r -> dict(status_html, frac, progress_text, stream_html, steps, live)
        self.touched = time.time()
        self._connected = connected  # () -> bool: the page's browser session is still there (None: unknown)
        self.seq = 0
        self._last = None
        self.doc: dict = {}          # the last document written, without its seq (the page run's initial view)
        self._stop = threading.Event()
        self._writing = threading.Lock()   # the writer thread and a page run (feed_for) both write
        self.write()
        self._thread = threading.Thread(target=self._loop, name="live-feed", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return "./feeds/" + self.token + ".json"

    def write(self) -> bool:
        """Rebuild the document; False once the run is gone or no longer live (the last document is final)."""
        with self._writing:
            return self._write()

    def _write(self) -> bool:
        r = self._run()
        if r is None:
            doc, going = {"status_html": "", "frac": 0, "progress_text": "", "stream_html": "", "final": True,
                          "rerun": "gone"}, False
        else:
            doc = self._build(r)
            going = bool(doc.pop("live"))
            steps = doc.pop("steps")
            doc["stepped"] = steps > 0      # the component polls fast until the first step is there
            if not going:
                doc.update(final=True, rerun=f"{getattr(r, 'state', '')}:{steps}")
        self.doc = dict(doc)
        key = json.dumps(doc, sort_keys=True)
        if key != self._last:
            self._last = key
            self.seq += 1
            doc["seq"] = self.seq
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
        return going

    def _loop(self) -> None:
        while not self._stop.is_set():
            r = self._run()
            first = r is not None and not r.trace.steps
            if self._stop.wait(FIRST_WRITE_S if first else WRITE_S):
                break
            try:
                going = self.write()
            except Exception:  # noqa: BLE001 -- a run mirrored mid-update: the next write catches up
                going = True
            if not going or self._orphaned():
                break
        _drop(self)

    def _orphaned(self) -> bool:
        """Nobody can be watching: the page's session has been disconnected for ORPHAN_S, or (no way to tell) no
        page run asked for this feed for ORPHAN_S. A live run's page does not rerun while the feed serves it,
        so on a server the session decides (a run watched for longer than ORPHAN_S must go on being fed)."""
        now = time.time()
        if self._connected is not None:
            try:
                if self._connected():
                    self.touched = now
            except Exception:  # noqa: BLE001 -- a failing check counts as "not connected"
                pass
        return now - self.touched > ORPHAN_S

    def stop(self) -> None:
        self._stop.set()


def _drop(feed: Feed) -> None:
    with _lock:
        for k, v in list(_feeds.items()):
            if v is feed:
                _feeds.pop(k, None)
    # the last document stays a while for a page that polls it once more; removed with the folder at exit,
    # or here after a grace period
    threading.Timer(30.0, lambda: _remove(feed.path)).start()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def feed_for(view_key: str, r, build, connected=None) -> Feed:
    """The feed of a session's live view (its runner key, made unique per session by the caller) for run r; a
    feed already there is brought up to date (a page rerun draws the run as it is now)."""
    with _lock:
        f = _feeds.get(view_key)
        reuse = f is not None and f._run() is r and not f._stop.is_set() and f._thread.is_alive()
        if reuse:
            f.touched = time.time()
    if reuse:
        f.write()
        return f
    with _lock:
        f = _feeds.get(view_key)
        if f is not None:
            f.stop()
    f = Feed(r, build, connected)
    with _lock:
        _feeds[view_key] = f
    return f


def show(view_key: str, r, build, poll_ms: int = POLL_MS, connected=None):
    """Draw the live status component for run r; returns the value it last sent (a state change), if any.
    connected: () -> bool, whether the page's browser session is still there (ui.common.session_connected)."""
    f = feed_for(view_key, r, build, connected)
    return component()(url=f.url, poll_ms=int(poll_ms), first_poll_ms=FIRST_POLL_MS, initial=f.doc,
                       key=f"live_feed_{f.token}", default=None)
