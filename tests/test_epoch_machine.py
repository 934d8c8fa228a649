"""The sans-I/O epoch machine on gated links, against the atomic-commit model, under
random schedules.

The harness below is a tiny adversarial network of gated AIT links at the level of their
records (oae.epoch.legs): per directed link the engine's registers at both ends and a
queue of records in flight, each a snapshot of the sender's registers and unreflected
offers. Hypothesis chooses every step: which end sends a record, which record arrives
(any of those in flight: records are cumulative) or is lost, who proposes, whether a
checkpoint write succeeds, which node crashes (volatile state and its engine's volatile
registers lost, durable ones kept) or restarts, which link fails or comes back (a round
reconciles it with rec_commit), and application frames tagged with the sender's epoch.
Engine events reach the machines through one queue, in order, so a machine may act on a
link its engine already took down. Safety is checked after every step (one wave per
epoch, no commit of an aborted wave, no rollback, application frames only under an epoch
both ends committed and only into the epoch the receiving end carries, the link's own
agreement); liveness once the faults stop (every wave decided, one epoch everywhere,
every link switched, Conv known, every committed epoch a consistent cut).
"""

from __future__ import annotations

import bisect
import os
from collections import deque
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oae.epoch import legs
from oae.epoch.durable import DurableError, DurableRecord, FileStore, MemoryStore
from oae.epoch.machine import (
    Action,
    Capture,
    Commit,
    Converged,
    Decided,
    Discard,
    EpochMachine,
    Hold,
    LinkEpoch,
    Offer,
    Persist,
    Refuse,
    Report,
    Reset,
)
from oae.epoch.messages import Kind, Message, MessageError, Wave, decode


# ------------------------------------------------------------------ messages, durable
@pytest.mark.parametrize("kind", list(Kind))
def test_message_roundtrip_fits_a_transfer(kind: Kind) -> None:
    msg = Message(kind, Wave(7, 3, 0xFFFFFFFF))
    raw = msg.encode()
    assert len(raw) <= 16
    assert decode(raw) == msg


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"\x01" + bytes(12), "not an epoch message"),
        (b"\xef" + bytes(12), "unknown epoch message type"),
        (b"\xe2" + bytes(12), "unknown epoch message type 2"),  # ACCEPT is the hold now
        (b"\xe1" + bytes(11), "must be 13 bytes"),
    ],
)
def test_bad_messages_are_named(raw: bytes, words: str) -> None:
    with pytest.raises(MessageError, match=words):
        decode(raw)


def test_machine_counts_and_drops_bad_messages() -> None:
    m = EpochMachine(0, [1], DurableRecord())
    m.link_up(1)
    assert m.offered(1, 1, b"\x00garbage", 0) == [Refuse(1, 1)]
    assert m.delivered(1, 2, b"\xe2" + bytes(12)) == [Report(1, 2)]
    assert m.bad_messages == 2 and m.epoch == 0


