"""Baselines run on the same simulated links as the bilateral protocol.

FITO (they equate Snap(t) with Conv(P, e)):
- `snap-t`: every node checkpoints at its own clock's time t (clock skew, log-normal
  persistence latency) while application traffic continues.
- `rolling`: every node flips its protocol version at its own time.

Classic, correct under their own assumptions:
- `2pc`: a coordinator (the initiator) prepares every node (capture + hold), commits, and
  releases them; messages are relayed hop by hop along shortest paths.
- `chandy-lamport`: marker snapshot; channel state recorded; no commit, no abort.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from oae.epoch.sim import Process, Sim, Topology


@dataclass
class SimpleStore:
    """Durable state of a baseline node: its latest durable epoch and channel log."""

    epoch: int = 0
    log: dict[int, int] = field(default_factory=dict)
    prepared: int | None = None  # 2pc participant: voted yes for this epoch
    coordinating: int | None = None  # 2pc coordinator: undecided epoch
    coordinator: int = 0  # 2pc participant: whom to ask for the decision
    committed_tx: int = 0  # 2pc: the transaction that committed `epoch`
    led: int = 0  # 2pc: the last transaction this node coordinated to a commit
    released: int = 0  # 2pc: highest epoch whose application traffic is released


class _Tracker:
    """Ground truth over all nodes for one target epoch: who has it durably, who missed it."""

    def __init__(self) -> None:
        self.target = 0
        self.done: dict[int, float] = {}
        self.missed: set[int] = set()
        self.n = 0

    def reset(self, target: int, n: int) -> None:
        self.target, self.n = target, n
        self.done, self.missed = {}, set()

    def outcome(self) -> tuple[str, float] | None:
        if self.target == 0 or len(self.done) + len(self.missed - set(self.done)) < self.n:
            return None
        if self.missed - set(self.done):
            return "aborted", max(self.done.values(), default=0.0)
        return "committed", max(self.done.values())


# --------------------------------------------------------------------------- snap-t
class _ClockProcess(Process):
    """A node that enters epochs on its own clock; tags frames with its current epoch."""

    def __init__(self, sim: Sim, v: int, store: SimpleStore, algo: _ClockAlgo) -> None:
        self.sim, self.v, self.store, self.algo = sim, v, store, algo
        self.current = store.epoch

    def enter(self, epoch: int) -> None:
        raise NotImplementedError

    def send_epoch(self, link: int) -> int | None:
        return self.current

    def frame_received(self, link: int, tag: int) -> tuple[bool, bool]:
        # FITO nodes apply whatever arrives; a frame from another epoch is mixed.
        return True, tag != self.current

    def committed_epoch(self) -> int:
        return self.store.epoch


class _SnapProcess(_ClockProcess):
    def enter(self, epoch: int) -> None:
        self.current = epoch
        self.sim.capture(self.v, epoch)
        self.sim.write_checkpoint(self.v, epoch, epoch)

    def checkpoint_done(self, token: object, ok: bool) -> None:
        assert isinstance(token, int)
        if ok and token > self.store.epoch:
            self.store.epoch = token
            self.algo.tracker.done.setdefault(self.v, self.sim.now)
        elif not ok:
            self.algo.tracker.missed.add(self.v)


class _RollingProcess(_ClockProcess):
    def enter(self, epoch: int) -> None:
        self.current = epoch
        self.store.epoch = epoch  # the new version is installed and durable at once
        self.algo.tracker.done.setdefault(self.v, self.sim.now)


class _ClockAlgo:
    """Shared scheduling of clock-driven baselines: node v acts at t + skew_v."""

    name = ""
    checks_cut = True
    process_class: type[_ClockProcess] = _ClockProcess

    def __init__(self, skew_us: float = 50.0, lead_us: float = 100.0) -> None:
        self.skew_us, self.lead_us = skew_us, lead_us
        self.tracker = _Tracker()
        self.skews: dict[int, float] = {}

    def factory(self, sim: Sim, v: int, nbrs: list[int], store: object) -> Process:
        assert isinstance(store, SimpleStore)
        if self.tracker.target and store.epoch < self.tracker.target:
            # Restarted after a crash without the target epoch durable: it missed it.
            self.tracker.missed.add(v)
        return self.process_class(sim, v, store, self)

    @staticmethod
    def new_store() -> SimpleStore:
        return SimpleStore()

    def begin(self, sim: Sim, initiator: int) -> bool:
        target = self.tracker.target + 1
        self.tracker.reset(target, sim.topo.n)
        t = sim.now + self.lead_us
        for v in range(sim.topo.n):
            if v not in self.skews:
                self.skews[v] = sim.rng.gauss(0.0, self.skew_us)
            drift = sim.rng.gauss(0.0, self.skew_us / 4)
            at = max(sim.now, t + self.skews[v] + drift)
            sim.at(at, lambda v=v: self._fire(sim, v, target))
        return True

    def _fire(self, sim: Sim, v: int, target: int) -> None:
        proc = sim.process(v)
        if isinstance(proc, _ClockProcess):
            proc.enter(target)
        else:
            self.tracker.missed.add(v)

    def outcome(self) -> tuple[str, float] | None:
        return self.tracker.outcome()

    def all_links_time(self) -> float | None:
        out = self.tracker.outcome()
        return out[1] if out else None

    def critical_path_exchanges(self, topo: Topology, initiator: int) -> float:
        return 0.0  # no messages: the schedule was fixed in advance

    def recovered(self, sim: Sim) -> dict[int, tuple[int, dict[int, int]]]:
        """Every node restores its latest durable checkpoint."""
        return {v: (slot.store.epoch, {}) for v, slot in enumerate(sim.nodes)}  # type: ignore[attr-defined]


class SnapT(_ClockAlgo):
    """`snap-t`: checkpoint at local clock time t."""

    name = "snap-t"
    process_class = _SnapProcess


class Rolling(_ClockAlgo):
    """`rolling`: each node flips its protocol version at its own time."""

    name = "rolling"
    checks_cut = False  # a version flip has no application checkpoint
    process_class = _RollingProcess


# --------------------------------------------------------------------------- 2pc
PREPARE, YES, NO, COMMIT, ACK, RELEASE, RACK, ABORT, ASK = range(1, 10)
_MSG = struct.Struct(">BHHI")  # type, destination, source, transaction id: 9 bytes


def _epoch(tx: int) -> int:
    """A 2pc transaction id is epoch << 16 | attempt."""
    return tx >> 16


class _Routed(Process):
    """Hop-by-hop relaying along shortest paths (lost if a hop is down; timers retry)."""

    def __init__(self, sim: Sim, v: int, store: SimpleStore, algo: TwoPC) -> None:
        self.sim, self.v, self.store, self.algo = sim, v, store, algo

    def route(self, dst: int, kind: int, tx: int) -> None:
        if dst == self.v:
            self.handle(kind, self.v, tx)
        else:
            payload = _MSG.pack(kind, dst, self.v, tx)
            self.sim.send(self.v, self.algo.next_hop(self.sim.topo, self.v, dst), payload)

    def message(self, link: int, payload: bytes) -> None:
        kind, dst, src, tx = _MSG.unpack(payload)
        if dst != self.v:
            self.sim.send(self.v, self.algo.next_hop(self.sim.topo, self.v, dst), payload)
        else:
            self.handle(kind, src, tx)

    def handle(self, kind: int, src: int, tx: int) -> None:
        raise NotImplementedError


class _TwoPCProcess(_Routed):
    def __init__(self, sim: Sim, v: int, store: SimpleStore, algo: TwoPC) -> None:
        super().__init__(sim, v, store, algo)
        self.tx = store.prepared or 0  # the transaction whose capture we hold
        self.logging: dict[int, int] | None = None
        self.votes: set[int] = set()
        self.acks: set[int] = set()
        self.racks: set[int] = set()
        self.written = False

    @property
    def holding(self) -> bool:
        """From the capture until released (also after a restart while prepared)."""
        s = self.store
        busy = s.prepared is not None or s.coordinating is not None or s.released < s.epoch
        return busy or self.logging is not None

    def send_epoch(self, link: int) -> int | None:
        return None if self.holding else self.store.epoch

    def frame_received(self, link: int, tag: int) -> tuple[bool, bool]:
        if tag == self.store.epoch and self.logging is not None:
            self.logging[link] = self.logging.get(link, 0) + 1
        return True, tag != self.store.epoch

    def committed_epoch(self) -> int:
        return self.store.epoch

    def start(self) -> None:
        s = self.store
        if s.coordinating is not None:
            # Presumed abort: a coordinator that restarts undecided aborts.
            tx, s.coordinating = s.coordinating, None
            self.algo.decide(tx, False, self.sim.now)
            self.sim.timer(self.v, self.algo.retry_us, ("abort", tx))
        if s.prepared is not None:
            self.sim.timer(self.v, self.algo.retry_us, ("ask", s.prepared))
        if s.led and s.led == s.committed_tx and s.released < s.epoch:
            # Committed before the crash, acks lost with the process: ask again.
            self.tx = s.led
            self.sim.timer(self.v, self.algo.retry_us, ("resend", s.led))

    def others(self) -> list[int]:
        return [x for x in range(self.sim.topo.n) if x != self.v]

    def coordinate(self, tx: int) -> bool:
        s = self.store
        if self.holding or _epoch(tx) != s.epoch + 1:
            return False
        s.coordinating = tx
        self.votes, self.acks, self.racks = set(), set(), set()
        self._capture(tx)
        for x in self.others():
            self.route(x, PREPARE, tx)
        self.sim.timer(self.v, self.algo.timeout_us, ("timeout", tx))
        return True

    def _capture(self, tx: int) -> None:
        self.tx, self.written, self.logging = tx, False, {}
        self.sim.capture(self.v, _epoch(tx))
        self.sim.write_checkpoint(self.v, _epoch(tx), tx)

    def checkpoint_done(self, token: object, ok: bool) -> None:
        s = self.store
        if token != self.tx:
            return
        if s.coordinating == token:
            if not ok:
                self._abort_all(token)
            else:
                self.written = True
                self._maybe_commit(token)
        elif self.logging is not None and s.prepared is None:
            if ok:
                s.prepared = token
                self.route(s.coordinator, YES, token)
                self.sim.timer(self.v, self.algo.retry_us, ("ask", token))
            else:
                self.route(s.coordinator, NO, token)
                self._drop(token)

    def _drop(self, tx: int) -> None:
        self.store.prepared, self.logging = None, None
        self.sim.discard(self.v, _epoch(tx))

    def _maybe_commit(self, tx: int) -> None:
        s = self.store
        if self.written and len(self.votes) == self.sim.topo.n - 1:
            s.epoch, s.coordinating, s.committed_tx, s.led = _epoch(tx), None, tx, tx
            s.log, self.logging = dict(self.logging or {}), None
            self.algo.decide(tx, True, self.sim.now)
            for x in self.others():
                self.route(x, COMMIT, tx)
            self._maybe_release(tx)
            self.sim.timer(self.v, self.algo.retry_us, ("resend", tx))

    def _maybe_release(self, tx: int) -> None:
        if len(self.acks) == self.sim.topo.n - 1 and self.store.released < _epoch(tx):
            for x in self.others():
                self.route(x, RELEASE, tx)
            self._released(tx)

    def _released(self, tx: int) -> None:
        self.store.released = _epoch(tx)
        self.algo.tracker.done.setdefault(self.v, self.sim.now)

    def _abort_all(self, tx: int) -> None:
        self.store.coordinating = None
        self._drop(tx)
        self.algo.decide(tx, False, self.sim.now)
        for x in self.others():
            self.route(x, ABORT, tx)

    def timer(self, token: object) -> None:
        kind, tx = token  # type: ignore[misc]
        s = self.store
        if kind == "timeout" and s.coordinating == tx:
            self._abort_all(tx)
        elif kind == "abort":
            for x in self.others():
                self.route(x, ABORT, tx)
        elif kind == "ask" and s.prepared == tx:
            self.route(s.coordinator, ASK, tx)
            self.sim.timer(self.v, self.algo.retry_us, token)
        elif kind == "resend" and s.committed_tx == tx and len(self.racks) < len(self.others()):
            for x in self.others():
                if x not in self.acks:
                    self.route(x, COMMIT, tx)
                elif x not in self.racks and s.released >= _epoch(tx):
                    self.route(x, RELEASE, tx)
            self.sim.timer(self.v, self.algo.retry_us, token)

    def handle(self, kind: int, src: int, tx: int) -> None:
        s, e = self.store, _epoch(tx)
        if kind == PREPARE:
            if s.epoch >= e:
                self.route(src, ACK, tx)
            elif s.prepared == tx:
                self.route(src, YES, tx)
            elif e == s.epoch + 1 and tx > self.tx and s.coordinating is None:
                # A newer attempt: the coordinator aborted every older one first.
                s.coordinator, s.prepared = src, None
                self._capture(tx)
        elif kind == YES and s.coordinating == tx:
            self.votes.add(src)
            self._maybe_commit(tx)
        elif kind == NO and s.coordinating == tx:
            self._abort_all(tx)
        elif kind == COMMIT:
            if s.prepared == tx:
                s.epoch, s.prepared, s.committed_tx = e, None, tx
                s.log, self.logging = dict(self.logging or {}), None
            if s.epoch >= e:
                self.route(src, ACK, tx)
        elif kind == ACK and s.committed_tx == tx == self.tx:
            self.acks.add(src)
            self._maybe_release(tx)
        elif kind == RELEASE and s.epoch >= e:
            if s.released < e:
                self._released(tx)
            self.route(src, RACK, tx)
        elif kind == RACK and tx == self.tx:
            self.racks.add(src)
        elif kind == ABORT and self.tx == tx and s.epoch < e:
            self._drop(tx)
        elif kind == ASK:
            if s.committed_tx == tx:
                self.route(src, COMMIT, tx)
            elif s.coordinating != tx:
                self.route(src, ABORT, tx)


class TwoPC:
    """`2pc`: the initiator coordinates; votes, commit, acks and release are relayed."""

    name = "2pc"
    checks_cut = True

    def __init__(self) -> None:
        self.tracker = _Tracker()
        self.decision: tuple[bool, float] | None = None
        self._hops: dict[int, dict[int, int]] = {}
        self.timeout_us = 0.0
        self.retry_us = 0.0
        self.attempts = 0  # unique transaction ids across coordinators and restarts

    def next_hop(self, topo: Topology, v: int, dst: int) -> int:
        """First hop from v towards dst on a shortest path (BFS from dst, cached)."""
        if dst not in self._hops:
            parent = {dst: dst}
            frontier = [dst]
            while frontier:
                nxt = []
                for u in frontier:
                    for w in topo.neighbours(u):
                        if w not in parent:
                            parent[w] = u
                            nxt.append(w)
                frontier = nxt
            self._hops[dst] = parent
        return self._hops[dst][v]

    def factory(self, sim: Sim, v: int, nbrs: list[int], store: object) -> Process:
        assert isinstance(store, SimpleStore)
        ecc = max(sim.topo.eccentricity(0), 1)
        self.retry_us = 8 * ecc * sim.p.rtt_us + 2 * sim.p.persist_us
        self.timeout_us = 4 * self.retry_us
        return _TwoPCProcess(sim, v, store, self)

    @staticmethod
    def new_store() -> SimpleStore:
        return SimpleStore()

    def decide(self, tx: int, committed: bool, now: float) -> None:
        if _epoch(tx) == self.tracker.target:
            self.decision = (committed, now)

    def begin(self, sim: Sim, initiator: int) -> bool:
        proc = sim.process(initiator)
        if not isinstance(proc, _TwoPCProcess):
            return False
        target = proc.store.epoch + 1
        self.attempts += 1
        if not proc.coordinate(target << 16 | (self.attempts & 0xFFFF)):
            return False
        self.tracker.reset(target, sim.topo.n)
        self.decision = None
        return True

    def outcome(self) -> tuple[str, float] | None:
        if self.decision is not None and not self.decision[0]:
            return "aborted", self.decision[1]
        if len(self.tracker.done) == self.tracker.n and self.tracker.target:
            return "committed", max(self.tracker.done.values())
        return None

    def all_links_time(self) -> float | None:
        out = self.outcome()
        return out[1] if out and out[0] == "committed" else None

    def critical_path_exchanges(self, topo: Topology, initiator: int) -> float:
        """prepare/vote, commit/ack, release: 2.5 x eccentricity round trips."""
        return 2.5 * topo.eccentricity(initiator)

    def recovered(self, sim: Sim) -> dict[int, tuple[int, dict[int, int]]]:
        """Restart everyone: a prepared participant learns the coordinator's durable
        decision (committed iff the coordinator's epoch reached it)."""
        return restore_2pc([slot.store for slot in sim.nodes])  # type: ignore[misc]


def restore_2pc(stores: list[SimpleStore]) -> dict[int, tuple[int, dict[int, int]]]:
    """What 2pc nodes restart to from their durable stores, {node: (epoch, channel log)}:
    its own committed epoch, or, if prepared, the coordinator's durable decision (used
    by the simulation and by the testbed's probes alike)."""
    out = {}
    for v, s in enumerate(stores):
        assert isinstance(s, SimpleStore)
        e, log = s.epoch, dict(s.log)
        if s.prepared is not None:
            coord = stores[s.coordinator]
            assert isinstance(coord, SimpleStore)
            if coord.committed_tx == s.prepared:
                # Committed, but the channel log was only to be written at COMMIT.
                e, log = _epoch(s.prepared), {}
        out[v] = (e, log)
    return out


# --------------------------------------------------------------------------- chandy-lamport
class _CLProcess(Process):
    def __init__(self, sim: Sim, v: int, store: SimpleStore, algo: ChandyLamport) -> None:
        self.sim, self.v, self.store, self.algo = sim, v, store, algo
        self.current = store.epoch
        self.open: set[int] = set()
        self.logged: dict[int, int] = {}
        self.written = False

    def record(self, epoch: int, via: int | None) -> None:
        self.current, self.written, self.logged = epoch, False, {}
        nbrs = self.sim.nbrs[self.v]
        self.open = {n for n in nbrs if n != via}
        self.sim.capture(self.v, epoch)
        self.sim.write_checkpoint(self.v, epoch, epoch)
        for n in nbrs:
            self.sim.send(self.v, n, struct.pack(">I", epoch))

    def message(self, link: int, payload: bytes) -> None:
        (epoch,) = struct.unpack(">I", payload)
        if epoch > self.current:
            self.record(epoch, link)
        elif epoch == self.current:
            self.open.discard(link)
        self._complete()

    def link_down(self, link: int) -> None:
        if link in self.open:
            self.algo.tracker.missed.add(self.v)  # the channel state is lost

    def checkpoint_done(self, token: object, ok: bool) -> None:
        if token == self.current:
            self.written = ok
            if not ok:
                self.algo.tracker.missed.add(self.v)
            self._complete()

    def _complete(self) -> None:
        if self.written and not self.open and self.store.epoch < self.current:
            self.store.epoch, self.store.log = self.current, dict(self.logged)
            self.algo.tracker.done.setdefault(self.v, self.sim.now)

    def send_epoch(self, link: int) -> int | None:
        return self.current

    def frame_received(self, link: int, tag: int) -> tuple[bool, bool]:
        if tag == self.current - 1 and link in self.open:
            self.logged[link] = self.logged.get(link, 0) + 1
            return True, False
        return True, tag != self.current

    def committed_epoch(self) -> int:
        return self.store.epoch


class ChandyLamport(_ClockAlgo):
    """`chandy-lamport`: the initiator records and sends markers; no commit phase."""

    name = "chandy-lamport"

    def factory(self, sim: Sim, v: int, nbrs: list[int], store: object) -> Process:
        assert isinstance(store, SimpleStore)
        if self.tracker.target and store.epoch < self.tracker.target:
            self.tracker.missed.add(v)
        return _CLProcess(sim, v, store, self)

    def begin(self, sim: Sim, initiator: int) -> bool:
        proc = sim.process(initiator)
        if not isinstance(proc, _CLProcess):
            return False
        target = max(self.tracker.target, proc.current) + 1
        self.tracker.reset(target, sim.topo.n)
        proc.record(target, None)
        return True

    def critical_path_exchanges(self, topo: Topology, initiator: int) -> float:
        """A one-way marker wave over the eccentricity, and the last marker back."""
        return (topo.eccentricity(initiator) + 1) / 2

    def recovered(self, sim: Sim) -> dict[int, tuple[int, dict[int, int]]]:
        return {v: (slot.store.epoch, dict(slot.store.log)) for v, slot in enumerate(sim.nodes)}  # type: ignore[attr-defined]
