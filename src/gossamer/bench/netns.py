"""Shaped links for real processes: Linux network namespaces, ``tc`` and a delay relay.

What it builds (``NetnsLab``), for checking the simulator's link model
against real TCP (``bench/predict.py``):

- a **hub** namespace and one namespace per peer, each peer joined to the
  hub by a veth pair: hub side ``10.0.(i+1).1/24``, peer side
  ``10.0.(i+1).2/24``, the peer's default route via the hub side. Every
  endpoint of every connection lives in the lab's namespaces, so the root
  namespace's addresses, routes and TCP settings are never touched, and
  labs of concurrent runs cannot collide;
- the peer's **uplink** is a ``tbf`` qdisc on the peer side of its veth
  (egress towards the hub) at ``up_bps``; its **downlink** a ``tbf`` on the
  hub side (egress towards the peer) at ``down_bps``;
- **latency**: this kernel has no ``netem``, so every peer gets a
  ``DelayRelay`` in the hub: a userspace TCP proxy listening on
  ``0.0.0.0:PORT`` that forwards to the peer's listen address and holds every
  chunk it reads, in either direction, for ``one_way_s`` seconds before
  writing it on (order preserved, nothing coalesced or dropped). A peer
  advertises ``10.0.(i+1).1:PORT``, so a connection from peer ``a`` to peer
  ``b`` crosses ``a``'s uplink, waits ``one_way_s`` in ``b``'s relay and
  crosses ``b``'s downlink (and the reverse path for the other direction):
  one-way latency ``one_way_s``, round trip ``2 * one_way_s``. The
  coordinator runs in the hub (``hub_prefix()``) behind a relay of its own.
- ``tcp="tuned"`` (default) sets the lab's TCP up so that a transfer runs at
  the shaped rate from its first byte and no timer fires spuriously (see
  ``TUNED_SYSCTLS`` and ``TUNED_ROUTE``): the relay's two legs have
  sub-millisecond round trips, so with the kernel's defaults TCP would see
  a short path whose round trip swells with the queue of a shaped link
  (acknowledgements wait behind data), which no WAN path looks like.
  ``tcp="default"`` leaves the kernel's settings.

What it does not model: TCP's slow start and congestion control over the
long path (see docs/concepts.md, "Network model").

Contract: ``support_problem()`` returns ``None`` when this process can build
a lab (root, ``ip`` and ``tc`` on ``PATH``, namespaces work) and otherwise a
one-line reason. ``NetnsLab`` is a context manager; leaving it (normally or
by an exception, and also from ``close()``) stops the relay, deletes every
namespace and link it created, and raises nothing on cleanup. Every name it
creates carries a random tag (``gsp<tag>...``), so two labs never touch
each other's namespaces or links. Rates are bits per second, times seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import GossamerError

log = logging.getLogger(__name__)

#: tbf bucket: at least this many bytes (one GSO super-packet of the veth)...
TBF_MIN_BURST = 16 * 1024
#: ... or this many seconds of traffic at the shaped rate, whichever is larger.
TBF_BURST_S = 0.002
#: tbf queue limit in seconds of traffic: long enough that nothing is dropped.
TBF_QUEUE_S = 2.0
#: ... but at most this many bytes (tc takes a 32-bit limit).
TBF_MAX_QUEUE = 1 << 30

#: ``tcp="tuned"``: congestion control of every lab socket. Reno: with windows
#: this large and no loss it never leaves slow start, so it simply sends what
#: the window allows; bbr (this machine's default) paces at its estimate of the
#: bottleneck and drains its window to 4 packets for 200 ms every 10 s (ProbeRTT),
#: dynamics of its own; cubic is not allowed inside a namespace here.
TUNED_CONGESTION = "reno"
#: ``tcp="tuned"``: per-namespace sysctls of every lab namespace: 4 MiB socket
#: buffers (no transfer is limited by a receive window), no slow start after
#: an idle period (a round's compute), ...
TUNED_SYSCTLS = {"net.ipv4.tcp_rmem": "4096 4194304 16777216", "net.ipv4.tcp_wmem": "4096 4194304 16777216",
                 "net.ipv4.tcp_slow_start_after_idle": "0", "net.ipv4.tcp_congestion_control": TUNED_CONGESTION}
#: ... and on every lab route: initial congestion and receive windows of 1000
#: segments (no slow start) and a 2 s minimum retransmission timeout (a queue
#: of a shaped link never looks like a lost packet).
TUNED_ROUTE = ["initcwnd", "1000", "initrwnd", "1000", "rto_min", "2s"]
#: The relay's socket buffers with ``tcp="tuned"`` (bytes).
TUNED_BUFFER = 4 * 1024 * 1024
#: ``"default"`` leaves the kernel's TCP as it is.
TCP_MODES = ("tuned", "default")
_CLONE_NEWNET = 0x40000000


class LabError(GossamerError):
    """A namespace, link or qdisc could not be set up (the command and its error)."""


def support_problem() -> str | None:
    """``None`` when network namespaces and ``tc`` can be used here, else why not (one line)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces and tc): run it as root, e.g. in a container or VM you own"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (iproute2) on PATH"
    name = f"gsp{secrets.token_hex(3)}chk"
    try:
        _run(["ip", "netns", "add", name])
    except LabError as exc:
        return f"cannot create a network namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _run(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def tbf_args(rate_bps: float) -> list[str]:
    """``tc`` arguments of a tbf shaping to ``rate_bps`` bits per second (see the constants)."""
    burst = max(TBF_MIN_BURST, int(rate_bps / 8 * TBF_BURST_S))
    limit = min(TBF_MAX_QUEUE, max(4 * burst, int(rate_bps / 8 * TBF_QUEUE_S)))
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "limit", str(limit)]


