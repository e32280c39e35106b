"""Plan a run before renting anything: predicted time and bytes per algorithm and codec.

``plan(params, compute_time=..., steps=..., peers=..., link=...)`` predicts,
for each algorithm and codec, the time per round, the total time, the bytes
each peer sends, the peak bytes of one sync and the compute utilisation of
a run of ``steps`` local steps per peer of a model with ``params``
parameters, without training it.

How (the same code the simulator runs, at a small size):

- **Proxy model.** Every run here is the simulator's own run
  (``sim.runner.run_algorithm``: the real round loop, algorithm, communicator,
  codec and ``SimNetwork``) on ``ProxyTask``: one flat parameter vector of
  ``n`` elements and a linear loss, whose local step costs microseconds.
  Each local step is charged ``compute_time`` seconds of virtual time
  (times the peer's ``compute_scale``), as ``gossamer simulate
  --compute-time`` charges it. Nothing of the size of the real model is
  ever allocated.
- **Message sizes at full size.** Every message a collective sends is a
  codec's output (or raw fp32) for a fixed set of element counts, and its
  size is affine in the parameter count once every chunk is a multiple of
  the codec's granularity (its blocks, chunks, ``1/fraction``): ``B(N) =
  a + b N`` (``a``: codec headers, or the whole size of a message that does
  not grow with the model). ``proxy_sizes`` picks two proxy sizes ``n1`` and
  ``n2 = 2 n1`` where that holds, the planner runs the algorithm at both and
  pairs every message (same sender, receiver and tag), and solves each
  message's ``a`` and ``b``. The timing runs then use the ``n1`` proxy with
  ``SimNetwork(payload_size=...)`` charging and counting every message as
  ``B(N)`` bytes. When ``N`` is itself a multiple of the proxy's
  granularity (``N = k n1``) the modelled sizes equal those of a run at
  ``N`` exactly, and so do the times (``tests/sim/test_plan.py`` checks this
  against an unscaled run); otherwise each message may differ from the real
  one by the rounding of one codec block (a few bytes in megabytes). A model
  of at most ``UNSCALED_MAX`` parameters (or no larger than the proxy) is
  run at its real size, unscaled.
- **Extrapolation.** A round is one sync period of ``H`` local steps (the
  algorithm's ``inner_steps``; 1 for ddp and spsa; for streaming_diloco the
  outer round in which each fragment syncs once, where ``gossamer simulate``
  counts every fragment's start and merge as a round); ``steps`` must be at
  least ``H`` for every algorithm (``ConfigError`` otherwise). With ``S`` steps and
  ``r = S mod H``, the planner simulates ``S_1 = r + w H`` and ``S_2 = r +
  (w + k) H`` steps (``w = warmup_rounds``, ``k = sample_rounds``) and
  extrapolates linearly in rounds::

      per_round  = (T(S_2) - T(S_1)) / k
      T(S)       = T(S_2) + (S - S_2) / H * per_round

  (bytes likewise). Both runs end the way the full run ends (the same
  partial period and final sync), so the start-up and the ending cancel in
  the difference; the result is exact when every round after the first
  ``w`` takes the same time (equal peers, no loss), and an average over
  ``k`` rounds otherwise. When ``S <= S_2`` the run is simulated whole.

What a plan does not capture: the real compute time (it is an input:
measure it, or derive it from a GPU's throughput, ``gpu_step_seconds``),
the software's own time per round unless given (``round_overhead``; ``gossamer
bench predict`` measures it), codecs whose sizes depend on layer shapes
(``whole_tensors`` codecs such as ``powersgd``, refused), layer-wise
fragments (``fragmenting="layers"``, refused), models whose whole vector
would not fit one transport message (``max_params``: about 4.4e12
parameters at 4 bytes a value, refused), and anything the simulator
does not model (docs/concepts.md, "Network model").
"""

from __future__ import annotations

import dataclasses
import decimal
import importlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, GossamerError

#: What ``plan`` runs when no algorithms are named.
DEFAULT_ALGORITHMS = ("ddp", "diloco", "streaming_diloco", "sparseloco")

