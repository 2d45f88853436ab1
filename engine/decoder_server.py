"""The decoder process's side of engine/remote.py: the Server that holds the models and runs the runs.

(~310 lines, one file on purpose: the Server's ops share one table of models and runs and one channel; the tasks
at the end are a few lines each.)

`python -m engine.remote FD` (engine.remote.Decoder starts it) calls `main` here. The messages it sends
and reads are described at the top of engine/remote.py, whose UI side must match them; engine.remote
re-exports Server, TASKS, main and encode_exception. Imports nothing of engine.remote (no cycle).
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

from engine.errors import LabError
from engine.runner import RUNNING, Runner
from engine.trace import Trace


def encode_exception(e: BaseException) -> tuple:
    """(name, message, traceback): what engine.remote.decode_exception reads back on the UI side."""
    return (type(e).__name__, str(e), traceback.format_exc() if not isinstance(e, LabError) else "")


def _model_info(lm, key: tuple = ()) -> dict:
    from engine import models
    cfg = lm.model.config
    return {"name": lm.name, "device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", ""),
            "placement_key": key, "placement": _safe(lambda: models.placement_summary(lm)) or str(lm.device),
            "params": int(sum(p.numel() for p in lm.model.parameters())),
            "layers": getattr(cfg, "num_hidden_layers", None), "vocab": getattr(cfg, "vocab_size", None),
            "kv_bytes_per_token": _safe(lm.kv_bytes_per_token), "context_length": lm.context_length,
            "is_instruct": lm.is_instruct, "model_type": str(getattr(cfg, "model_type", "")),
            "torch_threads": _safe(_torch_threads)}


def _torch_threads():
    import torch
    return torch.get_num_threads()


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 -- an odd config: the figure is left out
        return None


class _Run:
    def __init__(self, runner: Runner, trace: Trace):
        self.runner, self.trace = runner, trace
        self.sent_ids = 0
        self.go = threading.Event()
        self.heartbeat_s: float | None = None    # armed by a "watch" control (a UI page started the run)
        self.last_beat = time.monotonic()


class Server:
    """The decoder process: models, runs, tasks; one thread reads calls, slow ones go to a pool."""

    FAST = {"control", "forget", "ping", "heartbeat"}

    def __init__(self, conn: Connection):
        from concurrent.futures import ThreadPoolExecutor
        self.conn = conn
        self.send_lock = threading.Lock()
        self.models: dict[tuple, object] = {}
        self.models_lock = threading.Lock()
        self.runs: dict[int, _Run] = {}
        # finished runs whose trace holds fork snapshots (a kv run): a fork of one restores the nearest state
        # instead of replaying from the prompt. The UI's runner going away ("forget") drops it; at most KEEP.
        self.kept: dict[int, Trace] = {}
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="decoder-call")
        self.state_lock = threading.Lock()   # a state snapshot is taken and sent in one piece (never reordered)
        threading.Thread(target=self._watchdog, daemon=True, name="decoder-watchdog").start()

    def send(self, msg) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def serve(self) -> None:
        while True:
            try:
                cid, op, kw = self.conn.recv()
            except (EOFError, OSError):
                break
            if op in self.FAST and kw.get("action") != "wait_idle":
                self._answer(cid, op, kw)
            else:
                self.pool.submit(self._answer, cid, op, kw)
        for run in list(self.runs.values()):
            run.runner.cancel()

    def _answer(self, cid: int, op: str, kw: dict) -> None:
        try:
            value = getattr(self, "op_" + op)(**kw)
            ok = True
        except BaseException as e:  # noqa: BLE001 -- every failure goes back to the caller
            value, ok = encode_exception(e), False
        if cid:
            try:
                self.send(("reply", cid, ok, value))
            except (OSError, EOFError, BrokenPipeError):
                pass

    # -- models ---------------------------------------------------------------------------------
    @staticmethod
    def model_key(name: str, trust_remote_code: bool, placement=None) -> tuple:
        """(name, trust_remote_code, models.placement_key(placement)): placement is load()'s keyword arguments
        (a dict, any spelling) or a key already (a tuple); checked here (ModelLoadError), before any load."""
        from engine import models
        if isinstance(placement, (tuple, list)):
            placement = models.placement_from_key(tuple(tuple(kv) for kv in placement))
        return (name, bool(trust_remote_code), models.placement_key(placement))

    def model(self, key):
        """The model for a handle's key (name, trust_remote_code[, placement key]), loaded once."""
        from engine import models
        key = self.model_key(*key)
        with self.models_lock:
            if key not in self.models:
                name, trust, placed = key
                self.models[key] = models.load(name, trust_remote_code=trust, **models.placement_from_key(placed))
            return self.models[key]

    def op_ping(self):
        return "pong"

    def op_load(self, name: str, trust_remote_code: bool = False, placement: dict | None = None) -> dict:
        key = self.model_key(name, trust_remote_code, placement)
        return _model_info(self.model(key), key[2])

    # -- runs -----------------------------------------------------------------------------------
    def op_start(self, model, run_id, method, prompt, breakpoints, start_paused, prepare_kw) -> dict:
        from engine import run as engine_run
        lm = self.model(tuple(model))
        trace, steps = engine_run.prepare(lm, method, prompt, **prepare_kw)
        return self._launch(run_id, lm, trace, steps, breakpoints, start_paused)

    def op_fork(self, model, run_id, parent: dict, step, edit: dict, parent_id, breakpoints, start_paused,
                parent_run: int | None = None) -> dict:
        """A branch of a recorded run (Decoder.fork): engine.fork.prepare on a copy of the parent, then as a start.
        `parent_run` is the parent's run id here when it ran here: a kept trace's snapshots then serve the fork."""
        from engine import fork
        from engine.sampling import SamplingConfig
        lm = self.model(tuple(model))
        if not isinstance(parent, dict) or not isinstance(parent.get("meta"), dict):
            raise fork.ForkError("fork needs the run to fork from.")
        src = Trace(meta=dict(parent["meta"]), steps=list(parent.get("steps") or []),
                    final_ids=list(parent.get("final_ids") or []))
        held = self.kept.get(parent_run) if isinstance(parent_run, int) else None
        if held is not None and held.meta.get("prompt_ids") == src.meta.get("prompt_ids") \
                and list(held.final_ids) == src.final_ids and len(held.steps) == len(src.steps):
            src.counters = held.counters      # the same run: its snapshots (checked again against the edit)
        sampling = edit.get("sampling")
        if sampling is not None and not isinstance(sampling, SamplingConfig):
            raise fork.ForkError("fork: sampling must be a SamplingConfig.")
        trace, steps = fork.prepare(lm, src, step, token=edit.get("token"), position=edit.get("position"),
                                    mask=edit.get("mask", False), method=edit.get("method"),
                                    options=edit.get("options"), sampling=sampling,
                                    max_new_tokens=edit.get("max_new_tokens"), force=edit.get("force"),
                                    guesses=edit.get("guesses"))
        trace.meta["fork"]["parent"] = int(parent_id)
        return self._launch(run_id, lm, trace, steps, breakpoints, start_paused)

    def _launch(self, run_id, lm, trace, steps, breakpoints, start_paused) -> dict:
        entry = _Run(None, trace)
        runner = Runner(trace, self._streamed(run_id, entry, lm, steps), breakpoints=breakpoints,
                        start_paused=start_paused)
        runner.listener = lambda r: self._state(run_id, r)
        entry.runner = runner
        self.runs[run_id] = entry
        runner.start()
        return dict(trace.meta)

    def _streamed(self, run_id: int, entry: _Run, lm, steps):
        entry.go.wait(60)     # the UI has registered the run (its messages have somewhere to go)
        if entry.runner is not None and getattr(entry.runner, "_cancel", False):
            return            # cancelled before it began: no prefill for nobody
        trace = entry.trace
        for rec in steps:
            tail = trace.final_ids[entry.sent_ids:]
            entry.sent_ids = len(trace.final_ids)
            payload = {"rec": rec, "counters": trace.counters.as_dict(), "tail_ids": tail,
                       "tail_text": lm.decode(tail) if tail else "",
                       "extra": {k: v for k, v in trace.extra.items() if k == "summary"}}
            self.send(("step", run_id, payload))
            yield rec
        self.send(("end", run_id, {"final_text": trace.final_text, "final_ids": list(trace.final_ids),
                                   "token_texts": [lm.token_text(t) for t in trace.final_ids],
                                   "meta": {k: trace.meta[k] for k in ("finished", "lossless") if k in trace.meta}}))

    def _state(self, run_id: int, r: Runner) -> None:
        with self.state_lock:
            snap = {"state": r.state, "break_reason": r.break_reason, "error": r.error, "working": r.working,
                    "stop_reason": getattr(r, "stop_reason", None),
                    "exception": encode_exception(r.exception) if r.exception is not None else None}
            if r.exception is not None and r.traceback:
                snap["exception"] = (snap["exception"][0], snap["exception"][1], r.traceback)
            try:
                self.send(("state", run_id, snap))
            except (OSError, EOFError, BrokenPipeError):
                pass
        if r.finished and not r.working:   # (a cancelled run's step in progress has come back)
            entry = self.runs.pop(run_id, None)   # the UI holds the mirror; only fork snapshots are kept
            if entry is not None and r.exception is None:
                self._keep(run_id, entry.trace)

    KEEP = 4

    def _keep(self, run_id: int, trace: Trace) -> None:
        from engine.methods.kv.resume import snapshots_of
        if snapshots_of(trace) is None:
            return
        with self.state_lock:
            self.kept[run_id] = trace
            while len(self.kept) > self.KEEP:
                self.kept.pop(next(iter(self.kept)))

    def op_control(self, run_id: int, action: str, **kw):
        entry = self.runs.get(run_id)
        if entry is None:
            return None                   # ended (and forgotten) already
        r = entry.runner
        entry.last_beat = time.monotonic()    # the UI acted on the run: its page is there
        if action == "go":
            entry.go.set()
        elif action == "pause":
            r.pause()
        elif action == "resume":
            r.resume()
        elif action == "step":
            r.step_forward()
        elif action == "cancel":
            r.cancel()
            entry.go.set()
        elif action == "breakpoints":
            r.set_breakpoints(kw["breakpoints"])
        elif action == "watch":
            entry.heartbeat_s = float(kw["timeout"])
        elif action == "wait_idle":
            r.wait_idle(timeout=float(kw.get("timeout", 30)))
        else:
            raise ValueError(f"unknown control {action!r}")
        self._state(run_id, r)   # before the reply: the caller sees the state this control left (after
        return None              # wait_idle, no step in progress: the worker's own notice may come later)

    def op_heartbeat(self, run_ids: list[int]):
        now = time.monotonic()
        for rid in run_ids:
            entry = self.runs.get(rid)
            if entry is not None:
                entry.last_beat = now

    def _watchdog(self) -> None:
        """Cancel a watched run that computes with no heartbeat for its timeout (its page is gone)."""
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            for rid, entry in list(self.runs.items()):
                r = entry.runner
                if entry.heartbeat_s is None or r is None or r.finished:
                    continue
                quiet = now - entry.last_beat
                if quiet > entry.heartbeat_s and (r.state == RUNNING or r.working):
                    r.stop_reason = (f"cancelled by the server: no open page has shown this run for {quiet:.0f} s "
                                     "(the tab was closed or lost its connection)")
                    print(f"decoder: run {rid} {r.stop_reason}", file=sys.stderr, flush=True)
                    r.cancel()
                    entry.go.set()
                    self._state(rid, r)

    def op_forget(self, run_id: int):
        with self.state_lock:
            self.kept.pop(run_id, None)
        entry = self.runs.pop(run_id, None)
        if entry is not None:
            entry.runner.cancel()
            entry.go.set()

    # -- tasks: model work pages ask for ------------------------------------------------------------
    def op_task(self, model, name: str, kwargs: dict):
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}")
        return TASKS[name](self.model(tuple(model)), **kwargs)


