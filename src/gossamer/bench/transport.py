"""All-reduce over our TCP transport against ``torch.distributed`` gloo, in one run.

``run_transport_bench`` starts ``processes`` real worker processes
(``python -m gossamer.bench.transport --worker CONFIG``) on 127.0.0.1. Each
worker holds both a gloo process group (``init_method=tcp://127.0.0.1:PORT``)
and a ``TcpTransport`` connected to every other worker, with a
``Communicator`` on top. For every size, each worker builds its own seeded
random fp32 vector of ``size_bytes / 4`` elements and runs ``repeats + 1``
repetitions; the first is a warm-up and is dropped. Each repetition times one
gloo ``all_reduce`` (SUM, in place on a clone made before the clock starts)
and one ``Communicator.all_reduce`` (mean), each right after a gloo barrier,
alternating which goes first. Gloo's sum is divided by the world size outside
the clock; ours divides inside it (that is what our API returns).

Definitions:

- time of one repetition = the slowest worker's wall-clock time for the call
  (max over ranks of ``perf_counter`` after - before);
- algorithm bandwidth ``GBps = size_bytes / time / 1e9`` (the all-reduced
  vector's size, not the bytes on the wire; every member sends
  ``2 (n-1)/n * size_bytes`` in both implementations);
- ``ours_GBps`` and ``gloo_GBps`` come from the median time over the
  repetitions and ``ratio = ours_GBps / gloo_GBps`` (above 1: we are faster);
- ``ours_cpu_s`` / ``gloo_cpu_s``: CPU seconds of one call (every thread,
  ``time.process_time``) summed over the workers, median over repetitions;
  on a shared, loaded machine this is the steadier measure of cost.
- ``load``: the machine's 1-minute load average (``os.getloadavg``) before
  the workers start and after they end; with more runnable threads than
  cores, time is shared with other work and times grow with it (both
  sides', interleaved, so the ratio less so).

Correctness: after the warm-up and after the last repetition each worker
compares our mean with gloo's sum / n (``|a - b| <= 1e-5 + 1e-5 |b|``) and
reports ``max_abs_diff``; a row's ``match`` is True only if every worker's
results matched. The bench does not raise on a mismatch (a caller or test
decides); it raises ``GossamerError`` if a worker fails, and kills every
worker on error and after ``timeout`` seconds, so it never hangs.

``patches`` (names from ``PATCHES``) monkeypatch the candidate only, inside
the workers, to measure a proposed change to the transport before it is
made; they are never applied to the library itself. None is pending now.

No printing: pass ``progress(msg)``. ``main()`` prints a table and is what
``python -m gossamer.bench.transport`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from gossamer.errors import ConfigError, GossamerError

__all__ = ["PATCHES", "run_transport_bench", "main"]

#: Candidate-only monkeypatches the workers can apply (see ``_apply_patches``).
PATCHES: tuple[str, ...] = ()

_RTOL = 1e-5
_ATOL = 1e-5


# --------------------------------------------------------------------------- parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill does not fail on Linux
            pass


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def run_transport_bench(
    sizes_mib: Sequence[float] = (1, 16, 64),
    processes: int = 4,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
    *,
    timeout: float = 900.0,
    patches: Sequence[str] = (),
) -> dict[str, Any]:
    """All-reduce ``sizes_mib`` MiB of fp32 across ``processes`` local worker
    processes, ours vs gloo, interleaved; see the module docstring.

    Returns ``{"rows": [{"size_bytes", "ours_GBps", "gloo_GBps", "ratio",
    "ours_s", "gloo_s", "ours_cpu_s", "gloo_cpu_s", "max_abs_diff",
    "match"}], "cores", "load", "processes",
    "repeats", "patches", "definition"}``. Raises ``ConfigError`` for bad
    arguments and ``GossamerError`` if a worker fails or ``timeout`` seconds
    pass (every worker is killed first)."""
    if processes < 2:
        raise ConfigError(f"processes must be >= 2, got {processes}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    sizes = [int(round(float(s) * (1 << 20))) // 4 * 4 for s in sizes_mib]
    if not sizes or min(sizes) < 4 * processes:
        raise ConfigError(f"every size must hold at least {processes} fp32 values, got sizes_mib={list(sizes_mib)}")
    unknown = [p for p in patches if p not in PATCHES]
    if unknown:
        raise ConfigError(f"unknown patches {unknown}; known: {list(PATCHES)}")
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="gossamer-bench-transport-")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[tuple[Any, Any]] = []
    try:
        port = _free_port()
        env = dict(os.environ)
        # one compute thread per worker: the workers share the machine's cores
        env.setdefault("OMP_NUM_THREADS", "1")
        for rank in range(processes):
            cfg = {"rank": rank, "world": processes, "init": f"tcp://127.0.0.1:{port}", "sizes": sizes,
                   "repeats": repeats, "out": os.path.join(tmp, f"rank{rank}.json"), "timeout": timeout,
                   "patches": list(patches)}
            out = open(os.path.join(tmp, f"rank{rank}.out"), "wb")
            err = open(os.path.join(tmp, f"rank{rank}.err"), "wb")
            logs.append((out, err))
            procs.append(subprocess.Popen([sys.executable, "-m", "gossamer.bench.transport", "--worker", json.dumps(cfg)],
                                          stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env))
        if progress is not None:
            progress(f"started {processes} workers (gloo at 127.0.0.1:{port}), sizes {sizes} bytes, {repeats} repeats")
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                r, c = bad[0]
                _kill_all(procs)
                raise GossamerError(f"transport bench worker {r} exited with status {c}: {_tail(os.path.join(tmp, f'rank{r}.err'))}")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                _kill_all(procs)
                raise GossamerError(f"transport bench did not finish within {timeout} s (workers killed); "
                                    f"rank 0 said: {_tail(os.path.join(tmp, 'rank0.err'))}")
            time.sleep(0.05)
        results = []
        for rank in range(processes):
            with open(os.path.join(tmp, f"rank{rank}.json")) as f:
                results.append(json.load(f))
    finally:
        _kill_all(procs)
        for out, err in logs:
            out.close()
            err.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]

    rows = []
    for i, size in enumerate(sizes):
        per_rank = [res["sizes"][i] for res in results]
        ours_t = [max(r["ours_s"][k] for r in per_rank) for k in range(repeats)]
        gloo_t = [max(r["gloo_s"][k] for r in per_rank) for k in range(repeats)]
        ours_s, gloo_s = statistics.median(ours_t), statistics.median(gloo_t)
        row = {
            "size_bytes": size,
            "ours_GBps": size / ours_s / 1e9,
            "gloo_GBps": size / gloo_s / 1e9,
            "ratio": gloo_s / ours_s,
            "ours_s": ours_s,
            "gloo_s": gloo_s,
            # CPU seconds (all threads) of one call summed over the workers, median over repeats:
            # less sensitive than wall time to other load on a shared machine
            "ours_cpu_s": statistics.median(sum(r["ours_cpu_s"][k] for r in per_rank) for k in range(repeats)),
            "gloo_cpu_s": statistics.median(sum(r["gloo_cpu_s"][k] for r in per_rank) for k in range(repeats)),
            "max_abs_diff": max(r["max_abs_diff"] for r in per_rank),
            "match": all(r["match"] for r in per_rank),
        }
        rows.append(row)
        if progress is not None:
            progress(f"{size / (1 << 20):g} MiB: ours {row['ours_GBps']:.3f} GB/s, gloo {row['gloo_GBps']:.3f} GB/s, "
                     f"ratio {row['ratio']:.2f}, match {row['match']}")
    return {
        "rows": rows,
        "cores": os.cpu_count(),
        "load": load,
        "processes": processes,
        "repeats": repeats,
        "patches": list(patches),
        "definition": "GBps = size_bytes / time / 1e9 (algorithm bandwidth); time = slowest rank's call, "
                      "median over repeats (warm-up dropped); ratio = ours_GBps / gloo_GBps",
    }


# --------------------------------------------------------------------------- candidate patches


def _apply_patches(names: Sequence[str]) -> None:
    """Monkeypatch proposed transport changes into this worker process only.

    None is pending: the four measured earlier (Poly1305 frame MAC, reading
    each frame into one preallocated buffer, the lean plain-mean all-reduce,
    bigger stream chunks) are part of the library, and so are their
    successors (frame v3: GMAC after the payload, receives posted into the
    collective's buffers, buffer reuse). A new proposal adds its name to
    ``PATCHES`` and its code here."""
    for name in names:  # pragma: no cover - PATCHES is empty
        raise ConfigError(f"unknown patch {name!r}")


# --------------------------------------------------------------------------- worker


def _exchange_addresses(dist: Any, torch: Any, me: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """All-gather small JSON records over gloo (no pickling)."""
    raw = json.dumps(me).encode()
    if len(raw) > 255:
        raise ConfigError(f"address record too long: {raw!r}")
    buf = torch.zeros(256, dtype=torch.uint8)
    buf[0] = len(raw)
    buf[1:1 + len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    outs = [torch.zeros(256, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(outs, buf)
    return [json.loads(bytes(o[1:1 + int(o[0])].tolist()).decode()) for o in outs]


async def _worker_main(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from gossamer.comm.collectives import Communicator
    from gossamer.transport.identity import Identity
    from gossamer.transport.tcp import TcpTransport

    rank, world = int(cfg["rank"]), int(cfg["world"])
    timeout = float(cfg["timeout"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=cfg["init"], rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    transport = await TcpTransport.start(Identity.generate(), "bench-transport", "127.0.0.1", 0,
                                         io_timeout=min(timeout, 120.0))
    try:
        book = _exchange_addresses(dist, torch, {"id": transport.peer_id, "port": transport.address[1]}, world)
        ids = [b["id"] for b in book]
        for j in range(rank + 1, world):
            await transport.connect(ids[j], "127.0.0.1", book[j]["port"])
        until = time.monotonic() + timeout
        while len(transport.connected_peers()) < world - 1:  # inbound connections still in their handshake
            if time.monotonic() > until:
                raise GossamerError(f"rank {rank}: connected to {len(transport.connected_peers())} of {world - 1} peers")
            await asyncio.sleep(0.01)
        await asyncio.to_thread(dist.barrier)
        comm = Communicator(transport, ids, timeout=timeout)
        out_sizes = []
        for size in cfg["sizes"]:
            n = size // 4
            gen = torch.Generator().manual_seed(1000 * rank + n)
            x = torch.randn(n, generator=gen)
            ours_s: list[float] = []
            gloo_s: list[float] = []
            ours_cpu: list[float] = []
            gloo_cpu: list[float] = []
            max_diff = 0.0
            match = True
            reps = int(cfg["repeats"]) + 1
            for r in range(reps):
                y = x.clone()
                ours = None
                for which in (("gloo", "ours") if r % 2 == 0 else ("ours", "gloo")):
                    # The barrier waits in a thread so this event loop stays
                    # live (send now returns only once a frame is in the
                    # kernel, so a blocked loop would no longer stall peers,
                    # but late control traffic is still served promptly).
                    await asyncio.to_thread(dist.barrier)
                    if which == "gloo":
                        c0, t0 = time.process_time(), time.perf_counter()
                        dist.all_reduce(y)
                        dt, dc = time.perf_counter() - t0, time.process_time() - c0
                        if r:
                            gloo_s.append(dt)
                            gloo_cpu.append(dc)
                    else:
                        c0, t0 = time.process_time(), time.perf_counter()
                        ours = (await comm.all_reduce(x))[0]
                        dt, dc = time.perf_counter() - t0, time.process_time() - c0
                        if r:
                            ours_s.append(dt)
                            ours_cpu.append(dc)
                if r == 0 or r == reps - 1:
                    assert ours is not None
                    ref = y / world
                    diff = (ours - ref).abs()
                    max_diff = max(max_diff, float(diff.max()))
                    match = match and bool((diff <= _ATOL + _RTOL * ref.abs()).all())
                del y, ours
            out_sizes.append({"size_bytes": size, "ours_s": ours_s, "gloo_s": gloo_s,
                              "ours_cpu_s": ours_cpu, "gloo_cpu_s": gloo_cpu,
                              "max_abs_diff": max_diff, "match": match})
        await asyncio.to_thread(dist.barrier)
        return {"rank": rank, "sizes": out_sizes}
    finally:
        await transport.close()
        dist.destroy_process_group()


def _worker(cfg: dict[str, Any]) -> None:
    _apply_patches(cfg.get("patches", ()))
    prof_dir = os.environ.get("GOSSAMER_BENCH_PROFILE")  # developer aid: cProfile each worker
    if prof_dir:
        import cProfile

        prof = cProfile.Profile()
        result = prof.runcall(asyncio.run, _worker_main(cfg))
        prof.dump_stats(os.path.join(prof_dir, f"rank{cfg['rank']}.prof"))
    else:
        result = asyncio.run(_worker_main(cfg))
    tmp = cfg["out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, cfg["out"])


# --------------------------------------------------------------------------- CLI


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain-text table."""
    load = result.get("load")
    lines = [f"all-reduce fp32, {result['processes']} processes on 127.0.0.1, {result['cores']} cores"
             + (f" (load average {load[0]:g} before, {load[1]:g} after)" if load else "")
             + f", median of {result['repeats']} (warm-up dropped)"
             + (f", patches {result['patches']}" if result["patches"] else ""),
             f"{'size':>10} {'ours GB/s':>10} {'gloo GB/s':>10} {'ratio':>7} {'ours ms':>9} {'gloo ms':>9} "
             f"{'ours cpu ms':>12} {'gloo cpu ms':>12}  match"]
    for r in result["rows"]:
        lines.append(f"{r['size_bytes'] / (1 << 20):>6g} MiB {r['ours_GBps']:>10.3f} {r['gloo_GBps']:>10.3f} "
                     f"{r['ratio']:>6.2f}x {r['ours_s'] * 1e3:>9.1f} {r['gloo_s'] * 1e3:>9.1f} "
                     f"{r['ours_cpu_s'] * 1e3:>12.1f} {r['gloo_cpu_s'] * 1e3:>12.1f}  {r['match']}")
    lines.append(result["definition"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gossamer.bench.transport",
                                     description="all-reduce: TcpTransport + Communicator vs torch.distributed gloo")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[1, 16, 64])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--patch", action="append", default=[], choices=PATCHES,
                        help="measure a proposed transport change (candidate only)")
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    result = run_transport_bench(args.sizes_mib, args.processes, args.repeats,
                                 progress=lambda m: print(m, file=sys.stderr, flush=True),
                                 timeout=args.timeout, patches=args.patch)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
