"""The link engine: Python face of the C bilateral link state machine (csrc/link.c).

Sans I/O, like h11: you feed it received frames and the time, it hands back frames to send
and events. `oae.model.link.LinkModel` is a pure-Python twin with the same methods, used
as a test oracle; both take the types defined here. docs/protocol.md sections 7+ say what
the machine does; csrc/link.h is the C API that the runtime pump calls directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, unique

from oae._link import ffi, lib
from oae.wire import (
    BEAT_SIZES,
    ETHERTYPE,
    FRAME_LEN,
    KEY_LEN,
    PAYLOAD_MAX,
    ErrorCode,
    Phase,
    State,
)

NEVER = 2**64 - 1


# Why a received frame was dropped, numbered as in csrc/link.h (OAE_DROP_*): 0 is none,
# 1-15 are the codec's decode errors, the same names and numbers as `ErrorCode` and so taken
# from it rather than listed twice, and 16 on are the engine's own reasons. `unique` makes
# a new ErrorCode that collides with an engine reason fail at import, not alias silently.
Drop = unique(
    IntEnum(
        "Drop",
        [
            ("NONE", 0),
            *((code.name, code.value) for code in ErrorCode),
            ("NOT_MINE", 16),  # destination is neither my MAC nor the discovery group
            ("SELF", 17),  # my own frame looped back
            ("FOREIGN", 18),  # source MAC is not the bound / configured peer
            ("SESSION", 19),  # nonce is not the peer's current session (and not a HELLO)
            ("REPLAY", 20),  # seq already seen, or left of the 64-wide replay window
            ("STALE", 21),  # seq from before the current (re)connection round
            ("UNEXPECTED", 22),  # opcode/phase not valid in my current phase
            ("BOGUS", 23),  # registers impossible for this link (e.g. held > my highest tid)
        ],
        module=__name__,
    )
)
Drop.__doc__ = "Why a received frame was dropped (1-15 are the codec's decode errors)."


class DownReason(IntEnum):
    DEAD = 1
    PEER_RESTART = 2
    PEER_LOST = 3
    RESET = 4  # this end's reset()


@dataclass(frozen=True)
class LinkConfig:
    """One end of a link. Times are nanoseconds of whatever clock the caller passes as
    `now`; `nonce` must be random per process in production and fixed in tests.
    `gates`: the application holds, reports and commits CONTROL transfers
    (docs/protocol.md 7.11). `volatile_epoch`: a new epoch is not a durable register
    (no Persist): the application keeps it and sets it again after a restart."""

    mac: bytes
    nonce: int
    peer_mac: bytes | None = None
    ethertype: int = ETHERTYPE
    key: bytes | None = None
    window: int = 64
    beat: int = 16
    rx_capacity: int = 128
    rto_ns: int = 200_000
    dead_ns: int = 20_000_000
    hello_ns: int = 1_000_000
    idle_ns: int = 0
    epoch: int = 0
    persist: bool = False
    gates: bool = False
    volatile_epoch: bool = False

    def __post_init__(self) -> None:
        if len(self.mac) != 6 or (self.peer_mac is not None and len(self.peer_mac) != 6):
            raise ValueError("MAC addresses are 6 bytes")
        if not 0 < self.nonce < 2**32:
            raise ValueError("nonce must be 1..2**32-1")
        if self.key is not None and len(self.key) != KEY_LEN:
            raise ValueError(f"key must be {KEY_LEN} bytes")
        if not 1 <= self.window <= lib.OAE_LINK_WINDOW_MAX:
            raise ValueError(f"window must be 1..{lib.OAE_LINK_WINDOW_MAX}")
        if self.beat not in BEAT_SIZES:
            raise ValueError(f"beat must be one of {BEAT_SIZES}")
        if self.rx_capacity < 1 or min(self.rto_ns, self.dead_ns, self.hello_ns) <= 0:
            raise ValueError("rx_capacity and the timers must be positive")
        if not 0 <= self.ethertype <= 0xFFFF or not 0 <= self.epoch < 2**32:
            raise ValueError("ethertype or epoch out of range")


@dataclass(frozen=True)
class Durable:
    """Registers that must survive a crash (store them when a `Persist` event asks)."""

    peer_mac: bytes | None
    out_hi: int
    out_settled: int
    abort_lo: int
    abort_hi: int
    in_delivered: int
    epoch: int


@dataclass(frozen=True)
class LinkUp:
    peer_nonce: int


@dataclass(frozen=True)
class LinkDown:
    reason: DownReason


@dataclass(frozen=True)
class Delivered:
    """The peer's transfer `tid` is committed: apply it (exactly once, in tid order)."""

    tid: int
    payload: bytes
    control: bool = False


