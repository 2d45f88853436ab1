"""The UI's mirror of one run in the decoder process (engine.remote): RemoteRunner, the Runner interface
over a Trace filled from the decoder's messages, and the errors those messages carry back.

engine.remote re-exports everything here (remote.RemoteRunner, remote.DecoderError, remote.RemoteError,
remote.decode_exception, remote.HEARTBEAT_TIMEOUT_S keep working); its Decoder creates the runners and feeds
them. Imports nothing of engine.remote at run time (no cycle): "Decoder" is a type hint only.
"""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from engine import errors
from engine.errors import LabError
from engine.runner import CANCELLED, DONE, ERROR, PAUSED, RUNNING, Runner
from engine.trace import Counters, Trace

if TYPE_CHECKING:
    from engine.remote import Decoder

# A watched run (RemoteRunner.watch) computing with no heartbeat for this long is cancelled by the decoder;
# engine.remote (HEARTBEAT_EVERY_S, Decoder.watch) explains the heartbeat.
HEARTBEAT_TIMEOUT_S = float(os.environ.get("DECODING_LAB_HEARTBEAT_S", 5.0))


class DecoderError(LabError, RuntimeError):
    """The decoder process stopped or could not be reached."""


class RemoteError(Exception):
    """An unexpected exception in the decoder process (a bug); `remote_traceback` has its traceback."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback


def decode_exception(enc: tuple) -> BaseException:
    name, message, tb = enc
    cls = getattr(errors, name, None)             # every LabError is in engine.errors (ForkError too)
    if isinstance(cls, type) and issubclass(cls, LabError):
        return cls(message)
    if name == "DecoderError":
        return DecoderError(message)
    return RemoteError(f"{name}: {message}", tb)


class RemoteRunner(Runner):
    """engine.runner.Runner's interface over a run in the decoder process. The trace is a mirror filled
    by the decoder's messages; the cursor (which step is shown) is local; pause / resume / step / cancel
    / breakpoints are sent to the decoder's Runner, and the state shown is updated at once."""

    def __init__(self, dec: "Decoder", run_id: int, meta: dict, breakpoints=(), start_paused: bool = False):
        self._dec, self.run_id = dec, run_id
        self.trace = Trace(meta=meta, counters=Counters())
        self.breakpoints = list(breakpoints)
        self.state = PAUSED if start_paused else RUNNING
        self.error = self.exception = self.traceback = None
        self.break_reason = None
        self.live_text = ""              # the output so far, decoded by the decoder
        self.token_texts: list[str] = []  # per output token, sent when the run ends
        self.listener = None
        self.started_at = time.time()
        self.stop_reason = None           # why the decoder cancelled the run on its own (no heartbeat)
        self._working = False             # the decoder's runner computes a step, or has one pending
        self._viewed = None               # watch(): is the run's page still there?
        self._cursor = None
        self._changed = threading.Condition()
        self._ended = False

    # -- messages from the decoder (the UI's reader thread) -----------------------------------------
    def _on_step(self, p: dict) -> None:
        with self._changed:
            self.trace.steps.append(p["rec"])
            c = self.trace.counters
            for k, v in p["counters"].items():
                if hasattr(c, k):
                    setattr(c, k, v)
            self.trace.extra.update(p["extra"])
            self.trace.final_ids.extend(p["tail_ids"])
            self.live_text += p["tail_text"]
            self._changed.notify_all()

    def _on_state(self, s: dict) -> None:
        with self._changed:
            if not (self.state == CANCELLED and s["state"] != ERROR):
                self.state = s["state"]
            self.break_reason = s.get("break_reason")
            self._working = bool(s.get("working"))
            self.stop_reason = s.get("stop_reason") or self.stop_reason
            if s.get("error") is not None:
                self.error = s["error"]
                self.exception = decode_exception(s["exception"])
                self.traceback = s["exception"][2] or None
            if self.state in (DONE, CANCELLED, ERROR):
                self._ended = True
            self._changed.notify_all()

    def _on_end(self, f: dict) -> None:
        with self._changed:
            self.trace.final_text = f["final_text"]
            self.trace.final_ids = list(f["final_ids"])
            self.token_texts = list(f["token_texts"])
            self.trace.meta.update(f["meta"])
            self._changed.notify_all()

    def _on_lost(self, message: str) -> None:
        with self._changed:
            if not self.finished:
                self.state, self.error = ERROR, message
                self.exception = DecoderError(message)
            self._ended = True
            self._working = False
            self._changed.notify_all()

    # -- controls --------------------------------------------------------------------------------------
    def _control(self, action: str, **kw):
        return self._dec.call("control", run_id=self.run_id, action=action, **kw)

    def start(self):
        return self

    @property
    def alive(self) -> bool:
        return not self.finished

    @property
    def working(self) -> bool:
        """The decoder's runner is computing a step or has one pending (as of its last message)."""
        return self._working and not self.finished

    def watch(self, viewed, timeout_s: float = HEARTBEAT_TIMEOUT_S) -> None:
        """Arm the heartbeat: while `viewed()` is true the UI sends heartbeats; once none came for `timeout_s`
        the decoder cancels the run if it is computing (its page is gone)."""
        self._dec.watch(self, viewed, timeout_s)

    def pause(self):
        if not self.finished:
            self.state = PAUSED
            self._control("pause")

    def resume(self):
        self._cursor = None
        self.break_reason = None
        if not self.finished:
            self.state = RUNNING
            self._control("resume")

    def step_forward(self):
        """Show the next recorded step; at the newest one, compute exactly one more step."""
        if self._show_next_recorded():
            return
        if not self.finished:
            self.state = PAUSED
            self._working = True
            self._control("step")

    def step_back(self):
        self.pause()
        cur = self.cursor
        if cur is not None:
            self._cursor = max(0, cur - 1)

    def jump(self, i: int):
        self.pause()
        n = len(self.trace.steps)
        if n:
            self._cursor = max(0, min(int(i), n - 1))

    def cancel(self):
        if not self.finished:
            self.state = CANCELLED
        try:
            self._control("cancel")
        except DecoderError:
            pass

    def set_breakpoints(self, breakpoints) -> None:
        """Breakpoints changed while the run is live take effect from the next step."""
        self.breakpoints = list(breakpoints)
        if not self.finished:
            self._control("breakpoints", breakpoints=self.breakpoints)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (tests, scripts). True if it ended."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._ended:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def wait_steps(self, n: int = 1, timeout: float = 1.0) -> bool:
        """Block until the run has `n` steps or has ended, at most `timeout` s. True if it has them."""
        end = time.monotonic() + timeout
        with self._changed:
            while len(self.trace.steps) < n and not self._ended and not self.finished:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return len(self.trace.steps) >= n

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until the decoder's runner has no pending single steps and is paused or ended. Every
        step record it sent before is applied here by then (one ordered channel). After Pause or Cancel that
        includes the step that was in progress."""
        if self.finished and not self._working:
            return
        try:
            self._dec.call("control", run_id=self.run_id, action="wait_idle", timeout=timeout,
                           call_timeout=timeout + 30)
        except DecoderError:
            pass
