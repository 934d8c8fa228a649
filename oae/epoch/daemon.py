"""The epoch side of `oae node --epochs`: an epoch layer (oae.epoch.layers; by default
the bilateral protocol) over every link of the node, served on the node's control socket.

Identity. A node's id (`--node-id`) names the waves it starts, so it must be unique in
the network; it is kept in the state dir (`node.json`) and a restart with another id is
refused (the durable record refers to waves by it). Each link gets a stable label, the
int the epoch record uses for it: the peer's node id if given (`--neighbour IFACE=ID`,
required by 2pc, which routes by node ids over `--graph`), else a local number, kept in
`node.json` so that it never changes under a record that refers to it. State dir layout:
`node.json`, the layer's record (`epoch.json`, `2pc.json` or `clock-epoch.json`) and one
directory per link, `link-IFACE`.

Control-socket ops (JSON lines, oae.runtime.control; instants are CLOCK_MONOTONIC
seconds, which every process and namespace of one machine shares, so a runner can
subtract instants reported by different processes):

    {"op": "epoch-status"} -> {"status": {node_id, algorithm, epoch, links: [...], ...}}
    {"op": "epoch-propose"} -> {"wave": W, "at": t} | {"wave": null, "busy": "..."}
    {"op": "epoch-outcome", "wave": W, "timeout": s} -> {"outcome": "committed" |
        "aborted" | null, "at": t}   (committed: bilateral Conv(P, e) known here; 2pc:
        every commit ACK at the coordinator; `at`: when it became known, here)
    {"op": "epoch-wait", "epoch": E, "timeout": s} -> {"epoch": e, "reached": bool}
    {"op": "epoch-ready", "timeout": s} -> {"ready": bool}   (every link LIVE, and for
        bilateral its peer's epoch heard)
    {"op": "epoch-enter", "epoch": E, "at": t, "persist_s": s}   (snap-t, rolling)
    {"op": "epoch-traffic", "period": s, "seed": n}   (synthetic application traffic:
        one transfer per link about every period, 0 stops it)
    {"op": "epoch-harvest"} -> measurements since the last harvest, then forgotten

`send` and `recv` go through the layer: payloads are tagged with the sender's epoch
(4 bytes, so at most 12 bytes of data) and held while the layer holds; a frame delivered
into another epoch is refused and counted (bilateral hands the others to `recv`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from oae.epoch.layers import ALGORITHMS, Bilateral, Layer, open_layer
from oae.epoch.messages import MAX_U32
from oae.epoch.sim import Topology
from oae.errors import UsageError
from oae.runtime.link import Link, Outcome
from oae.runtime.node import Node, Op

IDENTITY_FILE = "node.json"
WAIT_MAX = 3600.0  # the longest wait an op accepts, in seconds
APP = struct.Struct(">II")  # synthetic traffic after the epoch tag: sender id, sequence

Log = Callable[..., None]


@dataclass(frozen=True)
class EpochConfig:
    """What `oae node --epochs` was asked to run (checked by `config_from_args`); the
    node's id and link labels are resolved by `identity`."""

    state_dir: Path
    node_id: int | None = None
    algorithm: str = "bilateral"
    neighbours: dict[str, int] = field(default_factory=dict)
    graph: Topology | None = None
    labels: dict[str, int] = field(default_factory=dict)

    def link_dir(self, iface: str) -> Path:
        return self.state_dir / f"link-{iface}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "epochs",
        "with --epochs the node runs the epoch layer (bilateral convergence) on all its "
        "links; `oae epoch propose/status/wait` drive it (docs/two-hosts.md §6)",
    )
    g.add_argument("--epochs", action="store_true",
                   help="run the epoch layer on every link; --state-dir is then the "
                   "node's directory (default /var/lib/oae/<netns|host>-node<ID>)")
    g.add_argument("--node-id", type=int, metavar="N",
                   help="this node's id, unique in the network: it names the waves the "
                   "node starts (kept in the state dir; required the first time)")
    g.add_argument("--algorithm", choices=ALGORITHMS, default="bilateral",
                   help="bilateral (default), or a baseline for experiments: 2pc (needs "
                   "--graph and --neighbour), snap-t, rolling (enter epochs at given "
                   "instants)")
    g.add_argument("--neighbour", action="append", default=[], metavar="IFACE=ID",
                   help="the node id of the peer on IFACE (default: a local label kept in "
                   "the state dir)")
    g.add_argument("--graph", metavar="A-B,...",
                   help="2pc: the network's links as pairs of node ids 0..n-1")  # fmt: skip


