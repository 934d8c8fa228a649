"""Link engine behaviour, end to end through frames: discovery, the AIT life of a transfer,
backpressure by reversal, link failure and reconciliation, crash-restart from durable
registers, and bad input (forged, replayed, foreign, malformed) dropped with no effect.

Every test runs against the C engine and the Python model alike (`cls` fixture)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from oae.engine import (
    NEVER,
    Aborted,
    Committed,
    Delivered,
    Drop,
    LinkConfig,
    LinkDown,
    LinkEngine,
    LinkUp,
    Persist,
)
from oae.model.link import LinkModel
from oae.wire import HELLO_GROUP, Flag, Opcode, Phase, State, decode_frame, encode_frame

A_MAC = bytes.fromhex("02000000000a")
B_MAC = bytes.fromhex("02000000000b")
KEY = bytes(range(16))


def config(mac: bytes, nonce: int, **kw: object) -> LinkConfig:
    base = dict(window=8, beat=4, rx_capacity=16, rto_ns=100, dead_ns=2_000, hello_ns=500)
    base.update(kw)
    return LinkConfig(mac=mac, nonce=nonce, **base)  # type: ignore[arg-type]


class Pair:
    """Two engines on a perfect in-memory wire with a manual clock; `hold` lets a test
    intercept frames, `persist_hook` stores durable snapshots like a runtime would."""

    def __init__(self, cls: type, **kw: object) -> None:
        self.cls = cls
        self.kw = kw
        self.cfg = [config(A_MAC, 101, **kw), config(B_MAC, 202, **kw)]
        self.ends = [cls(self.cfg[0]), cls(self.cfg[1])]
        self.now = 0
        self.events: list[list[object]] = [[], []]
        self.durable: list[object] = [None, None]
        self.sent: list[list[bytes]] = [[], []]

    def step(self, deliver: bool = True, only: int | None = None) -> int:
        """One round: timers, then each end sends what is due; returns frames moved.
        `only`: deliver just the frames sent by that end (a one-way failure)."""
        moved = 0
        for w in (0, 1):
            e = self.ends[w]
            if e.next_timeout() <= self.now:
                e.on_timeout(self.now)
            self._events(w)
            frames = e.poll_tx(self.now)
            self.sent[w].extend(frames)
            for f in frames:
                moved += 1
                if deliver and only in (None, w):
                    self.ends[1 - w].on_frame(f, self.now)
            self._events(1 - w)
        return moved

    def _events(self, w: int) -> None:
        for ev in self.ends[w].poll_events():
            if isinstance(ev, Persist):
                self.durable[w] = self.ends[w].durable()
                self.ends[w].persisted()
            self.events[w].append(ev)

    def run(self, steps: int = 50, dt: int = 10) -> None:
        for _ in range(steps):
            self.step()
            self.now += dt

    def up(self) -> None:
        self.run(20)
        assert [e.stats()["phase"] for e in self.ends] == [Phase.LIVE, Phase.LIVE]

    def of(self, w: int, kind: type) -> list[object]:
        return [e for e in self.events[w] if isinstance(e, kind)]


@pytest.fixture(params=[LinkEngine, LinkModel], ids=["c", "model"])
def cls(request: pytest.FixtureRequest) -> type:
    return request.param


def test_discovery_binds_and_goes_live(cls: type) -> None:
    p = Pair(cls)
    first = p.ends[0].poll_tx(0)
    hello = decode_frame(first[0])
    assert hello.dst == HELLO_GROUP and hello.record.opcode == Opcode.HELLO
    p.ends[1].on_frame(first[0], 0)
    p.up()
    assert p.of(0, LinkUp) == [LinkUp(202)] and p.of(1, LinkUp) == [LinkUp(101)]
    # PIF: every record reflects the first 4 bytes of the last record accepted from the peer
    last_b = p.sent[1][-1]
    assert decode_frame(p.sent[0][-1]).record.peer_half in {f[14:18] for f in p.sent[1]}
    assert decode_frame(last_b).record.sack == 0xFF


def test_every_record_reflects_the_last_accepted_peer_half(cls: type) -> None:
    """PIF: after accepting a record, the next records sent carry its bytes 0-3."""
    p = Pair(cls)
    p.up()
    for _ in range(5):
        p.ends[0].offer(b"z")
        frames = p.ends[0].poll_tx(p.now) or p.ends[1].poll_tx(p.now)
        sender = 0 if frames and decode_frame(frames[0]).src == A_MAC else 1
        receiver = p.ends[1 - sender]
        for f in frames:
            assert receiver.on_frame(f, p.now) == Drop.NONE
        answer = receiver.poll_tx(p.now)
        assert answer
        for f in answer:
            assert decode_frame(f).record.peer_half == frames[-1][14:18]
            assert p.ends[sender].on_frame(f, p.now) == Drop.NONE
        p.ends[0].poll_events()
        p.ends[1].poll_events()
        p.now += 10


def test_transfer_commits_after_three_signals(cls: type) -> None:
    p = Pair(cls)
    p.up()
    tid = p.ends[0].offer(b"hello", control=True)
    assert tid == 1
    assert p.ends[0].transfer_state(1) == State.TENTATIVE
    while p.ends[1].stats()["in_held"] == 0:
        p.step()
    # B holds it but may not apply it before the commit (the second round trip) ...
    assert p.of(1, Delivered) == []
    assert p.ends[1].transfer_state(1, incoming=True) == State.TENTATIVE
    # ... and A has seen B's reflection of it
    assert p.ends[0].transfer_state(1) == State.REFLECTING
    assert p.of(0, Committed) == []
    p.run(3)
    assert p.of(1, Delivered) == [Delivered(1, b"hello", True)]
    assert p.of(0, Committed) == [Committed(1)]
    assert p.ends[0].transfer_state(1) == State.COMMITTED


def test_many_transfers_in_order_exactly_once_with_window(cls: type) -> None:
    p = Pair(cls)
    p.up()
    sent = released = 0
    for _ in range(200):
        while sent < 100 and p.ends[0].offer(sent.to_bytes(2, "big")):
            sent += 1
        p.step()
        p.ends[1].release(len(p.of(1, Delivered)) - released)
        released = len(p.of(1, Delivered))
    delivered = [e.payload for e in p.of(1, Delivered)]
    assert delivered == [i.to_bytes(2, "big") for i in range(100)]
    assert [e.tid for e in p.of(0, Committed)] == list(range(1, 101))
    # never more than `window` in flight: the 9th offer before any settles is refused
    q = Pair(cls)
    q.up()
    assert [q.ends[0].offer(b"x") for _ in range(9)] == [1, 2, 3, 4, 5, 6, 7, 8, 0]


def test_backpressure_reverses_and_never_holds_a_refused_tid(cls: type) -> None:
    p = Pair(cls, rx_capacity=2)
    p.up()
    tids = [p.ends[0].offer(bytes([i])) for i in range(5)]
    assert tids == [1, 2, 3, 4, 5]
    p.run(10)
    # B holds 1 and 2 (capacity 2, nothing released), refuses 3: A reverses 3, 4, 5
    assert [e.tid for e in p.of(1, Delivered)] == [1, 2]
    aborted = p.of(0, Aborted)
    assert [(e.tid, e.payload) for e in aborted] == [(3, b"\x02"), (4, b"\x03"), (5, b"\x04")]
    assert [e.tid for e in p.of(0, Committed)] == [1, 2]
    assert any(decode_frame(f).record.flags & Flag.REFUSE for f in p.sent[1])
    # the refused tids are settled as aborted at B too: it skipped them and never holds them
    assert p.ends[1].stats()["in_delivered"] == 5
    # after the application makes room, new transfers flow again with fresh tids
    p.ends[1].release(2)
    assert p.ends[0].offer(b"new") == 6
    p.run(10)
    assert p.of(1, Delivered)[-1] == Delivered(6, b"new")
    assert p.of(0, Committed)[-1] == Committed(6)


def test_application_data_never_crosses_an_epoch_mismatch(cls: type) -> None:
    p = Pair(cls, epoch=1)
    p.ends[1] = cls(replace(p.cfg[1], epoch=2))
    p.up()
    assert p.ends[0].offer(b"app") == 1
    p.run(5)
    assert not p.of(1, Delivered) and p.ends[1].stats()["offers_wrong_epoch"] > 0
    assert p.ends[0].transfer_state(1) == State.TENTATIVE  # offered, never held
    p.ends[1].set_epoch(1)  # the epoch layer moved B to epoch 1 as well
    p.run(5)
    assert p.of(1, Delivered) == [Delivered(1, b"app")]
    # epoch-layer messages (CONTROL) are held whatever the epoch
    p.ends[0].set_epoch(5)
    assert p.ends[0].offer(b"ctl", control=True) == 2
    p.run(5)
    assert p.of(1, Delivered)[-1] == Delivered(2, b"ctl", True)


def test_link_failure_makes_transfers_indefinite_then_reconciles(cls: type) -> None:
    p = Pair(cls)
    p.up()
    for i in range(4):
        p.ends[0].offer(bytes([i]))
    while p.ends[1].stats()["in_held"] < 4:  # offers reach B (held), then the wire dies
        p.step()
    assert not p.of(1, Delivered)
    for _ in range(300):
        p.step(deliver=False)
        p.now += 10
    assert p.of(0, LinkDown) and p.of(1, LinkDown)
    assert {p.ends[0].transfer_state(t) for t in (1, 2, 3, 4)} == {State.INDEFINITE}
    assert p.ends[0].offer(b"no") == 0  # not LIVE
    p.run(100)
    assert len(p.of(0, LinkUp)) == 2
    # B held all four: reconciliation commits them on both ends, each delivered once
    assert [e.tid for e in p.of(1, Delivered)] == [1, 2, 3, 4]
    assert sorted(e.tid for e in p.of(0, Committed)) == [1, 2, 3, 4]
    assert not p.of(0, Aborted)
    assert {p.ends[0].transfer_state(t) for t in (1, 2, 3, 4)} == {State.COMMITTED}


def test_reconciliation_aborts_what_the_receiver_never_held(cls: type) -> None:
    p = Pair(cls)
    p.up()
    p.ends[0].offer(b"lost")
    for _ in range(300):  # the offer never reaches B
        p.step(deliver=False)
        p.now += 10
    p.run(100)
    assert p.of(0, Aborted) == [Aborted(1, b"lost")]
    assert not p.of(1, Delivered)
    assert p.ends[0].offer(b"next") == 2
    p.run(5)
    assert p.of(1, Delivered) == [Delivered(2, b"next")]


def test_crash_restart_from_durable_registers(cls: type) -> None:
    p = Pair(cls, persist=True)
    p.up()
    for i in range(3):
        p.ends[0].offer(bytes([i]))
    p.run(5)
    assert [e.tid for e in p.of(1, Delivered)] == [1, 2, 3]
    # B crashes; it restarts from its durable registers with a new nonce
    durable = p.durable[1]
    assert durable.in_delivered == 3 and durable.peer_mac == A_MAC
    p.cfg[1] = replace(p.cfg[1], nonce=303)
    p.ends[1] = cls(p.cfg[1], durable)
    p.events[1].clear()
    p.run(150)  # dead_ns = 2000: the restarted end is silent that long (and A fails)
    assert p.ends[1].stats()["frames_out"] == 0
    assert p.ends[1].stats()["drops"][Drop.STALE] > 0  # it heard A but took nothing
    p.run(150)
    assert LinkDown in {type(e) for e in p.events[0]}
    assert p.of(0, LinkUp)[-1] == LinkUp(303)
    assert p.ends[0].offer(b"after") == 4
    p.run(10)
    assert [e.tid for e in p.of(1, Delivered)] == [4]  # nothing delivered twice
    assert p.of(0, Committed)[-1] == Committed(4)


def test_persist_gates_frames(cls: type) -> None:
    p = Pair(cls, persist=True)
    p.up()
    a = p.ends[0]  # it has just accepted B's beat and owes the answer
    assert a.offer(b"x") == 1
    assert a.poll_events() == [Persist()]
    assert a.poll_tx(p.now) == []  # the new tid must be stored before any frame leaves
    assert a.next_timeout() > p.now  # and no busy loop meanwhile
    a.durable()
    assert a.offer(b"y") == 2  # changed after the snapshot: that snapshot is not enough
    a.persisted()
    assert a.poll_events() == [Persist()] and a.poll_tx(p.now) == []
    assert a.durable().out_hi == 2
    a.persisted()
    frames = a.poll_tx(p.now)
    assert [decode_frame(f).record.tid for f in frames] == [1, 2]


def test_volatile_epoch_costs_no_store(cls: type) -> None:
    """A durable end persists a new epoch before its next frame; with volatile_epoch (the
    epoch runner's links) it does not, and the epoch rides along with the next store."""
    for volatile in (False, True):
        p = Pair(cls, persist=True, volatile_epoch=volatile)
        p.up()
        a = p.ends[0]
        a.poll_events()
        a.set_epoch(3)
        assert (a.poll_events() == [Persist()]) is not volatile
        assert (a.poll_tx(p.now) == []) is not volatile
        if volatile:
            assert a.offer(b"x") == 1
            assert a.poll_events() == [Persist()]
            assert a.durable().epoch == 3 and a.durable().out_hi == 1


def test_corrupted_source_address_cannot_capture_the_link(cls: type) -> None:
    """The Ethernet header is not covered by the check: a HELLO whose source MAC was
    corrupted binds a phantom peer only until that round dies; the binding is not stored
    and the real peer is bound next."""
    p = Pair(cls, persist=True)
    hello = p.ends[1].poll_tx(0)[0]
    phantom = hello[:6] + bytes.fromhex("02000000000e") + hello[12:]
    assert p.ends[0].on_frame(phantom, 0) == Drop.NONE
    assert p.ends[0].durable().peer_mac is None
    p.run(400)  # A talks to the phantom, its round dies, it unbinds and finds B
    assert [e.stats()["phase"] for e in p.ends] == [Phase.LIVE, Phase.LIVE]
    assert p.ends[0].stats()["drops"][Drop.FOREIGN] > 0
    assert p.ends[0].durable().peer_mac == B_MAC


def _live(cls: type, **kw: object) -> Pair:
    p = Pair(cls, key=KEY, **kw)
    p.up()
    p.ends[0].offer(b"x")
    p.run(3)
    return p


def _snapshot(e: object) -> tuple[object, ...]:
    s = dict(e.stats())  # type: ignore[attr-defined]
    for k in ("frames_in", "drops"):
        s.pop(k)
    return (s, e.durable(), e.next_timeout())  # type: ignore[attr-defined]


def _assert_dropped(cls: type, frame: bytes, why: Drop) -> None:
    """`frame` is dropped for `why`, counted, and changes nothing: the engine afterwards
    sends exactly what an identical engine that never saw it sends."""
    p, q = _live(cls), _live(cls)
    before = _snapshot(p.ends[1])
    assert p.ends[1].on_frame(frame, p.now) == why
    assert p.ends[1].stats()["drops"][why] == 1
    assert _snapshot(p.ends[1]) == before
    p.ends[0].offer(b"y")
    q.ends[0].offer(b"y")
    p.run(3)
    q.run(3)
    assert p.sent == q.sent
    assert p.events == q.events


@pytest.mark.parametrize("what", ["forged", "unkeyed", "replay", "foreign", "version",
                                  "truncated", "ethertype", "self", "not_mine", "session",
                                  "bogus"])  # fmt: skip
def test_bad_frames_dropped_counted_no_state_change(cls: type, what: str) -> None:
    p = _live(cls)
    real = p.sent[0][-1]
    f = decode_frame(real, key=KEY)
    rec = f.record
    if what == "forged":
        bad, why = real[:-1] + bytes([real[-1] ^ 1]), Drop.CHECK
    elif what == "unkeyed":
        bad, why = encode_frame(f), Drop.CHECK
    elif what == "replay":
        bad, why = real, Drop.REPLAY
    elif what == "foreign":
        bad = encode_frame(replace(f, src=bytes.fromhex("02000000000c")), KEY)
        why = Drop.FOREIGN
    elif what == "version":
        bad, why = real[:14] + bytes([0x22]) + real[15:], Drop.VERSION
    elif what == "truncated":
        bad, why = real[:40], Drop.TRUNCATED
    elif what == "ethertype":
        bad, why = real[:12] + b"\x88\xb6" + real[14:], Drop.ETHERTYPE
    elif what == "self":
        bad = encode_frame(replace(f, src=B_MAC, record=replace(rec, nonce=202)), KEY)
        why = Drop.SELF
    elif what == "not_mine":
        bad, why = encode_frame(replace(f, dst=bytes.fromhex("02000000000d")), KEY), Drop.NOT_MINE
    elif what == "session":
        bad, why = encode_frame(replace(f, record=replace(rec, nonce=999)), KEY), Drop.SESSION
    else:  # A claims to hold 50 of B's transfers, but B never offered any
        bad = encode_frame(replace(f, record=replace(rec, seq=rec.seq + 1, held_upto=50)), KEY)
        why = Drop.BOGUS
    _assert_dropped(cls, bad, why)


def test_stale_frames_from_before_a_reconnection_are_dropped(cls: type) -> None:
    p = Pair(cls)
    p.up()
    for _ in range(300):
        p.step(deliver=False)
        p.now += 10
    lost = p.sent[0][-1]  # a frame of A's current session that B never saw
    p.run(100)
    assert p.of(1, LinkUp) and len(p.of(0, LinkUp)) == 2
    assert p.ends[1].on_frame(lost, p.now) == Drop.STALE


def test_timers_never_declare_success(cls: type) -> None:
    """With no frames at all, time only ever leads to HELLOs, never to a settled transfer."""
    a = cls(config(A_MAC, 1))
    now = 0
    for _ in range(50):
        now = max(now, min(a.next_timeout(), now + 1000))
        a.on_timeout(now)
        frames = a.poll_tx(now)
        assert all(decode_frame(f).record.opcode == Opcode.HELLO for f in frames)
    assert a.poll_events() == []
    assert a.next_timeout() != NEVER
