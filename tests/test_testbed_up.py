"""Testbeds in the kernel: ring, tree and mesh of 16 nodes pass frames on every link and
leave nothing behind; the CLI works end to end; a SIGKILLed run is cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from oae.errors import UsageError
from oae.testbed import kernel, manager, probe, topology
from oae.testbed.topology import loads

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, veth)")
NETNS = Path(__file__).resolve().parents[1] / "netns"
ROOT = Path(__file__).resolve().parents[1]


def _oae(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "oae.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str]):
    """Run the `oae` CLI in this process (quicker than a subprocess per command), with
    its output and that of its children captured."""
    from oae.cli import main

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()
        rc = main(list(args))
        out, err = capfd.readouterr()
        if check:
            assert rc == 0, err
        return subprocess.CompletedProcess(list(args), rc, out, err)

    return run


@pytest.mark.parametrize(
    ("shape", "links", "bridged"),
    [("ring", 16, 1), ("tree", 15, 0), ("mesh", 120, 0), ("grid", 23, 23)],
)
def test_16_node_testbed_every_link_passes_frames(
    testbed, run_prefix: str, shape: str, links: int, bridged: int
) -> None:
    text = (NETNS / f"{shape}.toml").read_text()
    if shape == "grid":  # 3 columns; every link through the impairing bridge
        text = text.replace("[topology]\n", '[topology]\nbridge = "all"\n')
    tb = testbed(loads(text, f"{shape}.toml", nodes=16))
    assert len(tb.state["nodes"]) == 16 and len(tb.state["links"]) == links
    assert sum(1 for lk in tb.state["links"] if lk["bridge"]) == bridged
    for ns in tb.namespaces():
        assert ns.startswith(run_prefix) and kernel.netns_exists(ns)
    results = probe.probe_all(tb, timeout=1.0)
    assert results and all(results.values()), [n for n, ok in results.items() if not ok]
    # each node has exactly one interface per link, named after the peer
    node = tb.state["links"][0]["a"]
    with kernel.in_netns(tb.ns(node)), IPRoute() as ipr:
        names = {link.get("ifname") for link in ipr.link("dump")} - {"lo"}
    peers = {
        lk["b"] if lk["a"] == node else lk["a"]
        for lk in tb.state["links"]
        if node in (lk["a"], lk["b"])
    }
    assert names == {f"to-{p}" for p in peers}


def test_frames_stay_on_their_link(testbed) -> None:
    """A frame sent on n0-n1 of a ring is seen by n1 only, not on n0's other link."""
    tb = testbed(NETNS / "ring.toml", nodes=4)
    other = probe.raw_socket(tb.ns("n0"), "to-n3")
    with other, probe.link_sockets(tb, "n1-n2") as (sa, _):
        sa.send(probe.frame(b"oae-probe stray"))
        other.settimeout(0.2)
        with pytest.raises(TimeoutError):
            other.recv(2000)
    assert probe.probe_link(tb, "n0-n1")


def test_down_removes_everything(run_prefix: str) -> None:
    topo = topology.load(NETNS / "lossy-chain.toml")
    with manager.running(topo, "downcheck") as tb:
        nss = tb.namespaces()
        pid = tb.state["bridge_pid"]
        assert all(kernel.netns_exists(ns) for ns in nss) and manager._pid_alive(pid)
    assert not any(kernel.netns_exists(ns) for ns in nss)
    assert not manager._pid_alive(pid)
    assert not (manager.state_dir() / "downcheck").exists()
    assert "downcheck" not in {r.get("name") for r in manager.list_testbeds()}


def test_up_twice_same_name_refused_and_first_kept(testbed) -> None:
    tb = testbed(NETNS / "pair.toml")
    with pytest.raises(UsageError, match="already up"):
        manager.up(topology.load(NETNS / "pair.toml"))
    assert all(kernel.netns_exists(ns) for ns in tb.namespaces())


def test_failed_up_rolls_back(monkeypatch: pytest.MonkeyPatch, run_prefix: str) -> None:
    calls = {"n": 0}
    real = kernel.add_veth

    def flaky(*args: str) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(kernel, "add_veth", flaky)
    before = set(kernel.list_netns(run_prefix))
    with pytest.raises(KeyboardInterrupt):
        manager.up(topology.load(NETNS / "chain.toml"), "rollback")
    assert set(kernel.list_netns(run_prefix)) == before
    assert not (manager.state_dir() / "rollback").exists()


