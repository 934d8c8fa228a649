"""The Trio API of one OAE link: `async with open_link(...) as link`.

The frame-level work (receive, run the link engine, reply) happens in C, in a pump thread
owned by the link (csrc/pump.c): frames never pass through Python. Trio sees only protocol
events, in batches, when the pump's event fd becomes readable; submissions go the other way
through a queue in the pump. Why a thread rather than Trio waiting on the socket itself:
a live link answers every frame, and one Trio wakeup per frame (20-45 us here) would cap
the exchange at a third of the wire's speed; the pump thread instead blocks in recv()
(or busy-polls) exactly as the bare C baseline does, and Trio waits with
trio.lowlevel.wait_readable on the pump's event fd, woken once per batch of events.
Leaving the `async with` block, by return, exception, cancellation or Ctrl-C, stops the
thread, frees the engine and closes the socket.

With a state dir, what the application has not yet consumed survives a crash of its
process: outcomes it has not acknowledged and deliveries it has not released are handed
out again after a restart, and outcomes it has acknowledged never are (docs/applications.md).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import trio

from oae._pump import ffi, lib
from oae.engine import Offered, Reflected
from oae.errors import OaeError, UsageError
from oae.runtime.sock import PacketSocket, format_mac, open_socket, parse_mac
from oae.wire import ETHERTYPE, KEY_LEN, PAYLOAD_MAX

EVENT_BATCH = 4096
RELEASE_BATCH = 64  # messages / outcomes handled before the pump is told (one lock, one write)
KEY_MAX = 2**64 - 1
BEAT_SIZES = (1, 4, 16, 64)
PHASES = {1: "DISCOVER", 2: "RECONCILE", 3: "LIVE"}
DROP_NAMES = {
    1: "truncated", 2: "oversized", 3: "ethertype", 4: "version", 5: "opcode", 6: "phase",
    7: "state", 8: "transition", 9: "seq", 10: "nonce", 11: "beat", 12: "length",
    13: "flags", 14: "padding", 15: "check", 16: "not_mine", 17: "self", 18: "foreign",
    19: "session", 20: "replay", 21: "stale", 22: "unexpected", 23: "bogus",
}  # fmt: skip


class LinkError(OaeError):
    """The link cannot go on (its interface disappeared or its state dir failed)."""


@dataclass(frozen=True)
class Outcome:
    """How a transfer ended, identical on both ends: committed (delivered exactly once) or
    aborted (reversed; the payload is handed back, also after a restart when a state dir
    kept it). `key` is the application's key given at submission (None: none). `restored`
    marks an outcome of a transfer submitted by an earlier process of this link: settled
    after the restart, or handed out before it and not acknowledged. `round` (gates): one
    decided by a reconciliation round rather than reported by the peer's application."""

    tid: int
    committed: bool
    payload: bytes = b""
    restored: bool = False
    key: int | None = None
    round: bool = False

    @property
    def status(self) -> str:
        return "committed" if self.committed else "aborted"


@dataclass(frozen=True)
class Message:
    """A transfer delivered to this end (exactly once by the link; to the application until
    it releases it). `at` is trio.current_time() when the link handed it to this process
    (after its durable store), before any task took it. `redelivered`: delivered to an
    earlier process of this link, which crashed before releasing it; `tid` tells it apart
    (incoming tids only grow, over the life of the link)."""

    tid: int
    payload: bytes
    control: bool = False
    at: float = 0.0
    redelivered: bool = False


class _AutoRto(float):
    """An rto nobody chose: max(0.02 s, 2 * idle), derived again whenever the options are
    rebuilt with another idle (open_link's overrides, dataclasses.replace)."""


