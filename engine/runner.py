"""A step-through controller: runs a method's step iterator in a worker thread.

(~300 lines, one file on purpose: the Runner's states, its worker thread and TraceView, read together.)

One Runner per browser session and page. The UI reads `trace.steps`, `state` and `cursor`
on a timer; buttons call pause / resume / step_forward / step_back / jump / cancel. Nothing
here knows about Streamlit.

Step records may carry, for breakpoints:
  new_text   text appended by the step
  confidence the lowest relevant probability of the step (AR: the chosen token's probability)
  events     flags such as "draft_rejected", "kv_evicted", "remasked"
"""
from __future__ import annotations

import atexit
import threading
import traceback
import weakref
from dataclasses import dataclass
from typing import Iterator

from engine.errors import LabError

IDLE, RUNNING, PAUSED, DONE, CANCELLED, ERROR = "idle", "running", "paused", "done", "cancelled", "error"
EVENTS = {"draft_rejected": "a draft token is rejected", "kv_evicted": "a KV entry is evicted",
          "remasked": "a committed token is remasked", "changed": "a Jacobi guess changes"}


@dataclass(frozen=True)
class Breakpoint:
    kind: str     # "token" | "confidence_below" | "event"
    value: object

    def hit(self, rec: dict) -> str | None:
        if self.kind == "token":
            text = rec.get("new_text") or rec.get("token_text") or ""
            return f"token text {self.value!r} appeared" if str(self.value) and str(self.value) in text else None
        if self.kind == "confidence_below":
            c = rec.get("confidence")
            return f"confidence {c:.3f} < {self.value}" if c is not None and c < float(self.value) else None
        if self.kind == "event":
            return f"event: {EVENTS.get(self.value, self.value)}" if self.value in rec.get("events", ()) else None
        raise ValueError(f"unknown breakpoint kind {self.kind!r}")


_LIVE: "weakref.WeakSet[Runner]" = weakref.WeakSet()


@atexit.register
def _stop_all():
    """Cancel workers at interpreter exit so none is killed inside a torch call."""
    for r in list(_LIVE):
        r.cancel()
    for r in list(_LIVE):
        r.wait(timeout=10)


