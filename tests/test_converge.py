"""The epoch algorithms side by side on the simulated network, under the same faults.

Ring and tree of 8 nodes, 50 transitions each, with frame loss (as retransmission delay),
link failures, checkpoint-write refusals and node crash-restarts at random instants;
seeds make every run reproducible. Bilateral must show no mixed epoch anywhere; the FITO
baselines must show the failure the paper predicts.
"""

from __future__ import annotations

import json

import pytest

from oae.cli import main
from oae.epoch.converge import run
from oae.epoch.sim import NetParams, make_topology

FAULTS = NetParams(loss=0.02, refuse_rate=0.01, rto_us=120.0)


@pytest.fixture(scope="module", params=["ring", "tree"])
def shape(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def results(shape: str) -> dict[str, dict[str, object]]:
    topo = make_topology(shape, 8)
    return {
        algo: run(algo, topo, 50, seed=11, params=FAULTS, crash_rate=0.3, flap_rate=0.2)
        for algo in ("bilateral", "snap-t", "rolling")
    }


def test_bilateral_never_mixes_epochs_and_every_transition_ends(results) -> None:
    r = results["bilateral"]
    assert r["network"] == "simulated"
    assert r["crashes"] > 0 and r["flaps"] > 0  # the faults really happened
    assert r["committed"] + r["aborted"] == 50 and r["stuck"] == 0
    assert r["committed"] >= 25
    assert r["mixed_epoch_frames"] == 0
    assert r["uncommitted_tag_frames"] == 0
    assert r["probes"] >= 100
    assert r["mixed_epoch_states"] == 0
    assert r["inconsistent_states"] == 0
    assert r["held_frames"] > 0  # traffic really was held across transitions
    assert r["median_convergence_us"] > 0


def test_snap_t_and_rolling_show_mixed_epochs_under_the_same_faults(results) -> None:
    for algo in ("snap-t", "rolling"):
        r = results[algo]
        assert r["mixed_epoch_frames"] > 0, algo
        assert r["mixed_epoch_states"] > 0, algo
    assert results["snap-t"]["inconsistent_states"] > 0


def test_classic_baselines_run_and_report_the_same_metrics() -> None:
    topo = make_topology("ring", 8)
    keys = None
    for algo in ("2pc", "chandy-lamport"):
        r = run(algo, topo, 5, seed=3)
        assert r["committed"] == 5
        assert r["mixed_epoch_states"] == 0 or algo == "chandy-lamport"
        keys = keys or set(r)
        assert set(r) == keys


def test_fault_free_bilateral_commits_everything_with_fixed_initiator() -> None:
    r = run("bilateral", make_topology("mesh", 6), 5, seed=2, initiator=0)
    assert r["committed"] == 5
    assert r["critical_path_exchanges"] == 2.0  # a mesh: eccentricity 1, two echoes
    assert r["mixed_epoch_states"] == 0 and r["inconsistent_states"] == 0


def test_cli_json_and_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "converge",
                "star",
                "--nodes",
                "5",
                "--epochs",
                "3",
                "--algorithm",
                "bilateral,rolling",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["network"] == "simulated"
    for name in ("bilateral", "rolling"):
        r = doc["results"][name]
        for key in (
            "median_convergence_us",
            "p99_convergence_us",
            "critical_path_exchanges",
            "mixed_epoch_frames",
            "mixed_epoch_states",
            "aborted",
            "committed",
        ):
            assert key in r
    for argv, words in [
        (["converge", "ring", "--algorithm", "paxos"], "unknown algorithm 'paxos'"),
        (["converge", "no-such.toml"], "unknown topology"),
        (["converge", "ring", "--nodes", "2"], "too small"),
        (["converge", "ring", "--loss", "1.5"], "--loss"),
        (["converge", "ring", "--epochs", "0"], "--epochs"),
        (["converge", "ring", "--initiator", "99"], "--initiator 99"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err


def test_testbed_probe_applies_bilateral_recovery() -> None:
    """The testbed's random-instant probe for bilateral: a node behind the highest commit
    is fine if it is prepared for that wave (recovery commits it), mixed otherwise; the
    records are read twice (a wave may prepare and commit while they are read one by
    one), a node behind in the second read is mixed."""
    from oae.epoch.durable import DurableRecord
    from oae.epoch.fleet import bilateral_restore_mixed
    from oae.epoch.messages import Wave

    w1, other = Wave(1, 1, 0), Wave(1, 2, 3)
    steady, c1, p1 = DurableRecord(), DurableRecord(committed=w1), DurableRecord(prepared=w1)

    def reads(*passes: list[DurableRecord]):
        it = iter(passes)
        return lambda: next(it)

    def same(*records: DurableRecord):
        return reads(list(records), list(records))

    assert not bilateral_restore_mixed(same(steady, steady))
    assert not bilateral_restore_mixed(same(c1, p1))
    assert bilateral_restore_mixed(same(c1, steady))
    assert bilateral_restore_mixed(same(c1, DurableRecord(prepared=other)))
    # node 0 read before it prepared, node 1 after the commit: the second read decides
    early = [steady, c1]
    assert not bilateral_restore_mixed(reads(early, [p1, p1]))
    assert not bilateral_restore_mixed(reads(early, [c1, c1]))
    assert bilateral_restore_mixed(reads(early, [steady, c1]))
