"""The ``gossamer`` command line. The CLI owns the terminal: progress bars,
tables and error lines. Bad input prints one line naming the problem and the
accepted values and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError, GossamerError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _add_swarm_args(p: argparse.ArgumentParser, *, task_default: str | None) -> None:
    p.add_argument("--task", default=task_default, help="workload: charlm, digits or quadratic (default: charlm)")
    p.add_argument("--peers", type=_positive_int, default=None, help="number of simulated peers (default 8)")
    p.add_argument("--steps", type=_positive_int, default=None, help="local steps per peer (default per task)")
    p.add_argument("--inner-steps", type=_positive_int, default=None, help="H: local steps between syncs for fedavg/diloco")
    p.add_argument("--link", default=None, help="link model BANDWIDTH,LATENCY[,LOSS], e.g. 100mbit,50ms (default)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iid", action="store_true", default=None, help="iid shards (default)")
    g.add_argument("--alpha", type=_positive_float, default=None, help="non-iid shards: Dirichlet(alpha) by label, or by module for charlm")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="seed of the whole run (default 0)")
    p.add_argument("--evals", type=_positive_int, default=None, help="validation points on the curve (default 10)")
    p.add_argument("--compute-time", type=_positive_float, default=None, help="charge this many seconds per local step instead of the measured time")
    p.add_argument("--codec", default=None, help="payload codec spec, e.g. int8, topk:0.001+ef, powersgd:4+ef21 (default none)")
    p.add_argument("--aggregator", default=None, help="aggregation rule spec, e.g. median, nnm+cclip, bucketing:2+krum (default mean)")
    p.add_argument("--byzantine", type=_nonneg_int, default=None, help="number of Byzantine peers (the last F peers)")
    p.add_argument("--attack", default=None, help="what Byzantine peers do: signflip, ipm, alie, gaussian, labelflip, mimic, freerider")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="write results JSON here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: loss vs bytes and vs simulated time")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gossamer", description="Train one model across far-apart, churning, untrusted machines.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sim = sub.add_parser("simulate", help="run a simulated swarm and compare algorithms")
    sim.add_argument("scenario", nargs="?", help="scenario TOML file (flags override its values)")
    sim.add_argument("--algorithms", default=None, help="comma-separated: ddp, fedavg, diloco (default ddp,diloco)")
    _add_swarm_args(sim, task_default=None)

    bench = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    comm = bsub.add_parser("comm", help="ddp vs diloco at equal samples per peer: bytes ratio and loss gap")
    _add_swarm_args(comm, task_default="charlm")
    return parser


def _scenario_from_args(args: argparse.Namespace, *, algorithms: str | None) -> Any:
    from .sim.scenario import Scenario

    overrides = {
        "task": args.task,
        "algorithms": algorithms,
        "peers": args.peers,
        "steps": args.steps,
        "inner_steps": args.inner_steps,
        "link": args.link,
        "alpha": args.alpha,
        "iid": True if args.iid else None,
        "seed": args.seed,
        "evals": args.evals,
        "compute_time": args.compute_time,
        "codec": args.codec,
        "aggregator": args.aggregator,
        "byzantine": args.byzantine,
        "attack": args.attack,
    }
    scenario_path = getattr(args, "scenario", None)
    if scenario_path:
        return Scenario.from_toml(scenario_path, **overrides)
    return Scenario.from_dict({}, source="command line", **overrides)


def _run_scenario(scenario: Any, console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .sim.runner import run_algorithm, task_for
    from .trace.results import Results

    with console.status(f"loading task {scenario.task} ..."):
        task = task_for(scenario)
    results = Results(task=scenario.task, peers=scenario.peers, link=scenario.link, seed=scenario.seed)
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        ids = {a: bar.add_task(a, total=scenario.steps) for a in scenario.algorithms}

        def progress(algorithm: str, done: int, total: int) -> None:
            bar.update(ids[algorithm], completed=done)

        for algorithm in scenario.algorithms:
            results.runs.append(run_algorithm(scenario, algorithm, task=task, progress=progress))
    results.extra["samples_per_peer"] = scenario.steps * task.samples_per_batch
    return results


def _results_table(results: Any, *, title: str) -> Any:
    from rich.table import Table

    base = next((r for r in results.runs if r.algorithm == "ddp"), None)
    table = Table(title=title)
    for col in ("algorithm", "codec", "val loss", "val metric", "bytes/peer", "vs ddp", "peak/round", "rounds", "sim time", "wall time", "parity"):
        table.add_column(col, justify="left" if col in ("algorithm", "codec") else "right")
    for r in results.runs:
        ratio = f"{base.bytes_sent_per_peer / r.bytes_sent_per_peer:,.1f}x less" if base and r.bytes_sent_per_peer else "-"
        if base is r:
            ratio = "1.0x"
        table.add_row(
            r.algorithm,
            r.codec,
            f"{r.final_val_loss:.4f}",
            f"{r.final_val_metric:.4f}",
            _human_bytes(r.bytes_sent_per_peer),
            ratio,
            _human_bytes(r.peak_bytes_per_round),
            str(r.rounds),
            _human_time(r.sim_time_s),
            _human_time(r.wall_time_s),
            _parity(r),
        )
    return table


def _parity(r: Any) -> str:
    if r.extra.get("state_hashes_equal"):
        return "ok"
    return "DIVERGED" if r.extra.get("bit_parity_expected", True) else "n/a"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _human_time(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _write_outputs(results: Any, args: argparse.Namespace, console: Any) -> None:
    if args.json_out:
        results.write(args.json_out)
        console.print(f"wrote {args.json_out}")
    if args.plot:
        from .trace.plots import plot_results

        plot_results(results, args.plot)
        console.print(f"wrote {args.plot}")


def cmd_simulate(args: argparse.Namespace, console: Any) -> int:
    scenario = _scenario_from_args(args, algorithms=args.algorithms)
    results = _run_scenario(scenario, console)
    console.print(_results_table(results, title=f"{scenario.task}: {scenario.peers} peers, {scenario.steps} steps each, link {scenario.link}"))
    _write_outputs(results, args, console)
    return 0


def cmd_bench_comm(args: argparse.Namespace, console: Any) -> int:
    scenario = _scenario_from_args(args, algorithms="ddp,diloco")
    results = _run_scenario(scenario, console)
    ddp, dil = results.runs
    ratio = ddp.bytes_sent_per_peer / dil.bytes_sent_per_peer
    gap = (dil.final_val_loss - ddp.final_val_loss) / ddp.final_val_loss
    results.extra.update({"bytes_ratio_ddp_over_diloco": ratio, "val_loss_gap": gap})
    console.print(_results_table(results, title=f"bench comm: {scenario.task}, {scenario.peers} peers"))
    console.print(
        f"diloco sends [bold]{ratio:,.1f}x[/bold] fewer bytes than ddp (target >= 500x); "
        f"validation loss gap {gap * 100:+.2f}% (target within 2%)"
    )
    _write_outputs(results, args, console)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    # Tables are wide: do not squeeze them into 80 columns when output is not a terminal.
    console = Console(stderr=False)
    if not console.is_terminal:
        console = Console(stderr=False, width=160)
    try:
        if args.command == "simulate":
            return cmd_simulate(args, console)
        if args.command == "bench":
            if args.bench == "comm":
                return cmd_bench_comm(args, console)
            parser.parse_args(["bench", "--help"])
            return EXIT_USAGE
        parser.print_help()
        return EXIT_USAGE
    except ConfigError as exc:
        sys.stderr.write(f"gossamer: error: {exc}\n")
        return EXIT_USAGE
    except GossamerError as exc:
        sys.stderr.write(f"gossamer: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("gossamer: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
