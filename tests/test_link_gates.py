"""Gated CONTROL transfers and link reset (docs/protocol.md 7.11), rule by rule, end to end
through frames: the receiver's application holds or refuses each incoming CONTROL offer
and reports each CONTROL delivery; the sender's application commits each gated transfer;
a reset (or any round) aborts what was not decided and flags round outcomes.

Every test runs against the C engine and the Python model alike (`cls` fixture)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_link import A_MAC, Pair

from oae.engine import (
    Aborted,
    Committed,
    Delivered,
    DownReason,
    LinkDown,
    LinkEngine,
    LinkUp,
    Offered,
    Reflected,
)
from oae.model.link import LinkModel
from oae.wire import Flag, Phase, State, decode_frame


@pytest.fixture(params=[LinkEngine, LinkModel], ids=["c", "model"])
def cls(request: pytest.FixtureRequest) -> type:
    return request.param


def gated_pair(cls: type, **kw: object) -> Pair:
    p = Pair(cls, gates=True, **kw)
    p.up()
    return p


def test_an_incoming_control_offer_waits_for_hold(cls: type) -> None:
    p = gated_pair(cls)
    a, b = p.ends
    t = a.offer(b"propose", control=True)
    u = a.offer(b"after")  # application data behind it may not overtake it
    p.run(10)
    assert p.of(1, Offered) == [Offered(t, b"propose")]  # once, however often re-offered
    s = b.stats()
    assert s["in_held"] == 0 and s["in_offered"] == t
    assert s["offers_pending"] > 0 and s["offers_gap"] > 0  # later tids wait behind it
    assert a.transfer_state(t) == State.TENTATIVE and not p.of(1, Delivered)
    assert b.hold(t)
    assert not b.hold(t)  # no longer pending
    p.run(10)
    # not a gated transfer at the sender: it commits as soon as it is held
    assert p.of(1, Delivered) == [Delivered(t, b"propose", True), Delivered(u, b"after")]
    assert b.stats()["in_reported"] == 0  # ... but is not reported, nor is `after` behind it
    assert not p.of(0, Committed)


def test_hold_and_refuse_only_the_pending_offer_of_a_live_gated_link(cls: type) -> None:
    p = gated_pair(cls)
    a, b = p.ends
    t = a.offer(b"x", control=True)
    p.run(5)
    assert not b.hold(t + 1) and not b.refuse(t - 1)
    plain = Pair(cls)
    plain.up()
    with pytest.raises(ValueError):
        plain.ends[1].hold(1)
    with pytest.raises(ValueError):
        plain.ends[1].report(0)
    with pytest.raises(ValueError):
        plain.ends[0].offer(b"g", control=True, gated=True)  # gates off
    with pytest.raises(ValueError):
        a.offer(b"g", gated=True)  # not CONTROL
    for _ in range(300):  # the link fails: no decision outside LIVE
        p.step(deliver=False)
        p.now += 10
    assert b.stats()["phase"] == Phase.DISCOVER and not b.hold(t) and not b.refuse(t)


def test_refuse_reverses_the_offer_and_every_later_one(cls: type) -> None:
    p = gated_pair(cls)
    a, b = p.ends
    t = a.offer(b"no", control=True)
    u = a.offer(b"next")
    p.run(5)
    assert b.refuse(t)
    assert not b.hold(t)  # refusing is sticky: it can never be held now
    p.run(10)
    assert p.of(0, Aborted) == [Aborted(t, b"no", True), Aborted(u, b"next")]
    assert not p.of(1, Delivered)
    assert b.stats()["in_delivered"] == u and b.stats()["in_refusing"] == 0  # skipped
    v = a.offer(b"again", control=True)
    p.run(5)
    assert p.of(1, Offered)[-1] == Offered(v, b"again", u)  # all before v delivered or skipped


def test_a_delivery_is_reported_only_by_report(cls: type) -> None:
    p = gated_pair(cls)
    a, b = p.ends
    t1 = a.offer(b"c1", control=True)
    t2 = a.offer(b"app")
    t3 = a.offer(b"c3", control=True)
    for t in (t1, t3):
        while not b.hold(t):
            p.step()
            p.now += 10
    p.run(10)
    assert [e.tid for e in p.of(1, Delivered)] == [t1, t2, t3]
    assert not p.of(0, Committed)
    sent = [decode_frame(f).record.delivered_upto for f in p.sent[1]]
    assert max(sent) == 0  # what the records told the sender
    assert not b.report(t3 + 1)  # not delivered yet
    assert b.report(t1)
    p.run(5)
    # t2 (application data) is reported by itself, but not past t3, a CONTROL delivery
    assert p.of(0, Committed) == [Committed(t1), Committed(t2)]
    assert b.report(t3) and b.report(t1)  # cumulative; reporting again is harmless
    p.run(5)
    assert p.of(0, Committed)[-1] == Committed(t3)
    assert b.stats()["in_reported"] == t3


def test_an_unreported_delivery_holds_the_senders_window(cls: type) -> None:
    """The sender's window counts from what the receiver reported, so nothing is offered
    more than `window` past an unreported CONTROL delivery (whose slot the receiver keeps)."""
    p = gated_pair(cls, window=4)
    a, b = p.ends
    t = a.offer(b"c", control=True)
    p.run(5)
    b.hold(t)
    p.run(5)
    assert p.of(1, Delivered) == [Delivered(t, b"c", True)]
    assert [a.offer(bytes([i])) for i in range(4)] == [2, 3, 4, 0]  # window of 4 from tid 1
    p.run(5)
    assert [e.tid for e in p.of(1, Delivered)] == [1, 2, 3, 4] and not p.of(0, Committed)
    assert b.report(t)
    p.run(5)
    assert [e.tid for e in p.of(0, Committed)] == [1, 2, 3, 4]
    assert a.offer(b"more") == 5


def test_a_gated_transfer_is_delivered_only_after_commit(cls: type) -> None:
    p = gated_pair(cls)
    a, b = p.ends
    g = a.offer(b"wave", control=True, gated=True)
    u = a.offer(b"data")
    assert not a.commit(g)  # not reflected yet
    p.run(5)
    assert b.hold(g)
    p.run(10)
    assert p.of(0, Reflected) == [Reflected(g, b"wave")]
    assert a.transfer_state(g) == State.REFLECTING
    assert b.stats()["in_held"] == u  # the data behind it is held, not delivered
    assert not p.of(1, Delivered)
    assert all(decode_frame(f).record.commit_upto < g for f in p.sent[0])
    with pytest.raises(ValueError):
        a.commit(u)  # not a gated transfer
    assert a.commit(g)
    assert not a.commit(g)  # released already
    p.run(5)
    assert [e.tid for e in p.of(1, Delivered)] == [g, u]
    assert b.report(u)
    p.run(5)
    assert p.of(0, Committed) == [Committed(g), Committed(u)]
    assert len(p.of(0, Reflected)) == 1  # once


def test_a_refusal_behind_an_undecided_gated_transfer_waits_for_its_commit(cls: type) -> None:
    p = gated_pair(cls, rx_capacity=2)
    a, b = p.ends
    g = a.offer(b"g", control=True, gated=True)
    tids = [a.offer(bytes([i])) for i in range(3)]
    p.run(5)
    assert b.hold(g)
    p.run(10)
    # B holds g and one more (capacity 2) and refuses the next; A ignores the REFUSE
    # while g is undecided (a reversal would settle commit_upto past it)
    assert b.stats()["in_refusing"] == tids[1]
    assert any(decode_frame(f).record.flags & Flag.REFUSE for f in p.sent[1])
    assert not p.of(0, Aborted) and a.stats()["out_commit"] == g - 1
    assert a.commit(g)
    p.run(10)
    assert [e.tid for e in p.of(0, Aborted)] == tids[1:]
    assert [e.tid for e in p.of(1, Delivered)] == [g, tids[0]]
    b.report(tids[0])
    p.run(5)
    assert [e.tid for e in p.of(0, Committed)] == [g, tids[0]]


def test_reset_aborts_undecided_transfers_at_both_ends(cls: type) -> None:
    p = gated_pair(cls)
    a, b = p.ends
    done = a.offer(b"done", control=True, gated=True)  # committed, delivered, not reported
    p.run(5)
    b.hold(done)
    p.run(5)
    a.commit(done)
    p.run(5)
    g = a.offer(b"undecided", control=True, gated=True)  # held, never committed
    p.run(5)
    b.hold(g)
    p.run(5)
    back = b.offer(b"pending", control=True)  # B -> A, A never decides
    p.run(5)
    assert p.of(0, Reflected)[-1] == Reflected(g, b"undecided")
    assert p.of(0, Offered) == [Offered(back, b"pending")]
    assert a.reset(p.now)
    assert not a.reset(p.now)  # discovering: nothing to reset
    p._events(0)
    assert p.of(0, LinkDown) == [LinkDown(DownReason.RESET)]
    assert a.transfer_state(g) == State.INDEFINITE
    p.run(50)
    assert p.of(1, LinkDown) == [LinkDown(DownReason.PEER_LOST)]
    assert len(p.of(0, LinkUp)) == len(p.of(1, LinkUp)) == 2
    # decided by the round (D): the delivered one commits, the undecided ones abort
    assert p.of(0, Committed) == [Committed(done, round=True)]
    assert p.of(0, Aborted) == [Aborted(g, b"undecided", True, round=True)]
    assert p.of(1, Aborted) == [Aborted(back, b"pending", True, round=True)]
    assert [e.tid for e in p.of(1, Delivered)] == [done]
    assert not p.of(0, Delivered)
    s = b.stats()
    assert s["in_delivered"] == s["in_reported"] == g  # g skipped, the gate state cleared
    assert not a.hold(back) and not a.commit(g)
    # the link works on with fresh tids
    h = a.offer(b"new", control=True, gated=True)
    p.run(5)
    assert b.hold(h)
    p.run(5)
    assert a.commit(h)
    p.run(5)
    assert b.report(h)
    p.run(5)
    assert p.of(0, Committed)[-1] == Committed(h)


def test_reset_during_reconciliation(cls: type) -> None:
    p = gated_pair(cls)
    a, b = p.ends
    a.reset(p.now)
    while b.stats()["phase"] != Phase.RECONCILE or a.stats()["phase"] != Phase.RECONCILE:
        p.step()
        p.now += 10
    assert a.reset(p.now) and a.stats()["phase"] == Phase.DISCOVER
    assert len(p.of(0, LinkDown)) == 1  # it was not up: no second LINK_DOWN
    p.run(50)
    assert [e.stats()["phase"] for e in p.ends] == [Phase.LIVE, Phase.LIVE]
    assert a.offer(b"x", control=True, gated=True) > 0


def test_a_commit_the_receiver_did_not_see_is_delivered_by_the_round(cls: type) -> None:
    """Released before the link failed: the round's commit_upto covers it."""
    p = gated_pair(cls)
    a, b = p.ends
    g = a.offer(b"g", control=True, gated=True)
    p.run(5)
    b.hold(g)
    p.run(5)
    assert a.commit(g)
    for _ in range(300):  # the wire dies before B sees the commit
        p.step(deliver=False)
        p.now += 10
    assert not p.of(1, Delivered)
    p.run(100)
    assert p.of(1, Delivered) == [Delivered(g, b"g", True)]
    assert p.of(0, Committed) == [Committed(g, round=True)]