class Runner:
    def __init__(self, trace, steps: Iterator[dict], breakpoints=(), start_paused: bool = False):
        self.trace = trace
        self._it = steps
        self.breakpoints = list(breakpoints)
        self.state = PAUSED if start_paused else IDLE
        self.error: str | None = None
        self.exception: BaseException | None = None   # what the run stopped with (ERROR)
        self.traceback: str | None = None
        self.break_reason: str | None = None
        self.stop_reason: str | None = None   # why it was cancelled, when not by a person (engine.remote)
        self._cursor: int | None = None  # None: follow the newest step
        self._pending_steps = 0
        self._paused = start_paused
        self._cancel = False
        self._busy = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, daemon=True, name="decoding-worker")
        self.listener = None   # called with the runner after the worker changes its state (engine.remote)

    # ---- worker -------------------------------------------------------------------------
    def start(self):
        if not self._paused:
            self.state = RUNNING
        _LIVE.add(self)
        self._thread.start()
        return self

    def _work(self):
        while True:
            with self._cond:
                while self._paused and self._pending_steps == 0 and not self._cancel:
                    self._cond.wait()
                if self._cancel:
                    self.state = CANCELLED
                    break
                if self._pending_steps > 0:
                    self._pending_steps -= 1
                self._busy = True
            try:
                rec = next(self._it)
            except StopIteration:
                self._set_state(DONE)
                break
            except Exception as e:  # the UI shows it; the server keeps running
                self.error = str(e) if isinstance(e, LabError) else f"{type(e).__name__}: {e}"
                self.exception = e
                self.traceback = traceback.format_exc()
                self._set_state(ERROR)
                break
            with self._cond:
                self._busy = False
                for bp in self.breakpoints:
                    why = bp.hit(rec)
                    if why:
                        self.break_reason = f"step {rec.get('index')}: {why}"
                        self._paused = True
                        self._cursor = None
                        break
                if self._paused and not self._cancel:
                    self.state = PAUSED
            self._notify()
        self._close_steps()
        self._notify()

    def _close_steps(self):
        """Close the step generator in this (its own) thread. A method suspended inside
        `with torch.inference_mode():` and finalised later by the garbage collector in another thread
        would restore that thread's grad mode in the middle of whatever it is running."""
        close = getattr(self._it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 -- a method failing to clean up must not kill the worker
                pass

    def _notify(self):
        if self.listener is not None:
            self.listener(self)

    def _set_state(self, s):
        with self._cond:
            self._busy = False
            if not (self._cancel and s == DONE):
                self.state = s
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (tests, CLI). True if it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until the worker has no pending single steps and is paused or ended, and no step is being
        computed (a step in progress when the run was paused or cancelled has been recorded by then)."""
        import time
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cond:
                if not self._busy and (self.finished or (self._paused and self._pending_steps == 0)):
                    return
            time.sleep(0.01)

    # ---- controls -----------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state in (DONE, CANCELLED, ERROR)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def working(self) -> bool:
        """True while a step is being computed (also after Pause or Cancel, until the step in progress comes
        back) or a single step is pending."""
        busy, pending = getattr(self, "_busy", False), getattr(self, "_pending_steps", 0)
        return bool(busy or (pending and not self.finished))

    def set_breakpoints(self, breakpoints) -> None:
        """Breakpoints changed while the run is live take effect from the next step."""
        with self._cond:
            self.breakpoints = list(breakpoints)

    def pause(self):
        with self._cond:
            if not self.finished:
                self._paused = True
                self.state = PAUSED

    def resume(self):
        with self._cond:
            self._cursor = None
            self.break_reason = None
            if not self.finished:
                self._paused = False
                self.state = RUNNING
                self._cond.notify_all()

    def _show_next_recorded(self) -> bool:
        """Move the cursor to the next recorded step when there is one (True); else follow the newest (False)."""
        cur = self.cursor
        if cur is not None and cur < len(self.trace.steps) - 1:
            self._cursor = cur + 1
            return True
        self._cursor = None
        return False

    def step_forward(self):
        """Show the next recorded step; at the newest one, compute exactly one more step."""
        with self._cond:
            if self._show_next_recorded():
                return
            if not self.finished:
                self._paused = True
                self.state = PAUSED
                self._pending_steps += 1
                self._cond.notify_all()

    def step_back(self):
        with self._cond:
            self.pause()
            cur = self.cursor
            if cur is not None:
                self._cursor = max(0, cur - 1)

    def jump(self, i: int):
        with self._cond:
            self.pause()
            n = len(self.trace.steps)
            if n:
                self._cursor = max(0, min(int(i), n - 1))

    def cancel(self):
        with self._cond:
            self._cancel = True
            self._paused = False
            if not self.finished:
                self.state = CANCELLED
            self._cond.notify_all()

    @property
    def cursor(self) -> int | None:
        """Index of the step being shown (None when there are no steps yet)."""
        n = len(self.trace.steps)
        if n == 0:
            return None
        return n - 1 if self._cursor is None else min(self._cursor, n - 1)

    @property
    def following(self) -> bool:
        return self._cursor is None


class TraceView(Runner):
    """A finished trace stepped through with the Runner's controls, with no worker thread (Replay).

    It is a Runner so that ui/controls (which accepts Runners) drives it unchanged; every method the
    controls call is answered here from the recorded steps, and nothing is ever computed.
    """

    def __init__(self, trace, cursor: int | None = 0):
        self.trace = trace
        self.breakpoints = []
        self.state = DONE
        self.error = self.exception = self.traceback = None
        self.break_reason = self.stop_reason = None
        self._cursor = None
        if cursor is not None:
            self.jump(cursor)

    def start(self):
        return self

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def wait_idle(self, timeout: float = 30.0) -> None:
        return None

    @property
    def alive(self) -> bool:
        return False

    def pause(self):
        pass

    def resume(self):
        """Like a finished Runner: follow, i.e. show the last step."""
        self._cursor = None

    def step_forward(self):
        """The next recorded step; at the last one, follow it (as a finished Runner does)."""
        cur = self.cursor
        self._cursor = cur + 1 if cur is not None and cur < len(self.trace.steps) - 1 else None

    def step_back(self):
        cur = self.cursor
        if cur is not None:
            self._cursor = max(0, cur - 1)

    def jump(self, i: int):
        n = len(self.trace.steps)
        if n:
            self._cursor = max(0, min(int(i), n - 1))

    def cancel(self):
        pass

    def set_breakpoints(self, breakpoints) -> None:
        self.breakpoints = list(breakpoints)
