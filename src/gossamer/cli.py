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

from .argtypes import nonneg_float as _nonneg_float
from .argtypes import nonneg_int as _nonneg_int
from .argtypes import probability as _probability
from .argtypes import positive_float as _positive_float
from .argtypes import check_writable as _check_writable
from .argtypes import help_naming_algorithms
from .argtypes import positive_int as _positive_int
from .devices import add_device_argument
from .errors import ConfigError, GossamerError
from .swarm.cli import add_swarm_commands, parse_options, run_swarm_command

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _add_swarm_args(p: argparse.ArgumentParser, *, task_default: str | None) -> None:
    p.add_argument("--task", default=task_default, help="workload: charlm, digits or quadratic (default: charlm)")
    p.add_argument("--peers", type=_positive_int, default=None, help="number of simulated peers (default 8)")
    p.add_argument("--steps", type=_positive_int, default=None, help="local steps per peer (default per task)")
    p.add_argument("--inner-steps", type=_positive_int, default=None, help="H: local steps between syncs, for the algorithms that have inner steps")
    p.add_argument("--link", default=None, help="link model UP[/DOWN],LATENCY[,LOSS] (one-way latency; UP alone: symmetric), e.g. 100mbit,50ms (default) or 10mbit/100mbit,20ms")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iid", action="store_true", default=None, help="iid shards (default)")
    g.add_argument("--alpha", type=_positive_float, default=None, metavar="A",
                   help="non-iid shards, Dirichlet(A) proportions per label (digits) or per top-level module (charlm); smaller A: more skewed")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="seed of the whole run (default 0)")
    p.add_argument("--evals", type=_positive_int, default=None, help="validation points on the curve (default 10)")
    p.add_argument("--compute-time", type=_positive_float, default=None, help="charge this many seconds per local step instead of the measured time")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads for the simulation (default 1)")
    p.add_argument("--codec", default=None, help="payload codec spec for every algorithm, e.g. none, int8, topk:0.001+ef, powersgd:4+ef21 (default: each algorithm's own)")
    p.add_argument("--aggregator", default=None, help="aggregation rule spec, e.g. median, nnm+cclip, bucketing:2+krum (default mean)")
    p.add_argument("--byzantine", type=_nonneg_int, default=None, help="number of Byzantine peers (the last F peers)")
    p.add_argument("--attack", default=None, help="what Byzantine peers do: signflip, ipm, alie, gaussian, labelflip, mimic, freerider, freerider:stale; with --audit also tamper, equivocate, statlie, falseaccuse, hashlie, scorelie")
    p.add_argument("--tolerate", type=_nonneg_int, default=None, help="Byzantine peers the aggregator is configured for (default: --byzantine)")
    p.add_argument("--audit", type=_nonneg_int, default=None, metavar="S",
                   help="audited all-reduce with S auditors per chunk: owners' lies proven, contributions scored, liars excluded, as in a real swarm with `gossamer peer --audit S` (default 0: off)")
    p.add_argument("--collude", action="store_true", default=None,
                   help="Byzantine peers know only each other's updates, as real attackers do (default: omniscient, they see every honest update)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an algorithm option (TOML value), e.g. topology=\"torus\", for every listed algorithm that has it; repeatable")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="write results JSON here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: loss vs bytes and vs simulated time")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gossamer", description="Train one model across far-apart, churning, untrusted machines.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sim = sub.add_parser("simulate", help="run a simulated swarm and compare algorithms")
    sim.add_argument("scenario", nargs="?", help="scenario TOML file (flags override its values)")
    help_naming_algorithms(sim.add_argument("--algorithms", default=None),
                           "comma-separated, from: %(algorithm_names)s (default ddp,diloco)")
    sim.add_argument("--peer-ids", default=None, help="comma-separated peer ids in rank order, to rehearse a real swarm bit for bit (default p0..pN-1)")
    sim.add_argument("--trace", default=None, metavar="PATH",
                     help="write an event trace for `gossamer report` (several algorithms: one file each, PATH with -ALGORITHM before the extension)")
    sim.add_argument("--save", default=None, metavar="PATH",
                     help="write the trained model (peer 0's shared model) as safetensors, loadable with "
                          "model.load_state_dict(safetensors.torch.load_file(PATH)) (several algorithms: one file each, named as --trace's)")
    sim.add_argument("--ray", nargs="?", const=True, default=False, metavar="ADDRESS",
                     help="run each algorithm as a task on Ray (pip install 'gossamer[ray]'): without ADDRESS on a local "
                          "Ray started for the run, else on the cluster at ADDRESS (e.g. ray://head:10001 or auto). "
                          "The peers of one run stay in one process; results equal the in-process run's for the same "
                          "seed (wall times aside; simulated times too with --compute-time)")
    add_device_argument(sim)
    _add_swarm_args(sim, task_default=None)
    churn = sim.add_argument_group("churn (docs/concepts.md#churn; also the [churn] table of a scenario file)")
    churn.add_argument("--mtbf", type=_positive_float, default=None, metavar="SECONDS",
                       help="each peer fails after Exp(SECONDS) of simulated time online")
    churn.add_argument("--joins-per-hour", type=_nonneg_float, default=None, metavar="N",
                       help="new peers arrive as a Poisson process, N per simulated hour (at most --max-joins)")
    churn.add_argument("--max-joins", type=_nonneg_int, default=None, metavar="N", help="at most N peers join (default: --peers)")
    churn.add_argument("--stragglers", type=_probability, default=None, metavar="P",
                       help="probability that a peer is slow in a round ...")
    churn.add_argument("--slowdown", default=None, metavar="DIST",
                       help="... and by what factor: fixed:F, uniform:A,B, lognormal:SIGMA or pareto:ALPHA (default pareto:1.5)")
    churn.add_argument("--straggler-grace", type=_nonneg_float, default=None, metavar="SECONDS",
                       help="the coordinator's straggler deadline floor, as `gossamer coordinator --straggler-grace` (default 10)")

    from .cli_plan import add_plan_command

    add_plan_command(sub)

    bench = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    bench.set_defaults(bench_help=bench.format_help)
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    comm = bsub.add_parser("comm", help="ddp vs diloco at equal samples per peer: bytes ratio and loss gap")
    _add_swarm_args(comm, task_default="charlm")

    front = bsub.add_parser("frontier", help="bytes vs loss from per-step ddp down to sparse 2-bit pseudo-gradients; ratios vs ddp")
    front.add_argument("--task", default="charlm", help="workload (default charlm)")
    front.add_argument("--peers", type=_positive_int, default=8)
    front.add_argument("--steps", type=_positive_int, default=None, help="training steps per peer, equal for every run (default 600)")
    front.add_argument("--inner-steps", type=_positive_int, default=None, help="H for the local-update runs that name none (default 15)")
    front.add_argument("--runs", default=None, help="LABEL=ALGORITHM[:H][@CODEC] entries, ';'-separated, instead of the standard set (a fp32 ddp baseline is added unless one of them is ddp)")
    front.add_argument("--only", default=None, help="comma-separated labels of the standard set to run (ddp is always run)")
    front.add_argument("--seed", type=_nonneg_int, default=0)
    front.add_argument("--json", dest="json_out", metavar="PATH", help="write the results (schema of docs/results.md) here")
    front.add_argument("--plot", metavar="PATH", default=None, help="PNG of validation loss against bytes sent (default: next to --json, else frontier.png)")

    codecs = bsub.add_parser("codecs", help="codec encode+decode throughput vs memcpy, compression ratio, error")
    codecs.add_argument("--sizes", default="1M,16M,64M", help="element counts, comma-separated, K/M suffixes (default 1M,16M,64M)")
    codecs.add_argument("--repeats", type=_positive_int, default=5, help="timed repetitions per size (median reported)")
    codecs.add_argument("--codecs", default=None, help="comma-separated codec specs (default: all)")
    codecs.add_argument("--json", dest="json_out", metavar="PATH", help="write the rows as JSON here")

    comp = bsub.add_parser("compression", help="dense ddp vs compressed gradients: accuracy and bytes")
    comp.add_argument("--task", default="digits", help="workload (default digits)")
    comp.add_argument("--peers", type=_positive_int, default=8)
    comp.add_argument("--steps", type=_positive_int, default=None)
    comp.add_argument("--algorithm", default="ddp", help="algorithm whose payload is compressed (default ddp)")
    comp.add_argument("--codecs", default=None, help="comma-separated codec specs (default: the standard set)")
    comp.add_argument("--alpha", type=_positive_float, default=None, help="non-iid shards (Dirichlet alpha)")
    comp.add_argument("--seed", type=_nonneg_int, default=0)
    comp.add_argument("--json", dest="json_out", metavar="PATH")
    comp.add_argument("--plot", metavar="PATH")

    rob = bsub.add_parser("robust", help="final accuracy for every aggregator x attack")
    rob.add_argument("--task", default="digits")
    rob.add_argument("--peers", type=_positive_int, default=10)
    rob.add_argument("--byzantine", type=_nonneg_int, default=3)
    rob.add_argument("--alpha", type=_positive_float, default=1.0)
    rob.add_argument("--steps", type=_positive_int, default=None)
    rob.add_argument("--algorithm", default="ddp")
    rob.add_argument("--aggregators", default=None, help="comma-separated aggregator specs (default: the standard set)")
    rob.add_argument("--attacks", default=None, help="comma-separated attacks, 'none' for the clean run (default: all)")
    rob.add_argument("--seed", type=_nonneg_int, default=0)
    rob.add_argument("--json", dest="json_out", metavar="PATH")
    rob.add_argument("--plot", metavar="PATH", help="heatmap PNG")

    algos = bsub.add_parser("algorithms", help="ddp, diloco, streaming_diloco, noloco, spsa, gossip: bytes, peak, loss, time on two links")
    algos.add_argument("--task", default="charlm")
    algos.add_argument("--peers", type=_positive_int, default=8)
    algos.add_argument("--steps", type=_positive_int, default=None)
    algos.add_argument("--inner-steps", type=_positive_int, default=None)
    help_naming_algorithms(algos.add_argument("--algorithms", default=None),
                           "comma-separated, from: %(algorithm_names)s (default: ddp, diloco, streaming_diloco, noloco, spsa, gossip)")
    algos.add_argument("--seed", type=_nonneg_int, default=0)
    algos.add_argument("--json", dest="json_out", metavar="PATH")
    algos.add_argument("--plot", metavar="PATH", help="PNG of loss vs bytes and vs simulated time")

    spsa = bsub.add_parser("spsa", help="fine-tune a diloco-pretrained charlm with one-byte spsa on module shards: loss, bytes, hashes")
    spsa.add_argument("--peers", type=_positive_int, default=4)
    spsa.add_argument("--pretrain-steps", type=_positive_int, default=300)
    spsa.add_argument("--finetune-steps", type=_positive_int, default=1000)
    spsa.add_argument("--seed", type=_nonneg_int, default=0)
    spsa.add_argument("--json", dest="json_out", metavar="PATH")

    eq = bsub.add_parser("equal-bytes", help="gossip with a single final merge vs diloco at equal bytes")
    eq.add_argument("--task", default="charlm")
    eq.add_argument("--peers", type=_positive_int, default=8)
    eq.add_argument("--steps", type=_positive_int, default=None)
    eq.add_argument("--inner-steps", type=_positive_int, default=None)
    eq.add_argument("--codec", default="int4", help="codec of every exchange, the final merge included (default int4)")
    eq.add_argument("--seed", type=_nonneg_int, default=0)
    eq.add_argument("--json", dest="json_out", metavar="PATH")
    eq.add_argument("--plot", metavar="PATH")

    par = bsub.add_parser("parity", help="simulator vs real TCP processes, per algorithm: final state hash and payload bytes")
    par.add_argument("--task", default="digits")
    par.add_argument("--peers", type=_positive_int, default=4)
    par.add_argument("--steps", type=_positive_int, default=12)
    par.add_argument("--inner-steps", type=_positive_int, default=4)
    help_naming_algorithms(par.add_argument("--algorithms", default=None), "comma-separated subset of %(algorithm_names)s (default: all)")
    par.add_argument("--seed", type=_nonneg_int, default=0)
    par.add_argument("--json", dest="json_out", metavar="PATH")

    chb = bsub.add_parser("churn", help="one fault schedule in the simulator and in a real loopback swarm: the same committed rounds and final state")
    chb.add_argument("--schedule", default=None, metavar="JSON",
                     help="a JSON list of {round, peer, kind[, factor]} (kinds: leave, crash, join, slow; peers 0..P-1 start, "
                          "P.. join), a file of it, or a `gossamer simulate --json` results file with churn, whose run "
                          "(--algorithm's, else the first) also gives the defaults of the options below (default: a built-in schedule)")
    chb.add_argument("--algorithm", default=None, help="default diloco (or the results file's run)")
    chb.add_argument("--task", default=None, help="default digits")
    chb.add_argument("--peers", type=_positive_int, default=None, help="peers that start the run (default 4)")
    chb.add_argument("--rounds", type=_positive_int, default=None, help="default 12")
    chb.add_argument("--inner-steps", type=_positive_int, default=None, help="H, for algorithms with inner steps (default 4)")
    chb.add_argument("--step-sleep", type=_positive_float, default=None, metavar="SECONDS",
                     help="the real peers' compute per step, and the simulator's compute_time (default 0.05)")
    chb.add_argument("--straggler-grace", type=_nonneg_float, default=None, metavar="SECONDS", help="default 1")
    chb.add_argument("--max-joins", type=_nonneg_int, default=None, metavar="N",
                     help="joiner slots the data is cut for (default: the joins in the schedule)")
    chb.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="an algorithm option (TOML value) for both runtimes, e.g. tau=0; repeatable")
    chb.add_argument("--seed", type=_nonneg_int, default=None)
    chb.add_argument("--json", dest="json_out", metavar="PATH")

    soak = bsub.add_parser("soak", help="a loopback swarm under random faults: divergent, lost, livelocked rounds and memory")
    soak.add_argument("--faults", type=_positive_int, default=100)
    soak.add_argument("--peers", type=_positive_int, default=4)
    soak.add_argument("--interval", type=_positive_float, default=1.5, help="mean seconds between faults (default 1.5)")
    soak.add_argument("--codec", default="int8+ef", help="payload codec of the swarm (default int8+ef: error feedback under churn)")
    soak.add_argument("--seed", type=_nonneg_int, default=0)
    soak.add_argument("--json", dest="json_out", metavar="PATH")

    tru = bsub.add_parser("trust", help="Byzantine peers over real TCP: accuracy under each attack, exclusions, bytes vs the plain butterfly")
    tru.add_argument("--attacks", default=None, help="comma-separated attacks (default: all contributor, owner and swarm attacks)")
    tru.add_argument("--defenses", default=None, help="comma-separated defenses: default (mean), best (nnm+cclip) (default both)")
    tru.add_argument("--peers", type=_positive_int, default=10)
    tru.add_argument("--byzantine", type=_positive_int, default=3)
    tru.add_argument("--steps", type=_positive_int, default=200, help="ddp steps = rounds per run (default 200)")
    tru.add_argument("--alpha", type=_positive_float, default=1.0, help="Dirichlet non-iid shards (default 1.0)")
    tru.add_argument("--seed", type=_nonneg_int, default=0)
    tru.add_argument("--check-sim", action="store_true", help="also run each attack in the simulator and compare the exclusions")
    tru.add_argument("--json", dest="json_out", metavar="PATH")
    tr = bsub.add_parser("transport", help="all-reduce over our TCP transport vs torch.distributed gloo, 4 processes on loopback")
    tr.add_argument("--sizes-mib", default="1,16,64", help="payload sizes in MiB, comma-separated (default 1,16,64)")
    tr.add_argument("--processes", type=_positive_int, default=4)
    tr.add_argument("--repeats", type=_positive_int, default=5)
    tr.add_argument("--json", dest="json_out", metavar="PATH")

    pre = bsub.add_parser("predict", help="the simulator's predicted round and total times against real peers on tc-shaped links (needs root)")
    pre.add_argument("--settings", default=None, metavar="LINKS",
                     help="';'-separated link specs UP[/DOWN],LATENCY (latency one-way; default '20mbit,20ms;100mbit,5ms')")
    help_naming_algorithms(pre.add_argument("--algorithms", default=None),
                           "comma-separated, from ddp, diloco, streaming_diloco (default: all three)")
    pre.add_argument("--task", default="charlm", help="workload of the peers, with its default model (default charlm)")
    pre.add_argument("--peers", type=_positive_int, default=4)
    pre.add_argument("--step-sleep", type=_positive_float, default=None, metavar="S",
                     help="seconds added to every local step of the real peers (GOSSAMER_TEST_STEP_SLEEP; default 0.05)")
    pre.add_argument("--tcp", choices=("tuned", "default"), default="tuned",
                     help="TCP inside the lab: tuned for a long fat pipe (default) or the kernel's defaults")
    pre.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                     help="do not measure the software's per-round time on an unshaped link first (predict network and compute only)")
    pre.add_argument("--workdir", default=None, metavar="DIR", help="keep the runs' logs and traces here (default: a new temporary folder)")
    pre.add_argument("--seed", type=_nonneg_int, default=0)
    pre.add_argument("--json", dest="json_out", metavar="PATH")
    add_swarm_commands(sub)

    rep = sub.add_parser("report", help="summarize trace files: slow peers, aborts, exclusions, bytes, loss; optional plot of the run")
    rep.add_argument("traces", nargs="+", metavar="TRACE", help="trace files (SQLite) written by peers, the coordinator or the simulator")
    rep.add_argument("--plot", metavar="PATH.png",
                     help="write a PNG of the run here: loss and validation, payload bytes and duration per round "
                          "(aborts and exclusions marked), and the timeline of every peer")
    rep.add_argument("--json", dest="json_out", metavar="PATH",
                     help="write the report as JSON here, with the series per round (loss, bytes, duration, aborts) and the evaluations")
    return parser


