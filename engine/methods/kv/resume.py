"""A KV run resumed by a fork (engine.fork): its forced replay, its policy switches, and the snapshots that bound it.

A fork of a kv run at step k needs the run's state after k steps: the evicted cache (per layer and KV head, with
the entries' original positions), the policy's statistics (`Policy.s`: accumulated attention, votes, hits ...),
its generator (the random policy's seeded draws) and, when sampling, the sampling generator. None of it is the
prefix, so the branch replays the parent's recorded tokens through the parent's policies (forced tokens: the same
forwards, evictions and draws) and then switches policy / budget / knobs (`switches`). From the prompt that is k
forwards over L + k - 1 token positions (L: the prompt's tokens).

Snapshots bound it. While a kv run runs (record=True, in this process) it keeps, at the top of step 1 (after the
prompt's forward and its eviction) and of every step that is a multiple of S = min(EVERY=16, L), a Snapshot of that
state: the cache's keys / values and positions, a copy of the policy (its `s` tensors cloned, its generator at the
same state), the loop's policy / budget / n_sink and the sampling generator's state, on the model's device. A fork
at step k restores the latest usable snapshot at a step j <= k and replays only steps j..k-1: at most S - 1
one-token forwards, S - 1 < L token positions (less than the prompt's prefill; a fork at step 1 replays nothing).
The branch's meta["fork"] says what ran, counted by the loop: cost_forwards, cost_tokens, replay_from (j; 0: the
prompt). The branch keeps the snapshot it started from and takes its own, so forks of forks are bounded too.

Memory: at most CAP_BYTES (256 MiB) of snapshots per run (a snapshot a branch shares with its parent counts in
both). When a new one goes over, every other snapshot is dropped (the first one stays) and the spacing doubles:
after d halvings a fork replays at most 2^d * S - 1 forwards. A snapshot alone over the cap: the run keeps none and
its forks replay from the prompt, as a trace without snapshots does.

Where they live: in a registry keyed weakly by the run's Counters (the trace's `counters` is the job's), never in
the trace. A trace saved and loaded, a copy (the decoder process forks from one: engine/remote.py fork_payload)
and a record=False run have none: their forks replay from the prompt, as exact. A snapshot is used only when the
branch's replay would reach the same state: the same model object, prompt ids, options (all but watch_layers /
compare_full), policy seed, the same switches before j and the same tokens fed before j. The policies of a fork's
lineage are seeded from its root run's seed (resume["policy_seed"]; a fork that changes the sampling seed does not
change the evictions made before it). The sampling generator is restored when the sampling settings are the run's,
else seeded afresh and advanced by j draws on a dummy row (one draw's use of the generator depends on the vocabulary
size only: torch.multinomial of one sample takes one exponential per entry): the same stream as a full replay.
Not snapshotted: the full-cache shadow (compare_full, a measurement timed as recording), rebuilt as before by one
forward over the prompt and the replayed tokens at the branch's first step.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch

from engine import sampling as S
from engine.methods import Job, MethodError
from engine.methods.kv.policies import MAX_BUDGET, make as make_policy

EVERY = 16                  # snapshot spacing, at most (S = min(EVERY, prompt tokens))
CAP_BYTES = 256 * 2 ** 20   # snapshots kept per run, at most
NOT_STATE = ("watch_layers", "compare_full")   # options that change what is recorded, not the cache
SWITCHABLE = ("policy", "budget", "n_sink", "window", "window_size", "kernel_size", "hit_threshold")


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _state_opts(o: dict) -> dict:
    return {k: v for k, v in o.items() if k not in NOT_STATE}


def _copy_gen(g: torch.Generator) -> torch.Generator:
    new = torch.Generator(device=g.device)
    new.set_state(g.get_state())
    return new


def copy_policy(pol):
    """The policy with state of its own: its `s` tensors cloned, its generator at the same state."""
    new = copy.copy(pol)
    new.s = [{k: v.clone() for k, v in d.items()} for d in pol.s]
    new.gen = _copy_gen(pol.gen)
    return new


@dataclass
class Snapshot:
    """A run's state at the top of step j: after j forwards (the prompt's, then j - 1 one-token steps) and their
    evictions, before step j's policy switch."""
    j: int
    layers: list          # per layer (keys, values) [1, Hkv, n, D]
    pos: list             # per layer original positions [1, Hkv, n]
    next_pos: int
    policy: object        # a copy (copy_policy)
    loop: tuple           # (policy name, budget, n_sink)
    sampling: dict        # the run's sampling settings (gen_state belongs to them)
    gen_state: torch.Tensor | None
    vocab: int            # the logits' width (a draw's size)
    nbytes: int


