"""The epoch machine on real frames: two EpochNodes over a veth pair between namespaces
(the runtime's gated links), a transition, application traffic under the new epoch, and
a restart that recovers the committed epoch from disk. And, without root, the adapter's
own rules over in-memory gated links (oae.epoch.legs, the model the simulator uses): the
order in which offers, gate decisions, application frames, epoch switches and durable
writes reach the links, deliveries handed over before the gate events that follow them,
and link state changes taken without polling."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from oae.engine import Offered, Reflected
from oae.epoch import legs
from oae.epoch.durable import FileStore
from oae.epoch.machine import Discard, Persist
from oae.epoch.messages import GENESIS, Kind, Message, Wave
from oae.epoch.node import EpochNode, open_epoch_node
from oae.errors import UsageError
from oae.runtime.link import LinkOptions, Outcome, open_link
from oae.runtime.link import Message as LinkMessage

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")
GATED = LinkOptions(gates=True)


@needs_root
async def test_two_nodes_converge_and_recover_over_veth(veth_pair, tmp_path) -> None:
    da, db = tmp_path / "a", tmp_path / "b"
    da.mkdir()
    db.mkdir()
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=da / "link", options=GATED) as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=db / "link", options=GATED) as lb,
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
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=tmp_path / "la", options=GATED) as la,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=tmp_path / "lb", options=GATED) as lb,
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
    """What EpochNode uses of a runtime Link, in memory, on the record-level model of a
    gated link end (oae.epoch.legs). Submissions, gate calls and epoch switches are
    appended to a log shared by both ends, in the order this end got them; `exchange`
    carries records between the ends until nothing changes, the engine's events going
    to the queues the runtime has (deliveries, gate events, batch outcomes)."""

    def __init__(self, name: str, log: list[tuple[str, str, Any]]) -> None:
        self.name, self.log = name, log
        self.end = legs.GatedEnd()
        self.peer: FakeLink | None = None
        self.options = SimpleNamespace(gates=True)
        self.up = False
        self.counters = {"links_up": 0, "links_down": 0}
        self.inbox: list[LinkMessage] = []
        self.gates: list[Offered | Reflected] = []
        self.held_outcomes: list[Any] = []  # application outcomes kept back by the test
        self.hold_app = False
        self._news = trio.Event()
        self._state = trio.Event()

    # -- what EpochNode calls
    def submit(self, payloads: list[bytes], control: bool = False, gated: bool = False) -> Any:
        batch = SimpleNamespace(results=[None] * len(payloads), done=trio.Event())
        for i, p in enumerate(payloads):
            self.log.append((self.name, "control" if control else "app", p))
            data = p if control else (p, None)
            self.end.submit(data, control=control, gated=gated, cookie=(batch, i))
        return batch

    async def wait_outcomes(self, batch: Any) -> list[Outcome]:
        await batch.done.wait()
        return list(batch.results)

    def hold(self, tid: int) -> bool:
        self.log.append((self.name, "hold", tid))
        return self.end.hold(tid)

    def refuse(self, tid: int) -> bool:
        return self.end.refuse(tid)

    def commit(self, tid: int) -> bool:
        self.log.append((self.name, "commit", tid))
        return self.end.commit(tid)

    def report(self, tid: int) -> bool:
        self.log.append((self.name, "report", tid))
        return self.end.report(tid)

    def reset(self) -> bool:
        raise AssertionError("no reset expected here")

    def set_epoch(self, epoch: int) -> None:
        self.log.append((self.name, "epoch", epoch))
        self.end.set_epoch(epoch)

    @asynccontextmanager
    async def taking_messages(self, max_count: int, timeout: float) -> AsyncIterator[list[Any]]:
        with trio.move_on_after(timeout):
            while not self.inbox:
                await self._wait()
        taken, self.inbox[:max_count] = self.inbox[:max_count], []
        yield taken

    async def gate_events(self) -> AsyncIterator[Offered | Reflected]:
        while True:
            while not self.gates:
                await self._wait()
            yield self.gates.pop(0)

    async def wait_state_change(self) -> None:
        await self._state.wait()

    # -- the test's side
    async def _wait(self) -> None:
        await self._news.wait()

    def _wake(self) -> None:
        ev, self._news = self._news, trio.Event()
        ev.set()

    def take(self, events: list[legs.Event]) -> None:
        """The engine's events of this end, to the runtime's queues."""
        for ev in events:
            if isinstance(ev, legs.Offered):
                self.gates.append(Offered(ev.tid, ev.payload, ev.info))
            elif isinstance(ev, legs.Reflected):
                self.gates.append(Reflected(ev.tid, ev.payload))
            elif isinstance(ev, legs.Delivered):
                x = ev.xfer
                payload = x.data if x.control else x.data[0]  # type: ignore[index]
                self.inbox.append(LinkMessage(x.tid, payload, x.control))
            else:
                x = ev.xfer
                outcome = Outcome(x.tid, ev.committed, b"", False, None, ev.by_round)
                if not x.control and self.hold_app:
                    self.held_outcomes.append((x.cookie, outcome))
                else:
                    settle(x.cookie, outcome)
        self._wake()

    def set_up(self, up: bool) -> None:
        """LIVE (a new session, after a round with the peer) or down."""
        assert self.peer is not None
        if up:
            ev_a, ev_b = legs.reconcile(self.end, self.peer.end)
            self.take(ev_a)
            self.peer.take(ev_b)
            self.counters["links_up"] += 1
            self.peer.counters["links_up"] += 1
        else:
            self.end.down()
            self.peer.end.down()
        for lk in (self, self.peer):
            lk.up = up
            ev, lk._state = lk._state, trio.Event()
            ev.set()


def settle(cookie: Any, outcome: Outcome) -> None:
    batch, i = cookie
    batch.results[i] = outcome
    if all(r is not None for r in batch.results):
        batch.done.set()


async def exchange(a: FakeLink, b: FakeLink) -> None:
    """Carry records both ways, letting the nodes act in between, until nothing changes."""
    while True:
        await wait_all_tasks_blocked()
        before = (a.end.record(), b.end.record())
        if a.up:
            b.take(b.end.receive(a.end.record()))
            a.take(a.end.receive(b.end.record()))
        await wait_all_tasks_blocked()
        if (a.end.record(), b.end.record()) == before:
            return


def fake_pair(log: list[tuple[str, str, Any]], tmp_path: Path) -> tuple[FakeLink, FakeLink]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = FakeLink("a", log), FakeLink("b", log)
    a.peer, b.peer = b, a
    return a, b


@asynccontextmanager
async def two_nodes(
    log: list[tuple[str, str, Any]], tmp_path: Path
) -> AsyncIterator[tuple[EpochNode, EpochNode, FakeLink, FakeLink, trio.Nursery]]:
    """Nodes 0 (a) and 1 (b) on a fake gated link, tagging their frames, and a nursery."""
    la, lb = fake_pair(log, tmp_path)
    async with (
        open_epoch_node(0, {1: la}, tmp_path / "a", tag_epochs=True) as a,
        open_epoch_node(1, {0: lb}, tmp_path / "b", tag_epochs=True) as b,
        trio.open_nursery() as nursery,
    ):
        yield a, b, la, lb, nursery


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
    """The wave's offer is submitted the moment the machine emits it, behind an
    application frame whose outcome is still pending (only submission order counts);
    every record is durable before the leg it allows: b's prepared before its hold
    (ACCEPT), a's commit before its commit() (COMMIT), b's committed before its report
    (DONE); a link end switches to e+1 after its own commit, and the next application
    frame is submitted after the switch. The mock clock never moves: nothing here may
    wait for a timer (no polling)."""
    log: list[tuple[str, str, Any]] = []
    async with two_nodes(log, tmp_path) as (a, b, la, lb, nursery):
        logged_writes(a, "a", log)
        logged_writes(b, "b", log)
        la.set_up(True)
        await exchange(la, lb)
        assert a.machine.send_epoch(1) == 0 and b.machine.send_epoch(0) == 0
        sent: list[Outcome] = []

        async def app_send() -> None:
            sent.append(await a.send(1, b"before"))

        la.hold_app = True  # its outcome stays pending
        nursery.start_soon(app_send)
        await wait_all_tasks_blocked()
        wave = await a.propose()
        assert wave is not None
        tail = log[log.index(("a", "app", (0).to_bytes(4, "big") + b"before")) :]
        assert [e[1] for e in tail] == ["app", "persist", "control"]
        assert tail[2][2] == ctl(Kind.PROPOSE, wave) and not sent
        await exchange(la, lb)
        # b has the frame, but its ACCEPT waits for nothing of its own: a child's rule is
        # about ITS frames to its parent. a decides once the frame has settled at a.
        (cookie, outcome), *_ = la.held_outcomes
        la.held_outcomes.clear()
        la.hold_app = False
        settle(cookie, outcome)
        await exchange(la, lb)
        assert wave in a.converged and b.machine.epoch == 1
        assert sent and sent[0].committed
        assert a.machine.mixed_frames == b.machine.mixed_frames == b.mixed_app_frames == 0

        def at(entry: tuple[str, str, Any]) -> int:
            return log.index(entry)

        def persisted(name: str, field: str) -> int:
            return next(i for i, e in enumerate(log)
                        if e[:2] == (name, "persist") and getattr(e[2], field) == wave)  # fmt: skip

        holds = [i for i, e in enumerate(log) if e[:2] == ("b", "hold")]
        accept = holds[-1]  # the hold of the wave transfer (statuses were held before)
        assert persisted("b", "prepared") < accept
        commit = next(i for i, e in enumerate(log) if e[:2] == ("a", "commit"))
        assert persisted("a", "committed") < commit < at(("a", "epoch", 1))
        b_epoch = at(("b", "epoch", 1))
        assert persisted("b", "committed") < b_epoch
        done = max(i for i, e in enumerate(log) if e[:2] == ("b", "report"))
        assert persisted("b", "committed") < done and b_epoch < done
        # the next application frame goes out tagged 1, after the switch
        nursery.start_soon(a.send, 1, b"after")
        await exchange(la, lb)
        assert at(("a", "epoch", 1)) < at(("a", "app", (1).to_bytes(4, "big") + b"after"))
        assert b.mixed_app_frames == 0 and b.app_received == 2
        nursery.cancel_scope.cancel()


async def test_a_childs_frames_reach_its_parent_before_its_accept(
    tmp_path: Path, mock_clock: Any
) -> None:
    """b's frames to its parent a are still unsettled at b (a has them, their outcomes
    are kept back) when b joins a's wave: b holds a's offer (its ACCEPT) only once they
    settled. They reached a after a's capture: channel state of epoch 1."""
    log: list[tuple[str, str, Any]] = []
    async with two_nodes(log, tmp_path) as (a, b, la, lb, nursery):
        la.set_up(True)
        await exchange(la, lb)
        lb.hold_app = True
        for i in range(3):
            nursery.start_soon(b.send, 0, bytes([i]))
        await wait_all_tasks_blocked()
        wave = await a.propose()
        assert wave is not None
        await exchange(la, lb)
        assert b.machine.links[0].unsettled_app == 3 and b.machine.rec.prepared is None
        assert a.app_received == 3 and a.machine.in_wave() == wave
        for cookie, outcome in lb.held_outcomes:
            settle(cookie, outcome)
        lb.held_outcomes.clear()
        lb.hold_app = False
        await exchange(la, lb)
        assert wave in a.converged
        assert a.machine.rec.committed_log == ((1, 3),)
        nursery.cancel_scope.cancel()