def cmd_bench_algorithms(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from .bench.algorithms import DEFAULT_ALGORITHMS, run_algorithms_bench

    chosen = _split(args.algorithms) or list(DEFAULT_ALGORITHMS)
    with _Steps(console, "algorithms") as progress:
        results = run_algorithms_bench(peers=args.peers, task=args.task, steps=args.steps, inner_steps=args.inner_steps,
                                       algorithms=chosen, seed=args.seed, progress=progress)
    links = results.extra["links"]
    base = next((r for r in results.runs if r.algorithm == "ddp"), None)
    table = Table(title=f"bench algorithms: {args.task}, {args.peers} peers, {results.extra['steps']} steps, {results.extra['compute_time_s']} s compute per step")
    for col in ["algorithm", "val loss", "bytes/peer", "vs ddp", "peak/round", "rounds"] + [f"sim time @ {k}" for k in links]:
        table.add_column(col, justify="left" if col == "algorithm" else "right")
    for r in results.runs:
        ratio = f"{base.bytes_sent_per_peer / r.bytes_sent_per_peer:,.0f}x less" if base and r is not base else "1x"
        times = r.extra["sim_time_s_by_link"]
        table.add_row(r.algorithm, f"{r.final_val_loss:.4f}", _human_bytes(r.bytes_sent_per_peer), ratio,
                      _human_bytes(r.peak_bytes_per_round), str(r.rounds), *(_human_time(times[k]) for k in links))
    console.print(table)
    _write_outputs(results, args, console)
    return 0


def cmd_bench_frontier(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from .bench.frontier import DEFAULT_H, DEFAULT_RUNS, DEFAULT_STEPS, FrontierRun, parse_run, plot_frontier

    runs: list[FrontierRun] = list(DEFAULT_RUNS)
    if args.only and args.runs:
        raise ConfigError("--only picks from the standard runs and --runs replaces them: give one of them")
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        known = [r.label for r in DEFAULT_RUNS]
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ConfigError(f"--only: unknown run(s) {', '.join(unknown)}; the standard runs are: {', '.join(known)}")
        runs = [r for r in DEFAULT_RUNS if r.label in wanted or r.algorithm == "ddp"]
    if args.runs:
        runs = [parse_run(t) for t in args.runs.split(";") if t.strip()]
        if not any(r.algorithm == "ddp" for r in runs):
            runs.insert(0, DEFAULT_RUNS[0])
    plot = args.plot or (str(Path(args.json_out).with_suffix(".png")) if args.json_out else "frontier.png")
    for out in (args.json_out, plot):
        if out:
            _check_writable(out)
    from .bench.frontier import run_frontier_bench

    with _Steps(console, "frontier") as progress:
        results = run_frontier_bench(task=args.task, peers=args.peers, steps=args.steps or DEFAULT_STEPS, runs=runs,
                                     inner_steps=args.inner_steps or DEFAULT_H, seed=args.seed, progress=progress,
                                     task_options=None)
    x = results.extra
    table = Table(title=f"bench frontier: {args.task}, {args.peers} peers, {x['steps']} steps per peer (equal samples); "
                        f"target: >= {x['target_ratio']:,.0f}x fewer bytes than ddp at <= {x['target_gap']:.0%} higher loss")
    for col in ("run", "codec", "H", "val loss", "vs ddp", "bytes/peer", "fewer bytes", "target"):
        table.add_column(col, justify="left" if col in ("run", "codec") else "right")
    for r in results.runs:
        e = r.extra
        table.add_row(e["label"], r.codec, str(e["inner_steps"]), f"{r.final_val_loss:.4f}", f"{e['loss_gap_vs_ddp']:+.2%}",
                      _human_bytes(r.bytes_sent_per_peer), f"{e['bytes_ratio_vs_ddp']:,.0f}x",
                      "baseline" if r is results.runs[0] else ("met" if e["meets_target"] else "-"))
    console.print(table)
    if args.json_out:
        results.write(args.json_out)
        console.print(f"wrote {args.json_out}")
    plot_frontier(results, plot)
    console.print(f"wrote {plot}")
    return 0


def cmd_bench_spsa(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from .bench.algorithms import run_spsa_finetune_bench

    with _Steps(console, "spsa fine-tune") as progress:
        results = run_spsa_finetune_bench(peers=args.peers, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
                                          seed=args.seed, progress=progress)
    pre, fine = results.runs
    table = Table(title=f"bench spsa: charlm, {args.peers} peers, diloco {args.pretrain_steps} steps then spsa {args.finetune_steps} steps")
    for col in ["phase", "val loss", "shard loss", "payload bytes/peer", "bytes/peer (with framing)", "hashes equal"]:
        table.add_column(col, justify="left" if col == "phase" else "right")
    e = fine.extra
    table.add_row("pretrained (diloco, iid)", f"{pre.final_val_loss:.4f}", f"{e['shard_loss_before']:.4f}",
                  f"{pre.extra['payload_bytes_per_peer']:,.0f}", _human_bytes(pre.bytes_sent_per_peer), str(pre.extra["state_hashes_equal"]))
    table.add_row("fine-tuned (spsa, module shards)", f"{e['val_loss_after']:.4f}", f"{e['shard_loss_after']:.4f}",
                  f"{e['payload_bytes_per_peer']:,.0f}", _human_bytes(fine.bytes_sent_per_peer), str(e["state_hashes_equal"]))
    console.print(table)
    console.print(f"spsa payload: {e['payload_bytes_per_peer']:,.0f} bytes per peer = {args.finetune_steps} steps x {args.peers - 1} destinations x 1 byte")
    _write_outputs(results, args, console)
    return 0


def cmd_bench_equal_bytes(args: argparse.Namespace, console: Any) -> int:
    from .bench.algorithms import run_equal_bytes_bench

    with _Steps(console, "runs") as progress:
        results = run_equal_bytes_bench(peers=args.peers, task=args.task, steps=args.steps, inner_steps=args.inner_steps,
                                        codec=args.codec, seed=args.seed, progress=progress)
    x = results.extra
    console.print(_results_table(results, title=f"bench equal-bytes: {args.task}, {args.peers} peers, {x['steps']} steps, codec {args.codec}"))
    dil, gos = results.runs
    console.print(f"gossip (ring, H={x['gossip_inner_steps']}, one final merge) sent {x['bytes_ratio']:.2f}x diloco's bytes (H={x['diloco_inner_steps']}); "
                  f"validation loss {gos.final_val_loss:.4f} vs {dil.final_val_loss:.4f} ({(gos.final_val_loss / dil.final_val_loss - 1) * 100:+.1f}%)")
    _write_outputs(results, args, console)
    return 0


def cmd_bench_parity(args: argparse.Namespace, console: Any) -> int:
    import json

    from rich.table import Table

    from .bench.parity import run_parity_bench

    if args.json_out:
        _check_writable(args.json_out)
    with console.status("parity: simulator vs real processes ...") as status:
        result = run_parity_bench(_split(args.algorithms), task=args.task, peers=args.peers, steps=args.steps,
                                  inner_steps=args.inner_steps, seed=args.seed,
                                  progress=lambda a, k, n: status.update(f"parity: {a} done ({k}/{n})"))
    table = Table(title=f"parity: {args.task}, {args.peers} peers, {args.steps} steps, seed {args.seed} ({result['cores']} cores)")
    for col in ("algorithm", "codec", "rounds", "sim hash", "tcp hash", "state", "payload bytes/peer", "bytes", "sim wall", "tcp wall"):
        table.add_column(col, justify="left" if col in ("algorithm", "codec", "sim hash", "tcp hash") else "right")
    for r in result["runs"]:
        table.add_row(r["algorithm"], r["codec"], str(r["rounds"]), r["sim_hash"][:12], r["tcp_hash"][:12],
                      "equal" if r["hash_equal"] else "[red]DIFFERENT[/red]", f"{sum(r['tcp_payload_bytes']) / len(r['tcp_payload_bytes']):,.0f}",
                      "equal" if r["bytes_equal"] else "[red]DIFFERENT[/red]", f"{r['sim_wall_s']:.1f} s", f"{r['tcp_wall_s']:.1f} s")
    console.print(table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    return 0 if all(r["hash_equal"] and r["bytes_equal"] for r in result["runs"]) else 1


def cmd_bench_churn(args: argparse.Namespace, console: Any) -> int:
    import json

    from rich.table import Table

    from .bench.churn import DEFAULT_SCHEDULE, check_schedule, load_schedule, run_churn_replay

    if args.json_out:
        _check_writable(args.json_out)
    events, got = load_schedule(args.schedule, args.algorithm) if args.schedule else (list(DEFAULT_SCHEDULE), {})
    defaults = {"algorithm": "diloco", "task": "digits", "peers": 4, "rounds": 12, "inner_steps": 4, "step_sleep": 0.05,
                "straggler_grace": 1.0, "max_joins": None, "seed": 0}
    cfg = {k: getattr(args, k) if getattr(args, k) is not None else got.get(k, d) for k, d in defaults.items()}
    options = dict(got.get("options") or {}) | (parse_options(args.option) if args.option else {})
    if got:
        console.print(f"replaying the realized schedule of the {got.get('run')} run in {args.schedule}: "
                      + ", ".join(f"{k} {cfg[k]}" for k in ("peers", "rounds", "inner_steps", "step_sleep",
                                                            "straggler_grace", "max_joins")))
    check_schedule(events, cfg["peers"], rounds=cfg["rounds"], max_joins=cfg["max_joins"])  # before anything runs
    with console.status("churn: the schedule in the simulator, then in a real swarm on 127.0.0.1 ..."):
        row = run_churn_replay(events, algorithm=cfg["algorithm"], task=cfg["task"], peers=cfg["peers"],
                               inner_steps=cfg["inner_steps"], rounds=cfg["rounds"], step_sleep=cfg["step_sleep"],
                               straggler_grace=cfg["straggler_grace"], seed=cfg["seed"], options=options,
                               max_joins=cfg["max_joins"])
    faults = "; ".join(f"r{e['round']} p{e['peer']} {e['kind']}" + (f" x{e['factor']:g}" if e.get("factor", 1) != 1 else "")
                       for e in row["events"][:12]) + (f"; ... ({len(row['events'])} faults)" if len(row["events"]) > 12 else "")
    table = Table(title=f"churn replay: {cfg['algorithm']} on {cfg['task']}, {cfg['peers']} peers, {cfg['rounds']} rounds, "
                        f"{cfg['step_sleep']:g} s per step, grace {cfg['straggler_grace']:g} s; {faults}")
    for col in ("round", "simulator: members (attempts)", "real swarm: members (attempts)", "match"):
        table.add_column(col, justify="right" if col == "round" else "left")
    members = sorted({p for r in row["sim_rounds"] + row["real_rounds"] for p in r[1]})
    names = {p: f"p{i}" for i, p in enumerate(members)}
    sim = {r[0]: r for r in row["sim_rounds"]}
    real = {r[0]: r for r in row["real_rounds"]}
    for k in sorted(set(sim) | set(real)):
        cell = [" ".join(names[p] for p in x[1]) + f" ({x[2]})" if x else "-" for x in (sim.get(k), real.get(k))]
        table.add_row(str(k), *cell, "yes" if sim.get(k) == real.get(k) else "[red]DIFFERENT[/red]")
    console.print(table)
    console.print(f"final state: simulator {row['sim_hash'][:24]}, real {row['real_hash'][:24]}: "
                  + ("equal" if row["hash_equal"] else "[red]DIFFERENT[/red]")
                  + f"; simulated goodput {row['sim_goodput']:.0%}; real swarm {row['real_wall_s']:.1f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(row, indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    return 0 if row["rounds_equal"] and row["hash_equal"] else 1


def cmd_bench_predict(args: argparse.Namespace, console: Any) -> int:
    import json
    import signal

    from rich.table import Table

    from .bench.netns import support_problem
    from .bench.predict import DEFAULT_ALGORITHMS, DEFAULT_SETTINGS, DEFAULT_STEP_SLEEP, check_setting, run_predict_bench

    settings = [x.strip() for x in args.settings.split(";") if x.strip()] if args.settings else list(DEFAULT_SETTINGS)
    if not settings:
        raise ConfigError("--settings names no link; give e.g. '20mbit,20ms;100mbit,5ms'")
    for text in settings:
        check_setting(text)
    algorithms = _split(args.algorithms) or list(DEFAULT_ALGORITHMS)
    for a in algorithms:
        if a not in DEFAULT_ALGORITHMS:
            raise ConfigError(f"bench predict runs {', '.join(DEFAULT_ALGORITHMS)}; got {a!r}")
    if args.json_out:
        _check_writable(args.json_out)
    problem = support_problem()
    if problem is not None:
        sys.stderr.write(f"gossamer bench predict {problem}\n")
        return EXIT_USAGE

    def stop(signum: int, frame: Any) -> None:  # SIGTERM: unwind, so that namespaces and processes go
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with console.status("predict ...") as status:
            result = run_predict_bench(settings, algorithms, task=args.task, peers=args.peers,
                                       step_sleep=args.step_sleep or DEFAULT_STEP_SLEEP, seed=args.seed, tcp=args.tcp,
                                       calibrate=args.calibrate, workdir=args.workdir, progress=status.update)
    finally:
        signal.signal(signal.SIGTERM, previous)
    table = Table(title=f"predict: {args.task}, {args.peers} peers, +{result['step_sleep_s']} s per step, tcp {args.tcp} "
                        f"({result['cores']} cores, load average up to {max(r['loadavg'] for r in result['runs']):.1f})")
    for col in ("algorithm", "link (one-way)", "time", "predicted", "measured", "error",
                "without overhead", "error"):
        table.add_column(col, justify="left" if col in ("algorithm", "link (one-way)", "time") else "right")
    for r in result["rows"]:
        err = r["error_pct"]
        table.add_row(r["algorithm"], r["link"], "per round" if r["metric"] == "round" else "total after round 0",
                      f"{r['predicted_s']:.3f} s", f"{r['measured_s']:.3f} s",
                      f"{err:+.1f}%" if abs(err) <= 10 else f"[red]{err:+.1f}%[/red]",
                      f"{r['predicted_without_overhead_s']:.3f} s", f"{r['error_without_overhead_pct']:+.1f}%")
    console.print(table)
    if result["calibration"]:
        console.print("round overhead (software time per round, unshaped link): " + ", ".join(
            f"{a} {c['round_overhead_s'] * 1e3:.0f} ms" for a, c in result["calibration"].items()))
    worst = result["max_abs_error_pct"]
    console.print(f"largest error {worst:.1f}% ({'within' if worst <= 10 else 'outside'} the 10% target); "
                  f"payload bytes {'equal' if all(r['bytes_equal'] for r in result['runs']) else '[red]DIFFERENT[/red]'} "
                  f"in the simulator and the real runs")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    return 0 if all(r["bytes_equal"] for r in result["runs"]) else 1


def cmd_bench_soak(args: argparse.Namespace, console: Any) -> int:
    import json

    from rich.table import Table

    from .bench.soak import run_soak
    from .codecs import make_codec

    if args.json_out:
        _check_writable(args.json_out)
    make_codec(args.codec)
    with console.status("soak ...") as status:
        r = run_soak(faults=args.faults, peers=args.peers, interval=args.interval, codec=args.codec, seed=args.seed,
                     progress=lambda kind, k, n: status.update(f"soak: fault {k}/{n} ({kind})"))
    table = Table(title=f"soak: {r['faults']} faults, {r['peers']} peers, {r['codec']}, {r['wall_s']:.0f} s ({r['cores']} cores)")
    for col, target in (("faults", ""), ("coordinator restarts", ""), ("rounds committed", ""), ("divergent", "0"),
                        ("lost", "0"), ("livelocks", "0"), ("max gap", ""), ("rss growth", "~0")):
        table.add_column(col + (f" (target {target})" if target else ""), justify="right")
    table.add_row(str(r["faults"]), str(r["coordinator_restarts"]), str(r["rounds_committed"]), str(r["divergent_rounds"]),
                  str(r["lost_rounds"]), str(r["livelocks"]), f"{r['max_round_gap_s']} s", f"{r['rss_growth_mb']} MB")
    console.print(table)
    console.print(f"fault kinds: {r['fault_kinds']}; aborts {r['aborts']}, evictions {r['evictions']}, "
                  f"stragglers {r['stragglers']}, adoptions {r['adopts']}; logs in {r['workdir']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    ok = r["divergent_rounds"] == 0 and r["lost_rounds"] == 0 and r["livelocks"] == 0
    return 0 if ok else 1


def cmd_bench_trust(args: argparse.Namespace, console: Any) -> int:
    import json

    from rich.table import Table

    from .bench.trust import run_trust_bench

    if args.json_out:
        _check_writable(args.json_out)
    attacks = [a for a in args.attacks.split(",") if a] if args.attacks else None
    defenses = [d for d in args.defenses.split(",") if d] if args.defenses else None
    with console.status("trust ...") as status:
        r = run_trust_bench(attacks, defenses, peers=args.peers, byzantine=args.byzantine, steps=args.steps,
                            alpha=args.alpha, seed=args.seed, progress=status.update, partial=args.json_out,
                            check_sim=args.check_sim)
    table = Table(title=f"trust: digits, ddp, {r['peers']} peers of which {r['byzantine']} Byzantine, "
                        f"alpha {r['alpha']}, {r['steps']} rounds, audited all-reduce ({r['cores']} cores)")
    for col in ("attack", "defense", "accuracy", "clean", "excluded (round)", "honest excluded", "bytes vs butterfly"):
        table.add_column(col, justify="left" if col in ("attack", "defense", "excluded (round)") else "right")
    for row in r["runs"]:
        if "error" in row:
            table.add_row(row["attack"], f"{row['defense']} ({row['aggregator']})", "failed", "", row["error"].splitlines()[0][:60], "", "")
            continue
        ex = ", ".join(f"{p[:6]}@{k}" for p, k in sorted(row["excluded"].items(), key=lambda kv: kv[1])) or "-"
        table.add_row(row["attack"], f"{row['defense']} ({row['aggregator']})", f"{100 * row['final_val_metric']:.1f}%",
                      f"{100 * row['clean_val_metric']:.1f}%", ex, str(len(row["honest_excluded"])),
                      f"{row['bytes_ratio_vs_butterfly']:.2f}x")
    console.print(table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    return 0


def cmd_bench_transport(args: argparse.Namespace, console: Any) -> int:
    import json

    from .bench.transport import format_table, run_transport_bench

    try:
        sizes = tuple(float(x) for x in _split(args.sizes_mib) or [])
    except ValueError:
        raise ConfigError(f"bad --sizes-mib {args.sizes_mib!r}: expected numbers of MiB such as 1,16,64") from None
    if not sizes or any(x <= 0 for x in sizes):
        raise ConfigError(f"bad --sizes-mib {args.sizes_mib!r}: sizes must be positive")
    with console.status("all-reduce: ours vs gloo ...") as status:
        result = run_transport_bench(sizes_mib=sizes, processes=args.processes, repeats=args.repeats, progress=lambda msg: status.update(msg))
    console.print(format_table(result), markup=False, highlight=False)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    return 0


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _count(text: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper()
    try:
        value = int(float(t[:-1]) * scale[t[-1]]) if t and t[-1] in scale else int(t)
    except (ValueError, IndexError):
        raise ConfigError(f"bad element count {text!r}: expected an integer with an optional K/M/G suffix, e.g. 16M") from None
    if value <= 0:
        raise ConfigError(f"element counts must be positive, got {text!r}")
    return value


class _Steps:
    """A rich progress bar driven by ``progress(label, done, total)`` callbacks."""

    def __init__(self, console: Any, what: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[label]}"), TimeElapsedColumn(), console=console)
        self.task = self.bar.add_task(what, total=None, label="")

    def __enter__(self) -> "_Steps":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, label: str, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total, label=label)


def cmd_bench_codecs(args: argparse.Namespace, console: Any) -> int:
    import json

    from rich.table import Table

    from .bench.codecs import run_codec_bench
    from .codecs import make_codec

    sizes = [_count(x) for x in (_split(args.sizes) or [])]
    specs = _split(args.codecs)
    for spec in specs or []:
        make_codec(spec)
    with console.status("benchmarking codecs ...") as status:
        result = run_codec_bench(sizes=sizes, repeats=args.repeats, specs=specs, progress=lambda msg: status.update(msg))
    table = Table(title=f"codecs: encode+decode throughput vs memcpy ({result.get('cores')} cores, medians of {args.repeats}; "
                        f"int8/int4 kernels: {result.get('quant_kernels')}, ctopk/crandk: {result.get('sparse_kernels')})")
    for col in ("codec", "elements", "MB/s", "memcpy MB/s", "vs memcpy", "compression", "rel error"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for r in result["rows"]:
        table.add_row(r["codec"], f"{r['elements']:,}", f"{r['throughput_MBps']:,.0f}", f"{r['memcpy_MBps']:,.0f}",
                      f"{r['throughput_ratio_vs_memcpy']:.3f}x", f"{r['compression_ratio']:.1f}x", f"{r['rel_error']:.2e}")
    console.print(table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    return 0


def cmd_bench_compression(args: argparse.Namespace, console: Any) -> int:
    from .bench.compression import DEFAULT_CODECS, run_compression_bench

    codecs = _split(args.codecs) or list(DEFAULT_CODECS)
    with _Steps(console, "codecs") as progress:
        results = run_compression_bench(task=args.task, peers=args.peers, steps=args.steps, algorithm=args.algorithm,
                                        codecs=codecs, alpha=args.alpha, seed=args.seed, progress=progress)
    console.print(_results_table(results, title=f"bench compression: {args.task}, {args.peers} peers, {args.algorithm}", baseline="codec"))
    _write_outputs(results, args, console)
    return 0


def cmd_bench_robust(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from .bench.robust import DEFAULT_AGGREGATORS, DEFAULT_ATTACKS, matrix, plot_heatmap, run_robust_bench

    aggs = _split(args.aggregators) or list(DEFAULT_AGGREGATORS)
    attacks = _split(args.attacks) or list(DEFAULT_ATTACKS)
    with _Steps(console, "aggregator x attack") as progress:
        results = run_robust_bench(task=args.task, peers=args.peers, byzantine=args.byzantine, alpha=args.alpha, steps=args.steps,
                                   algorithm=args.algorithm, aggregators=aggs, attacks=attacks, seed=args.seed, progress=progress)
    m = matrix(results)
    table = Table(title=f"bench robust: {args.task}, {args.peers} peers, {args.byzantine} Byzantine, alpha {args.alpha}: final {results.runs[0].metric_name}")
    table.add_column("aggregator")
    for a in attacks:
        table.add_column(a, justify="right")
    for agg in aggs:
        table.add_row(agg, *(f"{m[agg][a]:.3f}" for a in attacks))
    console.print(table)
    summary = results.extra["robustness"]
    best = summary["best"]
    console.print(f"best configuration: [bold]{best}[/bold], worst drop under attack {summary['aggregators'][best]['worst_drop_vs_best_clean'] * 100:.1f} points; "
                  f"plain mean's worst drop {summary['mean_worst_drop'] * 100 if summary['mean_worst_drop'] is not None else float('nan'):.1f} points")
    _write_outputs(results, args, console, plot=lambda r, path: plot_heatmap(r, path))
    return 0


def _scenario_from_args(args: argparse.Namespace, *, algorithms: str | None) -> Any:
    from .sim.scenario import Scenario

    overrides = {
        "task": args.task,
        "algorithms": algorithms,
        "peers": args.peers if args.peers is not None or not getattr(args, "peer_ids", None) else len(_split(args.peer_ids) or []),
        "steps": args.steps,
        "inner_steps": args.inner_steps,
        "link": args.link,
        "alpha": args.alpha,
        "iid": True if args.iid else None,
        "seed": args.seed,
        "evals": args.evals,
        "compute_time": args.compute_time,
        "threads": args.threads,
        "codec": args.codec,
        "aggregator": args.aggregator,
        "byzantine": args.byzantine,
        "attack": args.attack,
        "tolerate": args.tolerate,
        "audit": getattr(args, "audit", None),
        "collude": getattr(args, "collude", None),
        "peer_ids": tuple(_split(getattr(args, "peer_ids", None)) or ()) or None,
        "trace": getattr(args, "trace", None),
        "save": getattr(args, "save", None),
        "device": getattr(args, "device", None),
    }
    scenario_path = getattr(args, "scenario", None)
    if scenario_path:
        scenario = Scenario.from_toml(scenario_path, **overrides)
    else:
        scenario = Scenario.from_dict({}, source="command line", **overrides)
    if args.option:
        options = parse_options(args.option)
        if "inner_steps" in options and args.inner_steps is not None:
            raise ConfigError("inner_steps given twice (--inner-steps and --option inner_steps=...): give it once")
        scenario = _with_options(scenario, options)
    flags = {k: getattr(args, k, None) for k in ("mtbf", "joins_per_hour", "max_joins", "stragglers", "slowdown",
                                                   "straggler_grace")}
    flags = {k: v for k, v in flags.items() if v is not None}
    if flags:  # the flags override the scenario file's [churn] table key by key
        import dataclasses

        churn = scenario.churn.as_dict() if scenario.churn is not None else {}
        scenario = dataclasses.replace(scenario, churn=churn | flags)
    return scenario


def _with_options(scenario: Any, options: dict[str, Any]) -> Any:
    """``scenario`` with ``options`` added to every algorithm that has them; an
    option no listed algorithm has raises ``ConfigError`` naming it."""
    import dataclasses

    from .algorithms import ALGORITHMS

    per = {a: dict(scenario.algorithm_options.get(a, {})) for a in scenario.algorithms}
    for key, value in options.items():
        takers = [a for a in scenario.algorithms if key in {f.name for f in dataclasses.fields(ALGORITHMS[a][1])}]
        if not takers:
            raise ConfigError(f"--option {key} applies to none of {', '.join(scenario.algorithms)}")
        for a in takers:
            per[a][key] = value
    merged = dict(scenario.algorithm_options) | per
    return dataclasses.replace(scenario, algorithm_options=merged)


def _run_scenario(scenario: Any, console: Any, *, ray: bool | str = False) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .sim.runner import simulate

    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=console, transient=False)
    ids: dict[str, Any] = {}

    def progress(algorithm: str, done: int, total: int) -> None:
        if not ids:  # the first step: the task loaded and the shards checked, so training starts now
            bar.start()
            ids.update({a: bar.add_task(a, total=scenario.steps) for a in scenario.algorithms})
        bar.update(ids[algorithm], completed=done)

    try:
        return simulate(scenario, progress=progress, ray=ray)
    finally:
        if ids:
            bar.stop()


def _results_table(results: Any, *, title: str, baseline: str = "algorithm") -> Any:
    """One row per run; ratios against the ddp run (or, with ``baseline="codec"``, the dense run)."""
    from rich.table import Table

    if baseline == "codec":
        base = next((r for r in results.runs if r.codec in ("none", "fp32")), None)
    else:
        base = next((r for r in results.runs if r.algorithm == "ddp" and r.codec in ("none", "fp32")), None)
    table = Table(title=title)
    metrics = {r.metric_name for r in results.runs}
    metric_col = "val " + _metric_label(next(iter(metrics))) if len(metrics) == 1 else "val metric"
    # a task whose metric is its loss (charlm) gets one column, named with the unit
    loss_only = bool(results.runs) and all(m.startswith("val_loss") for m in metrics)
    loss_col = metric_col if loss_only else "val loss"
    churn = any("churn" in r.extra for r in results.runs)
    for col in ("algorithm", "codec", loss_col, *(() if loss_only else (metric_col,)), "bytes/peer", "vs dense" if baseline == "codec" else "vs ddp", "peak/round", "rounds", "sim time", *(("goodput", "fail/join/late") if churn else ()), "wall time", "wall/round", "parity"):
        table.add_column(col, justify="left" if col in ("algorithm", "codec") else "right")
    for r in results.runs:
        ratio = f"{base.bytes_sent_per_peer / r.bytes_sent_per_peer:,.1f}x less" if base and r.bytes_sent_per_peer else "-"
        if base is r:
            ratio = "1.0x"
        table.add_row(
            r.algorithm,
            r.codec,
            f"{r.final_val_loss:.4f}",
            *(() if loss_only else
              (f"{r.final_val_metric:.4f}" + ("" if metric_col != "val metric" else f" ({_metric_label(r.metric_name)})"),)),
            _human_bytes(r.bytes_sent_per_peer),
            ratio,
            _human_bytes(r.peak_bytes_per_round),
            str(r.rounds),
            _human_time(r.sim_time_s),
            *((_churn_cells(r.extra.get("churn")) if churn else ())),
            _human_time(r.wall_time_s),
            _human_time(r.extra["wall_s_per_round"]) if "wall_s_per_round" in r.extra else "-",
            _parity(r),
        )
    return table


def _churn_cells(c: dict[str, Any] | None) -> tuple[str, str]:
    """Goodput (committed compute / all compute) and the fault counts of a run with churn."""
    if not c:
        return "-", "-"
    done = "" if c.get("completed", True) else " (all failed)"
    return f"{c['goodput']:.0%}", f"{c['failures']}/{c['joins']}/{c['sat_out']}{done}"


def _metric_label(metric_name: str) -> str:
    """``val_accuracy`` -> ``accuracy``, ``val_loss_nats_per_char`` -> ``loss nats per char``."""
    name = metric_name[4:] if metric_name.startswith("val_") else metric_name
    return name.replace("_", " ")


def _scenario_details(scenario: Any) -> str:
    """What a results title must say beyond task, peers, steps and link: the
    shards when non-iid, the Byzantine peers and their attack, the aggregator
    whenever it is not the plain mean or there are attackers, and the audit."""
    parts = []
    if not scenario.iid:
        parts.append("non-iid" + (f" (alpha {scenario.alpha:g})" if scenario.alpha is not None else ""))
    if scenario.byzantine:
        parts.append(f"{scenario.byzantine} Byzantine ({scenario.attack}{', colluding' if scenario.collude else ''})")
    if scenario.aggregator != "mean" or scenario.byzantine or scenario.tolerate:
        parts.append(f"aggregator {scenario.aggregator}" + (f" (tolerates {scenario.tolerate})" if scenario.tolerate != scenario.byzantine else ""))
    if scenario.audit:
        parts.append(f"audited ({scenario.audit} auditor/chunk)")
    c = getattr(scenario, "churn", None)
    if c is not None:
        bits = [f"mtbf {c.mtbf:g} s" if c.mtbf else "", f"{c.joins_per_hour:g} joins/h" if c.joins_per_hour else "",
                f"stragglers {c.stragglers:g} x {c.slowdown}" if c.stragglers else "",
                f"{len(c.events)} scheduled faults" if c.events else ""]
        parts.append("churn: " + ", ".join(b for b in bits if b) + f" (grace {c.straggler_grace:g} s)")
    return "".join(", " + p for p in parts)


def _parity(r: Any) -> str:
    if r.extra.get("state_hashes_equal"):
        return "ok"
    return "DIVERGED" if r.extra.get("bit_parity_expected", True) else "n/a"


def _loss_unit(task: str) -> str:
    """The ``loss_unit`` of the built-in task named ``task``, or "" for any other name."""
    from .tasks import TASK_NAMES, make_task

    return make_task(task).loss_unit if task in TASK_NAMES else ""


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


def _write_outputs(results: Any, args: argparse.Namespace, console: Any, *, plot: Any = None, title: str | None = None) -> None:
    if args.json_out:
        results.write(args.json_out)
        console.print(f"wrote {args.json_out}")
    if getattr(args, "plot", None):
        if plot is None:
            from .trace.plots import plot_results

            if "loss_unit" not in results.extra:  # results a bench built itself
                results.extra["loss_unit"] = _loss_unit(results.task)
            plot = lambda r, path: plot_results(r, path, title=title)  # noqa: E731
        plot(results, args.plot)
        console.print(f"wrote {args.plot}")


def cmd_simulate(args: argparse.Namespace, console: Any) -> int:
    if isinstance(args.ray, str) and args.scenario is None and args.ray.endswith(".toml") and Path(args.ray).is_file():
        args.scenario, args.ray = args.ray, True  # `--ray scenario.toml`: the file is the scenario, not an address
    if args.ray is not False:
        from .sim.cluster import import_ray

        import_ray()  # one line and exit 2 now, not after the checks, when Ray is not installed
    scenario = _scenario_from_args(args, algorithms=args.algorithms)
    for out in (args.json_out, args.plot):
        if out:
            _check_writable(out)
    results = _run_scenario(scenario, console, ray=args.ray)
    title = f"{scenario.task_name}: {scenario.peers} peers, {scenario.steps} steps each, link {scenario.link}" + _scenario_details(scenario)
    if args.ray is not False:
        title += ", on Ray" + ("" if args.ray is True else f" at {args.ray}")
    console.print(_results_table(results, title=title))
    for run in results.runs:
        x = run.extra
        if "wall_s_per_round" in x:
            console.print(f"{run.algorithm}: {x['wall_s_per_round']:.2f} s wall per simulated round ({run.rounds} round{'s' if run.rounds != 1 else ''}, "
                          f"{x['setup_wall_s']:.1f} s to set up {results.peers} peers); peak memory "
                          f"{x['peak_rss_bytes'] / 2**20:,.0f} MiB", markup=False, highlight=False)
    for run in results.runs:
        for d in run.extra.get("trust_decisions", []):
            console.print(f"{run.algorithm}: excluded {d['peer']} at round {d['round']} ({d['rule']}): "
                          f"{'; '.join(d['evidence'])[:300]}", markup=False, highlight=False)
    _write_outputs(results, args, console, title=title)
    for algorithm in scenario.algorithms if scenario.trace else ():
        console.print(f"wrote {scenario.trace_path(algorithm)}", markup=False, highlight=False)
    for algorithm in scenario.algorithms if scenario.save else ():
        console.print(f"wrote {scenario.save_path(algorithm)} ({algorithm}'s trained model, safetensors)", markup=False, highlight=False)
    return 0


def cmd_bench_comm(args: argparse.Namespace, console: Any) -> int:
    """ddp (dense fp32, the baseline) vs diloco (with ``--codec``, if given) at equal samples per peer."""
    import dataclasses

    from .trace.results import Results

    scenario = _scenario_from_args(args, algorithms="ddp,diloco")
    dense = dataclasses.replace(scenario, algorithms=("ddp",), codec="none")
    ours = dataclasses.replace(scenario, algorithms=("diloco",))
    first, second = _run_scenario(dense, console), _run_scenario(ours, console)
    results = Results(task=scenario.task, peers=scenario.peers, link=scenario.link, seed=scenario.seed,
                      runs=first.runs + second.runs, extra=first.extra)
    ddp, dil = results.runs
    ratio = ddp.bytes_sent_per_peer / dil.bytes_sent_per_peer
    gap = (dil.final_val_loss - ddp.final_val_loss) / ddp.final_val_loss
    results.extra.update({"bytes_ratio_ddp_over_diloco": ratio, "val_loss_gap": gap})
    title = f"bench comm: {scenario.task}, {scenario.peers} peers, ddp (fp32) vs diloco ({scenario.codec_for('diloco')})" + _scenario_details(scenario)
    console.print(_results_table(results, title=title))
    console.print(f"diloco sends [bold]{ratio:,.1f}x[/bold] fewer bytes than ddp; validation loss vs ddp {gap * 100:+.2f}%")
    _write_outputs(results, args, console, title=title)
    return 0


def cmd_report(args: argparse.Namespace, console: Any) -> int:
    """``gossamer report TRACE...``: the text report; optionally a PNG of the run and the report as JSON."""
    import json

    from .trace import TraceReader, plot_run, render_text, summarize

    for out in (args.json_out, args.plot):
        if out:
            _check_writable(out)
    with TraceReader(args.traces) as reader:
        report = summarize(reader)
        console.print(render_text(report), markup=False, highlight=False, soft_wrap=True, end="")
        if args.plot:
            plot_run(reader, args.plot)
            console.print(f"wrote {args.plot}", markup=False, highlight=False)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"wrote {args.json_out}", markup=False, highlight=False)
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
        if args.command in ("coordinator", "peer"):
            return run_swarm_command(args)
        if args.command == "simulate":
            return cmd_simulate(args, console)
        if args.command == "report":
            return cmd_report(args, console)
        if args.command == "plan":
            from .cli_plan import run_plan_command

            return run_plan_command(args, console)
        if args.command == "bench":
            handlers = {"comm": cmd_bench_comm, "codecs": cmd_bench_codecs, "compression": cmd_bench_compression,
                        "robust": cmd_bench_robust, "algorithms": cmd_bench_algorithms, "transport": cmd_bench_transport,
                        "spsa": cmd_bench_spsa, "equal-bytes": cmd_bench_equal_bytes, "parity": cmd_bench_parity, "churn": cmd_bench_churn,
                        "soak": cmd_bench_soak, "trust": cmd_bench_trust,
                        "frontier": cmd_bench_frontier, "predict": cmd_bench_predict}
            if args.bench in handlers:
                return handlers[args.bench](args, console)
            sys.stderr.write(args.bench_help())
            sys.stderr.write("gossamer bench: error: name a benchmark, e.g. `gossamer bench comm`\n")
            return EXIT_USAGE
        parser.print_help()
        return EXIT_USAGE
    except ConfigError as exc:
        sys.stderr.write(f"gossamer: error: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:  # an OS-level problem (a busy port, an address not on this host, a full disk): one line
        sys.stderr.write(f"gossamer: error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}\n")
        return EXIT_USAGE
    except GossamerError as exc:
        sys.stderr.write(f"gossamer: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("gossamer: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
