"""The peer runtime: join a swarm, fetch and verify the shared state, train,
survive crashes of others, leave cleanly.

Library use (a user's own model and loss)::

    from gossamer.swarm import Peer
    report = Peer(model, loss_fn, coordinator="127.0.0.1:7000", algorithm="diloco",
                  inner_steps=50).train(batches, rounds=100)

Contract:

- ``Peer(model, loss_fn, coordinator=..., algorithm=..., **options)`` wraps
  any ``torch.nn.Module`` and ``loss_fn(model, batch) -> scalar``. Every peer
  of a swarm must build the same model from the same initial values (e.g.
  the same seed) and use the same algorithm and options: the coordinator
  checks a fingerprint of them and of the shared state's layout.
  Supported algorithms are the local-update ones with bit parity (``diloco``,
  ``fedavg``); others raise ``ConfigError``.
- ``train(batches, rounds=None)`` / ``await run(...)``: joins (state fetched
  from a live member over the TCP transport and checked against the agreed
  hash before any training), then per round: H local steps (in a worker
  thread, so heartbeats and state serving go on), the round barrier, the
  outer step (``Algorithm.sync``) under a link-derived deadline, the report
  of the new state hash, and the coordinator's decision. Only a committed
  result is kept: on abort every tensor the sync touched (shared state,
  parameters, round counter) is restored and the round is retried with the
  survivors. A dissenting hash is repaired by fetching the agreed state from
  a majority peer. Returns a ``PeerReport``; stops after the swarm's round
  ``rounds`` (rounds are counted from 0, so ``rounds=R`` stops once rounds
  0..R-1 are committed), when ``batches`` runs out, or on ``request_stop()``
  (the CLI wires SIGTERM to it), leaving the swarm cleanly.
- Losing the coordinator raises ``PeerError``.
- Test hooks (environment, for the integration tests only):
  ``GOSSAMER_TEST_KILL_IN_ROUND=R`` SIGKILLs this process in round R's
  all-reduce after it sent its first reduce-scatter chunk (with
  ``GOSSAMER_TEST_KILL_SIGNAL=SIGSTOP`` it stalls there instead);
  ``GOSSAMER_TEST_CORRUPT_ROUND=R`` perturbs the shared state after round R's
  outer step, before it is hashed; ``GOSSAMER_TEST_STEP_SLEEP=S`` adds S
  seconds of simulated compute to each local step;
  ``GOSSAMER_TEST_JOIN_AT_ROUND=R`` holds the join until the swarm reaches
  round R (so a process started early joins mid-run).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..algorithms import ALGORITHMS, make_algorithm
from ..codecs import make_codec
from ..comm.collectives import CollectiveAborted, Communicator, LinkEstimator
from ..errors import ConfigError, PeerError, ProtocolError
from ..transport.base import Buffer, Tag, Transport
from ..transport.identity import Identity
from ..transport.tcp import TcpTransport
from ..verify.hashing import state_hash
from .keys import load_identity
from .protocol import CoordinatorClient, SwarmError, parse_hostport
from .state import StateBlob, pack_state, recv_state, send_state, state_nbytes

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 0.5
#: Smallest deadline for a whole state transfer (it includes a coordinator round trip).
STATE_FLOOR = 15.0
#: How long a peer keeps trying to reach a lost coordinator.
RECONNECT_FOR = 60.0
SUPPORTED = ("diloco", "fedavg")


@dataclass
class PeerReport:
    """What one peer did: the rounds it took part in and the agreed hash of each."""

    peer_id: str
    rounds_completed: int = 0
    state_hashes: list[dict[str, Any]] = field(default_factory=list)
    joined_round: int | None = None
    aborts: int = 0
    resyncs: int = 0
    rejoins: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "rounds_completed": self.rounds_completed,
                "state_hashes": self.state_hashes, "joined_round": self.joined_round, "aborts": self.aborts,
                "resyncs": self.resyncs, "rejoins": self.rejoins}

    def write(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, p)


class _Stopping(Exception):
    pass


class _Rejoin(Exception):
    pass


class _HookedTransport(Transport):
    """Delegates to a transport; plays the test hooks (see the module docstring)."""

    def __init__(self, inner: Transport, kill_round: int | None) -> None:
        self.inner = inner
        self.signal = getattr(signal, os.environ.get("GOSSAMER_TEST_KILL_SIGNAL") or "SIGKILL")
        self.counters = inner.counters
        self.kill_round = kill_round
        self._sent_in_kill_round = 0

    @property
    def peer_id(self) -> str:
        return self.inner.peer_id

    async def send(self, dst: str, tag: Tag, payload: Buffer) -> None:
        await self.inner.send(dst, tag, payload)
        if (self.kill_round is not None and tag.round > 0 and (tag.round >> 32) > 0
                and (tag.round & 0xFFFFFFFF) == self.kill_round and tag.phase == 0):
            self._sent_in_kill_round += 1
            if self._sent_in_kill_round == 1:
                log.warning("test hook: %s in the middle of round %d's all-reduce", self.signal.name, self.kill_round)
                os.kill(os.getpid(), self.signal)

    async def recv(self, src: str, tag: Tag, *, timeout: float | None = None) -> bytes:
        return await self.inner.recv(src, tag, timeout=timeout)

    def compute(self, seconds: float) -> None:
        self.inner.compute(seconds)

    def now(self) -> float:
        return self.inner.now()

    async def close(self) -> None:
        await self.inner.close()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def purge_stale_frames(transport: Any, epoch: int) -> int:
    """Drop frames of attempts older than ``epoch`` that will never be read.

    ``TcpTransport`` keeps unread frames and the tags already consumed per
    sender without limit in time; frames of an aborted attempt are never read,
    so without this they would pile up (and eventually trip the per-peer
    buffer limit). Uses the transport's private mailbox (documented
    work-around); a no-op on other transports."""
    mailbox = getattr(transport, "_mailbox", None)
    buffered = getattr(transport, "_buffered", None)
    consumed = getattr(transport, "_consumed", None)
    if not isinstance(mailbox, dict) or not isinstance(buffered, dict) or not isinstance(consumed, dict):
        return 0

    def old(tag: Tag) -> bool:
        e = tag.round >> 32
        return 0 < e < epoch

    dropped = 0
    for key in [k for k in mailbox if old(k[1])]:
        payload = mailbox.pop(key)
        buffered[key[0]] = buffered.get(key[0], 0) - len(payload)
        dropped += 1
    for src, tags in consumed.items():
        stale = [t for t in tags if 0 < (t.round >> 32) < epoch - 1]
        for t in stale:
            tags.discard(t)
    return dropped


class Peer:
    """One member of a swarm; see the module docstring."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor], *,
                 coordinator: str, algorithm: str = "diloco", key: str | os.PathLike[str] | None = None,
                 identity: Identity | None = None, listen: str = "127.0.0.1:0", advertise: str | None = None,
                 swarm_id: str = "gossamer", coordinator_id: str | None = None, fingerprint: str = "",
                 progress: Callable[[dict[str, Any]], None] | None = None, codec: str | None = None,
                 **options: Any) -> None:
        if algorithm not in SUPPORTED:
            raise ConfigError(f"the swarm runtime runs local-update algorithms with bit parity; "
                              f"got {algorithm!r}, accepted: {', '.join(SUPPORTED)}")
        self.model = model
        self.loss_fn = loss_fn
        self.coordinator = parse_hostport(coordinator)
        self.algorithm_name = algorithm
        self.options = options
        # The same payload codec the simulator uses for this algorithm, unless told otherwise.
        self.codec_spec = codec if codec is not None else ALGORITHMS[algorithm][0].default_codec
        make_codec(self.codec_spec)  # a bad spec fails here, before joining
        self._key = key
        self._identity = identity
        self.listen = parse_hostport(listen)
        self.advertise = parse_hostport(advertise) if advertise else None
        self.swarm_id = swarm_id
        self.coordinator_id = coordinator_id
        self.extra_fingerprint = fingerprint
        self.progress = progress
        self.round = 0
        self.report: PeerReport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self.kill_round = _env_int("GOSSAMER_TEST_KILL_IN_ROUND")
        self.corrupt_round = _env_int("GOSSAMER_TEST_CORRUPT_ROUND")
        self.join_at_round = _env_int("GOSSAMER_TEST_JOIN_AT_ROUND")
        self.step_sleep = float(os.environ.get("GOSSAMER_TEST_STEP_SLEEP") or 0.0)

    # ------------------------------------------------------------------ public

    def train(self, batches: Iterable[Any], *, rounds: int | None = None) -> PeerReport:
        """Blocking form of ``run``."""
        return asyncio.run(self.run(batches, rounds=rounds))

    def request_stop(self) -> None:
        """Leave the swarm at the next safe point (thread- and signal-safe)."""
        self._stop_requested.set()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self, batches: Iterable[Any], *, rounds: int | None = None) -> PeerReport:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop.set()
        identity = self._identity or load_identity(self._key)
        self.report = PeerReport(identity.peer_id)
        tcp = await TcpTransport.start(identity, self.swarm_id, *self.listen)
        self.tcp = tcp
        self.transport: Transport = _HookedTransport(tcp, self.kill_round) if self.kill_round is not None else tcp
        bg: list[asyncio.Task[Any]] = []
        self.client: CoordinatorClient | None = None
        self._identity_obj = identity
        try:
            codec = None if self.codec_spec in ("none", "fp32") else make_codec(self.codec_spec)
            self.comm = Communicator(self.transport, [identity.peer_id], codec=codec)
            self.comm.link = LinkEstimator()
            self.algo: Any = make_algorithm(self.algorithm_name, self.model, self.loss_fn, self.comm, **self.options)
            self.steps_per_round = int(getattr(self.algo.config, "inner_steps", 1))
            self._genesis = self._snapshot()
            self._fingerprint = self._make_fingerprint()
            self._blob: StateBlob | None = None
            self._committed = -2
            await self._connect_coordinator()
            bg.append(asyncio.create_task(self._heartbeats(), name="heartbeats"))
            bg.append(asyncio.create_task(self._serve(), name="serve"))
            it = iter(batches)
            while True:
                try:
                    await self._main(it, rounds)
                    break
                except PeerError as exc:
                    if self.client is None or not self.client.closed_event.is_set():
                        raise
                    log.warning("lost the coordinator (%s); reconnecting", exc)
                    await self._reconnect()
                    self.report.rejoins += 1
        except _Stopping:
            pass
        finally:
            for task in bg:
                task.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
            client = self.client
            if client is not None:
                if not client.closed_event.is_set():
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(5):
                            await client.request("leave")
                await client.close()
            await tcp.close()
        return self.report

    # ------------------------------------------------------------------ internals

    @property
    def _c(self) -> CoordinatorClient:
        assert self.client is not None, "not connected to the coordinator"
        return self.client

    async def _connect_coordinator(self) -> None:
        client = await CoordinatorClient.connect(self._identity_obj, self.swarm_id, *self.coordinator,
                                                 coordinator_id=self.coordinator_id)
        client.on_rtt = self.comm.link.observe_rtt
        host, port = self.advertise or self.tcp.address
        if host in ("0.0.0.0", "::", ""):
            host = client.local_host
        self.addr = [host, port]
        self.client = client

    async def _reconnect(self) -> None:
        """Reconnect to the coordinator, for up to ``RECONNECT_FOR`` seconds."""
        delay, waited = 0.25, 0.0
        last: Exception | None = None
        if self.client is not None:
            await self.client.close()
        while waited < RECONNECT_FOR:
            try:
                await self._connect_coordinator()
                return
            except (PeerError, ProtocolError) as exc:
                last = exc
            await self._interruptible(asyncio.sleep(delay))
            waited += delay
            delay = min(2 * delay, 4.0)
        raise PeerError(f"lost the coordinator at {self.coordinator[0]}:{self.coordinator[1]} "
                        f"and could not reconnect within {RECONNECT_FOR:g} s: {last}")

    def _emit(self, **event: Any) -> None:
        if self.progress is not None:
            self.progress(event)

    def _make_fingerprint(self) -> str:
        from .state import layout

        desc = {"algorithm": self.algorithm_name, "codec": self.codec_spec,
                "options": {k: repr(v) for k, v in sorted(self.options.items())},
                "layout": layout(self.algo.shared_state()), "extra": self.extra_fingerprint}
        return hashlib.blake2b(json.dumps(desc, sort_keys=True).encode(), digest_size=16).hexdigest()

    def _snapshot(self) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        return ([t.detach().clone() for t in self.algo.shared_state()],
                [p.detach().clone() for p in self.algo.params], self.algo.rounds)

    def _restore(self, snap: tuple[list[torch.Tensor], list[torch.Tensor], int]) -> None:
        shared, params, rounds = snap
        with torch.no_grad():
            for t, s in zip(self.algo.shared_state(), shared):
                t.copy_(s)
            for p, s in zip(self.algo.params, params):
                p.copy_(s)
        self.algo.rounds = rounds

    def _params_from_shared(self) -> None:
        with torch.no_grad():
            for p, s in zip(self.algo.params, self.algo.start):
                p.copy_(s)

    def _commit_state(self, round_: int, digest: str) -> None:
        self._committed = round_
        self._blob = pack_state(self.algo.shared_state(), round_, digest)

    async def _heartbeats(self) -> None:
        while True:
            client = self.client
            if client is not None and not client.closed_event.is_set():
                with contextlib.suppress(SwarmError, PeerError):
                    await client.request("hb")
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _serve(self) -> None:
        jobs: set[asyncio.Task[None]] = set()
        while True:
            client = self.client
            try:
                assert client is not None
                resp = await client.request("serve")
            except (PeerError, SwarmError):
                await asyncio.sleep(HEARTBEAT_INTERVAL)
                continue
            for job in resp.get("jobs", []) if isinstance(resp.get("jobs"), list) else []:
                task = asyncio.create_task(self._serve_job(job))
                jobs.add(task)
                task.add_done_callback(jobs.discard)

    async def _serve_job(self, job: Any) -> None:
        try:
            to, addr, transfer, round_ = job["to"], job["addr"], job["transfer"], job["round"]
            if not (isinstance(to, str) and isinstance(transfer, int) and isinstance(round_, int)):
                raise ProtocolError(f"bad serve job {job!r}"[:200])
            for _ in range(600):
                if self._committed >= round_ and self._blob is not None:
                    break
                await asyncio.sleep(0.05)
            blob = self._blob
            if blob is None or self._committed < round_:
                log.warning("cannot serve the state of round %d to %s: we hold round %d", round_, to, self._committed)
                return
            self.tcp.add_peer(to, str(addr[0]), int(addr[1]))
            await send_state(self.tcp, to, transfer, blob)
            log.info("served the state of round %d (%d bytes) to %s", blob.round, blob.nbytes, to)
        except (PeerError, ProtocolError, KeyError, TypeError, IndexError, ValueError) as exc:
            log.warning("serving state failed: %s", exc)

    async def _interruptible(self, coro: Any) -> Any:
        """Await ``coro`` unless a stop is requested first (then ``_Stopping``)."""
        assert self._stop is not None
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise _Stopping()

    def _state_deadline(self) -> float:
        return max(STATE_FLOOR, self.comm.link.deadline(state_nbytes(self.algo.shared_state()), 3))

    async def _fetch(self, source: str, addr: Any, transfer: int) -> tuple[int, str]:
        """Receive the state of ``source`` into our shared state and check its hash."""
        self.tcp.add_peer(source, str(addr[0]), int(addr[1]))
        like = self.algo.shared_state()
        round_, claimed = await recv_state(self.tcp, source, transfer, like, self._state_deadline())
        actual = state_hash(like)
        if actual != claimed:
            raise ProtocolError(f"state from {source!r} hashes to {actual}, not the {claimed} it claims")
        self._params_from_shared()
        return round_, actual

    async def _join(self) -> None:
        assert self.report is not None
        delay = 0.2
        while True:
            try:
                resp = await self._interruptible(self._c.request("join", addr=self.addr, fingerprint=self._fingerprint))
            except SwarmError as exc:
                if exc.code == "rejected":
                    raise ConfigError(str(exc)) from None
                raise PeerError(str(exc)) from None
            mode = resp.get("mode")
            try:
                if mode == "init":
                    target = int(resp["round"])
                    if target == 0:
                        self._restore(self._genesis)
                    self._params_from_shared()
                    digest = state_hash(self.algo.shared_state())
                    state_round = target - 1
                elif mode == "fetch":
                    state_round, digest = await self._interruptible(
                        self._fetch(resp["source"], resp["source_addr"], int(resp["transfer"])))
                    if state_round == resp["round"] and digest != resp["hash"]:
                        raise ProtocolError(f"state of round {state_round} from {resp['source']} hashes to {digest}, "
                                            f"the agreed hash is {resp['hash']}")
                    target = state_round + 1
                else:
                    raise ProtocolError(f"unknown join mode {mode!r} from the coordinator")
                self.algo.rounds = target
                await self._interruptible(self._c.request("admit", round=target, hash=digest))
            except SwarmError as exc:
                if exc.code == "rejected" and mode == "init":
                    raise ConfigError(str(exc)) from None
                log.info("admission refused (%s); joining again", exc)
            except (PeerError, ProtocolError, TimeoutError, KeyError, TypeError, ValueError) as exc:
                if self._c.closed_event.is_set():
                    raise PeerError("lost the coordinator while joining") from exc
                log.warning("state fetch failed (%s); joining again", exc)
            else:
                self.round = target
                self._commit_state(target - 1, digest)
                if self.report.joined_round is None:
                    self.report.joined_round = target
                log.info("admitted to round %d with state %s", target, digest[:16])
                self._emit(event="admitted", round=target, hash=digest)
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    async def _main(self, batches: Iterator[Any], rounds: int | None) -> None:
        assert self._stop is not None
        if self.join_at_round is not None:
            while int((await self._c.request("hb")).get("round", 0)) < self.join_at_round:
                await self._interruptible(asyncio.sleep(0.05))
        await self._join()
        while True:
            if self._stop.is_set() or (rounds is not None and self.round >= rounds):
                return
            trained = await asyncio.to_thread(self._local_phase, batches)
            if not trained:
                return
            if self._stop.is_set():
                return
            try:
                await self._sync_round()
            except _Rejoin as exc:
                assert self.report is not None
                self.report.rejoins += 1
                log.warning("rejoining the swarm: %s", exc)
                await self._join()

    def _local_phase(self, batches: Iterator[Any]) -> bool:
        for _ in range(self.steps_per_round):
            try:
                batch = next(batches)
            except StopIteration:
                return False
            self.algo.local_step(batch)
            if self.step_sleep:
                time.sleep(self.step_sleep)
        return True

    async def _connect_group(self, group: list[str], addrs: dict[str, Any]) -> None:
        me = self.tcp.peer_id
        for pid in group:
            if pid != me:
                host, port = addrs[pid]
                self.tcp.add_peer(pid, str(host), int(port))
        missing = [p for p in group if p != me and p not in self.tcp.connected_peers()]

        async def dial(pid: str) -> None:
            host, port = addrs[pid]
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.tcp.connect(pid, str(host), int(port))

        await asyncio.gather(*(dial(p) for p in missing))

    async def _sync_round(self) -> None:
        assert self.report is not None
        snap = self._snapshot()
        attempt = 0
        step = (self.round + 1) * self.steps_per_round - 1
        while True:
            try:
                start = await self._interruptible(self._c.request("ready", round=self.round))
            except SwarmError as exc:
                if exc.code == "busy":
                    await asyncio.sleep(0.1)
                    continue
                raise _Rejoin(str(exc)) from None
            group, epoch, addrs = list(start["group"]), int(start["epoch"]), dict(start["addrs"])
            if int(start["round"]) != self.round or self.tcp.peer_id not in group:
                raise _Rejoin(f"barrier answered round {start['round']} / group {group}")
            await self._connect_group(group, addrs)
            purge_stale_frames(self.tcp, epoch)
            self.comm.regroup(group, epoch=epoch)
            self.comm.deadline_scale = float(2 ** min(attempt, 4))
            self.algo.rounds = self.round
            try:
                decision = await self._attempt(step, epoch)
            except (_Rejoin, PeerError):
                self._restore(snap)
                raise
            if decision.get("decision") == "commit":
                await self._committed_round(decision, len(group))
                return
            self._restore(snap)
            attempt += 1
            self.report.aborts += 1
            log.warning("round %d attempt %d aborted (%s); retrying", self.round, attempt, decision.get("reason"))
            self._emit(event="abort", round=self.round, reason=decision.get("reason"))

    async def _attempt(self, step: int, epoch: int) -> dict[str, Any]:
        sync = asyncio.ensure_future(self.algo.sync(step))
        outcome = asyncio.ensure_future(self._c.request("outcome", epoch=epoch))
        try:
            await asyncio.wait({sync, outcome}, return_when=asyncio.FIRST_COMPLETED)
            if sync.done():
                exc = sync.exception()
                if exc is None:
                    if self.corrupt_round == self.round:
                        with torch.no_grad():
                            self.algo.shared_state()[0].view(-1)[0] += 1.0
                        log.warning("test hook: corrupted the shared state after round %d", self.round)
                    digest = state_hash(self.algo.shared_state())
                    req = self._c.request("done", epoch=epoch, ok=True, hash=digest)
                else:
                    if not isinstance(exc, (CollectiveAborted, PeerError, ProtocolError)):
                        log.error("outer step failed: %r", exc)
                    req = self._c.request("done", epoch=epoch, ok=False, reason=str(exc)[:400])
                try:
                    return await req
                except SwarmError as err:
                    if err.code == "evicted":
                        raise _Rejoin(str(err)) from None
                    return {"decision": "abort", "reason": str(err)}
            result = outcome.result()
            if result.get("decision") == "commit":  # pragma: no cover - a commit needs our report
                raise _Rejoin("the round committed without us")
            return result
        except SwarmError as err:
            if err.code == "evicted":
                raise _Rejoin(str(err)) from None
            return {"decision": "abort", "reason": str(err)}
        finally:
            for task in (sync, outcome):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _committed_round(self, decision: dict[str, Any], group_size: int) -> None:
        assert self.report is not None
        agreed = str(decision["hash"])
        resync = decision.get("resync")
        if resync:
            assert self.report is not None
            log.warning("our state after round %d disagrees with the majority %s; resyncing from %s",
                        self.round, agreed[:16], resync["source"])
            try:
                got_round, digest = await self._fetch(resync["source"], resync["addr"], int(resync["transfer"]))
            except (PeerError, ProtocolError, TimeoutError) as exc:
                raise _Rejoin(f"resync failed: {exc}") from exc
            if got_round != self.round or digest != agreed:
                raise _Rejoin(f"resync got round {got_round} hash {digest[:16]}, wanted round {self.round} {agreed[:16]}")
            self.report.resyncs += 1
            self._emit(event="resync", round=self.round, source=resync["source"])
        else:
            digest = state_hash(self.algo.shared_state())
            if digest != agreed:
                raise _Rejoin(f"our hash {digest[:16]} is not the agreed {agreed[:16]} and no resync was offered")
        self._commit_state(self.round, agreed)
        self.report.state_hashes.append({"round": self.round, "hash": agreed})
        self.report.rounds_completed += 1
        self._emit(event="commit", round=self.round, hash=agreed, group=group_size)
        self.round += 1
