"""Scenarios: everything that defines a simulated run, validated up front.

Contract: ``Scenario`` is a frozen dataclass; ``Scenario.from_toml(path)`` and
the CLI build the same object, and any bad value (unknown key, unknown task
or algorithm, non-positive count, unparsable link, a device this machine
does not have) raises ``ConfigError`` with one line that names the problem
and the accepted values.

``task`` is a built-in task's name or a task object of the user's
(docs/own-task.md). A task object is checked for the protocol's shape here
(``TaskError`` naming what is missing or mistyped); its ``name`` (or class
name) is what results, tables and traces call it. TOML files and the command
line name built-in tasks only; a user's task comes in through Python
(``gossamer.simulate(task=MyTask(...))``, or ``Scenario.from_toml(path,
task=MyTask(...))``). Steps: a built-in task has defaults
(``TASK_DEFAULTS``, also for a built-in task object from ``make_task``); a user's task uses its ``default_steps`` /
``default_inner_steps`` attributes when it has them, else ``steps`` must be
given (``ConfigError`` otherwise) and each algorithm runs with its own
default ``inner_steps``. ``task_options``, ``alpha`` and ``iid = false``
configure built-in tasks only: with a task object they are a ``ConfigError``
(the object is configured when it is built).

TOML keys are the field names below, e.g.::

    task = "charlm"
    algorithms = ["ddp", "diloco"]
    peers = 8
    steps = 600
    inner_steps = 100
    link = "100mbit,50ms" # every peer's access link: UP[/DOWN],LATENCY[,LOSS], e.g. "10mbit/100mbit,20ms"
    coordinator = "100mbit,50ms"  # model the swarm's coordinator on this link: each round waits for its
                          # barrier and its commit decision (two round trips); absent: no coordinator
    round_overhead = 0.05 # seconds of the swarm's own work per round beyond compute and network (state
                          # snapshots, hashes, codec, the coordinator's processing); measure it on your
                          # machines (gossamer bench predict measures it with an unshaped run); default 0
    iid = true            # or: alpha = 0.5  (non-iid)
    seed = 0
    codec = "int8"        # payload codec spec for every algorithm, e.g. "none", "topk:0.001+ef"
                          # (absent: each algorithm's default, see docs/algorithms.md)
    aggregator = "mean"   # robust rule spec, e.g. "nnm+cclip"
    byzantine = 0         # the last F peers are Byzantine ...
    attack = "alie"       # ... and do this (required when byzantine > 0)
    tolerate = 0          # f the aggregator is configured for (default: byzantine)
    audit = 1             # audited all-reduce with this many auditors per chunk, scores, exclusion (0: off)
    collude = true        # Byzantine peers know only each other's updates, as over TCP (else: omniscient)
    threads = 1           # torch intra-op threads (1: fastest for many small peers, and exactly repeatable)
    peer_ids = ["..."]    # the peers' ids in rank order (default p0..pN-1): rehearse a real swarm bit for bit
    trace = "sim.trace"   # write an event trace (docs/trace.md); with several algorithms one file
                          # each, the algorithm before the extension: sim-ddp.trace, sim-diloco.trace
    save = "model.safetensors"  # write peer 0's trained (shared) model as safetensors; several
                          # algorithms: one file each, named as the traces are
    device = "cpu"        # where the models run: cpu, cuda or cuda:N (the wire stays CPU bytes)
    [[peer_profiles]]     # some peers differ from the rest (repeatable; the others use `link`, scale 1)
    count = 2             # which: count = N (the next N ranks not yet given a profile, from rank 0),
                          # fraction = 0.25 (the same, round(0.25 * peers) of them) or ranks = [0, 5]
    link = "10mbit/50mbit,40ms"   # their own access link (default: `link`)
    compute_scale = 2.0   # their compute time per step times this (2.0: half as fast; default 1)
    [churn]               # failures, joins and stragglers (sim/churn.py, docs/concepts.md "Churn")
    mtbf = 3600           # each peer fails after Exp(mtbf) simulated seconds online
    joins_per_hour = 4    # new peers arrive as a Poisson process (at most max_joins, default: peers)
    stragglers = 0.1      # probability that a peer is slow in a round ...
    slowdown = "pareto:1.5"   # ... and by what factor: fixed:F, uniform:A,B, lognormal:SIGMA, pareto:ALPHA
    straggler_grace = 10.0    # the coordinator's straggler deadline floor, s (as --straggler-grace)
    events = [{round = 3, peer = 1, kind = "crash"}]  # and/or an exact schedule (leave, crash, join, slow)
    [task_options]        # passed to the task (batch_size, layers, ...)
    [algorithm_options.diloco]
    outer_lr = 0.7
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..algorithms import ALGORITHM_NAMES, algorithm_config, check_algorithm_names
from ..devices import resolve_device
from ..errors import ConfigError
from ..tasks import TASK_NAMES
from ..tasks.protocol import check_task, is_builtin, supports_label_flip, task_name
from ..transport.sim import LinkSpec
from .churn import Churn


#: Defaults per task: steps, inner steps, evaluation points. Chosen so the
#: default charlm comparison (8 peers, ddp + diloco) runs in minutes on 2 cores.
TASK_DEFAULTS: dict[str, dict[str, int]] = {
    "charlm": {"steps": 600, "inner_steps": 15},
    "digits": {"steps": 300, "inner_steps": 25},
    "quadratic": {"steps": 200, "inner_steps": 10},
}


#: Attacks on the protocol rather than on the update (they need ``audit``).
PROTOCOL_ATTACKS = ("tamper", "equivocate", "withhold", "statlie", "falseaccuse", "hashlie", "scorelie")


@dataclass(frozen=True)
class Scenario:
    task: Any = "charlm"  # a built-in task's name (TASK_NAMES) or a task object (docs/own-task.md)
    algorithms: tuple[str, ...] = ("ddp", "diloco")
    peers: int = 8
    steps: int | None = None
    inner_steps: int | None = None
    link: str = "100mbit,50ms"
    coordinator: str | None = None
    round_overhead: float = 0.0
    peer_profiles: tuple[dict[str, Any], ...] = ()
    churn: Any = None
    iid: bool = True
    alpha: float | None = None
    seed: int = 0
    evals: int = 10
    compute_time: float | None = None
    codec: str | None = None
    aggregator: str = "mean"
    byzantine: int = 0
    attack: str | None = None
    tolerate: int | None = None
    threads: int = 1
    peer_ids: tuple[str, ...] | None = None
    trace: str | None = None
    audit: int = 0
    collude: bool = False
    save: str | None = None
    device: str = "cpu"
    task_options: dict[str, Any] = field(default_factory=dict)
    algorithm_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        defaults = self._check_task()
        algos = check_algorithm_names(self.algorithms)
        object.__setattr__(self, "algorithms", algos)
        _positive_int("peers", self.peers)
        if self.peers < 2:
            raise ConfigError(f"peers must be >= 2 for a swarm, got {self.peers}")
        churn = Churn.parse(self.churn)
        if churn is not None and not churn.active:
            churn = None
        object.__setattr__(self, "churn", churn)
        if churn is not None:
            churn.check_for(self.peers)
        if self.peer_ids is not None:
            ids = tuple(str(x) for x in self.peer_ids)
            object.__setattr__(self, "peer_ids", ids)
            if len(ids) != self.slots or len(set(ids)) != len(ids):
                joiners = f" and {self.slots - self.peers} joiner slot(s)" if self.slots != self.peers else ""
                raise ConfigError(f"peer_ids must be {self.slots} distinct ids (one per peer{joiners}, in slot order), "
                                  f"got {len(ids)}")
        if self.steps is None:
            if defaults["steps"] is None:
                raise ConfigError(f"steps is required with your own task {self.task_name!r}: give steps=N "
                                  f"(or set default_steps on the task); built-in tasks have defaults")
            object.__setattr__(self, "steps", defaults["steps"])
        if self.inner_steps is None:
            object.__setattr__(self, "inner_steps", defaults["inner_steps"])
        _positive_int("steps", self.steps)
        if self.inner_steps is not None:  # None: each algorithm's own default (a user's task without one)
            _positive_int("inner_steps", self.inner_steps)
        _positive_int("evals", self.evals)
        _positive_int("threads", self.threads)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        LinkSpec.parse(self.link)
        if self.coordinator is not None:
            if not isinstance(self.coordinator, str):
                raise ConfigError(f"coordinator must be a link spec string such as '100mbit,20ms', got {self.coordinator!r}")
            LinkSpec.parse(self.coordinator)
        object.__setattr__(self, "peer_profiles", _check_profiles(self.peer_profiles, self.peers))
        ro = self.round_overhead
        if isinstance(ro, bool) or not isinstance(ro, (int, float)) or not (math.isfinite(ro) and ro >= 0):
            raise ConfigError(f"round_overhead must be a finite number of seconds >= 0, got {ro!r}")
        if self.alpha is not None:
            if not self.alpha > 0:
                raise ConfigError(f"alpha (Dirichlet concentration) must be > 0, got {self.alpha}")
            object.__setattr__(self, "iid", False)
        if self.compute_time is not None and not self.compute_time > 0:
            raise ConfigError(f"compute_time must be > 0 seconds per step, got {self.compute_time}")
        object.__setattr__(self, "device", str(resolve_device(self.device)))
        self._check_robustness()
        self._check_churn()
        self._check_trace()
        self._check_save()
        unknown = sorted(set(self.algorithm_options) - set(ALGORITHM_NAMES))
        if unknown:
            raise ConfigError(f"algorithm_options for unknown algorithm(s) {', '.join(unknown)}; accepted: {', '.join(ALGORITHM_NAMES)}")
        from ..algorithms import ALGORITHMS

        for a in algos:
            algorithm_config(a, **self.options_for(a))
            ALGORITHMS[a][0].check_codec(self.codec_for(a))

    @property
    def slots(self) -> int:
        """Peers the run may have: ``peers`` plus the joiner slots of ``churn``."""
        return self.peers + (self.churn.join_slots(self.peers) if self.churn is not None else 0)

    def _check_churn(self) -> None:
        if self.churn is None:
            return
        no_group = [a for a in self.algorithms if a in ("gossip", "noloco")]
        if no_group:
            raise ConfigError(f"churn is modelled for algorithms whose members agree on one state each round; "
                              f"{' and '.join(no_group)} {'have' if len(no_group) > 1 else 'has'} no swarm-wide round "
                              f"(drop {'them' if len(no_group) > 1 else 'it'} or the churn)")
        if self.audit or self.byzantine:
            raise ConfigError("churn with audit or Byzantine peers is not modelled yet: run them separately")
        if "streaming_diloco" in self.algorithms and algorithm_config("streaming_diloco", **self.options_for("streaming_diloco")).tau:
            raise ConfigError("churn with streaming_diloco is modelled without overlap only: a peer that joins or "
                              "comes back while a fragment is in flight has no part in it (in a real swarm the "
                              "attempt aborts and is re-run); give --option tau=0 (or [algorithm_options."
                              "streaming_diloco] tau = 0)")

    def _check_task(self) -> dict[str, int | None]:
        """Check ``task`` (and the task-only fields); return its step defaults."""
        if isinstance(self.task, str):
            if self.task not in TASK_NAMES:
                raise ConfigError(f"unknown task {self.task!r}; accepted: {', '.join(TASK_NAMES)}, "
                                  f"or a task object of your own (docs/own-task.md)")
            return dict(TASK_DEFAULTS[self.task])
        check_task(self.task)
        name = self.task_name
        if self.task_options:
            raise ConfigError(f"task_options configure built-in tasks; task {name!r} is your own object: "
                              f"configure it when you build it (got {', '.join(sorted(self.task_options))})")
        if self.alpha is not None or not self.iid:
            raise ConfigError(f"alpha and iid choose the shards of built-in tasks; your task {name!r} "
                              f"splits its data itself, in shard()")
        if is_builtin(self.task):  # a built-in task built with make_task(name, **options)
            return dict(TASK_DEFAULTS[self.task.name])
        return {"steps": getattr(self.task, "default_steps", None),
                "inner_steps": getattr(self.task, "default_inner_steps", None)}

    @property
    def task_name(self) -> str:
        """The task's name: a built-in's, or a task object's ``name`` (else its class name)."""
        return task_name(self.task)

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data (a task object by its name), e.g. for a trace's metadata."""
        out: dict[str, Any] = {"task": self.task_name}
        for f in dataclasses.fields(self):
            if f.name == "churn":
                out[f.name] = self.churn.as_dict() if self.churn is not None else None
            elif f.name != "task":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        return out

    def _check_robustness(self) -> None:
        from ..aggregate import make_aggregator
        from ..codecs import make_codec
        if self.codec is not None:
            make_codec(self.codec)
        if not isinstance(self.byzantine, int) or isinstance(self.byzantine, bool) or self.byzantine < 0:
            raise ConfigError(f"byzantine must be a non-negative integer, got {self.byzantine!r}")
        if self.byzantine >= self.peers:
            raise ConfigError(f"byzantine must be < peers ({self.peers}): at least one honest peer is needed, got {self.byzantine}")
        if self.tolerate is None:
            object.__setattr__(self, "tolerate", self.byzantine)
        if not isinstance(self.tolerate, int) or isinstance(self.tolerate, bool) or self.tolerate < 0:
            raise ConfigError(f"tolerate must be a non-negative integer, got {self.tolerate!r}")
        make_aggregator(self.aggregator, self.tolerate).check(self.peers)
        if isinstance(self.audit, bool) or not isinstance(self.audit, int) or self.audit < 0:
            raise ConfigError(f"audit must be the number of auditors per chunk (0 = off), got {self.audit!r}")
        if self.audit and self.audit > self.peers - 1:
            raise ConfigError(f"audit must be at most peers - 1 = {self.peers - 1} auditors per chunk, got {self.audit}")
        if self.collude and not self.byzantine:
            raise ConfigError("collude is for Byzantine peers: add --byzantine F and --attack NAME")
        if self.audit:
            from ..algorithms import ALGORITHMS  # noqa: PLC0415
            for a in self.algorithms:
                if not ALGORITHMS[a][0].individual_contributions:
                    raise ConfigError(f"--audit does not apply to {a}: it has no all-reduce of individual contributions to audit")
            from ..comm.audit import check_audit_codec  # noqa: PLC0415
            from ..comm import make_run_codec  # noqa: PLC0415
            for a in self.algorithms:
                check_audit_codec(make_run_codec(self.codec_for(a)))
        if self.attack is not None and self.attack in PROTOCOL_ATTACKS:
            if self.byzantine == 0:
                raise ConfigError(f"attack {self.attack!r} needs Byzantine peers: add --byzantine F")
            if self.attack == "withhold":
                raise ConfigError("attack 'withhold' needs real deadlines, which the simulator does not model; "
                                  "run it over TCP (gossamer bench trust)")
            if not self.audit:
                what = ("lies to the coordinator about audited rounds" if self.attack in ("hashlie", "scorelie")
                        else "lies inside the audited all-reduce")
                raise ConfigError(f"attack {self.attack!r} {what}: add --audit 1")
        elif self.attack is not None:
            attack = self.make_attack()
            if self.byzantine == 0:
                raise ConfigError(f"attack {self.attack!r} needs Byzantine peers: add --byzantine F")
            if attack.data_poisoning and isinstance(self.task, str) and self.task != "digits":
                raise ConfigError(f"attack {self.attack!r} poisons labels, which only the digits task has (task is {self.task!r})")
            if attack.data_poisoning and not isinstance(self.task, str) and not supports_label_flip(self.task):
                raise ConfigError(f"attack {self.attack!r} poisons labels: your task {self.task_name!r} needs "
                                  f"shard(peer, n_peers, *, seed, label_flip=False) to accept label_flip")
        elif self.byzantine:
            raise ConfigError(f"{self.byzantine} Byzantine peer(s) but no attack: add --attack NAME")
        from ..algorithms import ALGORITHMS

        for a in self.algorithms:
            if self.byzantine and not ALGORITHMS[a][0].individual_contributions:
                raise ConfigError(f"algorithm {a!r} does not carry individual contributions, so --byzantine does not apply to it")
            if self.aggregator != "mean" and not ALGORITHMS[a][0].individual_contributions:
                raise ConfigError(f"algorithm {a!r} does not carry individual contributions, so --aggregator does not apply to it")
        if self.codec is not None and all(not ALGORITHMS[a][0].uses_codec for a in self.algorithms):
            raise ConfigError(f"--codec does not apply to {', '.join(self.algorithms)}: "
                              "spsa sends one quantized byte per step, not a codec payload")

    def _check_trace(self) -> None:
        if self.trace is None:
            return
        if not isinstance(self.trace, str) or not self.trace.strip():
            raise ConfigError(f"trace must be a file path, got {self.trace!r}")
        from ..argtypes import check_writable

        for target in dict.fromkeys([self.trace, *(str(self.trace_path(a)) for a in self.algorithms)]):
            check_writable(target)

    def _check_save(self) -> None:
        if self.save is None:
            return
        if not isinstance(self.save, str) or not self.save.strip():
            raise ConfigError(f"save must be a file path, got {self.save!r}")
        from ..argtypes import check_writable

        for target in dict.fromkeys(str(self.save_path(a)) for a in self.algorithms):
            check_writable(target)

    def _per_algorithm(self, given: str | None, algorithm: str) -> Path | None:
        if given is None:
            return None
        path = Path(given).expanduser()
        if len(self.algorithms) == 1:
            return path
        return path.with_name(f"{path.stem}-{algorithm}{path.suffix}")

    def trace_path(self, algorithm: str) -> Path | None:
        """Where ``algorithm``'s trace goes: ``trace`` itself when the scenario
        runs one algorithm; with several, one file per algorithm, named with
        ``-<algorithm>`` before the extension (``run.trace`` -> ``run-ddp.trace``).
        ``None`` without a trace."""
        return self._per_algorithm(self.trace, algorithm)

    def save_path(self, algorithm: str) -> Path | None:
        """Where ``algorithm``'s trained model goes (``save``), named as
        ``trace_path`` names traces (``m.safetensors`` -> ``m-ddp.safetensors``
        with several algorithms); ``None`` without ``save``."""
        return self._per_algorithm(self.save, algorithm)

    def make_attack(self) -> Any:
        """The scenario's attack object (``None`` without one)."""
        from .attacks import make_attack

        if self.attack is None or self.attack in PROTOCOL_ATTACKS:
            return None
        return make_attack(self.attack)

    def protocol_attack(self) -> str | None:
        """The owner-side or swarm-level attack name (``comm/byzantine.py``, hashlie, scorelie), if any."""
        return self.attack if self.attack in PROTOCOL_ATTACKS else None

    def codec_for(self, algorithm: str) -> str:
        """The codec spec ``algorithm`` runs with: the scenario's, else the algorithm's default."""
        from ..algorithms import ALGORITHMS

        cls = ALGORITHMS[algorithm][0]
        if not cls.uses_codec:
            return "none"
        return self.codec if self.codec is not None else cls.default_codec

    @property
    def link_spec(self) -> LinkSpec:
        return LinkSpec.parse(self.link)

    @property
    def coordinator_spec(self) -> LinkSpec | None:
        """The coordinator's link (``None``: the simulated rounds have no coordinator)."""
        return LinkSpec.parse(self.coordinator) if self.coordinator is not None else None

    def peer_link(self, rank: int) -> LinkSpec:
        """The access link of the peer of rank ``rank``: its profile's, else ``link``."""
        profile = _profile_of(self.peer_profiles, rank, self.peers)
        return LinkSpec.parse(profile.get("link", self.link)) if profile is not None else self.link_spec

    def compute_scale(self, rank: int) -> float:
        """The factor on the compute time per step of the peer of rank ``rank`` (1.0 without a profile)."""
        profile = _profile_of(self.peer_profiles, rank, self.peers)
        return float(profile.get("compute_scale", 1.0)) if profile is not None else 1.0

    def options_for(self, algorithm: str) -> dict[str, Any]:
        """Options of ``algorithm``: the scenario's inner_steps and steps plus its
        own overrides (``algorithms.run_options``, shared with the swarm peer)."""
        from ..algorithms import run_options

        return run_options(algorithm, steps=int(self.steps), inner_steps=self.inner_steps,
                           overrides=self.algorithm_options.get(algorithm, {}))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "Scenario":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"scenario file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"scenario file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path), **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "scenario", **overrides: Any) -> "Scenario":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {source}; accepted: {', '.join(names)}")
        merged = dict(data)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(merged.get("algorithms"), str):
            merged["algorithms"] = tuple(a.strip() for a in merged["algorithms"].split(",") if a.strip())
        return cls(**merged)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


