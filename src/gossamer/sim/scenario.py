"""Scenarios: everything that defines a simulated run, validated up front.

Contract: ``Scenario`` is a frozen dataclass; ``Scenario.from_toml(path)`` and
the CLI build the same object, and any bad value (unknown key, unknown task
or algorithm, non-positive count, unparsable link) raises ``ConfigError`` with
one line that names the problem and the accepted values.

TOML keys are the field names below, e.g.::

    task = "charlm"
    algorithms = ["ddp", "diloco"]
    peers = 8
    steps = 600
    inner_steps = 100
    link = "100mbit,50ms"
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
    [task_options]        # passed to the task (batch_size, layers, ...)
    [algorithm_options.diloco]
    outer_lr = 0.7
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..algorithms import ALGORITHM_NAMES, algorithm_config
from ..errors import ConfigError
from ..tasks import TASK_NAMES
from ..transport.sim import LinkSpec


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
    task: str = "charlm"
    algorithms: tuple[str, ...] = ("ddp", "diloco")
    peers: int = 8
    steps: int | None = None
    inner_steps: int | None = None
    link: str = "100mbit,50ms"
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
    task_options: dict[str, Any] = field(default_factory=dict)
    algorithm_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ConfigError(f"unknown task {self.task!r}; accepted: {', '.join(TASK_NAMES)}")
        algos = tuple(self.algorithms)
        object.__setattr__(self, "algorithms", algos)
        if not algos:
            raise ConfigError(f"no algorithms given; accepted: {', '.join(ALGORITHM_NAMES)}")
        for a in algos:
            if a not in ALGORITHM_NAMES:
                raise ConfigError(f"unknown algorithm {a!r}; accepted: {', '.join(ALGORITHM_NAMES)}")
        if len(set(algos)) != len(algos):
            raise ConfigError(f"algorithm listed twice in {','.join(algos)}")
        _positive_int("peers", self.peers)
        if self.peers < 2:
            raise ConfigError(f"peers must be >= 2 for a swarm, got {self.peers}")
        if self.peer_ids is not None:
            ids = tuple(str(x) for x in self.peer_ids)
            object.__setattr__(self, "peer_ids", ids)
            if len(ids) != self.peers or len(set(ids)) != len(ids):
                raise ConfigError(f"peer_ids must be {self.peers} distinct ids (one per peer, in rank order), got {len(ids)}")
        defaults = TASK_DEFAULTS[self.task]
        if self.steps is None:
            object.__setattr__(self, "steps", defaults["steps"])
        if self.inner_steps is None:
            object.__setattr__(self, "inner_steps", defaults["inner_steps"])
        _positive_int("steps", self.steps)
        _positive_int("inner_steps", self.inner_steps)
        _positive_int("evals", self.evals)
        _positive_int("threads", self.threads)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        LinkSpec.parse(self.link)
        if self.alpha is not None:
            if not self.alpha > 0:
                raise ConfigError(f"alpha (Dirichlet concentration) must be > 0, got {self.alpha}")
            object.__setattr__(self, "iid", False)
        if self.compute_time is not None and not self.compute_time > 0:
            raise ConfigError(f"compute_time must be > 0 seconds per step, got {self.compute_time}")
        self._check_robustness()
        self._check_trace()
        unknown = sorted(set(self.algorithm_options) - set(ALGORITHM_NAMES))
        if unknown:
            raise ConfigError(f"algorithm_options for unknown algorithm(s) {', '.join(unknown)}; accepted: {', '.join(ALGORITHM_NAMES)}")
        from ..algorithms import ALGORITHMS

        for a in algos:
            algorithm_config(a, **self.options_for(a))
            ALGORITHMS[a][0].check_codec(self.codec_for(a))

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
            if attack.data_poisoning and self.task != "digits":
                raise ConfigError(f"attack {self.attack!r} poisons labels, which only the digits task has (task is {self.task!r})")
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

    def trace_path(self, algorithm: str) -> Path | None:
        """Where ``algorithm``'s trace goes: ``trace`` itself when the scenario
        runs one algorithm; with several, one file per algorithm, named with
        ``-<algorithm>`` before the extension (``run.trace`` -> ``run-ddp.trace``).
        ``None`` without a trace."""
        if self.trace is None:
            return None
        path = Path(self.trace).expanduser()
        if len(self.algorithms) == 1:
            return path
        return path.with_name(f"{path.stem}-{algorithm}{path.suffix}")

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