class SnapshotStore:
    """One run's snapshots (module docstring): taken by its step loop, read by the forks of its trace."""

    def __init__(self, lm, prompt_ids: list[int], o: dict, switches: dict[int, dict], policy_seed: int,
                 sampling: S.SamplingConfig, cap: int | None = None):
        self.model = weakref.ref(lm.model)
        self.prompt_ids = list(prompt_ids)
        self.opts = _state_opts(o)
        self.switches = {at: _state_opts(sw) for at, sw in switches.items()}
        self.policy_seed = int(policy_seed)
        self.sampling = sampling.as_dict()
        self.every = max(1, min(EVERY, len(self.prompt_ids)))
        self.cap = CAP_BYTES if cap is None else int(cap)
        self.snaps: dict[int, Snapshot] = {}
        self.nbytes = 0
        self.halvings = 0
        self.off = False              # one snapshot alone was over the cap: none kept
        self.fed: list[int] = []      # fed[i]: the token fed at step i + 1

    def due(self, j: int) -> bool:
        return not self.off and j >= 1 and j not in self.snaps and (j == 1 or j % self.every == 0)

    def take(self, j: int, ec, loop: tuple, gen: torch.Generator | None, vocab: int) -> None:
        layers = [(lay.keys.clone(), lay.values.clone()) for lay in ec.cache.layers]
        pos = [p.clone() for p in ec.pos]
        (pol, _), = ec.groups
        pol = copy_policy(pol)
        gen_state = gen.get_state() if gen is not None else None
        n = sum(_nbytes(k) + _nbytes(v) for k, v in layers) + sum(_nbytes(p) for p in pos)
        n += sum(_nbytes(t) for d in pol.s for t in d.values()) + _nbytes(pol.gen.get_state())
        n += _nbytes(gen_state) if gen_state is not None else 0
        self.add(Snapshot(j, layers, pos, ec.next_pos, pol, tuple(loop), dict(self.sampling), gen_state,
                          int(vocab), n))

    def add(self, snap: Snapshot) -> None:
        self.snaps[snap.j] = snap
        self.nbytes += snap.nbytes
        while self.nbytes > self.cap and self.snaps:
            js = sorted(self.snaps)
            if len(js) == 1:
                self.snaps, self.nbytes, self.off = {}, 0, True
                return
            for j in js[1::2]:
                self.nbytes -= self.snaps.pop(j).nbytes
            self.every *= 2
            self.halvings += 1

    def usable(self, lm, prompt_ids: list[int], o: dict, switches: dict[int, dict], policy_seed: int,
               force: list[int]) -> Snapshot | None:
        """The latest snapshot at a step j <= len(force) from which a run with these inputs reaches the same state."""
        if self.model() is not lm.model or self.prompt_ids != list(prompt_ids) or self.opts != _state_opts(o) \
                or self.policy_seed != int(policy_seed):
            return None
        theirs = {at: _state_opts(sw) for at, sw in switches.items()}
        fed, snaps = list(self.fed), dict(self.snaps)   # a live parent may add meanwhile
        for j in sorted(snaps, reverse=True):
            if j > len(force) or fed[:j - 1] != list(force[:j - 1]):
                continue
            if {a: s for a, s in self.switches.items() if a < j} == {a: s for a, s in theirs.items() if a < j}:
                return snaps[j]
        return None


_STORES: dict[int, tuple[weakref.ref, SnapshotStore]] = {}