@dataclass(frozen=True)
class LinkOptions:
    """Engine and pump settings; the defaults suit a node daemon on a LAN or veth."""

    window: int = 64
    beat: int = 1
    rx_capacity: int = 4096
    rto: float = _AutoRto(0.02)  # unless given: max(0.02, 2 * idle)
    dead: float = 1.0
    hello: float = 0.05
    # the leader's answer delay on an idle link (new work wakes the link at once): an idle
    # link carries 2 frames per idle + round trip; rto must be >= 2 * idle
    idle: float = 0.01
    epoch: int = 0
    busy: bool = False
    bypass: bool = False
    sink: bool = False
    quiet: bool = False
    # the application holds, reports and commits CONTROL transfers (docs/protocol.md 7.11)
    gates: bool = False
    # the link belongs to a node's epoch runner (csrc/epochrun.c, oae.epoch.node): the
    # runner takes the pump's events and hands this link its own ones (`take_event`); no
    # events.log (the runner keeps its own record; an epoch node owes its application
    # nothing across a crash, docs/applications.md §7); CONTROL deliveries reach the runner
    # before the store that counts them (one taken again after a crash does no harm)
    epoch_runner: bool = False
    # posted transfers open at a time (in flight, or settled and their outcome not yet
    # acknowledged): at this many the link offers nothing new until the application
    # acknowledges outcomes from `Link.outcomes()` (bounded memory, nothing dropped)
    outcome_buffer: int = 65_536
    # with a state dir: compact events.log whenever it has grown by this many bytes
    log_limit: int = 8 << 20
    # beats of several records go out through a PACKET_TX_RING where the kernel offers one
    # (csrc/txring.h), else with sendmmsg; off by default: on a veth it moves work to the
    # receiver rather than saving any (docs/performance.md, "rings")
    tx_ring: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rto, _AutoRto) and isinstance(self.idle, (int, float)):
            object.__setattr__(self, "rto", _AutoRto(max(0.02, 2 * self.idle)))

    def check(self) -> None:
        if not 1 <= self.window <= lib.OAE_LINK_WINDOW_MAX:
            raise UsageError(f"window {self.window}: must be 1..{lib.OAE_LINK_WINDOW_MAX}")
        if self.beat not in BEAT_SIZES:
            raise UsageError(f"beat {self.beat}: must be one of 1, 4, 16, 64")
        if self.rx_capacity < 1:
            raise UsageError(f"rx capacity {self.rx_capacity}: must be >= 1")
        if self.outcome_buffer < 1:
            raise UsageError(f"outcome buffer {self.outcome_buffer}: must be >= 1")
        if self.log_limit < 0:
            raise UsageError(f"log limit {self.log_limit}: must be >= 0 bytes (0: never)")
        for name in ("rto", "dead", "hello"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} {getattr(self, name)}: must be > 0 seconds")
        if self.idle < 0:
            raise UsageError(f"idle {self.idle}: must be >= 0 seconds")
        if self.epoch_runner and not self.gates:
            raise UsageError("an epoch runner's link needs gates")
        if self.gates and self.sink:
            raise UsageError(
                "sink with gates: the pump would consume CONTROL deliveries that only the "
                "application can report"
            )
        if self.idle and self.rto < 2 * self.idle:
            raise UsageError(
                f"rto {self.rto}: must be at least twice idle ({self.idle}) seconds, or it "
                "fires while the peer holds an idle token"
            )


@dataclass
class _Batch:
    base: int
    results: list[Outcome | None]
    remaining: int
    done: trio.Event = field(default_factory=trio.Event)


class LogRecord(NamedTuple):
    """One transfer in a state dir's events.log: kind 'delivered', 'committed' or
    'aborted'; `key` the application's key (0: none); `restored` settled after a restart;
    `acked` the application has acknowledged the outcome."""

    kind: str
    tid: int
    payload: bytes
    restored: bool
    key: int = 0
    acked: bool = False


_LOG_KINDS = {3: "delivered", 4: "committed", 5: "aborted"}


def read_log(state_dir: str | os.PathLike[str]) -> list[LogRecord]:
    """The transfers a state dir's event log holds, oldest first: those the application has
    not consumed yet, and (until its next compaction) those it has. A torn tail is ignored."""
    path = Path(state_dir) / "events.log"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    buf = ffi.from_buffer("uint8_t[]", data)
    rec = ffi.new("oae_log_record *")
    out = []
    off = 0
    while off < len(data):
        n = lib.oae_log_decode(buf + off, len(data) - off, rec)
        if not n:
            break
        off += n
        if rec.type in _LOG_KINDS:
            out.append(LogRecord(_LOG_KINDS[rec.type], rec.tid, bytes(rec.payload[0 : rec.length]),
                                 bool(rec.flags & lib.OAE_EVF_RESTORED), rec.key,
                                 bool(rec.flags & lib.OAE_LOGF_ACKED)))  # fmt: skip
    return out


def _load_durable(state_dir: Path) -> Any:
    """The engine's durable registers from state_dir, or ffi.NULL for a fresh link. (The
    pump raises in_delivered to the highest delivery its log holds: the log is written
    before the registers.)"""
    d = ffi.new("oae_link_durable *")
    rc = lib.oae_durable_load(str(state_dir / "durable").encode(), d)
    if rc == -errno.ENOENT:
        return ffi.NULL
    if rc != 0:
        raise UsageError(f"state dir {state_dir}: 'durable' is damaged or of another version")
    return d


