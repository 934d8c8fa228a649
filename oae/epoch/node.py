"""The epoch machine on real links: `EpochNode` plugs an EpochMachine onto runtime links
(oae.runtime.link.Link), the same way the simulator's adapter plugs it onto model links.

Per link, one sender task submits CONTROL messages and application frames strictly in
order (the pump keeps submission order: the FIFO order the switch rule relies on; an
application frame is awaited to its outcome), and applies link epoch switches
(`Link.set_epoch`, so records carry the epoch both ends committed) in that same order.
One receiver task feeds CONTROL deliveries to the machine and application deliveries to
`received()`. A watcher (and every delivery) turns the link's LIVE/down state and
reconnections into link_up/link_down. The durable record lives in
`state_dir/epoch.json` (FileStore: temp, fdatasync, rename, directory fsync), written
synchronously (a worker thread was tried and was slower under load: docs/convergence.md
§11.4); the checkpoint of e+1 is written by the `checkpoint` callback.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from oae.epoch.durable import FileStore
from oae.epoch.machine import (
    Action,
    Capture,
    Converged,
    Decided,
    EpochMachine,
    LinkEpoch,
    Persist,
    Send,
)
from oae.epoch.messages import Wave

Checkpoint = Callable[[Wave], Awaitable[bool]]


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
    in `mixed_app_frames`. The record epoch the engine checks is not surfaced to Python,
    so this makes the contract's "no mixed-epoch frame" measurable end to end."""

    def __init__(
        self,
        node_id: int,
        links: Mapping[int, Any],
        state_dir: str | Path,
        checkpoint: Checkpoint = _no_checkpoint,
        poll: float = 0.005,
        tag_epochs: bool = False,
    ) -> None:
        self.links = dict(links)
        self.store = FileStore(Path(state_dir) / "epoch.json")
        self.machine = EpochMachine(node_id, list(self.links), self.store.load())
        self.checkpoint = checkpoint
        self.poll = poll
        self.tag_epochs = tag_epochs
        self.app_received = 0
        self.mixed_app_frames = 0
        self.decided: dict[Wave, bool] = {}
        self.transfer_s: list[float] = []  # CONTROL transfer latencies (send -> outcome)
        self.converged: set[Wave] = set()
        self._changed = trio.Event()
        self._out = {n: trio.open_memory_channel[tuple[str, Any, Any]](math.inf) for n in links}
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[int, bytes]](math.inf)
        self._nursery: trio.Nursery | None = None
        self._ups = {n: -1 for n in links}  # the link's up counter at our last link_up

    # ------------------------------------------------------------ application API
    async def propose(self) -> Wave | None:
        """Start a transition to epoch+1 from this node (None: already in one)."""
        wave, actions = self.machine.propose()
        self._do(actions)
        return wave

    async def wait_ready(self) -> None:
        """Wait until every link is LIVE and has told this node its peer's epoch (a
        proposal made earlier aborts on the links that are not)."""
        while not all(ls.up and ls.heard is not None for ls in self.machine.links.values()):
            await self._wait_change()

    async def wait_outcome(self, wave: Wave) -> bool:
        """Wait until `wave` (initiated here) is decided and, if committed, converged."""
        while not (wave in self.converged or self.decided.get(wave) is False):
            await self._wait_change()
        return wave in self.converged

    async def send(self, neighbour: int, payload: bytes) -> Any:
        """Send an application frame; held while the link is changing epoch."""
        while (epoch := self.machine.send_epoch(neighbour)) is None:
            await self._wait_change()
        if self.tag_epochs:
            payload = epoch.to_bytes(4, "big") + payload
        done: list[Any] = []
        ev = trio.Event()
        self._out[neighbour][0].send_nowait(("app", payload, (done, ev)))
        await ev.wait()
        return done[0]

    def received(self) -> trio.MemoryReceiveChannel[tuple[int, bytes]]:
        """(neighbour, payload) of application frames, in order per link."""
        return self._inbox

    # ------------------------------------------------------------ plumbing
    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._out[a.link][0].send_nowait(("control", a.payload, None))
            elif isinstance(a, Persist):
                self.store.write(a.record)  # durable before any later action
            elif isinstance(a, Capture):
                assert self._nursery is not None
                self._nursery.start_soon(self._write_checkpoint, a.wave)
            elif isinstance(a, LinkEpoch):
                self._out[a.link][0].send_nowait(("epoch", a.epoch, None))
            elif isinstance(a, Decided):
                self.decided[a.wave] = a.committed
            elif isinstance(a, Converged):
                self.converged.add(a.wave)
        self._notify()

    async def _write_checkpoint(self, wave: Wave) -> None:
        ok = await self.checkpoint(wave)
        self._do(self.machine.checkpoint_written(wave, ok))

    async def _sender(self, n: int) -> None:
        link = self.links[n]
        async for kind, item, reply in self._out[n][1]:
            if kind == "epoch":
                link.set_epoch(item)
            elif kind == "control":
                # Submitted in order now (the pump keeps that order); outcome awaited aside.
                batch = link.submit([item], control=True)
                assert self._nursery is not None and batch is not None
                self._nursery.start_soon(self._control_outcome, n, item, batch)
            else:
                reply[0].append(await link.send(item))
                reply[1].set()

    async def _control_outcome(self, n: int, payload: bytes, batch: Any) -> None:
        t0 = trio.current_time()
        while batch.remaining:
            await batch.done.wait()
        self.transfer_s.append(trio.current_time() - t0)
        outcome = batch.results[0]
        if outcome is not None and not outcome.committed:
            self._do(self.machine.transfer_aborted(n, payload))

    async def _receiver(self, n: int) -> None:
        async for msg in self.links[n].received():
            self._sync(n)
            if msg.control:
                self._do(self.machine.receive(n, msg.payload))
            else:
                # The engine already refused offers tagged with another epoch.
                if self.tag_epochs:
                    self.app_received += 1
                    if int.from_bytes(msg.payload[:4], "big") != self.machine.epoch:
                        self.mixed_app_frames += 1
                self._inbox_send.send_nowait((n, msg.payload))

    def _sync(self, n: int) -> None:
        """Bring the machine's view of link n in line with the runtime's: down, up, or a
        reconnection (the link's up counter moved) as a down and an up. Called by the
        watcher, and before every delivery, so no message of a new session is taken
        under the old session's state."""
        link, ls = self.links[n], self.machine.links[n]
        count = link.counters["links_up"]
        if ls.up and (not link.up or count != self._ups[n]):
            self._do(self.machine.link_down(n))
        if link.up and not ls.up:
            self._ups[n] = count
            self._do(self.machine.link_up(n))

    async def _watch(self, n: int) -> None:
        while True:
            self._sync(n)
            await trio.sleep(self.poll)


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
            nursery.start_soon(node._sender, n)
            nursery.start_soon(node._receiver, n)
            nursery.start_soon(node._watch, n)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