def keep(counters, store: SnapshotStore) -> None:
    """Register a run's store under its Counters object (dropped when that goes)."""
    key = id(counters)
    _STORES[key] = (weakref.ref(counters), store)
    weakref.finalize(counters, _STORES.pop, key, None)


def snapshots_of(trace) -> SnapshotStore | None:
    """The snapshots of a run made in this process (None: a loaded trace, a copy, a record=False run)."""
    c = getattr(trace, "counters", None)
    entry = _STORES.get(id(c))
    return entry[1] if entry is not None and entry[0]() is c else None


@dataclass
class Plan:
    """How a kv run starts (generate builds it; _steps follows it)."""
    force: list[int] = field(default_factory=list)     # tokens of the first steps: replayed, not yielded
    switches: dict[int, dict] = field(default_factory=dict)   # step -> the options from that step on
    policy_seed: int = 0
    start: Snapshot | None = None      # restored before the replay (None: from the prompt)
    report: dict | None = None         # the fork's meta["fork"]: what the replay cost
    store: SnapshotStore | None = None  # this run's own snapshots (record=True)

    def reported(self, forwards: int, tokens: int) -> None:
        if self.report is not None:
            self.report.update(cost_forwards=int(forwards), cost_tokens=int(tokens),
                               replay_from=self.start.j if self.start is not None else 0)


def check_resume(job: Job, o: dict) -> tuple[list[int], dict[int, dict], int, SnapshotStore | None, dict | None]:
    """job.resume of a fork (engine.fork), checked before any forward: {"force_ids": the tokens of the first
    steps, replayed and not yielded; "switches": [{"at": step, option: value ...}]: from step `at` on the policy
    and its knobs are these (SWITCHABLE only; each switched set checked like a run's options); "policy_seed": the
    seed of every policy (default: the sampling seed); in this process only, "snapshots": the parent's
    SnapshotStore, "report": the dict told what the replay cost}. (force, switches, policy_seed, snapshots, report)"""
    from engine.methods import CheckContext, get
    from engine.methods.kv import check
    r = job.resume
    force = r.get("force_ids", [])
    vocab = int(getattr(job.lm.model.config, "vocab_size", 0) or len(job.lm.tokenizer))
    if not isinstance(force, list) or any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab
                                          for t in force):
        raise MethodError(f"resume: force_ids must be a list of token ids in 0..{vocab - 1}.")
    if len(force) + job.max_new_tokens > MAX_BUDGET * 8:
        raise MethodError(f"resume: {len(force)} forced tokens is too many.")
    seed = r.get("policy_seed", 0 if job.sampling.seed is None else int(job.sampling.seed))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise MethodError("resume: policy_seed must be an integer in 0..2^63-1.")
    store, report = r.get("snapshots"), r.get("report")
    if not (store is None or isinstance(store, SnapshotStore)) or not (report is None or isinstance(report, dict)):
        raise MethodError("resume: snapshots is a kv run's SnapshotStore and report a dict (engine.fork).")
    L = int(job.input_ids.shape[1])
    ctx = CheckContext(job.lm, job.sampling, L, job.max_new_tokens, job.lm.context_length)
    ctx.need_positions(L + len(force) + job.max_new_tokens, f"A {L}-token prompt + {len(force)} replayed tokens + "
                                                            f"{job.max_new_tokens} new tokens")
    switches: dict[int, dict] = {}
    cur = dict(o)
    for sw in r.get("switches") or []:
        if not isinstance(sw, dict) or isinstance(sw.get("at"), bool) or not isinstance(sw.get("at"), int):
            raise MethodError("resume: every switch is a dict with an integer 'at'.")
        at = sw["at"]
        bad = [k for k in sw if k != "at" and k not in SWITCHABLE]
        if bad:
            raise MethodError(f"resume: {', '.join(map(str, bad))} cannot change during a run (switchable: "
                              f"{', '.join(SWITCHABLE)}).")
        if not 0 < at <= len(force) + job.max_new_tokens or (switches and at <= max(switches)):
            raise MethodError(f"resume: switch steps must increase and lie in 1..{len(force) + job.max_new_tokens}, "
                              f"got {at}.")
        if o.get("compression_ratio", 0.0) > 0 and o["policy"] != "full":
            raise MethodError("A compression_ratio run compresses the prompt once and never evicts afterwards: its "
                              "policy cannot switch later (fork it at step 0).")
        cur = get("kv").values({**cur, **{k: v for k, v in sw.items() if k != "at"}})
        check(cur, ctx)
        switches[at] = dict(cur)
    return force, switches, seed, store, report