_PROFILE_KEYS = ("count", "fraction", "ranks", "link", "compute_scale")


def _check_profiles(profiles: Any, peers: int) -> tuple[dict[str, Any], ...]:
    """``peer_profiles`` checked (one ``ConfigError`` line naming the profile and
    the problem) and normalised to a tuple of plain dicts."""
    if profiles is None:
        return ()
    if isinstance(profiles, dict) or not isinstance(profiles, (list, tuple)):
        raise ConfigError(f"peer_profiles must be a list of tables ([[peer_profiles]] in TOML), got {profiles!r}")
    out = tuple(dict(p) if isinstance(p, dict) else p for p in profiles)
    for k, p in enumerate(out):
        where = f"peer_profiles[{k}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where} must be a table with count, fraction or ranks (and link, compute_scale), got {p!r}")
        unknown = sorted(set(p) - set(_PROFILE_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where}; accepted: {', '.join(_PROFILE_KEYS)}")
        which = [key for key in ("count", "fraction", "ranks") if key in p]
        if len(which) != 1:
            raise ConfigError(f"{where} needs exactly one of count, fraction or ranks to say which peers it is for, "
                              f"got {', '.join(which) or 'none'}")
        if "count" in p:
            c = p["count"]
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ConfigError(f"{where}: count must be a positive integer, got {c!r}")
        if "fraction" in p:
            f = p["fraction"]
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ConfigError(f"{where}: fraction must be a number in (0, 1], got {f!r}")
            if round(f * peers) < 1:
                raise ConfigError(f"{where}: fraction {f:g} of {peers} peers is no peer (round({f:g} * {peers}) = 0)")
        if "ranks" in p:
            r = p["ranks"]
            if not isinstance(r, (list, tuple)) or not r or any(isinstance(x, bool) or not isinstance(x, int) for x in r):
                raise ConfigError(f"{where}: ranks must be a non-empty list of peer ranks (integers), got {r!r}")
            bad = [x for x in r if not 0 <= x < peers]
            if bad:
                raise ConfigError(f"{where}: rank(s) {', '.join(map(str, bad))} out of range: ranks are 0..{peers - 1}")
            if len(set(r)) != len(r):
                raise ConfigError(f"{where}: a rank is listed twice in {list(r)}")
            p["ranks"] = list(r)
        if "link" in p:
            if not isinstance(p["link"], str):
                raise ConfigError(f"{where}: link must be a link spec string such as '10mbit/100mbit,20ms', got {p['link']!r}")
            try:
                LinkSpec.parse(p["link"])
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if "compute_scale" in p:
            c = p["compute_scale"]
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c > 0):
                raise ConfigError(f"{where}: compute_scale must be a finite number > 0 (2.0: half as fast), got {c!r}")
    _assign_profiles(out, peers)  # overlaps and too many peers fail here
    return out