def test_file_store_is_atomic_and_never_rolls_back(tmp_path: os.PathLike[str]) -> None:
    store = FileStore(os.path.join(tmp_path, "node.json"))
    assert store.load() == DurableRecord()
    rec = DurableRecord(committed=Wave(2, 1, 0), aborted=frozenset({Wave(3, 1, 1)}))
    store.write(rec)
    assert store.load() == rec
    assert not os.path.exists(os.path.join(tmp_path, "node.json.tmp"))
    with pytest.raises(DurableError, match="roll committed epoch 2 back to 1"):
        store.write(DurableRecord(committed=Wave(1, 1, 0)))
    assert store.load() == rec
    with open(os.path.join(tmp_path, "node.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(DurableError, match="corrupt"):
        store.load()


# ------------------------------------------------------------------ the adversarial network
Dir = tuple[int, int]


class Net:
    """N machines on gated links (record level), with safety checks."""

    def __init__(self, n: int, edges: list[tuple[int, int]]) -> None:
        self.n, self.edges = n, edges
        self.nbrs = {
            v: sorted({b for a, b in edges if a == v} | {a for a, b in edges if b == v})
            for v in range(n)
        }
        self.dirs: list[Dir] = sorted({(a, b) for a, b in edges} | {(b, a) for a, b in edges})
        self.stores = [MemoryStore() for _ in range(n)]
        self.m: list[EpochMachine | None] = [None] * n
        self.ends = {d: legs.GatedEnd() for d in self.dirs}
        self.q: dict[Dir, list[legs.Record]] = {d: [] for d in self.dirs}  # records v -> w
        self.seen: dict[Dir, legs.Record | None] = dict.fromkeys(self.dirs)  # last one taken
        self.up: set[tuple[int, int]] = set()
        self.resets: set[tuple[int, int]] = set()  # reset links, about to be rediscovered
        self.events: deque[tuple[int, int, object]] = deque()  # (node, link, event)
        # the atomic-commit model
        self.decided: dict[Wave, set[bool]] = {}
        self.proposed: list[Wave] = []
        self.converged: set[Wave] = set()
        self.committed_wave: dict[int, Wave] = {}
        self.aborted: set[Wave] = set()
        self.high = [0] * n
        # the link's agreement, per direction
        self.delivered: dict[Dir, list[int]] = {d: [] for d in self.dirs}
        self.outcomes: dict[Dir, dict[int, bool]] = {d: {} for d in self.dirs}
        self.gated: dict[Dir, set[int]] = {d: set() for d in self.dirs}  # gated tids delivered
        self.commits: dict[Dir, set[int]] = {d: set() for d in self.dirs}  # commit() calls
        # application frames and the cut
        self.sent = {d: 0 for d in self.dirs}
        self.received = {d: 0 for d in self.dirs}
        self.aborted_frames: dict[Dir, list[int]] = {d: [] for d in self.dirs}
        self.captures: dict[int, dict[Wave, tuple[dict[int, int], dict[int, int], bool]]] = {
            v: {} for v in range(n)
        }
        self.logs: dict[int, dict[int, dict[int, int]]] = {v: {} for v in range(n)}
        for v in range(n):
            self.restart(v)

    # -- plumbing
    def key(self, a: int, b: int) -> tuple[int, int]:
        return (min(a, b), max(a, b))

    def apply(self, v: int, actions: list[Action]) -> None:
        m = self.m[v]
        for a in actions:
            if isinstance(a, Offer):
                self.ends[(v, a.link)].submit(a.payload, control=True, gated=a.gated)
            elif isinstance(a, Hold):
                self.ends[(v, a.link)].hold(a.tid)
            elif isinstance(a, Refuse):
                self.ends[(v, a.link)].refuse(a.tid)
            elif isinstance(a, Commit):
                if self.ends[(v, a.link)].commit(a.tid):
                    self.commits[(v, a.link)].add(a.tid)
            elif isinstance(a, Report):
                assert self.ends[(v, a.link)].report(a.tid), "report of an undelivered tid"
            elif isinstance(a, Reset):
                self.link_down(v, a.link)
                self.resets.add(self.key(v, a.link))
            elif isinstance(a, Persist):
                self.stores[v].write(a.record)
                if a.record.epoch:
                    self.logs[v][a.record.epoch] = dict(a.record.committed_log)
            elif isinstance(a, Capture):
                assert m is not None
                w = a.wave
                self.captures[v][w] = (
                    {u: self.sent[(v, u)] for u in self.nbrs[v]},
                    {u: self.received[(u, v)] for u in self.nbrs[v]},
                    False,
                )
            elif isinstance(a, Discard):
                self.captures[v].pop(a.wave, None)
            elif isinstance(a, LinkEpoch):
                self.ends[(v, a.link)].set_epoch(a.epoch)
            elif isinstance(a, Decided):
                self.decided.setdefault(a.wave, set()).add(a.committed)
            elif isinstance(a, Converged):
                self.converged.add(a.wave)
                self.check_converged(a.wave)

    def post(self, v: int, w: int, events: list[object]) -> None:
        for ev in events:
            self.events.append((v, w, ev))

    def run(self) -> None:
        """Feed queued engine events to the machines, in order, then check safety."""
        while self.events:
            v, w, ev = self.events.popleft()
            self.account(v, w, ev)
            m = self.m[v]
            if m is None or (isinstance(ev, legs.Outcome) and ev.restored):
                continue
            if ev == "down":
                self.apply(v, m.link_down(w))
            elif ev == "up":
                self.apply(v, m.link_up(w))
            elif isinstance(ev, legs.Offered):
                self.apply(v, m.offered(w, ev.tid, ev.payload, ev.info))
            elif isinstance(ev, legs.Reflected):
                self.apply(v, m.reflected(w, ev.tid, ev.payload))
            elif isinstance(ev, legs.Delivered) and ev.xfer.control:
                assert isinstance(ev.xfer.data, bytes)
                self.apply(v, m.delivered(w, ev.xfer.tid, ev.xfer.data))
            elif isinstance(ev, legs.Delivered):
                _, tag = ev.xfer.data  # type: ignore[misc]
                ok, actions = m.app_frame(w, ev.xfer.tid, tag)
                assert ok, f"frame tagged {tag} delivered into epoch {self.ends[(v, w)].epoch}"
                self.received[(w, v)] += 1
                self.apply(v, actions)
            elif isinstance(ev, legs.Outcome) and ev.xfer.control:
                payload = ev.xfer.data if isinstance(ev.xfer.data, bytes) else None
                self.apply(v, m.outcome(w, ev.xfer.tid, ev.committed, payload, ev.by_round))
            elif isinstance(ev, legs.Outcome):
                self.apply(v, m.app_settled(w))
        self.check()

    def account(self, v: int, w: int, ev: object) -> None:
        """The link's own contract, per direction: every tid delivered at most once and
        in order, a gated one only if its sender committed it; every outcome agrees with
        the delivery; an aborted frame returns to its sender (for the cut)."""
        if isinstance(ev, legs.Delivered):
            d, t = (w, v), ev.xfer.tid
            assert not self.delivered[d] or t > self.delivered[d][-1], "delivered out of order"
            assert self.outcomes[d].get(t) is not False, "delivered after it was aborted"
            self.delivered[d].append(t)
            if ev.xfer.gated:
                assert t in self.commits[d], "gated transfer delivered without commit()"
        elif isinstance(ev, legs.Outcome):
            d, t = (v, w), ev.xfer.tid
            if t:
                assert t not in self.outcomes[d], "two outcomes for one transfer"
                self.outcomes[d][t] = ev.committed
                assert ev.committed or t not in self.delivered[d], "aborted after delivery"
            if not ev.xfer.control and not ev.committed:
                number, _ = ev.xfer.data  # type: ignore[misc]
                bisect.insort(self.aborted_frames[d], number)

    def check(self) -> None:
        """Safety: one wave per committed epoch, no commit of an aborted wave, no rollback,
        and a link end tags application frames only with an epoch both ends committed."""
        for v, store in enumerate(self.stores):
            rec = store.load()
            assert rec.epoch >= self.high[v], "committed epoch rolled back"
            self.high[v] = rec.epoch
            self.aborted |= rec.aborted
            if rec.epoch:
                seen = self.committed_wave.setdefault(rec.epoch, rec.committed)
                assert seen == rec.committed, f"epoch {rec.epoch} by {seen} and {rec.committed}"
        for w in self.committed_wave.values():
            assert w not in self.aborted, f"{w} committed and aborted"
        for w, fates in self.decided.items():
            assert len(fates) == 1, f"{w} decided both ways"
        for d, outcomes in self.outcomes.items():
            delivered = set(self.delivered[d])
            assert all(t in delivered for t, c in outcomes.items() if c), f"{d}: lost commit"
        for v, m in enumerate(self.m):
            if m is None:
                continue
            for u in m.links:
                tag = m.send_epoch(u)
                if tag is not None:
                    assert tag == self.stores[v].load().epoch
                    assert self.stores[u].load().epoch >= tag, "tag not committed by the peer"

    def check_converged(self, w: Wave) -> None:
        """Conv(P, e) is true when the initiator learns it: every node committed e, and
        every link end carries e (unless a later epoch committed since: a link end still
        at e-1 then goes straight to it)."""
        epochs = [s.load().epoch for s in self.stores]
        assert min(epochs) >= w.epoch, f"Conv({w.epoch}) but a node is at {min(epochs)}"
        if max(epochs) == w.epoch:
            low = [d for d, end in self.ends.items() if end.epoch < w.epoch]
            assert not low, f"Conv({w.epoch}) but link ends {low} carry an older epoch"

    # -- the network's operations
    def send(self, d: Dir) -> None:
        """The end d[0] sends its current record towards d[1]."""
        self.q[d].append(self.ends[d].record())

    def arrive(self, d: Dir, i: int = 0) -> None:
        rec = self.q[d].pop(i)
        v, w = d
        if self.key(v, w) in self.up:
            self.seen[d] = rec
            self.post(w, v, self.ends[(w, v)].receive(rec))
        self.run()

    def news(self) -> list[Dir]:
        """Up directions whose end has something to say that the peer has not taken."""
        up = [d for d in self.dirs if self.key(*d) in self.up]
        return [d for d in up if self.ends[d].record() != self.seen[d]]

    def flush(self, d: Dir) -> None:
        """The end d[0]'s current record reaches d[1] at once."""
        self.send(d)
        self.arrive(d, len(self.q[d]) - 1)

    def app(self, d: Dir) -> None:
        v, w = d
        m = self.m[v]
        assert m is not None
        tag = m.send_epoch(w)
        if tag is None:
            return
        assert tag <= min(self.stores[v].load().epoch, self.stores[w].load().epoch)
        self.sent[d] += 1
        self.ends[d].submit((self.sent[d], tag))
        m.app_sent(w)

    def link_down(self, a: int, b: int) -> None:
        if self.key(a, b) not in self.up:
            return
        self.up.discard(self.key(a, b))
        for x, y in ((a, b), (b, a)):
            self.q[(x, y)].clear()
            self.ends[(x, y)].down()
            self.post(x, y, ["down"])

    def link_up(self, a: int, b: int) -> None:
        if self.m[a] is None or self.m[b] is None or self.key(a, b) in self.up:
            return
        self.up.add(self.key(a, b))
        self.resets.discard(self.key(a, b))
        ev_a, ev_b = legs.reconcile(self.ends[(a, b)], self.ends[(b, a)])
        self.post(a, b, [*ev_a, "up"])
        self.post(b, a, [*ev_b, "up"])
        self.run()

    def crash(self, v: int) -> None:
        """The process dies first: it does not see its own links fail."""
        self.m[v] = None
        self.captures[v] = {w: c for w, c in self.captures[v].items() if c[2]}
        for w in self.nbrs[v]:
            self.post(v, w, self.ends[(v, w)].crash())
            self.link_down(v, w)
        self.run()

    def restart(self, v: int) -> None:
        m = EpochMachine(v, self.nbrs[v], self.stores[v].load())
        self.m[v] = m
        for w in self.nbrs[v]:
            self.ends[(v, w)].set_epoch(m.epoch)
        self.apply(v, m.start())
        self.run()
        for w in self.nbrs[v]:
            self.link_up(v, w)

    def propose(self, v: int) -> Wave | None:
        m = self.m[v]
        assert m is not None
        wave, actions = m.propose()
        if wave is not None:
            self.proposed.append(wave)
        self.apply(v, actions)
        self.run()
        return wave

    def pending_ckpt(self) -> list[tuple[int, Wave]]:
        out = []
        for v, m in enumerate(self.m):
            st = m.wave if m is not None else None
            if st is not None and not st.written and not st.accepted:
                out.append((v, st.wave))
        return out

    def checkpoint(self, v: int, ok: bool) -> None:
        m = self.m[v]
        assert m is not None and m.wave is not None
        w = m.wave.wave
        if ok:
            sent, got, _ = self.captures[v][w]
            self.captures[v][w] = (sent, got, True)
        self.apply(v, m.checkpoint_written(w, ok))
        self.run()

    def drive(self, ok: Callable[[int], bool] = lambda v: True) -> None:
        """Run without faults until nothing moves: checkpoint writes end (`ok(node)`),
        records flow, reset links are rediscovered."""
        for _ in range(5000):
            pend = self.pending_ckpt()
            news = self.news()
            if pend:
                v = pend[0][0]
                self.checkpoint(v, ok(v))
            elif news:
                self.flush(news[0])
            elif self.resets:
                self.link_up(*min(self.resets))
            else:
                # a wrong-epoch offer is taken once its receiver switched: offer again
                for d in self.dirs:
                    if self.key(*d) in self.up and self.ends[d].has_unreflected():
                        self.flush(d)
                if not self.news() and not self.pending_ckpt():
                    return
        raise AssertionError("no quiescence without faults")

    def settle(self) -> None:
        """Faults stop: everyone restarts, every link comes up, writes succeed."""
        for v in range(self.n):
            if self.m[v] is None:
                self.restart(v)
        for a, b in self.edges:
            self.link_up(a, b)
        for d in self.dirs:
            self.q[d].clear()
        self.drive()

    def check_live(self) -> None:
        """Liveness once faults stopped, and the cut of every committed epoch."""
        assert all(w in self.decided for w in self.proposed)
        machines = [m for m in self.m if m is not None]
        assert all(m.in_wave() is None and not m.deferred for m in machines)
        epochs = {m.epoch for m in machines}
        assert len(epochs) == 1
        (e,) = epochs
        assert e == len(self.committed_wave)
        for m in machines:
            assert all(m.send_epoch(w) == e for w in m.links)
        if e:
            assert self.committed_wave[e] in self.converged
        for d, end in self.ends.items():
            assert not end.out and not end.queue and not end.held, f"{d} left unsettled"
        for epoch, wave in self.committed_wave.items():
            for u, v in self.dirs:
                sent_at = self.captures[u][wave][0][v]
                sent = sent_at - bisect.bisect_right(self.aborted_frames[(u, v)], sent_at)
                got = self.captures[v][wave][1][u] + self.logs[v][epoch].get(u, 0)
                assert got == sent, f"epoch {epoch}: {u}->{v} sent {sent}, cut has {got}"


GRAPHS = [
    [(0, 1), (1, 2)],
    [(0, 1), (1, 2), (2, 0)],
    [(0, 1), (1, 2), (2, 3), (3, 0)],
    [(0, 1), (0, 2), (0, 3), (1, 4)],
    [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2)],
]
OPS = (
    ["flush"] * 24
    + ["send"] * 3
    + ["arrive"] * 4
    + ["app"] * 6
    + ["ckpt"] * 2
    + ["up"] * 3
    + ["rediscover"] * 4
    + ["restart"] * 4
    + ["propose"] * 2
    + ["lose"]
)
FAULTS = ["crash", "down"]


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), graph=st.sampled_from(GRAPHS))
def test_machine_is_safe_always_and_live_once_faults_stop(data: st.DataObject, graph) -> None:
    n = 1 + max(max(e) for e in graph)
    net = Net(n, graph)
    # Some histories crash nodes and fail links, the others only lose, repeat and reorder
    # records and fail checkpoint writes (so their waves get further).
    ops = OPS + FAULTS * data.draw(st.integers(0, 2), label="faults")
    for _ in range(data.draw(st.integers(5, 250), label="steps")):
        op = data.draw(st.sampled_from(ops))
        alive = [v for v in range(n) if net.m[v] is not None]
        ups = [d for d in net.dirs if net.key(*d) in net.up]
        busy = [d for d in net.dirs if net.q[d]]
        if op == "flush" and ups:
            net.flush(data.draw(st.sampled_from(net.news() or ups)))
        elif op == "send" and ups:
            net.send(data.draw(st.sampled_from(ups)))
        elif op == "arrive" and busy:
            d = data.draw(st.sampled_from(busy))
            net.arrive(d, data.draw(st.integers(0, len(net.q[d]) - 1)))
        elif op == "lose" and busy:
            d = data.draw(st.sampled_from(busy))
            net.q[d].pop(data.draw(st.integers(0, len(net.q[d]) - 1)))
        elif op == "app" and ups:
            d = data.draw(st.sampled_from(ups))
            if net.m[d[0]] is not None:
                net.app(d)
        elif op == "propose" and alive:
            ready = [v for v in alive if all(net.key(v, w) in net.up for w in net.nbrs[v])]
            net.propose(data.draw(st.sampled_from(ready or alive)))
        elif op == "ckpt":
            pend = net.pending_ckpt()
            if pend:
                v, _ = data.draw(st.sampled_from(pend))
                net.checkpoint(v, data.draw(st.sampled_from([True] * 5 + [False])))
        elif op == "crash" and alive:
            net.crash(data.draw(st.sampled_from(alive)))
        elif op == "restart":
            dead = [v for v in range(n) if net.m[v] is None]
            if dead:
                net.restart(data.draw(st.sampled_from(dead)))
        elif op == "down":
            links = sorted(net.up)
            if links:
                net.link_down(*data.draw(st.sampled_from(links)))
                net.run()
        elif op == "rediscover" and net.resets:
            net.link_up(*data.draw(st.sampled_from(sorted(net.resets))))
        elif op == "up":
            downs = [e for e in graph if net.key(*e) not in net.up]
            if downs:
                for e in data.draw(st.lists(st.sampled_from(downs), min_size=1, unique=True)):
                    net.link_up(*e)
    net.settle()
    net.check_live()
    # Once faults stopped, a proposal commits, with frames in flight across the captures.
    for d in net.dirs:
        net.app(d)
    for d in data.draw(st.lists(st.sampled_from(net.dirs), max_size=8), label="partly"):
        net.flush(d)
    wave = net.propose(data.draw(st.integers(0, n - 1), label="initiator"))
    assert wave is not None
    for d in net.dirs:
        net.app(d)
    net.settle()
    net.check_live()
    assert net.decided[wave] == {True}


