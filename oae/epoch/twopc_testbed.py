"""The simulated `2pc` baseline (oae.epoch.baselines) on real links: the same Process
classes, driven by Trio and runtime links instead of the discrete-event simulator, so both
networks run one and the same algorithm.

`TwoPCNet` gives the processes the part of `Sim` they use (`now`, `topo`, `process`,
`send`, `timer`, `capture`, `write_checkpoint`, `discard`); `TwoPCNode` is one node of it:
its `SimpleStore` on disk, its process, its links. Every event (a CONTROL delivery, a
timer, a checkpoint written, the start, a proposal) is one synchronous call into the
process; the node then makes the store durable if the call changed it (temp file,
fdatasync, rename, directory fsync) and only then submits the messages the call sent,
in order. So a participant's `prepared` is durable before its YES leaves, its commit
before its ACK, the coordinator's `coordinating` before the first PREPARE and its
decision before the first COMMIT (or ABORT) — the write-ahead rule the simulation gets
for free from a store that survives crashes.

Messages are 9-byte CONTROL transfers (type, destination, source, transaction), relayed
hop by hop along shortest paths by every node on the way (`TwoPC.next_hop`); a message
whose hop is down is lost (the transfer aborts) and the algorithm's timers re-ask, as in
the simulation. Checkpoints are instantaneous, as bilateral's on the testbed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import trio

from oae.epoch.baselines import SimpleStore, TwoPC, _TwoPCProcess
from oae.epoch.durable import SlotFile
from oae.epoch.sim import Topology
from oae.runtime.link import LinkError, Outcome

T = TypeVar("T")
_WHAT = "2pc store"  # names the file in errors


def load_store(path: Path) -> SimpleStore:
    """A 2pc node's durable store (a fresh one if none was written)."""
    raw = SlotFile(path, _WHAT).read()
    if raw is None:
        return SimpleStore()
    data = json.loads(raw)
    data["log"] = {int(k): v for k, v in data["log"].items()}
    return SimpleStore(**data)


def _encode(store: SimpleStore) -> bytes:
    return json.dumps(asdict(store), sort_keys=True).encode()


def save_store(path: Path, store: SimpleStore) -> None:
    """Durably replace the store (SlotFile: in place, one fdatasync, as FileStore), so
    2pc pays for its records what bilateral pays for its own."""
    SlotFile(path, _WHAT).write(_encode(store))


class TwoPCNet:
    """The Sim-like facade the 2pc processes of one run share (one Trio process)."""

    def __init__(self, topo: Topology, algo: TwoPC, retry_s: float, timeout_s: float) -> None:
        self.topo, self.algo = topo, algo
        self.nbrs = {v: topo.neighbours(v) for v in range(topo.n)}
        self.nodes: dict[int, TwoPCNode] = {}
        algo.retry_us, algo.timeout_us = retry_s * 1e6, timeout_s * 1e6

    @property
    def now(self) -> float:
        """µs, the Trio clock (the algorithm's decision and release instants)."""
        return trio.current_time() * 1e6

    def process(self, v: int) -> _TwoPCProcess | None:
        node = self.nodes.get(v)
        return node.proc if node is not None and node.alive else None

    def send(self, v: int, w: int, payload: bytes) -> None:
        self.nodes[v].pending.append((w, payload))

    def timer(self, v: int, delay: float, token: object) -> None:
        self.nodes[v].start_timer(delay * 1e-6, token)

    def capture(self, v: int, epoch: int) -> None:
        pass  # no application state on the testbed, as for bilateral

    def write_checkpoint(self, v: int, epoch: int, token: object) -> None:
        self.nodes[v].checkpoint(token)

    def discard(self, v: int, epoch: int) -> None:
        pass