@dataclass(frozen=True)
class Committed:
    """My transfer `tid` was delivered by the peer; `restored`: reported after a restart;
    `round` (gates): decided by a reconciliation round, not reported by the peer."""

    tid: int
    restored: bool = False
    round: bool = False


@dataclass(frozen=True)
class Aborted:
    """My transfer `tid` was reversed; its payload is mine again (empty if `restored`);
    `round` (gates): decided by a reconciliation round."""

    tid: int
    payload: bytes = b""
    control: bool = False
    restored: bool = False
    round: bool = False


@dataclass(frozen=True)
class Offered:
    """Gates: the peer's CONTROL transfer `tid` waits for `hold(tid)` or `refuse(tid)`.
    `delivered`: this end's in_delivered when it was offered; the tids between it and
    `tid` are held and will be delivered (or discarded by a round) before `tid` is."""

    tid: int
    payload: bytes
    delivered: int = 0


@dataclass(frozen=True)
class Reflected:
    """Gates: the peer holds my gated transfer `tid`; it waits for `commit(tid)`."""

    tid: int
    payload: bytes


@dataclass(frozen=True)
class Persist:
    """Store `durable()` on stable storage, then call `persisted()`."""


Event = LinkUp | LinkDown | Delivered | Committed | Aborted | Persist | Offered | Reflected

STATS_FIELDS = (
    "frames_in frames_accepted frames_out offers_dup offers_gap offers_refused "
    "offers_wrong_epoch delivered committed aborted timeouts_rto links_up links_down "
    "reconciles wakes offers_pending phase out_hi out_commit out_peer_held out_settled "
    "in_held in_delivered in_released in_refusing peer_nonce in_offered in_reported"
).split()

GATED = 0x80  # oae_link_offer flag OAE_OFFER_GATED (never sent)


def gate_result(rc: int) -> bool:
    """A gate call's C result: True if done, False if not now (the transfer is not in that
    state, or the link not LIVE); ValueError if the call is invalid (gates off, not gated)."""
    if rc == -3:
        raise ValueError("gates are off, or the tid is not a gated transfer of this end")
    return rc == 0