# ------------------------------------------------------------------ scenarios
def committed_everywhere(net: Net, epoch: int) -> bool:
    return all(m is not None and m.epoch == epoch and m.in_wave() is None for m in net.m)


def test_refusal_aborts_everywhere_and_a_retry_commits() -> None:
    net = Net(4, [(0, 1), (1, 2), (2, 3), (3, 0)])
    net.settle()
    w = net.propose(0)
    net.drive(ok=lambda v: v != 2)  # node 2 cannot persist e+1
    assert net.decided[w] == {False}
    assert committed_everywhere(net, 0)
    w2 = net.propose(2)
    net.settle()
    assert net.decided[w2] == {True}
    net.check_live()


def test_concurrent_proposals_commit_at_most_one_and_a_retry_commits() -> None:
    """Ring of 5, waves W0 < W3 at once. Nodes in W3 refuse W0; the nodes of W0 abort and
    reset the links their offers of W0 are pending on, and a reset link takes W3's own
    pending offers with it, so here W3 aborts as well (in the message protocol the higher
    wave won: ABORT messages did not disturb it). A retry made at once, while reset links
    are still being rediscovered, waits for them and commits."""
    net = Net(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)])
    net.settle()
    w0, w3 = net.propose(0), net.propose(3)
    while net.news():
        net.flush(net.news()[0])
    assert net.decided == {w0: {False}, w3: {False}}
    assert net.resets  # links reset under the aborted waves, not yet back
    w = net.propose(1)
    net.settle()
    assert net.decided[w] == {True}
    net.check_live()


