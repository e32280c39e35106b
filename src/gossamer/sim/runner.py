"""Run one algorithm of a scenario on the simulated network, all peers in one process.

Contract:

- Every peer runs the same code a real peer runs: a ``Communicator`` over its
  own ``SimTransport``, an ``Algorithm`` from ``algorithms/``. Peers are asyncio
  tasks in one event loop; their virtual clocks advance by the measured time
  of each local step (or ``scenario.compute_time``), times the peer's
  ``compute_scale`` (``scenario.peer_profiles``), and by the modelled
  network (``transport/sim.py``; each peer on its own access link,
  ``scenario.peer_link``), so ``sim_time_s`` reflects both compute and
  communication. With ``scenario.coordinator`` every sync is wrapped, as in
  a real swarm, in the coordinator's barrier before it and its commit
  decision after it (``SimControl.rendezvous``: two round trips per round);
  ``scenario.round_overhead`` seconds are charged to every peer's clock at
  the end of every sync (the software's own work per round).
- All peers start from the same initial model (seeded) and read their own
  shard. Algorithms are compared at the same number of training samples per
  peer (``steps * batch_size``).
- Bytes come only from the transports' counters. ``bytes_sent_per_peer`` is
  the mean over peers of payload + framing sent; ``peak_bytes_per_round`` the
  largest payload + framing any peer sent in one synchronisation round.
- After every synchronisation the shared state of every peer is hashed;
  ``state_hashes_equal`` in the result is True only if every peer's hash
  agreed after every round. ``extra.final_state_hash`` is the final hash of
  the shared state (``Algorithm.shared_hash``); for algorithms without bit
  parity, ``verify.combined_hash`` of every peer's, in rank order
  (``extra.final_state_hashes``). ``peer_ids`` names the peers (default
  ``p0..p{n-1}``): a rehearsal of a real swarm uses the real ids, in the
  swarm's rank order (sorted), so id-seeded randomness is the same.
- Wall-clock figures (``extra``, see ``MACHINE_KEYS``; they measure the
  machine, not the simulation, and differ between runs of the same seed):
  ``setup_wall_s`` (seconds to build the peers: models, shards, transports),
  ``train_wall_s`` (seconds of the round loops), ``wall_s_per_round``
  (``train_wall_s`` / rounds: real seconds per simulated round, local steps
  included) and ``peak_rss_bytes`` (the process's peak resident memory so
  far, bytes; with several runs in one process, the largest so far).
- The validation curve is evaluated on the shared model at ``evals`` evenly
  spaced steps; evaluation costs no simulated time.
- ``scenario.task`` may be a user's task object (``tasks.protocol``): it is
  wrapped in a ``UserTask`` that checks every answer, and before any
  training (``simulate``) one model is built twice (same seed: the same
  parameters, else ``TaskError``), one shard is cut for the last peer and
  one batch of it goes through ``loss`` on the run's device. Results carry
  the task's own name.
- ``scenario.device``: every peer's model lives there (built on the CPU,
  then moved), every batch is moved there (``devices.to_device``), and
  evaluation runs there. The communicators return collective results on the
  device of their inputs (and ``decode_tensor`` on the run's device); the
  wire, hashes and saved files stay on the CPU. ``final_params`` are CPU
  tensors whatever the device.
- ``scenario.save``: after each run, peer 0's ``eval_model()`` (its shared
  model) is written to ``scenario.save_path(algorithm)`` with
  ``tasks.weights.save_model`` (safetensors; strict ``load_state_dict``
  into ``task.make_model(seed)`` restores it); ``extra.saved_model`` names
  the file.
- ``init_state`` (optional): tensors copied into every peer's trainable
  parameters (``model.parameters()`` order, shapes must match) before the
  algorithm is built, so a run can start from a pretrained model.
  ``keep_state=True`` sets ``result.final_params`` to detached clones of peer
  0's final shared trainable parameters (``eval_model().parameters()``); they
  are never written to JSON.
- ``scenario.trace`` (optional): the run writes an event trace
  (``trace.TraceWriter``, ``source="sim"``, ``t`` in virtual seconds) to
  ``scenario.trace_path(algorithm)``, replacing a file already there. Per
  peer and round (round ``r`` = the peer's ``r``-th sync, from 0): ``compute``
  (value: the virtual seconds charged for the round's local steps, ``t``: the
  end of the last one, so the span ends where the sync starts), ``bytes`` per
  link (payload bytes this peer's transport counted to that destination since
  the previous sync; detail ``framing``), ``phase`` (the sync's length on the
  peer's virtual clock; detail ``name``: the collectives that completed in it),
  ``round`` (detail ``members``, and ``hash`` for honest peers of algorithms
  with bit parity) and ``loss`` (the loss of the round's last local step).
  Steps and bytes after the last sync go into one more ``compute``/``bytes``
  pair numbered one past it, so the ``bytes`` of a peer sum to its
  ``payload_bytes_sent_by_peer`` and its last ``t`` is its final clock. An
  ``eval`` event (peer 0, which evaluates) at every curve point; an
  ``attack`` event at ``t = 0`` per Byzantine peer. Nothing is recorded, and
  no hook does more than one ``None`` check, without a trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..aggregate import make_aggregator
from ..algorithms import make_algorithm
from ..algorithms.driver import RoundLoop
from ..comm import Communicator, make_run_codec
from ..devices import resolve_device, to_device
from ..errors import ConfigError, TaskError
from ..tasks import make_task
from ..tasks.protocol import UserTask, as_task
from ..tasks.weights import save_model
from ..trace.recorder import TraceWriter
from ..trace.results import CurvePoint, Results, RunResult
from ..transport.sim import SimNetwork
from ..verify import combined_hash
from ..comm.audit import AuditFailed, KeyBook, audit_report
from ..comm.byzantine import ATTACKS as OWNER_ATTACKS
from ..comm.byzantine import make_behaviour
from .adversary import Adversary, Collusion
from .churn import ChurnControl
from .trust import Excluded, SimTrust
from .scenario import Scenario

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def task_for(scenario: Scenario) -> Any:
    """The scenario's task: a built-in one built from its options, or the
    user's object wrapped in a checking ``UserTask``."""
    if not isinstance(scenario.task, str):
        return as_task(scenario.task)
    options = dict(scenario.task_options)
    options.setdefault("iid", scenario.iid)
    if scenario.alpha is not None:
        options.setdefault("alpha", scenario.alpha)
    return make_task(scenario.task, **options)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, bytes (``getrusage``;
    0 where the platform has no ``resource`` module)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes; Linux: KiB


