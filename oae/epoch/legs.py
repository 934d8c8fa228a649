"""Gated AIT links at the level of their legs: a register-and-record model of one link end
(docs/protocol.md §7.5-7.7 and §7.11, gates on), for the simulator (oae.epoch.sim) and the
epoch machine's adversarial tests.

It keeps what the epoch layer relies on and nothing of the wire: per direction, tids in
order; a record is a snapshot of the sender's registers (commit_upto, held_upto,
delivered_upto, REFUSE) and of its unreflected offers, processed by the receiver in the
engine's order (deliver up to commit_upto, take offers, then the sender half); what is
submitted waits for the window (and, like the pump's queue, survives a failure of the
link, to be offered in its next session); an incoming CONTROL offer
waits for `hold`/`refuse`, a delivered CONTROL transfer for `report`, an outgoing gated
transfer for `commit`; an application offer tagged with another epoch is not held. A
round (`reconcile`, after a failure, a reset or a restart) delivers what is held up to
rec_commit (the first unreleased gated tid - 1; a restarted sender knows none) and aborts
the rest, with the ROUND flag. Records are cumulative and the model takes registers as
maxima, so records may be lost, repeated or reordered. Timing, discovery, persistence and
the codec are the engine's business (oae.model.link is its line-by-line twin).
"""

from __future__ import annotations

from dataclasses import dataclass, field

WINDOW = 64


@dataclass(frozen=True)
class Xfer:
    """One transfer: CONTROL (`data` is its payload) or application (`data` is the
    driver's, e.g. its epoch tag and number); `cookie`: the driver's handle on its
    submission (never sent)."""

    tid: int
    control: bool
    gated: bool
    data: object
    cookie: object = None


@dataclass(frozen=True)
class Offered:
    """Receiver: CONTROL transfer `tid` waits for hold/refuse; `info` = in_delivered."""

    tid: int
    payload: bytes
    info: int


@dataclass(frozen=True)
class Reflected:
    """Sender: the peer holds gated transfer `tid`."""

    tid: int
    payload: bytes


@dataclass(frozen=True)
class Delivered:
    """Receiver: `xfer` is delivered (in tid order)."""

    xfer: Xfer


@dataclass(frozen=True)
class Outcome:
    """Sender: `xfer` ended COMMITTED (delivered) or ABORTED; `by_round`: decided by a
    reconciliation round; `restored`: the sender restarted since it was offered."""

    xfer: Xfer
    committed: bool
    by_round: bool = False
    restored: bool = False


Event = Offered | Reflected | Delivered | Outcome


@dataclass(frozen=True)
class Record:
    """What one end tells the other, cumulatively."""

    commit_upto: int
    held_upto: int
    delivered_upto: int
    refuse: bool
    offers: tuple[Xfer, ...]
    epoch: int


