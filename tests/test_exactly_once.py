"""Exactly-once for applications, end to end (issue 14's acceptance): the worked example
of docs/applications.md (examples/exactly_once.py) sends 100,000 numbered payloads through
the impairing bridge (10 % loss, 5 % duplication, 5 % reordering, 1 % corruption, link
flaps) while the sending and the receiving process are killed with SIGKILL at random
instants, at least 10 times, and restarted. The verdict comes from the applications' own
logs only: every submitted payload has exactly one outcome, the committed ones were
received exactly once, the aborted ones never."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from oae.testbed import manager
from oae.testbed.topology import loads

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets"),
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "exactly_once.py"
N = 100_000
KILLS = 12  # 6 of each process, in a random order
TOPOLOGY = """
[topology]
name = "eo"
shape = "pair"
seed = 14
[[link]]
a = "n0"
b = "n1"
impair = { loss = "10%", duplicate = "5%", reorder = "5%", corrupt = "1%", flap = { every = "6s", down = "0.5s", start = "3s" } }
"""  # noqa: E501


class App:
    """One of the two application processes, restarted after each kill."""

    def __init__(self, role: str, tb: manager.Testbed, tmp: Path) -> None:
        rec = tb.link("n0-n1")
        node, iface = ("n0", rec["if_a"]) if role == "send" else ("n1", rec["if_b"])
        self.role = role
        self.argv = [sys.executable, str(APP), role, "--iface", iface, "--netns", tb.ns(node),
                     "--state-dir", str(tmp / f"{role}-state"), "--log", str(tmp / f"{role}.log"),
                     "--log-limit", str(256 * 1024)]  # fmt: skip
        if role == "send":
            self.argv += ["--count", str(N)]
        self.stderr = tmp / f"{role}.err"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.stderr, "a") as err:
            return subprocess.Popen(self.argv, env=env, stderr=err)

    def kill_and_restart(self, pause: float) -> None:
        self.proc.kill()
        self.proc.wait()
        time.sleep(pause)
        self.proc = self._start()

    def failed(self) -> str | None:
        rc = self.proc.poll()
        if rc is None or (rc == 0 and self.role == "send"):
            return None
        return f"{self.role} exited {rc}: {self.stderr.read_text()[-2000:]}"


def _logs(tmp: Path) -> tuple[list[list[str]], list[list[str]]]:
    return ([line.split() for line in (tmp / "send.log").read_text().splitlines()],
            [line.split() for line in (tmp / "recv.log").read_text().splitlines()])  # fmt: skip


def test_every_payload_has_one_outcome_through_kills_and_impairments(tmp_path: Path) -> None:
    rng = random.Random(14)
    order = ["send"] * (KILLS // 2) + ["recv"] * (KILLS // 2)
    rng.shuffle(order)
    with manager.running(loads(TOPOLOGY, "eo.toml")) as tb:
        recv = App("recv", tb, tmp_path)
        send = App("send", tb, tmp_path)
        apps = {"send": send, "recv": recv}
        kills: list[tuple[float, str]] = []
        t0 = time.monotonic()
        try:
            while send.proc.poll() is None:
                assert time.monotonic() - t0 < 600, "the sender did not finish in 10 minutes"
                if order:
                    time.sleep(rng.uniform(0.3, 1.8))  # a random instant of the run
                    if send.proc.poll() is not None:
                        break
                    who = order.pop()
                    kills.append((round(time.monotonic() - t0, 2), who))
                    apps[who].kill_and_restart(rng.uniform(0.0, 0.3))
                else:
                    time.sleep(0.2)
                for app in apps.values():
                    assert app.failed() is None, app.failed()
            assert send.proc.returncode == 0, send.failed()
            assert len(kills) >= 10, f"the sender finished before {KILLS} kills: {kills}"
            bridge = manager.impair(tb.name, "n0-n1", [])
            # the receiver applies what it was delivered (also after its last restart)
            committed = {int(f[1]) for f in _logs(tmp_path)[0] if f[0] == "O" and f[2] == "c"}
            deadline = time.monotonic() + 60
            while {int(f[2]) for f in _logs(tmp_path)[1] if f[0] == "R"} < committed:
                assert time.monotonic() < deadline, "committed payloads never reached the app"
                assert recv.failed() is None, recv.failed()
                time.sleep(0.2)
        finally:
            for app in apps.values():
                if app.proc.poll() is None:
                    app.proc.send_signal(signal.SIGTERM)
                    try:
                        app.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        app.proc.kill()
                        app.proc.wait()
        elapsed = time.monotonic() - t0

    sent, received = _logs(tmp_path)
    submitted = {int(f[1]) for f in sent if f[0] == "S"}
    outcomes = Counter(int(f[1]) for f in sent if f[0] == "O")
    status = {int(f[1]): f[2] for f in sent if f[0] == "O"}
    got = Counter(int(f[2]) for f in received if f[0] == "R")
    assert submitted == set(range(1, N + 1))
    assert set(outcomes) == submitted, f"{len(submitted - set(outcomes))} without an outcome"
    assert max(outcomes.values()) == 1, "a payload with two outcomes"
    committed = {k for k, s in status.items() if s == "c"}
    aborted = {k for k, s in status.items() if s == "a"}
    lost, extra = len(committed - set(got)), len(set(got) - committed)
    assert set(got) == committed, f"{lost} committed never received, {extra} not committed"
    assert max(got.values()) == 1, "a payload received twice"
    assert not aborted & set(got)
    # the impairments were real, and the kills fell during the transfers
    a_to_b = bridge["a_to_b"]
    for what in ("lost", "duplicated", "reordered", "corrupted", "partitioned"):
        assert a_to_b[what] > 0, (what, a_to_b)
    assert {who for _, who in kills} == {"send", "recv"}
    redone = Counter(f[0] for f in sent + received if f[0] in ("X", "D"))
    print(f"\n{N} payloads in {elapsed:.0f} s: {len(committed)} committed, {len(aborted)} "
          f"aborted; kills at {kills}; handed out again and skipped by the apps: "
          f"{redone['X']} outcomes, {redone['D']} messages; bridge a->b {a_to_b}")