#: Keys of ``RunResult.extra`` that measure this machine (wall-clock seconds,
#: memory), not the simulation: they differ between two runs of the same seed.
MACHINE_KEYS = ("setup_wall_s", "train_wall_s", "wall_s_per_round", "peak_rss_bytes")


def eval_steps(steps: int, evals: int) -> list[int]:
    """``evals`` evenly spaced 1-based step counts ending at ``steps`` (plus step 0)."""
    pts = {0, steps}
    for i in range(1, evals):
        pts.add(round(i * steps / evals))
    return sorted(pts)


@dataclass
class _PeerLog:
    bytes_at: dict[int, int] = field(default_factory=dict)
    time_at: dict[int, float] = field(default_factory=dict)
    round_bytes: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # the swarm round of each hash (with churn: not all)


class _PeerTracer:
    """One simulated peer's events (see the module docstring): what it computed
    and sent since its last sync, written when the next sync completes."""

    def __init__(self, writer: TraceWriter, pid: str, comm: Communicator) -> None:
        self.writer, self.pid, self.comm = writer, pid, comm
        self.compute_s = 0.0
        self.compute_steps = 0
        self.compute_end = comm.transport.now()
        self.sync_start = self.compute_end
        self.collectives: list[str] = []
        self.sent_to: dict[str, tuple[int, int]] = {}
        comm.listeners.append(lambda stats: self.collectives.append(stats.name))

    def computed(self, seconds: float) -> None:
        self.compute_s += seconds
        self.compute_steps += 1
        self.compute_end = self.comm.transport.now()

    def sync_started(self) -> None:
        self.sync_start = self.comm.transport.now()
        self.collectives.clear()

    def _compute_and_bytes(self, rnd: int, t: float) -> None:
        if self.compute_steps:
            self.writer.record("compute", round=rnd, peer=self.pid, value=self.compute_s, t=self.compute_end,
                               steps=self.compute_steps)
            self.compute_s, self.compute_steps = 0.0, 0
        for dst, counter in sorted(self.comm.transport.counters.sent_to.items()):
            payload0, framing0 = self.sent_to.get(dst, (0, 0))
            if counter.payload != payload0 or counter.framing != framing0:
                self.writer.record("bytes", round=rnd, peer=self.pid, other=dst, value=counter.payload - payload0, t=t,
                                   framing=counter.framing - framing0)
                self.sent_to[dst] = (counter.payload, counter.framing)

    def round_done(self, rnd: int, loss: float, state_hash: str | None) -> None:
        now = self.comm.transport.now()
        self._compute_and_bytes(rnd, now)
        names = list(dict.fromkeys(self.collectives))
        self.writer.record("phase", round=rnd, peer=self.pid, value=now - self.sync_start, t=now,
                           name="+".join(names) or "sync", phase="sync", collectives=len(self.collectives))
        detail: dict[str, Any] = {"members": list(self.comm.group)}
        if state_hash is not None:
            detail["hash"] = state_hash
        self.writer.record("round", round=rnd, peer=self.pid, t=now, **detail)
        self.writer.record("loss", round=rnd, peer=self.pid, value=loss, t=now)
        self.compute_end = now

    def finished(self, rounds: int) -> None:
        """Steps and bytes after the last sync, numbered one past it."""
        self._compute_and_bytes(rounds, self.comm.transport.now())