@dataclass
class GatedEnd:
    """One end of a gated link: the sender registers of its outgoing direction and the
    receiver registers of its incoming one. Calls and `receive` return the events."""

    epoch: int = 0
    window: int = WINDOW
    live: bool = False
    # outgoing
    out_hi: int = 0
    out_peer_held: int = 0
    out_commit: int = 0
    out_settled: int = 0
    abort_hi: int = 0  # a reversal in flight: offer nothing until it is settled
    out: dict[int, Xfer] = field(default_factory=dict)  # unsettled
    opened: set[int] = field(default_factory=set)  # gated tids released by commit()
    reversed: set[int] = field(default_factory=set)  # reversed, not yet settled
    restored: bool = False  # restarted: the gates of the unsettled tids are unknown
    queue: list[tuple[object, bool, bool, object]] = field(default_factory=list)  # not offered
    # incoming
    in_held: int = 0
    in_delivered: int = 0
    in_commit: int = 0
    in_offered: int = 0
    in_reported: int = 0
    refusing: int = 0
    held: dict[int, Xfer] = field(default_factory=dict)
    pending: Xfer | None = None
    unreported: list[int] = field(default_factory=list)  # delivered CONTROL tids

    # ------------------------------------------------------------ application calls
    def submit(
        self, data: object, control: bool = False, gated: bool = False, cookie: object = None
    ) -> None:
        """Queue a transfer; it is offered as soon as the window and the link allow."""
        self.queue.append((data, control, gated, cookie))
        self._offer_queued()

    def hold(self, tid: int) -> bool:
        if not self.live or self.pending is None or tid != self.in_offered:
            return False
        self.held[tid] = self.pending
        self.in_held = tid
        self.pending = None
        return True

    def refuse(self, tid: int) -> bool:
        if not self.live or self.pending is None or tid != self.in_offered:
            return False
        self.refusing = tid
        self.in_offered = self.in_held
        self.pending = None
        return True

    def commit(self, tid: int) -> bool:
        if not self.live or not self._closed(tid) or tid > self.out_peer_held:
            return False
        self.opened.add(tid)
        self._advance_commit()
        return True

    def report(self, tid: int) -> bool:
        if tid > self.in_delivered:
            return False
        if tid > self.in_reported:
            self.in_reported = tid
            self.unreported = [t for t in self.unreported if t > tid]
            self._advance_report()
        return True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # ------------------------------------------------------------ records
    def record(self) -> Record:
        offers = tuple(
            x
            for t, x in sorted(self.out.items())
            if t > self.out_peer_held and t not in self.reversed
        )
        return Record(
            self.out_commit,
            self.in_held,
            min(self.in_delivered, self.in_reported),
            bool(self.refusing),
            offers,
            self.epoch,
        )

    def has_unreflected(self) -> bool:
        return any(t > self.out_peer_held and t not in self.reversed for t in self.out)

    def receive(self, r: Record) -> list[Event]:
        """Take a record of the live peer, in the engine's order."""
        ev: list[Event] = []
        if not self.live:
            return ev
        self._deliver_upto(r.commit_upto, ev)
        for x in r.offers:
            if not self._take(x, r.epoch, ev):
                break
        self._sender_side(r, ev)
        self._offer_queued()
        return ev

    # ------------------------------------------------------------ failures
    def down(self) -> None:
        """The link failed or was reset: nothing is offered until the round (what is
        queued stays queued, for the next session, as the runtime's pump keeps it)."""
        self.live = False

    def crash(self) -> list[Event]:
        """The process died: volatile state is lost, the durable registers remain;
        returns the outcomes of what it had queued and not offered (lost with it)."""
        self.live = False
        self.held.clear()
        self.pending = None
        self.unreported.clear()
        self.in_held = self.in_commit = self.in_offered = self.in_reported = self.in_delivered
        self.refusing = 0
        self.opened.clear()
        self.restored = self.out_hi > self.out_settled
        self.out_commit = self.out_peer_held = self.out_hi
        queued, self.queue = self.queue, []
        return [
            Outcome(Xfer(0, control, gated, data, cookie), False, by_round=True, restored=True)
            for data, control, gated, cookie in queued
        ]

    # ------------------------------------------------------------ internals
    def _closed(self, tid: int) -> bool:
        x = self.out.get(tid)
        return (
            x is not None
            and x.gated
            and tid not in self.opened
            and tid not in self.reversed
            and not self.restored
        )

    def _advance_commit(self) -> None:
        while self.out_commit < self.out_peer_held and not self._closed(self.out_commit + 1):
            self.out_commit += 1

    def _advance_report(self) -> None:
        self.in_reported = (min(self.unreported) - 1) if self.unreported else self.in_delivered

    def _offer_queued(self) -> None:
        while (
            self.queue
            and self.live
            and not (self.abort_hi and self.out_settled < self.abort_hi)
            and self.out_hi - self.out_settled < self.window
        ):
            data, control, gated, cookie = self.queue.pop(0)
            self.out_hi += 1
            self.out[self.out_hi] = Xfer(self.out_hi, control, gated, data, cookie)

    def _deliver_held(self, upto: int, ev: list[Event]) -> None:
        while self.in_delivered < upto:
            self.in_delivered += 1
            x = self.held.pop(self.in_delivered)
            if x.control:
                self.unreported.append(x.tid)
            ev.append(Delivered(x))
        self._advance_report()

    def _deliver_upto(self, c: int, ev: list[Event]) -> None:
        self.in_commit = max(self.in_commit, c)
        self._deliver_held(min(self.in_commit, self.in_held), ev)
        if self.in_commit > self.in_held:  # the sender reversed what we refused: skip it
            self.in_held = self.in_delivered = self.in_offered = self.in_commit
            self.pending = None
            if self.refusing and self.refusing <= self.in_commit:
                self.refusing = 0
            self._advance_report()

    def _take(self, x: Xfer, epoch: int, ev: list[Event]) -> bool:
        """Take one offer; False once nothing after it can be held now."""
        t = x.tid
        if t <= self.in_held:
            return True
        if t != self.in_held + 1 or self.refusing:
            return False
        if not x.control and epoch != self.epoch:
            return False  # the engine's offers_wrong_epoch: offered again after a switch
        if t - self.in_reported > self.window:
            self.refusing = t  # backpressure: the engine's own REFUSE
            return False
        if t == self.in_offered:
            return False  # pending: the application decides
        self.in_offered = t
        if x.control:
            self.pending = x
            assert isinstance(x.data, bytes)
            ev.append(Offered(t, x.data, self.in_delivered))
            return False
        self.held[t] = x
        self.in_held = t
        return True

    def _sender_side(self, r: Record, ev: list[Event]) -> None:
        if r.held_upto > self.out_peer_held:
            for t in range(self.out_peer_held + 1, r.held_upto + 1):
                if self._closed(t):
                    data = self.out[t].data
                    assert isinstance(data, bytes)
                    ev.append(Reflected(t, data))
            self.out_peer_held = r.held_upto
        self._advance_commit()
        refused = r.held_upto + 1
        if (
            r.refuse
            and self.out_commit < refused <= self.out_hi
            and self.out_peer_held < refused
            and self.out_commit >= self.out_peer_held  # no closed gate below the refused tid
        ):
            for t in range(refused, self.out_hi + 1):
                self.reversed.add(t)
                ev.append(Outcome(self.out[t], False))
            self.abort_hi = self.out_hi
            self.out_commit = self.out_hi
        if r.delivered_upto > self.out_settled:
            for t in range(self.out_settled + 1, r.delivered_upto + 1):
                x = self.out.pop(t)
                if t in self.reversed:
                    self.reversed.discard(t)
                else:
                    self.opened.discard(t)
                    ev.append(Outcome(x, True))
            self.out_settled = r.delivered_upto
            if self.abort_hi and self.out_settled >= self.abort_hi:
                self.abort_hi = 0