def _task_vs_autoregressive(lm, meta: dict, final_ids: list[int]) -> dict:
    from engine import measure
    return measure.vs_autoregressive(lm, meta, final_ids)


def _task_judged(lm, prompt_ids: list[int], output_ids: list[int]):
    from engine import quality
    return quality.judged_perplexity(lm, prompt_ids, output_ids)


def _task_kv_quality(lm, prompt: str, policies: list[str], fractions: list[float], options: dict) -> list[dict]:
    from engine.methods.kv.quality import prompt_quality_curve
    return prompt_quality_curve(lm, prompt, policies, fractions, options)


def _task_diffusion_model(lm, adapter: str = "auto") -> dict:
    from engine.diffusion import adapters
    ad = adapters.for_lm(lm, adapter)
    return {"name": ad.name, "mask_id": ad.mask_id, "shift": ad.shift}


TASKS = {"vs_autoregressive": _task_vs_autoregressive, "judged": _task_judged, "kv_quality": _task_kv_quality,
         "diffusion_model": _task_diffusion_model}


def decoder_threads() -> int:
    """The decoder process's torch threads: DECODING_LAB_DECODER_THREADS when set, else every core but one, which
    the UI's server and the browser need. On a 2-core machine that is 1 thread: with 2, a browser busy drawing takes
    a core from one of them and every parallel region waits for it. Measured 2026-12-04 on the embedded model,
    engine API, compute tokens/s idle / beside a process busy half the time on one core: AR 13.1 / 8.8 with 2
    threads, 15.9 / 16.4 with 1; speculative (prompt lookup) 21.4 / 13.4 vs 21.2 / 21.4; KV (H2O, all layers
    watched) 11.6 / 6.9 vs 13.0 / 13.9; lookahead 8.2 / 5.2 vs 7.8 / 8.0; diffusion (64 positions) 2.05 / 1.6
    vs 1.8 / 1.7 (`python -m benchmarks.decoder_threads`, benchmarks/results_ui.md)."""
    v = os.environ.get("DECODING_LAB_DECODER_THREADS", "").strip()
    if v.isdigit() and int(v) >= 1:
        return int(v)
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores - 1))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    conn = Connection(int(argv[0]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(decoder_threads())
    Server(conn).serve()
    os._exit(0)   # daemon worker threads may still be inside torch: do not wait for them
