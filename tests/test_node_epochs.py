"""`oae node --epochs`: three node processes on a chain of namespaces run bilateral epoch
transitions driven by `oae epoch propose/status/wait`; tagged application traffic goes
through them; a node killed with SIGKILL restarts from its state dir at its committed
epoch and leads the next transition. And, without root, the flags and the node's identity
(node id and link labels kept in the state dir) refused with one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oae.cli import main
from oae.runtime.control import request

OAE = [sys.executable, "-m", "oae.cli"]
ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OAE, *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def start(ns: str, ifaces: list[str], sock: Path, state: Path, *extra: str) -> subprocess.Popen:
    argv = [*OAE, "node", "--netns", ns, "--control", str(sock), "--state-dir", str(state),
            "--epochs", "--dead", "0.3", "--json", *extra]  # fmt: skip
    for iface in ifaces:
        argv += ["--iface", iface]
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"oae node exited {proc.returncode}: {proc.stderr.read()}")
        try:
            request(str(sock), {"op": "status"}, timeout=2)
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("oae node did not open its control socket within 20 s")


def status(sock: Path) -> dict:
    out = cli("epoch", "status", "--control", str(sock), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_root
def test_three_node_processes_change_epochs_and_survive_a_kill(testbed, tmp_path) -> None:
    tb = testbed("netns/chain.toml", nodes=3)
    ifaces = {n: [lk[f"if_{e}"] for lk in tb.state["links"] for e in "ab" if lk[e] == n]
              for n in ("n0", "n1", "n2")}  # fmt: skip
    socks = {n: tmp_path / f"{n}.sock" for n in ifaces}
    procs = {n: start(tb.ns(n), ifaces[n], socks[n], tmp_path / n, "--node-id", str(i))
             for i, n in enumerate(ifaces)}  # fmt: skip
    try:
        ready = request(str(socks["n1"]), {"op": "epoch-ready", "timeout": 20}, timeout=25)
        assert ready["ready"]
        one = cli("epoch", "propose", "--control", str(socks["n0"]), "--json")
        assert one.returncode == 0, one.stderr
        r = json.loads(one.stdout)
        assert r["wave"] == [1, 1, 0] and r["outcome"] == "committed"
        assert r["convergence_ms"] > 0  # measured at n0, from its proposal to its Conv
        more = cli("epoch", "propose", "--control", str(socks["n2"]), "--to", "3")
        assert more.returncode == 0, more.stderr
        assert more.stdout.count("committed, Conv(P,") == 2, more.stdout
        waited = cli("epoch", "wait", "3", "--control", str(socks["n1"]), "--timeout", "10")
        assert waited.returncode == 0 and "epoch 3 committed" in waited.stdout
        st = status(socks["n1"])
        assert (st["node_id"], st["epoch"], st["algorithm"]) == (1, 3, "bilateral")
        assert st["wave"] is None
        assert [(ln["iface"], ln["up"], ln["epoch"]) for ln in st["links"]] == [
            (i, True, 3) for i in ifaces["n1"]
        ]
        assert status(socks["n2"])["converged"] == [3, 2, 2]
        text = cli("epoch", "status", "--control", str(socks["n1"]))
        assert "epoch 3 committed by wave (3,2,2)" in text.stdout
        plain = cli("status", "--control", str(socks["n1"]))
        assert "epoch 3  (bilateral, node id 1" in plain.stdout

        # application traffic through the nodes: tagged with the epoch, 12 bytes of data
        sent = cli("send", "--control", str(socks["n0"]), "--json", "hello")
        assert sent.returncode == 0 and json.loads(sent.stdout)["outcome"] == "committed"
        got = cli("recv", "--control", str(socks["n1"]), "--link", ifaces["n1"][0], "--json",
                  "--timeout", "5")  # fmt: skip
        assert [json.loads(line)["text"] for line in got.stdout.splitlines()] == ["hello"]
        long = cli("send", "--control", str(socks["n0"]), "0123456789abc")
        assert long.returncode == 2 and "at most 12 bytes" in long.stderr
        assert len(long.stderr.strip().splitlines()) == 1

        # bad requests get one-line errors and change nothing
        from oae.errors import UsageError

        for req, needle in (
            ({"op": "epoch-outcome", "wave": "x"}, "[epoch, attempt, initiator]"),
            ({"op": "epoch-wait", "epoch": -1}, '"epoch" must be'),
            ({"op": "epoch-ready", "timeout": "soon"}, '"timeout" must be'),
            ({"op": "epoch-enter", "epoch": 9, "at": 0, "persist_s": 0}, "by proposals"),
            ({"op": "epoch-traffic", "period": -1}, '"period" must be'),
            ({"op": "epoch-nope"}, "unknown op 'epoch-nope'"),
        ):
            with pytest.raises(UsageError, match=re.escape(needle)):
                request(str(socks["n1"]), req)
        assert status(socks["n1"])["epoch"] == 3
        # a client that hangs up before its answer is the client's business
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(socks["n1"]))
            s.sendall(b'{"op": "epoch-wait", "epoch": 99, "timeout": 0.5}\n')
        time.sleep(1.0)
        assert procs["n1"].poll() is None and status(socks["n1"])["epoch"] == 3

        # kill -9 of the middle node; restarted from its state dir (its id kept there)
        procs["n1"].send_signal(signal.SIGKILL)
        procs["n1"].wait(timeout=10)
        procs["n1"] = start(tb.ns("n1"), ifaces["n1"], socks["n1"], tmp_path / "n1")
        assert status(socks["n1"])["epoch"] == 3
        led = cli("epoch", "propose", "--control", str(socks["n1"]), "--json")
        assert led.returncode == 0, led.stderr
        assert json.loads(led.stdout)["wave"][::2] == [4, 1]
        for n in ifaces:
            assert status(socks[n])["epoch"] == 4
            assert status(socks[n])["counters"]["mixed_app_frames"] == 0
    finally:
        outs = {}
        for n, proc in procs.items():
            if proc.poll() is None:
                proc.terminate()
            outs[n] = proc.communicate(timeout=15)[0]
    assert not any(s.exists() for s in socks.values())
    events = [json.loads(line) for line in outs["n2"].splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4]
    assert events[-1]["event"] == "stopping"


def test_epoch_flags_and_identity_errors_are_one_line(tmp_path, capsys) -> None:
    state = str(tmp_path / "n")
    base = ["node", "--iface", "eth9", "--control", str(tmp_path / "x.sock")]
    for argv, needle in (
        ([*base, "--node-id", "3"], "need --epochs"),
        ([*base, "--epochs"], "--epochs needs --node-id"),
        ([*base, "--epochs", "--node-id", "1", "--no-state"], "drop --no-state"),
        ([*base, "--epochs", "--node-id", "-1"], "--node-id -1"),
        ([*base, "--epochs", "--node-id", "1", "--neighbour", "eth8=2"], "not one of --iface"),
        ([*base, "--epochs", "--node-id", "1", "--neighbour", "eth9=x"], "IFACE=ID"),
        ([*base, "--epochs", "--node-id", "1", "--algorithm", "2pc"], "--graph"),
        ([*base, "--epochs", "--node-id", "1", "--algorithm", "2pc", "--neighbour", "eth9=0",
          "--graph", "0-1,1-2"], "node 1's neighbours there are [0, 2]"),
        ([*base, "--epochs", "--node-id", "1", "--graph", "0-1,x"], "--graph"),
        ([*base, "--epochs", "--node-id", "0", "--graph", "0-1,1-2"], "applies to"),
        ([*base, "--epochs", "--node-id", "0", "--algorithm", "2pc", "--neighbour", "eth9=1",
          "--graph", "0-1,2-3"], "not all connected"),
    ):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("oae node: error:") and needle in err, (argv, err)
        assert "\n" not in err
    # The state dir keeps the node's id and its links' labels: a restart with another id
    # or another label for a link is refused before anything opens.
    from oae.epoch.daemon import EpochConfig, identity

    cfg = identity(EpochConfig(Path(state), node_id=4, neighbours={"eth1": 9}), ["eth1", "eth2"])
    assert (cfg.node_id, cfg.labels) == (4, {"eth1": 9, "eth2": 10})
    again = identity(EpochConfig(Path(state)), ["eth2", "eth3"])
    assert (again.node_id, again.labels) == (4, {"eth2": 10, "eth3": 11})
    for argv, needle in (
        ([*base, "--epochs", "--node-id", "5", "--state-dir", state], "node 4's, not --node-id 5"),
        ([*base[:2], "eth1", *base[3:], "--epochs", "--state-dir", state,
          "--neighbour", "eth1=3"], "has 9 for the peer on eth1"),
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert json.loads((tmp_path / "n" / "node.json").read_text()) == {
        "node_id": 4, "links": {"eth1": 9, "eth2": 10, "eth3": 11}
    }  # fmt: skip