def test_a_restarted_sender_aborts_what_it_may_have_gated(cls: type) -> None:
    """The gates are volatile: a restored engine does not know which of its open transfers
    were gated, so its first round commits none that the receiver has not delivered."""
    p = gated_pair(cls, persist=True)
    a, b = p.ends
    t = a.offer(b"c", control=True)  # not gated, but held and not yet committed
    p.run(5)
    b.hold(t)
    while b.stats()["in_held"] < t:
        p.step()
        p.now += 10
    p.cfg[0] = replace(p.cfg[0], nonce=999)
    p.ends[0] = cls(p.cfg[0], p.durable[0])
    p.events[0].clear()
    p.run(400)
    assert [e.stats()["phase"] for e in p.ends] == [Phase.LIVE, Phase.LIVE]
    assert p.of(0, Aborted) == [Aborted(t, restored=True, round=True)]
    assert not p.of(1, Delivered)


def test_a_restarted_receiver_reports_through_the_round(cls: type) -> None:
    """Gate state is volatile: after a restart the receiver's deliveries are reported by
    the round (Committed with `round`), never delivered twice."""
    p = gated_pair(cls, persist=True)
    a, b = p.ends
    t = a.offer(b"c", control=True)
    p.run(5)
    b.hold(t)
    p.run(5)
    assert p.of(1, Delivered) == [Delivered(t, b"c", True)] and not p.of(0, Committed)
    p.cfg[1] = replace(p.cfg[1], nonce=999)
    p.ends[1] = cls(p.cfg[1], p.durable[1])
    p.events[1].clear()
    p.run(400)
    assert p.of(0, Committed) == [Committed(t, round=True)]
    assert not p.of(1, Delivered)
    assert p.ends[1].durable().peer_mac == A_MAC


def test_without_gates_round_outcomes_carry_no_round_flag(cls: type) -> None:
    p = Pair(cls)
    p.up()
    p.ends[0].offer(b"x", control=True)
    for _ in range(300):
        p.step(deliver=False)
        p.now += 10
    p.run(100)
    assert p.of(0, Aborted) == [Aborted(1, b"x", True)]  # decided by the round, unflagged
    assert not p.of(1, Offered)
