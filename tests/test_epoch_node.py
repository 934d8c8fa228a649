"""The epoch machine on real frames: two EpochNodes over a veth pair between namespaces
(the runtime's links), a transition, application traffic under the new epoch, and a
restart that recovers the committed epoch from disk."""

from __future__ import annotations

import os

import pytest
import trio

from oae.epoch.durable import FileStore
from oae.epoch.node import open_epoch_node
from oae.runtime.link import open_link

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")


async def test_two_nodes_converge_and_recover_over_veth(veth_pair, tmp_path) -> None:
    da, db = tmp_path / "a", tmp_path / "b"
    da.mkdir()
    db.mkdir()
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=da / "link") as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=db / "link") as lb,
    ):
        with trio.fail_after(20):
            async with (
                open_epoch_node(0, {1: la}, da) as a,
                open_epoch_node(1, {0: lb}, db) as b,
            ):
                await a.wait_ready()
                wave = await a.propose()
                assert wave is not None and wave.epoch == 1
                assert await a.wait_outcome(wave)
                while b.machine.send_epoch(0) != 1:
                    await trio.sleep(0.01)
                assert a.machine.send_epoch(1) == 1
                out = await a.send(1, b"after-switch")
                assert out.committed
                n, payload = await b.received().receive()
                assert (n, payload) == (0, b"after-switch")
            assert FileStore(da / "epoch.json").load().epoch == 1
            assert FileStore(db / "epoch.json").load().epoch == 1
            # Node b restarts (a fresh EpochNode from its state dir), then leads epoch 2.
            async with (
                open_epoch_node(0, {1: la}, da) as a,
                open_epoch_node(1, {0: lb}, db) as b,
            ):
                assert b.machine.epoch == 1
                await b.wait_ready()
                wave = await b.propose()
                assert wave is not None and wave.epoch == 2
                assert await b.wait_outcome(wave)
            assert FileStore(da / "epoch.json").load().epoch == 2
    assert a.machine.mixed_frames == b.machine.mixed_frames == 0


async def test_tagged_application_frames_count_mixed_epochs(veth_pair, tmp_path) -> None:
    """With tag_epochs, payloads carry the sender's epoch; a delivery whose tag is not the
    receiver's committed epoch is counted (here forged past the EpochNode on the link)."""
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=tmp_path / "la") as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=tmp_path / "lb") as lb,
    ):
        with trio.fail_after(20):
            async with (
                open_epoch_node(0, {1: la}, tmp_path / "a", tag_epochs=True) as a,
                open_epoch_node(1, {0: lb}, tmp_path / "b", tag_epochs=True) as b,
            ):
                await a.wait_ready()
                await b.wait_ready()
                assert (await a.send(1, b"ok")).committed
                assert await b.received().receive() == (0, (0).to_bytes(4, "big") + b"ok")
                assert (b.app_received, b.mixed_app_frames) == (1, 0)
                # Tagged 7 in the payload, sent at the link's own record epoch (0).
                assert (await la.send((7).to_bytes(4, "big") + b"forged")).committed
                await b.received().receive()
                assert (b.app_received, b.mixed_app_frames) == (2, 1)