def test_a_restarted_node_that_forgot_a_wave_releases_a_prepared_neighbour() -> None:
    """Chain 0-1-2: node 2 has prepared the wave, node 1 is still joining when it crashes.
    Node 0 aborts (its child's link failed) but cannot tell node 1, which restarts with
    no memory of the wave; node 2's PREPARED query must still get the wave aborted."""
    net = Net(3, [(0, 1), (1, 2)])
    net.settle()
    w = net.propose(0)
    net.flush((0, 1))  # 1 joins, offers PROPOSE to 2
    net.flush((1, 2))  # 2 joins (a leaf: it only needs its checkpoint)
    net.checkpoint(2, True)  # 2 persists prepared, holds 1's offer: its ACCEPT
    net.flush((2, 1))  # 1 has its child's ACCEPT, its own checkpoint is not written
    assert net.stores[2].load().prepared == w
    assert net.m[1].wave.children == {2}  # type: ignore[union-attr]
    net.crash(1)
    assert net.decided[w] == {False}
    net.restart(1)
    net.settle()
    assert all(m.in_wave() is None for m in net.m)  # type: ignore[union-attr]
    assert net.stores[2].load().prepared is None
    net.check_live()


def test_a_deferred_wave_joined_later_answers_every_sender() -> None:
    """Triangle: node 0 is in its own wave W0 when the offers of the higher wave W2 come
    from 2 and, through 1, from 1: it defers W2 (the offers stay pending). W0 is refused
    and aborts; node 0 joins W2 under parent 1, counts 2's offer as 2's answer (a
    crossing edge), and answers 2 with its own offer of W2, made only once 2 refused its
    offer of W0 (that refusal reverses every later transfer on the link)."""
    net = Net(3, [(0, 1), (1, 2), (2, 0)])
    net.settle()
    w0 = net.propose(0)  # W0 = (1, 1, 0)
    w2 = net.propose(2)  # W2 = (1, 1, 2) > W0
    net.flush((2, 1))  # 1 joins W2 under 2 and offers W2 to 0
    net.flush((2, 0))  # 0, in W0, defers W2 (sender 2) ...
    net.flush((1, 0))  # ... and again (sender 1)
    assert net.m[0].deferred == {w2: {1, 2}}  # type: ignore[union-attr]
    net.flush((0, 1))  # 1 refuses W0
    net.flush((1, 0))  # 0 aborts W0 and joins W2; its offer to 2 waits for 2's refusal
    m0 = net.m[0]
    assert m0 is not None and m0.in_wave() == w2 and m0.links[2].offer_after == w2
    net.settle()
    assert net.decided == {w0: {False}, w2: {True}}
    assert w2 in net.converged
    net.check_live()


