"""The per-node, sans-I/O epoch machine of the bilateral convergence protocol.

The machine never reads a clock and never does I/O: the driver (the simulator in
oae.epoch.sim, or the runtime adapter) feeds it link events and returns the actions it
emits, in order. A `Persist` action must be durable before the driver performs any later
action of the same list. docs/convergence.md gives the protocol and the safety argument;
in short, a wave W = (e+1, attempt, initiator):

1. PROPOSE spreads as an echo wave. A node joining W captures its state for e+1 (the
   driver snapshots and writes it: `Capture`), stops sending application frames on every
   link (hold), and forwards PROPOSE to its other neighbours. PROPOSE, and every answer,
   doubles as a Chandy-Lamport marker: frames tagged e that arrive after the capture and
   before the neighbour's marker are counted into the e+1 channel log.
2. A node answers its parent ACCEPT once its checkpoint is written and every other
   neighbour answered (ACCEPT from a child; a crossing PROPOSE from a non-child), after
   persisting `prepared`. Any refusal, or a link failing under the wave, aborts W; ABORT
   is flooded.
3. The initiator, holding every ACCEPT, commits e+1 durably and floods COMMIT. A link end
   moves its application traffic to e+1 only when it has told the peer (COMMIT sent) and
   heard the peer (COMMIT received) — both ends have committed e+1; FIFO links make the
   switch clean. DONE flows back up the echo tree when a subtree has switched every link;
   the initiator then knows Conv(P, e+1).

Links are named by the neighbour's node id (any stable int).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oae.epoch.durable import DurableRecord
from oae.epoch.messages import Kind, Message, MessageError, Reason, Wave, decode
from oae.errors import OaeError


class EpochSafetyError(OaeError):
    """The protocol's safety argument was contradicted (a bug, never a fault): e.g. a
    COMMIT for a wave this node never prepared."""


@dataclass(frozen=True)
class Send:
    """Send `payload` as a CONTROL transfer on the link to `link`."""

    link: int
    payload: bytes


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
    """The link to `link` carries application traffic tagged `epoch` from now on."""

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


Action = Send | Persist | Capture | Discard | LinkEpoch | Decided | Converged


@dataclass
class _Link:
    up: bool = False
    told: int | None = None  # highest committed epoch we sent on this session
    heard: int | None = None  # highest committed epoch the peer proved on this session
    log_open: bool = False  # frames from the peer count into the e+1 channel log
    logged: int = 0
    switched: int | None = None  # epoch last announced with LinkEpoch


@dataclass
class _Wave:
    wave: Wave
    parent: int | None
    waiting: set[int]
    children: set[int] = field(default_factory=set)
    written: bool = False
    accepted: bool = False  # ACCEPT sent (or, at the initiator, decided)


class EpochMachine:
    """One node's epoch layer. Build it from the durable record (fresh or recovered),
    call `start()` once, then feed events."""

    def __init__(self, node_id: int, neighbours: list[int], record: DurableRecord) -> None:
        self.node_id = node_id
        self.rec = record
        self.links: dict[int, _Link] = {n: _Link() for n in sorted(neighbours)}
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
        """Tag for application frames on `link` now, or None: hold them."""
        ls = self.links[link]
        c = self.rec.epoch
        if self.wave is None and ls.up and ls.told == c and ls.heard == c:
            return c
        return None

    def frame_received(self, link: int, tag: int) -> bool:
        """An application frame tagged `tag` arrived on `link`: accept it (and count it
        into the channel log while one is open), or count it as mixed-epoch and refuse."""
        ls = self.links[link]
        if not ls.up or ls.heard is None or tag != ls.heard:
            self.mixed_frames += 1
            return False
        if self.wave is not None and ls.log_open:
            ls.logged += 1
        return True

    # ----------------------------------------------------------------- events
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

    def link_up(self, link: int) -> list[Action]:
        """The link is LIVE (again). `heard` survives: the peer's status may have been
        delivered before the driver noticed the link, and a committed epoch it proved
        stays committed (link_down already cleared the previous session's)."""
        ls = self.links[link]
        ls.up, ls.told = True, self.rec.epoch
        out: list[Action] = [Send(link, Message(Kind.COMMIT, self.rec.committed).encode())]
        if self.rec.prepared is not None:
            out.append(Send(link, Message(Kind.PREPARED, self.rec.prepared).encode()))
        # Aborts decided while this link was down (or before the driver noticed it up)
        # could not be sent on it; a prepared peer may be waiting for exactly one of them.
        for w in sorted(self.rec.aborted):
            out.append(Send(link, Message(Kind.ABORT, w).encode()))
        return self._finish(out)

    def link_down(self, link: int) -> list[Action]:
        ls = self.links[link]
        ls.up, ls.told, ls.heard, ls.switched = False, None, None, None
        out: list[Action] = []
        if link == self.rec.tree_parent:
            self.done_sent = False
        st = self.wave
        if st is not None and not st.accepted and (link == st.parent or link in st.waiting):
            # The wave cannot complete across this link: whoever waits on it aborts.
            self._abort(st.wave, out)
        for senders in self.deferred.values():
            senders.discard(link)
        self.deferred = {w: s for w, s in self.deferred.items() if s}
        return self._finish(out)

    def transfer_aborted(self, link: int, payload: bytes) -> list[Action]:
        """A CONTROL transfer we sent was aborted by the link (it never arrived)."""
        out: list[Action] = []
        try:
            msg = decode(payload)
        except MessageError:
            return self._finish(out)
        st = self.wave
        if msg.kind is Kind.ACCEPT and st is not None and st.wave == msg.wave:
            # Our parent never got ACCEPT, and it treats the failed link as a refusal.
            self._abort(msg.wave, out)
        return self._finish(out)

    def checkpoint_written(self, wave: Wave, ok: bool) -> list[Action]:
        out: list[Action] = []
        st = self.wave
        if st is None or st.wave != wave or st.written:
            return self._finish(out)
        if not ok:
            self._abort(wave, out)
            return self._finish(out)
        st.written = True
        self._progress(out)
        return self._finish(out)

    def receive(self, link: int, payload: bytes) -> list[Action]:
        """A CONTROL transfer from `link` was delivered."""
        out: list[Action] = []
        try:
            msg = decode(payload)
        except MessageError:
            self.bad_messages += 1
            return self._finish(out)
        handler = {
            Kind.PROPOSE: self._on_propose,
            Kind.ACCEPT: self._on_accept,
            Kind.REFUSE: self._on_abort,
            Kind.ABORT: self._on_abort,
            Kind.COMMIT: self._on_commit,
            Kind.PREPARED: self._on_prepared,
            Kind.DONE: self._on_done,
        }[msg.kind]
        handler(link, msg, out)
        return self._finish(out)

    # ----------------------------------------------------------------- handlers
    def _on_propose(self, link: int, msg: Message, out: list[Action]) -> None:
        w, c = msg.wave, self.rec.epoch
        if w.epoch != c + 1:
            self._send(link, Message(Kind.REFUSE, w, Reason.STALE), out)
        elif w in self.rec.aborted:
            self._send(link, Message(Kind.ABORT, w), out)
        elif self.wave is None:
            self._join(w, link, set(), out)
        elif self.wave.wave == w:
            self._answered(link, out)
        elif w < self.wave.wave:
            self._send(link, Message(Kind.REFUSE, w, Reason.CONFLICT), out)
        else:
            # A higher wave waits until ours is decided; ours cannot wait on it.
            self.deferred.setdefault(w, set()).add(link)

    def _on_accept(self, link: int, msg: Message, out: list[Action]) -> None:
        st = self.wave
        if st is not None and st.wave == msg.wave and link in st.waiting:
            st.children.add(link)
            self._answered(link, out)

    def _on_abort(self, link: int, msg: Message, out: list[Action]) -> None:
        w = msg.wave
        if w.epoch == self.rec.epoch + 1 and w not in self.rec.aborted:
            self._abort(w, out)

    def _on_commit(self, link: int, msg: Message, out: list[Action]) -> None:
        w, c = msg.wave, self.rec.epoch
        ls = self.links[link]
        if ls.heard is None or w.epoch > ls.heard:
            ls.heard = w.epoch
        if w.epoch == c + 1:
            st = self.wave
            if st is None or st.wave != w or not st.accepted:
                raise EpochSafetyError(
                    f"node {self.node_id}: COMMIT of {w} from {link}, but not prepared for it"
                )
            self._commit(w, st, out)
        elif w.epoch > c + 1:
            raise EpochSafetyError(f"node {self.node_id}: COMMIT of {w} while at epoch {c}")

    def _on_prepared(self, link: int, msg: Message, out: list[Action]) -> None:
        w = msg.wave
        if w in self.rec.aborted:
            self._send(link, Message(Kind.ABORT, w), out)
        elif w.epoch == self.rec.epoch + 1 and (self.wave is None or self.wave.wave != w):
            # We never prepared W (prepared is durable, and we are not in it): W cannot
            # have committed and we may refuse it. A node that restarted while joining W
            # is the one neighbour that can release a prepared node cut off from the rest.
            self._abort(w, out)

    def _on_done(self, link: int, msg: Message, out: list[Action]) -> None:
        if msg.wave == self.rec.committed:
            self.done_from.add(link)

    # ----------------------------------------------------------------- steps
    def _send(self, link: int, msg: Message, out: list[Action]) -> None:
        if self.links[link].up:
            out.append(Send(link, msg.encode()))

    def _join(self, w: Wave, parent: int | None, marked: set[int], out: list[Action]) -> None:
        others = [n for n in self.links if n != parent]
        st = _Wave(w, parent, {n for n in others if n not in marked})
        self.wave = st
        out.append(Capture(w))
        for n, ls in self.links.items():
            ls.log_open = n != parent and n not in marked
            ls.logged = 0
        if any(not self.links[n].up for n in st.waiting) or (
            parent is not None and not self.links[parent].up
        ):
            self._abort(w, out)
            return
        # PROPOSE on every other link, also to the `marked` neighbours (the senders of a
        # deferred wave, already answered): each of them waits for our crossing PROPOSE
        # as its answer, and it is our marker for the channel towards it.
        for n in others:
            self._send(n, Message(Kind.PROPOSE, w), out)
        self._progress(out)

    def _answered(self, link: int, out: list[Action]) -> None:
        st = self.wave
        assert st is not None
        st.waiting.discard(link)
        self.links[link].log_open = False
        self._progress(out)

    def _progress(self, out: list[Action]) -> None:
        st = self.wave
        if st is None or st.accepted or st.waiting or not st.written:
            return
        st.accepted = True
        log = tuple(sorted((n, ls.logged) for n, ls in self.links.items() if ls.logged))
        self.rec = self.rec.evolve(prepared_log=log)
        if st.parent is None:
            out.append(Decided(st.wave, True))
            self._commit(st.wave, st, out)
            return
        self.rec = self.rec.evolve(
            prepared=st.wave,
            prepared_parent=st.parent,
            prepared_children=frozenset(st.children),
        )
        out.append(Persist(self.rec))
        self._send(st.parent, Message(Kind.ACCEPT, st.wave), out)

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
            ls.log_open = False
            if ls.up:
                ls.told = w.epoch
                out.append(Send(n, Message(Kind.COMMIT, w).encode()))
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
            for ls in self.links.values():
                ls.log_open = False
        for n in self.links:
            self._send(n, Message(Kind.ABORT, w), out)
        self.deferred.pop(w, None)
        self._resume_deferred(out)

    def _resume_deferred(self, out: list[Action]) -> None:
        if self.wave is not None or not self.deferred:
            return
        pending, self.deferred = self.deferred, {}
        live = [w for w in pending if w.epoch == self.rec.epoch + 1 and w not in self.rec.aborted]
        best = max(live) if live else None
        for w, senders in pending.items():
            if w == best:
                continue
            reason = Reason.CONFLICT if w.epoch == self.rec.epoch + 1 else Reason.STALE
            for n in sorted(senders):
                self._send(n, Message(Kind.REFUSE, w, reason), out)
        if best is not None:
            senders = pending[best]
            parent = min(senders)
            self._join(best, parent, senders - {parent}, out)

    def _finish(self, out: list[Action]) -> list[Action]:
        self._check_links(out)
        return out

    def _check_links(self, out: list[Action]) -> None:
        """Announce link switches and send DONE / report Conv when the subtree is done."""
        c = self.rec.epoch
        all_switched = True
        for n, ls in self.links.items():
            tag = self.send_epoch(n)
            if tag is not None and ls.switched != tag:
                ls.switched = tag
                out.append(LinkEpoch(n, tag))
            if not (ls.up and ls.told == c and ls.heard == c):
                all_switched = False
        if c == 0 or not all_switched or not self.rec.tree_children <= self.done_from:
            return
        parent = self.rec.tree_parent
        if parent is None:
            if self.rec.committed.initiator == self.node_id and not self.converged_reported:
                self.converged_reported = True
                out.append(Converged(self.rec.committed))
        elif not self.done_sent and self.links[parent].up:
            self.done_sent = True
            out.append(Send(parent, Message(Kind.DONE, self.rec.committed).encode()))
