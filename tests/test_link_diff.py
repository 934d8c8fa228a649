"""Differential test: Hypothesis drives the C engine and the pure-Python model through the
same random histories (offers, deliveries, losses, duplicates, reorderings, corruptions,
garbage frames, timer firings, link flaps, crash-restarts, and with gates the
application's random decisions: hold, refuse, report, commit, reset); their frames,
events, call results, counters and durable registers must match exactly at every step."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oae.engine import LinkConfig, LinkEngine, Persist, Reflected
from oae.model.link import LinkModel

A_MAC = bytes.fromhex("02000000000a")
B_MAC = bytes.fromhex("02000000000b")

side = st.integers(0, 1)
index = st.integers(0, 15)
offer = st.tuples(st.just("offer"), side, st.binary(max_size=16), st.booleans())
# exchanges in which every frame meets a fate: 0-5 delivered, 6 lost, 7 duplicated,
# 8 corrupted, 9 held back (reordered behind later frames)
pump = st.tuples(st.just("pump"), st.integers(1, 12), st.lists(st.integers(0, 9), max_size=12))
deliver = st.tuples(st.just("deliver"), side, index)
_WEIGHTED = [
    (30, pump),
    (20, offer),
    (8, deliver),
    (6, st.tuples(st.just("tick"), st.integers(0, 200))),
    (5, st.tuples(st.just("drop"), side, index)),
    (5, st.tuples(st.just("dup"), side, index)),
    (5, st.tuples(st.just("corrupt"), side, index, st.integers(0, 77), st.integers(1, 255))),
    (8, st.tuples(st.just("release"), side, st.integers(0, 3))),
    (5, st.tuples(st.just("inject"), side, st.binary(min_size=0, max_size=80))),
    (4, st.just(("flap",))),
    (4, st.tuples(st.just("crash"), side)),
    (3, st.tuples(st.just("epoch"), side, st.integers(0, 2))),
]


def _pick(k: int) -> st.SearchStrategy[tuple]:
    for weight, strategy in _WEIGHTED:
        if k < weight:
            return strategy
        k -= weight
    raise AssertionError(k)


# weighted towards progress (offers, exchanges) so that histories get deep into LIVE
actions = st.integers(0, sum(w for w, _ in _WEIGHTED) - 1).flatmap(_pick)

# with gates: gated offers and the application's decisions; `k` picks the tid (mostly the
# one the decision is for, sometimes a wrong one)
_GATED = [  # (Hypothesis favours the first and last entries)
    (12, st.tuples(st.just("gated"), side, st.binary(max_size=16))),
    (10, offer),
    (24, st.tuples(st.just("decide"), side,
                   st.sampled_from(["hold", "hold", "refuse", "report", "commit", "commit"]),
                   st.integers(0, 7))),  # fmt: skip
    (6, deliver),
    (3, st.tuples(st.just("tick"), st.integers(0, 200))),
    (1, st.just(("flap",))),
    (4, st.tuples(st.just("drop"), side, index)),
    (1, st.tuples(st.just("crash"), side)),
    (3, st.tuples(st.just("dup"), side, index)),
    (1, st.tuples(st.just("reset"), side)),
    (6, st.tuples(st.just("release"), side, st.integers(0, 3))),
    (30, pump),
]


def _pick_gated(k: int) -> st.SearchStrategy[tuple]:
    for weight, strategy in _GATED:
        if k < weight:
            return strategy
        k -= weight
    raise AssertionError(k)


gated_actions = st.integers(0, sum(w for w, _ in _GATED) - 1).flatmap(_pick_gated)


class World:
    """Two ends of one implementation and the frames in flight towards each end."""

    def __init__(self, cls: type, cfgs: list[LinkConfig]) -> None:
        self.cls = cls
        self.cfgs = list(cfgs)
        self.ends = [cls(c) for c in cfgs]
        self.durable: list[object] = [None, None]
        self.queue: list[list[bytes]] = [[], []]  # queue[w]: frames on their way to w
        self.log: list[object] = []
        self.k = 0
        self.reflected: list[list[int]] = [[], []]  # tids each end saw Reflected

    def settle(self, now: int) -> None:
        """Fire due timers, persist when asked, collect events and frames to send."""
        for w in (0, 1):
            e = self.ends[w]
            if e.next_timeout() <= now:
                e.on_timeout(now)
            self._events(w)
            frames = e.poll_tx(now)
            self.log.append(("tx", w, frames))
            self.queue[1 - w].extend(frames)
            self._events(w)
            self.log.append(("stats", w, e.stats(), e.durable(), e.next_timeout(), e.idle()))

    def _events(self, w: int) -> None:
        for ev in self.ends[w].poll_events():
            self.log.append(("ev", w, ev))
            if isinstance(ev, Reflected):
                self.reflected[w].append(ev.tid)
            if isinstance(ev, Persist):
                self.durable[w] = self.ends[w].durable()
                self.ends[w].persisted()

    def act(self, a: tuple, now: int) -> None:
        kind = a[0]
        if kind in ("deliver", "drop", "dup", "corrupt"):
            w, i = a[1], a[2]
            q = self.queue[w]
            if not q:
                return
            i %= len(q)
            if kind == "drop":
                q.pop(i)
            elif kind == "dup":
                q.append(q[i])
            else:
                f = q.pop(i)
                if kind == "corrupt":
                    f = f[: a[3]] + bytes([f[a[3]] ^ a[4]]) + f[a[3] + 1 :]
                self.log.append(("rx", w, self.ends[w].on_frame(f, now)))
        elif kind == "offer":
            self.log.append(("offer", a[1], self.ends[a[1]].offer(a[2], a[3])))
        elif kind == "gated":
            self.log.append(("gated", a[1], self.ends[a[1]].offer(a[2], True, True)))
        elif kind == "decide":
            self.decide(a[1], a[2], a[3])
        elif kind == "reset":
            self.log.append(("reset", a[1], self.ends[a[1]].reset(now)))
        elif kind == "release":
            self.ends[a[1]].release(a[2])
        elif kind == "epoch":
            self.ends[a[1]].set_epoch(a[2])
        elif kind == "inject":
            self.log.append(("rx", a[1], self.ends[a[1]].on_frame(a[2], now)))
        elif kind == "flap":
            self.queue = [[], []]
        elif kind == "crash":
            w = a[1]
            self.cfgs[w] = replace(self.cfgs[w], nonce=self.cfgs[w].nonce + 1000)
            self.ends[w] = self.cls(self.cfgs[w], self.durable[w])
            self.queue[w] = []

    def _decision(self, w: int, what: str, k: int) -> int:
        """The tid end w's application would decide on now (0: none)."""
        s = self.ends[w].stats()
        if what in ("hold", "refuse"):
            return s["in_offered"] if s["in_offered"] > s["in_held"] else 0
        if what == "report":
            return s["in_delivered"] if s["in_delivered"] > s["in_reported"] else 0
        seen = self.reflected[w]
        return seen[-1 - k % len(seen)] if seen else 0

    def decide(self, w: int, what: str, k: int) -> None:
        """The application's decision `what`, at end w or else at the end that has one to
        make, on the tid it is for (k < 5) or on a nearby wrong one."""
        if not self._decision(w, what, k) and self._decision(1 - w, what, k):
            w = 1 - w
        e = self.ends[w]
        tid = max(0, self._decision(w, what, k) + (0 if k < 5 else k - 6))
        try:
            self.log.append((what, w, tid, getattr(e, what)(tid)))
        except ValueError:
            self.log.append((what, w, tid, "invalid"))

    def pump(self, now: int, fates: list[int]) -> None:
        """One exchange round: every frame in flight meets its fate."""
        for w in (0, 1):
            q, self.queue[w] = self.queue[w], []
            for f in q:
                fate = fates[self.k % len(fates)] if fates else 0
                self.k += 1
                if fate == 6:
                    continue
                if fate == 9:
                    self.queue[w].append(f)
                    continue
                if fate == 8:
                    i = self.k % len(f)
                    f = f[:i] + bytes([f[i] ^ 0x10]) + f[i + 1 :]
                for _ in range(2 if fate == 7 else 1):
                    self.log.append(("rx", w, self.ends[w].on_frame(f, now)))
        self.settle(now)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    history=st.lists(actions, min_size=30, max_size=150),
    keyed=st.booleans(),
    beat=st.sampled_from([1, 4, 16]),
    window=st.integers(1, 6),
    rx_capacity=st.integers(1, 4),
    idle=st.sampled_from([0, 30]),
)
def test_c_engine_and_model_agree(
    history: list[tuple], keyed: bool, beat: int, window: int, rx_capacity: int, idle: int
) -> None:
    _agree(history, keyed, beat, window, rx_capacity, idle, gates=False)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    history=st.lists(gated_actions, min_size=30, max_size=150),
    keyed=st.booleans(),
    beat=st.sampled_from([1, 4, 16]),
    window=st.integers(1, 6),
    rx_capacity=st.integers(1, 4),
    idle=st.sampled_from([0, 30]),
)
def test_c_engine_and_model_agree_with_gates(
    history: list[tuple], keyed: bool, beat: int, window: int, rx_capacity: int, idle: int
) -> None:
    _agree(history, keyed, beat, window, rx_capacity, idle, gates=True)


