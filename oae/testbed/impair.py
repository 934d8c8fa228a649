"""Link impairments: the spec, its text syntax, and the pure decision engine.

The engine is sans-I/O: `LinkImpairer.submit(direction, frame, now)` decides a frame's fate
and `poll(direction, now)` hands back the frames due by `now`, in order. Randomness comes
from one `random.Random` per direction, seeded from the link seed, so a run is reproducible
given the same arrival sequence. The bridge process (oae.testbed.bridge) wraps it in
AF_PACKET socket I/O.

Order of effects on each frame: partition -> loss -> rate limiter queue (tail drop at
`limit`) -> corruption -> duplication -> delay+jitter -> reordering.
"""

from __future__ import annotations

import heapq
import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from oae.errors import UsageError

ETH_HEADER = 14
# How long a frame picked for reordering waits for a successor to overtake it.
REORDER_TIMEOUT = 0.010

_PCT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")
_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s|m)\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit)\s*$", re.IGNORECASE)
_DUR_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_RATE_UNIT = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def parse_fraction(value: object) -> float:
    """'10%' or a number in [0, 1] -> fraction in [0, 1]."""
    if isinstance(value, bool):
        raise ValueError("expected a percentage such as '10%'")
    if isinstance(value, int | float):
        frac = float(value)
    elif isinstance(value, str) and (m := _PCT.match(value)):
        frac = float(m.group(1)) / 100.0
    else:
        raise ValueError(f"{value!r} is not a percentage such as '10%' (or a fraction 0..1)")
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"{value!r} is outside 0%..100%")
    return frac


def parse_duration(value: object) -> float:
    """'10ms', '1.5s', '200us', '2m' or a number of seconds -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '10ms'")
    if isinstance(value, int | float):
        secs = float(value)
    elif isinstance(value, str) and (m := _DUR.match(value)):
        secs = float(m.group(1)) * _DUR_UNIT[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration such as '10ms', '1.5s', '200us'")
    if secs < 0:
        raise ValueError(f"{value!r} is negative")
    return secs


def parse_rate(value: object) -> float:
    """'100mbit', '1gbit', '64kbit' -> bits/s; 0 or 'none' means unlimited (0.0)."""
    if value in (0, "0", "none", "off"):
        return 0.0
    if isinstance(value, str) and (m := _RATE.match(value)):
        bps = float(m.group(1)) * _RATE_UNIT[m.group(2).lower()]
        if bps > 0:
            return bps
    raise ValueError(f"{value!r} is not a rate such as '100mbit', '64kbit' (or 'none')")


@dataclass(frozen=True)
class Window:
    """A scheduled partition: the link drops everything in [start, start + length)."""

    start: float
    length: float


@dataclass(frozen=True)
class Flap:
    """A periodic partition: down for `down` seconds at the start of every `every` seconds,
    beginning at `start`; `count` periods (0 = forever)."""

    every: float
    down: float
    start: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class Impairment:
    """What an impaired link does to frames, in each direction independently."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    rate: float = 0.0  # bits/s, 0 = unlimited
    limit: int = 1000  # frames queued (rate + delay) per direction before tail drop
    partitions: tuple[Window, ...] = ()
    flap: Flap | None = None
    partitioned: bool = False  # manual partition, set at run time

    def down_at(self, t: float) -> bool:
        """Is the link partitioned `t` seconds after the bridge started?"""
        if self.partitioned:
            return True
        if any(w.start <= t < w.start + w.length for w in self.partitions):
            return True
        f = self.flap
        if f is not None and t >= f.start:
            k, phase = divmod(t - f.start, f.every)
            if (f.count == 0 or k < f.count) and phase < f.down:
                return True
        return False

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "partitions":
                out[f.name] = [{"at": w.start, "for": w.length} for w in v]
            elif f.name == "flap":
                out[f.name] = None if v is None else vars(v).copy()
            else:
                out[f.name] = v
        return out

    def describe(self) -> str:
        """Human-readable settings, in the units a user would type them."""
        parts = [
            f"{k}={getattr(self, k) * 100:g}%"
            for k in ("loss", "duplicate", "reorder", "corrupt")
            if getattr(self, k)
        ]
        parts += [
            f"{k}={_fmt_dur(getattr(self, k))}" for k in ("delay", "jitter") if getattr(self, k)
        ]
        if self.rate:
            parts.append(f"rate={self.rate / 1e6:g}mbit")
        if self.limit != Impairment.limit:
            parts.append(f"limit={self.limit}")
        for w in self.partitions:
            parts.append(f"partition@{_fmt_dur(w.start)}+{_fmt_dur(w.length)}")
        if self.flap:
            f = self.flap
            parts.append(
                f"flap(every={_fmt_dur(f.every)},down={_fmt_dur(f.down)},"
                f"start={_fmt_dur(f.start)},count={f.count or 'inf'})"
            )
        if self.partitioned:
            parts.append("partition=on")
        return " ".join(parts) or "none"

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> Impairment:
        kw = dict(d)
        kw["partitions"] = tuple(Window(w["at"], w["for"]) for w in kw.get("partitions", ()))
        kw["flap"] = Flap(**kw["flap"]) if kw.get("flap") else None
        return cls(**kw)