@dataclass(frozen=True)
class LabPeer:
    """One peer's namespace: its name, the peer-side and hub-side addresses of its veth."""

    index: int
    netns: str
    address: str  # inside the peer's namespace (the peer listens here)
    gateway: str  # the hub side of its veth (relays are reached here)

    def exec_prefix(self) -> list[str]:
        """Run a command inside this namespace: ``exec_prefix() + argv``."""
        return ["ip", "netns", "exec", self.netns]


class DelayRelay:
    """Userspace TCP relays that delay every chunk by a fixed time, on one
    event loop in a background thread (inside network namespace ``netns``
    when given, with its own ``nice``).

    ``add(target_host, target_port, delay_s) -> port`` listens on
    ``bind:port`` and forwards each accepted connection to the target; bytes
    read from either side are written to the other side ``delay_s`` seconds
    after they were read, in order. ``close()`` closes everything. Counts the
    bytes it carried (``relayed``) and how late it wrote what it held
    (``lateness``, seconds). It waits with select(2) (microsecond timeouts;
    file descriptors below 1024, plenty for a lab)."""

    def __init__(self, *, netns: str | None = None, nice: int = 0, buffer: int | None = None) -> None:
        self.netns = netns
        self.nice = nice
        self.buffer = buffer
        self._started = threading.Event()
        self._error: BaseException | None = None
        # select(2) takes a timeout in microseconds; epoll's is rounded up to a millisecond,
        # which would add up to 1 ms to every delayed chunk
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        self.relayed = 0
        #: seconds each chunk was written after it was due (when the writer was idle), a sample
        self.lateness: list[float] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="gossamer-delay-relay", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise LabError(f"the delay relay could not enter namespace {netns}: {self._error}")

    def _run(self) -> None:
        try:
            if self.netns is not None:  # Linux: a thread has its own network namespace ...
                _enter_netns(self.netns)
            if self.nice:  # ... and its own nice value
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except BaseException as exc:  # reported by __init__
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def add(self, target_host: str, target_port: int, delay_s: float, bind: str = "0.0.0.0") -> int:
        fut = asyncio.run_coroutine_threadsafe(self._listen(target_host, target_port, delay_s, bind), self.loop)
        return fut.result(timeout=10)

    def _socket(self) -> socket.socket:
        """A TCP socket with the relay's buffers and congestion control, set
        before it connects or listens (the window it offers in the handshake
        follows its buffer then; accepted sockets inherit the listener's)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.buffer:  # tuned: its namespace's sysctls set the congestion control and initial windows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer)
        sock.setblocking(False)
        return sock

    async def _listen(self, host: str, port: int, delay: float, bind: str) -> int:
        loop = asyncio.get_running_loop()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = self._socket()
            try:
                await loop.sock_connect(sock, (host, port))
                up_r, up_w = await asyncio.open_connection(sock=sock)
            except OSError as exc:
                sock.close()
                log.warning("relay to %s:%d: %s", host, port, exc)
                writer.close()
                return
            self._writers.update((writer, up_w))
            await asyncio.gather(self._pump(reader, up_w, delay), self._pump(up_r, writer, delay),
                                 return_exceptions=True)
            for w in (writer, up_w):
                self._writers.discard(w)
                w.close()

        listener = self._socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((bind, 0))
        server = await asyncio.start_server(accept, sock=listener, backlog=128)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        done = False

        async def write_out() -> None:
            while True:
                while not queue:
                    if done:
                        return
                    wake.clear()
                    await wake.wait()
                due, data = queue.popleft()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if len(self.lateness) < 100_000:
                        self.lateness.append(loop.time() - due)
                if data:
                    writer.write(data)
                    await writer.drain()
                    self.relayed += len(data)
                else:  # end of stream, delayed like data
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return

        out = asyncio.ensure_future(write_out())
        try:
            while True:
                data = await reader.read(1 << 16)
                queue.append((loop.time() + delay, data))
                wake.set()
                if not data:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            done = True
            wake.set()
        with contextlib.suppress(ConnectionError, OSError):
            await out

    def close(self) -> None:
        async def shut() -> None:
            for s in self._servers:
                s.close()
            for w in list(self._writers):
                w.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        if self.loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


def _enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (setns(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class NetnsLab:
    """A hub and ``n`` peer namespaces with shaped veth links and one delay
    relay per peer (module docstring). Use as a context manager."""

    def __init__(self, n: int, *, up_bps: float, down_bps: float | None = None, nice: int = 0,
                 tcp: str = "tuned") -> None:
        if n < 1 or n > 250:
            raise ValueError(f"a lab has 1..250 peers, got {n}")
        if tcp not in TCP_MODES:
            raise ValueError(f"tcp must be one of {', '.join(TCP_MODES)}, got {tcp!r}")
        self.n = n
        self.up_bps = float(up_bps)
        self.down_bps = float(down_bps if down_bps is not None else up_bps)
        self.nice = nice
        self.tcp = tcp
        self.tag = secrets.token_hex(3)
        self.hub = f"gsp{self.tag}-hub"
        self.peers: list[LabPeer] = []
        self.relay: DelayRelay | None = None
        self._namespaces: list[str] = []
        self._links: list[str] = []

    def __enter__(self) -> "NetnsLab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _namespace(self, name: str) -> list[str]:
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        inside = ["ip", "netns", "exec", name]
        _run(inside + ["ip", "link", "set", "lo", "up"])
        if self.tcp == "tuned":
            for key, value in TUNED_SYSCTLS.items():
                _run(inside + ["sysctl", "-q", "-w", f"{key}={value}"])
        return inside

    def _build(self) -> None:
        tuned = TUNED_ROUTE if self.tcp == "tuned" else []
        hub = self._namespace(self.hub)
        for i in range(self.n):
            ns = f"gsp{self.tag}-{i}"
            hub_if, ns_if = f"gsp{self.tag}{i}h", f"gsp{self.tag}{i}p"
            gateway, address, subnet = f"10.0.{i + 1}.1", f"10.0.{i + 1}.2", f"10.0.{i + 1}.0/24"
            inside = self._namespace(ns)
            _run(["ip", "link", "add", hub_if, "type", "veth", "peer", "name", ns_if])
            self._links.append(hub_if)
            _run(["ip", "link", "set", hub_if, "netns", self.hub])
            _run(["ip", "link", "set", ns_if, "netns", ns])
            _run(hub + ["ip", "addr", "add", f"{gateway}/24", "dev", hub_if])
            _run(hub + ["ip", "link", "set", hub_if, "up"])
            _run(inside + ["ip", "addr", "add", f"{address}/24", "dev", ns_if])
            _run(inside + ["ip", "link", "set", ns_if, "up"])
            _run(inside + ["ip", "route", "add", "default", "via", gateway] + tuned)
            if tuned:
                for where, dev, src in ((inside, ns_if, address), (hub, hub_if, gateway)):
                    _run(where + ["ip", "route", "change", subnet, "dev", dev, "proto", "kernel", "scope", "link",
                                  "src", src] + tuned)
            _run(inside + ["tc", "qdisc", "add", "dev", ns_if, "root"] + tbf_args(self.up_bps))
            _run(hub + ["tc", "qdisc", "add", "dev", hub_if, "root"] + tbf_args(self.down_bps))
            self.peers.append(LabPeer(i, ns, address, gateway))
        self.relay = DelayRelay(netns=self.hub, nice=self.nice, buffer=TUNED_BUFFER if self.tcp == "tuned" else None)

    def hub_prefix(self) -> list[str]:
        """Run a command in the hub namespace (e.g. the coordinator): ``hub_prefix() + argv``."""
        return ["ip", "netns", "exec", self.hub]

    def relay_to(self, host: str, port: int, delay_s: float) -> int:
        """A delay relay in the hub to ``host:port`` (listening on all the hub's
        addresses); returns its port."""
        assert self.relay is not None, "use the lab inside its with block"
        return self.relay.add(host, port, delay_s)

    def close(self) -> None:
        """Stop the relay, delete the lab's links and namespaces (idempotent; SIGINT
        and SIGTERM wait until it is done, so an impatient second Ctrl-C cannot leave
        namespaces behind)."""
        blocked = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self._close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _close(self) -> None:
        if self.relay is not None:
            with contextlib.suppress(Exception):
                self.relay.close()
            self.relay = None
        for link in self._links:  # gone with their namespaces, unless a move failed half way
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._links, self._namespaces = [], []