def _agree(
    history: list[tuple],
    keyed: bool,
    beat: int,
    window: int,
    rx_capacity: int,
    idle: int,
    gates: bool,
) -> None:
    common = dict(
        window=window,
        beat=beat,
        rx_capacity=rx_capacity,
        rto_ns=60,
        dead_ns=1_000,
        hello_ns=200,
        idle_ns=idle,
        key=bytes(range(16)) if keyed else None,
        persist=True,
        gates=gates,
    )
    cfgs = [
        LinkConfig(mac=A_MAC, nonce=7, **common),  # type: ignore[arg-type]
        LinkConfig(mac=B_MAC, nonce=9, **common),  # type: ignore[arg-type]
    ]
    c, m = World(LinkEngine, cfgs), World(LinkModel, cfgs)
    now = 0
    # start with a clean handshake so that histories begin LIVE
    for world in (c, m):
        world.settle(now)
        for _ in range(4):
            world.pump(now, [])
    assert c.log == m.log
    for a in history:
        if a[0] == "pump":  # clean exchanges, 10 ns apart, so that timers run too
            for _ in range(a[1]):
                now += 10
                for world in (c, m):
                    world.pump(now, a[2])
        else:
            if a[0] == "tick":
                now += a[1]
            elif a[0] == "flap":
                now += 1_001
            for world in (c, m):
                world.act(a, now)
                world.settle(now)
        assert c.log == m.log, f"diverged after {a}"
