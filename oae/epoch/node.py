"""The epoch layer on real links: `EpochNode` runs a node's epoch machine in the C epoch
runner (csrc/epochrun.c), one thread beside the links' pumps, and is its Trio face.

The runner takes every event of the node's link pumps itself: a wave's legs (OFFERED,
REFLECTED, CONTROL deliveries and outcomes, link up/down) go to the C machine
(csrc/epoch.c, the twin of oae.epoch.machine), whose actions it performs at once, in
order (gate calls, CONTROL offers, the binary record written and fdatasync'ed before any
later action, link epochs), so a leg never waits for Python. What Python needs comes
back through the runner's event fd: each link's own events (LINK_UP/DOWN, application
deliveries and outcomes) for its Link object (`Link.take_event`: its state, `received()`
and `wait_outcomes` work as usual), and the epoch events (proposal answers, captures,
decisions, Conv, commits). The links must be opened with `gates` and `epoch_runner`
(the runner, not the Link, reads their pumps).

Application frames go out through the runner (`send`), which tags each with the epoch
of its link end (4 bytes, big-endian) or holds it while that end is changing epoch; a
delivered frame whose tag is not the epoch of its link end is dropped by the runner and
counted (`mixed_app_frames`), so `received()` hands over only frames of the right epoch,
tag removed. The durable record lives in `state_dir/epoch.json` (oae.epoch.durable's
FileStore layout, the binary record), written by the runner; a record of an older layout
is read here once and rewritten by the runner's first write.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import trio

from oae._pump import ffi, lib
from oae.epoch.cmachine import machine_status, raise_for
from oae.epoch.durable import FileStore
from oae.epoch.messages import Wave
from oae.errors import OaeError, UsageError
from oae.runtime.link import Link, Message, Outcome, pack_payloads, unwrap_single

Checkpoint = Callable[[Wave], Awaitable[bool]]
EVENT_BATCH = 1024
TAG_LEN = 4
PAYLOAD_MAX = 16 - TAG_LEN


LEG_NAMES = {lib.OAE_ERC_OFFER: "offer", lib.OAE_ERC_HOLD: "hold",
             lib.OAE_ERC_COMMIT: "commit", lib.OAE_ERC_REPORT: "report"}  # fmt: skip


class Leg(NamedTuple):
    """One end of a wave transfer's leg in the runner's CONTROL log (`harvest`)."""

    leg: str  # offer, hold, commit, report
    acted: bool  # this node acted (else: the peer's action arrived here)
    neighbour: int
    tid: int  # (0 for an offer this node made: the link numbers it later)
    payload: bytes  # offers and commits: the wave transfer's
    at: float  # trio time


class EpochNodeError(OaeError):
    """The epoch runner stopped: its record could not be written, or the machine failed."""


def _wave(w: Any) -> Wave:
    return Wave(w.epoch, w.attempt, w.initiator)


class EpochNode:
    """One node's epoch layer over runtime links keyed by the neighbour's node id.

    `checkpoint(wave)`, if given, writes this node's state for `wave.epoch` and returns
    whether it succeeded; it is called at the capture (the runner holds the wave until it
    answers). Without it a capture counts as written at once. A capture of a wave that
    later aborts is never referred to again (the committed wave in epoch.json names the
    checkpoint that counts).

    Instants (`proposed_at`, `decided_at`, `converged_at`, per wave) are trio.current_time()
    of the runner's step that proposed, decided or reported Conv: convergence measured
    where it happens, not by whoever asks."""

    def __init__(
        self,
        node_id: int,
        links: Mapping[int, Link],
        state_dir: str | Path,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.node_id = node_id
        self.links = dict(sorted(links.items()))
        for n, link in self.links.items():
            if not link.options.epoch_runner:
                raise UsageError(
                    f"link to {n}: an epoch node's links are opened for its runner "
                    "(LinkOptions(gates=True, epoch_runner=True))"
                )
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"state dir {state_dir}: {exc.strerror}") from None
        self.store = FileStore(Path(state_dir) / "epoch.json")
        record = self.store.load()
        named = {record.tree_parent, record.prepared_parent} - {None}
        missing = (named | record.tree_children | record.prepared_children) - set(self.links)
        if missing:
            raise UsageError(
                f"{self.store.path}: the epoch record names link(s) {sorted(missing)}, "
                f"which this node does not have (links: {sorted(self.links)})"
            )
        self.checkpoint = checkpoint
        self.app_received = 0
        self.decided: dict[Wave, bool] = {}
        self.converged: set[Wave] = set()
        self.proposed_at: dict[Wave, float] = {}
        self.decided_at: dict[Wave, float] = {}
        self.converged_at: dict[Wave, float] = {}
        data = record.to_bytes()
        err = ffi.new("int *")
        ids = list(self.links)
        run = lib.oae_epochrun_new(
            node_id,
            ffi.new("uint32_t[]", ids or [0]),
            ffi.new("oae_pump *[]", [link.pump for link in self.links.values()] or [ffi.NULL]),
            len(ids),
            data,
            len(data),
            str(self.store.path).encode(),
            lib.OAE_EPOCHRUN_CHECKPOINT if checkpoint is not None else 0,
            err,
        )
        if run == ffi.NULL:
            if err[0] < 0 and err[0] not in range(lib.OAE_EPOCH_ERECORD, 0):
                raise OSError(-err[0], f"epoch runner of node {node_id}")
            raise_for(err[0], f"node {node_id}")
        self._run = ffi.gc(run, lib.oae_epochrun_free)
        for link in self.links.values():
            if link.up:
                # An earlier node ran on this link session: its wave transfers end with
                # a round, and this machine starts from the next LINK_UP.
                link.reset()
        self._changed: trio.Event | None = None  # created only when someone waits
        self._committed: trio.Event | None = None  # likewise, set when the epoch moves
        self._decision: trio.Event | None = None  # likewise: a decision, Conv or epoch
        self._proposals: dict[int, tuple[trio.Event, list[tuple[int, Wave | None]]]] = {}
        self._next_request = 1
        self._error: EpochNodeError | None = None
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[int, Message]](math.inf)
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------ application API
    async def propose(self) -> Wave | None:
        """Start a transition to epoch+1 from this node (None: already in one)."""
        request = self._next_request
        self._next_request += 1
        done, answer = trio.Event(), []
        self._proposals[request] = (done, answer)
        self._check(lib.oae_epochrun_propose(self._run, request))
        while not done.is_set():
            self._raise_if_failed()
            await self.wait_change()
        info, wave = answer[0]
        if info:
            raise_for(info, "propose")
        return wave

    @property
    def epoch(self) -> int:
        """The committed epoch (durable)."""
        return int(lib.oae_epochrun_epoch(self._run))

    def outcome(self, wave: Wave) -> bool | None:
        """True once `wave` (initiated here, by this or an earlier process) is known
        converged here, False once it is known aborted (decided here, in the durable
        aborted set, or its epoch taken by another wave), None while undecided."""
        if wave in self.converged:
            return True
        if self.decided.get(wave) is False:
            return False
        m = lib.oae_epochrun_lock(self._run)
        try:
            r = lib.oae_epoch_record_get(m)
            committed = _wave(r.committed)
            aborted = {_wave(r.aborted[i]) for i in range(r.n_aborted)}
        finally:
            lib.oae_epochrun_unlock(self._run)
        if wave in aborted or (committed.epoch >= wave.epoch and committed != wave):
            return False
        return None

    def ready(self) -> bool:
        """Every link LIVE and told this node its peer's committed epoch."""
        return bool(lib.oae_epochrun_ready(self._run))

    async def wait_ready(self) -> None:
        """Wait until `ready()` (a proposal made earlier aborts on the links that are not)."""
        while not self.ready():
            await self.wait_change()

    async def wait_outcome(self, wave: Wave) -> bool:
        """Wait until `wave` (initiated here) is decided and, if committed, converged."""
        while (result := self.outcome(wave)) is None:
            await self.wait_decision()
        return result

    def wait_decision(self) -> Awaitable[None]:
        """Until the runner decides a wave, learns a Conv or commits an epoch (what
        `outcome` changes with): not woken at the wave's other steps. Armed when called."""
        self._raise_if_failed()
        if self._decision is None:
            self._decision = trio.Event()
            lib.oae_epochrun_watch_epoch(self._run, self.epoch)
        return self._decision.wait()

    async def wait_epoch(self, epoch: int) -> None:
        """Wait until this node has committed `epoch` (or a later one); woken only when
        the committed epoch moves, not at every step (the runner says so only then)."""
        while (known := self.epoch) < epoch:
            self._raise_if_failed()
            if self._committed is None:
                self._committed = trio.Event()
                lib.oae_epochrun_watch_epoch(self._run, known)
            await self._committed.wait()

    def log_epochs(self, fd: int, prefix: str, suffix: str) -> None:
        """From now on the runner writes `prefix`, the epoch and `suffix` to `fd` at each
        new committed epoch (once durable): a log line per transition without a Python
        wake-up."""
        if lib.oae_epochrun_log_epochs(self._run, fd, prefix.encode(), suffix.encode()) < 0:
            raise UsageError("epoch log line: prefix and suffix must be shorter than 64 bytes")

    def wait_change(self) -> Awaitable[None]:
        """Until the runner's next step (any event, any action). Armed when called."""
        self._raise_if_failed()
        if self._changed is None:
            self._changed = trio.Event()
            lib.oae_epochrun_watch(self._run)  # the runner says CHANGED only when asked
        return self._changed.wait()

    def send_epoch(self, neighbour: int) -> int | None:
        """The tag application frames to `neighbour` carry now (None: held)."""
        m = lib.oae_epochrun_lock(self._run)
        try:
            e = lib.oae_epoch_send_epoch(m, neighbour)
        finally:
            lib.oae_epochrun_unlock(self._run)
        return None if e < 0 else e

    async def send(self, neighbour: int, payload: bytes) -> Outcome:
        """Send an application frame (at most 12 bytes) and return its outcome; held
        while the link is changing epoch."""
        return (await self.send_many(neighbour, [payload]))[0]

    async def send_many(self, neighbour: int, payloads: Sequence[bytes]) -> list[Outcome]:
        """Send application frames in order and return their outcomes: held while the
        link is changing epoch, then all submitted at once, tagged with the same epoch,
        so the link keeps its window full."""
        link = self.links.get(neighbour)
        if link is None:
            raise UsageError(f"node {self.node_id} has no link to {neighbour}")
        if not payloads:
            return []
        buf, lens = pack_payloads(payloads, PAYLOAD_MAX, "an epoch-tagged frame")
        n = len(payloads)
        while True:
            batch = link.reserve(n)
            tag = lib.oae_epochrun_send(
                self._run, neighbour, ffi.from_buffer(buf), ffi.from_buffer(lens), n, batch.base
            )
            if tag >= 0:
                return await link.wait_outcomes(batch)
            link.unreserve(batch)
            if tag != lib.OAE_EPOCHRUN_HELD:
                self._raise_if_failed()
                raise MemoryError("epoch runner: out of memory queueing transfers")
            await self.wait_change()

    def received(self) -> trio.MemoryReceiveChannel[tuple[int, Message]]:
        """(neighbour, message) of application frames, in order per link, each tagged
        with the epoch of its link end (tag removed)."""
        return self._inbox

    def counters(self) -> dict[str, int]:
        """What this node counted: application frames delivered (`app_received`), and
        of them refused as mixed-epoch (`mixed_app_frames`: tag not the link end's epoch,
        or no tag;
        `mixed_frames`: the machine's own count of the first kind), undecodable CONTROL
        messages, epoch records written, waves decided/converged here."""
        st = self.stats()
        m = lib.oae_epochrun_lock(self._run)
        try:
            ctr = ffi.new("oae_epoch_counters *")
            lib.oae_epoch_counters_get(m, ctr)
        finally:
            lib.oae_epochrun_unlock(self._run)
        return {
            "app_received": self.app_received + st["mixed_frames"],
            "mixed_app_frames": st["mixed_frames"],
            "mixed_frames": ctr.mixed_frames,
            "bad_messages": ctr.bad_messages,
            "persists": st["persists"],
            "committed": sum(self.decided.values()),
            "aborted": sum(not ok for ok in self.decided.values()),
            "converged": len(self.converged),
        }

    def harvest(self) -> tuple[list[float], list[Leg]]:
        """The runner's CONTROL log since the last harvest: the transfer times (submit to
        outcome, s) of its status messages (a wave transfer's outcome is its DONE leg: it
        times the wave), and each leg of the wave transfers where this node acted (its
        offer, hold, commit, report) or where the peer's action arrived, with its trio
        time: a leg's one-way time is the difference between two nodes' entries (offers
        matched by payload, the others by tid)."""
        buf = ffi.new("oae_epochrun_ctl[]", EVENT_BATCH)
        offset = trio.current_time() - time.monotonic()
        took: list[float] = []
        legs: list[Leg] = []
        while n := lib.oae_epochrun_control_log(self._run, buf, EVENT_BATCH):
            for c in buf[0:n]:
                if c.kind == lib.OAE_ERC_SETTLED:
                    took.append(c.took_ns * 1e-9)
                    continue
                payload = bytes(ffi.buffer(c.payload, c.len))
                at = c.at_ns * 1e-9 + offset
                legs.append(Leg(LEG_NAMES[c.kind], bool(c.acted), c.link, c.tid, payload, at))
        return took, legs

    def stats(self) -> dict[str, int]:
        """The runner's counters (csrc/epochrun.h oae_epochrun_stats)."""
        st = ffi.new("oae_epochrun_stats *")
        lib.oae_epochrun_stats_get(self._run, st)
        return {name: getattr(st, name) for name in dir(st)}

    def status(self) -> dict[str, Any]:
        """JSON-ready: the committed wave, the wave in progress (with whether it is
        prepared), the waves deferred, per neighbour link its state (up; heard: the
        committed epoch the peer proved on this link session; `epoch`: the tag its
        application frames carry now, None while held), the last wave initiated here
        that is known converged, and the counters."""
        m = lib.oae_epochrun_lock(self._run)
        try:
            st = machine_status(ffi, lib, m, self.node_id)
        finally:
            lib.oae_epochrun_unlock(self._run)
        wave = st["wave"]
        if wave is not None:
            wave = {**wave, "prepared": st["prepared"] == wave["wave"]}
        conv = max(self.converged, default=None)
        return {
            "node_id": self.node_id,
            "epoch": st["epoch"],
            "committed": st["committed"],
            "wave": wave,
            "deferred": [json.loads(w) for w in st["deferred"]],
            "converged": None if conv is None else [conv.epoch, conv.attempt, conv.initiator],
            "links": {
                int(n): {"up": ln["up"], "heard": ln["heard"], "epoch": ln["send_epoch"]}
                for n, ln in st["links"].items()
            },
            "counters": self.counters(),
        }

    # ------------------------------------------------------------ plumbing
    def _check(self, rc: int) -> None:
        if rc == lib.OAE_EPOCHRUN_STOPPED:
            self._raise_if_failed()
            raise EpochNodeError(f"epoch node {self.node_id}: the runner has stopped")
        if rc < 0:
            raise OSError(-rc, "epoch runner command")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _decided(self) -> None:
        if self._decision is not None:
            self._decision.set()
            self._decision = None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _dispatch(self) -> None:
        """Take the runner's events in batches and apply them in order."""
        buf = ffi.new("oae_epochrun_event[]", EVENT_BATCH)
        efd = lib.oae_epochrun_event_fd(self._run)
        offset = trio.current_time() - time.monotonic()  # oae_now_ns is CLOCK_MONOTONIC
        while True:
            await trio.lowlevel.wait_readable(efd)
            while n := lib.oae_epochrun_events(self._run, buf, EVENT_BATCH):
                for i in range(n):
                    self._on_event(buf[i], buf[i].at_ns * 1e-9 + offset)
                self._notify()
                if n < EVENT_BATCH:
                    break

    def _on_event(self, ev: Any, at: float) -> None:
        t = ev.type
        if t == lib.OAE_ER_LINK:
            self.links[ev.link].take_event(ev.pe, at)
        elif t == lib.OAE_ER_PROPOSED:
            done, answer = self._proposals.pop(ev.request)
            wave = _wave(ev.wave) if ev.ok else None
            answer.append((ev.info, wave))
            if wave is not None:
                self.proposed_at[wave] = at
            done.set()
        elif t == lib.OAE_ER_CAPTURE:
            assert self._nursery is not None
            self._nursery.start_soon(self._write_checkpoint, _wave(ev.wave))
        elif t == lib.OAE_ER_DECIDED:
            self.decided[_wave(ev.wave)] = bool(ev.ok)
            self.decided_at[_wave(ev.wave)] = at
            self._decided()
        elif t == lib.OAE_ER_CONVERGED:
            self.converged.add(_wave(ev.wave))
            self.converged_at[_wave(ev.wave)] = at
            self._decided()
        elif t == lib.OAE_ER_EPOCH:
            self._decided()
            if self._committed is not None:
                self._committed.set()
                self._committed = None
        elif t == lib.OAE_ER_FAILED:
            why = (
                f"its record could not be written: {os.strerror(-ev.info)}"
                if ev.ok
                else f"the epoch machine failed ({ev.info}, csrc/epoch.h)"
            )
            self._error = EpochNodeError(f"epoch node {self.node_id} stopped: {why}")
            self._decided()
            if self._committed is not None:
                self._committed.set()
            raise self._error
        # OAE_ER_DISCARD: nothing was captured outside the checkpoint callback;
        # OAE_ER_CHANGED: _notify below wakes every waiter

    async def _write_checkpoint(self, wave: Wave) -> None:
        assert self.checkpoint is not None
        ok = await self.checkpoint(wave)
        w = ffi.new("oae_epoch_wave *", (wave.epoch, wave.attempt, wave.initiator))
        self._check(lib.oae_epochrun_checkpoint_written(self._run, w, ok))

    async def _receiver(self, n: int) -> None:
        async for msg in self.links[n].received():
            self.app_received += 1
            self._inbox_send.send_nowait((n, replace(msg, payload=msg.payload[TAG_LEN:])))

    async def _runner(self) -> None:
        rc = await trio.to_thread.run_sync(
            lib.oae_epochrun_run, self._run, limiter=trio.CapacityLimiter(1)
        )
        if rc and self._error is None:
            self._error = EpochNodeError(f"epoch node {self.node_id}: the runner stopped ({rc})")

    async def _stopper(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            lib.oae_epochrun_stop(self._run)


@asynccontextmanager
async def open_epoch_node(
    node_id: int,
    links: Mapping[int, Link],
    state_dir: str | Path,
    checkpoint: Checkpoint | None = None,
) -> AsyncIterator[EpochNode]:
    """Run an EpochNode over open runtime links (opened with gates and epoch_runner)
    until the block exits; the runner thread is stopped before it returns."""
    node = EpochNode(node_id, links, state_dir, checkpoint)
    with unwrap_single():
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            nursery.start_soon(node._stopper)
            nursery.start_soon(node._runner)
            nursery.start_soon(node._dispatch)
            for n in node.links:
                nursery.start_soon(node._receiver, n)
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()