def test_a_crossing_offer_is_held_once_our_earlier_transfers_settled() -> None:
    """Ring 0-1-2-3: node 2 joins under 1 and answers 3 (crossing) with its own offer. It
    holds 3's offer only once every transfer it sent 3 before its own offer has settled:
    then 3 has taken 2's offer (a crossing answer) when it sees the hold, which it could
    otherwise take for a child's ACCEPT (here a frame of 2 is still in flight ahead of
    2's offer). The crossing edge needs no DONE: each end reports the other's transfer
    once it committed."""
    net = Net(4, [(0, 1), (1, 2), (2, 3), (3, 0)])
    net.settle()
    net.app((2, 3))  # submitted, not yet offered to 3
    w = net.propose(0)
    for d in [(0, 1), (0, 3), (1, 2), (3, 2)]:
        net.flush(d)
    m2, m3 = net.m[2], net.m[3]
    assert m2 is not None and m3 is not None
    assert m2.wave.parent == 1 and m2.wave.crossing == {3}  # type: ignore[union-attr]
    assert m2.links[3].unsettled_app == 1 and not m2.links[3].inc[w].held
    net.flush((2, 3))  # 3 takes the frame, then 2's offer: 2 is crossing, 3 holds 2's offer
    assert m3.wave.crossing == {2} and m3.links[2].inc[w].held  # type: ignore[union-attr]
    net.flush((3, 2))  # 2 sees the hold of its offer: it holds 3's
    assert m2.links[3].inc[w].held
    net.drive()
    assert net.decided[w] == {True} and w in net.converged
    assert net.stores[0].load().tree_children == {1, 3}
    assert net.stores[1].load().tree_children == {2}
    assert net.stores[3].load().tree_children == frozenset()
    net.check_live()