class LinkEngine:
    """The C link machine. Methods mirror `oae.model.link.LinkModel` exactly."""

    def __init__(self, config: LinkConfig, restored: Durable | None = None) -> None:
        c = ffi.new("oae_link_config *")
        c.mac = config.mac
        c.has_peer = config.peer_mac is not None
        c.peer_mac = config.peer_mac or bytes(6)
        c.ethertype = config.ethertype
        c.has_key = config.key is not None
        c.key = config.key or bytes(KEY_LEN)
        c.nonce = config.nonce
        c.window = config.window
        c.beat = config.beat
        c.rx_capacity = config.rx_capacity
        c.rto_ns, c.dead_ns, c.hello_ns = config.rto_ns, config.dead_ns, config.hello_ns
        c.idle_ns = config.idle_ns
        c.epoch = config.epoch
        c.persist = config.persist
        c.gates = config.gates
        c.volatile_epoch = config.volatile_epoch
        d = ffi.NULL
        if restored is not None:
            d = ffi.new("oae_link_durable *")
            d.version = lib.OAE_LINK_DURABLE_VERSION
            d.has_peer = restored.peer_mac is not None
            d.peer_mac = restored.peer_mac or bytes(6)
            d.out_hi, d.out_settled = restored.out_hi, restored.out_settled
            d.abort_lo, d.abort_hi = restored.abort_lo, restored.abort_hi
            d.in_delivered, d.epoch = restored.in_delivered, restored.epoch
        ptr = lib.oae_link_new(c, d)
        if ptr == ffi.NULL:
            raise ValueError("invalid link configuration or durable registers")
        self._l = ffi.gc(ptr, lib.oae_link_free)
        self.config = config
        self._tx = ffi.new("uint8_t[]", FRAME_LEN * 256)
        self._ev = ffi.new("oae_event[]", 256)
        self._tid = ffi.new("uint32_t *")
        self._stats = ffi.new("oae_link_stats *")
        self._dur = ffi.new("oae_link_durable *")

    def on_frame(self, frame: bytes, now: int) -> Drop:
        """Feed one received frame; returns why it was dropped (Drop.NONE if accepted)."""
        return Drop(lib.oae_link_on_frame(self._l, frame, len(frame), now))

    def poll_tx(self, now: int, max_frames: int = 256) -> list[bytes]:
        """Frames (78 bytes each) due at `now`."""
        max_frames = min(max_frames, 256)
        n = lib.oae_link_poll_tx(self._l, self._tx, max_frames, now)
        buf = ffi.buffer(self._tx, n * FRAME_LEN)[:]
        return [buf[i * FRAME_LEN : (i + 1) * FRAME_LEN] for i in range(n)]

    def poll_events(self) -> list[Event]:
        out: list[Event] = []
        while True:
            n = lib.oae_link_poll_events(self._l, self._ev, 256)
            for i in range(n):
                out.append(_event(self._ev[i]))
            if n < 256:
                return out

    def next_timeout(self) -> int:
        """Absolute time of the next timer; NEVER if none."""
        return lib.oae_link_next_timeout(self._l)

    def on_timeout(self, now: int) -> None:
        lib.oae_link_on_timeout(self._l, now)

    def offer(self, payload: bytes, control: bool = False, gated: bool = False) -> int:
        """Queue a transfer of up to 16 bytes; its tid, or 0 if the engine cannot take it
        now (window full, a reversal settling, or the link not LIVE). `gated` (a CONTROL
        transfer, `gates` on): the peer delivers it only after `commit(tid)`."""
        if len(payload) > PAYLOAD_MAX:
            raise ValueError(f"payload is at most {PAYLOAD_MAX} bytes")
        flags = (0x04 if control else 0) | (GATED if gated else 0)
        rc = lib.oae_link_offer(self._l, payload, len(payload), flags, self._tid)
        if rc == -3:
            raise ValueError("a gated transfer must be CONTROL, on a link with gates on")
        return self._tid[0] if rc == 0 else 0

    def hold(self, tid: int) -> bool:
        """Gates: hold (reflect) the pending offer `tid` of an `Offered` event."""
        return gate_result(lib.oae_link_hold(self._l, tid))

    def refuse(self, tid: int) -> bool:
        """Gates: refuse the pending offer `tid`; the peer reverses it (and later tids)."""
        return gate_result(lib.oae_link_refuse(self._l, tid))

    def report(self, tid: int) -> bool:
        """Gates: report every delivered transfer <= `tid` to the peer (its Committed)."""
        return gate_result(lib.oae_link_report(self._l, tid))

    def commit(self, tid: int) -> bool:
        """Gates: let the peer deliver my gated transfer `tid` (after its `Reflected`)."""
        return gate_result(lib.oae_link_commit(self._l, tid))

    def reset(self, now: int) -> bool:
        """Drop the link (LIVE or RECONCILE) and reconcile again; False if discovering."""
        return gate_result(lib.oae_link_reset(self._l, now))

    def release(self, n: int) -> None:
        """The application consumed `n` delivered transfers (room for backpressure)."""
        lib.oae_link_release(self._l, n)

    def set_epoch(self, epoch: int) -> None:
        lib.oae_link_set_epoch(self._l, epoch)

    def idle(self) -> bool:
        """True while the peer may stay silent for longer than a round trip (DISCOVER, or
        LIVE with idle pacing and nothing to settle): a pump should wait wakeably."""
        return bool(lib.oae_link_idle(self._l))

    def stats(self) -> dict[str, object]:
        """Counters and registers; `drops` maps each Drop reason to its count."""
        lib.oae_link_stats_get(self._l, self._stats)
        s = self._stats
        out: dict[str, object] = {k: getattr(s, k) for k in STATS_FIELDS}
        out["drops"] = {d: s.drops[d] for d in Drop if d != Drop.NONE}
        return out

    def durable(self) -> Durable:
        lib.oae_link_durable_get(self._l, self._dur)
        d = self._dur
        return Durable(
            peer_mac=bytes(d.peer_mac) if d.has_peer else None,
            out_hi=d.out_hi,
            out_settled=d.out_settled,
            abort_lo=d.abort_lo,
            abort_hi=d.abort_hi,
            in_delivered=d.in_delivered,
            epoch=d.epoch,
        )

    def persisted(self) -> None:
        """The last `durable()` snapshot is on stable storage."""
        lib.oae_link_persisted(self._l)

    def transfer_state(self, tid: int, incoming: bool = False) -> State:
        return State(lib.oae_link_transfer_state(self._l, incoming, tid))