def simulate(scenario: Scenario | None = None, *, progress: Progress | None = None, ray: bool | str = False,
             **fields: Any) -> Results:
    """Run every algorithm of ``scenario`` (or of ``Scenario(**fields)``; with both,
    ``fields`` replace the scenario's) on the same task and shards; returns
    ``Results`` (docs/results.md), one run per algorithm, in order.

    ``progress(algorithm, step, total)`` is called as each run advances.
    ``ray``: ``False`` runs everything in this process; ``True`` runs each
    algorithm as a task on a local Ray instance started for the call; a
    string is the address of a Ray cluster to run them on (``sim/cluster.py``:
    the same results, wall-clock figures aside; ``progress`` then hears of
    each run once, when it completes). Raises ConfigError for a bad field,
    and ShardError (a ConfigError) when the data cannot be split over the
    peers, both before any training starts (and before Ray is started)."""
    if scenario is None:
        scenario = Scenario(**fields)
    elif fields:
        scenario = dataclasses.replace(scenario, **fields)
    task = task_for(scenario)
    check_before_training(task, scenario)
    results = Results(task=scenario.task_name, peers=scenario.peers, link=scenario.link, seed=scenario.seed)
    results.extra["loss_unit"] = getattr(task, "loss_unit", "")
    results.extra["device"] = scenario.device
    if ray is not False and ray is not None:
        from .cluster import run_on_ray  # noqa: PLC0415 - Ray is an optional extra

        results.runs.extend(run_on_ray(scenario, scenario.algorithms, address=None if ray is True else str(ray),
                                       progress=progress))
    else:
        for algorithm in scenario.algorithms:
            results.runs.append(run_algorithm(scenario, algorithm, task=task, progress=progress))
    results.extra["samples_per_peer"] = _samples(scenario.steps, task)
    return results


def _samples(steps: int | None, task: Any) -> int | None:
    per_batch = getattr(task, "samples_per_batch", None)
    return steps * per_batch if steps is not None and per_batch is not None else None


def check_before_training(task: Any, scenario: Scenario) -> None:
    """What ``simulate`` checks before any run: the data splits over the peers
    (``ShardError``); for a user's task also that ``make_model`` is
    deterministic and that one batch goes through ``loss`` on the run's
    device (``TaskError`` naming what is wrong)."""
    shard = task.shard(scenario.slots - 1, scenario.slots, seed=scenario.seed)  # fails now if the data cannot be split
    if not isinstance(task, UserTask):
        return
    model = task.make_model(scenario.seed)
    again = task.make_model(scenario.seed).state_dict()
    for key, value in model.state_dict().items():
        other = again.get(key)
        if other is None or other.shape != value.shape or not torch.equal(other, value):
            raise TaskError(f"task {task.name!r}: make_model({scenario.seed}) is not deterministic: two calls gave "
                            f"different values for {key!r}, and every peer must start from the same model "
                            f"(initialise from torch's global RNG, which is seeded before each call, or from a "
                            f"torch.Generator seeded with the seed)")
    device = resolve_device(scenario.device)
    model.to(device)
    task.loss(model, to_device(shard.next_batch(), device))


