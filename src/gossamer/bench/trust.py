"""``gossamer bench trust``: Byzantine peers over real TCP, and how fast they are excluded.

Each run starts a coordinator and ``peers`` real ``gossamer peer`` processes on
127.0.0.1 (digits, non-iid Dirichlet(alpha) shards, ``ddp``: one round per
step), of which the last ``byzantine`` in rank order attack with
``--attack NAME`` (contributor attackers collude through a shared folder,
``--collude``). Every peer runs the audited all-reduce (``--audit 1``); a
*defense* is the aggregation rule on top:

- ``default``: ``mean`` (no robust rule: the audit, the scores and exclusion
  alone),
- ``best``: ``nnm+cclip`` tolerating ``byzantine`` peers.

Per attack and defense one row::

    {"attack", "defense", "aggregator", "final_val_metric", "clean_val_metric",
     "byzantine": [ids], "excluded": {peer: round}, "first_attack_round",
     "honest_excluded": [ids], "rounds", "bytes_per_peer", "bytes_ratio_vs_butterfly",
     "wall_s"}

``clean_val_metric`` is the same defense with no attacker; ``bytes_ratio_vs_butterfly``
divides the honest peers' median payload bytes per round by those of a clean run
over the plain butterfly (no audit) with the same aggregator, measured in the
same invocation. ``final_val_metric`` is the accuracy of the state an honest peer
committed last (its checkpoint), on digits' validation split. Attackers attack
from round 0, so ``first_attack_round`` is 0 and an exclusion at round ``r``
took ``r + 1`` rounds. With ``check_sim`` each attack row also runs the same
scenario in the simulator (same peer ids in rank order, shards, seed, colluding
attackers) and adds ``sim_excluded`` and ``same_exclusions_as_sim``
(``withhold`` needs real deadlines and is not simulated).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GossamerError
from .procs import LocalProcesses

CONTRIBUTOR = ("signflip", "ipm", "alie", "gaussian", "labelflip", "mimic", "freerider", "freerider:stale")
OWNER = ("tamper", "equivocate", "withhold", "statlie", "falseaccuse")
SWARM = ("hashlie", "scorelie")
ATTACKS = (*CONTRIBUTOR, *OWNER, *SWARM)
DEFENSES = {"default": "mean", "best": "nnm+cclip"}


def _evaluate(checkpoint: Path, seed: int) -> float:
    import torch

    from ..swarm.checkpoint import load_checkpoint
    from ..tasks import make_task

    state, _ = load_checkpoint(checkpoint)
    task = make_task("digits")
    model = task.make_model(seed)
    with torch.no_grad():
        for p, t in zip(model.parameters(), state["shared"]["tensors"]):
            p.copy_(t.view_as(p))
    return float(task.evaluate(model)[1])


def simulate_same(*, attack: str | None, aggregator: str, audit: int, ids: Sequence[str], byzantine: int, steps: int,
                  alpha: float, seed: int) -> dict[str, int]:
    """The exclusions of the same scenario in the simulator ({peer: round}), peers in rank order."""
    from ..sim.runner import run_algorithm
    from ..sim.scenario import Scenario

    scenario = Scenario(task="digits", algorithms=("ddp",), peers=len(ids), steps=steps, alpha=alpha, seed=seed,
                        byzantine=byzantine if attack else 0, attack=attack, audit=audit, collude=True,
                        aggregator=aggregator, tolerate=byzantine if aggregator != "mean" else 0, evals=1,
                        peer_ids=tuple(ids))
    return dict(run_algorithm(scenario, "ddp").extra["excluded"])


def run_swarm(*, attack: str | None, aggregator: str, audit: int, peers: int = 10, byzantine: int = 3,
              steps: int = 200, alpha: float = 1.0, seed: int = 0, timeout: float = 900.0,
              workdir: str | os.PathLike[str] | None = None, check_sim: bool = False) -> dict[str, Any]:
    """One real swarm run (see the module docstring); raises ``GossamerError`` with the logs
    when it does not finish."""
    from ..swarm.keys import load_identity

    root = Path(tempfile.mkdtemp(prefix="gossamer-trust-")) if workdir is None else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    keys = [root / f"peer{i}.pem" for i in range(peers)]
    ids = [load_identity(k).peer_id for k in keys]
    order = sorted(range(peers), key=lambda i: ids[i])
    attackers = {order[r] for r in range(peers - byzantine, peers)} if attack else set()
    env = dict(os.environ, GOSSAMER_HOME=str(root / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    events = root / "events.jsonl"
    t0 = time.perf_counter()
    honest_first = next(i for i in order if i not in attackers)
    with LocalProcesses(root, env) as swarm:
        coord = swarm.start("coordinator", ["coordinator", "--listen", "127.0.0.1:0", "--min-peers", str(peers),
                                            "--key", str(root / "coordinator.pem"), "--events", str(events),
                                            "--straggler-grace", "30"])
        port = swarm.coordinator_port("coordinator", coord)
        if port is None:
            raise GossamerError(f"trust: the coordinator did not start\n{swarm.logs(('err',), 1500)}")
        tolerate = str(byzantine) if aggregator != "mean" else "0"
        for rank, i in enumerate(order):
            args = ["peer", "--coordinator", f"127.0.0.1:{port}", "--task", "digits", "--algorithm", "ddp",
                    "--steps", str(steps), "--seed", str(seed), "--shard", f"{rank}/{peers}", "--alpha", str(alpha),
                    "--key", str(keys[i]), "--json", str(root / f"peer{i}.json"), "--deadline-floor", "10",
                    "--aggregator", aggregator, "--tolerate", tolerate, "--audit", str(audit)]
            if i == honest_first:
                args += ["--checkpoint", str(root / "ckpt"), "--checkpoint-every", str(10 * steps)]
            if i in attackers:
                args += ["--attack", str(attack), "--collude", f"{root / 'collude'}:{byzantine}"]
            swarm.start(f"peer{i}", args)
        deadline = time.monotonic() + timeout
        for proc in swarm.procs[1:]:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise GossamerError(f"trust {attack}/{aggregator}: the swarm did not finish within {timeout:g} s\n"
                                    f"{swarm.logs(('err',), 1500)}") from None
    wall = time.perf_counter() - t0
    excluded: dict[str, int] = {}
    rounds = 0
    if events.exists():
        for line in events.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("event") == "exclude":
                excluded[ev["peer"]] = int(ev["round"])
            elif ev.get("event") == "commit":
                rounds = max(rounds, int(ev["round"]) + 1)
    reports = {i: json.loads((root / f"peer{i}.json").read_text()) for i in range(peers) if (root / f"peer{i}.json").exists()}
    honest = [i for i in range(peers) if i not in attackers]
    per_round = sorted(r["payload_bytes_sent"] / max(1, r["rounds_completed"]) for i, r in reports.items() if i in honest)
    if not (root / "ckpt" / "state.json").exists():
        raise GossamerError(f"trust {attack}/{aggregator}: the honest peer wrote no checkpoint\n{logs()}")
    metric = _evaluate(root / "ckpt", seed)
    row = {"attack": attack or "none", "aggregator": aggregator, "audit": audit, "final_val_metric": metric,
           "byzantine": sorted(ids[i] for i in attackers), "excluded": excluded,
           "first_attack_round": 0 if attack else None,
           "honest_excluded": sorted(p for p in excluded if p not in {ids[i] for i in attackers}),
           "rounds": rounds, "bytes_per_peer_round": per_round[len(per_round) // 2] if per_round else 0.0,
           "wall_s": round(wall, 1)}
    if check_sim and (attack is None or attack != "withhold"):
        sim = simulate_same(attack=attack, aggregator=aggregator, audit=audit, ids=[ids[i] for i in order],
                            byzantine=byzantine, steps=steps, alpha=alpha, seed=seed)
        row["sim_excluded"] = sim
        row["same_exclusions_as_sim"] = sim == excluded
    if workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return row


def run_trust_bench(attacks: Sequence[str] | None = None, defenses: Sequence[str] | None = None, *, peers: int = 10,
                    byzantine: int = 3, steps: int = 200, alpha: float = 1.0, seed: int = 0,
                    progress: Callable[[str], None] | None = None,
                    partial: str | os.PathLike[str] | None = None, check_sim: bool = False) -> dict[str, Any]:
    """Every attack x defense row, the clean runs and the butterfly baseline (see the module docstring).
    ``partial``: a JSON file rewritten after every run (a long bench that is stopped keeps its rows)."""
    attacks = list(attacks or ATTACKS)
    for a in attacks:
        if a not in ATTACKS:
            raise ConfigError(f"unknown attack {a!r}; accepted: {', '.join(ATTACKS)}")
    defenses = list(defenses or DEFENSES)
    for d in defenses:
        if d not in DEFENSES:
            raise ConfigError(f"unknown defense {d!r}; accepted: {', '.join(DEFENSES)}")
    if not 0 < 2 * byzantine < peers:
        raise ConfigError(f"byzantine must satisfy 0 < 2 * byzantine < peers, got {byzantine} of {peers}")
    say = progress or (lambda _: None)
    common = {"peers": peers, "byzantine": byzantine, "steps": steps, "alpha": alpha, "seed": seed}
    clean: dict[str, dict[str, Any]] = {}
    plain: dict[str, dict[str, Any]] = {}
    for d in defenses:
        agg = DEFENSES[d]
        say(f"{d}: clean run over the plain butterfly (bytes baseline)")
        plain[d] = run_swarm(attack=None, aggregator=agg, audit=0, **common)
        say(f"{d}: clean run, audited")
        clean[d] = run_swarm(attack=None, aggregator=agg, audit=1, **common)
    runs: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        return {"task": "digits", "algorithm": "ddp", **common, "cores": os.cpu_count(),
                "butterfly": {d: plain[d] for d in plain}, "runs": runs}

    def save() -> None:
        if partial is not None:
            tmp = Path(partial).with_name(Path(partial).name + ".tmp")
            tmp.write_text(json.dumps(result(), indent=2) + "\n")
            os.replace(tmp, partial)

    for d in defenses:
        base = plain[d]["bytes_per_peer_round"] or 1.0
        runs.append({**clean[d], "defense": d, "clean_val_metric": clean[d]["final_val_metric"],
                     "bytes_ratio_vs_butterfly": clean[d]["bytes_per_peer_round"] / base})
        for a in attacks:
            say(f"{d}: attack {a}")
            try:
                row = run_swarm(attack=a, aggregator=DEFENSES[d], audit=1, check_sim=check_sim, **common)
            except GossamerError as exc:  # a run that fails is a result too: recorded, and the bench goes on
                say(f"{d}: attack {a} failed: {str(exc).splitlines()[0]}")
                runs.append({"attack": a, "defense": d, "aggregator": DEFENSES[d], "error": str(exc)[:2000]})
                save()
                continue
            row.update(defense=d, clean_val_metric=clean[d]["final_val_metric"],
                       bytes_ratio_vs_butterfly=row["bytes_per_peer_round"] / base)
            runs.append(row)
            save()
    return result()


def markdown_table(result: dict[str, Any]) -> str:
    """The rows of ``run_trust_bench`` as a markdown table (docs/trust.md)."""
    lines = ["| attack | defense | accuracy | clean | attackers excluded at round | honest excluded | bytes vs butterfly |",
             "|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        if "error" in row:
            lines.append(f"| {row['attack']} | {row['defense']} ({row['aggregator']}) | failed: {row['error'].splitlines()[0][:80]} | | | | |")
            continue
        byz = row["byzantine"]
        rounds = sorted(row["excluded"][p] for p in byz if p in row["excluded"])
        caught = f"{len(rounds)} of {len(byz)}: {', '.join(str(r) for r in rounds)}" if byz else "-"
        if byz and not rounds:
            caught = f"0 of {len(byz)}"
        lines.append(f"| {row['attack']} | {row['defense']} ({row['aggregator']}) | {100 * row['final_val_metric']:.1f}% | "
                     f"{100 * row['clean_val_metric']:.1f}% | {caught} | {len(row['honest_excluded'])} | "
                     f"{row['bytes_ratio_vs_butterfly']:.2f}x |")
    return "\n".join(lines)
