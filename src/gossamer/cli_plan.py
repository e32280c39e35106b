"""``gossamer plan``: the command line of the planner (``sim/plan.py``).

``add_plan_command(sub)`` adds the subcommand to the ``gossamer`` parser
without importing the simulator (or torch: ``gossamer --help`` stays fast);
``run_plan_command(args, console)`` checks every input (``ConfigError``, one
line, exit 2, before any simulation), runs ``plan``, prints the table and
writes ``--json`` / ``--plot``.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from .argtypes import check_writable, help_naming_algorithms, nonneg_int, positive_float, positive_int
from .errors import ConfigError

#: ``sim.plan.DEFAULT_ALGORITHMS``, repeated here so that building the parser imports no torch
#: (tests/sim/test_plan.py checks that they agree)
DEFAULT_ALGORITHMS = ("ddp", "diloco", "streaming_diloco", "sparseloco")

#: Keys of a scenario TOML that ``gossamer plan --scenario`` reads (the rest describe training, not the network).
SCENARIO_KEYS = ("task", "algorithms", "peers", "steps", "inner_steps", "link", "coordinator", "round_overhead",
                 "peer_profiles", "seed", "compute_time", "codec", "algorithm_options")


#: Keys of a scenario TOML that change times or bytes in ways a plan does not model: refused.
UNPLANNED_KEYS = ("churn", "byzantine", "attack", "audit", "aggregator", "tolerate", "collude")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _counter(what: str) -> Any:
    """An argparse type: a count such as 125M or 1.3e9 (``parse_count``), errors naming ``what``."""
    def count(text: str) -> int:
        from .sim.plan import parse_count

        try:
            return parse_count(text, what=what)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return count


def add_plan_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``plan`` to the subparsers ``sub``; returns its parser."""
    p = sub.add_parser(
        "plan", help="predict time per round, total time, bytes and compute utilisation per algorithm and codec, without training",
        description="Predict a run before renting machines: the real algorithms and collectives run on a small proxy "
                    "model over the simulated network, every message charged the size it has for the full model, "
                    "compute charged as virtual time. See docs/plan.md.")
    p.add_argument("scenario", nargs="?", help="scenario TOML (peers, link, coordinator, round_overhead, peer_profiles, "
                   "steps, inner_steps, algorithm_options ...; its task gives the model unless --params/--model); flags override it")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--params", type=_counter("parameter count"), default=None, metavar="N",
                      help="parameters of the model: 125M, 1.3e9, 7B (k, M, B, T suffixes)")
    size.add_argument("--model", default=None, metavar="NAME|module:callable",
                      help="count the parameters of a built-in task's model (digits, charlm, quadratic) or of the "
                           "nn.Module a function returns (built on the meta device: no memory)")
    p.add_argument("--compute-time", type=positive_float, default=None, metavar="SECONDS",
                   help="compute time of one local step (forward, backward, optimizer) on one peer")
    p.add_argument("--gpu-flops", type=positive_float, default=None, metavar="FLOP/S",
                   help="instead of --compute-time: the GPU's peak FLOP/s (e.g. 312e12 for an A100 in bf16); "
                        "step time = 6 N T / (FLOPS * MFU) (Kaplan et al. 2020, C = 6ND)")
    p.add_argument("--mfu", type=_fraction, default=None, help="with --gpu-flops: model FLOPs utilisation reached (default 0.4)")
    p.add_argument("--tokens-per-step", type=_counter("tokens per step"), default=None, metavar="T",
                   help="with --gpu-flops: tokens one peer processes per local step (batch x sequence length)")
    p.add_argument("--steps", type=positive_int, default=None, help="local steps per peer in the whole run (required)")
    p.add_argument("--peers", type=positive_int, default=None, help="number of peers (default 8)")
    p.add_argument("--link", default=None, help="every peer's access link UP[/DOWN],LATENCY[,LOSS], e.g. 100mbit,50ms (default) or 10mbit/100mbit,20ms")
    p.add_argument("--coordinator", default=None, metavar="LINK", help="model the swarm's coordinator on this link (two round trips per round)")
    p.add_argument("--round-overhead", type=float, default=None, metavar="SECONDS",
                   help="the software's own time per round (gossamer bench predict measures it; default 0)")
    p.add_argument("--inner-steps", type=positive_int, default=None, help="H: local steps between syncs (default: each algorithm's own)")
    help_naming_algorithms(p.add_argument("--algorithms", default=None),
                           "comma-separated, from: %(algorithm_names)s (default " + ",".join(DEFAULT_ALGORITHMS) + ")")
    p.add_argument("--codecs", default=None,
                   help="comma-separated codec specs, each run with every algorithm it applies to; 'default' = each "
                        "algorithm's own (default: only that), e.g. default,int8,none")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an algorithm option (TOML value) for every listed algorithm that has it, e.g. fragments=8; repeatable")
    p.add_argument("--seed", type=nonneg_int, default=None, help="seed (link loss draws, proxy data; default 0)")
    p.add_argument("--sample-rounds", type=positive_int, default=2,
                   help="rounds simulated after the warm-up to measure the steady state (default 2)")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="write the plan as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: total time and bytes per peer, per algorithm and codec")
    return p


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _no_churn(table: Any) -> bool:
    """Whether a scenario's ``churn`` table models no churn (empty, or nothing
    active: ``Scenario`` then runs without it, ``Scenario.churn is None``)."""
    from .sim.churn import Churn

    churn = Churn.parse(table)  # ConfigError for a malformed table
    return churn is None or not churn.active


