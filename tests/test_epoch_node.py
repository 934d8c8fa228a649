"""The epoch machine on real frames: two EpochNodes over a veth pair between namespaces
(the runtime's links), a transition, application traffic under the new epoch, and a
restart that recovers the committed epoch from disk. And, without root, the adapter's
own rules over in-memory links: the order in which CONTROL messages, application frames,
epoch switches and durable writes reach the links, and link state changes taken without
polling."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from oae.epoch.durable import FileStore
from oae.epoch.machine import Discard, Persist
from oae.epoch.messages import GENESIS, Kind, Message, Wave
from oae.epoch.node import EpochNode, open_epoch_node
from oae.runtime.link import Message as LinkMessage
from oae.runtime.link import Outcome, open_link

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")


@needs_root
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
                n, msg = await b.received().receive()
                assert (n, msg.payload, msg.control) == (0, b"after-switch", False)
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


@needs_root
async def test_tagged_application_frames_count_mixed_epochs(veth_pair, tmp_path) -> None:
    """With tag_epochs, payloads carry the sender's epoch, removed at delivery; a delivery
    whose tag is not the receiver's committed epoch is counted and refused (here forged
    past the EpochNode on the link)."""
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
                n, msg = await b.received().receive()
                assert (n, msg.payload) == (0, b"ok")
                assert (b.app_received, b.mixed_app_frames) == (1, 0)
                # Tagged 7 in the payload, sent at the link's own record epoch (0).
                assert (await la.send((7).to_bytes(4, "big") + b"forged")).committed
                assert (await a.send(1, b"next")).committed
                n, msg = await b.received().receive()
                assert msg.payload == b"next"  # the forged frame was not handed over
                assert (b.app_received, b.mixed_app_frames) == (3, 1)
                assert b.counters()["mixed_app_frames"] == 1


class FakeLink:
    """What EpochNode uses of a runtime Link, in memory. Submissions and epoch switches
    are appended to a log shared by every end, in the order this end got them (the order
    the pump would keep); `flush` delivers them to the peer in that order."""

    def __init__(self, name: str, log: list[tuple[str, str, Any]]) -> None:
        self.name, self.log = name, log
        self.peer: FakeLink | None = None
        self.up = False
        self.counters = {"links_up": 0}
        self.queue: list[tuple[bool, bytes, Any]] = []
        self.unsettled: list[Any] = []  # application transfers delivered, outcome held
        self._in, self._out = trio.open_memory_channel[LinkMessage](math.inf)
        self._state = trio.Event()

    def submit(self, payloads: list[bytes], control: bool = False) -> Any:
        (payload,) = payloads
        self.log.append((self.name, "control" if control else "app", payload))
        batch = SimpleNamespace(outcome=None, done=trio.Event())
        self.queue.append((control, payload, batch))
        return batch

    async def wait_outcomes(self, batch: Any) -> list[Outcome]:
        await batch.done.wait()
        return [batch.outcome]

    def set_epoch(self, epoch: int) -> None:
        self.log.append((self.name, "epoch", epoch))

    async def received(self) -> Any:
        async for msg in self._out:
            yield msg

    async def wait_state_change(self) -> None:
        await self._state.wait()

    def set_up(self, up: bool) -> None:
        """LIVE (a new session: the up counter moves, even if it was LIVE) or down."""
        if up:
            self.counters["links_up"] += 1
        self.up = up
        ev, self._state = self._state, trio.Event()
        ev.set()


def settle(batch: Any) -> None:
    batch.outcome = Outcome(0, True)
    batch.done.set()


async def flush(*links: FakeLink) -> None:
    """Deliver everything submitted, in order, until nothing moves; CONTROL transfers
    settle committed at once, application transfers are held in `unsettled`."""
    while True:
        await wait_all_tasks_blocked()
        moved = False
        for lk in links:
            assert lk.peer is not None
            while lk.queue:
                control, payload, batch = lk.queue.pop(0)
                lk.peer._in.send_nowait(LinkMessage(0, payload, control))
                (settle if control else lk.unsettled.append)(batch)
                moved = True
        if not moved:
            return


def fake_pair(log: list[tuple[str, str, Any]], tmp_path: Path) -> tuple[FakeLink, FakeLink]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = FakeLink("a", log), FakeLink("b", log)
    a.peer, b.peer = b, a
    return a, b


def logged_writes(node: EpochNode, name: str, log: list[tuple[str, str, Any]]) -> None:
    write = node.store.write

    def logging_write(rec: Any) -> None:
        write(rec)  # durable first, then logged: the log shows what was on disk when
        log.append((name, "persist", rec))

    node.store.write = logging_write  # type: ignore[method-assign]


def ctl(kind: Kind, wave: Wave) -> bytes:
    return Message(kind, wave).encode()


async def test_actions_reach_links_in_order_without_waiting_for_app_outcomes(
    tmp_path: Path, mock_clock: Any
) -> None:
    """A CONTROL message is submitted the moment the machine emits it, behind an
    application frame whose outcome is still pending (only submission order counts);
    every record is durable before the actions after it; the switch to e+1 reaches the
    link after this end's COMMIT and before the next application frame. The mock clock
    never moves: nothing here may wait for a timer (no polling)."""
    log: list[tuple[str, str, Any]] = []
    la, lb = fake_pair(log, tmp_path)
    async with (
        open_epoch_node(0, {1: la}, tmp_path / "a", tag_epochs=True) as a,
        open_epoch_node(1, {0: lb}, tmp_path / "b", tag_epochs=True) as b,
        trio.open_nursery() as nursery,
    ):
        logged_writes(a, "a", log)
        logged_writes(b, "b", log)
        la.set_up(True)
        lb.set_up(True)
        await flush(la, lb)
        assert a.machine.send_epoch(1) == 0 and b.machine.send_epoch(0) == 0
        sent: list[Outcome] = []

        async def app_send() -> None:
            sent.append(await a.send(1, b"before"))

        nursery.start_soon(app_send)
        await wait_all_tasks_blocked()
        wave = await a.propose()
        assert wave is not None
        tail = log[log.index(("a", "app", (0).to_bytes(4, "big") + b"before")) :]
        assert [e[1] for e in tail] == ["app", "persist", "control"]  # outcome still pending
        assert tail[2][2] == ctl(Kind.PROPOSE, wave) and not sent
        await flush(la, lb)
        assert wave in a.converged and b.machine.epoch == 1
        assert a.machine.mixed_frames == b.machine.mixed_frames == b.mixed_app_frames == 0

        def at(entry: tuple[str, str, Any]) -> int:
            return log.index(entry)

        # b: prepared durable before ACCEPT, committed durable before its COMMIT, and its
        # link switched only after it sent COMMIT (and heard a's)
        b_persists = [i for i, e in enumerate(log) if e[:2] == ("b", "persist")]
        prepared = next(i for i in b_persists if log[i][2].prepared == wave)
        committed = next(i for i in b_persists if log[i][2].committed == wave)
        assert prepared < at(("b", "control", ctl(Kind.ACCEPT, wave)))
        assert committed < at(("b", "control", ctl(Kind.COMMIT, wave)))
        assert at(("b", "control", ctl(Kind.COMMIT, wave))) < at(("b", "epoch", 1))
        a_commit = next(i for i, e in enumerate(log) if e[:2] == ("a", "persist")
                        and e[2].committed == wave)  # fmt: skip
        assert a_commit < at(("a", "control", ctl(Kind.COMMIT, wave))) < at(("a", "epoch", 1))
        # the held application frame settles now; the next one goes out tagged 1, after
        # the switch
        settle(la.unsettled.pop())
        await wait_all_tasks_blocked()
        assert sent and sent[0].committed
        nursery.start_soon(a.send, 1, b"after")
        await flush(la, lb)
        assert at(("a", "epoch", 1)) < at(("a", "app", (1).to_bytes(4, "big") + b"after"))
        assert b.mixed_app_frames == 0 and b.app_received == 2
        nursery.cancel_scope.cancel()


async def test_link_changes_are_taken_without_polling(tmp_path: Path, mock_clock: Any) -> None:
    """Down, up and a reconnection (the up counter moved while LIVE) reach the machine
    when the link says so, with the clock stopped; a delivery of a new session that
    arrives before the watcher ran is still taken under the new session's state."""
    log: list[tuple[str, str, Any]] = []
    la, lb = fake_pair(log, tmp_path)
    async with (
        open_epoch_node(0, {1: la}, tmp_path / "a") as a,
        open_epoch_node(1, {0: lb}, tmp_path / "b"),
    ):
        ls = a.machine.links[1]
        la.set_up(True)
        lb.set_up(True)
        await flush(la, lb)
        assert ls.up and ls.heard == 0
        la.set_up(False)
        lb.set_up(False)
        await wait_all_tasks_blocked()
        assert not ls.up and ls.heard is None
        la.set_up(True)
        lb.set_up(True)
        await flush(la, lb)
        assert ls.up and ls.heard == 0
        sessions = log.count(("a", "control", ctl(Kind.COMMIT, GENESIS)))
        la.set_up(True)  # reconnected: a new session although the link stayed LIVE
        lb.set_up(True)
        await wait_all_tasks_blocked()
        assert log.count(("a", "control", ctl(Kind.COMMIT, GENESIS))) == sessions + 1
        assert ls.heard is None
        await flush(la, lb)
        assert ls.heard == 0
        # A new session's first message delivered before the watcher woke: the receiver
        # syncs first (down + up: this end's status resent), then takes it.
        la.counters["links_up"] += 1
        la._in.send_nowait(LinkMessage(0, ctl(Kind.COMMIT, GENESIS), True))
        await wait_all_tasks_blocked()
        assert log.count(("a", "control", ctl(Kind.COMMIT, GENESIS))) == sessions + 2
        assert ls.up and ls.heard == 0


async def test_consecutive_records_are_written_once(tmp_path: Path) -> None:
    """Of records with nothing but no-op actions between them, only the last is written
    (records only move forward); a record followed by anything else is written."""
    node = EpochNode(0, {}, tmp_path)
    written: list[Any] = []
    node.store.write = written.append  # type: ignore[method-assign]
    r0 = node.machine.rec
    r1, r2, r3 = (r0.evolve(next_attempt=r0.next_attempt + k) for k in (1, 2, 3))
    w = Wave(1, 0, 0)
    node._do([Persist(r1), Discard(w), Persist(r2)])
    assert written == [r2] and node.persists == 1
    node._do([Persist(r3)])
    assert written == [r2, r3]
