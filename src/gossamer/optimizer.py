"""Keep your own training loop: ``gossamer.Optimizer`` wraps any ``torch.optim.Optimizer``.

The user writes the loop (forward, ``loss.backward()``, ``opt.step()``,
``opt.zero_grad()``) with any ``torch.optim.Optimizer`` as the *inner*
optimizer; ``step()`` runs that optimizer's step as the algorithm's local
step and, when the algorithm's schedule says so (every ``inner_steps`` for
DiLoCo), the outer sync over the swarm, blocking until it is committed.
As with hivemind's ``Optimizer`` or torchft's ``Manager``, the loop stays
the user's; unlike them, the sync is any of gossamer's algorithms, with its
codecs, robust aggregators and audits.

Two backends, one class:

- over TCP, a real swarm: ``Optimizer(model, inner, coordinator="host:port",
  algorithm="diloco", inner_steps=50, total_steps=1000)``. The constructor
  joins the swarm (fetching the swarm's state into ``model`` if it runs
  already) and returns once admitted; a background thread keeps the peer's
  heartbeats, state serving and collectives going while the user computes.
  Every keyword ``gossamer.Peer`` takes applies (``key``, ``codec``,
  ``aggregator``, ``checkpoint``, ``trace``, ...).
- simulated: ``swarm = SimulatedSwarm(peers=4, algorithm="diloco",
  link="20mbit,40ms", inner_steps=20)``, then one ``swarm.optimizer(rank,
  model, inner)`` per peer, each driven by its own thread (``swarm.run(fn)``
  starts them). The syncs run the same collectives over the modelled
  network; ``swarm.report()`` gives bytes and simulated time.

What fits: every algorithm whose local step is an optimizer step on
gradients: diloco, sparseloco, streaming_diloco, fedavg, noloco, gossip.
What does not (``ConfigError`` saying why): ddp, whose optimizer state is
shared state gossamer can only build for its own optimizers, and spsa, which
takes no gradients. Options that configure gossamer's own inner optimizer
(``lr``, ``weight_decay``, ``schedule``, ...) are refused: set them on yours.
``grad_clip`` defaults to 0 (clip in your loop, or pass it).

Rules of the road: every peer builds the same initial model (same seed) and
the same optimizer kind; every peer takes the same number of steps between
syncs (the algorithm counts them). Give ``total_steps`` (the run's length
in steps) so the run ends with a sync (the final model is the shared one)
and the peer leaves the swarm after it; without it, call ``close()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from .algorithms import ALGORITHMS, check_own_optimizer, make_algorithm
from .algorithms.base import Gradients, check_optimizer
from .algorithms.driver import RoundLoop, StepHandoff
from .errors import ConfigError, PeerError

__all__ = ["Optimizer", "SimulatedSwarm", "SimulatedSwarmReport"]


def _check_algorithm(algorithm: str, options: dict[str, Any]) -> dict[str, Any]:
    check_own_optimizer(algorithm, options)
    fields = {f.name for f in dataclasses.fields(ALGORITHMS[algorithm][1])}
    out = dict(options)
    if "grad_clip" in fields:
        out.setdefault("grad_clip", 0.0)  # the user's loop clips, if it wants to
    return out


def _check_inner(model: Any, inner: Any) -> None:
    """The model is a module, and the inner optimizer's step works on ``.grad`` alone."""
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inner, torch.optim.Optimizer):
        return  # check_optimizer names it
    try:
        closure = inspect.signature(inner.step).parameters.get("closure")
    except (TypeError, ValueError):  # no signature to read: let the step decide
        return
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigError(f"{type(inner).__name__} cannot be the inner optimizer: its step needs a closure that it "
                          f"calls several times (re-evaluating the loss), which gossamer.Optimizer does not pass on; "
                          f"use an optimizer that steps on the gradients in .grad (SGD, Adam, AdamW, ...)")


def _check_coordinator(coordinator: Any) -> None:
    from .swarm.protocol import parse_hostport

    if not isinstance(coordinator, str):
        raise ConfigError(f"coordinator must be 'host:port', got {type(coordinator).__name__}")
    try:
        parse_hostport(coordinator)
    except ValueError as exc:
        raise ConfigError(f"coordinator: {exc}") from None