async def test_deliveries_come_before_the_gate_event_that_follows_them(
    tmp_path: Path, mock_clock: Any
) -> None:
    """The link queues deliveries and gate events apart; a delivery the engine queued
    before a gate event reaches the machine first, whichever of the node's tasks the
    scheduler wakes first (ten rounds: a node handing gate events over as they come
    fails this at random)."""
    log: list[tuple[str, str, Any]] = []
    la, lb = fake_pair(log, tmp_path)
    async with open_epoch_node(0, {1: la}, tmp_path / "a", tag_epochs=True) as a:
        la.set_up(True)
        await wait_all_tasks_blocked()
        calls: list[str] = []

        def app_frame(link: int, tid: int, tag: int) -> tuple[bool, list[Any]]:
            calls.append("delivery")
            return True, []

        def reflected(link: int, tid: int, payload: bytes) -> list[Any]:
            calls.append("reflected")
            return []

        a.machine.app_frame = app_frame  # type: ignore[method-assign]
        a.machine.reflected = reflected  # type: ignore[method-assign]
        payload = ctl(Kind.PROPOSE, Wave(1, 1, 0))
        for k in range(10):
            frame = legs.Xfer(100 + k, False, False, ((0).to_bytes(4, "big") + b"x", None))
            la.take([legs.Delivered(frame), legs.Reflected(200 + k, payload)])
            await wait_all_tasks_blocked()
        assert calls == ["delivery", "reflected"] * 10


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
        await exchange(la, lb)
        assert ls.up and ls.heard == 0
        la.set_up(False)
        await wait_all_tasks_blocked()
        assert not ls.up and ls.heard is None
        la.set_up(True)
        await exchange(la, lb)
        assert ls.up and ls.heard == 0
        sessions = log.count(("a", "control", ctl(Kind.COMMIT, GENESIS)))
        la.set_up(True)  # reconnected: a new session although the link stayed LIVE
        await wait_all_tasks_blocked()
        assert log.count(("a", "control", ctl(Kind.COMMIT, GENESIS))) == sessions + 1
        assert ls.heard is None
        await exchange(la, lb)
        assert ls.heard == 0
        # A new session's first message delivered before the watcher woke: the receiver
        # syncs first (down + up: this end's status sent again), then takes it.
        la.counters["links_up"] += 1
        la.take([legs.Delivered(legs.Xfer(99, True, False, ctl(Kind.COMMIT, GENESIS)))])
        await wait_all_tasks_blocked()
        assert log.count(("a", "control", ctl(Kind.COMMIT, GENESIS))) == sessions + 2
        assert ls.up and ls.heard == 0


async def test_links_without_gates_are_refused(tmp_path: Path) -> None:
    link = SimpleNamespace(options=SimpleNamespace(gates=False))
    with pytest.raises(UsageError, match=r"link\(s\) to \[1\] were opened without gates"):
        EpochNode(0, {1: link}, tmp_path)


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