class TwoPCNode:
    """One 2pc node over runtime links keyed by neighbour id; run with `run()` in a
    nursery (cancelling it is the node's crash)."""

    def __init__(self, v: int, links: Mapping[int, Any], state_dir: Path, net: TwoPCNet) -> None:
        self.v, self.links, self.net = v, dict(links), net
        self.path = Path(state_dir) / "2pc.json"
        self.store = load_store(self.path)
        self._saved = _encode(self.store)
        self.proc = _TwoPCProcess(net, v, self.store, net.algo)  # type: ignore[arg-type]
        self.pending: list[tuple[int, bytes]] = []
        self.alive = False
        self.nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self.transfer_s: list[float] = []  # CONTROL transfer latencies (send -> outcome)
        self.app_received = self.mixed_frames = self.bad_messages = 0
        self.lost = 0  # CONTROL messages whose transfer aborted or whose link stopped
        self.released_at: dict[int, float] = {}  # epoch -> when this node was released

    # ------------------------------------------------------------ driving the process
    def call(self, fn: Callable[[], T]) -> T:
        """One event into the process; then its store made durable, then its sends."""
        released = self.store.released
        result = fn()
        if self.store.released > released:
            self.released_at[self.store.released] = trio.current_time()
        data = _encode(self.store)
        if data != self._saved:  # written only when the event changed it
            SlotFile(self.path, _WHAT).write(data)
            self._saved = data
        out, self.pending = self.pending, []
        for w, payload in out:
            self._submit(w, payload)
        self._changed.set()
        self._changed = trio.Event()
        return result

    def _submit(self, w: int, payload: bytes) -> None:
        link = self.links[w]
        try:
            batch = link.submit([payload], control=True)
        except LinkError:
            self.lost += 1  # the link stopped: the message is lost, timers re-ask
            return
        assert self.nursery is not None and batch is not None
        self.nursery.start_soon(self._outcome, link, batch, trio.current_time())

    async def _outcome(self, link: Any, batch: Any, t0: float) -> None:
        """Timed as EpochNode times bilateral's CONTROL transfers: submit to outcome."""
        try:
            outcomes = await link.wait_outcomes(batch)
        except LinkError:
            self.lost += 1  # the link stopped before the outcome
            return
        self.transfer_s.append(trio.current_time() - t0)
        if outcomes and not outcomes[0].committed:
            self.lost += 1  # aborted: lost, as the simulated _Routed ignores it too

    def start_timer(self, delay_s: float, token: object) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(self._timer, delay_s, token)

    async def _timer(self, delay_s: float, token: object) -> None:
        await trio.sleep(delay_s)
        self.call(lambda: self.proc.timer(token))

    def checkpoint(self, token: object) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(self._checkpoint, token)

    async def _checkpoint(self, token: object) -> None:
        await trio.lowlevel.checkpoint()  # written at once, but never inside the caller
        self.call(lambda: self.proc.checkpoint_done(token, True))

    def wait_change(self) -> Awaitable[None]:
        """Until the next change (armed now: see Layer.wait_change)."""
        return self._changed.wait()

    # ------------------------------------------------------------ application frames
    async def send_app(self, peer: int, body: bytes) -> Outcome:
        """An application transfer tagged with this node's epoch; held while 2pc holds."""
        while (tag := self.proc.send_epoch(peer)) is None:
            await self.wait_change()
        return await self.links[peer].send(tag.to_bytes(4, "big") + body)

    # ------------------------------------------------------------ tasks
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.net.nodes[self.v] = self
            self.alive = True
            try:
                for peer in self.links:
                    nursery.start_soon(self._receiver, peer)
                self.call(self.proc.start)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.alive = False

    async def _receiver(self, peer: int) -> None:
        async for msg in self.links[peer].received():
            if msg.control:
                try:
                    struct.unpack(">BHHI", msg.payload)
                except struct.error:
                    self.bad_messages += 1
                    continue
                self.call(lambda p=msg.payload: self.proc.message(peer, p))
            else:
                self.app_received += 1
                _, mixed = self.proc.frame_received(peer, int.from_bytes(msg.payload[:4], "big"))
                self.mixed_frames += mixed


def default_timers(topo: Topology, limit_s: float) -> tuple[float, float]:
    """(retry, timeout) in seconds, scaled like the simulation's (retry: 8 x diameter
    round trips, timeout 4 x retry) with the testbed's cost of a hop, which grows with the
    number of nodes sharing this process's CPU (~2 ms x nodes per one-way hop here). The
    timeout is at least 5 s, as a loaded machine (others benchmarking on its 2 cores)
    can stretch a fault-free ring-of-8 transaction past 2 s, and stays under `limit_s`
    so the coordinator decides before a harness gives up on the transition."""
    diameter = max(topo.eccentricity(v) for v in range(topo.n))
    hop = 0.002 * max(topo.n, 8)
    retry = max(0.5, 8 * max(diameter, 1) * hop)
    timeout = min(max(4 * retry, 5.0), limit_s)
    return min(retry, timeout / 2), timeout