def reconcile(a: GatedEnd, b: GatedEnd) -> tuple[list[Event], list[Event]]:
    """The round that brings a link up again: per direction the receiver delivers what it
    holds up to the sender's rec_commit and skips to its rec_hi, and the sender settles
    every unsettled tid with the receiver's final delivered value D. Returns each end's
    events (its apply's deliveries, then its settlement's outcomes, all with ROUND)."""
    applied: dict[int, list[Event]] = {id(a): [], id(b): []}
    settled: dict[int, list[Event]] = {id(a): [], id(b): []}
    for s, r in ((a, b), (b, a)):
        rec_hi = s.out_hi
        rec_commit = rec_hi
        if s.restored:
            rec_commit = s.out_settled
        else:
            closed = [t for t in range(s.out_settled + 1, rec_hi + 1) if s._closed(t)]
            if closed:
                rec_commit = closed[0] - 1
        ev = applied[id(r)]
        r._deliver_held(min(rec_commit, r.in_held), ev)
        d = r.in_delivered
        r.in_held = r.in_delivered = max(r.in_delivered, rec_hi)
        r.in_commit = r.in_offered = r.in_reported = r.in_delivered
        r.held.clear()
        r.pending = None
        r.refusing = 0
        r.unreported.clear()
        ev = settled[id(s)]
        for t in range(s.out_settled + 1, rec_hi + 1):
            x = s.out.pop(t)
            if t not in s.reversed:
                ev.append(Outcome(x, t <= d, by_round=True, restored=s.restored))
        s.out_settled = s.out_commit = s.out_peer_held = rec_hi
        s.reversed.clear()
        s.opened.clear()
        s.abort_hi = 0
    for e in (a, b):
        e.restored = False
        e.live = True
        e._offer_queued()
    return applied[id(a)] + settled[id(a)], applied[id(b)] + settled[id(b)]