def test_cli_session(run_prefix: str, cli) -> None:
    up = json.loads(
        _oae(
            "testbed", "up", str(NETNS / "ring.toml"), "--name", "clitest", "--nodes", "5", "--json"
        ).stdout
    )
    try:
        assert up["prefix"] == run_prefix and len(up["nodes"]) == 5
        rows = json.loads(cli("testbed", "list", "--json").stdout)
        assert any(r.get("name") == "clitest" and r["bridge_running"] for r in rows)
        out = cli("testbed", "exec", "clitest", "n2", "--", "cat", "/proc/net/dev").stdout
        assert "to-n1" in out and "to-n3" in out and "to-n4" not in out
        assert cli("testbed", "exec", "clitest", "n2", "--", "false", check=False).returncode == 1
        env_out = cli(
            "testbed", "exec", "clitest", "n4", "--", "sh", "-c", "echo $OAE_TESTBED/$OAE_NODE"
        ).stdout
        assert env_out.strip() == "clitest/n4"
        checked = json.loads(cli("testbed", "check", "clitest", "--json").stdout)
        assert checked["failed"] == [] and len(checked["links"]) == 5
        rep = json.loads(
            cli("testbed", "impair", "clitest", "n0-n1", "loss=5%", "delay=3ms", "--json").stdout
        )
        assert rep["impair"]["loss"] == 0.05 and rep["impair"]["delay"] == 0.003
        err = cli("testbed", "impair", "clitest", "n1-n2", "loss=5%", check=False)
        assert err.returncode == 2 and "direct veth" in err.stderr
        assert err.stderr.count("\n") == 1
    finally:
        down = json.loads(cli("testbed", "down", "clitest", "--json").stdout)
    assert sum(r.startswith("netns:") for r in down["removed"]) == 6  # 5 nodes + bridge
    assert not kernel.list_netns(f"{run_prefix}-clitest-")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["testbed", "up", "/nonexistent.toml"], "cannot read"),
        (["testbed", "down", "nosuchbed"], "no testbed named"),
        (["testbed", "exec", "nosuchbed", "n0", "--", "true"], "no testbed named"),
        (["testbed", "clean", "--prefix", "xyz"], "must start with"),
        (["testbed", "up", str(NETNS / "ring.toml"), "--nodes", "2"], "--nodes 2: a ring has 3"),
    ],
)
def test_cli_errors_are_one_line(cli, args: list[str], needle: str) -> None:
    proc = cli(*args, check=False)
    assert proc.returncode == 2 and needle in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_cli_bad_file_names_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[topology]\nshape = "ring"\n\n[defaults.impair]\nloss = "lots"\n')
    proc = cli("testbed", "up", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        f"{bad}:5: defaults.impair.loss: 'lots' is not a "
        "percentage such as '10%' (or a fraction 0..1)"
    )