def _check_total(total_steps: int | None) -> None:
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1):
        raise ConfigError(f"total_steps must be an int >= 1 (the run's length in steps) or None, got {total_steps!r}")


class Optimizer:
    """A decentralized optimizer around the user's own inner optimizer.

    Args:
        model: the ``torch.nn.Module`` being trained (its trainable parameters
            are the shared state; a joiner's are overwritten with the swarm's).
        inner: any ``torch.optim.Optimizer`` over exactly ``model``'s
            trainable parameters; its state stays local to this peer.
        coordinator: ``"host:port"`` of a ``gossamer coordinator`` (TCP), or
            None with ``swarm=`` (simulated).
        swarm, rank: a ``SimulatedSwarm`` and this peer's rank in it.
        algorithm: one that fits (module docstring); options such as
            ``inner_steps`` go in ``**options``.
        total_steps: the run's length in local steps (None: until ``close()``).
        join_timeout: seconds to wait for admission to the swarm.
        **options: algorithm options, and for TCP every keyword of
            ``gossamer.Peer`` (``key``, ``codec``, ``aggregator``, ``seed``...).

    Raises ``ConfigError`` (before joining) for an algorithm that does not
    fit, an optimizer that does not hold exactly the model's parameters, or
    a bad option; ``PeerError`` when the swarm cannot be joined in time or
    the peer's run ended (from ``step()`` as well).
    """

    def __init__(self, model: torch.nn.Module, inner: torch.optim.Optimizer, *, coordinator: str | None = None,
                 swarm: "SimulatedSwarm | None" = None, rank: int | None = None, algorithm: str = "diloco",
                 total_steps: int | None = None, join_timeout: float = 120.0, **options: Any) -> None:
        if (coordinator is None) == (swarm is None):
            raise ConfigError("give exactly one of coordinator='host:port' (a real swarm) and "
                              "swarm=SimulatedSwarm(...) (a simulated one)")
        _check_inner(model, inner)
        _check_total(total_steps)
        if coordinator is not None:
            _check_coordinator(coordinator)
        self.model = model
        self.inner = inner
        self.total_steps = total_steps
        self._handoff = StepHandoff()
        self._error: BaseException | None = None
        self._last = time.thread_time()
        self._closed = False
        self.report: Any = None
        if swarm is not None:
            if options:
                raise ConfigError(f"a simulated peer takes its options from the SimulatedSwarm; got {', '.join(sorted(options))}")
            self._sim = swarm._attach(self, rank)
            self._thread = None
            self.algorithm = swarm.algorithm
            return
        self._sim = None
        self.algorithm = algorithm
        from .swarm.peer import Peer

        user_progress = options.pop("progress", None)
        self._admitted = threading.Event()

        def progress(event: dict[str, Any]) -> None:
            if event.get("event") == "admitted":
                self._admitted.set()
            if user_progress is not None:
                user_progress(event)

        peer_options = _check_algorithm(algorithm, options)
        self.peer = Peer(model, None, coordinator=coordinator, algorithm=algorithm, optimizer=inner,
                         progress=progress, **peer_options)
        self._thread = threading.Thread(target=self._run_peer, name="gossamer-peer", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + join_timeout
        while not self._admitted.wait(0.05):
            if not self._thread.is_alive():
                raise self._error if self._error is not None else PeerError("the peer stopped before joining")
            if time.monotonic() > deadline:
                self.peer.request_stop()
                self._thread.join(10)
                raise PeerError(f"not admitted to the swarm at {coordinator} within {join_timeout:g} s")

    def _run_peer(self) -> None:
        try:
            self.report = asyncio.run(self.peer.run(self._handoff, steps=self.total_steps))
            end: BaseException = PeerError(f"the run is over ({self.total_steps} steps done); the peer left the swarm"
                                           if self.total_steps is not None else "the peer left the swarm")
        except BaseException as exc:  # handed to the user's thread
            self._error = end = exc
        self._handoff.fail(end)

    # ------------------------------------------------------------------ torch.optim-like
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's parameter groups (learning rates live here)."""
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], torch.Tensor] | None = None, *,
             loss: torch.Tensor | float | None = None) -> torch.Tensor | float | None:
        """The inner optimizer's step on the gradients in ``.grad`` and, when due,
        the outer sync (blocks until the swarm committed it).

        ``closure``, as in ``torch.optim``, recomputes the loss (with
        gradients) first; or pass the step's ``loss`` (a scalar tensor or
        float), which only goes into the peer's report and progress. Returns
        the loss. Raises what ended the peer's run (``PeerError`` once the
        run is over: ``total_steps`` done, or ``close()``)."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        now = time.thread_time()
        seconds, self._last = now - self._last, now
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else (float(loss) if loss is not None else math.nan)
        self._handoff.submit(Gradients(value, seconds))
        self._last = time.thread_time()
        return loss

    @property
    def steps(self) -> int:
        """Local steps taken in this run (the swarm's count, for a joiner)."""
        algo = self._sim.algo if self._sim is not None else getattr(self.peer, "algo", None)
        return int(algo.steps) if algo is not None else 0

    @property
    def round(self) -> int:
        """The swarm round this peer is at: rounds committed so far (counted
        from 0, including those before it joined or resumed)."""
        if self._sim is not None:
            return int(self._sim.algo.syncs)
        return int(getattr(self.peer, "round", 0))

    def close(self) -> None:
        """Leave the swarm (after the step in flight). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._handoff.close()
        if self._thread is not None:
            self._thread.join(60)
        elif self._sim is not None:
            self._sim.wait(60)

    def __enter__(self) -> "Optimizer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------- simulated


@dataclasses.dataclass
class SimulatedSwarmReport:
    """What a simulated swarm did: per peer (rank order) the bytes its transport
    sent (payload + framing), its simulated clock (seconds) and the local steps
    and syncs it took; ``final_hashes`` the shared-state hash of each peer
    (all equal for an algorithm with bit parity)."""

    algorithm: str
    codec: str
    bytes_sent: list[int]
    sim_time_s: list[float]
    steps: list[int]
    syncs: list[int]
    final_hashes: list[str]

    @property
    def in_agreement(self) -> bool:
        return len(set(self.final_hashes)) == 1


class _SimPeer:
    def __init__(self, swarm: "SimulatedSwarm", rank: int, algo: Any, handoff: StepHandoff) -> None:
        self.swarm, self.rank, self.algo, self.handoff = swarm, rank, algo, handoff
        self.done = threading.Event()

    def wait(self, timeout: float) -> None:
        self.done.wait(timeout)


class _SimLoop(RoundLoop):
    def __init__(self, algo: Any, handoff: StepHandoff, total_steps: int | None, compute_time: float | None) -> None:
        super().__init__(algo, lambda: None, total_steps if total_steps is not None else sys.maxsize)
        self.handoff = handoff
        self.compute_time = compute_time

    async def fetch_batch(self) -> Any:
        return await self.handoff.take()

    async def local_step(self, batch: Any) -> float:
        seconds = self.compute_time if self.compute_time is not None else (batch.seconds or 0.0)
        self.algo.comm.transport.compute(seconds)
        return self.algo.step(batch)

    def after_step(self, loss: float) -> None:
        self.handoff.resolve(loss)


class SimulatedSwarm:
    """``peers`` simulated peers whose syncs run over a modelled network.

    Args:
        peers: number of peers (>= 1); each needs one ``optimizer(rank, ...)``
            and one thread driving it.
        algorithm, codec, aggregator, tolerate, seed: as in ``gossamer.simulate``.
        link: ``"UP[/DOWN],LATENCY[,LOSS]"`` (docs/concepts.md), e.g. ``"20mbit,20ms"``
            or ``"10mbit/100mbit,20ms"``. Bytes are the same on every run of a
            seed; simulated times may vary slightly with the order in which
            the user threads hand in their steps.
        total_steps: the run's length in local steps (None: until each ``close()``).
        compute_time: simulated seconds per local step (None: the CPU time the
            user's thread spent since its previous step, measured).
        **options: algorithm options (``inner_steps``, ``outer_lr``...).
    """

    def __init__(self, peers: int, *, algorithm: str = "diloco", link: str = "100mbit,50ms", codec: str | None = None,
                 aggregator: str = "mean", tolerate: int = 0, seed: int = 0, total_steps: int | None = None,
                 compute_time: float | None = None, **options: Any) -> None:
        from .aggregate import make_aggregator
        from .comm import make_run_codec
        from .transport.sim import LinkSpec

        if isinstance(peers, bool) or not isinstance(peers, int) or peers < 1:
            raise ConfigError(f"peers must be an int >= 1, got {peers!r}")
        _check_total(total_steps)
        if compute_time is not None and not compute_time >= 0:
            raise ConfigError(f"compute_time must be >= 0 seconds or None, got {compute_time!r}")
        self.options = _check_algorithm(algorithm, options)
        from .algorithms import algorithm_config

        algorithm_config(algorithm, **self.options)
        cls = ALGORITHMS[algorithm][0]
        spec = codec if codec is not None else (cls.default_codec if cls.uses_codec else "none")
        resolved = make_run_codec(spec)
        cls.check_codec(spec)
        self.codec = resolved.spec if resolved is not None else "none"
        make_aggregator(aggregator, tolerate)
        self.peers, self.algorithm, self.seed = peers, algorithm, seed
        self.aggregator, self.tolerate = aggregator, tolerate
        self.link = LinkSpec.parse(link)
        self.total_steps, self.compute_time = total_steps, compute_time
        self.ids = [f"p{i}" for i in range(peers)]
        self._lock = threading.Lock()
        self._attached: dict[int, _SimPeer] = {}
        self._genesis: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._net: Any = None
        #: ``run()``: ranks take turns, in rank order, up to their ``optimizer()`` call
        self._turn: int | None = None
        self._turn_cv = threading.Condition()

    # ------------------------------------------------------------------ event loop
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        from .transport.sim import SimNetwork

        if self._loop is None:
            self._net = SimNetwork(self.link, seed=self.seed)
            loop = asyncio.new_event_loop()
            self._everyone = asyncio.Event()  # Python 3.10+: bound to the loop on first use
            self._thread = threading.Thread(target=loop.run_forever, name="gossamer-sim", daemon=True)
            self._thread.start()
            self._loop = loop
        return self._loop

    def _attach(self, opt: Optimizer, rank: int | None) -> _SimPeer:
        from .aggregate import make_aggregator
        from .comm import Communicator, make_run_codec

        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.peers:
            raise ConfigError(f"rank must be an int in [0, {self.peers}), got {rank!r}")
        check_optimizer(opt.inner, [p for p in opt.model.parameters() if p.requires_grad], what=self.algorithm)
        with self._lock:
            if rank in self._attached:
                raise ConfigError(f"rank {rank} already has an optimizer in this simulated swarm")
            loop = self._ensure_loop()

            async def build() -> Any:  # on the network's own thread: nothing else touches it meanwhile
                aggregator = make_aggregator(self.aggregator, self.tolerate, seed=self.seed) \
                    if self.aggregator != "mean" or self.tolerate else None
                comm = Communicator(self._net.add_peer(self.ids[rank]), tuple(self.ids),
                                    codec=make_run_codec(self.codec), aggregator=aggregator, seed=self.seed)
                algo = make_algorithm(self.algorithm, opt.model, None, comm, **self.options)
                algo.use_optimizer(opt.inner)
                opt._handoff.bind()
                return algo

            algo = asyncio.run_coroutine_threadsafe(build(), loop).result()
            digest = algo.shared_hash()
            if self._genesis is None:
                self._genesis = digest
            elif digest != self._genesis:
                raise ConfigError(f"rank {rank}'s model differs from the first peer's: every peer must build its model "
                                  f"from the same initial values (seed it the same)")
            peer = _SimPeer(self, rank, algo, opt._handoff)
            self._attached[rank] = peer
            if len(self._attached) == self.peers:  # everyone is on the network: the run may start
                loop.call_soon_threadsafe(self._everyone.set)
        self._pass_turn(rank)

        async def drive() -> None:
            try:
                await self._everyone.wait()
                await _SimLoop(algo, opt._handoff, self.total_steps, self.compute_time).run()
                end: BaseException = PeerError("the simulated run is over" if self.total_steps is None
                                               else f"the run is over ({self.total_steps} steps done)")
            except BaseException as exc:
                end = exc
                self._net.kill(self.ids[rank])  # the others' collectives fail instead of waiting for ever
            opt._handoff.fail(end)
            peer.done.set()

        asyncio.run_coroutine_threadsafe(drive(), loop)
        return peer

    def _pass_turn(self, rank: int) -> None:
        with self._turn_cv:
            if self._turn is not None and self._turn == rank:
                self._turn += 1
                self._turn_cv.notify_all()

    def optimizer(self, rank: int, model: torch.nn.Module, inner: torch.optim.Optimizer) -> Optimizer:
        """Peer ``rank``'s ``Optimizer`` (its own model and inner optimizer).
        The run starts when every rank has one: a first ``step()`` waits."""
        return Optimizer(model, inner, swarm=self, rank=rank)

    def run(self, train: Callable[[int], Any]) -> SimulatedSwarmReport:
        """Run ``train(rank)`` for every rank, one thread each, and return the
        report. ``train`` builds its model and ``self.optimizer(rank, ...)`` and
        runs the loop. What ``train`` does before its ``optimizer()`` call
        runs one rank at a time, in rank order, so seeding torch's global RNG
        there and building the model from it is safe and reproducible. The first exception raised by a ``train`` is re-raised
        here (its peer is removed from the network, so the others stop too)."""
        errors: list[BaseException] = []  # in the order they happened: the first is the cause
        self._turn = 0

        def one(rank: int) -> None:
            try:
                with self._turn_cv:
                    self._turn_cv.wait_for(lambda: self._turn is not None and self._turn >= rank)
                train(rank)
                self._check_finished(rank)
            except BaseException as exc:
                with self._lock:
                    errors.append(exc)
                with self._lock:
                    peer = self._attached.get(rank)
                if self._net is not None and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._net.kill, self.ids[rank])
                    self._loop.call_soon_threadsafe(self._everyone.set)  # those waiting for this rank fail now
                if peer is not None:
                    peer.handoff.close()
            finally:
                self._pass_turn(rank)

        threads = [threading.Thread(target=one, args=(r,), name=f"gossamer-sim-peer{r}") for r in range(self.peers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._turn = None
        if errors:
            raise errors[0]
        return self.report()

    def _check_finished(self, rank: int) -> None:
        """``train(rank)`` returned: it must have built its optimizer and, with
        ``total_steps``, taken them all, or the other ranks would wait for it
        for ever (raised through ``run``'s error path, which stops them)."""
        with self._lock:
            peer = self._attached.get(rank)
        if peer is None:
            raise ConfigError(f"train({rank}) returned without calling swarm.optimizer({rank}, model, inner): "
                              f"every rank must take part")
        if self.total_steps is not None and int(peer.algo.steps) < self.total_steps:
            raise ConfigError(f"train({rank}) returned after {int(peer.algo.steps)} of total_steps={self.total_steps} "
                              f"steps: every rank must take them all (loop on `while opt.steps < total_steps`)")

    def report(self) -> SimulatedSwarmReport:
        with self._lock:
            peers = [self._attached[r] for r in sorted(self._attached)]
        for p in peers:
            p.wait(60)
        comms = [p.algo.comm for p in peers]
        return SimulatedSwarmReport(
            algorithm=self.algorithm, codec=self.codec,
            bytes_sent=[int(c.transport.counters.sent.total) for c in comms],
            sim_time_s=[float(c.transport.now()) for c in comms],
            steps=[int(p.algo.steps) for p in peers], syncs=[int(p.algo.syncs) for p in peers],
            final_hashes=[p.algo.shared_hash() for p in peers])

    def close(self) -> None:
        """Stop the simulated network's event loop; peers still running are cancelled."""
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            if not loop.is_running():
                loop.close()

