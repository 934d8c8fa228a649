"""Gated CONTROL transfers through the Trio runtime over a real veth pair between two
namespaces (docs/protocol.md 7.11): the applications hold, commit and report a transfer,
and a reset aborts an undecided one at both ends."""

from __future__ import annotations

import os

import pytest
import trio

from oae.engine import Offered, Reflected
from oae.errors import UsageError
from oae.runtime.link import Link, LinkOptions, open_link

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")

GATES = LinkOptions(gates=True)


async def _next(events: object, kind: type) -> Offered | Reflected:
    ev = await events.__anext__()  # type: ignore[attr-defined]
    assert isinstance(ev, kind), ev
    return ev


async def _up(*links: Link) -> None:
    with trio.fail_after(10):
        for link in links:
            await link.wait_up()


async def test_the_applications_hold_commit_and_report_a_gated_transfer(veth_pair) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, options=GATES) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, options=GATES) as b,
    ):
        await _up(a, b)
        a_gates, b_gates, b_inbox = a.gate_events(), b.gate_events(), b.received()
        with trio.fail_after(10):
            batch = a.submit([b"propose"], control=True, gated=True)
            offered = await _next(b_gates, Offered)
            assert offered.payload == b"propose"
            await trio.sleep(0.05)  # nothing moves while B's application decides
            assert b.stats()["delivered"] == 0 and a.stats()["out_settled"] == 0
            assert b.hold(offered.tid) and not b.hold(offered.tid)
            reflected = await _next(a_gates, Reflected)
            assert (reflected.tid, reflected.payload) == (offered.tid, b"propose")
            await trio.sleep(0.05)  # held, not delivered before A's application commits
            assert b.stats()["delivered"] == 0
            assert a.commit(reflected.tid)
            msg = await b_inbox.__anext__()
            assert (msg.tid, msg.payload, msg.control) == (offered.tid, b"propose", True)
            await trio.sleep(0.05)  # delivered, not reported before B's application does
            assert a.stats()["committed"] == 0
            assert b.report(msg.tid)
            [outcome] = await a.wait_outcomes(batch)
        assert outcome.committed and not outcome.round and outcome.tid == offered.tid
        # application data keeps flowing as before (not gated)
        with trio.fail_after(10):
            assert (await a.send(b"data")).committed
        with pytest.raises(UsageError):
            a.submit([b"x"], gated=True)  # not CONTROL


async def test_a_reset_aborts_an_undecided_gated_transfer_at_both_ends(veth_pair) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, options=GATES) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, options=GATES) as b,
    ):
        await _up(a, b)
        a_gates, b_gates = a.gate_events(), b.gate_events()
        with trio.fail_after(10):
            batch = a.submit([b"undecided"], control=True, gated=True)
            offered = await _next(b_gates, Offered)
            assert b.hold(offered.tid)
            reflected = await _next(a_gates, Reflected)
            downs = b.counters["links_down"]
            assert b.reset()  # B's application gives up: both ends reconcile
            [outcome] = await a.wait_outcomes(batch)
            await _up(a, b)
            while b.counters["links_up"] < 2:
                await b.wait_state_change()
        # aborted at A, by the round, with the payload back; never delivered at B, which
        # skipped it; A's commit now comes too late
        assert not outcome.committed and outcome.round and outcome.payload == b"undecided"
        assert b.counters["links_down"] == downs + 1 and b.counters["delivered"] == 0
        assert b.stats()["in_delivered"] >= offered.tid
        assert not a.commit(reflected.tid)
        # and the link goes on: the next gated transfer commits
        with trio.fail_after(10):
            batch = a.submit([b"next"], control=True, gated=True)
            offered = await _next(b_gates, Offered)
            b.hold(offered.tid)
            a.commit((await _next(a_gates, Reflected)).tid)
            async for msg in b.received():
                b.report(msg.tid)
                break
            [outcome] = await a.wait_outcomes(batch)
        assert outcome.committed and not outcome.round


def test_a_sink_link_cannot_have_gates() -> None:
    with pytest.raises(UsageError):
        LinkOptions(gates=True, sink=True).check()


async def test_gate_calls_need_a_gated_link(veth_pair) -> None:
    async with open_link(veth_pair.if_a, veth_pair.ns_a) as a:
        with pytest.raises(UsageError):
            a.hold(1)
        with pytest.raises(UsageError):
            a.submit([b"x"], control=True, gated=True)
        assert not a.reset()  # discovering: nothing to reset