def plan(job: Job, o: dict) -> Plan:
    """The run's start: job.resume checked; the parent's latest usable snapshot; this run's own store."""
    p = Plan(policy_seed=0 if job.sampling.seed is None else int(job.sampling.seed))
    parent = None
    if job.resume is not None:
        p.force, p.switches, p.policy_seed, parent, p.report = check_resume(job, o)
    prompt = job.input_ids[0].tolist()
    if job.record:
        p.store = SnapshotStore(job.lm, prompt, o, p.switches, p.policy_seed, job.sampling)
        keep(job.counters, p.store)
    if p.force and parent is not None:
        p.start = parent.usable(job.lm, prompt, o, p.switches, p.policy_seed, p.force)
        if p.start is not None and p.store is not None:
            p.store.add(p.start)      # shared with the parent, not copied
        job.resume = {k: v for k, v in job.resume.items() if k != "snapshots"}   # the branch holds no more of them
    if p.force:    # what the replay will cost; the loop reports what it counted
        j = p.start.j if p.start is not None else 0
        p.reported(len(p.force) - j, len(p.force) - j if j else len(prompt) + len(p.force) - 1)
    return p


def restore(p: Plan, ec, job: Job, gen: torch.Generator | None):
    """Put the snapshot's state into a fresh cache (and the sampling generator); (step, next input, the shadow's
    pending inputs, (policy, budget, n_sink))."""
    snap, dev = p.start, job.lm.device
    for lay, (k, v) in zip(ec.cache.layers, snap.layers):
        if not lay.is_initialized:
            lay.lazy_initialization(k, v)
        lay.keys, lay.values = k.clone(), v.clone()
    ec.pos = [t.clone() for t in snap.pos]
    ec.next_pos = snap.next_pos
    pol = copy_policy(snap.policy)
    ec.groups = [(pol, slice(0, 1))]
    ec.needs_attention = pol.needs_attention
    if gen is not None:
        if snap.gen_state is not None and snap.sampling == job.sampling.as_dict():
            gen.set_state(snap.gen_state)
        else:
            row = torch.zeros(snap.vocab, device=dev)
            for _ in range(snap.j):   # the draws of steps 0..j-1 (forced tokens draw too)
                S.choose(row, job.sampling, gen)
    j = snap.j
    if p.store is not None:
        p.store.fed = list(p.force[:j])
    pending = [job.input_ids] + ([torch.tensor([p.force[:j - 1]], device=dev)] if j > 1 else [])
    return j, torch.tensor([[int(p.force[j - 1])]], device=dev), pending, snap.loop


def switch_policy(job: Job, ec, o: dict, seed: int) -> tuple[str, int, int]:
    """From this step on the cache is evicted by policy o["policy"] with o's knobs: a fresh policy whose
    per-entry statistics start now (the entries already cached count as just arrived). (policy, budget, n_sink)"""
    from engine.methods.kv import resolve
    _, budget, window = resolve(o, job.input_ids.shape[1])
    pol = make_policy(o["policy"], ec.n_layers, seed=seed, n_sink=o["n_sink"], window=window,
                      window_size=o["window_size"], kernel_size=o["kernel_size"],
                      hit_threshold=float(o["hit_threshold"]))
    for li in range(ec.n_layers):
        if ec.pos[li] is not None:
            b, hkv, n = ec.pos[li].shape
            pol.extend(li, n, rows_n=b, hkv=hkv, device=ec.pos[li].device)
    ec.groups = [(pol, slice(0, 1))]
    ec.needs_attention = pol.needs_attention
    return o["policy"], budget, o["n_sink"]