def _event(e: object) -> Event:
    t = e.type  # type: ignore[attr-defined]
    payload = bytes(e.payload[0 : e.length])  # type: ignore[attr-defined]
    control = bool(e.data_flags & 0x04)  # type: ignore[attr-defined]
    restored = bool(e.flags & lib.OAE_EVF_RESTORED)  # type: ignore[attr-defined]
    by_round = bool(e.flags & lib.OAE_EVF_ROUND)  # type: ignore[attr-defined]
    if t == lib.OAE_EV_DELIVERED:
        return Delivered(e.tid, payload, control)  # type: ignore[attr-defined]
    if t == lib.OAE_EV_COMMITTED:
        return Committed(e.tid, restored, by_round)  # type: ignore[attr-defined]
    if t == lib.OAE_EV_ABORTED:
        return Aborted(e.tid, payload, control, restored, by_round)  # type: ignore[attr-defined]
    if t == lib.OAE_EV_OFFERED:
        return Offered(e.tid, payload, e.info)  # type: ignore[attr-defined]
    if t == lib.OAE_EV_REFLECTED:
        return Reflected(e.tid, payload)  # type: ignore[attr-defined]
    if t == lib.OAE_EV_PERSIST:
        return Persist()
    if t == lib.OAE_EV_LINK_UP:
        return LinkUp(e.info)  # type: ignore[attr-defined]
    return LinkDown(DownReason(e.info))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SimResult:
    """What `simulate` saw: per direction ([0] A->B, [1] B->A) and in total."""

    ok: bool
    violation: str
    offered: tuple[int, int]
    committed: tuple[int, int]
    aborted: tuple[int, int]
    delivered: tuple[int, int]
    renotified: int
    frames: int
    frames_lost: int
    frames_duplicated: int
    frames_reordered: int
    frames_corrupted: int
    flaps: int
    crashes: int
    links_up: int
    virtual_ns: int
    drops: tuple[dict[Drop, int], dict[Drop, int]]
    wakes: tuple[int, int] = (0, 0)  # per end: beats sent at once for new work (idle pacing)
    timeouts_rto: tuple[int, int] = (0, 0)
    # gates: the applications' decisions taken, and outcomes decided by a round
    holds: int = 0
    refusals: int = 0
    commits: int = 0
    reports: int = 0
    resets: int = 0
    round_outcomes: int = 0


