"""A deterministic discrete-event network for running epoch algorithms side by side.

Everything here is simulated — the clock is virtual (µs) and the links are models — so
results carry `"network": "simulated"`. Two link models, both what the AIT link layer
promises (docs/protocol.md, docs/convergence.md §1):

`Sim` (the baselines): per direction, messages and application frames are delivered
exactly once and in order (FIFO), after a one-way delay of rtt/2 with seeded jitter;
frame loss becomes retransmission delay (each loss adds `rto_us`), which also models
reordering below the link (the link re-establishes order); a link failure (flap, or a node
crash) aborts every transfer still in flight, on both ends: the sender is told
`transfer_aborted`, the receiver never sees it; a node processes CONTROL messages one at a
time, `proc_us` each (application frames wait behind them, keeping FIFO order).

`LegSim` (bilateral): gated links modelled leg by leg on oae.epoch.legs: each change of a
link end's registers sends one record, one such one-way delay later, so a transfer's
offer, hold, commit and report are each a leg; application frames are delivered in tid
order after their own legs, only into the epoch the receiving end carries; a failure
loses the records in flight and the round that brings the link back settles the rest.

Both: a node crash loses the process (volatile state) and keeps its durable store and the
checkpoints it finished writing; after `downtime` a fresh process is built from them. Per
directed link the simulator counts application frames sent and accepted, so that a
recovered state can be checked as a cut (`Sim.check_cut`): for every link u→v, frames v
had received at its capture plus frames in v's channel log must equal frames u had sent at
its capture and the link did not abort (an aborted frame returns to its sender) — no
orphan, no lost in-transit frame.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from oae.epoch import legs
from oae.errors import UsageError

SHAPES = ("chain", "ring", "star", "tree", "mesh", "grid")


@dataclass(frozen=True)
class Topology:
    """Nodes 0..n-1 and undirected edges."""

    name: str
    n: int
    edges: tuple[tuple[int, int], ...]

    def neighbours(self, v: int) -> list[int]:
        return sorted({b for a, b in self.edges if a == v} | {a for a, b in self.edges if b == v})

    def eccentricity(self, v: int) -> int:
        """Hops from v to the farthest node (breadth-first)."""
        adj = {i: self.neighbours(i) for i in range(self.n)}
        dist = {v: 0}
        frontier = [v]
        while frontier:
            nxt = []
            for u in frontier:
                for w in adj[u]:
                    if w not in dist:
                        dist[w] = dist[u] + 1
                        nxt.append(w)
            frontier = nxt
        if len(dist) != self.n:
            raise UsageError(f"topology {self.name!r} is not connected")
        return max(dist.values())


def make_topology(spec: str, nodes: int | None = None) -> Topology:
    """A shape name (ring, tree, ...; `nodes` sets the size, default 8) or a topology TOML
    file of the testbed (netns/*.toml), read with the testbed's own parser."""
    from oae.testbed.topology import load, shape_edges

    if spec in SHAPES:
        n = 8 if nodes is None else nodes
        if n < 2 or (spec == "ring" and n < 3):
            raise UsageError(f"--nodes {n} is too small for a {spec}")
        if n > 512:
            raise UsageError(f"--nodes {n} is too large (at most 512)")
        return Topology(spec, n, tuple(shape_edges(spec, n)))
    if not Path(spec).exists():
        raise UsageError(f"unknown topology {spec!r}: give one of {', '.join(SHAPES)} or a file")
    topo = load(spec, nodes)
    index = {name: i for i, name in enumerate(topo.nodes)}
    edges = tuple((index[link.a], index[link.b]) for link in topo.links)
    return Topology(topo.name, len(topo.nodes), edges)


@dataclass(frozen=True)
class NetParams:
    """Simulated link and fault parameters (times in µs)."""

    rtt_us: float = 40.0
    jitter: float = 0.2  # one-way delay uniform in rtt/2 * (1 ± jitter)
    loss: float = 0.0  # per transfer attempt; each loss adds rto_us
    rto_us: float = 120.0
    proc_us: float = 1.0  # CONTROL processing per message per node
    app_period_us: float = 10.0  # one application frame per directed link per period; 0: none
    persist_us: float = 200.0  # median checkpoint write latency (log-normal)
    persist_sigma: float = 0.5
    refuse_rate: float = 0.0  # probability that a checkpoint write fails
    downtime_us: tuple[float, float] = (100.0, 1000.0)


class Process:
    """What one node's algorithm exposes to the simulator. Callbacks act through `sim`;
    an algorithm overrides the events it cares about (the others are ignored)."""

    def start(self) -> None: ...
    def link_up(self, link: int) -> None: ...
    def link_down(self, link: int) -> None: ...
    def message(self, link: int, payload: bytes) -> None: ...
    def transfer_aborted(self, link: int, payload: bytes) -> None: ...
    def timer(self, token: object) -> None: ...
    def checkpoint_done(self, token: object, ok: bool) -> None: ...

    def send_epoch(self, link: int) -> int | None:
        """Tag for application frames on `link` now (None: hold them)."""
        raise NotImplementedError

    def frame_received(self, link: int, tag: int) -> tuple[bool, bool]:
        """An application frame tagged `tag` arrived on `link`: (accepted, mixed) — mixed
        when the frame's epoch is not the one this end is in on that link (and it is not
        recorded as channel state of a checkpoint)."""
        raise NotImplementedError

    def committed_epoch(self) -> int:
        """The epoch this node has durably committed (ground truth for frame checks)."""
        raise NotImplementedError


@dataclass
class Counts:
    """Application frames a node had sent / accepted per neighbour at a capture."""

    sent: dict[int, int]
    received: dict[int, int]


@dataclass
class NodeSlot:
    process: Process | None
    incarnation: int = 0
    busy_until: float = 0.0
    store: object = None  # the algorithm's durable store, kept across crashes
    captures: dict[int, Counts] = field(default_factory=dict)  # volatile until written
    checkpoints: dict[int, Counts] = field(default_factory=dict)  # durable


class Sim:
    """The event loop, links, faults and frame accounting."""

    def __init__(
        self,
        topo: Topology,
        params: NetParams,
        seed: int,
        factory: Callable[[Sim, int, list[int], object], Process],
        new_store: Callable[[], object],
    ) -> None:
        self.topo, self.p = topo, params
        self.rng = random.Random(seed)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.factory = factory
        self.nbrs = {v: topo.neighbours(v) for v in range(topo.n)}
        self.nodes = [NodeSlot(None, store=new_store()) for _ in range(topo.n)]
        zero = {v: {w: 0 for w in self.nbrs[v]} for v in range(topo.n)}
        for v, slot in enumerate(self.nodes):
            slot.checkpoints[0] = Counts(dict(zero[v]), dict(zero[v]))
        self.link_up_: dict[tuple[int, int], bool] = {}
        self.session: dict[tuple[int, int], int] = {}
        self.last_delivery: dict[tuple[int, int], float] = {}
        # in flight per direction: message id -> CONTROL payload, or the frame's number
        self.inflight: dict[tuple[int, int], dict[int, bytes | int]] = {}
        self.aborted_frames: dict[tuple[int, int], list[int]] = {}
        self.sent: dict[tuple[int, int], int] = {}
        self.received: dict[tuple[int, int], int] = {}
        self.held: dict[tuple[int, int], int] = {}
        for a, b in topo.edges:
            for d in ((a, b), (b, a)):
                self.sent[d] = self.received[d] = self.held[d] = 0
                self.inflight[d] = {}
                self.aborted_frames[d] = []
                self.last_delivery[d] = 0.0
            self.link_up_[_key(a, b)] = False
            self.session[_key(a, b)] = 0
        self.stats = {
            "control_messages": 0,
            "frames_sent": 0,
            "mixed_epoch_frames": 0,
            "uncommitted_tag_frames": 0,
            "held_frames": 0,
            "aborted_transfers": 0,
            "crashes": 0,
            "flaps": 0,
        }
        self._ids = 0
        self.one_way: list[float] = []  # CONTROL send -> handled, for the measured RTT

    # ------------------------------------------------------------ event loop
    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn))

    def run(self, until: Callable[[], bool], deadline: float) -> bool:
        """Process events until `until()` holds (True) or time passes `deadline` (False)."""
        while self._heap:
            if until():
                return True
            t, _, fn = self._heap[0]
            if t > deadline:
                break
            heapq.heappop(self._heap)
            self.now = t
            fn()
        if until():
            return True
        self.now = max(self.now, deadline)
        return False

    def boot(self) -> None:
        """Start every node and bring every link up."""
        for v in range(self.topo.n):
            self._spawn(v)
        for a, b in self.topo.edges:
            self._up(a, b)
        if self.p.app_period_us > 0:
            for d in self.sent:
                self.at(self.rng.uniform(0, self.p.app_period_us), self._app_tick(d))

    # ------------------------------------------------------------ node API
    def process(self, v: int) -> Process | None:
        return self.nodes[v].process

    def alive(self, v: int) -> bool:
        return self.nodes[v].process is not None

    def send(self, v: int, w: int, payload: bytes) -> None:
        """Node v sends a CONTROL transfer to neighbour w."""
        self.stats["control_messages"] += 1
        self._transmit(v, w, payload)

    def timer(self, v: int, delay: float, token: object) -> None:
        inc = self.nodes[v].incarnation

        def fire() -> None:
            slot = self.nodes[v]
            if slot.process is not None and slot.incarnation == inc:
                slot.process.timer(token)
                self._flush(v)

        self.at(self.now + delay, fire)

    def capture(self, v: int, epoch: int) -> None:
        """Node v snapshots its application state as the state of `epoch` (instant)."""
        slot = self.nodes[v]
        slot.captures[epoch] = Counts(
            {w: self.sent[(v, w)] for w in self.nbrs[v]},
            {w: self.received[(w, v)] for w in self.nbrs[v]},
        )

    def write_checkpoint(self, v: int, epoch: int, token: object) -> None:
        """Persist the latest capture of `epoch`; `checkpoint_done(token, ok)` after a
        log-normal latency (fails with probability `refuse_rate`)."""
        slot = self.nodes[v]
        inc = slot.incarnation
        capture = slot.captures[epoch]
        latency = self.p.persist_us * math.exp(self.rng.gauss(0.0, self.p.persist_sigma))
        ok = self.rng.random() >= self.p.refuse_rate

        def done() -> None:
            if slot.process is None or slot.incarnation != inc:
                return
            if ok and slot.captures.get(epoch) is capture:
                slot.checkpoints[epoch] = capture
            slot.process.checkpoint_done(token, ok)
            self._flush(v)

        self.at(self.now + latency, done)

    def discard(self, v: int, epoch: int) -> None:
        self.nodes[v].captures.pop(epoch, None)

    # ------------------------------------------------------------ faults
    def crash(self, v: int, downtime: float) -> None:
        """Kill node v's process now; restart it from its durable state after `downtime`."""
        slot = self.nodes[v]
        if slot.process is None:
            return
        self.stats["crashes"] += 1
        slot.process = None
        slot.incarnation += 1
        slot.captures.clear()
        for w in self.nbrs[v]:
            self._down(v, w)
        self.at(self.now + downtime, lambda: self._restart(v))

    def flap(self, a: int, b: int, downtime: float) -> None:
        if not self.link_up_[_key(a, b)]:
            return
        self.stats["flaps"] += 1
        self._down(a, b)

        def back() -> None:
            if self.alive(a) and self.alive(b) and not self.link_up_[_key(a, b)]:
                self._up(a, b)

        self.at(self.now + downtime, back)

    # ------------------------------------------------------------ cuts
    def check_cut(self, restored: dict[int, tuple[int, dict[int, int]]]) -> bool:
        """Is the state restored as {node: (epoch, channel log)} a consistent cut, every
        node at one and the same epoch, from checkpoints that exist?"""
        epochs = {e for e, _ in restored.values()}
        if len(epochs) != 1:
            return False
        for v, (e, _) in restored.items():
            if e not in self.nodes[v].checkpoints:
                return False
        for u, v in self.sent:
            eu, _ = restored[u]
            ev, log_v = restored[v]
            sent = self.nodes[u].checkpoints[eu].sent[v]
            sent -= bisect.bisect_right(self.aborted_frames[(u, v)], sent)
            got = self.nodes[v].checkpoints[ev].received[u] + log_v.get(u, 0)
            if got != sent:
                return False
        return True

    # ------------------------------------------------------------ internals
    def _spawn(self, v: int) -> None:
        slot = self.nodes[v]
        slot.process = self.factory(self, v, self.nbrs[v], slot.store)
        slot.busy_until = self.now
        slot.process.start()
        self._flush(v)

    def _restart(self, v: int) -> None:
        self._spawn(v)
        for w in self.nbrs[v]:
            if self.alive(w):
                self._up(v, w)

    def _up(self, a: int, b: int) -> None:
        self.link_up_[_key(a, b)] = True
        for x, y in ((a, b), (b, a)):
            self.last_delivery[(x, y)] = self.now
        for x, y in ((a, b), (b, a)):
            proc = self.nodes[x].process
            if proc is not None:
                proc.link_up(y)
                self._flush(x)

    def _down(self, a: int, b: int) -> None:
        k = _key(a, b)
        if not self.link_up_[k]:
            return
        self.link_up_[k] = False
        self.session[k] += 1
        for x, y in ((a, b), (b, a)):
            lost = self.inflight[(x, y)]
            self.inflight[(x, y)] = {}
            proc = self.nodes[x].process
            for item in lost.values():
                if isinstance(item, int):
                    # An aborted frame returns to its sender (AIT reversal): it was never
                    # sent, as far as any cut is concerned, and the sender sends it again.
                    self.aborted_frames[(x, y)].append(item)
                    if proc is not None:
                        self.held[(x, y)] += 1
            if proc is None:
                self.held[(x, y)] = 0
            else:
                proc.link_down(y)
                for item in lost.values():
                    if isinstance(item, bytes):
                        self.stats["aborted_transfers"] += 1
                        proc.transfer_aborted(y, item)
                self._flush(x)

    def _transmit(self, v: int, w: int, payload: bytes | None, tag: int = 0) -> None:
        d = (v, w)
        k = _key(v, w)
        if not self.link_up_[k]:
            if payload is not None:
                self.stats["aborted_transfers"] += 1
                self.at(self.now, self._aborted_later(v, w, payload))
            return
        p = self.p
        delay = p.rtt_us / 2 * (1 + p.jitter * self.rng.uniform(-1, 1))
        while p.loss > 0 and self.rng.random() < p.loss:
            delay += p.rto_us
        t = max(self.now + delay, self.last_delivery[d])
        self.last_delivery[d] = t
        self._ids += 1
        mid = self._ids
        self.inflight[d][mid] = self.sent[d] if payload is None else payload
        session = self.session[k]
        sent_at = self.now
        self.at(t, lambda: self._arrive(v, w, mid, session, payload, tag, sent_at))

    def _aborted_later(self, v: int, w: int, payload: bytes) -> Callable[[], None]:
        inc = self.nodes[v].incarnation

        def fire() -> None:
            slot = self.nodes[v]
            if slot.process is not None and slot.incarnation == inc:
                slot.process.transfer_aborted(w, payload)
                self._flush(v)

        return fire

    def _arrive(
        self, v: int, w: int, mid: int, session: int, payload: bytes | None, tag: int, sent: float
    ) -> None:
        if self.session[_key(v, w)] != session:
            return
        slot = self.nodes[w]
        start = max(self.now, slot.busy_until)
        if payload is not None:
            start += self.p.proc_us
            slot.busy_until = start
            self.one_way.append(start - sent)
        self.at(start, lambda: self._handle(v, w, mid, session, payload, tag))

    def _handle(
        self, v: int, w: int, mid: int, session: int, payload: bytes | None, tag: int
    ) -> None:
        if self.session[_key(v, w)] != session:
            return
        self.inflight[(v, w)].pop(mid, None)
        proc = self.nodes[w].process
        if proc is None:
            return
        if payload is None:
            accepted, mixed = proc.frame_received(v, tag)
            if accepted:
                self.received[(v, w)] += 1
            if mixed:
                self.stats["mixed_epoch_frames"] += 1
        else:
            proc.message(v, payload)
        self._flush(w)

    def _app_tick(self, d: tuple[int, int]) -> Callable[[], None]:
        def tick() -> None:
            v, w = d
            proc = self.nodes[v].process
            if proc is not None and self.link_up_[_key(v, w)]:
                self.held[d] += 1
                self._flush(v)
                if self.held[d]:
                    self.stats["held_frames"] += 1
            self.at(self.now + self.p.app_period_us, tick)

        return tick

    def _flush(self, v: int) -> None:
        """Send node v's pending application frames on every link that is not on hold."""
        proc = self.nodes[v].process
        if proc is None:
            return
        for w in self.nbrs[v]:
            d = (v, w)
            n = self.held[d]
            if not n or not self.link_up_[_key(v, w)]:
                continue
            tag = proc.send_epoch(w)
            if tag is None:
                continue
            self.held[d] = 0
            both = min(proc.committed_epoch(), self._committed(w))
            for _ in range(n):
                self.sent[d] += 1
                self.stats["frames_sent"] += 1
                # Ground truth of the contract: a tag the two ends have not both committed.
                if tag > both:
                    self.stats["uncommitted_tag_frames"] += 1
                self._transmit(v, w, None, tag)

    def _committed(self, v: int) -> int:
        proc = self.nodes[v].process
        if proc is not None:
            return proc.committed_epoch()
        return max(self.nodes[v].checkpoints)


def _key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


class GatedProcess(Process):
    """A process on gated links (LegSim): every link event reaches it through
    `link_event`, in the engine's order, and it acts through the LegSim calls."""

    def link_event(self, link: int, ev: LinkEvent) -> bool:
        """Handle one event of the link to `link`; for a delivered application frame,
        return whether it was accepted (False: mixed-epoch)."""
        raise NotImplementedError

    def app_sent(self, link: int) -> None:
        """An application frame to `link` was submitted."""


@dataclass(frozen=True)
class LinkUp:
    """The link is LIVE again (after its round)."""


@dataclass(frozen=True)
class LinkDown:
    """The link failed or was reset."""


LinkEvent = LinkUp | LinkDown | legs.Event


class LegSim(Sim):
    """The simulated network with gated links modelled leg by leg (oae.epoch.legs): every
    change of a link end's registers sends the peer one record, a one-way delay later
    (jitter and loss as in Sim, FIFO per direction), so a transfer is held, committed,
    delivered and reported each one leg after the step before; an application frame is
    delivered in tid order after its own three legs, and only into the epoch its
    receiving end carries. A failure aborts the records in flight; the round that brings
    the link back (after the flap, the restart, or a reset's rediscovery of one round
    trip) settles what was undecided (legs.reconcile). Each link event that concerns a
    CONTROL transfer costs `proc_us` at its node, in the order the events came."""

    def __init__(
        self,
        topo: Topology,
        params: NetParams,
        seed: int,
        factory: Callable[[Sim, int, list[int], object], Process],
        new_store: Callable[[], object],
    ) -> None:
        super().__init__(topo, params, seed, factory, new_store)
        self.ends = {d: legs.GatedEnd() for d in self.sent}
        self.last_sent: dict[tuple[int, int], legs.Record | None] = dict.fromkeys(self.sent)
        self.peer_epoch = {d: 0 for d in self.sent}  # epoch of the last record from the peer
        # application frames delivered by the engine, not yet handled by the process
        self.unhandled = {d: 0 for d in self.sent}

    # ------------------------------------------------------------ node calls
    def offer(self, v: int, w: int, payload: bytes, gated: bool) -> None:
        """Node v submits a CONTROL transfer to w (queued until the link can offer it)."""
        self.stats["control_messages"] += 1
        self.ends[(v, w)].submit(payload, control=True, gated=gated)
        self._send_record(v, w)

    def gate(self, v: int, w: int, call: str, tid: int) -> None:
        """Node v's hold/refuse/commit/report of `tid` on its end towards w (a call on a
        link that went down meanwhile fails, as the engine's does)."""
        getattr(self.ends[(v, w)], call)(tid)
        self._send_record(v, w)

    def reset(self, v: int, w: int) -> None:
        """Node v resets its link to w: both ends go down, rediscover each other in one
        round trip, and reconcile."""
        if not self.link_up_[_key(v, w)]:
            return
        self._down(v, w)

        def back() -> None:
            if self.alive(v) and self.alive(w) and not self.link_up_[_key(v, w)]:
                self._up(v, w)

        self.at(self.now + self.p.rtt_us, back)

    def set_epoch(self, v: int, w: int, epoch: int) -> None:
        """Node v's end towards w carries `epoch` (it wakes the link: a record goes out)."""
        self.ends[(v, w)].set_epoch(epoch)
        self._send_record(v, w, force=True)

    # ------------------------------------------------------------ links
    def _spawn(self, v: int) -> None:
        slot = self.nodes[v]
        slot.process = self.factory(self, v, self.nbrs[v], slot.store)
        for w in self.nbrs[v]:
            self.ends[(v, w)].set_epoch(slot.process.committed_epoch())
        slot.busy_until = self.now
        slot.process.start()
        self._flush(v)

    def crash(self, v: int, downtime: float) -> None:
        if self.nodes[v].process is not None:
            for w in self.nbrs[v]:
                self._dispatch(v, w, self.ends[(v, w)].crash())
                # A delivery is stored with the application's effect (docs/protocol.md
                # §7.8): frames the process had not handled yet are received all the same.
                self.received[(w, v)] += self.unhandled[(w, v)]
                self.unhandled[(w, v)] = 0
        super().crash(v, downtime)

    def _down(self, a: int, b: int) -> None:
        k = _key(a, b)
        if not self.link_up_[k]:
            return
        self.link_up_[k] = False
        self.session[k] += 1
        for x, y in ((a, b), (b, a)):
            self.ends[(x, y)].down()
            if self.nodes[x].process is None:
                self.held[(x, y)] = 0
            self._dispatch(x, y, [LinkDown()])

    def _up(self, a: int, b: int) -> None:
        k = _key(a, b)
        self.link_up_[k] = True
        ev_a, ev_b = legs.reconcile(self.ends[(a, b)], self.ends[(b, a)])
        for x, y, events in ((a, b, ev_a), (b, a, ev_b)):
            self.last_sent[(x, y)] = None
            self._dispatch(x, y, [*events, LinkUp()])
        for x, y in ((a, b), (b, a)):
            self._send_record(x, y)

    def _send_record(self, v: int, w: int, force: bool = False) -> None:
        """Send v's record to w if it says something new (or `force`: a wake-up)."""
        d = (v, w)
        k = _key(v, w)
        if not self.link_up_[k]:
            return
        rec = self.ends[d].record()
        if rec == self.last_sent[d] and not force:
            return
        self.last_sent[d] = rec
        p = self.p
        delay = p.rtt_us / 2 * (1 + p.jitter * self.rng.uniform(-1, 1))
        while p.loss > 0 and self.rng.random() < p.loss:
            delay += p.rto_us
        t = max(self.now + delay, self.last_delivery[d])
        self.last_delivery[d] = t
        session, sent_at = self.session[k], self.now

        def arrive() -> None:
            if self.session[k] != session:
                return
            end = self.ends[(w, v)]
            events = end.receive(rec)
            wake = rec.epoch != self.peer_epoch[(w, v)]
            self.peer_epoch[(w, v)] = rec.epoch
            self._dispatch(w, v, events, sent_at)
            # The engine answers: what it took and settled, or (a new epoch at the peer)
            # its unreflected offers again, which the peer may now hold.
            self._send_record(w, v, force=wake and end.has_unreflected())

        self.at(t, arrive)

    def _dispatch(
        self, v: int, w: int, events: list[LinkEvent], sent_at: float | None = None
    ) -> None:
        """Queue link events for node v's process, each after those before it, the ones
        about CONTROL transfers costing `proc_us`."""
        slot = self.nodes[v]
        inc = slot.incarnation
        for ev in events:
            app = isinstance(ev, legs.Delivered | legs.Outcome) and not ev.xfer.control
            if isinstance(ev, legs.Outcome):
                if app and not ev.committed:
                    # An aborted frame returns to its sender: it was never sent, as far as
                    # any cut is concerned, and the sender sends it again.
                    number, _ = ev.xfer.data  # type: ignore[misc]
                    bisect.insort(self.aborted_frames[(v, w)], number)
                    if slot.process is not None and not ev.restored:
                        self.held[(v, w)] += 1
                if ev.restored:
                    continue  # the previous life's transfer: its process is gone
            if app and isinstance(ev, legs.Delivered):
                self.unhandled[(w, v)] += 1
            start = max(self.now, slot.busy_until)
            if isinstance(ev, legs.Event) and not app:
                start += self.p.proc_us
                if sent_at is not None:
                    self.one_way.append(start - sent_at)
            slot.busy_until = start
            self.at(start, lambda ev=ev: self._handle_event(v, w, inc, ev))

    def _handle_event(self, v: int, w: int, inc: int, ev: LinkEvent) -> None:
        slot = self.nodes[v]
        proc = slot.process
        if proc is None or slot.incarnation != inc:
            return
        assert isinstance(proc, GatedProcess)
        accepted = proc.link_event(w, ev)
        if isinstance(ev, legs.Delivered) and not ev.xfer.control:
            self.unhandled[(w, v)] -= 1
            if accepted:
                self.received[(w, v)] += 1
            else:
                self.stats["mixed_epoch_frames"] += 1
        self._flush(v)

    def _flush(self, v: int) -> None:
        """Submit node v's pending application frames on every link not on hold, each
        tagged with the link end's epoch."""
        proc = self.nodes[v].process
        if proc is None:
            return
        assert isinstance(proc, GatedProcess)
        for w in self.nbrs[v]:
            d = (v, w)
            n = self.held[d]
            if not n or not self.link_up_[_key(v, w)]:
                continue
            tag = proc.send_epoch(w)
            if tag is None:
                continue
            self.held[d] = 0
            both = min(proc.committed_epoch(), self._committed(w))
            for _ in range(n):
                self.sent[d] += 1
                self.stats["frames_sent"] += 1
                if tag > both:
                    self.stats["uncommitted_tag_frames"] += 1
                self.ends[d].submit((self.sent[d], tag))
                proc.app_sent(w)
            self._send_record(v, w)