def test_sigkilled_run_is_removed_by_clean(run_prefix: str) -> None:
    """A process builds a testbed (with a bridge) and is killed mid-life: `clean` with the
    run prefix removes the namespaces and the orphaned bridge, and nothing else."""
    crash_prefix = kernel.check_prefix(run_prefix[:3] + "k" + run_prefix[3:6])
    bystander = f"{run_prefix}-bystander"
    kernel.create_netns(bystander)
    script = (
        "import sys, time\n"
        "from oae.testbed import manager, topology\n"
        "tb = manager.up(topology.load(sys.argv[1]), 'crashme')\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), kernel.RUN_PREFIX_ENV: crash_prefix}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(NETNS / "lossy-chain.toml")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        left = kernel.list_netns(crash_prefix)
        assert len(left) == 4  # 3 nodes + the bridge namespace survive the kill
        assert len(manager.process_pids(crash_prefix)) == 1
        rows = manager.list_testbeds()
        assert any(r.get("name") == "crashme" for r in rows)
        dry = manager.clean(crash_prefix, dry_run=True)
        assert sum(r.startswith("netns:") for r in dry) == 4
        assert len(kernel.list_netns(crash_prefix)) == 4  # a dry run removes nothing
        removed = json.loads(_oae("testbed", "clean", "--prefix", crash_prefix, "--json").stdout)[
            "removed"
        ]
        assert sum(r.startswith("netns:") for r in removed) == 4
        assert sum(r.startswith("process:") for r in removed) == 1
        assert "state:crashme" in removed
        assert kernel.list_netns(crash_prefix) == []
        assert manager.process_pids(crash_prefix) == []
        assert kernel.netns_exists(bystander)  # another prefix is never touched
    finally:
        if proc.poll() is None:
            proc.kill()
        manager.clean(crash_prefix)
        kernel.remove_netns(bystander)


def test_orphans_listed(run_prefix: str) -> None:
    orphan_prefix = kernel.check_prefix(run_prefix[:3] + "o" + run_prefix[3:6])
    kernel.create_netns(f"{orphan_prefix}-x-n0")
    try:
        rows = manager.list_testbeds()
        assert {
            "name": None,
            "prefix": orphan_prefix,
            "orphan": True,
            "namespaces_present": 1,
        } in rows
    finally:
        manager.clean(orphan_prefix)


def test_hosts_topology_uses_real_interfaces() -> None:
    text = (NETNS / "two-host.toml").read_text().replace("enp1s0", "lo")
    topo = loads(text, "two-host.toml")
    with manager.running(topo, "hosts") as tb:
        assert tb.namespaces() == []
        assert tb.state["nodes"]["left"]["local"] and not tb.state["nodes"]["right"]["local"]
        assert manager.exec_in("hosts", "left", ["true"]) == 0
        with pytest.raises(UsageError, match="other host"):
            manager.exec_in("hosts", "right", ["true"])
    with pytest.raises(UsageError, match="none of the interfaces"):
        manager.up(loads(text.replace('"lo"', '"nonexist0"'), "two-host.toml"), "hosts2")


def test_start_nodes_links_come_up_and_down_stops_them(run_prefix: str) -> None:
    """`up --start-nodes` runs `oae node` on every interface; the nodes find their peers
    over direct and bridged links; `down` stops them."""
    topo = topology.load(NETNS / "ring.toml", nodes=3)  # n0-n1 goes through the bridge
    with manager.running(topo, "nodes", start_nodes=True) as tb:
        pids = list(tb.state["node_pids"].values())
        assert len(pids) == 3 and all(map(manager._pid_alive, pids))
        logs = {n: manager.state_dir() / "nodes" / "nodes" / f"{n}.log" for n in tb.state["nodes"]}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ups = {n: log.read_text().count('"event": "link-up"') for n, log in logs.items()}
            if all(c >= 2 for c in ups.values()):
                break
            time.sleep(0.1)
        assert all(c >= 2 for c in ups.values()), ups  # each node: both links up
    assert not any(map(manager._pid_alive, pids))


def test_start_nodes_failure_rolls_back(run_prefix: str) -> None:
    before = set(kernel.list_netns(run_prefix))
    with pytest.raises(UsageError, match="exited at start"):
        manager.up(topology.load(NETNS / "pair.toml"), "badnode", True, ("--no-such-flag",))
    assert set(kernel.list_netns(run_prefix)) == before
    assert not (manager.state_dir() / "badnode").exists()


@pytest.mark.parametrize(
    ("sig", "after"),
    [(signal.SIGTERM, 10), (signal.SIGINT, 41)],
    ids=["sigterm-creating-namespaces", "sigint-wiring"],
)
def test_interrupted_cli_up_leaves_nothing(
    run_prefix: str, sig: signal.Signals, after: int
) -> None:
    """Ctrl-C (or SIGTERM) while `oae testbed up` is building (once `after` namespaces of
    41 exist): it removes what it made."""
    prefix = kernel.check_prefix(run_prefix[:3] + "i" + run_prefix[3:6])
    env = {**os.environ, "PYTHONPATH": str(ROOT), kernel.RUN_PREFIX_ENV: prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "oae.cli", "testbed", "up", str(NETNS / "lossy-chain.toml"),
         "--nodes", "40", "--name", "interrupted"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(kernel.list_netns(prefix)) < after and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err  # interrupted, not finished
        assert "interrupted" in err and "Traceback" not in err
        assert kernel.list_netns(prefix) == []
        assert manager.process_pids(prefix) == []
        assert not (manager.state_dir() / "interrupted").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        manager.clean(prefix)


def test_interrupted_pytest_session_leaves_nothing(run_prefix: str, tmp_path: Path) -> None:
    """A test session using the `testbed` fixture gets Ctrl-C in the middle of a test:
    fixture teardown and the plugin's session check leave nothing of its prefix."""
    prefix = kernel.check_prefix(run_prefix[:3] + "p" + run_prefix[3:6])
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["oae.testbed.pytest_plugin"]\n')
    (tmp_path / "test_sleepy.py").write_text(
        "import time\n"
        f"def test_sleepy(testbed):\n"
        f"    testbed({str(NETNS / 'lossy-chain.toml')!r}, nodes=5)\n"
        "    print('testbed up', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), kernel.RUN_PREFIX_ENV: prefix}
    env.pop(manager.STATE_DIR_ENV, None)  # the inner session makes its own
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if "testbed up" in line:
                break
            assert time.monotonic() < deadline
        assert len(kernel.list_netns(prefix)) == 6  # 5 nodes + bridge
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert "KeyboardInterrupt" in out
        assert kernel.list_netns(prefix) == [] and manager.process_pids(prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        manager.clean(prefix)
