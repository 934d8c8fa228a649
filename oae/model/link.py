"""Pure-Python twin of the C link engine (csrc/link.c), used only as a test oracle.

It is written to be read next to link.c: same names, same order of steps, same frames and
events byte for byte (tests/test_link_diff.py drives both with the same inputs). It uses
the pure-Python codec (oae.model.wire), so it shares no code with the C machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oae.engine import (
    NEVER,
    STATS_FIELDS,
    Aborted,
    Committed,
    Delivered,
    DownReason,
    Drop,
    Durable,
    Event,
    LinkConfig,
    LinkDown,
    LinkUp,
    Offered,
    Persist,
    Reflected,
)
from oae.model.wire import decode_frame, encode_frame
from oae.wire import (
    HELLO_GROUP,
    PAYLOAD_MAX,
    DecodeError,
    Flag,
    Frame,
    Opcode,
    Phase,
    Record,
    State,
    Transition,
)

M32 = 0xFFFFFFFF
APPLIED = Transition.REFLECT  # RECONCILE record: "I applied your registers"
GATE_NONE, GATE_CLOSED, GATE_OPEN = 0, 1, 2  # an outgoing transfer's gate (link.c)
GATED = 0x80
NOT_NOW, NOT_LIVE, INVALID = -1, -2, -3  # gate call results (OAE_GATE_*)


@dataclass
class _Out:
    state: int = State.IDLE
    flags: int = 0
    payload: bytes = b""
    gate: int = GATE_NONE


@dataclass
class _In:
    tid: int = 0  # the tid held in this slot (0: an offer not held)
    flags: int = 0
    payload: bytes = b""


@dataclass
class _Stats:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATS_FIELDS, 0))
    drops: dict[Drop, int] = field(default_factory=lambda: {d: 0 for d in Drop if d != Drop.NONE})


class LinkModel:
    """The link machine in Python; same methods as `oae.engine.LinkEngine`."""

    def __init__(self, config: LinkConfig, restored: Durable | None = None) -> None:
        if restored is not None and (
            restored.out_settled > restored.out_hi
            or restored.abort_lo > restored.abort_hi
            or restored.abort_hi > restored.out_hi
            or (restored.abort_hi != 0 and restored.abort_lo == 0)
            or restored.out_hi - restored.out_settled > config.window
        ):
            raise ValueError("invalid link configuration or durable registers")
        self.config = config
        self.cfg_epoch = config.epoch
        self.phase = Phase.DISCOVER
        self.bound = False
        self.confirmed = False
        self.quiet = False
        self.quiet_until = 0
        self.up = False
        self.peer_mac = config.peer_mac or bytes(6)
        self.peer_nonce = 0
        self.seq = 0
        self.rx_max = 0
        self.floor = 0
        self.rx_bits = 0
        self.peer_half = bytes(4)
        self.got_any = False
        self.t_hello = 0
        self.t_rto = self.t_dead = self.t_answer = NEVER
        self.owe_hello = self.owe_reconcile = False
        self.answered = 0
        self.peer_round_seq = 0
        self.out_hi = self.out_commit = self.out_peer_held = self.out_settled = 0
        self.abort_lo = self.abort_hi = 0
        self.out_known = 0
        self.in_held = self.in_delivered = self.in_commit = 0
        self.in_unreleased = self.refusing = 0
        self.in_offered = self.in_reported = 0
        self.rec_hi = self.rec_commit = self.rec_dfinal = 0
        self.applied = self.settled = self.skip_pending = False
        self.gen = 0
        self.snap_gen = -1
        self.dirty = False
        w = config.window
        self.out = [_Out() for _ in range(w)]
        self.inn = [_In() for _ in range(w)]
        self.events: list[Event] = []
        self.st = _Stats()
        if restored is not None:
            if restored.peer_mac is not None:
                self.bound = self.confirmed = True
                self.peer_mac = restored.peer_mac
            self.out_hi = self.out_commit = self.out_peer_held = restored.out_hi
            self.out_settled = restored.out_settled
            self.abort_lo, self.abort_hi = restored.abort_lo, restored.abort_hi
            self.out_known = restored.out_hi
            self.in_held = self.in_delivered = self.in_commit = restored.in_delivered
            self.cfg_epoch = restored.epoch
            self.quiet = True
        self.in_offered = self.in_reported = self.in_held
        self.sent_held = self.in_held
        self.sent_delivered = self.in_delivered
        self.sent_commit = self.out_commit
        self.sent_refusing = 0

    # ---- helpers -----------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self.st.counts[name] += n

    def _durable_changed(self) -> None:
        self.gen += 1
        if self.config.persist and not self.dirty:
            self.dirty = True
            self.events.append(Persist())

    def _oslot(self, tid: int) -> _Out:
        return self.out[tid % self.config.window]

    def _islot(self, tid: int) -> _In:
        return self.inn[tid % self.config.window]

    def _in_abort(self, tid: int) -> bool:
        return self.abort_hi != 0 and self.abort_lo <= tid <= self.abort_hi

    def _is_leader(self) -> bool:
        a, b = self.config.mac, self.peer_mac
        return a > b or (a == b and self.config.nonce > self.peer_nonce)

    def _reported_delivered(self) -> int:
        return self.rec_dfinal if self.skip_pending else self.in_delivered

    def _reported_held(self) -> int:
        return self.rec_dfinal if self.skip_pending else self.in_held

    def _token_delivered(self) -> int:
        return min(self._reported_delivered(), self.in_reported)

    def _advance_report(self) -> None:
        """Report up to the first unreported delivered CONTROL tid (link.c advance_report)."""
        if self.config.gates:
            w = self.config.window
            lim = (
                self.in_reported + w
                if self.in_delivered - self.in_reported > w
                else self.in_delivered
            )
            for t in range(self.in_reported + 1, lim + 1):
                s = self._islot(t)
                if s.tid == t and s.flags & Flag.CONTROL:
                    self.in_reported = t - 1
                    return
        self.in_reported = self.in_delivered

    def _gate_closed(self, tid: int) -> bool:
        s = self._oslot(tid)
        return tid > self.out_known and s.gate == GATE_CLOSED and s.state != State.ABORTED

    def _advance_commit(self) -> None:
        if not self.config.gates:
            self.out_commit = max(self.out_commit, self.out_peer_held)
            return
        while self.out_commit < self.out_peer_held and not self._gate_closed(self.out_commit + 1):
            self.out_commit += 1

    def _rec_commit(self) -> int:
        if not self.config.gates:
            return self.rec_hi
        if self.out_known > self.out_settled:
            return self.out_settled
        for t in range(self.out_settled + 1, self.rec_hi + 1):
            if self._gate_closed(t):
                return t - 1
        return self.rec_hi

    # ---- the round ---------------------------------------------------------------------

    def _link_down(self, reason: DownReason) -> None:
        if self.up:
            self.up = False
            self._count("links_down")
            self.events.append(LinkDown(reason))

    def _new_round(self, src: bytes, r: Record, now: int) -> None:
        if self.bound and r.nonce != self.peer_nonce and self.peer_nonce != 0:
            self._link_down(DownReason.PEER_RESTART)
        else:
            self._link_down(DownReason.PEER_LOST)
        if not self.bound:  # durable only once a round completes (the header is unchecked)
            self.bound = True
            self.confirmed = False
            self.peer_mac = src
        if r.nonce != self.peer_nonce:
            self.peer_nonce = r.nonce
            self.rx_max = r.seq
            self.rx_bits = 1
            self.answered = 0
        self.floor = r.seq
        self.peer_round_seq = 0
        self.phase = Phase.RECONCILE
        self.applied = self.settled = False
        self.rec_hi = self.out_hi
        self.rec_commit = self._rec_commit()
        self.owe_hello = r.phase == Phase.DISCOVER
        self.owe_reconcile = False
        self.t_hello = self.t_rto = NEVER
        self.t_answer = now
        self._count("reconciles")

    def _deliver_held(self, upto: int) -> bool:
        any_ = False
        while self.in_delivered < upto:
            self.in_delivered += 1
            t = self.in_delivered
            s = self._islot(t)
            self.events.append(Delivered(t, s.payload, bool(s.flags & Flag.CONTROL)))
            self.in_unreleased += 1
            self._count("delivered")
            any_ = True
        if any_:
            self._advance_report()
        return any_

    def _apply(self, r: Record) -> None:
        self._deliver_held(min(r.commit_upto, self.in_held))
        if not self.skip_pending:
            self.rec_dfinal = self.in_delivered
        self.in_held = self.in_delivered
        if r.tid > self.in_delivered:
            self.in_held = self.in_delivered = r.tid
            self.skip_pending = True
        self.in_commit = self.in_delivered
        self.refusing = 0
        self.in_offered = self.in_reported = self.in_held
        self.applied = True
        self._durable_changed()

    def _settle(self, dfinal: int) -> None:
        by_round = self.config.gates
        t = self.out_settled + 1
        while t <= self.rec_hi:
            s = self._oslot(t)
            known = t > self.out_known
            if known and s.state == State.ABORTED:
                pass
            elif not known and self._in_abort(t):
                self.events.append(Aborted(t, restored=True, round=by_round))
                self._count("aborted")
            elif t <= dfinal:
                self.events.append(Committed(t, restored=not known, round=by_round))
                if known:
                    s.state = State.COMMITTED
                self._count("committed")
            else:
                if known:
                    control = bool(s.flags & Flag.CONTROL)
                    self.events.append(Aborted(t, s.payload, control, round=by_round))
                    s.state = State.ABORTED
                else:
                    self.events.append(Aborted(t, restored=True, round=by_round))
                self._count("aborted")
            t += 1
        self.out_settled = self.out_commit = self.out_peer_held = self.rec_hi
        self.abort_lo = self.abort_hi = 0
        self.settled = True
        self._durable_changed()

    def _go_live(self, r: Record, now: int) -> None:
        self.phase = Phase.LIVE
        self.up = True
        if not self.confirmed:
            self.confirmed = True
            self._durable_changed()
        self._count("links_up")
        self.events.append(LinkUp(self.peer_nonce))
        self.owe_reconcile = r.phase == Phase.RECONCILE
        self.answered = (r.seq - r.beat_index) & M32
        self.t_rto = NEVER
        self.t_answer = now

    # ---- receiving ---------------------------------------------------------------------

    def _deliver_upto(self, c: int) -> None:
        if c > self.in_commit:
            self.in_commit = c
        changed = self._deliver_held(min(self.in_commit, self.in_held))
        if self.in_commit > self.in_held:
            self.in_held = self.in_delivered = self.in_offered = self.in_commit
            if self.refusing and self.refusing <= self.in_commit:
                self.refusing = 0
            self._advance_report()
            changed = True
        if changed:
            self._durable_changed()

    def _take_offer(self, r: Record) -> None:
        t = r.tid
        if t <= self.in_held:
            self._count("offers_dup")
        elif t != (self.in_held + 1) & M32:
            self._count("offers_gap")
        elif self.refusing:
            self._count("offers_refused")
        elif r.epoch != self.cfg_epoch and not r.flags & Flag.CONTROL:
            self._count("offers_wrong_epoch")
        elif (
            (self.in_held - self.in_delivered) + self.in_unreleased >= self.config.rx_capacity
            or t - self.in_reported > self.config.window
        ):
            self.refusing = t
            self._count("offers_refused")
        elif t == self.in_offered:
            self._count("offers_pending")
        else:
            s = self._islot(t)
            s.flags = r.flags & Flag.CONTROL
            s.payload = r.payload
            self.in_offered = t
            if self.config.gates and s.flags & Flag.CONTROL:
                s.tid = 0
                self.events.append(Offered(t, s.payload, self.in_delivered))
            else:
                s.tid = t
                self.in_held = t

    def _sender_side(self, r: Record) -> None:
        if r.held_upto > self.out_peer_held:
            for t in range(self.out_peer_held + 1, r.held_upto + 1):
                s = self._oslot(t)
                if s.state == State.TENTATIVE:
                    s.state = State.REFLECTING
                if self._gate_closed(t):
                    self.events.append(Reflected(t, s.payload))
            self.out_peer_held = r.held_upto
        self._advance_commit()
        refused = (r.held_upto + 1) & M32
        if (
            r.flags & Flag.REFUSE
            and self.out_commit < refused <= self.out_hi
            and self.out_peer_held < refused
            and self.out_commit >= self.out_peer_held  # no closed gate below the refused tid
        ):
            for t in range(refused, self.out_hi + 1):
                s = self._oslot(t)
                self.events.append(Aborted(t, s.payload, bool(s.flags & Flag.CONTROL)))
                s.state = State.ABORTED
                self._count("aborted")
            self.abort_lo = refused
            self.abort_hi = self.out_hi
            self.out_commit = self.out_hi
            self._durable_changed()
        if r.delivered_upto > self.out_settled:
            for t in range(self.out_settled + 1, r.delivered_upto + 1):
                s = self._oslot(t)
                if self._in_abort(t):
                    continue
                s.state = State.COMMITTED
                self.events.append(Committed(t))
                self._count("committed")
            self.out_settled = r.delivered_upto
            if self.abort_hi and self.out_settled >= self.abort_hi:
                self.abort_lo = self.abort_hi = 0

    def _busy(self) -> bool:
        return (
            self.out_hi > self.out_settled
            or self.in_held > self.in_delivered
            or self._reported_held() != self.sent_held
            or self._token_delivered() != self.sent_delivered
        )

    def _waiting(self) -> bool:
        """Gates: this end's application must decide something (link.c waiting())."""
        return self.config.gates and (
            self.in_offered > self.in_held
            or self.in_reported < self.in_delivered
            or self.out_commit < self.out_peer_held
        )

    def _news(self) -> bool:
        """My next beat would tell the peer something my last one did not (link.c)."""
        return (
            self._reported_held() != self.sent_held
            or self._token_delivered() != self.sent_delivered
            or self.out_commit != self.sent_commit
            or self.refusing != self.sent_refusing
        )

    def _paces(self) -> bool:
        """Idle pacing: the leader holds an idle token, and (gates) an end whose application
        has a decision to make holds an answer without news (link.c paces())."""
        return (
            self.phase == Phase.LIVE
            and self.config.idle_ns > 0
            and (
                (not self._busy() and self._is_leader())
                or (self._waiting() and not self._news())
            )
        )

    def _owe_answer(self, r: Record, now: int) -> None:
        start = (r.seq - r.beat_index) & M32
        if start <= self.answered:
            return
        self.answered = start
        self.t_rto = NEVER
        at = now + self.config.idle_ns if self._paces() else now
        if at < self.t_answer:
            self.t_answer = at

    def _bogus(self, r: Record) -> bool:
        if r.opcode == Opcode.RECONCILE:
            return (
                r.commit_upto > r.tid or r.delivered_upto > self.rec_hi or r.held_upto > self.rec_hi
            )
        return (
            r.held_upto > self.out_hi
            or r.delivered_upto > r.held_upto
            or r.delivered_upto > self.out_commit
            or (r.transition == Transition.OFFER and (r.tid == 0 or r.direction != 0))
        )

    def _quiet(self, now: int) -> bool:
        """A restarted end is silent for dead_ns from the first `now` it sees."""
        if not self.quiet:
            return False
        if self.quiet_until == 0:
            self.quiet_until = now + self.config.dead_ns
        if now < self.quiet_until:
            return True
        self.quiet = False
        return False

    def _drop(self, why: int) -> Drop:
        self.st.drops[Drop(why)] += 1
        return Drop(why)

    def on_frame(self, frame: bytes, now: int) -> Drop:
        """Feed one received frame; returns why it was dropped (Drop.NONE if accepted)."""
        self._count("frames_in")
        if self._quiet(now):
            return self._drop(Drop.STALE)
        try:
            f = decode_frame(frame, self.config.ethertype, self.config.key)
        except DecodeError as e:
            return self._drop(e.code)
        r = f.record
        to_group = f.dst == HELLO_GROUP
        if f.dst != self.config.mac and not (to_group and r.opcode == Opcode.HELLO):
            return self._drop(Drop.NOT_MINE)
        if f.src == self.config.mac and r.nonce == self.config.nonce:
            return self._drop(Drop.SELF)
        if (self.config.peer_mac is not None or self.bound) and f.src != self.peer_mac:
            return self._drop(Drop.FOREIGN)
        same = self.bound and self.peer_nonce != 0 and r.nonce == self.peer_nonce
        if not same and r.opcode != Opcode.HELLO:
            return self._drop(Drop.SESSION)
        bit = 0
        if same:
            if r.seq < self.floor:
                return self._drop(Drop.STALE)
            if r.seq <= self.rx_max:
                back = self.rx_max - r.seq
                if back >= 64 or (self.rx_bits >> back) & 1:
                    return self._drop(Drop.REPLAY)
                bit = 1 << back
        if r.opcode == Opcode.HELLO:
            if r.phase == Phase.LIVE:
                return self._drop(Drop.UNEXPECTED)
        elif r.opcode == Opcode.RECONCILE:
            if self.phase == Phase.DISCOVER or r.phase == Phase.DISCOVER:
                return self._drop(Drop.UNEXPECTED)
            if self._bogus(r):
                return self._drop(Drop.BOGUS)
        elif r.opcode == Opcode.TOKEN:
            if self.phase != Phase.LIVE or r.phase != Phase.LIVE:
                return self._drop(Drop.UNEXPECTED)
            if self._bogus(r):
                return self._drop(Drop.BOGUS)
        else:
            return self._drop(Drop.UNEXPECTED)
        # accepted
        if same:
            if r.seq > self.rx_max:
                shift = r.seq - self.rx_max
                self.rx_bits = 0 if shift >= 64 else (self.rx_bits << shift) & (2**64 - 1)
                self.rx_bits |= 1
                self.rx_max = r.seq
            else:
                self.rx_bits |= bit
        self._count("frames_accepted")
        self.peer_half = bytes(frame[14:18])
        self.got_any = True
        if self.phase != Phase.DISCOVER:
            self.t_dead = now + self.config.dead_ns

        if r.opcode == Opcode.HELLO:
            if (
                not same
                or self.phase == Phase.DISCOVER
                or (
                    r.phase == Phase.DISCOVER
                    and self.peer_round_seq != 0
                    and r.seq > self.peer_round_seq
                )
            ):
                self._new_round(f.src, r, now)
                self.t_dead = now + self.config.dead_ns
            elif r.phase == Phase.DISCOVER and self.peer_round_seq == 0:
                self.owe_hello = True
        elif r.opcode == Opcode.RECONCILE:
            self.peer_round_seq = max(self.peer_round_seq, r.seq)
            if not self.applied:
                self._apply(r)
            if not self.settled and r.transition == APPLIED:
                self._settle(r.delivered_upto)
            if self.phase == Phase.RECONCILE and self.applied and self.settled:
                self._go_live(r, now)
            elif self.phase == Phase.RECONCILE:
                self._owe_answer(r, now)
            elif r.phase == Phase.RECONCILE:
                self.owe_reconcile = True
                self._owe_answer(r, now)
            elif self._is_leader():
                self._owe_answer(r, now)
        else:
            self.peer_round_seq = max(self.peer_round_seq, r.seq)
            if self.skip_pending:
                self.skip_pending = False
                self._durable_changed()
            self._deliver_upto(r.commit_upto)
            if r.transition == Transition.OFFER:
                self._take_offer(r)
            self._sender_side(r)
            self._owe_answer(r, now)
        return Drop.NONE

    # ---- timers ------------------------------------------------------------------------

    def next_timeout(self) -> int:
        if self.quiet:
            return self.quiet_until
        held = self.config.persist and self.dirty
        t = NEVER if held else self.t_answer
        if self.phase == Phase.DISCOVER:
            if not held:
                t = min(t, self.t_hello)
        else:
            t = min(t, self.t_rto, self.t_dead)
        return t

    def on_timeout(self, now: int) -> None:
        if self._quiet(now) or self.phase == Phase.DISCOVER:
            return
        if now >= self.t_dead:
            self._link_down(DownReason.DEAD)
            if not self.confirmed:
                self.bound = False
                self.peer_nonce = 0
            self.phase = Phase.DISCOVER
            self.t_hello = now
            self.t_rto = self.t_dead = self.t_answer = NEVER
            self.owe_hello = self.owe_reconcile = False
            return
        if now >= self.t_rto:
            self._count("timeouts_rto")
            self.t_rto = NEVER
            if now < self.t_answer:
                self.t_answer = now

    # ---- sending -----------------------------------------------------------------------

    def _emit(self, out: list[bytes], dst: bytes, **fields: object) -> None:
        self.seq += 1
        rec = Record(
            phase=self.phase,
            peer_half=self.peer_half,
            epoch=self.cfg_epoch,
            seq=self.seq,
            nonce=self.config.nonce,
            sack=0xFF if self.got_any else 0,
            **fields,  # type: ignore[arg-type]
        )
        frame = Frame(dst, self.config.mac, self.config.ethertype, rec)
        out.append(encode_frame(frame, self.config.key))
        self._count("frames_out")

    def poll_tx(self, now: int, max_frames: int = 256) -> list[bytes]:
        """Frames (78 bytes each) due at `now`."""
        out: list[bytes] = []
        if self._quiet(now) or (self.config.persist and self.dirty):
            return out
        if self.owe_hello and len(out) < max_frames:
            self._emit(out, HELLO_GROUP, opcode=Opcode.HELLO)
            self.owe_hello = False
        if self.phase == Phase.DISCOVER:
            if now >= self.t_hello and len(out) < max_frames:
                self._emit(out, HELLO_GROUP, opcode=Opcode.HELLO)
                self.t_hello = now + self.config.hello_ns
            return out
        if now < self.t_answer or len(out) >= max_frames:
            return out
        if self.phase == Phase.RECONCILE or self.owe_reconcile:
            applied = self.applied
            self._emit(
                out,
                self.peer_mac,
                opcode=Opcode.RECONCILE,
                tid=self.rec_hi,
                commit_upto=self.rec_commit,
                held_upto=self._reported_held(),
                delivered_upto=self._reported_delivered(),
                transition=APPLIED if applied else Transition.NONE,
                direction=1 if applied else 0,
            )
            self.owe_reconcile = False
        else:
            beat = self.config.beat
            t = self.out_peer_held
            sent = 0
            while True:
                fields: dict[str, object] = {}
                flags = 0
                while t < self.out_hi and self._oslot(t + 1).state == State.ABORTED:
                    t += 1
                if t < self.out_hi:
                    t += 1
                    s = self._oslot(t)
                    fields = dict(
                        tid=t,
                        state=State.TENTATIVE,
                        transition=Transition.OFFER,
                        payload=s.payload,
                    )
                    flags = s.flags
                elif self.refusing:
                    fields = dict(
                        tid=self.refusing,
                        state=State.ABORTED,
                        transition=Transition.REVERSE,
                        direction=1,
                    )
                if self.refusing:
                    flags |= Flag.REFUSE
                self._emit(
                    out,
                    self.peer_mac,
                    opcode=Opcode.TOKEN,
                    beat_size=beat,
                    beat_index=sent,
                    flags=flags,
                    commit_upto=self.out_commit,
                    held_upto=self._reported_held(),
                    delivered_upto=self._token_delivered(),
                    **fields,
                )
                sent += 1
                if not (sent < beat and len(out) < max_frames and t < self.out_hi):
                    break
            self.sent_held = self._reported_held()
            self.sent_delivered = self._token_delivered()
            self.sent_commit = self.out_commit
            self.sent_refusing = self.refusing
        self.t_answer = NEVER
        self.t_rto = now + self.config.rto_ns
        return out

    def poll_events(self) -> list[Event]:
        out, self.events = self.events, []
        return out

    # ---- application side --------------------------------------------------------------

    def _wake(self, beat: bool) -> None:
        """New work must not wait for idle pacing (link.c wake())."""
        if self.t_answer != NEVER:
            self.t_answer = 0
        elif beat and self.phase == Phase.LIVE and self.config.idle_ns > 0 and self.t_rto != NEVER:
            self.t_rto = NEVER
            self.t_answer = 0
            self._count("wakes")

    def offer(self, payload: bytes, control: bool = False, gated: bool = False) -> int:
        """Queue a transfer; its tid, or 0 if the engine cannot take it now."""
        if len(payload) > PAYLOAD_MAX:
            raise ValueError(f"payload is at most {PAYLOAD_MAX} bytes")
        if gated and (not self.config.gates or not control):
            raise ValueError("a gated transfer must be CONTROL, on a link with gates on")
        if self.phase != Phase.LIVE:
            return 0
        if (
            self.out_hi - self.out_settled >= self.config.window
            or self.out_hi == M32
            or (self.abort_hi and self.out_settled < self.abort_hi)
        ):
            return 0
        beat = not self._busy() and not self._waiting() and not self._is_leader()
        self.out_hi += 1
        t = self.out_hi
        s = self._oslot(t)
        s.state = State.TENTATIVE
        s.flags = Flag.CONTROL if control else 0
        s.gate = GATE_CLOSED if gated else GATE_NONE
        s.payload = bytes(payload)
        self._wake(beat)
        self._durable_changed()
        return t

    def release(self, n: int) -> None:
        self.in_unreleased -= min(n, self.in_unreleased)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.cfg_epoch:
            if self.phase == Phase.LIVE and self.t_answer != NEVER:
                self.t_answer = 0
            self.cfg_epoch = epoch
            if not self.config.volatile_epoch:
                self._durable_changed()

    def idle(self) -> bool:
        """True while the peer may stay silent for longer than a round trip."""
        if self.phase == Phase.DISCOVER:
            return True
        return (
            self.phase == Phase.LIVE
            and self.config.idle_ns > 0
            and (not self._busy() or self.config.gates)
        )

    # ---- gated CONTROL transfers and reset (link.c, docs/protocol.md 7.11) --------------

    def _gate_call(self, rc: int) -> bool:
        if rc == INVALID:
            raise ValueError("gates are off, or the tid is not a gated transfer of this end")
        return rc == 0

    def _pending_rc(self, tid: int) -> int:
        if not self.config.gates:
            return INVALID
        if self.phase != Phase.LIVE:
            return NOT_LIVE
        if not (self.in_offered > self.in_held and tid == self.in_offered):
            return NOT_NOW
        return 0

    def hold(self, tid: int) -> bool:
        rc = self._pending_rc(tid)
        if rc == 0:
            self._islot(tid).tid = tid
            self.in_held = tid
            self._wake(True)
        return self._gate_call(rc)

    def refuse(self, tid: int) -> bool:
        rc = self._pending_rc(tid)
        if rc == 0:
            self.refusing = tid
            self.in_offered = self.in_held
            self._wake(True)
        return self._gate_call(rc)

    def report(self, tid: int) -> bool:
        if not self.config.gates:
            return self._gate_call(INVALID)
        if tid > self.in_delivered:
            return self._gate_call(NOT_NOW)
        if tid > self.in_reported:
            self.in_reported = tid
            self._advance_report()
            self._wake(True)
        return True

    def commit(self, tid: int) -> bool:
        return self._gate_call(self._commit(tid))

    def _commit(self, tid: int) -> int:
        if not self.config.gates or tid == 0 or tid > self.out_hi:
            return INVALID
        if self.phase != Phase.LIVE:
            return NOT_LIVE
        if tid <= self.out_settled:
            return NOT_NOW
        s = self._oslot(tid)
        if tid <= self.out_known or s.gate == GATE_NONE:
            return INVALID
        if not self._gate_closed(tid) or tid > self.out_peer_held:
            return NOT_NOW
        s.gate = GATE_OPEN
        self._advance_commit()
        self._wake(True)
        return 0

    def reset(self, now: int) -> bool:
        if self.phase == Phase.DISCOVER:
            return self._gate_call(NOT_LIVE)
        self._link_down(DownReason.RESET)
        self.phase = Phase.DISCOVER
        self.t_hello = now
        self.t_rto = self.t_dead = self.t_answer = NEVER
        self.owe_hello = self.owe_reconcile = False
        return True

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.st.counts)
        out.update(
            phase=int(self.phase),
            out_hi=self.out_hi,
            out_commit=self.out_commit,
            out_peer_held=self.out_peer_held,
            out_settled=self.out_settled,
            in_held=self.in_held,
            in_delivered=self.in_delivered,
            in_released=self.in_delivered - self.in_unreleased,
            in_refusing=self.refusing,
            peer_nonce=self.peer_nonce,
            in_offered=self.in_offered,
            in_reported=self.in_reported,
        )
        out["drops"] = dict(self.st.drops)
        return out

    def durable(self) -> Durable:
        self.snap_gen = self.gen
        return Durable(
            peer_mac=self.peer_mac if self.bound and self.confirmed else None,
            out_hi=self.out_hi,
            out_settled=self.out_settled,
            abort_lo=self.abort_lo,
            abort_hi=self.abort_hi,
            in_delivered=self._reported_delivered(),
            epoch=self.cfg_epoch,
        )

    def persisted(self) -> None:
        if not self.dirty:
            return
        if self.snap_gen == self.gen:
            self.dirty = False
        else:
            self.events.append(Persist())

    def transfer_state(self, tid: int, incoming: bool = False) -> State:
        live = self.phase == Phase.LIVE
        if incoming:
            if tid == 0 or tid > self.in_held:
                return State.IDLE
            if tid <= self._reported_delivered():
                return State.COMMITTED
            return State.TENTATIVE if live else State.INDEFINITE
        if tid == 0 or tid > self.out_hi or self.out_hi - tid >= self.config.window:
            return State.IDLE
        if self._in_abort(tid):
            return State.ABORTED
        if tid <= self.out_known:
            return State.IDLE if tid <= self.out_settled else State.INDEFINITE
        st = self._oslot(tid).state
        if not live and tid > self.out_settled and st != State.ABORTED:
            return State.INDEFINITE
        return State(st)
