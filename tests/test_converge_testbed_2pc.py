"""2pc on namespace testbeds, real frames: the simulated baseline's processes driven over
runtime links (oae.epoch.twopc_testbed), one in each `oae node --epochs --algorithm 2pc`
process, the coordinator learning everything over the links. Fault-free on a ring of 8
every transition commits, application traffic flows and is held across the switch (no
mixed-epoch frame or state); with crash-restarts every transition is still decided and
no probe finds the durable epochs disagreeing under 2pc's restore rule; and `oae bench
convergence_testbed --quick` reports bilateral and 2pc side by side, every figure with a
unit and a baseline."""

from __future__ import annotations

import json
import os
from functools import partial

import pytest
import trio

from oae.bench import suite
from oae.epoch.baselines import SimpleStore
from oae.epoch.fleet import run_fleet
from oae.epoch.twopc_testbed import load_store, save_store

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")


def _run(tb: object, epochs: int, seed: int, initiator: int | None, crash_rate: float) -> dict:
    return trio.run(
        partial(
            run_fleet, tb, epochs, seed, initiator, None, crash_rate,
            algorithm="2pc", app_period=0.02,
        )
    )  # fmt: skip


def test_store_round_trip(tmp_path) -> None:
    path = tmp_path / "2pc.json"
    assert load_store(path) == SimpleStore()
    s = SimpleStore(epoch=3, log={1: 4, 7: 2}, prepared=4 << 16 | 9, coordinator=5, released=3)
    save_store(path, s)
    assert load_store(path) == s
    assert not (tmp_path / "2pc.tmp").exists()


@root
def test_2pc_ring8_commits_without_mixing(testbed) -> None:
    tb = testbed("netns/ring.toml", nodes=8)
    r = _run(tb, 10, 3, 0, 0.0)
    assert r["algorithm"] == "2pc" and r["network"] == "testbed" and r["nodes"] == 8
    assert r["committed"] == 10 and r["aborted"] == 0 and r["stuck"] == 0
    assert r["app_frames"] > 100  # the zeros below are measured on real traffic
    assert r["mixed_epoch_frames"] == 0 and r["mixed_epoch_states"] == 0
    assert r["probes"] == 20 and r["bad_messages"] == 0
    assert r["critical_path_exchanges"] == 8.0  # 2 x eccentricity of node 0
    assert r["median_link_rtt_us"] > 0 and r["convergence_ratio"] > 0
    # every node released after the coordinator knew every commit
    assert r["median_all_links_us"] >= r["median_convergence_us"] > 0


@root
def test_2pc_ring8_crash_restarts_decide_every_transition(testbed) -> None:
    tb = testbed("netns/faulty-ring.toml")
    r = _run(tb, 12, 5, None, 0.4)
    assert r["crashes"] > 0
    assert r["committed"] + r["aborted"] == 12 and r["stuck"] == 0
    assert r["committed"] >= 4
    assert r["mixed_epoch_states"] == 0 and r["bad_messages"] == 0


@root
def test_bench_reports_bilateral_and_2pc(capsys) -> None:
    from oae.cli import main

    assert main(["bench", "convergence_testbed", "--quick", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    part = doc["parts"]["convergence_testbed"] if "parts" in doc else doc
    assert part["ring4_committed"] == part["ring4_2pc_committed"] == part["epochs"]
    assert part["ring4_bilateral_us"] > 0 and part["ring4_2pc_us"] > 0
    assert part["ring4_2pc_critical_path_exchanges"] == part["ring4_critical_path_exchanges"]
    assert part["ring4_2pc_ratio_vs_exchange"] == pytest.approx(
        part["ring4_2pc_us"]
        / (part["ring4_2pc_critical_path_exchanges"] * part["ring4_2pc_link_exchange_us"])
    )
    assert part["ring4_2pc_over_bilateral"] == pytest.approx(
        part["ring4_2pc_us"] / part["ring4_bilateral_us"]
    )
    # the machine's floor: the ring of 4's 4 links x 4 legs, each a frame and a store
    assert part["ring4_frame_cpu_us"] > 0 and part["ring4_store_cpu_us"] > 0
    cpus = len(os.sched_getaffinity(0))
    assert part["ring4_work_floor_us"] == pytest.approx(
        16 * (part["ring4_frame_cpu_us"] + part["ring4_store_cpu_us"]) / cpus
    )
    assert part["ring4_work_over_floor"] == pytest.approx(
        part["ring4_work_floor_us"] / part["ring4_floor_us"]
    )
    figs, missing = suite.figures("convergence_testbed", part)
    assert missing == []
    names = {f["name"] for f in figs}
    assert {"ring4_2pc_us", "ring4_2pc_ratio_vs_exchange", "ring4_ratio_vs_exchange"} <= names