def _assign_profiles(profiles: tuple[dict[str, Any], ...], peers: int) -> list[int | None]:
    """The profile index of each rank (``None``: no profile). Profiles with
    ``ranks`` claim theirs first; then, in order, each ``count``/``fraction``
    profile takes the lowest ranks not yet claimed."""
    owner: list[int | None] = [None] * peers
    for k, p in enumerate(profiles):
        for r in p.get("ranks", ()):
            if owner[r] is not None:
                raise ConfigError(f"peer_profiles[{k}]: rank {r} is already in peer_profiles[{owner[r]}]")
            owner[r] = k
    for k, p in enumerate(profiles):
        if "ranks" in p:
            continue
        n = p["count"] if "count" in p else round(p["fraction"] * peers)
        free = [r for r in range(peers) if owner[r] is None]
        if n > len(free):
            raise ConfigError(f"peer_profiles[{k}] wants {n} peer(s) but only {len(free)} of the {peers} have no profile yet")
        for r in free[:n]:
            owner[r] = k
    return owner


def _profile_of(profiles: tuple[dict[str, Any], ...], rank: int, peers: int) -> dict[str, Any] | None:
    if not profiles:
        return None
    k = _assign_profiles(profiles, peers)[rank]
    return profiles[k] if k is not None else None