def _neighbours(items: Sequence[str], ifaces: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        iface, sep, text = item.partition("=")
        try:
            nid = int(text)
        except ValueError:
            nid = -1
        if not sep or not 0 <= nid <= MAX_U32:
            raise UsageError(f"--neighbour {item!r}: give IFACE=ID with ID in 0..{MAX_U32}")
        if iface not in ifaces:
            raise UsageError(f"--neighbour {item!r}: {iface!r} is not one of --iface")
        if iface in out:
            raise UsageError(f"--neighbour: {iface!r} given twice")
        out[iface] = nid
    return out


def parse_graph(text: str) -> Topology:
    """`0-1,1-2,2-0`: a connected graph on nodes 0..n-1."""
    edges = []
    for item in text.split(","):
        a, sep, b = item.strip().partition("-")
        if not (sep and a.isdigit() and b.isdigit()) or a == b:
            raise UsageError(f"--graph: {item.strip()!r} is not a link A-B of two node ids")
        edges.append((int(a), int(b)))
    n = max(max(e) for e in edges) + 1
    if n > 4096:
        raise UsageError(f"--graph: {n} nodes, at most 4096")
    topo = Topology("graph", n, tuple(edges))
    try:
        topo.eccentricity(0)
    except UsageError:
        raise UsageError(f"--graph: nodes 0..{n - 1} are not all connected") from None
    return topo


def config_from_args(args: argparse.Namespace, state_root: str) -> EpochConfig | None:
    """The epoch configuration of `oae node`, or None without --epochs; one-line errors."""
    if not args.epochs:
        if args.node_id is not None or args.neighbour or args.graph or (
            args.algorithm != "bilateral"
        ):
            raise UsageError("--node-id, --algorithm, --neighbour and --graph need --epochs")
        return None
    if args.no_state:
        raise UsageError("--epochs keeps durable state: drop --no-state")
    if args.node_id is not None and not 0 <= args.node_id <= MAX_U32:
        raise UsageError(f"--node-id {args.node_id}: must be 0..{MAX_U32}")
    if args.state_dir:
        state_dir = Path(args.state_dir)
    elif args.node_id is None:
        raise UsageError(
            "--epochs needs --node-id N (unique in the network: it names the waves this "
            "node starts), or an earlier run's --state-dir"
        )
    else:
        state_dir = Path(state_root) / f"{args.netns or 'host'}-node{args.node_id}"
    neighbours = _neighbours(args.neighbour, args.iface)
    graph = parse_graph(args.graph) if args.graph else None
    if args.algorithm == "2pc":
        missing = [i for i in args.iface if i not in neighbours]
        if graph is None or missing or args.node_id is None:
            raise UsageError("--algorithm 2pc routes by node ids: give --node-id, --graph and "
                             "--neighbour IFACE=ID for every --iface")  # fmt: skip
        if args.node_id >= graph.n or set(neighbours.values()) != set(
            graph.neighbours(args.node_id)
        ):
            raise UsageError(
                f"--graph: node {args.node_id}'s neighbours there are "
                f"{graph.neighbours(args.node_id) if args.node_id < graph.n else []}, "
                f"--neighbour gives {sorted(neighbours.values())}"
            )
    elif graph is not None:
        raise UsageError("--graph applies to --algorithm 2pc")
    return identity(EpochConfig(state_dir, args.node_id, args.algorithm, neighbours, graph),
                    args.iface)  # fmt: skip


def _write_json(path: Path, doc: Any) -> None:
    """Atomically and durably: temp file, fsync, rename, directory fsync."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def identity(cfg: EpochConfig, ifaces: Sequence[str]) -> EpochConfig:
    """`cfg` with this node's id and each link's label, from `node.json` and the flags
    (see the module docstring); the file is written when something new was assigned."""
    path = cfg.state_dir / IDENTITY_FILE
    try:
        stored = json.loads(path.read_text())
        node_id, labels = stored["node_id"], stored["links"]
        if type(node_id) is not int or not all(type(v) is int for v in labels.values()):
            raise ValueError("bad field types")
    except FileNotFoundError:
        node_id, labels = None, {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    before = (node_id, dict(labels))
    if node_id is None:
        if cfg.node_id is None:
            raise UsageError("--epochs needs --node-id N the first time (unique in the "
                             "network: it names the waves this node starts)")  # fmt: skip
        node_id = cfg.node_id
    elif cfg.node_id is not None and cfg.node_id != node_id:
        raise UsageError(f"{path}: this state dir is node {node_id}'s, not --node-id "
                         f"{cfg.node_id}'s (its epoch record names waves by it)")  # fmt: skip
    for iface, nid in cfg.neighbours.items():
        if labels.get(iface, nid) != nid:
            raise UsageError(f"--neighbour {iface}={nid}: {path} has {labels[iface]} for the "
                             f"peer on {iface}, which the epoch record may refer to")  # fmt: skip
        labels[iface] = nid
    for iface in sorted(ifaces):
        if iface not in labels:
            labels[iface] = max(labels.values(), default=0) + 1
    mine = {iface: labels[iface] for iface in ifaces}
    if len(set(mine.values())) != len(mine):
        raise UsageError(f"two links have the same neighbour id: {mine}")
    if (node_id, labels) != before:
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            _write_json(path, {"node_id": node_id, "links": labels})
        except OSError as exc:
            raise UsageError(f"state dir {cfg.state_dir}: {exc.strerror}") from None
    return replace(cfg, node_id=node_id, labels=mine)


def _timeout(req: dict[str, Any], default: float = 30.0) -> float:
    value = req.get("timeout", default)
    if not isinstance(value, int | float) or not 0 <= value <= WAIT_MAX:
        raise UsageError(f'"timeout" must be 0..{WAIT_MAX:g} seconds')
    return float(value)


def _number(req: dict[str, Any], key: str, low: float = 0.0) -> float:
    value = req.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < low:
        raise UsageError(f'"{key}" must be a number >= {low:g}')
    return float(value)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class EpochService:
    """The control ops of an epoch layer on a node (see the module docstring)."""

    def __init__(self, node: Node, layer: Layer, node_id: int, labels: dict[str, int]) -> None:
        self.node, self.layer, self.node_id = node, layer, node_id
        self.labels = labels
        self.ifaces = {label: iface for iface, label in labels.items()}
        # trio.current_time() - CLOCK_MONOTONIC: both run at the monotonic clock's rate
        self.offset = trio.current_time() - time.monotonic()
        self.nursery: trio.Nursery | None = None
        self._traffic: trio.CancelScope | None = None
        self.traffic: dict[str, Any] = {"period": 0.0, "committed": 0, "aborted": 0}

    def ops(self) -> dict[str, Op]:
        return {
            "epoch-status": self.op_status,
            "epoch-propose": self.op_propose,
            "epoch-outcome": self.op_outcome,
            "epoch-wait": self.op_wait,
            "epoch-ready": self.op_ready,
            "epoch-enter": self.op_enter,
            "epoch-traffic": self.op_traffic,
            "epoch-harvest": self.op_harvest,
        }

    def mono(self, t: float | None) -> float | None:
        return None if t is None else t - self.offset

    # ------------------------------------------------------------ ops
    def status(self) -> dict[str, Any]:
        st = self.layer.status()
        per_link = st.pop("links")
        links = [{"iface": iface, "label": label, **per_link.get(label, {}),
                  "links_down": self.node.links[iface].counters["links_down"]}
                 for iface, label in self.labels.items()]  # fmt: skip
        return {
            **st,
            "node_id": self.node_id,
            "algorithm": self.layer.algorithm,
            "pid": os.getpid(),
            "cpu_s": round(_cpu_s(), 4),
            "links": links,
            "traffic": dict(self.traffic),
        }

    def brief(self) -> dict[str, Any]:
        """The `epoch` section of `oae status`."""
        return {"node_id": self.node_id, "algorithm": self.layer.algorithm,
                "epoch": self.layer.epoch()}  # fmt: skip

    async def op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status()}

    async def op_propose(self, req: dict[str, Any]) -> dict[str, Any]:
        answer = await self.layer.propose(req)
        if answer.get("at") is not None:
            answer["at"] = self.mono(answer["at"])
        return answer

    async def _until(self, done: Callable[[], bool], timeout: float,
                     step: Callable[[], Awaitable[None]] | None = None) -> bool:  # fmt: skip
        """Wait (at most `timeout` s) until `done()`: re-checked after every `step` of the
        layer (default: every step) and every LIVE/down change of a link."""
        with trio.move_on_after(timeout):
            while not done():
                # armed here, right after the check: a change before their tasks run counts
                waits = [(step or self.layer.wait_change)()]
                waits += [link.wait_state_change() for link in self.node.links.values()]
                async with trio.open_nursery() as nursery:
                    for wait in waits:
                        nursery.start_soon(_then_cancel, wait, nursery.cancel_scope)
        return done()

    async def op_outcome(self, req: dict[str, Any]) -> dict[str, Any]:
        ident = req.get("wave")
        await self._until(lambda: self.layer.outcome(ident)[0] is not None, _timeout(req),
                          self.layer.wait_decision)  # fmt: skip
        ok, at = self.layer.outcome(ident)
        outcome = None if ok is None else "committed" if ok else "aborted"
        return {"outcome": outcome, "at": self.mono(at)}

    async def op_wait(self, req: dict[str, Any]) -> dict[str, Any]:
        epoch = req.get("epoch")
        if type(epoch) is not int or not 0 <= epoch <= MAX_U32:
            raise UsageError(f'"epoch" must be an integer 0..{MAX_U32}')
        reached = await self._until(lambda: self.layer.epoch() >= epoch, _timeout(req))
        return {"epoch": self.layer.epoch(), "reached": reached}

    async def op_ready(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ready": await self._until(self.layer.ready, _timeout(req))}

    async def op_enter(self, req: dict[str, Any]) -> dict[str, Any]:
        epoch = req.get("epoch")
        if type(epoch) is not int or not 0 <= epoch <= MAX_U32:
            raise UsageError(f'"epoch" must be an integer 0..{MAX_U32}')
        at = _number(req, "at") + self.offset
        await self.layer.enter(epoch, at, _number(req, "persist_s"))
        return {}

    async def op_traffic(self, req: dict[str, Any]) -> dict[str, Any]:
        period = _number(req, "period")
        seed = req.get("seed", 0)
        if type(seed) is not int:
            raise UsageError('"seed" must be an integer')
        if self._traffic is not None:
            self._traffic.cancel()
            self._traffic = None
        self.traffic["period"] = period
        if period > 0:
            assert self.nursery is not None
            self._traffic = trio.CancelScope()
            self.nursery.start_soon(self._generate, self._traffic, period, random.Random(seed))
        return {}

    async def op_harvest(self, req: dict[str, Any]) -> dict[str, Any]:
        h = self.layer.harvest()
        return {
            "transfer_us": [round(t * 1e6, 1) for t in h["transfer_s"]],
            "control": [[sent, self.ifaces[n], p, self.mono(t)] for sent, n, p, t in h["control"]],
            "released": {str(e): self.mono(t) for e, t in h.get("released", {}).items()},
            "status": self.status(),
        }

    # ------------------------------------------------------------ plumbing
    async def send(self, link: Link, payloads: Sequence[bytes]) -> list[Outcome]:
        """`send` on the control socket: the payloads tagged and sent in order through
        the layer (held while it holds)."""
        limit = self.layer.payload_max()
        for p in payloads:
            if len(p) > limit:
                raise UsageError(f"payload of {len(p)} bytes: an epoch node carries at most "
                                 f"{limit} bytes per transfer (4 carry the epoch tag)")  # fmt: skip
        return await self.layer.send_many(self.labels[link.iface], payloads)

    async def deliver(self) -> None:
        """The layer's application deliveries go to the node's inbox (for `recv`)."""
        rx = self.layer.received()
        if rx is not None:
            async for label, msg in rx:
                self.node.deliver(self.ifaces[label], msg)

    async def _generate(self, scope: trio.CancelScope, period: float, rng: random.Random) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for label in self.ifaces:
                    nursery.start_soon(self._traffic_on, label, period, random.Random(rng.random()))

    async def _traffic_on(self, label: int, period: float, rng: random.Random) -> None:
        seq = 0
        while True:
            await trio.sleep(period * rng.uniform(0.5, 1.5))
            seq += 1
            out = await self.layer.send(label, APP.pack(self.node_id & MAX_U32, seq))
            self.traffic["committed" if out.committed else "aborted"] += 1

    async def log_epochs(self, log: Log) -> None:
        """Log each change of the committed epoch (woken only then)."""
        while True:
            await self.layer.wait_epoch(self.layer.epoch() + 1)
            log("epoch", epoch=self.layer.epoch())


async def _then_cancel(wait: Awaitable[None], scope: trio.CancelScope) -> None:
    await wait
    scope.cancel()


@asynccontextmanager
async def serve(node: Node, cfg: EpochConfig, log: Log,
                epoch_line: tuple[str, str] | None = None) -> AsyncIterator[EpochService]:
    """Run the epoch layer of `cfg` (its identity resolved) over every link of `node`
    (opened with layered=True) and serve its ops on the node's control socket until the
    block exits. `epoch_line`: the text around the number in the `epoch` lines that `log`
    writes to stdout; the bilateral runner then writes them itself (no Python wake-up per
    transition)."""
    node_id, labels = cfg.node_id, cfg.labels
    assert node_id is not None and set(labels) == set(node.links)
    links = {labels[iface]: link for iface, link in node.links.items()}
    async with open_layer(cfg.algorithm, node_id, links, cfg.state_dir, cfg.graph) as layer:
        svc = EpochService(node, layer, node_id, labels)
        async with trio.open_nursery() as nursery:
            svc.nursery = nursery
            node.ops.update(svc.ops())
            node.sender = svc.send
            node.extra_status["epoch"] = svc.brief
            nursery.start_soon(svc.deliver)
            if isinstance(layer, Bilateral) and epoch_line is not None:
                sys.stdout.flush()
                layer.node.log_epochs(sys.stdout.fileno(), *epoch_line)
            else:
                nursery.start_soon(svc.log_epochs, log)
            log("epochs", node_id=node_id, algorithm=layer.algorithm, epoch=layer.epoch(),
                state_dir=str(cfg.state_dir), links=labels)  # fmt: skip
            try:
                yield svc
            finally:
                nursery.cancel_scope.cancel()
