"""Bilateral convergence on namespace testbeds, real frames: ring and tree from netns/
(the ring has one impaired link: loss, delay, jitter through the impairing bridge)."""

from __future__ import annotations

import os

import pytest
import trio

from oae.epoch.testbed_run import run_on_testbed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")


@pytest.mark.parametrize(("source", "nodes"), [("netns/ring.toml", 8), ("netns/tree.toml", 8)])
def test_bilateral_converges_on_a_testbed(testbed, source: str, nodes: int) -> None:
    tb = testbed(source, nodes=nodes)
    r = trio.run(run_on_testbed, tb, 10, 3)
    assert r["network"] == "testbed" and r["nodes"] == 8
    assert r["committed"] == 10 and r["aborted"] == 0 and r["stuck"] == 0
    assert r["mixed_epoch_frames"] == 0 and r["mixed_epoch_states"] == 0
    assert r["bad_messages"] == 0
    assert r["median_convergence_us"] > 0 and r["median_link_rtt_us"] > 0


def test_bilateral_survives_crash_restarts_on_a_testbed(testbed) -> None:
    """Random nodes crash mid-transition (links and epoch layer torn down together) and
    restart from their state dirs: every transition still ends committed or aborted
    everywhere, and no epoch is ever mixed."""
    tb = testbed("netns/ring.toml", nodes=8)
    r = trio.run(run_on_testbed, tb, 10, 2, None, None, 0.6)
    assert r["crashes"] > 0
    assert r["committed"] + r["aborted"] == 10 and r["stuck"] == 0
    assert r["committed"] >= 5
    assert r["mixed_epoch_frames"] == 0 and r["mixed_epoch_states"] == 0


def test_testbed_mode_runs_bilateral_only(capsys) -> None:
    from oae.cli import main

    assert main(["converge", "whatever", "--testbed", "--algorithm", "snap-t"]) == 2
    assert "--testbed runs only --algorithm bilateral" in capsys.readouterr().err
