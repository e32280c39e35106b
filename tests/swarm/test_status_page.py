"""The coordinator's live status page (``gossamer coordinator --http``): a real
coordinator and two real peers on 127.0.0.1, the page loaded in headless Chromium
(its DOM after the script ran shows the members, the round, bytes and the loss),
the JSON behind it, clear answers to bad requests, a busy port refused before the
coordinator starts, and peers without progress fields (older peers) still served."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gossamer.swarm import Coordinator
from gossamer.swarm.protocol import CoordinatorClient, SwarmError
from gossamer.swarm.status import StatusServer, StatusView
from gossamer.transport.identity import Identity

CLI = [sys.executable, "-m", "gossamer.swarm.cli"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        return json.loads(resp.read())


class LiveSwarm:
    """A coordinator with --http and two peers that train until told to stop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ, GOSSAMER_HOME=str(root / "home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> None:
        with open(self.root / f"{name}.out", "wb") as out, open(self.root / f"{name}.err", "wb") as err:
            self.procs[name] = subprocess.Popen(CLI + args, stdout=out, stderr=err, env=self.env, start_new_session=True)

    def log(self, name: str) -> str:
        return "".join((self.root / f"{name}.{ext}").read_text()[-2000:] for ext in ("out", "err")
                       if (self.root / f"{name}.{ext}").exists())

    def wait_line(self, name: str, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = (self.root / f"{name}.out").read_text() if (self.root / f"{name}.out").exists() else ""
            m = re.search(pattern, text)
            if m:
                return m
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{name} printed no {pattern!r}: {self.log(name)}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with_suppress(lambda: os.killpg(proc.pid, signal.SIGKILL))
        for proc in self.procs.values():
            with_suppress(lambda: proc.wait(timeout=10))


def with_suppress(fn) -> None:
    try:
        fn()
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    swarm = LiveSwarm(tmp_path_factory.mktemp("status"))
    try:
        swarm.start("coordinator", ["coordinator", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
                                    "--min-peers", "2", "--swarm", "status-page"])
        port = int(swarm.wait_line("coordinator", r"listening on 127\.0\.0\.1:(\d+)").group(1))
        url = swarm.wait_line("coordinator", r"status page at (http://127\.0\.0\.1:\d+/)").group(1)
        for i in range(2):
            # quadratic: cheap steps and a cheap validation; many steps: the peers are members while we look
            swarm.start(f"p{i}", ["peer", "--coordinator", f"127.0.0.1:{port}", "--swarm", "status-page",
                                  "--task", "quadratic", "--algorithm", "diloco", "--inner-steps", "5",
                                  "--steps", "1000000", "--eval-every", "2", "--shard", f"{i}/2",
                                  "--deadline-floor", "10", "--key", str(swarm.root / f"p{i}.pem")])
        ids = sorted(swarm.wait_line(f"p{i}", r"peer ([0-9a-f]{16}): admitted").group(1) for i in range(2))
        deadline = time.monotonic() + 90
        while True:
            status = _get(url + "status.json")
            members = {m["id"]: m for m in status["members"]}
            if (status["round"] >= 4 and sorted(members) == ids and status["loss"] is not None
                    and status["val"] is not None and all(m.get("sent") for m in members.values())):
                break
            assert time.monotonic() < deadline, f"the swarm did not get going: {status}\n{swarm.log('p0')}"
            time.sleep(0.2)
        yield swarm, url, ids
    finally:
        swarm.stop()


@pytest.mark.timeout(180)
def test_status_json_describes_the_swarm(live):
    swarm, url, ids = live
    s = _get(url + "status.json")
    assert s["swarm"] == "status-page" and s["phase"] in ("collect", "run") and s["round"] >= 4
    assert sorted(m["id"] for m in s["members"]) == ids
    for m in s["members"]:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", m["address"]) and m["state"] in ("member", "ready", "in round")
        assert 0 <= m["last_seen_s"] < 10  # heartbeats every 0.5 s; the timeout is 10 s
        assert m["sent"] > 0 and m["step"] >= 20 and isinstance(m["loss"], float)
        assert m["audited_rounds"] == 0 and isinstance(m["probation"], bool)  # not an audited swarm
    assert s["stats"]["commits"] >= 4 and s["excluded"] == []
    rounds = s["rounds"]  # newest first
    assert [r["round"] for r in rounds] == list(range(rounds[0]["round"], rounds[0]["round"] - len(rounds), -1))
    assert all(r["group"] == 2 and r["bytes"] > 0 and r["loss"] is not None for r in rounds)
    assert all(r["duration_s"] > 0 for r in rounds[:-1])
    assert s["bytes_total"] >= sum(r["bytes"] for r in rounds)
    assert [p[0] for p in s["curve"]] == sorted(p[0] for p in s["curve"])
    assert s["metric"] == "rel_dist_to_opt" and s["val_curve"] and all(p[0] % 2 == 1 for p in s["val_curve"])


def _request(url: str, raw: bytes) -> bytes:
    host, port = re.match(r"http://([\d.]+):(\d+)/", url).groups()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.timeout(120)
def test_bad_requests_get_clear_answers_and_change_nothing(live):
    swarm, url, ids = live
    host, port = re.match(r"http://([\d.]+):(\d+)/", url).groups()
    before = _get(url + "status.json")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/no/such/page")
    resp = conn.getresponse()
    assert resp.status == 404 and b"not found: /no/such/page" in resp.read()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(method, "/status.json", body=b'{"round": 0}', headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD" and b"read-only" in resp.read()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("HEAD", "/")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) > 1000 and resp.read() == b""
    assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
    assert _request(url, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _request(url, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    page = _request(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 ") and b"<script>" in page and b"src=" not in page.split(b"\r\n\r\n", 1)[1]
    s = _get(url + "status.json")  # nothing above changed the swarm: same members, training on
    assert sorted(m["id"] for m in s["members"]) == ids and s["round"] >= before["round"]
    assert s["stats"]["lost"] == before["stats"]["lost"] and s["excluded"] == []


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Dom(HTMLParser):
    """The text inside each element with an id, and the number of points of each chart's polyline."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.polylines: dict[str, int] = {}
        self.stack: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "polyline":
            svg = next((i for i in reversed(self.stack) if i and i.endswith("-chart")), None)
            if svg is not None:
                self.polylines[svg] = len((a.get("points") or "").split())
        if tag in self.VOID:
            return
        if a.get("id"):
            self.by_id[a["id"]] = ""
        self.stack.append(a.get("id"))

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for ident in self.stack:
            if ident:
                self.by_id[ident] += data


@pytest.mark.timeout(180)
def test_the_page_renders_in_a_real_browser(live, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("GOSSAMER_REQUIRE_BROWSER") == "1":
            pytest.fail("GOSSAMER_REQUIRE_BROWSER=1 but no chromium binary is on PATH (apt-get install chromium)")
        pytest.skip("no chromium binary on PATH (apt-get install chromium; CI sets GOSSAMER_REQUIRE_BROWSER=1)")
    swarm, url, ids = live
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", url]
    for _attempt in range(3):  # the page is live once its first fetch of /status.json has been drawn
        run = subprocess.run(cmd, capture_output=True, timeout=90)
        assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
        html = run.stdout.decode()
        if 'data-state="live"' in html:
            break
    assert 'data-state="live"' in html, html[:3000]
    dom = _Dom()
    dom.feed(html)
    assert int(dom.by_id["round"]) > 0
    members = dom.by_id["members"]
    assert all(pid in members for pid in ids), members
    assert dom.by_id["members-count"].strip() == "2"
    assert re.fullmatch(r"\d+(\.\d)? (B|KB|MB|GB)", dom.by_id["bytes"].strip()), dom.by_id["bytes"]
    assert float(dom.by_id["loss"]) == float(dom.by_id["loss"])  # a number, drawn from the peers' reports
    assert dom.polylines.get("loss-chart", 0) >= 2  # the loss curve has points
    assert "rel_dist_to_opt" in dom.by_id["metric"]


@pytest.mark.timeout(60)
def test_a_busy_port_is_one_line_and_exit_2_before_the_coordinator_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(CLI + ["coordinator", "--listen", "127.0.0.1:0", "--http", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=50,
                             env=dict(os.environ, GOSSAMER_HOME=str(tmp_path)))
    assert run.returncode == 2, run
    assert run.stderr.count("\n") == 1 and f"cannot serve the status page on 127.0.0.1:{port}" in run.stderr
    assert "listening on" not in run.stdout


@pytest.mark.timeout(60)
def test_peers_without_progress_fields_still_work_and_bad_fields_are_refused():
    """An old peer (no progress fields) and a new one share a round over the real protocol;
    the commit carries what the new one reported; a malformed field is a bad request."""

    async def main():
        coord = await Coordinator.start(Identity.generate(), "mixed", "127.0.0.1", 0, min_peers=2)
        page = await StatusServer.start("127.0.0.1", 0, StatusView(coord))
        commits: list[dict] = []
        coord.listeners.append(lambda kind, fields: commits.append(fields) if kind == "commit" else None)
        try:
            old = await CoordinatorClient.connect(Identity.generate(), "mixed", *coord.address)
            new = await CoordinatorClient.connect(Identity.generate(), "mixed", *coord.address)
            for i, c in enumerate((old, new)):
                await c.request("join", addr=["127.0.0.1", 9000 + i], fingerprint="f")
                await c.request("admit", round=0, hash="aa")
            await new.request("hb", loss=2.5, sent=10, step=3)
            starts = await asyncio.gather(old.request("ready", round=0), new.request("ready", round=0))
            epoch = starts[0]["epoch"]
            decisions = await asyncio.gather(old.request("done", epoch=epoch, ok=True, hash="bb"),
                                             new.request("done", epoch=epoch, ok=True, hash="bb", loss=1.5, sent=1010,
                                                         step=5, val={"round": 0, "metric": "acc", "value": 0.75}))
            assert [d["decision"] for d in decisions] == ["commit", "commit"]
            for bad in ({"loss": float("nan")}, {"sent": -1}, {"loss": "low"}, {"val": {"round": 0, "metric": "",
                                                                                       "value": 1.0}}):
                with pytest.raises(SwarmError) as info:
                    await new.request("hb", **bad)
                assert info.value.code == "bad_request"
            assert (await old.request("hb"))["members"] == 2  # an old heartbeat is as good as ever
            # a done with a malformed progress field still counts: the round needs its report
            starts = await asyncio.gather(old.request("ready", round=1), new.request("ready", round=1))
            epoch = starts[0]["epoch"]
            decisions = await asyncio.gather(old.request("done", epoch=epoch, ok=True, hash="cc"),
                                             new.request("done", epoch=epoch, ok=True, hash="cc", loss="high"))
            assert [d["decision"] for d in decisions] == ["commit", "commit"]
            snap = page.view.snapshot()
            await old.close()
            await new.close()
            return snap, commits
        finally:
            await page.close()
            await coord.close()

    snap, commits = asyncio.run(main())
    commit, second = commits  # the coordinator's commit events (its --events lines, its trace's round events)
    assert commit["loss"] == 1.5 and commit["bytes"] == 1010
    assert "loss" not in second and "bytes" not in second
    row = snap["rounds"][-1]
    assert row["round"] == 0 and row["loss"] == 1.5 and row["bytes"] == 1010  # only the new peer reported
    members = {m["step"] if "step" in m else None for m in snap["members"]}
    assert members == {None, 5}
    assert snap["val_curve"] == [[0, 0.75]] and snap["metric"] == "acc"