def run_algorithm(scenario: Scenario, algorithm: str, *, task: Any = None, progress: Progress | None = None,
                  init_state: list[torch.Tensor] | None = None, keep_state: bool = False,
                  peer_ids: list[str] | None = None,
                  payload_size: Callable[[str, str, Any, int], int] | None = None) -> RunResult:
    """Simulate ``algorithm`` on ``scenario``; see the module docstring.

    ``payload_size`` (the planner's, ``sim/plan.py``): the network models
    and counts each message as that many payload bytes
    (``SimNetwork(payload_size=...)``); default: the bytes it carries.

    Torch runs with ``scenario.threads`` intra-op threads while the simulation
    runs (one by default: all peers share the process, small per-peer
    kernels gain little from more, and results then do not depend on the
    machine's core count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(scenario.threads)
    task = as_task(task) if task is not None else task_for(scenario)
    try:
        return asyncio.run(_run(scenario, algorithm, task, progress, init_state, keep_state, peer_ids, payload_size))
    finally:
        torch.set_num_threads(threads)


def _load_state(model: torch.nn.Module, init_state: list[torch.Tensor]) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != len(init_state):
        raise ConfigError(f"init_state has {len(init_state)} tensors, the model has {len(params)} trainable parameters")
    with torch.no_grad():
        for i, (p, t) in enumerate(zip(params, init_state)):
            if tuple(p.shape) != tuple(t.shape):
                raise ConfigError(f"init_state[{i}] has shape {tuple(t.shape)}, the model's parameter has {tuple(p.shape)}")
            p.copy_(t)


async def _run(scenario: Scenario, algorithm: str, task: Any, progress: Progress | None,
               init_state: list[torch.Tensor] | None = None, keep_state: bool = False,
               peer_ids: list[str] | None = None,
               payload_size: Callable[[str, str, Any, int], int] | None = None) -> RunResult:
    torch.manual_seed(scenario.seed)  # only for library code that ignores our generators
    wall0 = time.perf_counter()
    net = SimNetwork(scenario.link_spec, seed=scenario.seed, coordinator=scenario.coordinator_spec,
                     payload_size=payload_size)
    if peer_ids is None and scenario.peer_ids is not None:
        peer_ids = list(scenario.peer_ids)
    ids = list(peer_ids) if peer_ids is not None else [f"p{i}" for i in range(scenario.slots)]
    if len(ids) != scenario.slots or len(set(ids)) != len(ids):
        raise ConfigError(f"peer_ids must be {scenario.slots} distinct ids, got {ids}")
    first = ids[:scenario.peers]  # the peers that start the run; the rest are churn's joiner slots
    group = tuple(first)
    options = scenario.options_for(algorithm)
    byzantine = first[len(first) - scenario.byzantine :] if scenario.byzantine else []
    attack = scenario.make_attack()
    adversary: Any = None
    if attack is not None:
        adversary = Collusion(attack, byzantine, seed=scenario.seed) if scenario.collude else \
            Adversary(attack, [p for p in first if p not in byzantine], byzantine, seed=scenario.seed)
    robust = scenario.aggregator != "mean" or scenario.byzantine > 0 or bool(scenario.tolerate)
    protocol_attack = scenario.protocol_attack()
    device = resolve_device(scenario.device)

    def build(i: int, pid: str, clock: float = 0.0) -> _Peer:
        """Peer ``i`` (its slot): model, communicator on the network, algorithm, shard."""
        model = task.make_model(scenario.seed)
        if init_state is not None:
            _load_state(model, init_state)
        model.to(device)
        codec = make_run_codec(scenario.codec_for(algorithm))
        aggregator = make_aggregator(scenario.aggregator, scenario.tolerate, seed=scenario.seed) if robust else None
        link = scenario.peer_link(i) if i < scenario.peers else scenario.link_spec
        comm = Communicator(net.add_peer(pid, link=link, clock=clock), group if i < scenario.peers else (pid,),
                            codec=codec, aggregator=aggregator, seed=scenario.seed, device=device)
        if adversary is not None:
            comm.contribution_hook = adversary.hook_for(pid, comm) if scenario.collude else adversary.hook_for(pid)
        if scenario.audit:
            comm.keybook = KeyBook.simulated(pid, first, scenario.seed)
            comm.audit_shadows = scenario.audit
            if pid in byzantine and protocol_attack in OWNER_ATTACKS:
                comm.behaviour = make_behaviour(protocol_attack)
        algo = make_algorithm(algorithm, model, task.loss, comm, **options)
        poisoned = pid in byzantine and attack is not None and attack.data_poisoning
        shard = task.shard(i, scenario.slots, seed=scenario.seed, label_flip=poisoned)
        return (pid, algo, shard, comm)

    peers = [build(i, pid) for i, pid in enumerate(first)]
    trace = _open_trace(scenario, algorithm, peers, byzantine, options)
    try:
        return await _simulate(scenario, algorithm, task, progress, keep_state, peers, byzantine, options, trace, wall0,
                               build=build, slots=ids)
    finally:
        if trace is not None:
            trace.close()


_Peer = tuple[str, Any, Any, Communicator]  # id, algorithm, shard, communicator


def _open_trace(scenario: Scenario, algorithm: str, peers: list[_Peer], byzantine: list[str],
                options: dict[str, Any]) -> TraceWriter | None:
    """A fresh trace file for this run (``None`` without ``scenario.trace``);
    its clock is the latest virtual clock of any peer."""
    path = scenario.trace_path(algorithm)
    if path is None:
        return None
    ids = [p[0] for p in peers]
    transports = [p[3].transport for p in peers]
    for old in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if old.is_file():
            old.unlink()  # a rerun replaces the trace, as --json replaces its file
    meta = {"algorithm": algorithm, "scenario": scenario.as_dict(), "options": options,
            "peer_ids": ids, "byzantine": byzantine, "clock": "virtual seconds"}
    writer = TraceWriter(path, source="sim", meta=meta, clock=lambda: max(t.now() for t in transports))
    for pid in byzantine:
        writer.record("attack", peer=pid, attack=scenario.attack)
    return writer


async def _simulate(scenario: Scenario, algorithm: str, task: Any, progress: Progress | None, keep_state: bool,
                    peers: list[_Peer], byzantine: list[str], options: dict[str, Any], trace: TraceWriter | None,
                    wall0: float, *, build: Callable[..., _Peer] | None = None,
                    slots: list[str] | None = None) -> RunResult:
    """The round loops of all peers, then the result (``trace``: see the module docstring).
    ``build(slot, pid, clock)`` makes a joiner (churn); ``slots`` every peer id of the run."""
    ids = [p[0] for p in peers]
    honest_ids = [p for p in ids if p not in byzantine]
    lie = scenario.protocol_attack()
    trust = SimTrust(ids, seed=scenario.seed, lies={p: lie for p in byzantine if lie in ("hashlie", "scorelie")},
                     trace=trace) if scenario.audit else None
    steps = scenario.steps
    assert steps is not None
    device = resolve_device(scenario.device)
    points = eval_steps(steps, scenario.evals)
    logs = {pid: _PeerLog() for pid in ids}
    curve_eval: dict[int, tuple[float, float]] = {}

    def evaluate(algo: Any, step: int) -> None:
        m = algo.eval_model()
        was_training = m.training
        m.eval()
        curve_eval[step] = task.evaluate(m)
        m.train(was_training)
        if trace is not None:
            comm = peers[0][3]
            done = len(logs[ids[0]].hashes)
            vl, vm = curve_eval[step]
            trace.record("eval", round=done - 1 if done else None, peer=ids[0], value=vm, t=comm.transport.now(),
                         metric=task.metric_name, loss=vl, step=step)

    class SimPeerLoop(RoundLoop):
        """The round loop on the simulated network: compute time is charged to
        the peer's virtual clock; bytes, time and hashes are logged."""

        def __init__(self, idx: int, pid: str, algo: Any, shard: Any, comm: Communicator) -> None:
            super().__init__(algo, lambda: to_device(shard.next_batch(), device), steps)
            self.idx, self.pid, self.comm = idx, pid, comm
            self.plog = logs[pid]
            self.sent_before_round = 0
            self.tracer = _PeerTracer(trace, pid, comm) if trace is not None else None
            self.compute_scale = scenario.compute_scale(idx) if idx < scenario.peers else 1.0
            self.control = control
            self.sat_out = self.failed = False
            self.round_no = 0

        async def local_step(self, batch: Any) -> float:
            t0 = time.perf_counter()
            loss = self.algo.step(batch)
            elapsed = time.perf_counter() - t0
            charged = (scenario.compute_time if scenario.compute_time is not None else elapsed) * self.compute_scale
            if churn is not None:
                charged *= churn.compute_factor(self.pid)
                churn.computed(self.pid, charged)
            self.comm.transport.compute(charged)
            if self.tracer is not None:
                self.tracer.computed(charged)
            return loss

        async def sync(self) -> None:
            if self.tracer is not None:
                self.tracer.sync_started()
            transport = self.comm.transport
            if churn is not None:
                await self._churn_sync()
            elif self.control is None:
                await self._sync()
            else:  # the swarm's round around the sync: the coordinator's barrier, then its decision
                rnd = len(self.plog.hashes)
                transport.advance_to(await self.control.rendezvous(("ready", rnd), self.pid, transport.now(), self.comm.group))
                await self._sync()
                transport.advance_to(await self.control.rendezvous(("done", rnd), self.pid, transport.now(), self.comm.group))
            if scenario.round_overhead:
                transport.compute(scenario.round_overhead)

        async def _churn_sync(self) -> None:
            """A round under churn: the simulated coordinator's barrier decides who syncs."""
            assert churn is not None
            transport = self.comm.transport
            rnd = churn.round
            start = await churn.ready(self.pid, rnd, transport.now())
            if start.kind == "dead":
                raise _Failed(self.pid)
            transport.advance_to(start.t)
            if start.kind == "out":
                self.sat_out = True  # the state of the round it missed is already loaded
                return
            self.comm.regroup(start.group, epoch=start.epoch)
            await self.algo.synchronize()
            transport.advance_to(await churn.done(self.pid, transport.now()))
            self.round_no = rnd

        async def _sync(self) -> None:
            if trust is None:
                await super().sync()
                return
            # an audited sync is an attempt, as in the swarm: commit, or retry from the state before it
            snap = self.algo.state_dict()
            while True:
                self.comm.audits.clear()
                failed: AuditFailed | None = None
                try:
                    await self.algo.synchronize()
                except AuditFailed as exc:
                    failed = exc
                report = audit_report(list(self.comm.audits), failed, statements=True)
                decision, group, epoch = await trust.attempt(
                    self.pid, report, None if failed is not None else self.algo.shared_hash())
                if decision == "excluded":
                    raise Excluded(self.pid)
                if decision == "commit" and trace is not None and self.pid == self.comm.group[0]:
                    # one reporter's scores (every honest member holds the same), as a peer's trace has them
                    for o in self.comm.audits:
                        for p, sc in o.scores.items():
                            trace.record("score", round=trust.round - 1, peer=p, other=self.pid, value=sc.cosine,
                                         cosine=sc.cosine, norm_ratio=sc.norm_ratio, dist_ratio=sc.dist_ratio,
                                         long_cosine=sc.long_cosine, bad=sc.bad, reasons=list(sc.reasons))
                if tuple(group) != self.comm.group or decision == "retry":
                    self.comm.regroup(group, epoch=epoch)
                if decision == "commit":
                    return
                self.algo.load_state_dict(snap)

        async def run(self) -> None:
            try:
                await super().run()
            except Excluded:
                self.excluded = True
            except _Failed:
                self.failed = True
            finally:
                if churn is not None:
                    churn.finished(self.pid)

        def after_sync(self) -> None:
            if self.sat_out:
                self.sat_out = False
                return
            rnd = len(self.plog.hashes) if churn is None else self.round_no
            self.plog.rounds.append(rnd)
            sent = self.comm.transport.counters.sent.total
            self.plog.round_bytes.append(sent - self.sent_before_round)
            self.sent_before_round = sent
            self.plog.hashes.append(self.algo.shared_hash())
            if self.tracer is not None:
                keep_hash = self.algo.bit_parity and self.pid not in byzantine
                self.tracer.round_done(rnd, self.last_loss,
                                       self.plog.hashes[-1] if keep_hash else None)

        def after_step(self, loss: float) -> None:
            done = self.algo.steps
            if done in points:
                self.plog.bytes_at[done] = self.comm.transport.counters.sent.total
                self.plog.time_at[done] = self.comm.transport.now()
                if self.idx == 0 if churn is None else done not in curve_eval:
                    evaluate(self.algo, done)  # with churn: the first peer there (peer 0 may be gone)
            if progress is not None and (self.idx == 0 if churn is None else done > progressed[0]):
                progressed[0] = done
                progress(algorithm, done, steps)

    control = peers[0][3].transport.network.control if peers else None
    progressed = [0]
    churn: ChurnControl | None = None
    tasks: list[asyncio.Task[None]] = []
    loops: list[Any] = []
    if scenario.churn is not None:
        assert build is not None and slots is not None
        churn = _churn_control(scenario, task, peers, slots, build, logs, tasks, loops,
                               lambda *a: SimPeerLoop(*a))
    loops.extend(SimPeerLoop(i, *p) for i, p in enumerate(peers))
    evaluate(peers[0][1], 0)
    for pid in ids:
        logs[pid].bytes_at[0], logs[pid].time_at[0] = 0, 0.0
    train0 = time.perf_counter()
    tasks.extend(asyncio.ensure_future(loop.run()) for loop in loops)
    while True:  # joiners add their loops as they are admitted
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                for other in tasks:
                    other.cancel()
                raise t.exception()  # type: ignore[misc]
    train_wall = time.perf_counter() - train0
    if churn is not None:  # joiners: their logs, and the final state comes from those still in the swarm
        peers = [(loop.pid, loop.algo, None, loop.comm) for loop in loops]
        ids = [p[0] for p in peers]
    for loop in loops:
        if loop.tracer is not None:
            loop.tracer.finished(len(loop.plog.hashes))

    if trust is not None:  # the excluded stopped early: compare the peers that stayed
        honest_ids = [p for p in honest_ids if p not in trust.excluded]
    if churn is None:
        hashes_equal = all(logs[pid].hashes == logs[honest_ids[0]].hashes for pid in honest_ids)
        stayed = peers
    else:  # every member of a committed round holds the same state after it
        by_round: dict[int, set[str]] = {}
        for pid in ids:
            for r, h in zip(logs[pid].rounds, logs[pid].hashes):
                by_round.setdefault(r, set()).add(h)
        hashes_equal = all(len(v) == 1 for v in by_round.values())
        stayed = [p for p, loop in zip(peers, loops) if not loop.failed] or peers[:1]
    if not hashes_equal and peers[0][1].bit_parity:
        log.error("state hashes diverged between peers in %s", algorithm)
    curve = []
    if churn is not None and steps not in curve_eval:  # every peer failed before the end: the curve stops there
        log.warning("%s: every peer failed by step %d of %d (churn)", algorithm, max(curve_eval), steps)
    for s in points:
        if s not in curve_eval:
            continue
        vl, vm = curve_eval[s]
        curve.append(
            CurvePoint(
                step=s,
                sim_time_s=max(logs[p].time_at[s] for p in ids if s in logs[p].time_at),
                bytes_sent_per_peer=sum(logs[p].bytes_at.get(s, 0) for p in ids) / len(ids),
                val_loss=vl,
                val_metric=vm,
            )
        )
    final = curve[-1]
    final_hashes = [p[1].shared_hash() for p in stayed]
    final_hash = final_hashes[0] if peers[0][1].bit_parity else combined_hash(final_hashes)
    final_params = None
    if keep_state:
        final_params = [p.detach().to("cpu", copy=True) for p in stayed[0][1].eval_model().parameters() if p.requires_grad]
    saved = scenario.save_path(algorithm)
    if saved is not None:
        save_model(stayed[0][1].eval_model(), saved, metadata={"task": scenario.task_name, "algorithm": algorithm,
                                                              "seed": str(scenario.seed), "steps": str(steps)})
    rounds = len(logs[ids[0]].hashes) if churn is None else len(churn.rounds)
    result = RunResult(
        algorithm=algorithm,
        codec=peers[0][3].codec.spec if peers[0][3].codec is not None else "none",
        aggregator=scenario.aggregator,
        final_val_loss=final.val_loss,
        final_val_metric=final.val_metric,
        metric_name=task.metric_name,
        bytes_sent_per_peer=sum(p[3].transport.counters.sent.total for p in peers) / len(peers),
        peak_bytes_per_round=max((b for p in ids for b in logs[p].round_bytes), default=0),
        sim_time_s=max(p[3].transport.now() for p in peers),
        wall_time_s=time.perf_counter() - wall0,
        steps=steps,
        rounds=rounds,
        curve=curve,
        extra={
            "metric_name": task.metric_name,
            "samples_per_peer": _samples(steps, task),
            "state_hashes_equal": hashes_equal,
            "bit_parity_expected": peers[0][1].bit_parity,
            "final_state_hash": final_hash,
            "final_state_hashes": final_hashes,
            "payload_bytes_sent_by_peer": [p[3].transport.counters.sent.payload for p in peers],
            "peer_ids": ids,
            "messages_sent_per_peer": sum(p[3].transport.counters.sent.messages for p in peers) / len(peers),
            "payload_bytes_sent_per_peer": sum(p[3].transport.counters.sent.payload for p in peers) / len(peers),
            "options": options,
            "attack": scenario.attack or "none",
            "byzantine": scenario.byzantine,
            "byzantine_ids": list(byzantine),
            "excluded": dict(trust.excluded) if trust is not None else {},
            "trust_decisions": list(trust.desk.decisions) if trust is not None else [],
            "aborts": trust.aborts if trust is not None else 0,
            "device": scenario.device,
            "setup_wall_s": train0 - wall0,
            "train_wall_s": train_wall,
            "wall_s_per_round": train_wall / max(1, rounds),
            "peak_rss_bytes": peak_rss_bytes(),
            **({"saved_model": str(saved)} if saved is not None else {}),
            **({"churn": _churn_summary(churn, scenario, max(p[3].transport.now() for p in peers))}
               if churn is not None else {}),
        },
    )
    result.final_params = final_params
    return result


