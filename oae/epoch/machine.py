"""The per-node, sans-I/O epoch machine of the bilateral convergence protocol.

The machine never reads a clock and never does I/O: the driver (the simulator in
oae.epoch.sim, the runtime adapter oae.epoch.node, the tests' model network) feeds it the
events of its gated links (docs/protocol.md §7.11) and performs the actions it returns,
in order. A `Persist` action must be durable before the driver performs any later action
of the same list. The machine never names a tid it did not get from an event.

A link's part of wave W = (e+1, attempt, initiator) is ONE gated CONTROL transfer per
direction that takes part, whose legs are the wave's phases (docs/convergence.md §3):

1. OFFER (payload PROPOSE(W)): the sender joined W: it captured its state for e+1
   (`Capture`), holds its application frames on every link, and offered PROPOSE on every
   link but its parent's. The first offer of W a node gets makes the sender its parent;
   an offer of W from a node already in W is a crossing neighbour's answer.
2. The receiver's hold (REFLECTED at the sender) = ACCEPT: given to the parent once the
   checkpoint is written, every other neighbour answered, the channels into this node are
   closed (§5 there: the consistent cut) and `prepared` is durable. A crossing offer is
   held once every transfer this node sent that peer before its own offer has settled
   (so the peer has taken our offer when it sees the hold, and cannot mistake the hold
   for a child's ACCEPT), or once this node committed or the peer held our offer.
3. The sender's commit (DELIVERED at the receiver) = COMMIT: the sender durably committed
   W; the initiator commits once every neighbour answered. A delivery of a committed W
   transfer commits the receiver (it must be prepared: else EpochSafetyError).
4. The receiver's report (COMMITTED at the sender) = DONE from a child (its subtree
   switched every link), or a crossing neighbour's "I committed".

A refusal is the engine's REFUSE of the pending offer; an abort of a transfer already
offered or held is a link `Reset` (the round aborts every undecided gated transfer). After
a link restart the wave's status travels in ordinary CONTROL messages (COMMIT, PREPARED,
ABORT, DONE). Links are named by the neighbour's node id (any stable int).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oae.epoch.durable import DurableRecord
from oae.epoch.messages import Kind, Message, MessageError, Wave, decode
from oae.errors import OaeError


class EpochSafetyError(OaeError):
    """The protocol's safety argument was contradicted (a bug, never a fault): e.g. a
    commit of a wave this node never prepared."""


@dataclass(frozen=True)
class Offer:
    """Submit `payload` as a CONTROL transfer on the link to `link`; `gated`: the wave
    transfer (held, committed and reported only on the machines' word), else a status
    message the peer holds and reports at once."""

    link: int
    payload: bytes
    gated: bool


@dataclass(frozen=True)
class Hold:
    """Hold (reflect) the pending offer `tid` from `link`."""

    link: int
    tid: int


@dataclass(frozen=True)
class Refuse:
    """Refuse the pending offer `tid` from `link` (its sender gets it back, ABORTED)."""

    link: int
    tid: int


@dataclass(frozen=True)
class Commit:
    """Let the peer on `link` deliver our reflected gated transfer `tid`."""

    link: int
    tid: int


@dataclass(frozen=True)
class Report:
    """Report every transfer from `link` delivered up to `tid` (the peer's COMMITTED)."""

    link: int
    tid: int


@dataclass(frozen=True)
class Reset:
    """Make the link to `link` reconcile: the round aborts its undecided gated transfers."""

    link: int


@dataclass(frozen=True)
class Persist:
    """Write `record` durably (atomically) before doing any later action."""

    record: DurableRecord


@dataclass(frozen=True)
class Capture:
    """Snapshot local application state now, as the state of `wave.epoch`, and write it;
    report the outcome with `checkpoint_written(wave, ok)`."""

    wave: Wave


@dataclass(frozen=True)
class Discard:
    """Drop the capture of `wave` (the wave aborted)."""

    wave: Wave


@dataclass(frozen=True)
class LinkEpoch:
    """The link end to `link` carries `epoch` from now on: application frames sent on it
    are tagged `epoch`, and the engine holds only offers tagged `epoch`."""

    link: int
    epoch: int


@dataclass(frozen=True)
class Decided:
    """The initiator decided `wave`: committed (True) or aborted (False)."""

    wave: Wave
    committed: bool


@dataclass(frozen=True)
class Converged:
    """The initiator knows Conv(P, wave.epoch): every node and link has committed it."""

    wave: Wave


Action = (
    Offer
    | Hold
    | Refuse
    | Commit
    | Report
    | Reset
    | Persist
    | Capture
    | Discard
    | LinkEpoch
    | Decided
    | Converged
)


@dataclass
class _Out:
    """Our gated transfer of `wave` on this link session."""

    wave: Wave
    tid: int | None = None  # known from REFLECTED
    committed: bool = False  # commit(tid) given


@dataclass
class _In:
    """The peer's gated transfer of `wave` on this link session. `info`: the engine's
    in_delivered when it was offered; every tid in (info, tid) is held and will be
    delivered, so the channel before it is closed once deliveries reach tid - 1."""

    wave: Wave
    tid: int
    info: int
    held: bool = False
    delivered: bool = False


@dataclass
class _Link:
    up: bool = False
    heard: int | None = None  # highest committed epoch the peer proved on this session
    epoch: int = 0  # the epoch this link end carries (what LinkEpoch last said)
    out: list[_Out] = field(default_factory=list)  # in offer order = reflection order
    offer_after: Wave | None = None  # PROPOSE to send once our older offer is refused
    inc: dict[Wave, _In] = field(default_factory=dict)
    delivered: int = 0  # highest tid delivered from the peer (tids are never reused)
    ctl_delivered: int = 0  # highest CONTROL tid delivered from the peer
    reported: int = 0  # highest tid we reported
    unsettled_app: int = 0  # our application transfers to the peer without an outcome
    unsettled_ctl: int = 0  # our status messages to the peer this session, not settled
    logged: int = 0  # frames of the current capture's channel log

    def out_of(self, wave: Wave) -> _Out | None:
        return next((o for o in self.out if o.wave == wave), None)


@dataclass
class _Wave:
    wave: Wave
    parent: int | None
    waiting: set[int]
    children: set[int] = field(default_factory=set)
    crossing: set[int] = field(default_factory=set)  # answered with an offer of their own
    marked: set[int] = field(default_factory=set)  # parent and crossing: channel via their offer
    written: bool = False
    accepted: bool = False  # prepared and held the parent's offer (or, initiator: decided)


class EpochMachine:
    """One node's epoch layer. Build it from the durable record (fresh or recovered),
    have the driver set every link end to `epoch`, call `start()` once, then feed
    events."""

    def __init__(self, node_id: int, neighbours: list[int], record: DurableRecord) -> None:
        self.node_id = node_id
        self.rec = record
        self.links: dict[int, _Link] = {n: _Link(epoch=record.epoch) for n in sorted(neighbours)}
        self.wave: _Wave | None = None
        self.deferred: dict[Wave, set[int]] = {}
        self.done_from: set[int] = set()
        self.done_sent = False
        self.converged_reported = False
        self.mixed_frames = 0
        self.bad_messages = 0
        if record.prepared is not None:
            # Prepared before a crash: still bound by the promise, waiting for the decision.
            self.wave = _Wave(
                record.prepared,
                record.prepared_parent,
                set(),
                set(record.prepared_children),
                written=True,
                accepted=True,
            )

    # ----------------------------------------------------------------- queries
    @property
    def epoch(self) -> int:
        """The committed epoch."""
        return self.rec.epoch

    def in_wave(self) -> Wave | None:
        return self.wave.wave if self.wave else None

    def send_epoch(self, link: int) -> int | None:
        """Tag for application frames on `link` now, or None: hold them. Both ends have
        committed the tag; between a capture and the decision nothing is sent; and to
        the tree parent nothing before our DONE, since its end switches only on it: a
        frame would wait there for our whole subtree, and the next wave's ACCEPT for
        the frame (found by Hypothesis: with a DONE message stuck behind a gated
        transfer, a deadlock)."""
        ls = self.links[link]
        c = self.rec.epoch
        if link == self.rec.tree_parent and not self.done_sent:
            return None
        if self.wave is None and ls.up and ls.heard == c:
            return c
        return None

    # ----------------------------------------------------------------- driver events
    def start(self) -> list[Action]:
        """After construction: abort a wave this node initiated and never decided."""
        out: list[Action] = []
        w = self.rec.initiating
        if w is not None and w.epoch == self.rec.epoch + 1:
            self._abort(w, out)
        return self._finish(out)

    def propose(self) -> tuple[Wave | None, list[Action]]:
        """Start a wave for epoch+1, unless this node is already in one."""
        if self.wave is not None or self.deferred:
            return None, []
        w = Wave(self.rec.epoch + 1, self.rec.next_attempt, self.node_id)
        self.rec = self.rec.evolve(initiating=w, next_attempt=self.rec.next_attempt + 1)
        out: list[Action] = [Persist(self.rec)]
        self._join(w, None, set(), out)
        return w, self._finish(out)

    def checkpoint_written(self, wave: Wave, ok: bool) -> list[Action]:
        """The write of `wave`'s capture ended: a failure aborts the wave (refusal)."""
        out: list[Action] = []
        st = self.wave
        if st is None or st.wave != wave or st.written:
            return self._finish(out)
        if not ok:
            self._abort(wave, out)
            return self._finish(out)
        st.written = True
        return self._finish(out)

    def link_up(self, link: int) -> list[Action]:
        """The link is LIVE (a new session): send this node's status, since nothing of the
        previous session's wave transfers survived its round."""
        ls = self.links[link]
        ls.up = True
        out: list[Action] = [self._status(link, Kind.COMMIT, self.rec.committed)]
        if self.rec.prepared is not None:
            out.append(self._status(link, Kind.PREPARED, self.rec.prepared))
        # Aborts decided while this link was down could not travel on it; a prepared peer
        # may be waiting for exactly one of them.
        for w in sorted(self.rec.aborted):
            out.append(self._status(link, Kind.ABORT, w))
        st = self.wave
        if st is not None and link in st.waiting:
            self._propose_to(link, st.wave, out)  # it was down when we joined
        return self._finish(out)

    def link_down(self, link: int) -> list[Action]:
        """The link failed or was reset: its session's wave transfers are gone."""
        ls = self.links[link]
        out: list[Action] = []
        if not ls.up:
            return out  # our own Reset already ended the session
        st = self.wave
        lost = st is not None and not st.accepted and (
            link == st.parent
            or link in st.waiting
            or (link in st.marked and not self._closed(link, st.wave))
        )
        self._end_session(link)
        if lost and st is not None:
            # The wave cannot complete across this link: whoever waits on it aborts.
            self._abort(st.wave, out)
        return self._finish(out)

    def offered(self, link: int, tid: int, payload: bytes, delivered: int) -> list[Action]:
        """OFFERED: a CONTROL transfer from `link` waits for Hold or Refuse; `delivered`
        is the engine's in_delivered when it was offered."""
        out: list[Action] = []
        if not self.links[link].up:
            return out  # a stale event of a session our Reset ended
        try:
            msg = decode(payload)
        except MessageError:
            self.bad_messages += 1
            out.append(Refuse(link, tid))
            return self._finish(out)
        if msg.kind is not Kind.PROPOSE:
            out.append(Hold(link, tid))  # status messages are taken at once
            return self._finish(out)
        self._on_propose(link, _In(msg.wave, tid, delivered), out)
        return self._finish(out)

    def reflected(self, link: int, tid: int, payload: bytes) -> list[Action]:
        """REFLECTED: the peer holds our gated transfer `tid` (payload PROPOSE(W)). Every
        reflected transfer of ours ends committed or reset, also one the link offered in
        a later session than ours (a submission queued across a restart)."""
        out: list[Action] = []
        ls = self.links[link]
        try:
            w = decode(payload).wave
        except MessageError:
            return out
        if not ls.up:
            return out  # a stale event of a session our Reset ended
        o = next((o for o in ls.out if o.wave == w and o.tid is None), None)
        if o is None:
            o = _Out(w)
            ls.out.append(o)
        o.tid = tid
        st = self.wave
        if w == self.rec.committed:
            out.append(Commit(link, tid))  # a crossing neighbour held it after our commit
            o.committed = True
        elif st is not None and st.wave == w:
            if link in st.crossing:
                # The peer took our offer: it knows we are crossing, our hold is no ACCEPT.
                self._hold_crossing(link, w, out)
            elif link in st.waiting:
                st.children.add(link)  # the child's ACCEPT
                st.waiting.discard(link)
        else:
            out.append(Reset(link))  # held although its wave aborted: only a round undoes it
            self._end_session(link)
        return self._finish(out)

    def delivered(self, link: int, tid: int, payload: bytes) -> list[Action]:
        """DELIVERED of a CONTROL transfer from `link` (in tid order per link; also the
        ones a reconciliation round delivers after link_down)."""
        out: list[Action] = []
        ls = self.links[link]
        ls.delivered = max(ls.delivered, tid)
        if ls.up:
            ls.ctl_delivered = max(ls.ctl_delivered, tid)
        try:
            msg = decode(payload)
        except MessageError:
            self.bad_messages += 1
            return self._finish(out)
        w = msg.wave
        if msg.kind is Kind.PROPOSE or msg.kind is Kind.COMMIT:
            if msg.kind is Kind.PROPOSE and ls.up:
                inc = ls.inc.get(w)
                if inc is not None and inc.tid == tid:
                    inc.delivered = True
            # The sender committed its wave transfer (or sent COMMIT) after its commit.
            self._committed_by(link, w, out)
        elif msg.kind is Kind.PREPARED:
            if w in self.rec.aborted:
                out.append(self._status(link, Kind.ABORT, w))
            elif w.epoch == self.rec.epoch + 1 and (self.wave is None or self.wave.wave != w):
                # We never prepared W (prepared is durable, and we are not in it): W cannot
                # have committed and we may abort it. A node that restarted while joining
                # W is the one neighbour that can release a prepared node cut off from the
                # rest.
                self._abort(w, out)
        elif msg.kind is Kind.ABORT:
            if w.epoch == self.rec.epoch + 1 and w not in self.rec.aborted:
                self._abort(w, out)
        elif msg.kind is Kind.DONE and w == self.rec.committed:
            self.done_from.add(link)
        return self._finish(out)

    def outcome(
        self, link: int, tid: int, committed: bool, payload: bytes | None, by_round: bool
    ) -> list[Action]:
        """COMMITTED/ABORTED of a CONTROL transfer we sent. Outcomes decided by a
        reconciliation round (`by_round`) mean nothing for the wave: link_down did what a
        failed link means, and the status exchange after link_up settles the rest."""
        out: list[Action] = []
        if by_round:
            return out
        ls = self.links[link]
        o = next((o for o in ls.out if o.tid == tid), None)
        if o is None and payload is not None:
            try:
                msg = decode(payload)
            except MessageError:
                return out
            if msg.kind is not Kind.PROPOSE:
                ls.unsettled_ctl = max(0, ls.unsettled_ctl - 1)
                if not committed and ls.up:
                    # Reversed with an earlier transfer the peer refused: it never saw
                    # this status, which says something still true; say it again.
                    out.append(self._status(link, msg.kind, msg.wave))
                return self._finish(out)
            o = ls.out_of(msg.wave)
        if o is None:
            return out  # a status message, or a transfer of an ended session
        ls.out.remove(o)
        if ls.offer_after is not None and all(x.tid is not None for x in ls.out):
            self._propose_to(link, ls.offer_after, out)
        if committed:
            # The peer reported: it committed (a crossing peer), or its subtree switched.
            if ls.up and (ls.heard is None or o.wave.epoch > ls.heard):
                ls.heard = o.wave.epoch
            if o.wave == self.rec.committed and link in self.rec.tree_children:
                self.done_from.add(link)
        elif self.wave is not None and self.wave.wave == o.wave:
            # Refused: the peer will never count us as answered, so W cannot commit.
            self._abort(o.wave, out)
        return self._finish(out)

    def app_frame(self, link: int, tid: int, tag: int) -> tuple[bool, list[Action]]:
        """An application frame tagged `tag` (the sender's epoch) was delivered from
        `link`: accept it, counting it into the channel log between the capture and the
        prepare, or count it as mixed-epoch (the engine should have refused it)."""
        ls = self.links[link]
        ls.delivered = max(ls.delivered, tid)
        if tag != ls.epoch:
            self.mixed_frames += 1
            return False, self._finish([])
        st = self.wave
        if st is not None and not st.accepted and tag == self.rec.epoch:
            ls.logged += 1
        return True, self._finish([])

    def app_sent(self, link: int) -> None:
        """An application transfer to `link` was submitted."""
        self.links[link].unsettled_app += 1

    def app_settled(self, link: int) -> list[Action]:
        """An application transfer to `link` got its outcome (delivered or reversed)."""
        ls = self.links[link]
        ls.unsettled_app = max(0, ls.unsettled_app - 1)
        return self._finish([])

    # ----------------------------------------------------------------- wave steps
    def _on_propose(self, link: int, inc: _In, out: list[Action]) -> None:
        w, ls, st = inc.wave, self.links[link], self.wave
        if w.epoch != self.rec.epoch + 1 or w in self.rec.aborted:
            out.append(Refuse(link, inc.tid))
        elif st is None:
            ls.inc[w] = inc
            self._join(w, link, set(), out)
        elif st.wave == w:
            ls.inc[w] = inc  # a crossing neighbour: its offer is its answer and marker
            st.crossing.add(link)
            st.marked.add(link)
            st.waiting.discard(link)
            st.children.discard(link)
        elif w < st.wave:
            out.append(Refuse(link, inc.tid))
        else:
            # A higher wave waits (its offer pending) until ours is decided.
            ls.inc[w] = inc
            self.deferred.setdefault(w, set()).add(link)

    def _join(self, w: Wave, parent: int | None, crossing: set[int], out: list[Action]) -> None:
        others = [n for n in self.links if n != parent]
        marked = crossing | ({parent} if parent is not None else set())
        st = _Wave(w, parent, set(others) - crossing, crossing=set(crossing), marked=marked)
        self.wave = st
        out.append(Capture(w))
        for ls in self.links.values():
            ls.logged = 0
        # PROPOSE on every other link, also to crossing neighbours (the senders of a
        # deferred wave): each of them waits for our offer as its answer. A link that is
        # down (reset by the abort of an earlier wave, say) gets it when it is back.
        for n in others:
            ls = self.links[n]
            if not ls.up:
                continue
            if any(o.tid is None for o in ls.out):
                # Our offer of the wave that aborted is still pending there, and the
                # refusal of it would reverse this one too: offer once it is refused.
                ls.offer_after = w
            else:
                self._propose_to(n, w, out)

    def _propose_to(self, link: int, w: Wave, out: list[Action]) -> None:
        ls = self.links[link]
        ls.offer_after = None
        out.append(Offer(link, Message(Kind.PROPOSE, w).encode(), True))
        ls.out.append(_Out(w))

    def _closed(self, link: int, w: Wave) -> bool:
        """Has every transfer from `link` before its offer of `w` been delivered?"""
        ls = self.links[link]
        inc = ls.inc.get(w)
        return inc is not None and max(inc.info, ls.delivered) >= inc.tid - 1

    def _hold_crossing(self, link: int, w: Wave, out: list[Action]) -> None:
        inc = self.links[link].inc.get(w)
        if inc is not None and not inc.held:
            inc.held = True
            out.append(Hold(link, inc.tid))

    def _progress(self, out: list[Action]) -> None:
        """Prepare (hold the parent's offer) or, at the initiator, decide, once the
        checkpoint is written, every neighbour answered, the channels from the parent and
        crossing neighbours are closed, and our own frames to the parent have settled
        (so the parent has them all when it sees the hold)."""
        st = self.wave
        if st is None or st.accepted or st.waiting or not st.written:
            return
        if not all(self._closed(n, st.wave) for n in st.marked):
            return
        if st.parent is not None and self.links[st.parent].unsettled_app:
            return
        st.accepted = True
        log = tuple(sorted((n, ls.logged) for n, ls in self.links.items() if ls.logged))
        self.rec = self.rec.evolve(prepared_log=log)
        if st.parent is None:
            self._commit(st.wave, st, out)
            out.append(Decided(st.wave, True))
            return
        self.rec = self.rec.evolve(
            prepared=st.wave,
            prepared_parent=st.parent,
            prepared_children=frozenset(st.children),
        )
        out.append(Persist(self.rec))
        inc = self.links[st.parent].inc[st.wave]
        inc.held = True
        out.append(Hold(st.parent, inc.tid))

    def _committed_by(self, link: int, w: Wave, out: list[Action]) -> None:
        """`link` proved it committed `w`: hear it, and commit `w` if it is our next."""
        ls, c = self.links[link], self.rec.epoch
        if ls.up and (ls.heard is None or w.epoch > ls.heard):
            ls.heard = w.epoch
        if w.epoch == c + 1:
            st = self.wave
            if st is None or st.wave != w or not st.accepted:
                raise EpochSafetyError(
                    f"node {self.node_id}: {w} committed by {link}, but not prepared for it"
                )
            self._commit(w, st, out)
        elif w.epoch > c + 1:
            raise EpochSafetyError(f"node {self.node_id}: {w} committed while at epoch {c}")

    def _commit(self, w: Wave, st: _Wave, out: list[Action]) -> None:
        self.rec = self.rec.evolve(
            committed=w,
            tree_parent=st.parent,
            tree_children=frozenset(st.children),
            committed_log=self.rec.prepared_log,
            prepared=None,
            prepared_parent=None,
            prepared_children=frozenset(),
            prepared_log=(),
            initiating=None,
            aborted=frozenset(),
        )
        out.append(Persist(self.rec))
        self.wave = None
        self.done_from, self.done_sent, self.converged_reported = set(), False, False
        for n, ls in self.links.items():
            if not ls.up:
                continue
            o, inc = ls.out_of(w), ls.inc.get(w)
            if o is not None and o.tid is not None and not o.committed:
                o.committed = True
                out.append(Commit(n, o.tid))  # leg 3 (unreflected ones: on REFLECTED)
            if inc is not None:
                self._hold_crossing(n, w, out)
            if o is None and inc is None:
                # The link restarted under the wave: its W transfers are gone.
                out.append(self._status(n, Kind.COMMIT, w))
        self._resume_deferred(out)

    def _abort(self, w: Wave, out: list[Action]) -> None:
        rec = self.rec
        self.rec = rec.evolve(
            aborted=rec.aborted | {w},
            initiating=None if rec.initiating == w else rec.initiating,
            prepared=None if rec.prepared == w else rec.prepared,
            prepared_parent=None if rec.prepared == w else rec.prepared_parent,
            prepared_children=frozenset() if rec.prepared == w else rec.prepared_children,
            prepared_log=() if rec.prepared == w else rec.prepared_log,
        )
        out.append(Persist(self.rec))
        if w.initiator == self.node_id:
            out.append(Decided(w, False))
        if self.wave is not None and self.wave.wave == w:
            out.append(Discard(w))
            self.wave = None
        for n, ls in self.links.items():
            if not ls.up:
                continue
            inc, o = ls.inc.get(w), ls.out_of(w)
            if o is not None and o.tid is None and any(n in s for s in self.deferred.values()):
                # The peer is in the higher wave it offered us: it refuses our offer (or,
                # if its wave aborts, resets the link). A reset here would end its wave.
                continue
            if o is not None or (inc is not None and inc.held):
                # Offered by us or held by us: only a round can abort it at both ends.
                out.append(Reset(n))
                self._end_session(n)
            elif inc is not None:
                out.append(Refuse(n, inc.tid))
                del ls.inc[w]
            else:
                out.append(self._status(n, Kind.ABORT, w))
        self.deferred.pop(w, None)
        self._resume_deferred(out)

    def _resume_deferred(self, out: list[Action]) -> None:
        """After a decision: join the highest live deferred wave, refuse the others."""
        if self.wave is not None or not self.deferred:
            return
        pending, self.deferred = self.deferred, {}
        live = [w for w in pending if w.epoch == self.rec.epoch + 1 and w not in self.rec.aborted]
        best = max(live) if live else None
        for w, senders in pending.items():
            if w == best:
                continue
            for n in sorted(senders):
                inc = self.links[n].inc.pop(w, None)
                if inc is not None:
                    out.append(Refuse(n, inc.tid))
        if best is not None:
            senders = pending[best]
            parent = min(senders)
            self._join(best, parent, senders - {parent}, out)

    def _end_session(self, link: int) -> None:
        """Forget a link session: its wave transfers and pending offers are gone."""
        ls = self.links[link]
        ls.up, ls.heard, ls.offer_after, ls.unsettled_ctl = False, None, None, 0
        ls.out.clear()
        ls.inc.clear()
        if link == self.rec.tree_parent:
            self.done_sent = False
        st = self.wave
        if st is not None:
            st.marked.discard(link)
        for senders in self.deferred.values():
            senders.discard(link)
        self.deferred = {w: s for w, s in self.deferred.items() if s}

    def _status(self, link: int, kind: Kind, w: Wave) -> Offer:
        self.links[link].unsettled_ctl += 1
        return Offer(link, Message(kind, w).encode(), False)

    def _finish(self, out: list[Action]) -> list[Action]:
        """After every event: prepare or decide when ready, announce link switches, send
        DONE / report Conv when the subtree is done, and report deliveries."""
        self._progress(out)
        st = self.wave
        if st is not None:
            for n in st.crossing:
                ls = self.links[n]
                if ls.up and not ls.unsettled_app and not ls.unsettled_ctl:
                    self._hold_crossing(n, st.wave, out)
        c = self.rec.epoch
        switched = True
        for n, ls in self.links.items():
            if ls.up and ls.heard == c:
                if ls.epoch != c:
                    ls.epoch = c
                    out.append(LinkEpoch(n, c))
            else:
                switched = False
        parent = self.rec.tree_parent
        if c and switched and self.rec.tree_children <= self.done_from:
            if parent is None:
                if self.rec.committed.initiator == self.node_id and not self.converged_reported:
                    self.converged_reported = True
                    out.append(Converged(self.rec.committed))
            elif not self.done_sent:
                self.done_sent = True
                inc = self.links[parent].inc.get(self.rec.committed)
                if inc is None or not inc.delivered:
                    out.append(self._status(parent, Kind.DONE, self.rec.committed))
                # else the report of the parent's wave transfer below is our DONE (leg 4)
        for n, ls in self.links.items():
            target = ls.ctl_delivered
            if n == parent and not self.done_sent:
                inc = ls.inc.get(self.rec.committed)
                if inc is not None and inc.delivered:
                    target = min(target, inc.tid - 1)  # leg 4 waits for our DONE
            if ls.up and target > ls.reported:
                ls.reported = target
                out.append(Report(n, target))
        return out