def test_an_abort_resets_the_links_whose_wave_transfer_is_held() -> None:
    """Star 0-{1,2}: leaf 1 prepared and held 0's offer (its ACCEPT) when leaf 2 refuses
    (its checkpoint failed). Node 0 cannot un-hold 1's transfer: it resets the link, the
    round aborts the transfer at both ends, and prepared node 1 learns the abort from
    0's status when the link is back; a retry then commits."""
    net = Net(3, [(0, 1), (0, 2)])
    net.settle()
    w = net.propose(0)
    net.flush((0, 1))
    net.checkpoint(1, True)
    net.flush((1, 0))  # 0 sees 1's ACCEPT
    assert net.stores[1].load().prepared == w
    net.flush((0, 2))
    net.checkpoint(2, False)  # 2 refuses 0's offer
    downs_before = net.ends[(0, 1)].out_settled
    net.flush((2, 0))
    assert net.decided[w] == {False} and (0, 1) in net.resets
    assert net.ends[(0, 1)].out_settled == downs_before  # not settled yet: the round will
    net.drive()
    assert net.stores[1].load().prepared is None and w in net.stores[1].load().aborted
    assert net.outcomes[(0, 1)][max(net.outcomes[(0, 1)])] is not None
    w2 = net.propose(0)
    net.settle()
    assert net.decided[w2] == {True}
    net.check_live()


