"""Epoch transitions on namespace testbeds of `oae node --epochs` processes, real frames
(issues 6 and 13 acceptance): a ring and a tree of 8 node processes (netns/faulty-ring.toml,
netns/faulty-tree.toml: two links each through the impairing bridge with loss and
reordering), kill -9 and restart of random node processes, application traffic on every
link; 50 transitions of bilateral (no mixed epoch, every transition decided alike
everywhere) and, on the same testbed with the same seed and faults, snap-t and rolling,
which must show the failure. A node process that dies on its own ends the run with an
error naming it, and no process is left behind."""

from __future__ import annotations

import os
import signal
from functools import partial

import pytest
import trio

from oae.epoch.fleet import FleetError, run_fleet
from oae.testbed import manager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")

EPOCHS = 50
SEED = 5
CRASH_RATE = 0.3
APP_PERIOD = 0.05  # one application transfer per link direction every ~50 ms


def _run(tb: object, algorithm: str) -> dict[str, object]:
    return trio.run(
        partial(
            run_fleet,
            tb,
            EPOCHS,
            SEED,
            None,
            None,
            CRASH_RATE,
            algorithm=algorithm,
            app_period=APP_PERIOD,
        )
    )


@pytest.mark.parametrize("source", ["netns/faulty-ring.toml", "netns/faulty-tree.toml"])
def test_bilateral_never_mixes_and_baselines_do(testbed, source: str) -> None:
    tb = testbed(source)
    links = tb.state["links"]
    impaired = [lk["impair"] for lk in links if lk["impair"]]
    assert len(impaired) == 2 and all(i["loss"] > 0 and i["reorder"] > 0 for i in impaired)
    r = _run(tb, "bilateral")
    assert r["network"] == "testbed" and r["nodes"] == 8 and r["runner"] == "node processes"
    assert r["crashes"] > 0 and r["restarts"] == r["crashes"]  # kill -9, restart from disk
    # Every transition decided, and after each the durable epochs of all nodes agree.
    assert r["committed"] + r["aborted"] == EPOCHS and r["stuck"] == 0
    assert r["committed"] >= EPOCHS // 2
    assert r["app_frames"] > 1000  # the zero below is measured on real traffic
    assert r["mixed_epoch_frames"] == 0 and r["mixed_epoch_states"] == 0
    assert r["probes"] >= 2 * EPOCHS and r["bad_messages"] == 0
    assert r["median_convergence_us"] > 0 and r["median_link_rtt_us"] > 0
    assert 0 < r["median_control_delivery_us"] < r["median_link_rtt_us"]
    assert r["cpu_ms_per_transition"] > 0
    for algorithm in ("snap-t", "rolling"):
        base = _run(tb, algorithm)
        assert base["algorithm"] == algorithm and base["crashes"] > 0
        assert base["app_frames"] > 300
        assert base["mixed_epoch_frames"] > 0, algorithm
        assert base["mixed_epoch_states"] > 0, algorithm
        assert base["critical_path_exchanges"] == 0.0


def test_testbed_mode_refuses_other_algorithms(capsys) -> None:
    from oae.cli import main

    assert main(["converge", "whatever", "--testbed", "--algorithm", "chandy-lamport"]) == 2
    assert "--testbed runs --algorithm bilateral, snap-t, rolling, 2pc or all" in (
        capsys.readouterr().err
    )


def test_a_node_process_dying_ends_the_run_with_its_name(testbed) -> None:
    """A node process killed behind the runner's back is an error of the run, naming
    the node; every other node process is stopped (and the testbed comes down clean)."""
    tb = testbed("netns/ring.toml", nodes=4)
    prefix = f"{tb.prefix}-{tb.name}-"

    async def main() -> None:
        async def assassin() -> None:
            while len(pids := manager.process_pids(prefix)) < 4:
                await trio.sleep(0.05)
            await trio.sleep(1.0)  # transitions under way
            os.kill(max(pids), signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(assassin)
            await run_fleet(tb, 1000, 1, 0, None)

    with pytest.raises(BaseExceptionGroup) as info:
        trio.run(main)
    (error,) = info.value.exceptions  # run_fleet's own error, not wrapped in its groups
    assert isinstance(error, FleetError) and "exited with status -9" in str(error)
    assert str(error).startswith("node n")
    assert manager.process_pids(prefix) == []