def _runs(tids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted tids as runs of consecutive ones: [(first, last), ...]."""
    runs: list[list[int]] = []
    for t in sorted(tids):
        if runs and t == runs[-1][1] + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return [(a, b) for a, b in runs]


T = TypeVar("T")


class _Waiting(deque[T], Generic[T]):
    """Items waiting for the application (deliveries, outcomes), and the event that says
    more came."""

    def __init__(self) -> None:
        super().__init__()
        self._more = trio.Event()

    def put(self, items: Iterable[T]) -> None:
        self.extend(items)
        self._more.set()

    def put_one(self, item: T) -> None:
        self.append(item)
        if not self._more.is_set():
            self._more.set()

    def wake(self) -> None:
        self._more.set()

    async def wait(self, link: Link) -> bool:
        """Until an item is there (True) or the link is closed (False); raises the link's
        error if it failed."""
        while not self:
            link._raise_if_broken()
            if link._closed:
                return False
            self._more = trio.Event()
            await self._more.wait()
        return True


class Link:
    """One running link. Create with `open_link`; do not instantiate directly."""

    def __init__(self, sock: PacketSocket, pump: Any, opts: LinkOptions) -> None:
        self.sock = sock
        self.iface = sock.iface
        self.netns = sock.netns
        self.mac = sock.mac
        self.options = opts
        self._pump = pump
        self._up = False
        self._up_event = trio.Event()
        self._state_event = trio.Event()  # set (and replaced) on every LIVE/down change
        self._error: LinkError | None = None
        self._closed = False
        self._next_cookie = 1
        self._batches: dict[int, _Batch] = {}
        self._inbox: _Waiting[Message] = _Waiting()
        self._taken: deque[int] = deque()  # tids of messages handed out, not yet released
        # outcomes no caller waits for (posted transfers, sends whose caller stopped
        # waiting, transfers of an earlier process), and those taken but not acknowledged
        self._stream: _Waiting[Outcome] = _Waiting()
        self._outcomes_taken: set[int] = set()
        self._posted: set[int] = set()  # tids of this process's posted transfers settled
        self._key_floor = lib.oae_pump_last_key(pump)  # keys must grow past it
        self._gates: _Waiting[Offered | Reflected] = _Waiting()
        self.counters = {"delivered": 0, "committed": 0, "aborted": 0, "links_up": 0,
                         "links_down": 0}  # fmt: skip

    # ---- application API ------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while the link is LIVE (reconciled with its peer)."""
        return self._up

    @property
    def last_key(self) -> int:
        """The highest key of a transfer this link has offered and stored durably (with a
        state dir; else of any offered transfer), 0 if none. After a restart, a submitted
        transfer whose key is above it was never offered: submit it again."""
        return lib.oae_pump_last_key(self._pump)

    async def wait_up(self) -> None:
        """Wait until the link is LIVE."""
        while not self._up:
            self._raise_if_broken()
            await self._up_event.wait()
        self._raise_if_broken()

    def wait_state_change(self) -> Awaitable[None]:
        """Until the link next goes LIVE or down (or fails). Nothing is missed between
        reading `up`/`counters` and calling this without a checkpoint between (it is armed
        when called): the change is applied, and the waiters woken, by this link's event
        task."""
        return self._state_event.wait()

    async def send(self, payload: bytes, control: bool = False, key: int | None = None) -> Outcome:
        """Transfer `payload` (at most 16 bytes) and return its outcome, the same one the
        peer sees. Waits for the link to be LIVE and for room in the window."""
        keys = None if key is None else [key]
        return (await self.send_many([payload], control, keys))[0]

    async def send_many(
        self, payloads: Sequence[bytes], control: bool = False, keys: Sequence[int] | None = None
    ) -> list[Outcome]:
        """Transfer several payloads in this order and return their outcomes in the same
        order (the pump keeps the window full; one Python wake per event batch). The
        outcomes are acknowledged as they are returned. Cancelling the wait does not
        withdraw the transfers (a transfer is never silently dropped): they settle anyway,
        and their outcomes go to `outcomes()`. `keys`: see `submit`."""
        return await self.wait_outcomes(self.submit(payloads, control, keys))

    async def wait_outcomes(self, batch: _Batch | None) -> list[Outcome]:
        """The outcomes of a batch returned by `submit`, in submission order, once all
        are settled (what send_many returns; the same rule when the wait is cancelled)."""
        if batch is None:
            return []
        try:
            while batch.remaining:
                self._raise_if_broken()
                await batch.done.wait()
        except BaseException:
            self._orphan(batch)
            raise
        for i in range(len(batch.results)):
            self._batches.pop(batch.base + i, None)
        outcomes = [r for r in batch.results if r is not None]
        self._ack_tids(o.tid for o in outcomes)
        return outcomes

    def submit(
        self,
        payloads: Sequence[bytes],
        control: bool = False,
        keys: Sequence[int] | None = None,
        gated: bool = False,
    ) -> _Batch | None:
        """Queue payloads without waiting (used by send_many and by benchmarks); their
        outcomes come from `wait_outcomes(batch)`. `keys`: one application key per payload,
        kept durably with the transfer and handed back in its outcome (also after a
        restart); keys grow strictly over the life of the link (above `last_key`).
        `gated` (CONTROL, gates on): each is delivered only after `commit(tid)`, which the
        application calls after the transfer's `Reflected` event (`gate_events`)."""
        return self._queue(payloads, control, keys, stream=False, gated=gated)

    def post(
        self, payloads: Sequence[bytes], control: bool = False, keys: Sequence[int] | None = None
    ) -> None:
        """Queue payloads whose outcomes go to `outcomes()` (nobody waits for them here);
        `keys` as for `submit`."""
        self._queue(payloads, control, keys, stream=True)

    async def outcomes(self) -> AsyncIterator[Outcome]:
        """Outcomes no send_many/wait_outcomes waits for, in the order they settled:
        after a restart those of the earlier process come first (restored=True), then
        those of posted transfers and of sends whose caller stopped waiting. An outcome is
        acknowledged once the loop has asked for the next one (its body has run), in
        batches of up to 64 and at once when no more is waiting, or by `ack()`; an
        acknowledged outcome is never handed out again, one that is not comes again after a
        restart (its key tells it apart). While `options.outcome_buffer` posted transfers
        are open (in flight or not acknowledged) the link offers nothing new: nothing is
        dropped."""
        done: list[Outcome] = []  # taken, their loop body has run, not yet acknowledged
        try:
            while True:
                if done and (not self._stream or len(done) >= RELEASE_BATCH):
                    self.ack(done)
                    done = []
                if not await self._stream.wait(self):
                    return
                outcome = self._stream.popleft()
                self._outcomes_taken.add(outcome.tid)
                yield outcome
                done.append(outcome)
        finally:  # the loop was left (break, an error in its body): what it handled
            if done:
                self.ack(done)

    def ack(self, outcomes: Iterable[Outcome]) -> None:
        """Acknowledge outcomes taken from `outcomes()`: never handed out again, not even
        after a crash of the process (the acknowledgement is in the log when this returns;
        a crash of the machine before the next register store may hand them out once more)."""
        tids = [o.tid for o in outcomes if o.tid in self._outcomes_taken]
        self._outcomes_taken.difference_update(tids)
        posted = self._posted.intersection(tids)
        self._posted -= posted
        self._ack_tids(tids, len(posted))

    @asynccontextmanager
    async def taking_outcomes(self, max_count: int, timeout: float) -> AsyncIterator[list[Outcome]]:
        """Up to max_count outcomes of the stream (waiting up to `timeout` s for the first),
        for a hand-over that may fail: acknowledged if the block completes, given back to
        the stream (first in line) if it raises."""
        with trio.move_on_after(timeout):
            await self._stream.wait(self)
        taken = self._take_outcomes(min(max_count, len(self._stream)))
        try:
            yield taken
        except BaseException:
            self._outcomes_taken.difference_update(o.tid for o in taken)
            self._stream.extendleft(reversed(taken))
            raise
        self.ack(taken)

    async def received(self) -> AsyncIterator[Message]:
        """Messages delivered to this end, in order, each exactly once. A message is
        released once the loop has asked for the next one (its body has run), in batches
        of up to 64 and at once when no more is waiting: room for the peer to send more,
        and, with a state dir, never handed out again; one not yet released when the
        process crashed is, after the restart (redelivered=True)."""
        done = 0  # the last tid whose loop body has run, not yet released
        try:
            while True:
                if done and (not self._inbox or len(self._taken) >= RELEASE_BATCH):
                    self._release_upto(done)
                    done = 0
                if not await self._inbox.wait(self):
                    return
                msg = self._inbox.popleft()
                self._taken.append(msg.tid)
                yield msg
                done = msg.tid
        finally:  # the loop was left (break, an error in its body): release what it handled
            if done:
                self._release_upto(done)

    @asynccontextmanager
    async def taking_messages(self, max_count: int, timeout: float) -> AsyncIterator[list[Message]]:
        """Up to max_count delivered messages (waiting up to `timeout` s for the first), for
        a hand-over that may fail: released if the block completes, given back (first in
        line) if it raises."""
        with trio.move_on_after(timeout):
            await self._inbox.wait(self)
        taken = [self._inbox.popleft() for _ in range(min(max_count, len(self._inbox)))]
        self._taken.extend(m.tid for m in taken)
        try:
            yield taken
        except BaseException:
            for _ in taken:
                self._taken.pop()
            self._inbox.extendleft(reversed(taken))
            raise
        if taken:
            self._release_upto(taken[-1].tid)

    async def gate_events(self) -> AsyncIterator[Offered | Reflected]:
        """Gates (docs/protocol.md 7.11), in order: `Offered(tid, payload)`, an incoming
        CONTROL transfer waiting for `hold(tid)` or `refuse(tid)`; `Reflected(tid, payload)`,
        a gated transfer of mine the peer holds, waiting for `commit(tid)`. A decision not
        taken before the link goes down is taken by the next round (abort), and the call
        then returns False."""
        while await self._gates.wait(self):
            yield self._gates.popleft()

    def hold(self, tid: int) -> bool:
        """Gates: hold (accept) the offered CONTROL transfer `tid`; False if it is no
        longer waiting (the link went down, a round discarded it)."""
        return self._gate(lib.oae_pump_hold(self._pump, tid))

    def refuse(self, tid: int) -> bool:
        """Gates: refuse the offered transfer `tid`; the peer gets it back (aborted)."""
        return self._gate(lib.oae_pump_refuse(self._pump, tid))

    def report(self, tid: int) -> bool:
        """Gates: tell the peer that every CONTROL message <= `tid` delivered here is done
        (its outcome: committed); False if `tid` is not delivered yet."""
        return self._gate(lib.oae_pump_report(self._pump, tid))

    def commit(self, tid: int) -> bool:
        """Gates: let the peer deliver my gated transfer `tid` (after its `Reflected`);
        False if it is settled, not reflected yet, or the link is not LIVE."""
        return self._gate(lib.oae_pump_commit(self._pump, tid))

    def reset(self) -> bool:
        """Drop the link and reconcile again with the peer: every gated transfer not yet
        committed aborts at both ends. False while the link is discovering."""
        return lib.oae_pump_reset(self._pump) == 0

    def _gate(self, rc: int) -> bool:
        self._raise_if_broken()
        if rc == lib.OAE_GATE_INVALID:
            raise UsageError(
                "gate call: the link was opened without gates, or the tid is not a gated "
                "transfer of this end"
            )
        return rc == 0

    def stats(self) -> dict[str, Any]:
        """Engine and pump counters, the phase, and the peer as last heard."""
        ls = ffi.new("oae_link_stats *")
        ps = ffi.new("oae_pump_stats *")
        lib.oae_pump_stats_get(self._pump, ls, ps)
        peer = bytes(ps.peer_mac)
        drops = {name: int(ls.drops[i]) for i, name in DROP_NAMES.items() if ls.drops[i]}
        return {
            "iface": self.iface,
            "netns": self.netns,
            "mac": format_mac(self.mac),
            "peer": format_mac(peer) if any(peer) else None,
            "phase": PHASES.get(ls.phase, str(ls.phase)),
            "up": self._up,
            "frames_in": ls.frames_in,
            "frames_accepted": ls.frames_accepted,
            "frames_out": ls.frames_out,
            "dropped": sum(drops.values()),
            "drops": drops,
            "delivered": ls.delivered,
            "committed": ls.committed,
            "aborted": ls.aborted,
            "links_up": ls.links_up,
            "links_down": ls.links_down,
            "reconciles": ls.reconciles,
            "timeouts_rto": ls.timeouts_rto,
            "offers_refused": ls.offers_refused,
            "offers_dup": ls.offers_dup,
            "offers_gap": ls.offers_gap,
            "out_hi": ls.out_hi,
            "out_settled": ls.out_settled,
            "in_delivered": ls.in_delivered,
            "backlog": self.backlog(),
            "inbox": len(self._inbox),
            "outcomes_waiting": len(self._stream),
            "offers_paused": bool(ps.offers_paused),
            "last_key": self.last_key,
            "pump": {name: getattr(ps, name) for name in (
                "rx_calls", "rx_frames", "tx_calls", "tx_frames", "tx_errors", "wakeups",
                "persists", "log_records", "queued", "submitted", "app_events", "sunk",
                "cpu_ns", "replayed", "restored_dups", "restore_conflicts", "compactions",
                "tid", "tx_ring")},
        }  # fmt: skip

    def backlog(self) -> int:
        """Transfers submitted and not yet offered to the engine (waiting for the window)."""
        return lib.oae_pump_backlog(self._pump)

    def set_epoch(self, epoch: int) -> None:
        lib.oae_pump_set_epoch(self._pump, epoch)

    # ---- internals -------------------------------------------------------------------

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise self._error

    def _queue(
        self,
        payloads: Sequence[bytes],
        control: bool,
        keys: Sequence[int] | None,
        stream: bool,
        gated: bool = False,
    ) -> _Batch | None:
        self._raise_if_broken()
        if gated and not (control and self.options.gates):
            raise UsageError("a gated transfer must be CONTROL, on a link opened with gates")
        n = len(payloads)
        if n == 0:
            return None
        buf, lens = pack_payloads(payloads)
        ckeys = ffi.NULL
        if keys is not None:
            self._check_keys(keys, n)
            ckeys = ffi.new("uint64_t[]", list(keys))
        batch = None if stream else self.reserve(n)
        flags = (lib.OAE_F_CONTROL if control else 0) | (lib.OAE_OFFER_GATED if gated else 0)
        rc = lib.oae_pump_submit(self._pump, ffi.from_buffer(buf), ffi.from_buffer(lens), n,
                                 flags, batch.base if batch else 0, ckeys)  # fmt: skip
        if rc < 0:
            if batch:
                self.unreserve(batch)
            raise MemoryError("oae pump: out of memory queueing transfers")
        if keys is not None:
            self._key_floor = keys[-1]
        return batch

    def reserve(self, n: int) -> _Batch:
        """The batch (cookies batch.base ...) for n transfers: `submit`'s, or those another
        submitter (the epoch runner) queues on this link's pump; their outcomes come back
        to this link, and `wait_outcomes(batch)` waits for them."""
        base = self._next_cookie
        self._next_cookie += n
        batch = _Batch(base, [None] * n, n)
        for i in range(n):
            self._batches[base + i] = batch
        return batch

    def unreserve(self, batch: _Batch) -> None:
        """Forget a reserved batch that was not submitted after all."""
        for i in range(len(batch.results)):
            self._batches.pop(batch.base + i, None)

    def _check_keys(self, keys: Sequence[int], n: int) -> None:
        if len(keys) != n:
            raise UsageError(f"{len(keys)} keys for {n} payloads: give one key per payload")
        floor = self._key_floor
        for k in keys:
            if not isinstance(k, int) or not floor < k <= KEY_MAX:
                raise UsageError(
                    f"key {k!r}: keys must be whole numbers that grow strictly over the life "
                    f"of the link, each above the last one submitted ({floor}) and < 2**64"
                )
            floor = k

    def _take_outcomes(self, n: int) -> list[Outcome]:
        taken = [self._stream.popleft() for _ in range(n)]
        self._outcomes_taken.update(o.tid for o in taken)
        return taken

    def _ack_tids(self, tids: Iterable[int], posted: int = 0) -> None:
        """Acknowledge outcomes (`posted` of them of transfers posted by this process); after
        the link closed nothing is recorded (they come again at the next open)."""
        if self._closed:
            return
        for lo, hi in _runs(tids):
            if lib.oae_pump_ack(self._pump, lo, hi, posted) < 0:
                raise MemoryError("oae pump: out of memory recording acknowledgements")
            posted = 0

    def _orphan(self, batch: _Batch) -> None:
        """Nobody waits for `batch` any more: what settled goes to the stream, and so will
        what settles later."""
        for i in range(len(batch.results)):
            self._batches.pop(batch.base + i, None)
        self._stream.put(r for r in batch.results if r is not None)

    def _release_upto(self, tid: int) -> None:
        """Release every taken message up to `tid` (taken in order); after the link closed
        nothing is recorded (they come again at the next open)."""
        if self._closed:
            return
        n = 0
        while self._taken and self._taken[0] <= tid:
            self._taken.popleft()
            n += 1
        if n:
            lib.oae_pump_release(self._pump, n, tid)

    async def _run_pump(self) -> None:
        rc = await trio.to_thread.run_sync(
            lib.oae_pump_run, self._pump, limiter=trio.CapacityLimiter(1)
        )
        if rc < 0 and self._error is None:
            self._fail(-rc)

    async def _stopper(self) -> None:
        """Stop the pump thread when the link's nursery is cancelled."""
        try:
            await trio.sleep_forever()
        finally:
            lib.oae_pump_stop(self._pump)

    def _fail(self, err: int) -> None:
        self._error = LinkError(f"link on {self.iface!r} stopped: {os.strerror(err)}")
        self._up = False
        self._up_event.set()
        self._state_changed()
        self._inbox.wake()
        self._stream.wake()
        self._gates.wake()
        for batch in set(self._batches.values()):
            batch.done.set()

    def _state_changed(self) -> None:
        ev, self._state_event = self._state_event, trio.Event()
        ev.set()

    async def _dispatch(self) -> None:
        buf = ffi.new("oae_pump_event[]", EVENT_BATCH)
        efd = lib.oae_pump_event_fd(self._pump)
        while True:
            await trio.lowlevel.wait_readable(efd)
            while True:
                n = lib.oae_pump_events(self._pump, buf, EVENT_BATCH)
                now = trio.current_time()  # when this batch was handed over
                for i in range(n):
                    self._on_event(buf[i], now)
                if n < EVENT_BATCH:
                    break

    @property
    def pump(self) -> Any:
        """The pump (cffi `oae_pump *`), for the epoch runner that takes its events."""
        return self._pump

    def take_event(self, pe: Any, at: float) -> None:
        """With `epoch_runner`: one of this link's own pump events (LINK_UP/DOWN,
        application deliveries and outcomes, a pump error), handed over by the consumer
        at trio time `at`, in the pump's order."""
        self._on_event(pe, at)

    def _on_event(self, pe: Any, now: float) -> None:
        ev = pe.ev
        t = ev.type
        if t == lib.OAE_EV_DELIVERED:
            self.counters["delivered"] += 1
            payload = bytes(ffi.buffer(ev.payload, ev.length))
            control = bool(ev.data_flags & lib.OAE_F_CONTROL)
            redelivered = bool(ev.flags & lib.OAE_PEVF_REPLAYED)
            self._inbox.put_one(Message(ev.tid, payload, control, now, redelivered))
        elif t in (lib.OAE_EV_COMMITTED, lib.OAE_EV_ABORTED):
            committed = t == lib.OAE_EV_COMMITTED
            self.counters["committed" if committed else "aborted"] += 1
            payload = b"" if committed else bytes(ffi.buffer(ev.payload, ev.length))
            restored = bool(ev.flags & (lib.OAE_EVF_RESTORED | lib.OAE_PEVF_REPLAYED))
            by_round = bool(ev.flags & lib.OAE_EVF_ROUND)
            outcome = Outcome(ev.tid, committed, payload, restored, pe.key or None, by_round)
            batch = self._batches.pop(pe.cookie, None) if pe.cookie else None
            if batch is None:
                if not pe.cookie and not restored:
                    self._posted.add(ev.tid)
                self._stream.put_one(outcome)
                return
            batch.results[pe.cookie - batch.base] = outcome
            batch.remaining -= 1
            if not batch.remaining:
                batch.done.set()
        elif t in (lib.OAE_EV_OFFERED, lib.OAE_EV_REFLECTED):
            payload = bytes(ffi.buffer(ev.payload, ev.length))
            if t == lib.OAE_EV_OFFERED:
                self._gates.put_one(Offered(ev.tid, payload, ev.info))
            else:
                self._gates.put_one(Reflected(ev.tid, payload))
        elif t == lib.OAE_EV_LINK_UP:
            self.counters["links_up"] += 1
            self._up = True
            self._up_event.set()
            self._state_changed()
        elif t == lib.OAE_EV_LINK_DOWN:
            self.counters["links_down"] += 1
            self._up = False
            self._up_event = trio.Event()
            self._state_changed()
        elif t == lib.OAE_PEV_ERROR:
            self._fail(ev.info)


@contextmanager
def unwrap_single() -> Iterator[None]:
    """Let an exception from the body of `async with open_link(...)` (or a node) come out
    as itself rather than wrapped in the ExceptionGroup of the link's internal nursery,
    whose own tasks do not raise."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def pack_payloads(
    payloads: Sequence[bytes], limit: int = PAYLOAD_MAX, what: str = "wire v1"
) -> tuple[bytearray, bytearray]:
    """Payloads as the pump takes them: one 16-byte slot each, and their lengths; a
    payload longer than `limit` is a UsageError naming `what` sets the limit."""
    buf = bytearray(len(payloads) * PAYLOAD_MAX)
    lens = bytearray(len(payloads))
    for i, p in enumerate(payloads):
        if len(p) > limit:
            raise UsageError(
                f"payload of {len(p)} bytes: {what} carries at most {limit} bytes per transfer"
            )
        buf[i * PAYLOAD_MAX : i * PAYLOAD_MAX + len(p)] = p
        lens[i] = len(p)
    return buf, lens


def _key_bytes(key: bytes | None) -> bytes | None:
    if key is not None and len(key) != KEY_LEN:
        raise UsageError(f"link key of {len(key)} bytes: must be exactly {KEY_LEN} bytes")
    return key


def _config(sock: PacketSocket, peer: bytes | None, key: bytes | None, opts: LinkOptions) -> Any:
    cfg = ffi.new("oae_link_config *")
    cfg.mac = list(sock.mac)
    if peer is not None:
        cfg.peer_mac = list(peer)
        cfg.has_peer = 1
    cfg.ethertype = sock.ethertype
    if key is not None:
        cfg.has_key = 1
        cfg.key = list(key)
    cfg.nonce = secrets.randbits(32) or 1
    cfg.window = opts.window
    cfg.beat = opts.beat
    cfg.rx_capacity = opts.rx_capacity
    cfg.rto_ns = int(opts.rto * 1e9)
    cfg.dead_ns = int(opts.dead * 1e9)
    cfg.hello_ns = int(opts.hello * 1e9)
    cfg.idle_ns = int(opts.idle * 1e9)
    cfg.epoch = opts.epoch
    cfg.gates = opts.gates
    # the runner restores every link end's epoch from its own record at start
    cfg.volatile_epoch = opts.epoch_runner
    return cfg


@asynccontextmanager
async def open_link(
    iface: str,
    netns: str | None = None,
    peer: str | bytes | None = None,
    key: bytes | None = None,
    *,
    ethertype: int = ETHERTYPE,
    state_dir: str | os.PathLike[str] | None = None,
    options: LinkOptions | None = None,
    **overrides: Any,
) -> AsyncIterator[Link]:
    """Run an OAE link on `iface` (inside network namespace `netns` if given).

    peer: only this MAC may bind (default: the first peer that answers the discovery
    HELLO). key: a 16-byte link key (SipHash-2-4 checks instead of CRC32C). state_dir:
    keep the durable registers and the event log there, so that a restarted process
    reconciles without loss or duplicate and hands out again what its application had not
    consumed (docs/applications.md). Other keyword arguments override fields of
    LinkOptions (window, beat, busy, ...).
    """
    opts = options or LinkOptions()
    if overrides:
        unknown = set(overrides) - set(LinkOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"open_link: unknown option(s) {', '.join(sorted(unknown))}")
        opts = LinkOptions(**{**opts.__dict__, **overrides})
    opts.check()
    peer_mac = parse_mac(peer) if isinstance(peer, str) else peer
    if peer_mac is not None and len(peer_mac) != 6:
        raise UsageError("peer MAC: must be 6 bytes")
    key = _key_bytes(key)
    lock_fd = -1
    restored: Any = ffi.NULL
    sdir: Path | None = None
    if state_dir is not None:
        sdir = Path(state_dir)
        try:
            sdir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(sdir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError(f"state dir {sdir}: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise UsageError(f"state dir {sdir} is in use by another running link") from None
    try:
        if sdir is not None:
            restored = _load_durable(sdir)
        sock = open_socket(iface, netns, ethertype, bypass=opts.bypass)
        try:
            cfg = _config(sock, peer_mac, key, opts)
            flags = ((lib.OAE_PUMP_BUSY if opts.busy else 0)
                     | (lib.OAE_PUMP_SINK if opts.sink else 0)
                     | (lib.OAE_PUMP_QUIET if opts.quiet else 0)
                     | (lib.OAE_PUMP_NO_LOG | lib.OAE_PUMP_EARLY_CONTROL
                        if opts.epoch_runner else 0)
                     | (lib.OAE_PUMP_TX_RING if opts.tx_ring else 0))  # fmt: skip
            pump = lib.oae_pump_new(sock.fd, cfg, restored,
                                    str(sdir).encode() if sdir else ffi.NULL, flags)  # fmt: skip
            if pump == ffi.NULL:
                err = ffi.errno
                if err == errno.EBADMSG:
                    raise UsageError(f"state dir {sdir}: events.log is damaged (a bad record "
                                     "before valid ones, not a torn end)")  # fmt: skip
                raise OSError(err, f"starting the link engine on {iface!r}: {os.strerror(err)}")
            try:
                lib.oae_pump_set_log_limit(pump, opts.log_limit)
                lib.oae_pump_set_post_limit(pump, opts.outcome_buffer)
                link = Link(sock, pump, opts)
                with unwrap_single():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(link._stopper)
                        nursery.start_soon(link._run_pump)
                        if not opts.epoch_runner:
                            nursery.start_soon(link._dispatch)
                        try:
                            yield link
                        finally:
                            link._closed = True
                            link._inbox.wake()
                            link._stream.wake()
                            link._gates.wake()
                            nursery.cancel_scope.cancel()
            finally:
                lib.oae_pump_free(pump)
        finally:
            sock.close()
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