def test_a_childs_frames_are_delivered_before_its_accept() -> None:
    """Chain 0-1 with frames from 1 to 0 in flight when 1 joins: 1 holds its parent's
    offer (ACCEPT) only once they settled, so 0 has them all when it sees the hold and
    decides with a complete channel log."""
    net = Net(2, [(0, 1)])
    net.settle()
    for _ in range(3):
        net.app((1, 0))
    net.flush((1, 0))  # offered: 0 holds them (application offers need no decision)
    w = net.propose(0)
    net.flush((0, 1))  # 1 joins: its frames to 0 are held there, not delivered
    net.checkpoint(1, True)
    m1 = net.m[1]
    assert m1 is not None and m1.links[0].unsettled_app == 3
    assert not m1.links[0].inc[w].held  # no ACCEPT yet
    assert net.received[(1, 0)] == 0
    seen: list[int] = []
    m0 = net.m[0]
    assert m0 is not None
    reflected = m0.reflected

    def watch(link: int, tid: int, payload: bytes) -> list[Action]:
        seen.append(net.received[(1, 0)])
        return reflected(link, tid, payload)

    m0.reflected = watch  # type: ignore[method-assign]
    net.drive()
    assert seen == [3]  # every frame of the child delivered before its ACCEPT reached 0
    assert net.decided[w] == {True}
    net.check_live()