def _fmt_dur(secs: float) -> str:
    if secs >= 1 or secs == 0:
        return f"{secs:g}s"
    if secs >= 1e-3:
        return f"{secs * 1e3:g}ms"
    return f"{secs * 1e6:g}us"


_SIMPLE: dict[str, tuple[str, object]] = {
    "loss": ("loss", parse_fraction),
    "duplicate": ("duplicate", parse_fraction),
    "reorder": ("reorder", lambda v: _at_most_half(parse_fraction(v))),
    "corrupt": ("corrupt", parse_fraction),
    "delay": ("delay", parse_duration),
    "jitter": ("jitter", parse_duration),
    "rate": ("rate", parse_rate),
}
IMPAIR_KEYS = (*_SIMPLE, "limit", "partition", "flap")


def _at_most_half(frac: float) -> float:
    if frac > 0.5:
        raise ValueError("reorder is at most 50% (each reordered frame is overtaken by one)")
    return frac


def _parse_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a positive whole number of frames")
    return value


def _parse_window(item: object) -> Window:
    if not isinstance(item, Mapping) or set(item) != {"at", "for"}:
        raise ValueError("each partition is a table { at = '5s', for = '2s' }")
    return Window(parse_duration(item["at"]), parse_duration(item["for"]))


def _parse_flap(value: object) -> Flap:
    if not isinstance(value, Mapping) or not {"every", "down"} <= set(value):
        raise ValueError("flap is a table { every = '10s', down = '1s', start = '0s', count = 0 }")
    extra = set(value) - {"every", "down", "start", "count"}
    if extra:
        raise ValueError(f"flap has unknown field(s) {sorted(extra)}")
    every, down = parse_duration(value["every"]), parse_duration(value["down"])
    if every <= 0 or down > every:
        raise ValueError("flap needs every > 0 and down <= every")
    count = value.get("count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"flap count {count!r} is not a whole number >= 0")
    return Flap(every, down, parse_duration(value.get("start", 0)), count)


def parse_impair_field(key: str, value: object) -> dict[str, object]:
    """One `key = value` of a file's impair table -> Impairment constructor arguments.
    Raises ValueError naming the problem (the caller adds file/line/field)."""
    if key in _SIMPLE:
        name, parse = _SIMPLE[key]
        return {name: parse(value)}  # type: ignore[operator]
    if key == "limit":
        return {"limit": _parse_limit(value)}
    if key == "partition":
        if not isinstance(value, list):
            raise ValueError("partition is a list of tables [{ at = '5s', for = '2s' }]")
        return {"partitions": tuple(_parse_window(w) for w in value)}
    if key == "flap":
        return {"flap": _parse_flap(value)}
    raise ValueError(f"unknown impairment {key!r} (known: {', '.join(IMPAIR_KEYS)})")


def apply_settings(spec: Impairment, settings: list[str]) -> Impairment:
    """Apply command-line settings such as ['loss=5%', 'delay=10ms', 'partition=on']."""
    changes: dict[str, object] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise UsageError(f"setting {item!r}: expected KEY=VALUE, e.g. loss=5%")
        try:
            if key == "partition":
                if value not in ("on", "off"):
                    raise ValueError("partition=on or partition=off at run time")
                changes["partitioned"] = value == "on"
            elif key == "limit":
                changes["limit"] = _parse_limit(int(value) if value.isdigit() else value)
            elif key in _SIMPLE:
                changes.update(parse_impair_field(key, value))
            else:
                known = ", ".join((*_SIMPLE, "limit", "partition"))
                raise ValueError(f"unknown setting (known: {known})")
        except ValueError as exc:
            raise UsageError(f"setting {item!r}: {exc}") from None
    return replace(spec, **changes)


def link_seed(seed: int, link: str) -> int:
    """A per-link seed derived from the topology seed and the link's name."""
    return (seed * 1_000_003 + zlib.crc32(link.encode())) & 0xFFFFFFFF


@dataclass
class DirectionStats:
    received: int = 0
    sent: int = 0
    lost: int = 0
    partitioned: int = 0
    queue_dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0


@dataclass
class _Direction:
    rng: random.Random
    queue: list[tuple[float, int, bytes]] = field(default_factory=list)
    free_at: float = 0.0  # when the rate limiter is next idle
    last_due: float = 0.0  # keeps delay+jitter FIFO: only `reorder` reorders
    held: tuple[bytes, int, float] | None = None  # (frame, copies, release deadline)
    stats: DirectionStats = field(default_factory=DirectionStats)


class LinkImpairer:
    """Impairs both directions (0: a->b, 1: b->a) of one link; `start` is when its
    partition schedule begins."""

    def __init__(self, spec: Impairment, seed: int, start: float) -> None:
        self.spec = spec
        self.start = start
        self._seq = 0
        self._dirs = (_Direction(random.Random(seed * 2)), _Direction(random.Random(seed * 2 + 1)))

    def stats(self, direction: int) -> DirectionStats:
        return self._dirs[direction].stats

    def _push(self, d: _Direction, due: float, frame: bytes) -> None:
        self._seq += 1
        heapq.heappush(d.queue, (due, self._seq, frame))

    def submit(self, direction: int, frame: bytes, now: float) -> None:
        """Decide the fate of one frame arriving at `now`."""
        d, s = self._dirs[direction], self.spec
        d.stats.received += 1
        if s.down_at(now - self.start):
            d.stats.partitioned += 1
            return
        rng = d.rng
        if s.loss and rng.random() < s.loss:
            d.stats.lost += 1
            return
        if len(d.queue) + (d.held is not None) >= s.limit:
            d.stats.queue_dropped += 1
            return
        ready = now
        if s.rate:
            d.free_at = max(now, d.free_at) + len(frame) * 8 / s.rate
            ready = d.free_at
        if s.corrupt and rng.random() < s.corrupt and len(frame) > ETH_HEADER:
            # Flip one bit past the Ethernet header, so the frame still reaches the peer.
            buf = bytearray(frame)
            pos = rng.randrange(ETH_HEADER, len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
            frame = bytes(buf)
            d.stats.corrupted += 1
        copies = 1
        if s.duplicate and rng.random() < s.duplicate:
            copies = 2
            d.stats.duplicated += 1
        due = ready + s.delay
        if s.jitter:
            due += rng.uniform(-s.jitter, s.jitter)
        due = max(due, ready, d.last_due)
        d.last_due = due
        if d.held is not None:  # this frame overtakes the held one, which follows it
            self._emit(d, due, frame, copies)
            held, held_copies, _ = d.held
            d.held = None
            self._emit(d, due, held, held_copies)
            return
        # Holding with probability q = p/(1-p) while nothing is held makes the overtaken
        # fraction exactly p (h = q(1-h)); hence reorder is at most 50%.
        if s.reorder and rng.random() < s.reorder / (1.0 - s.reorder):
            d.stats.reordered += 1
            d.held = (frame, copies, due + REORDER_TIMEOUT)
            return
        self._emit(d, due, frame, copies)

    def _emit(self, d: _Direction, due: float, frame: bytes, copies: int) -> None:
        for _ in range(copies):
            self._push(d, due, frame)

    def poll(self, direction: int, now: float) -> list[bytes]:
        """Frames of `direction` due by `now`, in the order to send them."""
        d = self._dirs[direction]
        if d.held is not None and d.held[2] <= now:
            self._emit(d, d.held[2], d.held[0], d.held[1])
            d.held = None
        out: list[bytes] = []
        while d.queue and d.queue[0][0] <= now:
            out.append(heapq.heappop(d.queue)[2])
        d.stats.sent += len(out)
        return out

    def next_deadline(self) -> float | None:
        """Earliest time at which `poll` will have something to hand back."""
        times = [d.queue[0][0] for d in self._dirs if d.queue]
        times += [d.held[2] for d in self._dirs if d.held is not None]
        return min(times, default=None)
