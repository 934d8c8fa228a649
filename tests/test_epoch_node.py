"""The epoch layer on real frames: EpochNodes (the C epoch runner, csrc/epochrun.c, beside
the links' pumps) over veth pairs between namespaces. Transitions, application traffic
tagged with the link end's epoch and held across the switch, a forged frame of the wrong
epoch dropped and counted, restarts from the durable record (binary, also from a record
of the older JSON layout), application checkpoints (a failed one aborts the wave), and a
record that cannot be written stopping the node with a clear error."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path

import pytest
import trio

from oae.epoch.durable import DurableRecord, FileStore
from oae.epoch.messages import Kind, Message, Wave
from oae.epoch.node import EpochNode, EpochNodeError, open_epoch_node
from oae.errors import UsageError
from oae.runtime.link import LinkOptions, open_link
from oae.testbed import kernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")

EPOCH_LINK = {"gates": True, "epoch_runner": True}


@contextmanager
def triangle() -> Iterator[list[kernel.VethPair]]:
    """Three veth pairs: 0-1, 1-2, 2-0 (each pair its own two namespaces)."""
    with ExitStack() as stack:
        yield [stack.enter_context(kernel.veth_pair()) for _ in range(3)]


async def test_two_nodes_converge_send_and_recover(veth_pair, tmp_path: Path) -> None:
    da, db = tmp_path / "a", tmp_path / "b"
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=da / "link", **EPOCH_LINK) as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=db / "link", **EPOCH_LINK) as lb,
    ):
        with trio.fail_after(20):
            async with open_epoch_node(0, {1: la}, da) as a, open_epoch_node(1, {0: lb}, db) as b:
                await a.wait_ready()
                assert (await a.send(1, b"at-0")).committed
                wave = await a.propose()
                assert wave == Wave(1, 1, 0) and await a.propose() is None
                assert await a.wait_outcome(wave) and a.epoch == 1
                await b.wait_epoch(1)
                while b.send_epoch(0) != 1:
                    await b.wait_change()
                assert (await a.send_many(1, [b"e1-a", b"e1-b"]))[1].committed
                got = [(await b.received().receive()) for _ in range(3)]
                assert [(n, m.payload) for n, m in got] == [
                    (0, b"at-0"),
                    (0, b"e1-a"),
                    (0, b"e1-b"),
                ]
                assert a.converged_at[wave] >= a.decided_at[wave] >= a.proposed_at[wave]
                assert a.counters()["persists"] >= 2 and a.stats()["steps"] > 0
                took, legs = a.harvest()
                assert took and all(0 < t < 20 for t in took)  # the status messages
                mine = {(x.leg, x.acted) for x in legs if x.neighbour == 1}
                assert mine >= {("offer", True), ("hold", False), ("commit", True)}
                _, theirs = b.harvest()
                commit = next(x for x in legs if x.leg == "commit" and x.acted)
                got = next(x for x in theirs if x[:4] == ("commit", False, 0, commit.tid))
                assert commit.payload == got.payload == Message(Kind.PROPOSE, wave).encode()
                assert 0 < got.at - commit.at < 5
                assert a.harvest() == ([], [])
                with pytest.raises(UsageError, match="at most 12 bytes"):
                    await a.send(1, bytes(13))
            assert FileStore(da / "epoch.json").load().epoch == 1
            assert FileStore(db / "epoch.json").load().committed == wave
            # the runner keeps its own record: the links store registers, no events.log
            assert (da / "link" / "durable").exists() and not (da / "link" / "events.log").exists()
            # both restart from their records; b leads epoch 2
            async with open_epoch_node(0, {1: la}, da) as a, open_epoch_node(1, {0: lb}, db) as b:
                assert b.epoch == 1
                await b.wait_ready()
                wave = await b.propose()
                assert wave is not None and wave.epoch == 2
                assert await b.wait_outcome(wave)
                await a.wait_epoch(2)
                assert a.outcome(Wave(2, 9, 0)) is False  # its epoch went to b's wave
            assert FileStore(da / "epoch.json").load().epoch == 2
            assert a.counters()["mixed_app_frames"] == b.counters()["mixed_app_frames"] == 0


async def test_a_burst_of_application_frames_across_a_transition(veth_pair, tmp_path) -> None:
    # the pumps' threads hand the runner their events in batches; a burst fills them and
    # must neither stall nor reorder, with a wave stepping through the same threads
    n = 4000
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=tmp_path / "la", **EPOCH_LINK) as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=tmp_path / "lb", **EPOCH_LINK) as lb,
    ):
        with trio.fail_after(60):
            async with open_epoch_node(0, {1: la}, tmp_path / "a") as a, \
                    open_epoch_node(1, {0: lb}, tmp_path / "b") as b:  # fmt: skip
                await a.wait_ready()
                got: list[bytes] = []

                async def receive() -> None:
                    while len(got) < n:
                        got.append((await b.received().receive())[1].payload)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    sent = [i.to_bytes(4, "big") for i in range(n)]
                    first = await a.send_many(1, sent[: n // 2])
                    wave = await a.propose()
                    assert wave is not None and await a.wait_outcome(wave)
                    second = await a.send_many(1, sent[n // 2 :])
                assert all(o.committed for o in first + second)
                assert got == sent
                assert b.counters()["mixed_app_frames"] == 0


async def test_a_frame_of_another_epoch_is_dropped_and_counted(veth_pair, tmp_path) -> None:
    """A frame tagged 7 sent past the runner (straight on the link, whose record epoch is
    0): the engine delivers it, the receiving runner drops it and counts it."""
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=tmp_path / "la", **EPOCH_LINK) as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=tmp_path / "lb", **EPOCH_LINK) as lb,
    ):
        with trio.fail_after(20):
            async with (
                open_epoch_node(0, {1: la}, tmp_path / "a") as a,
                open_epoch_node(1, {0: lb}, tmp_path / "b") as b,
            ):
                await a.wait_ready()
                await b.wait_ready()
                assert (await la.send((7).to_bytes(4, "big") + b"forged")).committed
                assert (await la.send(b"no")).committed  # no tag at all
                assert (await a.send(1, b"ok")).committed
                n, msg = await b.received().receive()
                assert (n, msg.payload) == (0, b"ok")
                c = b.counters()
                assert (c["app_received"], c["mixed_app_frames"], c["mixed_frames"]) == (3, 2, 1)


async def test_triangle_with_checkpoints_and_a_failed_one(tmp_path: Path) -> None:
    """Three nodes on three links; every capture goes through the application's
    checkpoint; node 2 fails its first write, which aborts the wave; the next commits."""
    written: dict[int, list[Wave]] = {0: [], 1: [], 2: []}

    def checkpoint(v: int):
        async def write(wave: Wave) -> bool:
            await trio.sleep(0.001)
            written[v].append(wave)
            return not (v == 2 and len(written[v]) == 1)

        return write

    with triangle() as (p01, p12, p20):
        ends = {  # node -> {neighbour: (iface, netns)}
            0: {1: (p01.if_a, p01.ns_a), 2: (p20.if_b, p20.ns_b)},
            1: {0: (p01.if_b, p01.ns_b), 2: (p12.if_a, p12.ns_a)},
            2: {1: (p12.if_b, p12.ns_b), 0: (p20.if_a, p20.ns_a)},
        }
        async with AsyncExitStack() as stack:
            links = {
                v: {
                    w: await stack.enter_async_context(
                        open_link(iface, ns, state_dir=tmp_path / f"l{v}{w}", **EPOCH_LINK)
                    )
                    for w, (iface, ns) in nb.items()
                }
                for v, nb in ends.items()
            }
            nodes = [
                await stack.enter_async_context(
                    open_epoch_node(v, links[v], tmp_path / f"n{v}", checkpoint(v))
                )
                for v in range(3)
            ]
            with trio.fail_after(30):
                for n in nodes:
                    await n.wait_ready()
                first = await nodes[0].propose()
                assert first is not None and not await nodes[0].wait_outcome(first)
                for n in nodes:
                    await n.wait_ready()
                second = await nodes[0].propose()
                assert second is not None and await nodes[0].wait_outcome(second)
                for n in nodes[1:]:
                    await n.wait_epoch(1)
                assert all(second in written[v] for v in written)
                assert nodes[1].status()["epoch"] == 1 and nodes[0].status()["converged"]
    for v in range(3):
        assert FileStore(tmp_path / f"n{v}" / "epoch.json").load().committed == second


async def test_a_record_of_the_json_layout_loads_and_is_rewritten(veth_pair, tmp_path) -> None:
    da = tmp_path / "a"
    da.mkdir()
    (da / "epoch.json").write_text(
        '{"aborted": [], "committed": [3, 1, 1], "committed_log": [], "initiating": null, '
        '"next_attempt": 2, "prepared": null, "prepared_children": [], "prepared_log": [], '
        '"prepared_parent": null, "tree_children": [], "tree_parent": 1}'
    )
    db = tmp_path / "b"
    db.mkdir()
    FileStore(db / "epoch.json").write(DurableRecord(committed=Wave(3, 1, 1), next_attempt=2))
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=da / "link", **EPOCH_LINK) as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=db / "link", **EPOCH_LINK) as lb,
    ):
        with trio.fail_after(20):
            async with open_epoch_node(0, {1: la}, da) as a, open_epoch_node(1, {0: lb}, db):
                assert a.epoch == 3
                await a.wait_ready()
                wave = await a.propose()
                assert wave == Wave(4, 2, 0) and await a.wait_outcome(wave)
    assert FileStore(da / "epoch.json").load().committed == wave
    assert (da / "epoch.json").read_bytes()[24] == 1  # slot 0, binary record version 1


async def test_a_record_that_cannot_be_written_stops_the_node(veth_pair, tmp_path) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, **EPOCH_LINK) as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, **EPOCH_LINK) as lb,
    ):
        with trio.fail_after(20), pytest.raises(EpochNodeError, match="could not be written"):
            async with (
                open_epoch_node(0, {1: la}, tmp_path / "a") as a,
                open_epoch_node(1, {0: lb}, tmp_path / "b"),
            ):
                await a.wait_ready()
                shutil.rmtree(tmp_path / "a")
                await a.propose()
                await trio.sleep_forever()


async def test_links_must_be_opened_for_the_runner(veth_pair, tmp_path) -> None:
    with pytest.raises(UsageError, match="needs gates"):
        LinkOptions(epoch_runner=True).check()
    async with open_link(veth_pair.if_a, veth_pair.ns_a, gates=True) as la:
        with pytest.raises(UsageError, match="opened for its runner"):
            EpochNode(0, {1: la}, tmp_path)
    (tmp_path / "epoch.json").parent.mkdir(exist_ok=True)
    FileStore(tmp_path / "epoch.json").write(DurableRecord(tree_parent=5))
    async with open_link(veth_pair.if_a, veth_pair.ns_a, **EPOCH_LINK) as la:
        with pytest.raises(UsageError, match=r"names link\(s\) \[5\]"):
            EpochNode(0, {1: la}, tmp_path)