def _scenario_file(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"scenario file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenario file {path!r} is not valid TOML: {exc}") from None
    from .sim.scenario import Scenario

    known = {f for f in Scenario.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {path}; accepted: {', '.join(sorted(known))}")
    unplanned = sorted(k for k in set(data) & set(UNPLANNED_KEYS) if not (k == "churn" and _no_churn(data[k])))
    if unplanned:
        what = unplanned[0] if len(unplanned) == 1 else ", ".join(unplanned[:-1]) + " or " + unplanned[-1]
        raise ConfigError(f"{path}: gossamer plan does not model {what} (it extrapolates a few rounds of honest "
                          f"peers that stay); remove {'it' if len(unplanned) == 1 else 'them'}, or run gossamer simulate")
    return {k: v for k, v in data.items() if k in SCENARIO_KEYS}


def plan_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``plan`` from the command line (and its scenario
    file); ``ConfigError`` naming the problem."""
    from .sim.plan import count_parameters, gpu_step_seconds
    from .swarm.cli import parse_options

    base = _scenario_file(args.scenario) if args.scenario else {}
    params = args.params
    if params is None and args.model is not None:
        params = count_parameters(args.model)
    if params is None and isinstance(base.get("task"), str):
        params = count_parameters(base["task"])
    if params is None:
        raise ConfigError("give the model's size: --params N (e.g. 7B) or --model NAME (a built-in task or module:callable)")
    steps = args.steps if args.steps is not None else base.get("steps")
    if steps is None:
        raise ConfigError("give --steps: local steps per peer in the whole run")
    if args.gpu_flops is None and (args.mfu is not None or args.tokens_per_step is not None):
        raise ConfigError("--mfu and --tokens-per-step go with --gpu-flops")
    if args.gpu_flops is not None:
        if args.compute_time is not None:
            raise ConfigError("give --compute-time or --gpu-flops (with --tokens-per-step), not both")
        if args.tokens_per_step is None:
            raise ConfigError("--gpu-flops needs --tokens-per-step: tokens one peer processes per local step")
        compute = gpu_step_seconds(params, flops=args.gpu_flops, mfu=args.mfu if args.mfu is not None else 0.4,
                                   tokens_per_step=args.tokens_per_step)
    else:
        compute = args.compute_time if args.compute_time is not None else base.get("compute_time")
        if compute is None:
            raise ConfigError("give the compute time per step: --compute-time SECONDS, or --gpu-flops F "
                              "--tokens-per-step T [--mfu U]")
    algorithms = _split(args.algorithms) or base.get("algorithms") or list(DEFAULT_ALGORITHMS)
    if isinstance(algorithms, str):
        algorithms = _split(algorithms) or []
    codecs = _split(args.codecs) or ([base["codec"]] if base.get("codec") else None)
    options: dict[str, dict[str, Any]] = {a: dict(o) for a, o in base.get("algorithm_options", {}).items()}
    if args.option:
        import dataclasses

        from .algorithms import ALGORITHMS

        for key, value in parse_options(args.option).items():
            takers = [a for a in algorithms if a in ALGORITHMS
                      and key in {f.name for f in dataclasses.fields(ALGORITHMS[a][1])}]
            if not takers:
                raise ConfigError(f"--option {key} applies to none of {', '.join(algorithms)}")
            for a in takers:
                options.setdefault(a, {})[key] = value
    ro = args.round_overhead if args.round_overhead is not None else base.get("round_overhead", 0.0)
    return {"params": params, "compute_time": compute, "steps": steps,
            "peers": args.peers if args.peers is not None else base.get("peers", 8),
            "link": args.link or base.get("link", "100mbit,50ms"),
            "algorithms": tuple(algorithms), "codecs": tuple(codecs) if codecs else None,
            "inner_steps": args.inner_steps if args.inner_steps is not None else base.get("inner_steps"),
            "coordinator": args.coordinator or base.get("coordinator"), "round_overhead": ro,
            "peer_profiles": tuple(base.get("peer_profiles", ())),
            "seed": args.seed if args.seed is not None else base.get("seed", 0),
            "algorithm_options": options, "sample_rounds": args.sample_rounds}


def _human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"


def _human_time(s: float) -> str:
    if s < 1:
        return f"{s * 1e3:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.2f} h"
    return f"{s / 86400:.1f} d"


def plan_title(p: Any) -> str:
    return (f"plan: {_human_count(p.params)} parameters, {p.peers} peers, link {p.link}, {p.steps:,} steps "
            f"x {p.compute_time_s:.4g} s compute")


def plan_table(p: Any) -> Any:
    """The plan as a rich table, one row per algorithm and codec."""
    from rich.table import Table

    table = Table(title=plan_title(p))
    for col, just in (("algorithm", "left"), ("codec", "left"), ("H", "right"), ("rounds", "right"),
                      ("time/round", "right"), ("total time", "right"), ("sent/peer", "right"),
                      ("peak/round", "right"), ("compute util", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in p.rows:
        table.add_row(r.algorithm, r.codec, str(r.inner_steps), (f"{r.rounds:,.0f}" if r.rounds == int(r.rounds) else f"{r.rounds:,.1f}"), _human_time(r.time_per_round_s),
                      _human_time(r.total_time_s), _human_bytes(r.bytes_sent_per_peer) + ("" if r.bytes_exact else " ~"),
                      _human_bytes(r.peak_bytes_per_round), f"{100 * r.compute_utilisation:.1f}%")
    return table


def run_plan_command(args: argparse.Namespace, console: Any) -> int:
    """``gossamer plan``: see the module docstring."""
    from .sim.plan import plan

    for out in (args.json_out, args.plot):
        if out:
            check_writable(out)
    inputs = plan_inputs(args)
    with console.status("planning") as status:
        result = plan(**inputs, progress=lambda label: status.update(f"planning {label}"))
    console.print(plan_table(result))
    for a, c, why in result.skipped:
        console.print(f"skipped {a} with codec {c}: {why}", markup=False, highlight=False)
    scaled = sorted({r.proxy_params for r in result.rows if r.proxy_params != result.params})
    how = (f"proxy of {', '.join(_human_count(n) for n in scaled)} parameters, messages scaled to full size"
           if scaled else "at the model's real size")
    console.print(f"simulated {how}; rounds extrapolated from {inputs['sample_rounds']} after a warm-up round "
                  f"where the run is longer; planned in {result.planner_wall_s:.1f} s", markup=False, highlight=False)
    if args.json_out:
        result.write(args.json_out)
        console.print(f"wrote {args.json_out}", markup=False, highlight=False)
    if args.plot:
        from .sim.plan_plot import plot_plan

        plot_plan(result, args.plot, title=plan_title(result))
        console.print(f"wrote {args.plot}", markup=False, highlight=False)
    return 0
