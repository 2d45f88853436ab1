"""The decoder process: models and decoding runs live in a process of their own; step records stream back.

(~325 lines: the UI's end of one channel, the Decoder that sends the calls and reads every message back,
read with the message format below. The RemoteRunner that mirrors a run from those messages, and the errors
they carry, are in engine/remote_runner.py; the process's end, the Server, is in engine/decoder_server.py;
both re-exported here. `python -m engine.remote` stays the decoder's entry point.)

Why a process. A decoding thread in the UI process shares the GIL with Streamlit's rendering. A forward
of the 135M model is hundreds of small torch ops, and while a render thread runs Python the decoder
waits for the GIL at every op: measured on this 2-core machine, greedy AR decoding ran at 15.4 tokens/s
alone, 12.4 beside a thread busy 30% of the time and 0.1 beside a thread busy all the time. In its own
process the decoder never waits for the UI (only for CPU cores).

UI side (this module imports no streamlit):
    dec = decoder()                                   # one per UI process, started on first use
    lm = dec.load(name, trust_remote_code, placement)  # ModelHandle: name, device, dtype, info; placement:
        # models.load's device / dtype / device_map / quantization / max_memory (None: the default). The
        # decoder keys its models by (name, trust_remote_code, models.placement_key(placement)): one model
        # per key, shared by every session that asks for the same key, never by another placement.
    r = dec.start(lm, method, prompt, breakpoints=..., start_paused=..., max_new_tokens=..., ...)
        # -> RemoteRunner (the Runner interface over a mirrored Trace); LabError at once if refused
    b = dec.fork(lm, r.trace, step, token=" cat")    # a branch of a recorded run at its step (engine.fork):
        # -> RemoteRunner like start(); ForkError / LabError at once if refused (the parent is never touched)
    dec.task(lm, "vs_autoregressive", meta=..., final_ids=...)   # model work a page asks for
    r.watch(viewed)      # a page started it: cancelled if it computes with no page to show it (HEARTBEAT_*)
Decoder side: `python -m engine.remote FD` serves one UI process over a socket pair, holds the models
(loaded once, shared by every session) and runs each run in an engine.runner.Runner.

Messages (pickled tuples):
    UI -> decoder   (call_id, op, kwargs)             call_id 0: no reply (heartbeat, forget)
    decoder -> UI   ("reply", call_id, ok, value)      value: a result, or an encoded exception
                    ("step", run_id, payload)          a step record, counters, summary, output tail
                    ("state", run_id, snapshot)        state, working, breakpoint / stop reason, error
                    ("end", run_id, final)             final text, token texts, finished time
If the decoder process dies, every pending call fails with DecoderError, every run ends in "error"
with that message, and the next call starts a new process.
"""
from __future__ import annotations

import atexit
import itertools
import os
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe

# the decoder side (the Server, its tasks, main, encode_exception): re-exported, remote.Server keeps working
from engine.decoder_server import TASKS, Server, encode_exception, main  # noqa: F401
# the UI's mirror of a run and the errors it reads back: re-exported, remote.RemoteRunner keeps working
from engine.remote_runner import (HEARTBEAT_TIMEOUT_S, DecoderError, RemoteError,  # noqa: F401
                                  RemoteRunner, decode_exception)
from engine.trace import Trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALL_TIMEOUT_S = 600.0     # a model load on a slow disk, a long teacher-forcing task
START_TIMEOUT_S = 120.0
# A run the UI watches (RemoteRunner.watch: a browser page started it) is cancelled by the decoder once no
# heartbeat came for HEARTBEAT_TIMEOUT_S while it computes: its page is gone (a closed tab), and nobody should
# wait behind it for the shared model. The UI sends a heartbeat every HEARTBEAT_EVERY_S for each watched run
# whose page is still there. A paused run is kept (it holds no model lock: engine.run locks one step at a time).
# Runs started without a UI (engine API, CLI, tests) are never watched, so never cancelled this way.
# HEARTBEAT_TIMEOUT_S (DECODING_LAB_HEARTBEAT_S, 5 s by default) is defined in engine/remote_runner.py.
HEARTBEAT_EVERY_S = 1.0
MAX_LIVE_BRANCHES = 8      # Decoder.fork: branches of one browser session decoding at a time


# =========================================================================================== UI side
def fork_payload(parent: Trace, step=None) -> dict:
    """What engine.fork.prepare reads of a parent run, copied: its meta, per step the counts (no candidates,
    logits or trees) and its output ids; a diffusion step's canvas and block position too, and the forked
    step's draft tree (a forced verdict reads its nodes). The steps are copied before the ids, so a live mirror
    that grows meanwhile gives at least the tokens its copied steps committed."""
    steps = list(parent.steps)
    ids = list(parent.final_ids)
    keep = ("kind", "index", "totals", "new_ids", "token_id", "state", "tokens", "block", "block_range",
            "step_in_block")
    out = [{k: s[k] for k in keep if k in s} if isinstance(s, dict) else s for s in steps]
    if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < len(out) and isinstance(steps[step], dict) \
            and isinstance(steps[step].get("nodes"), list):
        out[step]["nodes"] = [dict(n) for n in steps[step]["nodes"] if isinstance(n, dict)]
    return {"meta": dict(parent.meta), "final_ids": ids, "steps": out}