def simulate(
    transfers: int,
    seed: int = 1,
    *,
    loss: float = 0.0,
    dup: float = 0.0,
    reorder: float = 0.0,
    corrupt: float = 0.0,
    flap_every_ns: int = 0,
    flap_ns: int = 0,
    crash_every_ns: int = 0,
    release_ns: int = 0,
    persist_ns: int = 0,
    window: int = 64,
    beat: int = 16,
    rx_capacity: int = 128,
    latency_ns: int = 5_000,
    reorder_ns: int = 0,
    rto_ns: int = 50_000,
    dead_ns: int = 1_000_000,
    hello_ns: int = 100_000,
    keyed: bool = False,
    max_virtual_ns: int = 10**12,
    idle_ns: int = 0,
    offer_ns: int = 0,
    gates: bool = False,
    control: float = 0.0,
    gated: float = 0.0,
    refuse: float = 0.0,
    reset: float = 0.0,
    decide_ns: int = 0,
) -> SimResult:
    """Run two C engines over a seeded impaired in-memory wire on a virtual clock
    (csrc/linksim.c), `transfers` each way, checking the AIT contract as it goes.
    `offer_ns` > 0 spaces the offers (one per end about that often) so that the link idles
    between them, paced by `idle_ns`. A fraction `control` of the transfers is CONTROL;
    with `gates`, a fraction `gated` of those is gated, and the applications hold (or with
    probability `refuse` refuse) each CONTROL offer, report each CONTROL delivery, and
    commit (or with probability `reset` reset the link instead) each gated transfer, every
    decision up to `decide_ns` after its event; the gate invariants are checked too."""
    c = ffi.new("oae_sim_config *")
    c.seed, c.transfers = seed, transfers
    c.loss_ppm, c.dup_ppm = round(loss * 1e6), round(dup * 1e6)
    c.reorder_ppm, c.corrupt_ppm = round(reorder * 1e6), round(corrupt * 1e6)
    c.latency_ns, c.reorder_ns = latency_ns, reorder_ns
    c.flap_every_ns, c.flap_ns = flap_every_ns, flap_ns
    c.crash_every_ns, c.release_ns, c.persist_ns = crash_every_ns, release_ns, persist_ns
    c.window, c.beat, c.rx_capacity = window, beat, rx_capacity
    c.rto_ns, c.dead_ns, c.hello_ns = rto_ns, dead_ns, hello_ns
    c.has_key, c.max_virtual_ns = keyed, max_virtual_ns
    c.idle_ns, c.offer_ns = idle_ns, offer_ns
    c.gates, c.decide_ns = gates, decide_ns
    c.control_ppm, c.gated_ppm = round(control * 1e6), round(gated * 1e6)
    c.refuse_ppm, c.reset_ppm = round(refuse * 1e6), round(reset * 1e6)
    r = ffi.new("oae_sim_result *")
    rc = lib.oae_sim_run(c, r)

    def pair(a: object) -> tuple[int, int]:
        return (a[0], a[1])  # type: ignore[index]

    return SimResult(
        ok=rc == 0,
        violation=ffi.string(r.first_violation).decode(),
        offered=pair(r.offered),
        committed=pair(r.committed),
        aborted=pair(r.aborted),
        delivered=pair(r.delivered),
        renotified=r.renotified,
        frames=r.frames,
        frames_lost=r.frames_lost,
        frames_duplicated=r.frames_duplicated,
        frames_reordered=r.frames_reordered,
        frames_corrupted=r.frames_corrupted,
        flaps=r.flaps,
        crashes=r.crashes,
        links_up=r.links_up,
        virtual_ns=r.virtual_ns,
        drops=tuple(  # type: ignore[arg-type]
            {d: r.stats[w].drops[d] for d in Drop if d != Drop.NONE} for w in (0, 1)
        ),
        wakes=(r.stats[0].wakes, r.stats[1].wakes),
        timeouts_rto=(r.stats[0].timeouts_rto, r.stats[1].timeouts_rto),
        holds=r.holds,
        refusals=r.refusals,
        commits=r.commits,
        reports=r.reports,
        resets=r.resets,
        round_outcomes=r.round_outcomes,
    )


def transitions() -> list[tuple[Phase, Phase, str]]:
    """The engine's own link-phase transition table (from, to, trigger / action)."""
    table = ffi.new("oae_link_transition **")
    n = lib.oae_link_transitions(table)
    return [
        (Phase(getattr(t, "from")), Phase(t.to), ffi.string(t.trigger).decode())
        for t in (table[0][i] for i in range(n))
    ]


def state_diagram() -> str:
    """A mermaid state diagram of `transitions()` (docs/protocol.md embeds it)."""
    lines = ["stateDiagram-v2", "    [*] --> DISCOVER"]
    for a, b, trigger in transitions():
        lines.append(f"    {a.name} --> {b.name}: {trigger.replace(';', ',')}")
    return "\n".join(lines)
