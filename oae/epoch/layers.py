"""The epoch layers an `oae node --epochs` daemon can run over its links (oae.epoch.daemon).

- `bilateral`: the protocol (an EpochNode, oae.epoch.node).
- `2pc`: the simulated baseline's process over these links (oae.epoch.twopc_testbed); it
  routes along shortest paths, so it needs the whole graph and its neighbours' node ids.
- `snap-t`, `rolling`: the clock-driven baselines: a node enters an epoch at an instant
  it is given in advance (CLOCK_MONOTONIC, which every namespace of one machine shares),
  snap-t writing its checkpoint then (durable after a given latency), rolling flipping
  its links' version and its durable version at once.

Each is a `Layer`: the one interface the daemon uses (propose, outcome, ready, send,
received, status, harvest), so the daemon never reads an algorithm's internals and a
faster bilateral implementation changes only `Bilateral`. Instants are trio.current_time()
of this process; the daemon turns them into CLOCK_MONOTONIC for other processes.
Transitions are named on the control socket as bilateral waves [epoch, attempt,
initiator], 2pc transaction ids (epoch << 16 | attempt) and clock epochs (ints).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from oae.epoch.baselines import TwoPC
from oae.epoch.messages import MessageError, Wave
from oae.epoch.node import EpochNode, open_epoch_node
from oae.epoch.sim import Topology
from oae.epoch.twopc_testbed import TwoPCNet, TwoPCNode, default_timers
from oae.errors import UsageError
from oae.runtime.link import Link, LinkOptions, Message, Outcome

ALGORITHMS = ("bilateral", "2pc", "snap-t", "rolling")
CLOCK_FILE = "clock-epoch.json"
TRANSITION_TIMEOUT = 30.0  # per wait of a transition; 2 s per hop of diameter if longer
_TAG = struct.Struct(">I")


def transition_timeout(topo: Topology) -> float:
    """How long a transition may wait for each of its steps (links ready, start, outcome,
    2pc's release) before it is `stuck`: 30 s, or 2 s per hop of the diameter on larger
    graphs (a ring of 64: 64 s; 2pc's O(nodes x diameter) relayed messages take ~20 s
    there when others load this machine's 2 cores). 2pc's coordinator times out within
    0.8 of it."""
    diameter = max(topo.eccentricity(v) for v in range(topo.n))
    return max(TRANSITION_TIMEOUT, 2.0 * diameter)


def link_options(algorithm: str, options: LinkOptions) -> LinkOptions:
    """The link options `algorithm` needs: bilateral runs in the C epoch runner, which
    takes the links' events itself, decides their gated CONTROL transfers and keeps its own
    durable record (LinkOptions.epoch_runner)."""
    if algorithm == "bilateral":
        return replace(options, gates=True, epoch_runner=True)
    return options


def write_clock_epoch(path: Path, epoch: int) -> None:
    """A clock baseline's durable epoch: temp file, fsync, rename (never torn)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"epoch": epoch}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_clock_epoch(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["epoch"])
    except FileNotFoundError:
        return 0


def wave_json(w: Wave | None) -> list[int] | None:
    return None if w is None else [w.epoch, w.attempt, w.initiator]


def parse_wave(value: Any) -> Wave:
    if not (isinstance(value, list) and len(value) == 3 and all(type(x) is int for x in value)):
        raise UsageError('a bilateral "wave" is [epoch, attempt, initiator]')
    try:
        return Wave(*value)
    except MessageError as exc:
        raise UsageError(f"wave {value}: {exc}") from None


class Layer(Protocol):
    """What the daemon asks of an epoch layer (links are named by their label)."""

    algorithm: str

    def epoch(self) -> int:
        """The committed (bilateral, 2pc) or current (clock) epoch."""
        ...

    def ready(self) -> bool:
        """Every link LIVE (bilateral: and its peer's epoch heard)."""
        ...

    # The waits are armed when called, not when first awaited: a caller that checks its
    # condition and calls one with no checkpoint between misses nothing (the daemon starts
    # several at once in a nursery, where a task runs later than it is started).
    def wait_change(self) -> Awaitable[None]: ...

    def wait_decision(self) -> Awaitable[None]:
        """Until something that may change `outcome` happened (at most as often as
        wait_change: bilateral wakes only on decisions, Conv and new epochs)."""
        ...

    async def wait_epoch(self, epoch: int) -> None:
        """Until `epoch()` >= `epoch`."""
        ...

    async def propose(self, req: dict[str, Any]) -> dict[str, Any]:
        """Start a transition: {"wave": id, "at": t} or {"wave": None, "busy": why}."""
        ...

    def outcome(self, ident: Any) -> tuple[bool | None, float | None]:
        """(True: done — bilateral Conv known, 2pc every commit ACK held; False: aborted;
        None: undecided) and the instant it became known."""
        ...

    async def enter(self, epoch: int, at: float, persist_s: float) -> None:
        """Clock baselines: enter `epoch` at trio time `at`."""
        ...

    async def send(self, label: int, payload: bytes) -> Outcome:
        """An application frame, tagged with the epoch (held while the layer holds)."""
        ...

    async def send_many(self, label: int, payloads: Sequence[bytes]) -> list[Outcome]:
        """Application frames in order (the link's window kept full where the layer
        allows it), their outcomes in the same order."""
        ...

    def received(self) -> AsyncIterable[tuple[int, Message]] | None:
        """Application frames for the node's inbox (None: the layer keeps none)."""
        ...

    def payload_max(self) -> int: ...

    def status(self) -> dict[str, Any]:
        """JSON-ready; "links" maps each label to the link's epoch state."""
        ...

    def harvest(self) -> dict[str, Any]:
        """Measurements since the last harvest (then forgotten): "transfer_s" (transfer
        latencies), "control" (CONTROL messages: [sent, label, payload hex, instant]),
        "released" (2pc: epoch -> instant this node was released)."""
        ...


# --------------------------------------------------------------------------- bilateral
class Bilateral:
    """The bilateral protocol: an EpochNode with tagged application frames."""

    algorithm = "bilateral"

    def __init__(self, node: EpochNode) -> None:
        self.node = node

    def epoch(self) -> int:
        return self.node.epoch

    def ready(self) -> bool:
        return self.node.ready()

    def wait_change(self) -> Awaitable[None]:
        return self.node.wait_change()

    def wait_decision(self) -> Awaitable[None]:
        return self.node.wait_decision()

    async def wait_epoch(self, epoch: int) -> None:
        await self.node.wait_epoch(epoch)

    async def propose(self, req: dict[str, Any]) -> dict[str, Any]:
        wave = await self.node.propose()
        if wave is None:
            st = self.node.status()
            busy = st["wave"]["wave"] if st["wave"] else st["deferred"]
            return {"wave": None, "busy": f"in wave {busy}"}
        return {"wave": wave_json(wave), "at": self.node.proposed_at[wave]}

    def outcome(self, ident: Any) -> tuple[bool | None, float | None]:
        wave = parse_wave(ident)
        ok = self.node.outcome(wave)
        at = self.node.converged_at.get(wave) if ok else self.node.decided_at.get(wave)
        return ok, at

    async def enter(self, epoch: int, at: float, persist_s: float) -> None:
        raise UsageError("bilateral nodes change epochs by proposals (epoch-propose)")

    async def send(self, label: int, payload: bytes) -> Outcome:
        return await self.node.send(label, payload)

    async def send_many(self, label: int, payloads: Sequence[bytes]) -> list[Outcome]:
        return await self.node.send_many(label, payloads)

    def received(self) -> AsyncIterable[tuple[int, Message]]:
        return self.node.received()

    def payload_max(self) -> int:
        return 16 - _TAG.size

    def status(self) -> dict[str, Any]:
        return self.node.status()

    def harvest(self) -> dict[str, Any]:
        took, legs = self.node.harvest()
        # the commit legs: the fleet times a leg from one node's commit to the other's
        # delivery (docs/convergence.md §11)
        control = [[x.acted, x.neighbour, x.payload.hex(), x.at] for x in legs if x.leg == "commit"]
        return {"transfer_s": took, "control": control}


# --------------------------------------------------------------------------- 2pc
class TwoPhase:
    """2pc: this node's TwoPCNode; the coordinator is whoever is asked to propose."""

    algorithm = "2pc"

    def __init__(self, node: TwoPCNode, algo: TwoPC) -> None:
        self.node, self.algo = node, algo
        self.proposed_at: dict[int, float] = {}
        self.decided_at: dict[int, float] = {}
        self.released_at_taken: set[int] = set()

    def epoch(self) -> int:
        return self.node.store.epoch

    def ready(self) -> bool:
        return all(link.up for link in self.node.links.values())

    def wait_change(self) -> Awaitable[None]:
        return self.node.wait_change()

    def wait_decision(self) -> Awaitable[None]:
        return self.wait_change()

    async def wait_epoch(self, epoch: int) -> None:
        while self.epoch() < epoch:
            await self.wait_change()

    async def propose(self, req: dict[str, Any]) -> dict[str, Any]:
        """Begin a transaction; "attempt" (optional) must grow across coordinators and
        restarts (a participant ignores a PREPARE not newer than the one it holds), so
        a runner of several coordinators passes it."""
        attempt = req.get("attempt")
        if attempt is not None:
            if type(attempt) is not int or not 1 <= attempt <= 0xFFFF:
                raise UsageError('"attempt" must be an integer 1..65535')
            self.algo.attempts = attempt - 1
        else:
            self.algo.attempts = max(self.algo.attempts, self.node.proc.tx & 0xFFFF)
        t0 = trio.current_time()
        if not self.node.call(partial(self.algo.begin, self.node.net, self.node.v)):
            return {"wave": None, "busy": "holding a transaction (not released yet)"}
        tx = self.node.store.coordinating
        assert tx is not None
        self.proposed_at[tx] = t0
        return {"wave": tx, "at": t0}

    def outcome(self, ident: Any) -> tuple[bool | None, float | None]:
        if type(ident) is not int or ident < 0:
            raise UsageError('a 2pc "wave" is its transaction id (an integer)')
        s, epoch = self.node.store, ident >> 16
        if s.led == ident and s.released >= epoch:
            return True, self.node.released_at.get(epoch)
        if s.coordinating != ident and s.committed_tx != ident:
            return False, self.decided_at.setdefault(ident, trio.current_time())
        return None, None

    async def enter(self, epoch: int, at: float, persist_s: float) -> None:
        raise UsageError("2pc nodes change epochs by transactions (epoch-propose)")

    async def send(self, label: int, payload: bytes) -> Outcome:
        return await self.node.send_app(label, payload)

    async def send_many(self, label: int, payloads: Sequence[bytes]) -> list[Outcome]:
        return [await self.send(label, p) for p in payloads]  # each may be held anew

    def received(self) -> None:
        return None  # counted by the node's receivers, kept nowhere

    def payload_max(self) -> int:
        return 16 - _TAG.size

    def status(self) -> dict[str, Any]:
        s, proc = self.node.store, self.node.proc
        return {
            "node_id": self.node.v,
            "epoch": s.epoch,
            "coordinating": s.coordinating,
            "prepared": s.prepared,
            "released": s.released,
            "links": {n: {"up": link.up, "epoch": proc.send_epoch(n)}
                      for n, link in self.node.links.items()},
            "counters": {"app_received": self.node.app_received,
                         "mixed_app_frames": self.node.mixed_frames,
                         "bad_messages": self.node.bad_messages,
                         "lost_control_messages": self.node.lost},
        }  # fmt: skip

    def harvest(self) -> dict[str, Any]:
        node = self.node
        released = {e: t for e, t in node.released_at.items() if e not in self.released_at_taken}
        self.released_at_taken |= set(released)
        out = {"transfer_s": node.transfer_s, "control": [], "released": released}
        node.transfer_s = []
        return out


# --------------------------------------------------------------------------- clocks
class Clock:
    """snap-t or rolling: the epoch this node runs and tags (`current`) and its durable
    epoch (`clock-epoch.json`); application frames from another epoch than `current`
    are mixed (a FITO node applies whatever arrives, and counts it)."""

    def __init__(self, algorithm: str, links: Mapping[int, Link], state_dir: Path) -> None:
        self.algorithm, self.links = algorithm, dict(links)
        self.path = state_dir / CLOCK_FILE
        self.current = read_clock_epoch(self.path)
        self.transfer_s: list[float] = []
        self.app_received = self.mixed_frames = 0
        self.nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    def epoch(self) -> int:
        return self.current

    def ready(self) -> bool:
        return all(link.up for link in self.links.values())

    def wait_change(self) -> Awaitable[None]:
        return self._changed.wait()

    def wait_decision(self) -> Awaitable[None]:
        return self.wait_change()

    async def wait_epoch(self, epoch: int) -> None:
        while self.current < epoch:
            await self.wait_change()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def propose(self, req: dict[str, Any]) -> dict[str, Any]:
        raise UsageError(f"{self.algorithm} nodes enter epochs at given instants (epoch-enter)")

    def outcome(self, ident: Any) -> tuple[bool | None, float | None]:
        if type(ident) is not int:
            raise UsageError(f'a {self.algorithm} "wave" is an epoch (an integer)')
        return (read_clock_epoch(self.path) >= ident or None), None

    async def enter(self, epoch: int, at: float, persist_s: float) -> None:
        """At `at`, rolling flips its version (links and durable record at once); snap-t
        tags the new epoch and writes its checkpoint, durable only after `persist_s` (a
        crash meanwhile loses it). Returns at once; the entry runs in the background."""
        assert self.nursery is not None
        self.nursery.start_soon(self._enter, epoch, at, persist_s)

    async def _enter(self, epoch: int, at: float, persist_s: float) -> None:
        await trio.sleep_until(at)
        self.current = epoch
        if self.algorithm == "rolling":
            for link in self.links.values():
                link.set_epoch(epoch)
        else:
            await trio.sleep(persist_s)
        if epoch > read_clock_epoch(self.path):
            write_clock_epoch(self.path, epoch)
        self._notify()

    async def send(self, label: int, payload: bytes) -> Outcome:
        t0 = trio.current_time()
        out = await self.links[label].send(_TAG.pack(self.current) + payload)
        self.transfer_s.append(trio.current_time() - t0)
        return out

    async def send_many(self, label: int, payloads: Sequence[bytes]) -> list[Outcome]:
        tag = _TAG.pack(self.current)
        return await self.links[label].send_many([tag + p for p in payloads])

    def received(self) -> None:
        return None

    def payload_max(self) -> int:
        return 16 - _TAG.size

    async def _receive(self, link: Link) -> None:
        async for msg in link.received():
            if not msg.control:
                self.app_received += 1
                if int.from_bytes(msg.payload[:4], "big") != self.current:
                    self.mixed_frames += 1

    def status(self) -> dict[str, Any]:
        return {
            "epoch": self.current,
            "durable_epoch": read_clock_epoch(self.path),
            "links": {n: {"up": link.up, "epoch": self.current} for n, link in self.links.items()},
            "counters": {"app_received": self.app_received,
                         "mixed_app_frames": self.mixed_frames},
        }  # fmt: skip

    def harvest(self) -> dict[str, Any]:
        out = {"transfer_s": self.transfer_s, "control": []}
        self.transfer_s = []
        return out


@asynccontextmanager
async def open_layer(
    algorithm: str,
    node_id: int,
    links: Mapping[int, Link],
    state_dir: Path,
    graph: Topology | None = None,
) -> AsyncIterator[Layer]:
    """Run `algorithm` over `links` (keyed by label: for 2pc, the neighbours' node ids
    in `graph`) with its durable state in `state_dir`, until the block exits."""
    if algorithm == "bilateral":
        async with open_epoch_node(node_id, links, state_dir) as node:
            yield Bilateral(node)
        return
    if algorithm not in ALGORITHMS:
        raise UsageError(f"--algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")
    state_dir.mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        layer: TwoPhase | Clock
        if algorithm == "2pc":
            if graph is None:
                raise UsageError("2pc routes over the whole graph: give --graph")
            algo = TwoPC()
            net = TwoPCNet(graph, algo, *default_timers(graph, 0.8 * transition_timeout(graph)))
            tpc = TwoPCNode(node_id, links, state_dir, net)
            algo.attempts = tpc.proc.tx & 0xFFFF
            await nursery.start(tpc.run)
            layer = TwoPhase(tpc, algo)
        else:
            layer = Clock(algorithm, links, state_dir)
            layer.nursery = nursery
            for link in layer.links.values():
                if algorithm == "rolling":
                    link.set_epoch(layer.current)
                nursery.start_soon(layer._receive, link)
        try:
            yield layer
        finally:
            nursery.cancel_scope.cancel()
