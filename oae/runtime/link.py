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
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from oae._pump import ffi, lib
from oae.errors import OaeError, UsageError
from oae.runtime.sock import PacketSocket, format_mac, open_socket, parse_mac
from oae.wire import ETHERTYPE, KEY_LEN, PAYLOAD_MAX

EVENT_BATCH = 4096
UNCLAIMED_MAX = 10_000
RELEASE_BATCH = 64  # messages taken before the engine is told (one lock, one wake)
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
    aborted (reversed; the payload is handed back). `restored` marks an outcome settled
    after a restart, whose payload the previous process held."""

    tid: int
    committed: bool
    payload: bytes = b""
    restored: bool = False

    @property
    def status(self) -> str:
        return "committed" if self.committed else "aborted"


@dataclass(frozen=True)
class Message:
    """A transfer delivered to this end (exactly once). `at` is trio.current_time() when
    the link handed it to this process (after its durable store), before any task took it."""

    tid: int
    payload: bytes
    control: bool = False
    at: float = 0.0


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
        for name in ("rto", "dead", "hello"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} {getattr(self, name)}: must be > 0 seconds")
        if self.idle < 0:
            raise UsageError(f"idle {self.idle}: must be >= 0 seconds")
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


def read_log(state_dir: str | os.PathLike[str]) -> list[tuple[str, int, bytes, bool]]:
    """The settled-transfer log of a state dir, oldest first: (kind, tid, payload, restored)
    with kind 'delivered', 'committed' or 'aborted'. A torn tail record is ignored."""
    path = Path(state_dir) / "events.log"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    ev = ffi.new("oae_event *")
    kinds = {lib.OAE_EV_DELIVERED: "delivered", lib.OAE_EV_COMMITTED: "committed",
             lib.OAE_EV_ABORTED: "aborted"}  # fmt: skip
    out = []
    n = lib.OAE_LOG_REC_LEN
    for off in range(0, len(data) - n + 1, n):
        if not lib.oae_log_decode(data[off : off + n], ev) or ev.type not in kinds:
            break
        restored = bool(ev.flags & lib.OAE_EVF_RESTORED)
        out.append((kinds[ev.type], ev.tid, bytes(ev.payload[0 : ev.length]), restored))
    return out


def _load_durable(state_dir: Path) -> Any:
    """The engine's durable registers from state_dir, or ffi.NULL for a fresh link. The
    delivered log is written before the registers, so it may be ahead of them: the highest
    logged delivery counts as delivered (never deliver twice)."""
    d = ffi.new("oae_link_durable *")
    rc = lib.oae_durable_load(str(state_dir / "durable").encode(), d)
    if rc == -errno.ENOENT:
        return ffi.NULL
    if rc != 0:
        raise UsageError(f"state dir {state_dir}: 'durable' is damaged or of another version")
    logged = [tid for kind, tid, _, _ in read_log(state_dir) if kind == "delivered"]
    if logged and max(logged) > d.in_delivered:
        d.in_delivered = max(logged)
    return d


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
        self._inbox: deque[Message] = deque()
        self._inbox_event = trio.Event()
        # outcomes no caller waits for: transfers of a previous process settled after a
        # restart (restored=True), or sends whose caller stopped waiting (cancelled)
        self.unclaimed_outcomes: deque[Outcome] = deque(maxlen=UNCLAIMED_MAX)
        self.counters = {"delivered": 0, "committed": 0, "aborted": 0, "links_up": 0,
                         "links_down": 0}  # fmt: skip

    # ---- application API ------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while the link is LIVE (reconciled with its peer)."""
        return self._up

    async def wait_up(self) -> None:
        """Wait until the link is LIVE."""
        while not self._up:
            self._raise_if_broken()
            await self._up_event.wait()
        self._raise_if_broken()

    async def wait_state_change(self) -> None:
        """Wait until the link next goes LIVE or down (or fails). Nothing is missed
        between reading `up`/`counters` and calling this without a checkpoint between:
        the change is applied, and the waiters woken, by this link's event task."""
        await self._state_event.wait()

    async def send(self, payload: bytes, control: bool = False) -> Outcome:
        """Transfer `payload` (at most 16 bytes) and return its outcome, the same one the
        peer sees. Waits for the link to be LIVE and for room in the window."""
        return (await self.send_many([payload], control))[0]

    async def send_many(self, payloads: Sequence[bytes], control: bool = False) -> list[Outcome]:
        """Transfer several payloads in this order and return their outcomes in the same
        order (the pump keeps the window full; one Python wake per event batch).
        Cancelling the wait does not withdraw the transfers (a transfer is never silently
        dropped): they settle anyway, and their outcomes go to `unclaimed_outcomes`."""
        return await self.wait_outcomes(self.submit(payloads, control))

    async def wait_outcomes(self, batch: _Batch | None) -> list[Outcome]:
        """The outcomes of a batch returned by `submit`, in submission order, once all
        are settled (what send_many returns; the same rule when the wait is cancelled)."""
        if batch is None:
            return []
        try:
            while batch.remaining:
                self._raise_if_broken()
                await batch.done.wait()
        finally:
            for i in range(len(batch.results)):
                self._batches.pop(batch.base + i, None)
        return [r for r in batch.results if r is not None]

    def submit(self, payloads: Sequence[bytes], control: bool = False) -> _Batch | None:
        """Queue payloads without waiting (used by send_many and by benchmarks)."""
        self._raise_if_broken()
        n = len(payloads)
        if n == 0:
            return None
        buf = bytearray(n * PAYLOAD_MAX)
        lens = bytearray(n)
        for i, p in enumerate(payloads):
            if len(p) > PAYLOAD_MAX:
                raise UsageError(
                    f"payload of {len(p)} bytes: wire v1 carries at most {PAYLOAD_MAX} bytes "
                    "per transfer"
                )
            buf[i * PAYLOAD_MAX : i * PAYLOAD_MAX + len(p)] = p
            lens[i] = len(p)
        base = self._next_cookie
        self._next_cookie += n
        batch = _Batch(base, [None] * n, n)
        for i in range(n):
            self._batches[base + i] = batch
        flags = lib.OAE_F_CONTROL if control else 0
        rc = lib.oae_pump_submit(self._pump, ffi.from_buffer(buf), ffi.from_buffer(lens), n,
                                 flags, base)  # fmt: skip
        if rc < 0:
            for i in range(n):
                self._batches.pop(base + i, None)
            raise MemoryError("oae pump: out of memory queueing transfers")
        return batch

    async def received(self) -> AsyncIterator[Message]:
        """Messages delivered to this end, in order, each exactly once. Each message is
        released to the engine (room for the peer to send more) as it is taken."""
        taken = 0
        while True:
            if taken and (not self._inbox or taken >= RELEASE_BATCH):
                lib.oae_pump_release(self._pump, taken)
                taken = 0
            while not self._inbox:
                self._raise_if_broken()
                if self._closed:
                    return
                self._inbox_event = trio.Event()
                await self._inbox_event.wait()
            taken += 1
            yield self._inbox.popleft()

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
            "unclaimed_outcomes": len(self.unclaimed_outcomes),
            "pump": {name: getattr(ps, name) for name in (
                "rx_calls", "rx_frames", "tx_calls", "tx_frames", "tx_errors", "wakeups",
                "persists", "log_records", "queued", "submitted", "app_events", "sunk",
                "cpu_ns", "tid", "tx_ring")},
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
        self._inbox_event.set()
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

    def _on_event(self, pe: Any, now: float) -> None:
        ev = pe.ev
        t = ev.type
        if t == lib.OAE_EV_DELIVERED:
            self.counters["delivered"] += 1
            payload = bytes(ffi.buffer(ev.payload, ev.length))
            control = bool(ev.data_flags & lib.OAE_F_CONTROL)
            self._inbox.append(Message(ev.tid, payload, control, now))
            self._inbox_event.set()
        elif t in (lib.OAE_EV_COMMITTED, lib.OAE_EV_ABORTED):
            committed = t == lib.OAE_EV_COMMITTED
            self.counters["committed" if committed else "aborted"] += 1
            payload = b"" if committed else bytes(ffi.buffer(ev.payload, ev.length))
            restored = bool(ev.flags & lib.OAE_EVF_RESTORED)
            outcome = Outcome(ev.tid, committed, payload, restored)
            batch = self._batches.pop(pe.cookie, None) if pe.cookie else None
            if batch is None:
                self.unclaimed_outcomes.append(outcome)
                return
            batch.results[pe.cookie - batch.base] = outcome
            batch.remaining -= 1
            if not batch.remaining:
                batch.done.set()
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
    keep the durable registers and the settled-transfer log there, so that a restarted
    process reconciles without loss or duplicate. Other keyword arguments override fields
    of LinkOptions (window, beat, busy, ...).
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
                     | (lib.OAE_PUMP_TX_RING if opts.tx_ring else 0))  # fmt: skip
            pump = lib.oae_pump_new(sock.fd, cfg, restored,
                                    str(sdir).encode() if sdir else ffi.NULL, flags)  # fmt: skip
            if pump == ffi.NULL:
                err = ffi.errno
                raise OSError(err, f"starting the link engine on {iface!r}: {os.strerror(err)}")
            try:
                link = Link(sock, pump, opts)
                with unwrap_single():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(link._stopper)
                        nursery.start_soon(link._run_pump)
                        nursery.start_soon(link._dispatch)
                        try:
                            yield link
                        finally:
                            link._closed = True
                            link._inbox_event.set()
                            nursery.cancel_scope.cancel()
            finally:
                lib.oae_pump_free(pump)
        finally:
            sock.close()
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
