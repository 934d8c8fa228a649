"""`oae demo`: the short mode's report is consistent (exactly once, no mixed epochs for
bilateral, snap-t's failure measured on the same testbed's real frames) and nothing of
the run is left in the kernel, also after Ctrl-C; argument and root errors are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oae import demo
from oae.bench import plots
from oae.cli import main
from oae.testbed import kernel, manager

ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the demo builds a namespace testbed"
)
REPO = Path(__file__).resolve().parents[1]


def _leftovers(prefix: str, name: str) -> list[str]:
    tag = f"{prefix}-{name}"
    return [ns for ns in kernel.list_netns(prefix) if ns.startswith(tag)] + [
        f"process:{pid}" for pid in manager.process_pids(tag)
    ]


@ROOT
def test_demo_quick_report_is_consistent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_prefix: str
) -> None:
    report = tmp_path / "report.json"
    rc = main(["demo", "--quick", "--report", str(report), "--plot", str(tmp_path), "--json"])
    assert rc == 0
    doc = json.loads(report.read_text())
    assert json.loads(capsys.readouterr().out) == doc
    cfg = doc["config"]
    assert (cfg["nodes"], cfg["transfers"], cfg["epochs"]) == tuple(
        demo.QUICK[k] for k in ("nodes", "transfers", "epochs")
    )

    t = doc["traffic"]
    # a ring of n nodes has n links, each used both ways
    assert t["attempted"] == 2 * cfg["nodes"] * cfg["transfers"]
    assert t["committed"] + t["aborted"] == t["attempted"]
    assert t["unsettled"] == 0
    assert t["duplicated"] == 0
    assert t["lost"] == 0
    assert t["disagreed"] == 0
    assert t["foreign"] == 0
    assert t["delivered"] == t["committed"]
    assert len(t["per_direction"]) == 2 * cfg["nodes"]
    for key in ("attempted", "committed", "aborted", "delivered"):
        assert sum(d[key] for d in t["per_direction"]) == t[key]
    # the faults really happened on the way, the cut link failed and came back
    br = doc["bridge"]["during_traffic"]
    assert br["lost"] > 0 and br["reordered"] > 0 and br["received"] > t["committed"]
    assert t["partition"] == {"link": "n0-n1", "seconds": cfg["partition"]}
    assert t["links_down"] >= 2 and t["reconciles"] >= 2

    conv = doc["convergence"]
    assert list(conv) == [
        "bilateral (testbed)", "snap-t (testbed)", "bilateral (simulated)", "snap-t (simulated)"
    ]  # fmt: skip
    real, snap = conv["bilateral (testbed)"], conv["snap-t (testbed)"]
    for r, algorithm in ((real, "bilateral"), (snap, "snap-t")):
        # the same testbed, seed and fault schedule for both, measured on real frames
        assert r["network"] == "testbed" and r["algorithm"] == algorithm
        assert r["topology"] == doc["testbed"]["name"] and r["seed"] == cfg["seed"]
        assert r["committed"] + r["aborted"] + r["stuck"] == cfg["epochs"]
        assert r["stuck"] == 0 and r["bad_messages"] == 0
        assert cfg["epochs"] <= r["probes"] <= 2 * cfg["epochs"]
        assert r["app_frames"] > 0, algorithm  # the frame counts below are measured
        assert r["median_link_rtt_us"] > 0
    assert real["committed"] >= 1
    assert real["mixed_epoch_states"] == 0 and real["mixed_epoch_frames"] == 0
    # snap-t's failure on the same links: frames across epochs and/or mixed durable epochs
    assert snap["mixed_epoch_frames"] + snap["mixed_epoch_states"] > 0
    assert snap["critical_path_exchanges"] == 0.0
    sim = conv["bilateral (simulated)"]
    assert sim["network"] == "simulated"
    assert sim["mixed_epoch_states"] == 0 and sim["inconsistent_states"] == 0
    assert sim["mixed_epoch_frames"] == 0
    sim_snap = conv["snap-t (simulated)"]
    assert sim_snap["network"] == "simulated" and sim_snap["probes"] > 0
    # what the simulation adds: recovered states that are no consistent cut
    assert sim_snap["mixed_epoch_states"] + sim_snap["inconsistent_states"] > 0
    assert doc["simulated_params"]["rtt_us"] == real["median_link_rtt_us"]

    tb = doc["testbed"]
    assert tb["prefix"] == run_prefix
    assert tb["namespaces"] and not any(kernel.netns_exists(ns) for ns in tb["namespaces"])
    assert _leftovers(tb["prefix"], tb["name"]) == []
    if plots.available():
        assert doc["plots"] and all(Path(p).stat().st_size > 0 for p in doc["plots"])


@ROOT
def test_demo_ctrl_c_removes_the_testbed(tmp_path: Path, run_prefix: str) -> None:
    """SIGINT in the middle of the traffic: exit 130, every namespace and process gone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "oae.cli", "demo", "--quick", "--transfers", "1000000",
         "--report", str(tmp_path / "r.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        seen.append(line)
        if "LIVE" in line or time.monotonic() > deadline:
            break
    name = f"demo{proc.pid}"
    assert kernel.list_netns(f"{run_prefix}-{name}-"), "".join(seen)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + err
    assert "interrupted" in err
    assert _leftovers(run_prefix, name) == []
    assert not (tmp_path / "r.json").exists()


def test_demo_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needle in (
        (["--loss", "60%"], "--loss"),
        (["--reorder", "70%"], "--reorder"),
        (["--loss", "lots"], "--loss"),
        (["--nodes", "2"], "--nodes 2"),
        (["--epochs", "0"], "--epochs 0"),
        (["--partition", "0.25"], "--partition 0.25"),
        (["--crash-rate", "1.5"], "--crash-rate 1.5"),
    ):
        assert main(["demo", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("oae demo: error:") and needle in err and "\n" not in err


def test_demo_needs_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                         tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["demo", "--quick", "--report", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "oae demo: error: oae demo needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    assert not (tmp_path / "r.json").exists()