def test_a_link_restart_mid_wave_falls_back_to_commit_and_done_messages() -> None:
    """Chain 0-1: child 1 prepared and held 0's transfer, then the link restarts before 0
    decides: the round aborts the unreleased transfer, so 0 tells 1 its commit with a
    COMMIT message and 1 answers DONE with a DONE message."""
    net = Net(2, [(0, 1)])
    net.settle()
    w = net.propose(0)
    net.flush((0, 1))
    net.checkpoint(1, True)
    net.flush((1, 0))  # 0 sees the ACCEPT; its own checkpoint is not written yet
    offers: list[tuple[int, Message]] = []
    apply = net.apply

    def record(v: int, actions: list[Action]) -> None:
        offers.extend((v, decode(a.payload)) for a in actions if isinstance(a, Offer))
        apply(v, actions)

    net.apply = record  # type: ignore[method-assign]
    net.link_down(0, 1)
    net.run()
    net.link_up(0, 1)
    net.checkpoint(0, True)  # 0 decides and commits
    net.drive()
    assert (0, Message(Kind.COMMIT, w)) in offers and (1, Message(Kind.DONE, w)) in offers
    assert not any(m.kind is Kind.PROPOSE for _, m in offers)
    assert net.decided[w] == {True} and w in net.converged
    net.check_live()


def test_a_status_reversed_with_a_refused_offer_is_said_again() -> None:
    """Chain 0-1-2: 0 prepared W2 (initiator 2) under parent 1, which crashes while
    joining and restarts without it. 1 proposes the lower W1; 0's PREPARED(W2) makes 1
    abort W2 and tell 0 ABORT(W2) behind its offer of W1, which 0 refuses (W1 < W2):
    the refusal reverses the ABORT too, and 1 must say it again."""
    net = Net(3, [(0, 1), (1, 2)])
    net.settle()
    w2 = net.propose(2)
    net.flush((2, 1))
    net.flush((1, 0))
    net.checkpoint(0, True)  # 0 prepared W2, holds 1's offer
    net.crash(1)
    net.restart(1)
    w1 = net.propose(1)  # W1 < W2: its offer to 0 goes out behind 1's status
    assert w1 is not None and w1 < w2
    for d in [(0, 1), (1, 0), (0, 1), (1, 0), (0, 1)]:
        net.flush(d)  # statuses both ways; 1 delivers PREPARED(W2) and sends ABORT(W2)
    assert w2 in net.stores[1].load().aborted
    net.flush((1, 0))  # 0 refuses W1's offer ...
    reversed_ = [t for t, c in net.outcomes[(1, 0)].items() if not c]
    assert len(reversed_) >= 2  # ... and the ABORT(W2) behind it comes back reversed
    net.settle()
    assert net.stores[0].load().prepared is None
    net.check_live()


def test_a_crossing_link_failing_before_its_channel_closed_aborts_the_wave() -> None:
    """Ring 0-1-2-3: frames from 3 to 2 are held at 2, not delivered, when 3's crossing
    offer reaches 2; the link fails. The round would deliver those frames after 2 could
    have prepared without them in its channel log: 2 aborts instead."""
    net = Net(4, [(0, 1), (1, 2), (2, 3), (3, 0)])
    net.settle()
    net.app((3, 2))
    net.flush((3, 2))  # 2 holds the frame; 3 has not seen that yet, so has not committed it
    w = net.propose(0)
    for d in [(0, 1), (0, 3), (1, 2), (3, 2)]:
        net.flush(d)
    m2 = net.m[2]
    assert m2 is not None and m2.wave.crossing == {3}  # type: ignore[union-attr]
    assert net.received[(3, 2)] == 0
    net.link_down(2, 3)
    net.run()
    assert net.decided.get(w) is None or net.decided[w] == {False}
    assert w in net.stores[2].load().aborted
    net.settle()
    net.check_live()