#: Models of at most this many parameters are planned at their real size (no scaling).
UNSCALED_MAX = 1 << 16

#: ``--codecs`` entry that means each algorithm's own default codec.
DEFAULT_CODEC = "default"

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


class PlanError(GossamerError):
    """The proxy runs broke an assumption of the size model (a message of one
    run has no partner in the other, or equal sizes grow differently)."""


def parse_count(text: str | int | float, *, what: str = "parameter count") -> int:
    """A count (``what``: a parameter count unless named): ``1300000``, ``1.3e9``,
    ``125M``, ``7B``, ``350k``, ``1.5T`` (k, M, B or G, T: 1e3, 1e6, 1e9, 1e12;
    case-insensitive). Raises ``ConfigError`` naming ``what`` for anything
    else, a count < 1, or one that is not a whole number (``12.5``; a
    decimal times its suffix is exact: ``4.1M`` is 4,100,000)."""
    if isinstance(text, bool):
        raise ConfigError(f"{what} must be a number such as 125M, 1.3e9 or 7B, got {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise ConfigError(f"{what} must be a finite number >= 1, got {text!r}")
        value = decimal.Decimal(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmbgt]?)\s*", str(text).lower())
        if not m:
            raise ConfigError(f"{what} must be a number such as 125M, 1.3e9 or 7B, got {text!r}")
        value = decimal.Decimal(m.group(1))  # exact
        if value.adjusted() < 100:
            with decimal.localcontext() as ctx:
                ctx.prec = 200  # exact: fewer than 200 digits by now
                value *= _SUFFIXES.get(m.group(2), 1)
    if value.adjusted() >= 100:
        raise ConfigError(f"{what} must be below 1e100, got {text!r}")
    if value < 1:
        raise ConfigError(f"{what} must be >= 1, got {text!r}")
    if value != value.to_integral_value():
        raise ConfigError(f"{what} must be a whole number, got {text!r}")
    return int(value)


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a console error is one line)."""
    return " ".join(str(exc).split()) or "(no message)"


def count_parameters(model: str, *, seed: int = 0) -> int:
    """Trainable parameters of ``model``: a built-in task's name (``digits``,
    ``charlm``, ``quadratic``: its ``make_model``), or ``module:callable``, a
    function returning an ``nn.Module`` (called without arguments on
    PyTorch's ``meta`` device, so a large model allocates no memory).
    Raises ``ConfigError`` naming what could not be found or built."""
    from ..tasks import TASK_NAMES, make_task

    if model in TASK_NAMES:
        built = make_task(model).make_model(seed)
    elif ":" in model:
        mod_name, _, attr = model.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ConfigError(f"--model {model!r}: cannot import module {mod_name!r}: {_one_line(exc)}") from None
        except Exception as exc:  # the module's own code failed: report it, no traceback
            raise ConfigError(f"--model {model!r}: importing module {mod_name!r} failed: "
                              f"{type(exc).__name__}: {_one_line(exc)}") from None
        factory = module
        for part in attr.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                raise ConfigError(f"--model {model!r}: module {mod_name!r} has no {attr!r}")
        if not callable(factory):
            raise ConfigError(f"--model {model!r}: {attr!r} is not callable")
        try:
            with torch.device("meta"):
                built = factory()
        except Exception as exc:  # needs arguments, or fails on the meta device: one line naming it
            raise ConfigError(f"--model {model}: calling it with no arguments failed: "
                              f"{type(exc).__name__}: {_one_line(exc)}") from None
    else:
        raise ConfigError(f"unknown model {model!r}: give a built-in task ({', '.join(TASK_NAMES)}) "
                          f"or module:callable returning a torch.nn.Module")
    if not isinstance(built, torch.nn.Module):
        raise ConfigError(f"--model {model}: calling it returned a {type(built).__name__}, "
                          f"expected a torch.nn.Module")
    n = sum(p.numel() for p in built.parameters() if p.requires_grad)
    if n < 1:
        raise ConfigError(f"--model {model!r} has no trainable parameters")
    return int(n)


def gpu_step_seconds(params: int, *, flops: float, mfu: float, tokens_per_step: int) -> float:
    """Seconds per local step from a GPU's throughput: ``6 N T / (F * MFU)``,
    ``N`` parameters, ``T`` tokens per step (per peer), ``F`` peak FLOP/s, ``MFU``
    the fraction of it reached. ``6 N`` FLOPs per token for the forward and
    backward pass of a dense transformer (Kaplan et al. 2020, "Scaling Laws
    for Neural Language Models", C = 6ND). Raises ``ConfigError`` for a value
    out of range."""
    for name, value in (("gpu flops", flops), ("tokens per step", tokens_per_step)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    if isinstance(mfu, bool) or not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
        raise ConfigError(f"mfu (model FLOPs utilisation) must be in (0, 1], got {mfu!r}")
    return 6.0 * params * tokens_per_step / (flops * mfu)


# ---------------------------------------------------------------------- proxy
class _ProxyShard:
    def __init__(self, batch: torch.Tensor) -> None:
        self.batch = batch

    def next_batch(self) -> torch.Tensor:
        return self.batch


class ProxyTask:
    """The planner's stand-in model: one flat vector of ``numel`` parameters
    (zeros) and the loss ``sum(theta * x)`` with a fixed seeded ``x`` per
    peer, so every local step has a finite, non-zero gradient at the cost of
    a few vector operations. Implements the task protocol (docs/own-task.md)."""

    name = "plan-proxy"
    default_steps = None
    default_inner_steps = None

    def __init__(self, numel: int) -> None:
        if numel < 1:
            raise ConfigError(f"proxy size must be >= 1, got {numel}")
        self.numel = int(numel)

    def make_model(self, seed: int) -> torch.nn.Module:
        model = torch.nn.Module()
        model.theta = torch.nn.Parameter(torch.zeros(self.numel))
        return model

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return (model.theta * batch).sum()

    def shard(self, peer: int, n_peers: int, *, seed: int) -> _ProxyShard:
        from ..seeding import generator

        return _ProxyShard(torch.randn(self.numel, generator=generator("plan-proxy", seed, peer)) * 1e-3)

    def evaluate(self, model: torch.nn.Module) -> float:
        return 0.0


# ---------------------------------------------------------------------- sizes
def _affine_multiples(largest: int) -> list[int]:
    """The multiples ``k`` at which ``proxy_granule`` checks affinity: 1..8, then
    a geometric ladder (x1.5) up to ``largest``, and ``largest`` itself."""
    ks = set(range(1, 9))
    k = 8.0
    while k < largest:
        k *= 1.5
        ks.add(min(int(k), largest))
    ks.add(max(1, largest))
    return sorted(ks)


def _granule_ok(sizes: list[Any], m: int, ks: list[int]) -> bool:
    """Whether every size function in ``sizes`` is affine on the multiples ``k m``, ``k`` in ``ks``."""
    for size in sizes:
        e1, e2 = size(m), size(2 * m)
        if any(size(k * m) != e1 + (k - 1) * (e2 - e1) for k in ks):
            return False
    return True


def proxy_granule(codec: str, peers: int, *, target: int = 1 << 40, smallest: int = 1024,
                  largest: int = 1 << 20) -> tuple[int, bool]:
    """The smallest element count ``m`` in ``[smallest, largest]`` (a power of
    two if one will do, else of the form ``2^a 5^b``) at which the encoded size of ``codec`` (and of the codec its
    chunk owners re-send the mean with) is affine in the element count on the
    multiples of ``m`` up to ``target`` (the largest message of the full-size
    run, in elements; checked at 1..8 m and a geometric ladder of multiples).
    Returns ``(m, True)``, or ``(65536, False)`` when no ``m`` is (the plan's
    bytes are then approximate)."""
    from ..codecs import codec_for_mean
    from ..comm import make_run_codec

    c = make_run_codec(codec)
    if c is None:
        return smallest, True
    funcs = [lambda n, c=c: c.encoded_size((n,))]
    if not c.lossless:
        mean = codec_for_mean(c, peers)
        funcs.append(lambda n, c=mean: c.encoded_size((n,)))
    # powers of two first (most codecs' blocks and chunks are), then the rest by size
    candidates = sorted({(2 ** a) * (5 ** b) for a in range(0, 21) for b in range(0, 9)
                         if smallest <= (2 ** a) * (5 ** b) <= largest}, key=lambda m: (m & (m - 1) != 0, m))
    for m in candidates:
        if _granule_ok(funcs, m, _affine_multiples(max(8, target // m))):
            return m, True
    return 65536, False


def largest_message_bytes() -> int:
    """The largest payload one message may have on gossamer's transports: ``MAX_PARTS``
    frames of ``DEFAULT_MAX_FRAME`` body bytes, less each part frame's header
    and MAC (``transport/frame.py``, ``split_sizes``; the simulator frames
    messages the same way and refuses a larger one with ``ProtocolError``)."""
    from ..transport.base import Tag
    from ..transport.frame import DEFAULT_MAX_FRAME, LENGTH, MAX_PARTS, TAG_MAX, frame_overhead

    widest = frame_overhead(Tag(TAG_MAX, TAG_MAX, TAG_MAX), (MAX_PARTS, MAX_PARTS)) - LENGTH.size
    return MAX_PARTS * (DEFAULT_MAX_FRAME - widest)


#: Bytes kept free under ``largest_message_bytes`` by ``max_params``: the size
#: model's rounding of a message (a codec block, a few bytes) many times over.
MESSAGE_SLACK = 1 << 20


def max_params(codec: str, peers: int) -> int:
    """The largest parameter count ``plan`` accepts with ``codec`` ("none":
    raw fp32) among ``peers`` peers: the largest ``N`` whose whole vector, raw fp32 (4 bytes a
    value) or encoded with ``codec`` (and with the codec chunk owners
    re-send the mean of ``peers`` contributions with), fits one message of ``largest_message_bytes()
    - MESSAGE_SLACK`` bytes. No algorithm sends more than one whole vector
    in a message (collectives send chunks of it, an all-gather or exchange
    one peer's vector), so no message of a plan within it can exceed the
    transport's limit. About 4.4e12 for raw fp32 and the quantizers; less for
    a codec of more than 4 bytes a value (``topk:1.0``, or a ``topk`` whose
    mean among the peers is: 8)."""
    from ..codecs import codec_for_mean
    from ..comm import make_run_codec

    c = make_run_codec(codec)
    sizes = [lambda n: 4 * n]
    if c is not None:
        sizes.append(lambda n, c=c: c.encoded_size((n,)))
        if not c.lossless:
            sizes.append(lambda n, m=codec_for_mean(c, peers): m.encoded_size((n,)))
    room = largest_message_bytes() - MESSAGE_SLACK
    lo, hi = 1, room // 4 + 1  # fits at lo; 4 hi > room
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if max(size(mid) for size in sizes) <= room:
            lo = mid
        else:
            hi = mid
    return lo


class _Recorder:
    """A ``payload_size`` hook that models every message as what it carries and
    remembers its size by (sender, receiver, tag)."""

    def __init__(self) -> None:
        self.sizes: dict[tuple[str, str, Any], int] = {}

    def __call__(self, src: str, dst: str, tag: Any, nbytes: int) -> int:
        self.sizes[(src, dst, tag)] = nbytes
        return nbytes


class SizeModel:
    """Payload size at ``params`` parameters of a message that has ``b1`` bytes
    with the ``n1``-element proxy: ``b1 + (b2 - b1) (params - n1) / (n2 - n1)``,
    ``b2`` the same message's size with the ``n2``-element proxy (module
    docstring). Built from two recorded runs; raises ``PlanError`` when they
    do not pair up."""

    def __init__(self, first: dict[tuple[str, str, Any], int], second: dict[tuple[str, str, Any], int],
                 n1: int, n2: int, params: int) -> None:
        if set(first) != set(second):
            odd = sorted(map(str, set(first) ^ set(second)))[:3]
            raise PlanError(f"the proxy runs at {n1} and {n2} parameters sent different messages (e.g. {', '.join(odd)}): "
                            f"this algorithm's messages depend on the model size in a way the planner cannot scale")
        grows: dict[int, int] = {}
        for key, b1 in first.items():
            b2 = second[key]
            if grows.setdefault(b1, b2) != b2:
                raise PlanError(f"two messages of {b1} bytes at {n1} parameters grow to {grows[b1]} and {b2} bytes "
                                f"at {n2}: the planner cannot tell them apart")
        self.n1, self.n2, self.params = n1, n2, params
        self.full = {b1: max(0, int(math.floor(b1 + (b2 - b1) * (params - n1) / (n2 - n1) + 0.5)))
                     for b1, b2 in grows.items()}

    def __call__(self, src: str, dst: str, tag: Any, nbytes: int) -> int:
        try:
            return self.full[nbytes]
        except KeyError:
            raise PlanError(f"a message of {nbytes} bytes ({src} -> {dst}, {tag}) did not occur in the calibration "
                            f"runs, so its size at {self.params} parameters is unknown") from None


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class PlanRow:
    """One algorithm with one codec. Times in seconds, bytes per peer
    (payload + framing, as the transports count them)."""

    algorithm: str
    codec: str
    inner_steps: int             # H: local steps per round (the sync period)
    rounds: float                # steps / H
    time_per_round_s: float      # steady-state wall time of one round (H steps and their syncs); the mean round
                                 # when the run is short enough to be simulated whole
    total_time_s: float          # predicted wall time of the whole run (the slowest peer's clock)
    compute_time_s: float        # compute per peer (mean over peers): steps * compute_time * compute_scale
    compute_utilisation: float   # compute_time_s / total_time_s
    bytes_sent_per_peer: float   # over the whole run, mean over peers
    peak_bytes_per_round: int    # the most any peer sent in one sync
    simulated_steps: tuple[int, ...]  # lengths of the timing runs (one: simulated whole)
    proxy_params: int            # size of the proxy model the timing runs used (== params: not scaled)
    bytes_exact: bool            # False when no proxy size makes the codec's sizes affine (approximate bytes)

    @property
    def extrapolated(self) -> bool:
        return len(self.simulated_steps) > 1


@dataclass
class Plan:
    """What ``plan`` predicts (``rows``) and from what (the inputs)."""

    params: int
    compute_time_s: float
    steps: int
    peers: int
    link: str
    rows: list[PlanRow] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (algorithm, codec, why)
    inputs: dict[str, Any] = field(default_factory=dict)
    planner_wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "compute_time_s": self.compute_time_s, "steps": self.steps,
                "peers": self.peers, "link": self.link, "inputs": self.inputs,
                "planner_wall_s": self.planner_wall_s,
                "rows": [dict(dataclasses.asdict(r), extrapolated=r.extrapolated) for r in self.rows],
                "skipped": [{"algorithm": a, "codec": c, "why": w} for a, c, w in self.skipped]}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def row(self, algorithm: str, codec: str | None = None) -> PlanRow:
        """The row of ``algorithm`` (and ``codec``, when several); ``KeyError`` if none."""
        for r in self.rows:
            if r.algorithm == algorithm and (codec is None or r.codec == codec):
                return r
        raise KeyError((algorithm, codec))


# ---------------------------------------------------------------------- planning
def _check_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _combos(algorithms: tuple[str, ...], codecs: tuple[str, ...] | None
            ) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(algorithm, codec spec) pairs to plan and (algorithm, codec, why) pairs skipped."""
    from ..algorithms import ALGORITHMS, check_algorithm_names
    from ..codecs import make_codec

    check_algorithm_names(algorithms)
    wanted = tuple(codecs) if codecs else (DEFAULT_CODEC,)
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"codec listed twice in {','.join(wanted)}")
    for spec in wanted:
        if spec != DEFAULT_CODEC:
            codec = make_codec(spec)  # ConfigError for a bad spec
            if getattr(codec, "whole_tensors", False):
                raise ConfigError(f"codec {spec!r} encodes whole tensors, so its size depends on the model's layer "
                                  f"shapes, which a plan from a parameter count does not know; plan with another "
                                  f"codec, or simulate the model (gossamer simulate)")
    combos: list[tuple[str, str]] = []
    skipped: list[tuple[str, str, str]] = []
    applies: dict[str, bool] = {spec: False for spec in wanted}
    for a in algorithms:
        cls = ALGORITHMS[a][0]
        if not cls.uses_codec:
            combos.append((a, "none"))
            for spec in wanted:
                if spec not in (DEFAULT_CODEC, "none", "fp32"):
                    skipped.append((a, spec, f"{a} sends no codec payload"))
            continue
        for spec in wanted:
            actual = cls.default_codec if spec == DEFAULT_CODEC else spec
            try:
                cls.check_codec(actual)
            except ConfigError as exc:
                skipped.append((a, spec, str(exc)))
                continue
            if (a, actual) not in combos:
                combos.append((a, actual))
            applies[spec] = True
    for spec, ok in applies.items():
        if not ok and spec != DEFAULT_CODEC:
            why = "; ".join(w for _, c, w in skipped if c == spec)
            raise ConfigError(f"codec {spec!r} applies to none of {', '.join(algorithms)}: {why}")
    return combos, skipped


def plan(params: int | str, *, compute_time: float, steps: int, peers: int = 8, link: str = "100mbit,50ms",
         algorithms: tuple[str, ...] | list[str] = DEFAULT_ALGORITHMS, codecs: tuple[str, ...] | list[str] | None = None,
         inner_steps: int | None = None, coordinator: str | None = None, round_overhead: float = 0.0,
         peer_profiles: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (), seed: int = 0,
         algorithm_options: dict[str, dict[str, Any]] | None = None, warmup_rounds: int = 1,
         sample_rounds: int = 2, progress: Any = None) -> Plan:
    """Predict each algorithm and codec on this network (module docstring).

    ``params``: parameters of the model (``parse_count``: 7B, 1.3e9 ...);
    ``compute_time``: seconds per local step on a peer of ``compute_scale``
    1; ``steps``: local steps per peer in the whole run; ``peers``, ``link``,
    ``coordinator``, ``round_overhead``, ``peer_profiles``, ``inner_steps``,
    ``seed``, ``algorithm_options``: as in ``Scenario``; ``codecs``: codec
    specs, ``"default"`` for each algorithm's own (the default: only that);
    each algorithm runs with each codec that applies to it (the others are
    in ``Plan.skipped``). ``progress(label)`` is called before each row.

    Raises ``ConfigError`` for any bad input before any simulation (a codec
    that applies to none of the algorithms, a negative count, an unknown
    algorithm ...), ``PlanError`` if the proxy runs break the size model.
    """
    from ..algorithms import ALGORITHMS, algorithm_config
    from .runner import run_algorithm
    from .scenario import Scenario

    wall0 = time.perf_counter()
    n_params = parse_count(params)
    compute = _check_number("compute_time (seconds per local step)", compute_time)
    for name, value in (("steps", steps), ("warmup_rounds", warmup_rounds), ("sample_rounds", sample_rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    algorithms = tuple(algorithms)
    combos, skipped = _combos(algorithms, tuple(codecs) if codecs is not None else None)
    options = dict(algorithm_options or {})
    for a, opts in options.items():
        if opts.get("fragmenting") == "layers":
            raise ConfigError(f"{a}: fragmenting='layers' depends on the model's layer sizes, which a plan from a "
                              f"parameter count does not know; use fragmenting='range' (the default)")

    def scenario(a: str, codec: str, numel: int, n_steps: int) -> Scenario:
        return Scenario(task=ProxyTask(numel), algorithms=(a,), peers=peers, steps=n_steps, inner_steps=inner_steps,
                        link=link, coordinator=coordinator, round_overhead=round_overhead,
                        peer_profiles=tuple(peer_profiles), seed=seed, evals=1, compute_time=compute,
                        codec=codec if ALGORITHMS[a][0].uses_codec else None, algorithm_options={a: options[a]} if a in options else {})

    # everything is checked before the first simulation
    scenarios = [(a, codec, scenario(a, codec, 1 << 12, steps)) for a, codec in combos]  # ConfigError for a bad network
    caps = {codec: max_params(codec, peers) for _, codec in combos}
    codec, cap = min(caps.items(), key=lambda kv: kv[1])
    if n_params > cap:
        shown = f"{n_params:,}" if n_params < 10**16 else f"{n_params:.3g}"
        raise ConfigError(f"{shown} parameters is more than gossamer plan can plan: at most {cap:,} with codec "
                          f"{codec} (a model's whole vector must fit one transport message, at most "
                          f"{largest_message_bytes():,} bytes)")
    base = []
    for a, codec, sc in scenarios:
        config = algorithm_config(a, **sc.options_for(a))
        H = int(getattr(config, "inner_steps", 1))
        if steps < H:  # not one whole round: the extrapolation would divide a partial round
            raise ConfigError(f"--steps {steps} is less than one round of {a} (H = {H}): plan at least {H} steps, "
                              f"or a smaller --inner-steps")
        base.append((a, codec, sc, config, H))
    result = Plan(params=n_params, compute_time_s=compute, steps=steps, peers=peers, link=str(link), skipped=skipped,
                  inputs={"algorithms": list(algorithms), "codecs": list(codecs) if codecs else [DEFAULT_CODEC],
                          "inner_steps": inner_steps, "coordinator": coordinator, "round_overhead": round_overhead,
                          "peer_profiles": [dict(p) for p in peer_profiles], "seed": seed,
                          "algorithm_options": options, "warmup_rounds": warmup_rounds,
                          "sample_rounds": sample_rounds})
    for a, codec, sc, config, H in base:
        if progress is not None:
            progress(f"{a} ({codec})")
        parts = int(getattr(config, "fragments", 1))
        granule, exact = proxy_granule(codec, peers, target=max(1, n_params // parts))
        n1 = granule * peers * parts
        r = steps % H
        short, long_ = r + warmup_rounds * H, r + (warmup_rounds + sample_rounds) * H
        lengths = (steps,) if steps <= long_ else (short, long_)
        sizes: SizeModel | None = None
        if n_params <= max(n1, UNSCALED_MAX):  # small enough to run at its real size: nothing to scale
            n1, exact = n_params, True
        else:
            rec1, rec2 = _Recorder(), _Recorder()
            calibration = min(steps, r + H)  # one round and the run's ending: every kind of message
            run_algorithm(scenario(a, codec, n1, calibration), a, payload_size=rec1)
            run_algorithm(scenario(a, codec, 2 * n1, calibration), a, payload_size=rec2)
            sizes = SizeModel(rec1.sizes, rec2.sizes, n1, 2 * n1, n_params)
        runs = [run_algorithm(scenario(a, codec, n1, s), a, payload_size=sizes) for s in lengths]
        last = runs[-1]
        if len(runs) == 1:
            total, sent = last.sim_time_s, last.bytes_sent_per_peer
            per_round = total / (steps / H)
        else:
            per_round = (runs[1].sim_time_s - runs[0].sim_time_s) / sample_rounds
            bytes_per_round = (runs[1].bytes_sent_per_peer - runs[0].bytes_sent_per_peer) / sample_rounds
            total = last.sim_time_s + (steps - long_) / H * per_round
            sent = last.bytes_sent_per_peer + (steps - long_) / H * bytes_per_round
        scale = sum(sc.compute_scale(i) for i in range(peers)) / peers
        compute_s = steps * compute * scale
        result.rows.append(PlanRow(
            algorithm=a, codec=codec, inner_steps=H, rounds=steps / H, time_per_round_s=per_round,
            total_time_s=total, compute_time_s=compute_s, compute_utilisation=compute_s / total if total > 0 else 1.0,
            bytes_sent_per_peer=sent, peak_bytes_per_round=int(max(r.peak_bytes_per_round for r in runs)),
            simulated_steps=tuple(lengths), proxy_params=n1, bytes_exact=exact))
    result.planner_wall_s = time.perf_counter() - wall0
    return result