def _churn_summary(churn: ChurnControl, scenario: Scenario, sim_time: float) -> dict[str, Any]:
    """``ChurnControl.summary`` plus what a replay needs: the fault model's
    settings (``config``, without the events) and the run's clock and length."""
    out = churn.summary(sim_time)
    assert scenario.churn is not None
    out["config"] = {k: v for k, v in scenario.churn.as_dict().items() if k != "events"}
    out["config"]["max_joins"] = scenario.slots - scenario.peers  # the joiner slots the data was cut for
    out["compute_time"] = scenario.compute_time
    return out


class _Failed(Exception):
    """A simulated peer failed (churn): its round loop ends."""


def _churn_control(scenario: Scenario, task: Any, peers: list[_Peer], slots: list[str],
                   build: Callable[..., _Peer], logs: dict[str, _PeerLog], tasks: list[asyncio.Task[None]],
                   loops: list[Any], make_loop: Callable[..., Any]) -> ChurnControl:
    """The simulated coordinator of a run with ``scenario.churn``; joiners are
    built with ``build`` when admitted, get the committed shared state of a
    member, and their loops are appended to ``loops`` and ``tasks``."""
    assert scenario.churn is not None
    algos = {p[0]: p[1] for p in peers}
    net = peers[0][3].transport.network
    state_bits = 8 * sum(t.numel() * t.element_size() for t in peers[0][1].shared_state())

    def transfer_time(src: str, dst: str) -> float:
        path = net.link(src, dst)
        return path.latency_s + state_bits / min(path.up_bps, float(path.down_bps))

    kept: dict[str, Any] = {}

    def committed(source: str) -> None:  # what a member serves: the state of the last commit
        kept["shared"] = algos[source].shared_state_dict()

    def spawn(slot: int, clock: float) -> bool:
        if int(kept["shared"]["counters"]["steps"]) >= int(scenario.steps or 0):
            return False
        pid = slots[slot]
        p = build(slot, pid, clock)
        p[1].load_state_dict({"shared": kept["shared"]})  # a joiner's view: its local state derived
        algos[pid] = p[1]
        logs[pid] = _PeerLog()
        loop = make_loop(slot, *p)
        loops.append(loop)
        tasks.append(asyncio.ensure_future(loop.run()))
        return True

    def adopt(pid: str) -> None:
        algos[pid].load_state_dict({"shared": kept["shared"]})

    return ChurnControl(scenario.churn, slots, scenario.peers, seed=scenario.seed, transfer_time=transfer_time,
                        committed=committed, spawn=spawn, adopt=adopt, samples_per_step=getattr(task, "samples_per_batch", None))
