"""The coordinator's live status page: a read-only HTTP view of the swarm.

Contract:

- ``StatusView(coordinator)`` follows the coordinator through its event
  listeners (``Coordinator.listeners``: the same events that go to its
  ``--events`` file and its trace) and keeps a bounded history: per committed
  round its wall-clock time, duration (seconds since the previous round
  committed; for the first round seen, since its first attempt started),
  sync time (seconds from the committing attempt's start to the commit),
  group size, attempts, mean reported loss and payload bytes sent (the
  ``loss`` and ``bytes`` of the ``commit`` event, when members report their
  progress); aborts with their reason and blamed member; exclusions and
  evictions; recent membership events; and the members' validation metric
  (from the progress fields of their ``done``, sampled at each commit).
  ``snapshot()`` returns it all as one JSON-ready dict, together with
  ``Coordinator.status()`` (round, phase, members with address, state, last
  heartbeat, reputation, loss, bytes sent, steps; excluded keys). Long
  series are thinned to at most ``CURVE_POINTS`` points; tables hold the most
  recent ``TABLE_ROWS`` rows. Nothing in it can change the coordinator.
- ``StatusServer.start(host, port, view=None)`` binds an HTTP/1.1 server on
  the running event loop (port 0 picks a free one; ``url`` says which) or
  raises ``ConfigError`` naming the address and the reason (a busy port).
  ``GET /`` (or ``/index.html``) is the page: HTML, CSS and JavaScript in one
  response, no external assets; the script fetches ``/status.json`` (the
  snapshot) every second and draws the tables and small SVG charts, writing
  every peer-supplied string with ``textContent`` (never as markup).
  ``HEAD`` answers as ``GET`` without a body. Any other method: 405 with
  ``Allow: GET, HEAD``; any other path: 404; a malformed request line or
  headers over ``MAX_REQUEST`` bytes: 400; no view attached yet: 503. Each
  connection serves one request (``Connection: close``), has
  ``REQUEST_TIMEOUT`` seconds to send it, and at most ``MAX_CLIENTS`` are
  served at once (others are closed unanswered).
- ``close()`` stops the server and closes its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from .coordinator import blamed_by

log = logging.getLogger(__name__)

#: Longest request head (request line and headers), bytes.
MAX_REQUEST = 8192
#: Seconds a client has to send its request.
REQUEST_TIMEOUT = 5.0
#: Connections served at once.
MAX_CLIENTS = 32
#: Rounds kept in the history (older ones are dropped).
KEEP_ROUNDS = 20000
#: Points per curve in a snapshot (longer series are thinned evenly, the last point kept).
CURVE_POINTS = 600
#: Rows per table in a snapshot (the most recent).
TABLE_ROWS = 50

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, deque)):
        return [_finite(v) for v in obj]
    return obj


def _thin(points: list[Any], limit: int = CURVE_POINTS) -> list[Any]:
    """At most ``limit`` of ``points``, evenly spaced, the last one always kept."""
    if len(points) <= limit:
        return points
    step = len(points) / (limit - 1)
    return [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StatusView:
    """A coordinator's history, as its events tell it (module docstring)."""

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator
        self.rounds: deque[dict[str, Any]] = deque(maxlen=KEEP_ROUNDS)
        self.aborts: deque[dict[str, Any]] = deque(maxlen=500)
        self.exclusions: deque[dict[str, Any]] = deque(maxlen=500)
        self.events: deque[dict[str, Any]] = deque(maxlen=200)
        #: (round, peer) -> (metric, value) of the members' validations
        self.vals: dict[tuple[int, str], tuple[str, float]] = {}
        self.bytes_total = 0
        self._first_start: dict[int, float] = {}
        self._attempt_start: float | None = None
        self._last_commit: tuple[int, float] | None = None
        coordinator.listeners.append(self.on_event)

    def close(self) -> None:
        """Stop following the coordinator."""
        with contextlib.suppress(ValueError):
            self.coordinator.listeners.remove(self.on_event)

    # ------------------------------------------------------------------ events

    def on_event(self, kind: str, fields: dict[str, Any]) -> None:
        now = time.time()
        rnd = fields.get("round")
        if kind == "start":
            self._attempt_start = now
            if isinstance(rnd, int):
                self._first_start.setdefault(rnd, now)
                for old in [r for r in self._first_start if r < rnd - 64]:
                    del self._first_start[old]
        elif kind == "commit" and isinstance(rnd, int):
            began = self._first_start.pop(rnd, None)
            if self._last_commit is not None and self._last_commit[0] == rnd - 1:
                duration: float | None = now - self._last_commit[1]
            else:
                duration = now - began if began is not None else None
            nbytes = fields.get("bytes")
            if isinstance(nbytes, int):
                self.bytes_total += nbytes
            loss = fields.get("loss")
            group = fields.get("group") or []
            self.rounds.append({"round": rnd, "t": now, "duration_s": duration,
                                "sync_s": now - self._attempt_start if self._attempt_start is not None else None,
                                "group": len(group), "attempts": fields.get("attempt"),
                                "loss": float(loss) if isinstance(loss, (int, float)) else None,
                                "bytes": nbytes if isinstance(nbytes, int) else None})
            self._last_commit = (rnd, now)
            self._sample_vals()
        elif kind == "abort":
            reason = str(fields.get("reason") or "")
            self.aborts.append({"t": now, "round": rnd, "attempt": fields.get("attempt"), "reason": _short(reason),
                                "blamed": blamed_by(reason)})
        elif kind in ("exclude", "evict"):
            self.exclusions.append({"t": now, "kind": kind, "peer": fields.get("peer"), "round": rnd,
                                    "rule": fields.get("rule") or ("evicted" if kind == "evict" else None),
                                    "reason": _short(fields.get("evidence") if kind == "exclude" else fields.get("reason")),
                                    "accuser": fields.get("accuser")})
        if kind in ("join", "admit", "leave", "lost", "evict", "exclude", "straggler", "resync", "reject", "adopt",
                    "rollback", "reset"):
            detail = {k: v for k, v in fields.items() if k not in ("peer", "round")}
            self.events.append({"t": now, "event": kind, "peer": fields.get("peer"), "round": rnd,
                                "detail": _short(detail, 200) if detail else ""})

    def _sample_vals(self) -> None:
        for pid, stats in self.coordinator.peer_stats.items():
            val = stats.get("val")
            if isinstance(val, dict):
                self.vals[(int(val["round"]), pid)] = (str(val["metric"]), float(val["value"]))
        if len(self.vals) > 4 * KEEP_ROUNDS:
            for key in sorted(self.vals)[: len(self.vals) - 4 * KEEP_ROUNDS]:
                del self.vals[key]

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (module docstring)."""
        self._sample_vals()
        live = self.coordinator.status()
        rounds = list(self.rounds)
        by_round: dict[int, list[float]] = {}
        metric = ""
        for (rnd, _pid), (name, value) in sorted(self.vals.items()):
            by_round.setdefault(rnd, []).append(value)
            metric = name
        val_curve = [[r, math.fsum(vs) / len(vs)] for r, vs in sorted(by_round.items())]
        last_loss = next((r["loss"] for r in reversed(rounds) if r["loss"] is not None), None)
        return _finite({
            **live,
            "time": time.time(),
            "bytes_total": self.bytes_total,
            "loss": last_loss,
            "metric": metric,
            "val": val_curve[-1][1] if val_curve else None,
            "val_round": val_curve[-1][0] if val_curve else None,
            "rounds": rounds[-TABLE_ROWS:][::-1],
            "curve": _thin([[r["round"], r["loss"], r["bytes"], r["duration_s"]] for r in rounds]),
            "val_curve": _thin(val_curve),
            "aborts": list(self.aborts)[-TABLE_ROWS:][::-1],
            "abort_rounds": sorted({a["round"] for a in self.aborts if isinstance(a["round"], int)})[-CURVE_POINTS:],
            "exclusions": list(self.exclusions)[::-1],
            "events": list(self.events)[-TABLE_ROWS:][::-1],
        })


class StatusServer:
    """The HTTP side of the status page (module docstring)."""

    def __init__(self, server: asyncio.Server, view: StatusView | None) -> None:
        self._server = server
        self.view = view
        self._clients: set[asyncio.Task[Any]] = set()
        sock = server.sockets[0].getsockname()
        self.address: tuple[str, int] = (str(sock[0]), int(sock[1]))

    @classmethod
    async def start(cls, host: str, port: int, view: StatusView | None = None) -> "StatusServer":
        holder: list[StatusServer] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await holder[0]._serve(reader, writer)

        try:
            server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)
        except OSError as exc:
            raise ConfigError(f"cannot serve the status page on {host}:{port}: {exc.strerror or exc} "
                              "(is the address on this host, and the port free?)") from None
        holder.append(cls(server, view))
        return holder[0]

    @property
    def url(self) -> str:
        """The page's address; an unspecified bind address (0.0.0.0, ::) is shown as this host's name."""
        host, port = self.address
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    async def close(self) -> None:
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= MAX_CLIENTS or task is None:
            writer.transport.abort()
            return
        self._clients.add(task)
        try:
            status, headers, body, head_only = await self._answer(reader)
            lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in headers.items()),
                     f"Content-Length: {len(body)}", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                     "Referrer-Policy: no-referrer", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + (b"" if head_only else body))
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
        except (ConnectionError, OSError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here costs one request, never the coordinator
            log.exception("status page: error answering a request")
        finally:
            self._clients.discard(task)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read its answer gets no more time
            else:
                writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers, body, head_only) for the one request on ``reader``."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            return _text(400, f"request head over {MAX_REQUEST} bytes\n")
        except (asyncio.IncompleteReadError, TimeoutError):
            return _text(400, "incomplete request\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            return _text(400, "malformed request line (expected: METHOD /path HTTP/1.1)\n")
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    length = int(value.strip())
            if 0 < length <= 65536:  # read a small body, so that the client sees the answer, not a reset
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await reader.readexactly(length)
            status, headers, body, _ = _text(405, f"method {method[:20]} not allowed: this page is read-only (GET, HEAD)\n")
            return status, {**headers, "Allow": "GET, HEAD"}, body, False
        path = urlsplit(target).path
        head_only = method == "HEAD"
        if path in ("/", "/index.html"):
            return 200, {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": _CSP}, PAGE, head_only
        if path == "/status.json":
            if self.view is None:
                status, headers, body, _ = _text(503, "the coordinator is starting\n")
                return status, headers, body, head_only
            body = json.dumps(self.view.snapshot(), allow_nan=False, separators=(",", ":")).encode()
            return 200, {"Content-Type": "application/json"}, body, head_only
        status, headers, body, _ = _text(404, f"not found: {path[:200]} (the page is / and its data /status.json)\n")
        return status, headers, body, head_only


def _text(status: int, text: str) -> tuple[int, dict[str, str], bytes, bool]:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode(), False


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gossamer swarm</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c2330}
header{background:#1c2330;color:#fff;padding:10px 18px}
header h1{font-size:18px;margin:0;display:inline}
header span{color:#aab4c4;margin-left:12px;font-size:12px}
main{padding:12px 18px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:12px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:20px}
.card small{color:#5b6675}
.charts{display:flex;flex-wrap:wrap;gap:10px}
.chart{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:6px 8px}
.chart h3,section h2{font-size:13px;margin:2px 0 4px;color:#3b4656}
svg{display:block}
section{margin-top:14px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e7;font-size:12px}
th,td{padding:3px 8px;border-bottom:1px solid #eceff3;text-align:left;white-space:nowrap}
td.wrap{white-space:normal;max-width:560px;word-break:break-word}
th{background:#eef1f5}
.bad{color:#b3261e}
#error{display:none;background:#fde7e7;color:#b3261e;padding:6px 18px}
code{font-size:12px}
</style></head>
<body data-state="loading">
<header><h1>gossamer swarm <code id="swarm">-</code></h1>
<span>coordinator <code id="coordinator">-</code> at <code id="address">-</code></span>
<span id="updated">connecting...</span></header>
<div id="error"></div>
<main>
<div class="cards">
<div class="card"><small>round</small><b id="round">-</b><small id="phase"></small></div>
<div class="card"><small>members</small><b id="members-count">-</b><small id="candidates"></small></div>
<div class="card"><small>rounds committed</small><b id="commits">-</b></div>
<div class="card"><small>aborts</small><b id="aborts-count">-</b></div>
<div class="card"><small>payload bytes sent</small><b id="bytes">-</b></div>
<div class="card"><small>training loss</small><b id="loss">-</b><small>mean of the last round</small></div>
<div class="card"><small id="metric">validation</small><b id="val">-</b><small id="val-round"></small></div>
<div class="card"><small>excluded</small><b id="excluded-count">-</b></div>
</div>
<div class="charts">
<div class="chart"><h3>training loss per round</h3><svg id="loss-chart" width="280" height="160"></svg></div>
<div class="chart"><h3 id="val-title">validation</h3><svg id="val-chart" width="280" height="160"></svg></div>
<div class="chart"><h3>payload bytes per round</h3><svg id="bytes-chart" width="280" height="160"></svg></div>
<div class="chart"><h3>round duration (s)</h3><svg id="duration-chart" width="280" height="160"></svg></div>
</div>
<section><h2>members</h2><table id="members"><thead><tr><th>peer</th><th>address</th><th>state</th>
<th>last heartbeat</th><th>steps</th><th>loss</th><th>sent</th><th>validation</th><th>audited rounds</th></tr></thead>
<tbody></tbody></table></section>
<section><h2>aborts</h2><table id="aborts"><thead><tr><th>time</th><th>round</th><th>attempt</th><th>blamed</th>
<th>reason</th></tr></thead><tbody></tbody></table></section>
<section><h2>exclusions and evictions</h2><table id="exclusions"><thead><tr><th>time</th><th>peer</th><th>round</th>
<th>rule</th><th>accuser</th><th>evidence</th></tr></thead><tbody></tbody></table></section>
<section><h2>recent rounds</h2><table id="rounds"><thead><tr><th>round</th><th>committed</th><th>duration</th>
<th>sync</th><th>group</th><th>attempts</th><th>loss</th><th>bytes</th></tr></thead><tbody></tbody></table></section>
<section><h2>membership events</h2><table id="events"><thead><tr><th>time</th><th>event</th><th>peer</th><th>round</th>
<th>detail</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
function num(x, d) { return (x === null || x === undefined) ? "-" : Number(x).toPrecision(d || 4); }
function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
}
function clock(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "-"; }
function setText(id, text) { $(id).textContent = text; }
function fill(id, rows, wrapLast) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    row.forEach((cell, i) => {
      const td = document.createElement("td");
      td.textContent = (cell === null || cell === undefined) ? "-" : String(cell);
      if (wrapLast && i === row.length - 1) td.className = "wrap";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr"), td = document.createElement("td");
    td.colSpan = $(id).tHead.rows[0].cells.length; td.textContent = "(none)"; tr.appendChild(td); body.appendChild(tr);
  }
}
function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function chart(id, pts, opts) {
  const svg = $(id); svg.replaceChildren();
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), L = 56, R = 8, T = 8, B = 22;
  const xy = pts.filter((p) => p[1] !== null && p[1] !== undefined && isFinite(p[1]));
  if (!xy.length) { svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#8a94a3"}, "no data yet")); return; }
  let x0 = Math.min(...xy.map((p) => p[0])), x1 = Math.max(...xy.map((p) => p[0]));
  let y0 = Math.min(...xy.map((p) => p[1])), y1 = Math.max(...xy.map((p) => p[1]));
  if (opts.bars) y0 = Math.min(0, y0);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 + 1e-9; y1 += Math.abs(y1) * 0.1 + 1e-9; }
  const pad = opts.bars ? (W - L - R) / (2 * Math.max(xy.length, 1)) : 0;  // room for the first and last bar
  const sx = (x) => L + pad + (x - x0) / (x1 - x0) * (W - L - R - 2 * pad), sy = (y) => T + (y1 - y) / (y1 - y0) * (H - T - B);
  svg.appendChild(el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#9aa4b2"}));
  svg.appendChild(el("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#9aa4b2"}));
  const fmt = opts.fmt || ((v) => num(v, 3));
  svg.appendChild(el("text", {x: L - 4, y: T + 10, "text-anchor": "end", "font-size": 10}, fmt(y1)));
  svg.appendChild(el("text", {x: L - 4, y: H - B, "text-anchor": "end", "font-size": 10}, fmt(y0)));
  svg.appendChild(el("text", {x: L, y: H - 6, "font-size": 10}, "round " + x0));
  svg.appendChild(el("text", {x: W - R, y: H - 6, "text-anchor": "end", "font-size": 10}, "round " + x1));
  for (const r of (opts.marks || [])) {
    if (r < x0 || r > x1) continue;
    svg.appendChild(el("line", {x1: sx(r), y1: T, x2: sx(r), y2: H - B, stroke: "#d93025", "stroke-dasharray": "3,3",
                                "class": "abort-mark"}));
  }
  if (opts.bars) {
    const w = Math.max(1, Math.min(2 * pad, (W - L - R - 2 * pad) / Math.max(x1 - x0, 1)) - 1);
    for (const p of xy) svg.appendChild(el("rect", {x: sx(p[0]) - w / 2, y: sy(p[1]), width: w,
                                                    height: Math.max(0, sy(y0) - sy(p[1])), fill: opts.color}));
  } else {
    svg.appendChild(el("polyline", {points: xy.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "),
                                     fill: "none", stroke: opts.color, "stroke-width": 1.6, "class": "curve"}));
  }
}
function render(s) {
  setText("swarm", s.swarm); setText("coordinator", s.coordinator); setText("address", s.address);
  setText("round", s.round); setText("phase", s.phase === "run" ? "attempt running (group of " + s.group.length + ")" : "between rounds");
  const members = s.members.filter((m) => m.state !== "candidate");
  setText("members-count", members.length);
  setText("candidates", (s.members.length - members.length) + " joining");
  setText("commits", s.stats.commits); setText("aborts-count", s.stats.aborts);
  setText("bytes", bytes(s.bytes_total)); setText("loss", num(s.loss));
  setText("metric", s.metric || "validation"); setText("val-title", s.metric || "validation (none reported)");
  setText("val", num(s.val)); setText("val-round", s.val_round === null ? "" : "after round " + s.val_round);
  setText("excluded-count", s.excluded.length);
  const audited = s.members.some((m) => m.audited_rounds > 0);  // probation means something in audited swarms only
  fill("members", s.members.map((m) => [m.id, m.address, m.state,
    m.last_seen_s === null ? "-" : m.last_seen_s.toFixed(1) + " s ago", m.step, num(m.loss), bytes(m.sent),
    m.val ? m.val.metric + " " + num(m.val.value) + " (round " + m.val.round + ")" : "-",
    m.audited_rounds + (audited && m.probation ? " (probation)" : "")]));
  fill("rounds", s.rounds.slice(0, 12).map((r) => [r.round, clock(r.t), r.duration_s === null ? "-" : r.duration_s.toFixed(2) + " s",
    r.sync_s === null ? "-" : r.sync_s.toFixed(2) + " s", r.group, r.attempts, num(r.loss), bytes(r.bytes)]));
  fill("aborts", s.aborts.map((a) => [clock(a.t), a.round, a.attempt, a.blamed, a.reason]), true);
  fill("exclusions", s.exclusions.map((x) => [clock(x.t), x.peer, x.round, x.rule, x.accuser, x.reason]), true);
  fill("events", s.events.slice(0, 20).map((e) => [clock(e.t), e.event, e.peer, e.round, e.detail]), true);
  const marks = s.abort_rounds;
  chart("loss-chart", s.curve.map((p) => [p[0], p[1]]), {color: "#1a73e8", marks: marks});
  chart("val-chart", s.val_curve, {color: "#188038", marks: marks});
  chart("bytes-chart", s.curve.map((p) => [p[0], p[2]]), {color: "#9334e6", bars: true, fmt: bytes, marks: marks});
  chart("duration-chart", s.curve.map((p) => [p[0], p[3]]), {color: "#e8710a", bars: true, marks: marks});
  setText("updated", "updated " + clock(s.time));
}
async function refresh() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    $("error").style.display = "none";
    document.body.dataset.state = "live";
  } catch (e) {
    $("error").textContent = "cannot reach the coordinator: " + e.message;
    $("error").style.display = "block";
    document.body.dataset.state = "error";
  } finally {
    setTimeout(refresh, 1000);
  }
}
refresh();
</script>
</body></html>
""".encode()
