"""The epoch machine on real links: `EpochNode` plugs an EpochMachine onto runtime links
(oae.runtime.link.Link), the same way the simulator's adapter plugs it onto model links.

Every action is performed synchronously, in the machine's order, by `_do`: a CONTROL
message is submitted to its link (`Link.submit`; the pump keeps submission order: the
FIFO order the switch rule relies on) and its outcome is awaited aside; a link epoch
switch is applied with `Link.set_epoch` (records carry the epoch both ends committed);
an application frame is submitted by `send` the moment the machine lets it go (no await
between the check and the submit) and only its outcome is awaited. So CONTROL messages,
application frames and switches reach each link in exactly the order the machine and
the application produced them, and nothing waits for another transfer's outcome.
One receiver task per link feeds CONTROL deliveries to the machine and application
deliveries to `received()`. The link's LIVE/down changes and reconnections become
link_up/link_down through a watcher woken by the link's state-change notification
(`Link.wait_state_change`) and, before every delivery, the same check (`_sync`), so no
message of a new link session is taken under the old session's state. The durable
record lives in `state_dir/epoch.json` (FileStore: two slots updated in place, one
fdatasync), written synchronously before any later action (a worker thread was tried
and was slower under load: docs/convergence.md §11.4); of several consecutive records
only the last is written. The checkpoint of e+1 is written by the `checkpoint` callback.

What a driver (the `oae node` daemon, oae.epoch.daemon; tests) uses is the public API
below: `propose`, `wait_ready`, `outcome`/`wait_outcome`, `wait_epoch`, `send`,
`received`, `status`, the counters and the instants of `proposed_at`/`decided_at`/
`converged_at`; nothing outside this module reads the machine's internals.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from oae.epoch.durable import FileStore
from oae.epoch.machine import (
    Action,
    Capture,
    Converged,
    Decided,
    Discard,
    EpochMachine,
    LinkEpoch,
    Persist,
    Send,
)
from oae.epoch.messages import Wave
from oae.errors import UsageError
from oae.runtime.link import Message

Checkpoint = Callable[[Wave], Awaitable[bool]]
CONTROL_LOG = 1 << 16  # CONTROL sends and deliveries kept for measurement


async def _no_checkpoint(wave: Wave) -> bool:
    return True


class EpochNode:
    """One node's epoch layer over runtime links keyed by the neighbour's node id.

    `checkpoint(wave)` writes this node's state for `wave.epoch` and returns whether it
    succeeded; a capture of a wave that later aborts is never referred to again (the
    committed wave in epoch.json names the checkpoint that counts).

    With `tag_epochs`, `send` prefixes every application payload with the sender's epoch
    (4 bytes, big-endian: the tag the link end uses at that moment) and every delivered
    one is compared, at delivery, with this node's committed epoch: a mismatch is counted
    in `mixed_app_frames` and the frame is refused (not handed to `received()`); a match
    is handed over without its tag. The record epoch the engine checks is not surfaced to
    Python, so this makes the contract's "no mixed-epoch frame" measurable end to end.

    Instants (`proposed_at`, `decided_at`, `converged_at`, per wave) are trio.current_time()
    at the step that proposed, decided or reported Conv: convergence measured where it
    happens, not by whoever asks."""

    def __init__(
        self,
        node_id: int,
        links: Mapping[int, Any],
        state_dir: str | Path,
        checkpoint: Checkpoint = _no_checkpoint,
        tag_epochs: bool = False,
    ) -> None:
        self.links = dict(links)
        self.store = FileStore(Path(state_dir) / "epoch.json")
        record = self.store.load()
        named = {record.tree_parent, record.prepared_parent} - {None}
        missing = (named | record.tree_children | record.prepared_children) - set(self.links)
        if missing:
            raise UsageError(
                f"{self.store.path}: the epoch record names link(s) {sorted(missing)}, "
                f"which this node does not have (links: {sorted(self.links)})"
            )
        self.machine = EpochMachine(node_id, list(self.links), record)
        self.checkpoint = checkpoint
        self.tag_epochs = tag_epochs
        self.app_received = 0
        self.mixed_app_frames = 0
        self.persists = 0  # epoch records written (consecutive ones count once)
        self.decided: dict[Wave, bool] = {}
        self.transfer_s: list[float] = []  # CONTROL transfer latencies (submit -> outcome)
        # (sent, neighbour, payload, trio time) of CONTROL messages, submitted here (sent)
        # or handed over by the link (not sent): the one-way delivery is measured from it
        self.control_log: deque[tuple[bool, int, bytes, float]] = deque(maxlen=CONTROL_LOG)
        self.converged: set[Wave] = set()
        self.proposed_at: dict[Wave, float] = {}
        self.decided_at: dict[Wave, float] = {}
        self.converged_at: dict[Wave, float] = {}
        self._changed: trio.Event | None = None  # created only when someone waits
        self._committed: trio.Event | None = None  # likewise, set when the epoch moves
        self._epoch_seen = self.machine.epoch
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[int, Message]](math.inf)
        self._nursery: trio.Nursery | None = None
        self._ups = {n: -1 for n in links}  # the link's up counter at our last link_up

    # ------------------------------------------------------------ application API
    async def propose(self) -> Wave | None:
        """Start a transition to epoch+1 from this node (None: already in one)."""
        t0 = trio.current_time()
        wave, actions = self.machine.propose()
        if wave is not None:
            self.proposed_at[wave] = t0
        self._do(actions)
        return wave

    @property
    def epoch(self) -> int:
        """The committed epoch."""
        return self.machine.epoch

    def outcome(self, wave: Wave) -> bool | None:
        """True once `wave` (initiated here, by this or an earlier process) is known
        converged here, False once it is known aborted (decided here, in the durable
        aborted set, or its epoch taken by another wave), None while undecided."""
        if wave in self.converged:
            return True
        rec = self.machine.rec
        if self.decided.get(wave) is False or wave in rec.aborted:
            return False
        if rec.epoch >= wave.epoch and rec.committed != wave:
            return False
        return None

    async def wait_ready(self) -> None:
        """Wait until every link is LIVE and has told this node its peer's epoch (a
        proposal made earlier aborts on the links that are not)."""
        while not all(ls.up and ls.heard is not None for ls in self.machine.links.values()):
            await self.wait_change()

    async def wait_outcome(self, wave: Wave) -> bool:
        """Wait until `wave` (initiated here) is decided and, if committed, converged."""
        while (result := self.outcome(wave)) is None:
            await self.wait_change()
        return result

    async def wait_epoch(self, epoch: int) -> None:
        """Wait until this node has committed `epoch` (or a later one); woken only when
        the committed epoch moves, not at every step."""
        while self.machine.epoch < epoch:
            if self._committed is None:
                self._committed = trio.Event()
            await self._committed.wait()

    def ready(self) -> bool:
        """Every link LIVE and told this node its peer's epoch."""
        return all(ls.up and ls.heard is not None for ls in self.machine.links.values())

    def counters(self) -> dict[str, int]:
        """What this node counted: tagged application frames received and refused as
        mixed-epoch (`mixed_app_frames`; `mixed_frames`: the machine's own refusals),
        undecodable CONTROL messages, epoch records written, waves decided/converged."""
        m = self.machine
        return {
            "app_received": self.app_received,
            "mixed_app_frames": self.mixed_app_frames,
            "mixed_frames": m.mixed_frames,
            "bad_messages": m.bad_messages,
            "persists": self.persists,
            "committed": sum(self.decided.values()),
            "aborted": sum(not ok for ok in self.decided.values()),
            "converged": len(self.converged),
        }

    def status(self) -> dict[str, Any]:
        """JSON-ready: the committed wave, the wave in progress, per neighbour link its
        state (up; told/heard: the committed epochs exchanged on this link session;
        `epoch`: the tag its application frames carry now, None while held), the waves
        deferred, and the last wave initiated here that is known converged."""
        m = self.machine

        def w(x: Wave | None) -> list[int] | None:
            return None if x is None else [x.epoch, x.attempt, x.initiator]

        st = m.wave
        wave = None if st is None else {
            "wave": w(st.wave), "parent": st.parent, "waiting": sorted(st.waiting),
            "children": sorted(st.children), "written": st.written, "accepted": st.accepted,
            "prepared": m.rec.prepared == st.wave,
        }  # fmt: skip
        conv = max(self.converged, default=None)
        return {
            "node_id": m.node_id,
            "epoch": m.epoch,
            "committed": w(m.rec.committed),
            "wave": wave,
            "deferred": [w(x) for x in sorted(m.deferred)],
            "converged": w(conv),
            "links": {n: {"up": ls.up, "told": ls.told, "heard": ls.heard,
                          "epoch": m.send_epoch(n)} for n, ls in m.links.items()},
            "counters": self.counters(),
        }  # fmt: skip

    async def send(self, neighbour: int, payload: bytes) -> Any:
        """Send an application frame and return its outcome; held while the link is
        changing epoch. The frame is submitted as soon as the machine lets it go, in
        order with this link's CONTROL messages and switches."""
        return (await self.send_many(neighbour, [payload]))[0]

    async def send_many(self, neighbour: int, payloads: Sequence[bytes]) -> list[Any]:
        """Send application frames in order and return their outcomes: held while the
        link is changing epoch, then all submitted at once, tagged with the same epoch
        (frames submitted before a later marker belong to the epoch before it, as one
        frame would), so the link keeps its window full."""
        while (epoch := self.machine.send_epoch(neighbour)) is None:
            await self.wait_change()
        if self.tag_epochs:
            tag = epoch.to_bytes(4, "big")
            payloads = [tag + p for p in payloads]
        link = self.links[neighbour]
        return await link.wait_outcomes(link.submit(payloads))

    def received(self) -> trio.MemoryReceiveChannel[tuple[int, Message]]:
        """(neighbour, message) of application frames, in order per link; with
        `tag_epochs` only those tagged with this node's committed epoch, tag removed."""
        return self._inbox

    # ------------------------------------------------------------ plumbing
    async def wait_change(self) -> None:
        """Wait until the next step of the machine (any event, any action)."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if self._committed is not None and self.machine.epoch != self._epoch_seen:
            self._committed.set()
            self._committed = None
        self._epoch_seen = self.machine.epoch

    def _do(self, actions: list[Action]) -> None:
        """Perform `actions` in order, synchronously: each Send and LinkEpoch reaches its
        link (Link.submit / Link.set_epoch) in the machine's order, and a Persist is
        durable before any later action. Of consecutive Persists (nothing in between but
        no-op Discards) only the last record is written: records only move forward, and
        nothing that depends on the earlier ones happens before it is durable."""
        last = len(actions) - 1
        for i, a in enumerate(actions):
            if isinstance(a, Send):
                link = self.links[a.link]
                batch = link.submit([a.payload], control=True)
                assert self._nursery is not None and batch is not None
                t0 = trio.current_time()
                self.control_log.append((True, a.link, a.payload, t0))
                self._nursery.start_soon(self._control_outcome, a.link, a.payload, batch, t0)
            elif isinstance(a, Persist):
                j = i + 1
                while j <= last and isinstance(actions[j], Discard):
                    j += 1
                if j <= last and isinstance(actions[j], Persist):
                    continue  # a later record in this run supersedes it
                self.store.write(a.record)  # durable before any later action
                self.persists += 1
            elif isinstance(a, Capture):
                assert self._nursery is not None
                self._nursery.start_soon(self._write_checkpoint, a.wave)
            elif isinstance(a, LinkEpoch):
                self.links[a.link].set_epoch(a.epoch)
            elif isinstance(a, Decided):
                self.decided[a.wave] = a.committed
                self.decided_at[a.wave] = trio.current_time()
            elif isinstance(a, Converged):
                self.converged.add(a.wave)
                self.converged_at[a.wave] = trio.current_time()
        self._notify()

    async def _write_checkpoint(self, wave: Wave) -> None:
        ok = await self.checkpoint(wave)
        self._do(self.machine.checkpoint_written(wave, ok))

    async def _control_outcome(self, n: int, payload: bytes, batch: Any, t0: float) -> None:
        """Wait for a CONTROL transfer's outcome (submitted at `t0`); an abort goes to
        the machine."""
        outcomes = await self.links[n].wait_outcomes(batch)
        self.transfer_s.append(trio.current_time() - t0)
        if outcomes and not outcomes[0].committed:
            self._do(self.machine.transfer_aborted(n, payload))

    async def _receiver(self, n: int) -> None:
        async for msg in self.links[n].received():
            self._sync(n)
            if msg.control:
                self.control_log.append((False, n, msg.payload, msg.at))
                self._do(self.machine.receive(n, msg.payload))
            else:
                # The engine already refused offers tagged with another epoch.
                if self.tag_epochs:
                    self.app_received += 1
                    if int.from_bytes(msg.payload[:4], "big") != self.machine.epoch:
                        self.mixed_app_frames += 1
                        continue
                    msg = replace(msg, payload=msg.payload[4:])
                self._inbox_send.send_nowait((n, msg))

    def _sync(self, n: int) -> None:
        """Bring the machine's view of link n in line with the runtime's: down, up, or a
        reconnection (the link's up counter moved) as a down and an up. Called by the
        watcher on every state change of the link, and before every delivery, so no
        message of a new session is taken under the old session's state."""
        link, ls = self.links[n], self.machine.links[n]
        count = link.counters["links_up"]
        if ls.up and (not link.up or count != self._ups[n]):
            self._do(self.machine.link_down(n))
        if link.up and not ls.up:
            self._ups[n] = count
            self._do(self.machine.link_up(n))

    async def _watch(self, n: int) -> None:
        link = self.links[n]
        while True:
            self._sync(n)
            # No checkpoint between _sync and here: a change after it wakes this wait.
            await link.wait_state_change()


@asynccontextmanager
async def open_epoch_node(
    node_id: int,
    links: Mapping[int, Any],
    state_dir: str | Path,
    checkpoint: Checkpoint = _no_checkpoint,
    tag_epochs: bool = False,
) -> AsyncIterator[EpochNode]:
    """Run an EpochNode over open runtime links until the block exits."""
    node = EpochNode(node_id, links, state_dir, checkpoint, tag_epochs=tag_epochs)
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        for link in node.links.values():
            link.set_epoch(node.machine.epoch)
        node._do(node.machine.start())
        for n in node.links:
            nursery.start_soon(node._receiver, n)
            nursery.start_soon(node._watch, n)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
