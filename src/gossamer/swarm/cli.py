"""``gossamer coordinator`` and ``gossamer peer``.

Contract: ``add_swarm_commands(subparsers)`` adds the two sub-commands to an
argparse sub-parser set; ``run_swarm_command(args) -> int`` runs the one
chosen (``args.command`` is ``"coordinator"`` or ``"peer"``) and returns the
exit status: 0 on success (a coordinator stopped by SIGTERM/SIGINT, a peer
that finished its rounds or left on SIGTERM), 1 on a runtime failure (lost
coordinator, ...), 2 on bad input (one line naming it). ``main()`` makes the
module runnable on its own: ``python -m gossamer.swarm.cli peer ...``.

The coordinator prints ``coordinator <id> listening on HOST:PORT`` on stdout
as soon as it listens (tests and scripts read the port from it), and with
``--http HOST:PORT`` then ``status page at http://HOST:PORT/`` (the page is
bound first: a busy port is one line and exit 2 before the coordinator
starts; see ``swarm.status``). A peer prints its progress (``PeerProgress``):
one line per committed round (round, step, group, mean local loss, the
validation metric when evaluated, payload bytes sent) and per admission,
abort, rejoin and resync; when stdout is a terminal, the committed rounds
update one live line instead, the other events print above it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ..argtypes import check_writable, help_naming_algorithms
from ..argtypes import nonneg_int as _nonneg_int, positive_float as _positive_float, positive_int as _positive_int
from ..devices import add_device_argument
from ..errors import ConfigError


#: Committed rounds between evaluations of a ``gossamer peer`` (the built-in tasks evaluate in about 0.1 s).
DEFAULT_EVAL_EVERY = 10


def _hostport(text: str) -> str:
    from .protocol import parse_hostport

    try:
        parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_swarm_commands(subparsers: Any) -> None:
    """Add ``coordinator`` and ``peer`` to ``subparsers`` (from ``add_subparsers``)."""
    c = subparsers.add_parser("coordinator", help="run a swarm's coordinator (membership, rounds, hashes)")
    c.add_argument("--listen", type=_hostport, default="127.0.0.1:7000", help="HOST:PORT to listen on (default 127.0.0.1:7000; port 0 picks one)")
    c.add_argument("--key", default=None, help="identity key file (created on first use; default ~/.gossamer/keys/coordinator.pem)")
    c.add_argument("--swarm", default="gossamer", help="swarm id; peers must use the same (default gossamer)")
    c.add_argument("--allow", default=None, metavar="FILE", help="admit only the peer ids listed in FILE (one per line)")
    c.add_argument("--min-peers", type=_positive_int, default=1, help="members needed before round 0 starts (default 1)")
    c.add_argument("--heartbeat-timeout", type=_positive_float, default=10.0, help="seconds without a heartbeat before a member is dropped (default 10)")
    c.add_argument("--events", default=None, metavar="PATH", help="append events (join, commit, abort, resync...) as JSON lines")
    c.add_argument("--straggler-grace", type=_positive_float, default=10.0, metavar="S",
                   help="once a majority is ready, wait at least S seconds (more when recent rounds needed it: median + 4 MAD) for the rest; late members sit the round out (default 10)")
    c.add_argument("--report-grace", type=_positive_float, default=30.0, metavar="S",
                   help="once one member of a round reported its result, seconds the others have at least (it grows "
                        "with the spread seen in earlier rounds); those still silent are blamed and the round retried")
    c.add_argument("--max-failures", type=_positive_int, default=3, metavar="K",
                   help="evict a member whose attempts fail K times in a row for the same local reason (default 3); it exits with that reason")
    c.add_argument("--join-grace", type=_positive_float, default=60.0, metavar="S",
                   help="hold the next round up to S seconds while a joiner fetches the state, so slow transfers get in (default 60)")
    c.add_argument("--rollback-grace", type=_positive_float, default=20.0, metavar="S",
                   help="a swarm with no member goes back to an older --resume checkpoint only after S seconds without a member holding its agreed state (default 20)")
    c.add_argument("--state", default=None, metavar="PATH", help="keep the round and agreed hashes in this SQLite file, so a restarted coordinator resumes where the swarm was")
    c.add_argument("--trace", default=None, metavar="PATH",
                   help="record joins, leaves, stragglers, aborts, commits and exclusions in this SQLite trace (see `gossamer report`; appended to if it exists)")
    c.add_argument("--reset", action="store_true", help="let an empty swarm restart from the next peer's state even if it is not the last agreed one (committed work is otherwise never replaced)")
    c.add_argument("--http", type=_hostport, default=None, metavar="HOST:PORT",
                   help="serve a live, read-only status page (members, rounds, bytes, loss, aborts, exclusions) here; "
                        "port 0 picks a free one; the URL is printed (default: off)")
    c.add_argument("-v", "--verbose", action="count", default=0, dest="swarm_verbose", help="more log output")

    p = subparsers.add_parser("peer", help="join a swarm and train")
    p.add_argument("--coordinator", type=_hostport, required=True, help="HOST:PORT of the coordinator")
    p.add_argument("--coordinator-id", default=None, help="pin the coordinator's peer id (printed when it starts)")
    p.add_argument("--task", default="charlm", help="workload: charlm, digits or quadratic (default charlm, as in `gossamer simulate`)")
    help_naming_algorithms(p.add_argument("--algorithm", default="diloco"), "one of: %(algorithm_names)s (default diloco)")
    p.add_argument("--steps", type=_positive_int, default=None, help="local steps per peer: the run's length, as in `gossamer simulate` (default per task)")
    p.add_argument("--rounds", type=_positive_int, default=None, help="also leave after the swarm's round R (rounds 0..R-1 committed)")
    p.add_argument("--inner-steps", type=_positive_int, default=None, help="H: local steps between syncs (default per task, as in `gossamer simulate`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="an algorithm option (TOML value), e.g. topology=\"torus\" or fragments=2; repeatable")
    p.add_argument("--codec", default=None, help="payload codec spec (default: the algorithm's own, as in the simulator); every peer must use the same")
    p.add_argument("--aggregator", default="mean", help="aggregation rule spec, e.g. median, nnm+cclip (default mean); every peer must use the same")
    p.add_argument("--tolerate", type=_nonneg_int, default=0, help="Byzantine peers the aggregator is configured for (default 0)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the initial model, the shards and the collectives (same on every peer; default 0)")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="when the peer leaves, write the trained model (the swarm's shared parameters) here as "
                        "safetensors; load with model.load_state_dict(safetensors.torch.load_file(PATH))")
    add_device_argument(p, help="where the model trains: cpu (default), cuda or cuda:N; the wire carries CPU bytes "
                                "either way (docs/concepts.md#devices: nothing has been run on a GPU yet)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads of this peer (default: a quarter of the cores, at least 1, so that several peers "
                        "on one machine do not oversubscribe it)")
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="write the committed state here (safetensors + JSON) every --checkpoint-every rounds and at the end")
    p.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="R",
                   help="rounds between checkpoints (default 1: a resumed swarm redoes at most the round in flight)")
    p.add_argument("--resume", default=None, metavar="DIR", help="start from the checkpoint in DIR (e.g. after every peer died); a swarm with no member adopts it, going back to it if it had committed later rounds nobody holds")
    p.add_argument("--deadline-floor", type=_positive_float, default=2.0, metavar="S",
                   help="no collective is aborted for slowness before S seconds (default 2; deadlines otherwise follow the measured link)")
    p.add_argument("--shard", default=None, metavar="I/N", help="train on shard I of N (default: from the peer id, N=16); shard i of a `gossamer simulate` run with N peers is peer i's")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iid", action="store_true", default=None, help="iid shards (default)")
    g.add_argument("--alpha", type=_positive_float, default=None, metavar="A",
                   help="non-iid shards, Dirichlet(A) proportions per label (digits) or per top-level module (charlm); smaller A: more skewed")
    p.add_argument("--audit", type=_nonneg_int, default=0, metavar="S",
                   help="audited all-reduce with S auditors per chunk (at most the group size - 1): holds when chunk owners lie, scores every contribution, and lets the coordinator exclude liars (every peer must use the same; ddp, fedavg, diloco, streaming_diloco; default 0 = plain butterfly)")
    p.add_argument("--attack", default=None, metavar="NAME",
                   help="RED-TEAM ONLY: this peer attacks the swarm: a contributor attack (signflip, ipm, alie, gaussian, labelflip, mimic, freerider, freerider:stale), an owner attack (tamper, equivocate, withhold, statlie, falseaccuse; needs --audit) or a swarm lie (hashlie, scorelie)")
    p.add_argument("--collude", default=None, metavar="DIR:F",
                   help="RED-TEAM ONLY: F attacking peers pool their own updates through the folder DIR (ALIE and IPM estimate the honest statistics from them)")
    p.add_argument("--key", default=None, help="identity key file (created on first use; default ~/.gossamer/keys/peer-N.pem)")
    p.add_argument("--listen", type=_hostport, default="127.0.0.1:0", help="HOST:PORT for peer traffic (default 127.0.0.1:0)")
    p.add_argument("--advertise", type=_hostport, default=None, help="HOST:PORT other peers should dial (default: --listen)")
    p.add_argument("--swarm", default="gossamer", help="swarm id (default gossamer)")
    p.add_argument("--json", dest="swarm_json", default=None, metavar="PATH",
                   help="write the peer's report here: rounds, state hashes, bytes, the loss curve and the validation curve")
    p.add_argument("--eval-every", type=_nonneg_int, default=DEFAULT_EVAL_EVERY, metavar="R",
                   help=f"evaluate the shared model on the task's validation set after every R-th committed round and "
                        f"at the end (0: never; default {DEFAULT_EVAL_EVERY}); the swarm's next round waits for it")
    p.add_argument("--trace", default=None, metavar="PATH",
                   help="record this peer's compute, barrier waits, bytes per link, attempts, scores and aborts in this SQLite trace (see `gossamer report`; appended to if it exists)")
    p.add_argument("-v", "--verbose", action="count", default=0, dest="swarm_verbose", help="more log output")


def _setup_logging(args: argparse.Namespace) -> None:
    verbose = getattr(args, "swarm_verbose", 0) + getattr(args, "verbose", 0)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "swarm_verbose", 0):
        logging.getLogger().setLevel(min(level, logging.getLogger().level))


def run_swarm_command(args: argparse.Namespace) -> int:
    """Run ``args.command`` (``coordinator`` or ``peer``); returns the exit status.

    Errors propagate to ``gossamer.cli.main``, which turns them into one line
    and an exit status."""
    _setup_logging(args)
    if args.command == "coordinator":
        return asyncio.run(_coordinator(args))
    if args.command == "peer":
        return asyncio.run(_peer(args))
    raise ConfigError(f"unknown swarm command {args.command!r}")


def _on_signals(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, fn)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass


async def _coordinator(args: argparse.Namespace) -> int:
    from .coordinator import Coordinator
    from .keys import load_identity
    from .protocol import parse_hostport

    host, port = parse_hostport(args.listen)
    if args.events:
        check_writable(args.events)
    if args.state:
        check_writable(args.state)
    if args.trace:
        check_writable(args.trace)
    allowed = None
    if args.allow:
        try:
            with open(args.allow) as f:
                allowed = frozenset(line.strip() for line in f if line.strip() and not line.startswith("#"))
        except OSError as exc:
            raise ConfigError(f"cannot read the allow-list {args.allow}: {exc}") from None
    identity = load_identity(args.key, coordinator=True)
    page = None
    if args.http:  # bound first: a busy port is one line, exit 2, before the coordinator starts
        from .status import StatusServer

        page = await StatusServer.start(*parse_hostport(args.http))
    try:
        coord = await Coordinator.start(identity, args.swarm, host, port, min_peers=args.min_peers,
                                        heartbeat_timeout=args.heartbeat_timeout, allowed=allowed,
                                        events_path=args.events, state_path=args.state, reset=args.reset,
                                        straggler_grace=args.straggler_grace, report_grace=args.report_grace,
                                        max_failures=args.max_failures,
                                        join_grace=args.join_grace, rollback_grace=args.rollback_grace,
                                        trace=args.trace)
    except BaseException:
        if page is not None:
            await page.close()
        raise
    print(f"coordinator {identity.peer_id} listening on {coord.address[0]}:{coord.address[1]}", flush=True)
    if page is not None:
        from .status import StatusView

        page.view = StatusView(coord)
        print(f"status page at {page.url}", flush=True)
    loop = asyncio.get_running_loop()
    _on_signals(loop, lambda: loop.create_task(coord.close()))
    try:
        await coord.wait_closed()
    finally:
        if page is not None:
            await page.close()
    print(f"coordinator stopped at round {coord.round}: {coord.stats}", flush=True)
    return 0


def _shard_of(text: str | None, peer_id: str) -> tuple[int, int]:
    if text is None:
        return int(peer_id, 16) % 16, 16
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be I/N, got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs with TOML values (a bare word is a string)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--option must be KEY=VALUE, got {item!r}")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value.strip()
    return out


def peer_run_options(algorithm: str, task: str, *, steps: int | None, inner_steps: int | None,
                     overrides: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The run's length and the algorithm's options, with the simulator's defaults
    (``sim.scenario.TASK_DEFAULTS``, ``algorithms.run_options``). An option the
    algorithm does not have raises ``ConfigError`` naming it."""
    from ..algorithms import ALGORITHMS, algorithm_config, run_options
    from ..sim.scenario import TASK_DEFAULTS
    from ..tasks import TASK_NAMES

    if task not in TASK_NAMES:
        raise ConfigError(f"unknown task {task!r}; accepted: {', '.join(TASK_NAMES)}")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; accepted: {', '.join(ALGORITHMS)}")
    fields = {f.name for f in dataclasses.fields(ALGORITHMS[algorithm][1])}
    if inner_steps is not None and "inner_steps" not in fields:
        raise ConfigError(f"--inner-steps does not apply to {algorithm} (it has no inner steps)")
    if inner_steps is not None and "inner_steps" in overrides:
        raise ConfigError("inner_steps given twice (--inner-steps and --option inner_steps=...): give it once")
    steps = steps if steps is not None else TASK_DEFAULTS[task]["steps"]
    h = inner_steps if inner_steps is not None else TASK_DEFAULTS[task]["inner_steps"]
    options = run_options(algorithm, steps=steps, inner_steps=h, overrides=overrides)
    algorithm_config(algorithm, **options)
    return steps, options


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one
    (``taskset``, a container's cpuset), else every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """A peer's default torch thread count: a quarter of ``cores`` (the cores this
    process may use, ``usable_cores``), at least 1.

    Several peers often share one machine (tests, demos, a lab box); torch's own
    default (every core, per process) oversubscribes it: 3 peers on 2 cores took
    212 s for 20 rounds with it and 11 s with one thread each."""
    return max(1, (cores if cores is not None else usable_cores()) // 4)


async def _peer(args: argparse.Namespace) -> int:
    import torch

    from ..devices import resolve_device, to_device
    from ..tasks import make_task
    from ..tasks.weights import save_model
    from .keys import load_identity
    from .peer import Peer

    torch.set_num_threads(args.threads or default_threads())

    steps, options = peer_run_options(args.algorithm, args.task, steps=args.steps, inner_steps=args.inner_steps,
                                      overrides=parse_options(args.option))
    for out in (args.swarm_json, args.trace, args.save):
        if out:
            check_writable(out)
    task_options: dict[str, Any] = {"iid": args.alpha is None}
    if args.alpha is not None:
        task_options["alpha"] = args.alpha
    task = make_task(args.task, **task_options)
    identity = load_identity(args.key)
    device = resolve_device(args.device)
    model = task.make_model(args.seed).to(device)

    def loss(model: Any, batch: Any) -> Any:
        return task.loss(model, to_device(batch, device))
    poison_at = os.environ.get("GOSSAMER_TEST_NONFINITE_STEP")
    if poison_at:  # test-only fault, injected here rather than in the runtime: one +inf loss at local step N
        calls = {"n": 0}

        def loss(model: Any, batch: Any) -> Any:  # noqa: F811 - the poisoned variant
            calls["n"] += 1
            value = task.loss(model, to_device(batch, device))
            return value * float("inf") if calls["n"] == int(poison_at) else value
    index, count = _shard_of(args.shard, identity.peer_id)
    shard = task.shard(index, count, seed=args.seed, **({"label_flip": True} if args.attack == "labelflip" else {}))

    metric = getattr(task, "metric_name", None) or "val_loss"
    progress = PeerProgress(identity.peer_id, metric)
    peer = Peer(model, loss, coordinator=args.coordinator, algorithm=args.algorithm, identity=identity,
                listen=args.listen, advertise=args.advertise, swarm_id=args.swarm, coordinator_id=args.coordinator_id,
                fingerprint=f"task={args.task} seed={args.seed} steps={steps}", progress=progress, codec=args.codec,
                aggregator=args.aggregator, tolerate=args.tolerate, seed=args.seed, deadline_floor=args.deadline_floor,
                checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume,
                audit=args.audit, attack=args.attack, collude=args.collude, trace=args.trace,
                evaluate=task.evaluate if args.eval_every else None, eval_every=args.eval_every, metric=metric,
                **options)
    _on_signals(asyncio.get_running_loop(), peer.request_stop)

    def batches() -> Any:
        while True:
            yield shard.next_batch()

    try:
        report = await peer.run(batches(), steps=steps, rounds=args.rounds)
    finally:
        progress.close()
        if args.swarm_json and peer.report is not None:
            peer.report.write(args.swarm_json)
    print(f"peer {report.peer_id}: left after {report.rounds_completed} rounds, {report.steps} steps, "
          f"{report.aborts} aborts, {human_bytes(report.payload_bytes_sent)} of payload sent, "
          f"final state {str(report.final_state_hash)[:16]}", flush=True)
    if args.save:
        save_model(peer.algo.eval_model(), args.save)
        print(f"peer {report.peer_id}: wrote the trained model to {args.save}", flush=True)
    return 0


def human_bytes(n: float | None) -> str:
    """``n`` bytes as text with a decimal unit (``"12.3 KB"``); "-" for None."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def commit_line(event: dict[str, Any], metric: str = "") -> str:
    """The text of one ``commit`` progress event (see ``swarm.peer``), without the peer prefix:
    ``round 5 committed at step 60, group of 2, loss 0.4123, val_accuracy 0.9111, sent 12.3 KB
    (+2.1 KB), hash 9d4286acdd332ee4``."""
    members = event.get("members")
    group = event.get("group")
    parts = [f"round {event['round']} committed at step {event.get('step')}",
             f"group of {group}" + (f" ({members} in the swarm)" if isinstance(members, int) and isinstance(group, int) and members > group else ""),
             f"loss {_num(event.get('loss'))}"]
    val = event.get("val")
    if val:
        parts.append(f"{val.get('metric') or metric} {_num(val.get('value'))}")
    if "payload_bytes_sent" in event:
        parts.append(f"sent {human_bytes(event['payload_bytes_sent'])} (+{human_bytes(event.get('round_bytes'))})")
    parts.append(f"hash {str(event.get('hash'))[:16]}")
    return ", ".join(parts)


class PeerProgress:
    """Prints a peer's progress events (``Peer(progress=...)``): plain lines, one per
    committed round and per other event, when ``stream`` (default stdout) is not a
    terminal; when it is (or ``live=True``), one rich line updated in place with each
    commit, the other events printed above it and log records routed above it too.
    ``close()`` ends the live line (idempotent)."""

    def __init__(self, peer_id: str, metric: str = "", *, stream: TextIO | None = None, live: bool | None = None) -> None:
        from rich.console import Console

        self.peer_id = peer_id
        self.metric = metric
        self.stream = stream if stream is not None else sys.stdout
        self.console = Console(file=self.stream, highlight=False, markup=False, force_terminal=live)
        self.live_mode = self.console.is_terminal if live is None else live
        self._live: Any = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._last_val: dict[str, Any] | None = None
        self._aborts = 0
        self._rejoins = 0

    def _say(self, text: str) -> None:
        line = f"peer {self.peer_id}: {text}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def _start_live(self) -> None:
        from rich.live import Live

        self._live = Live("", console=self.console, auto_refresh=False, transient=False, redirect_stdout=True,
                          redirect_stderr=True)
        self._live.start()
        for handler in logging.getLogger().handlers:  # log records print above the live line, not through it
            if type(handler) is logging.StreamHandler and handler.stream in (sys.__stderr__, sys.__stdout__):
                self._handlers.append((handler, handler.setStream(sys.stderr)))

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "commit":
            if event.get("val"):
                self._last_val = event["val"]
            if not self.live_mode:
                self._say(commit_line(event, self.metric))
                return
            if self._live is None:
                self._start_live()
            self._live.update(self._status(event), refresh=True)
        elif kind == "eval":
            if event.get("final"):
                self._say(f"{event.get('metric') or self.metric} {_num(event.get('value'))} (validation loss "
                          f"{_num(event.get('loss'))}) after round {event.get('round')}, step {event.get('step')}")
        elif kind == "admitted":
            self._say(f"admitted to round {event['round']}")
        elif kind == "resumed":
            self._say(f"resumed from the checkpoint of round {event['round']}")
        elif kind == "waiting":
            self._say(f"waiting: {event.get('reason')}")
        elif kind == "abort":
            self._aborts += 1
            self._say(f"round {event.get('round')} aborted ({event.get('reason')}); retrying")
        elif kind == "rejoin":
            self._rejoins += 1
            self._say(f"rejoining the swarm at round {event.get('round')}: {event.get('reason')}")
        elif kind == "resync":
            self._say(f"round {event.get('round')}: our state differed from the majority; resynced from {event.get('source')}")
        else:
            self._say(f"{kind} round {event.get('round')} {event.get('reason') or event.get('source') or ''}".rstrip())

    def _status(self, event: dict[str, Any]) -> Any:
        """The live line: ``round 78  step 200  loss 0.05777  val_accuracy 0.9472 (round 69)  sent 36.0 KB  group 3``."""
        from rich.text import Text

        members, group = event.get("members"), event.get("group")
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"round {event['round']}", style="bold")
        text.append(f"  step {event.get('step')}  loss {_num(event.get('loss'))}")
        val = self._last_val
        if val:
            text.append(f"  {val.get('metric') or self.metric} {_num(val.get('value'))}", style="green")
            text.append(f" (round {val.get('round')})", style="dim")
        text.append(f"  sent {human_bytes(event.get('payload_bytes_sent'))}  group {group}"
                    + (f" of {members}" if isinstance(members, int) and isinstance(group, int) and members > group else ""))
        if self._aborts or self._rejoins:
            text.append(f"  aborts {self._aborts}  rejoins {self._rejoins}", style="red")
        return text

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        for handler, old in self._handlers:
            handler.setStream(old)
        self._handlers = []


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gossamer.swarm.cli ...`` is ``gossamer ...`` (same parser, same error handling)."""
    from ..cli import main as gossamer_main

    return gossamer_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