@dataclass
class ModelHandle:
    """A model loaded in the decoder process, as the UI sees it (no weights here)."""
    name: str
    trust_remote_code: bool
    device: str
    dtype: str
    info: dict = field(default_factory=dict)
    generation: int = 0      # the decoder process it was loaded in
    placement: tuple = ()    # the decoder's models.placement_key(...) of its load (canonical; part of `key`)

    @property
    def key(self) -> tuple:
        return (self.name, self.trust_remote_code, self.placement)


class Decoder:
    """The UI process's connection to its decoder process."""

    _generations = itertools.count(1)

    def __init__(self):
        self.generation = next(self._generations)
        ours, theirs = Pipe(duplex=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.remote", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], cwd=ROOT, env=env)
        theirs.close()
        self.conn: Connection = ours
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, list] = {}     # call id -> [event, ok, value]
        self._runs: "weakref.WeakValueDictionary[int, RemoteRunner]" = weakref.WeakValueDictionary()
        self._watched: "weakref.WeakValueDictionary[int, RemoteRunner]" = weakref.WeakValueDictionary()
        self._branches: dict = {}               # session -> its branch runners (fork(): the live cap)
        self._beats: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dead: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True, name="decoder-reader")
        self._reader.start()

    # -- the channel -----------------------------------------------------------------------------
    def call(self, op: str, call_timeout: float = CALL_TIMEOUT_S, **kw):
        if self.dead:
            raise DecoderError(self.dead)
        cid = next(self._ids)
        slot = [threading.Event(), False, None]
        with self._lock:
            self._pending[cid] = slot
        try:
            with self._send_lock:
                self.conn.send((cid, op, kw))
        except (OSError, EOFError, BrokenPipeError) as e:
            self._lost(f"the decoder process cannot be reached ({type(e).__name__})")
        if not slot[0].wait(call_timeout):
            with self._lock:
                self._pending.pop(cid, None)
            raise DecoderError(f"the decoder process did not answer '{op}' within {call_timeout:.0f} s")
        if not slot[1]:
            raise slot[2] if isinstance(slot[2], BaseException) else decode_exception(slot[2])
        return slot[2]

    def _read(self):
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                code = self.proc.poll()
                self._lost("the decoder process stopped" + (f" (exit code {code})" if code is not None else ""))
                return
            kind = msg[0]
            if kind == "reply":
                _, cid, ok, value = msg
                with self._lock:
                    slot = self._pending.pop(cid, None)
                if slot is not None:
                    slot[1], slot[2] = ok, value
                    slot[0].set()
                continue
            run = self._runs.get(msg[1])
            if run is None:
                continue
            if kind == "step":
                run._on_step(msg[2])
            elif kind == "state":
                run._on_state(msg[2])
            elif kind == "end":
                run._on_end(msg[2])

    def _lost(self, message: str):
        if self.dead:
            return
        self.dead = message + "; the next run starts a new one."
        with self._lock:
            pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot[1], slot[2] = False, DecoderError(self.dead)
            slot[0].set()
        for run in list(self._runs.values()):
            run._on_lost(self.dead)

    def close(self):
        self.dead = self.dead or "the decoder process was closed"
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.proc.terminate()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()

    # -- what pages use --------------------------------------------------------------------------------
    def load(self, name: str, trust_remote_code: bool = False, placement: dict | None = None) -> ModelHandle:
        """Load `name` in the decoder process as `placement` says (models.load's keyword arguments: device,
        dtype, device_map, quantization, max_memory; None: the default). ModelLoadError when refused."""
        info = self.call("load", name=name, trust_remote_code=trust_remote_code, placement=dict(placement or {}))
        return ModelHandle(info["name"], trust_remote_code, info["device"], info["dtype"], info, self.generation,
                           tuple(info["placement_key"]))

    def start(self, lm: ModelHandle, method: str, prompt: str, breakpoints=(), start_paused: bool = False,
              **prepare_kw) -> RemoteRunner:
        """Validate (engine.run.prepare, in the decoder) and start a run; LabError at once if refused."""
        run_id = next(self._ids)
        meta = self.call("start", model=lm.key, run_id=run_id, method=method, prompt=prompt,
                         breakpoints=list(breakpoints), start_paused=bool(start_paused), prepare_kw=prepare_kw,
                         call_timeout=START_TIMEOUT_S)
        return self._register(run_id, meta, breakpoints, start_paused)

    def fork(self, lm: ModelHandle, parent: Trace, step: int, *, token=None, position: int | None = None,
             mask: bool = False, method: str | None = None, options: dict | None = None, sampling=None,
             max_new_tokens: int | None = None, force: dict | None = None, guesses=None, parent_id: int = 0,
             session=None, breakpoints=(), start_paused: bool = False, parent_run: int | None = None) -> RemoteRunner:
        """Start a branch of the recorded run `parent` (a Trace: a runner's mirror, a loaded file) at its step
        `step` with one edit (engine.fork.prepare: token / method / options / sampling / force / guesses), as a RemoteRunner like
        start(). The decoder gets a copy of what the fork needs (meta, the steps' counts, the output ids): the
        parent is never touched. A bad edit is the engine's ForkError / LabError at once; at most
        MAX_LIVE_BRANCHES branches of one `session` (any hashable; None: no cap) compute at a time.
        meta["fork"]["parent"] is `parent_id` (0: the original; n: the n-th branch of its tree). `parent_run`: the
        parent's RemoteRunner.run_id when it ran in this decoder (a kv run's snapshots there then spare the replay)."""
        from engine.fork import ForkError
        if session is not None:
            with self._lock:
                live = [b for b in self._branches.get(session, []) if not b.finished]
                if len(live) >= MAX_LIVE_BRANCHES:
                    raise ForkError(f"{len(live)} branches of this session are still decoding (at most "
                                    f"{MAX_LIVE_BRANCHES}): cancel one or wait for one to finish.")
        run_id = next(self._ids)
        meta = self.call("fork", model=lm.key, run_id=run_id, parent=fork_payload(parent, step), step=step,
                         edit={"token": token, "position": position, "mask": mask, "method": method,
                               "options": options, "sampling": sampling,
                               "max_new_tokens": max_new_tokens, "force": force, "guesses": guesses},
                         parent_id=parent_id, breakpoints=list(breakpoints), start_paused=bool(start_paused),
                         parent_run=parent_run if isinstance(parent_run, int) else None,
                         call_timeout=START_TIMEOUT_S)
        r = self._register(run_id, meta, breakpoints, start_paused)
        if session is not None:
            with self._lock:
                keep = [b for b in self._branches.get(session, []) if not b.finished]
                self._branches[session] = keep + [r]
        return r

    def _register(self, run_id: int, meta: dict, breakpoints, start_paused: bool) -> RemoteRunner:
        r = RemoteRunner(self, run_id, meta, breakpoints, start_paused)
        self._runs[run_id] = r
        weakref.finalize(r, self._forget, run_id)
        self.call("control", run_id=run_id, action="go")   # the decoder holds its messages until now
        return r

    def watch(self, run: RemoteRunner, viewed, timeout_s: float = HEARTBEAT_TIMEOUT_S) -> None:
        """See RemoteRunner.watch. One thread sends every watched run's heartbeat, in one message a second."""
        run._viewed = viewed
        self.call("control", run_id=run.run_id, action="watch", timeout=float(timeout_s))
        with self._lock:
            self._watched[run.run_id] = run
            if self._beats is None:
                self._beats = threading.Thread(target=self._beat, daemon=True, name="decoder-heartbeat")
                self._beats.start()

    def _beat(self):
        while not self.dead:
            time.sleep(HEARTBEAT_EVERY_S)
            ids = []
            for rid, run in list(self._watched.items()):
                if run.finished:
                    self._watched.pop(rid, None)
                    continue
                try:
                    if run._viewed():
                        ids.append(rid)
                except Exception:  # noqa: BLE001 -- a failing check counts as "not viewed"
                    pass
            if ids and not self.dead:
                try:
                    with self._send_lock:
                        self.conn.send((0, "heartbeat", {"run_ids": ids}))
                except (OSError, EOFError, BrokenPipeError):
                    return

    def _forget(self, run_id: int):
        if not self.dead:
            try:
                with self._send_lock:
                    self.conn.send((0, "forget", {"run_id": run_id}))
            except (OSError, EOFError, BrokenPipeError):
                pass

    def task(self, lm: ModelHandle, name: str, **kw):
        """Model work a page asks for, done in the decoder process (see TASKS below)."""
        return self.call("task", model=lm.key, name=name, kwargs=kw)


_DECODER: Decoder | None = None
_DECODER_LOCK = threading.Lock()


def decoder() -> Decoder:
    """This process's decoder (started on first use; a new one if the last one died)."""
    global _DECODER
    with _DECODER_LOCK:
        if _DECODER is None or _DECODER.dead:
            if _DECODER is not None:
                _DECODER.close()
            _DECODER = Decoder()
        return _DECODER


@atexit.register
def _close_decoder():
    if _DECODER is not None:
        _DECODER.close()


# ====================================================================================== decoder side
# the Server, its tasks and the process entry point `main`: engine/decoder_server.py (imported above)
if __name__ == "__main__":
    sys.exit(main())
