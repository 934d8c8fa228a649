"""`oae demo`: what oae is for, on real frames, in about a minute (needs root).

1. A ring testbed comes up (namespaces, veths) with loss and reordering on every link,
   done by the project's impairing bridge, and one `oae node --epochs` process per node
   (its sockets in the node's namespace, oae.epoch.fleet), driven through its control
   socket from here on.
2. AIT traffic over every link, both ways, sent and received through the node
   processes' control sockets (`send`, `recv`; C pump, real frames): the senders count
   transfers attempted, committed and aborted; the receivers count what they were
   handed. duplicated = delivered more than once; lost = committed at the sender and
   never delivered; disagreed = delivered although the sender saw it aborted. On the
   way, the first link is cut in the bridge for longer than its dead timer: it fails,
   the transfers caught in flight end committed or aborted (reversed, the payload handed
   back to the sender, never delivered) on both ends, and the link goes on.
3. N epoch transitions with the bilateral protocol on the same node processes, then N
   with the clock-based `snap-t` checkpoint on node processes of its own, on the same
   links (a crash is kill -9 of a node process and a restart from its state dir; the
   same seed, so the same crash draws (--crash-rate: node, instant, downtime) and probe
   instants; a crash due while its node is still down, or after the run, does nothing,
   so the counts can differ), with application traffic on every link, each frame tagged
   with its sender's epoch: a frame delivered into another epoch is a mixed-epoch frame,
   measured on real frames; the nodes' durable epochs are probed during and after each
   transition; convergence is timed inside the initiator's process.
4. The testbed goes down. The same number of transitions of both on the simulated
   network (oae.epoch.sim), with the loss and the median CONTROL transfer latency of step
   3 as link round trip: they add what the testbed does not probe, whether each state
   recovered after a crash at a random instant is a consistent cut.

Progress goes to stderr; the tables to stdout (or, with --json, the report); the report
(every figure, per link direction, the bridge's counters) to --report; PNG plots when
matplotlib is installed. Every node process is stopped, and everything created in the
kernel (carrying the run prefix) removed, on exit, on Ctrl-C and on errors
(oae.epoch.fleet.open_fleet, oae.testbed.manager.running).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from oae.epoch.converge import run as simulate
from oae.epoch.fleet import Fleet, NodeProcess, open_fleet, run_fleet, run_transitions
from oae.epoch.sim import NetParams, make_topology
from oae.errors import OaeError, UsageError
from oae.testbed import kernel, manager, topology
from oae.testbed.impair import parse_fraction
from oae.testbed.manager import Testbed

DEAD = 0.3  # the node processes' dead timer (oae.epoch.fleet: --dead 0.3)
UP_TIMEOUT = 20.0
SEND_CHUNK = 2000  # transfers per `send` request (its line stays far below 64 KiB)
RECV_MAX = 5000  # messages per `recv` answer
SETTLE_TIMEOUT = 5.0  # after the last outcome, how long receivers may lag behind
PAYLOAD = struct.Struct(">HBI")  # link index, direction (0: a->b, 1: b->a), sequence
PROBES = 4  # recovered-state probes per simulated transition
# Application traffic during the testbed transitions: one transfer per link direction
# about every 20 ms, so every transition has frames in flight when the epochs change.
APP_PERIOD = 0.02
ALGORITHMS = ("bilateral", "snap-t")
QUICK = {"nodes": 4, "transfers": 300, "epochs": 5}
DEFAULTS = {"nodes": 8, "transfers": 2000, "epochs": 20}
DEFAULT_REPORT = "oae-demo-report.json"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; every count here is an input, every figure it prints is measured."""

    nodes: int
    transfers: int
    epochs: int
    loss: float
    reorder: float
    partition: float
    crash_rate: float
    seed: int

    def check(self) -> None:
        if not 3 <= self.nodes <= 64:
            raise UsageError(f"--nodes {self.nodes}: the demo ring has 3..64 nodes")
        if not 1 <= self.transfers <= 1_000_000:
            raise UsageError(f"--transfers {self.transfers}: must be 1..1000000 per direction")
        if not 1 <= self.epochs <= 1000:
            raise UsageError(f"--epochs {self.epochs}: must be 1..1000")
        if self.loss >= 0.5:
            raise UsageError("--loss: at most 50% (the demo wants links that stay up)")
        if not 0 <= self.crash_rate <= 1:
            raise UsageError(f"--crash-rate {self.crash_rate:g}: a probability, 0..1")
        if not (self.partition == 0 or DEAD < self.partition <= 30):
            raise UsageError(
                f"--partition {self.partition:g}: 0 (none) or more than the {DEAD:g} s "
                "dead timer, at most 30 s"
            )


def ring_topology(cfg: DemoConfig, name: str) -> topology.Topology:
    """A ring whose every link goes through the impairing bridge with loss and reordering."""
    text = (
        f'[topology]\nname = "{name}"\nshape = "ring"\nnodes = {cfg.nodes}\nseed = {cfg.seed}\n'
        f'impairer = "bridge"\n[defaults.impair]\nloss = {cfg.loss!r}\nreorder = {cfg.reorder!r}\n'
    )
    return topology.loads(text, f"<oae demo {name}>")


# --------------------------------------------------------------------------- traffic
class _Direction:
    """One direction of one link: what the sender saw and what the receiver was handed."""

    def __init__(self, link: str, src: str, dst: str, transfers: int) -> None:
        self.link, self.src, self.dst = link, src, dst
        self.outcome = bytearray(transfers)  # 0 unsettled, 1 committed, 2 aborted
        self.seen = bytearray(transfers)  # deliveries per sequence number (saturates)
        self.foreign = 0

    def deliver(self, seq: int) -> None:
        if seq >= len(self.seen):
            self.foreign += 1
        elif self.seen[seq] < 255:
            self.seen[seq] += 1

    def missing(self) -> int:
        return sum(1 for o, s in zip(self.outcome, self.seen, strict=True) if o == 1 and not s)

    def summary(self) -> dict[str, Any]:
        committed = self.outcome.count(1)
        aborted = self.outcome.count(2)
        pairs = list(zip(self.outcome, self.seen, strict=True))
        return {
            "link": self.link,
            "from": self.src,
            "to": self.dst,
            "attempted": len(self.outcome),
            "committed": committed,
            "aborted": aborted,
            "unsettled": len(self.outcome) - committed - aborted,
            "delivered": sum(1 for s in self.seen if s),
            "duplicated": sum(s - 1 for s in self.seen if s > 1),
            "lost": sum(1 for o, s in pairs if o == 1 and not s),
            "disagreed": sum(1 for o, s in pairs if o == 2 and s),
            "foreign": self.foreign,
        }


class _End:
    """One end of a link: the node process that runs it and its interface."""

    def __init__(self, node: NodeProcess, iface: str) -> None:
        self.node, self.iface = node, iface

    async def stats(self) -> dict[str, Any]:
        status = (await self.node.request({"op": "status"}))["status"]
        return next(ln for ln in status["links"] if ln["iface"] == self.iface)


async def _send(end: _End, d: _Direction, index: int, direction: int, timeout: float) -> None:
    """`len(d.outcome)` transfers through the node's control socket (`send` with items,
    SEND_CHUNK per request, each answered with the outcomes in order)."""
    n = len(d.outcome)
    with trio.move_on_after(timeout):
        for start in range(0, n, SEND_CHUNK):
            items = [PAYLOAD.pack(index, direction, i).hex()
                     for i in range(start, min(n, start + SEND_CHUNK))]  # fmt: skip
            req = {"op": "send", "items": items, "link": end.iface}
            ans = await end.node.request(req, timeout)
            for i, (_, status) in enumerate(ans["outcomes"]):
                d.outcome[start + i] = 1 if status == "committed" else 2


async def _receive(end: _End, dirs: dict[tuple[int, int], _Direction], mine: _Direction) -> None:
    """Count what the node delivered on this end (`recv`, each message handed out once);
    `mine` is the direction this end receives (foreign ones go there)."""
    while True:
        req = {"op": "recv", "link": end.iface, "max": RECV_MAX, "timeout": 0.2}
        for m in (await end.node.request(req, 0.2))["messages"]:
            try:
                index, direction, seq = PAYLOAD.unpack(bytes.fromhex(m["hex"]))
                d = dirs[(index, direction)]
            except (struct.error, KeyError):
                mine.foreign += 1
                continue
            if d is not mine:
                mine.foreign += 1
                continue
            d.deliver(seq)


async def _partition(
    tb: Testbed, end: _End, d: _Direction, seconds: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Once a quarter of `d`'s transfers have settled (so a window is in flight), cut the
    link in the bridge for `seconds`, longer than the dead timer: the link fails and
    reconciles when the partition ends."""
    name = d.link
    while True:
        st = await end.stats()
        if st["committed"] + st["aborted"] >= len(d.outcome) // 4:
            break
        await trio.sleep(0.005)
    progress(f"[demo] partitioning link {name} for {seconds:g} s (dead timer {DEAD:g} s)")
    await trio.to_thread.run_sync(manager.impair, tb.name, name, ["partition=on"])
    try:
        await trio.sleep(seconds)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.impair, tb.name, name, ["partition=off"])
    progress(f"[demo] link {name} reconnected")
    return {"link": name, "seconds": seconds}


async def run_traffic(
    fleet: Fleet, transfers: int, partition: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    """`transfers` AITs each way over every link of the fleet's testbed, at the same
    time, sent and received through the node processes' control sockets, with the first
    link partitioned for `partition` seconds on the way (0: never); the counts."""
    tb = fleet.tb
    links = tb.state["links"]
    dirs: dict[tuple[int, int], _Direction] = {}
    for i, lk in enumerate(links):
        dirs[(i, 0)] = _Direction(lk["name"], lk["a"], lk["b"], transfers)
        dirs[(i, 1)] = _Direction(lk["name"], lk["b"], lk["a"], transfers)
    # Generous for a shared machine: every transfer's three signals at 1 ms per frame,
    # plus the cut.
    timeout = 30.0 + partition + transfers * 3e-3
    node = {n.name: n for n in fleet.nodes}
    ends = {(i, e): _End(node[lk[e]], lk[f"if_{e}"]) for i, lk in enumerate(links) for e in "ab"}
    t_up = time.perf_counter()
    await fleet.all_ready(UP_TIMEOUT)
    progress(f"[demo] {len(ends)} link ends LIVE in {time.perf_counter() - t_up:.2f} s "
             f"({len(fleet.nodes)} `oae node --epochs` processes)")  # fmt: skip
    total = 2 * transfers * len(links)
    async with trio.open_nursery() as nursery:
        for i in range(len(links)):
            nursery.start_soon(_receive, ends[(i, "a")], dirs, dirs[(i, 1)])
            nursery.start_soon(_receive, ends[(i, "b")], dirs, dirs[(i, 0)])

        async def report() -> None:
            while True:
                await trio.sleep(1.0)
                done = 0
                for e in ends.values():
                    st = await e.stats()
                    done += st["committed"] + st["aborted"]
                progress(f"[demo] traffic: {done:,}/{total:,} transfers settled")

        nursery.start_soon(report)
        t0 = time.perf_counter()
        cut: dict[str, Any] = {}

        async def partition_first() -> None:
            cut.update(await _partition(tb, ends[(0, "a")], dirs[(0, 0)], partition, progress))

        async with trio.open_nursery() as senders:
            for i in range(len(links)):
                senders.start_soon(_send, ends[(i, "a")], dirs[(i, 0)], i, 0, timeout)
                senders.start_soon(_send, ends[(i, "b")], dirs[(i, 1)], i, 1, timeout)
            if partition > 0:
                senders.start_soon(partition_first)
        elapsed = time.perf_counter() - t0
        # A committed transfer was delivered before the sender learned it; it may still
        # be on its way to the node's inbox. Wait (bounded) for the receivers.
        with trio.move_on_after(SETTLE_TIMEOUT):
            while any(d.missing() for d in dirs.values()):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    stats = {f"{links[i]['name']}/{end}": await e.stats() for (i, end), e in ends.items()}
    per_dir = [d.summary() for d in dirs.values()]
    keys = ("attempted", "committed", "aborted", "unsettled", "delivered", "duplicated",
            "lost", "disagreed", "foreign")  # fmt: skip
    totals = {k: sum(s[k] for s in per_dir) for k in keys}
    return {
        **totals,
        "seconds": elapsed,
        "committed_per_s": totals["committed"] / elapsed if elapsed > 0 else None,
        "frames_out": sum(s["frames_out"] for s in stats.values()),
        "frames_dropped_by_engine": sum(s["dropped"] for s in stats.values()),
        "rto_timeouts": sum(s["timeouts_rto"] for s in stats.values()),
        "reconciles": sum(s["reconciles"] for s in stats.values()),
        "links_down": sum(s["links_down"] for s in stats.values()),
        "partition": cut or None,
        "per_direction": per_dir,
    }


async def run_on_nodes(tb: Testbed, cfg: DemoConfig, progress: Callable[[str], None]
                       ) -> tuple[dict[str, Any], dict[str, int], dict[str, Any]]:  # fmt: skip
    """Steps 2 and 3 on node processes: the AIT traffic, then the bilateral transitions on
    the same `oae node --epochs` processes, then snap-t on processes of its own; returns
    (traffic, the bridge's counters after the traffic, convergence per algorithm)."""
    def say_run(algo: str) -> None:
        progress(f"[demo] {algo}: {cfg.epochs} epoch transitions on the testbed's links by "
                 f"{cfg.nodes} `oae node --epochs` processes, app traffic every "
                 f"~{APP_PERIOD * 1e3:g} ms per link direction")  # fmt: skip

    runs: dict[str, Any] = {}
    async with open_fleet(tb, "bilateral", cfg.seed, progress) as fleet:
        progress(f"[demo] AIT traffic: {cfg.transfers} transfers each way on "
                 f"{len(tb.state['links'])} links, through the node processes")  # fmt: skip
        traffic = await run_traffic(fleet, cfg.transfers, cfg.partition, progress)
        bridge = await trio.to_thread.run_sync(bridge_totals, tb)
        say_run("bilateral")
        runs["bilateral"] = await run_transitions(
            fleet, cfg.epochs, cfg.seed, None, progress, cfg.crash_rate, app_period=APP_PERIOD
        )
    for algo in ALGORITHMS[1:]:  # each on node processes of its own, on the same links
        say_run(algo)
        runs[algo] = await run_fleet(tb, cfg.epochs, cfg.seed, None, progress, cfg.crash_rate,
                                     algorithm=algo, app_period=APP_PERIOD)  # fmt: skip
    return traffic, bridge, runs


def bridge_totals(tb: Testbed) -> dict[str, int]:
    """What the impairing bridge did to the frames, summed over links and directions."""
    reply = manager.control(tb, {"cmd": "stats"})
    out: dict[str, int] = {}
    for rep in reply.get("links", {}).values():
        for key in ("a_to_b", "b_to_a"):
            for name, value in rep[key].items():
                out[name] = out.get(name, 0) + int(value)
    return out


# --------------------------------------------------------------------------- the run
def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """trio.run, with Ctrl-C coming out as KeyboardInterrupt and a lone error as itself
    (not wrapped in the ExceptionGroups of our nurseries), so the CLI can say it in a line."""
    try:
        try:
            return trio.run(partial(fn, *args, **kwargs))
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            if any(isinstance(e, KeyboardInterrupt) for e in leaves):
                raise KeyboardInterrupt from None
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
    except trio.TooSlowError:
        raise OaeError(
            f"{fn.__name__}: timed out (a link did not go LIVE, or a transition did not "
            "finish); the testbed is removed"
        ) from None


def _progress(quiet: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return say


def run_demo(cfg: DemoConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    """The whole demo; returns the report (see the module docstring for what is measured)."""
    cfg.check()
    kernel.require_root("oae demo")
    started = time.time()
    name = f"demo{os.getpid()}"
    topo = ring_topology(cfg, name)
    progress(f"[demo] bringing up a {cfg.nodes}-node ring, every link through the impairing "
             f"bridge: loss {cfg.loss:.1%}, reorder {cfg.reorder:.1%}")  # fmt: skip
    t0 = time.perf_counter()
    with manager.running(topo, name) as tb:
        namespaces = tb.namespaces()
        progress(f"[demo] testbed {name} up in {time.perf_counter() - t0:.1f} s "
                 f"(prefix {tb.prefix}, {len(namespaces)} namespaces)")  # fmt: skip
        traffic, bridge_traffic, testbed_runs = _run(run_on_nodes, tb, cfg, progress)
        bridge_all = bridge_totals(tb)
        testbed_info = {"name": tb.name, "prefix": tb.prefix, "namespaces": namespaces}
    progress(f"[demo] testbed {name} down")
    rtt = testbed_runs["bilateral"].get("median_link_rtt_us")
    if not isinstance(rtt, float) or rtt <= 0:
        raise UsageError("no CONTROL transfer completed on the testbed; nothing to simulate with")
    params = NetParams(
        rtt_us=rtt,
        loss=cfg.loss,
        rto_us=3 * rtt,
        app_period_us=rtt / 4,
        downtime_us=(2.5 * rtt, 25 * rtt),
    )
    sim_topo = make_topology("ring", cfg.nodes)
    simulated = {}
    for algo in ALGORITHMS:
        progress(f"[demo] {algo}: {cfg.epochs} transitions on the simulated network "
                 f"(link round trip {rtt:,.0f} µs as measured)")  # fmt: skip
        simulated[algo] = simulate(
            algo, sim_topo, cfg.epochs, cfg.seed, params, cfg.crash_rate, probes=PROBES
        )
    return {
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "started": started,
        "seconds": time.time() - started,
        "testbed": testbed_info,
        "traffic": traffic,
        "bridge": {"during_traffic": bridge_traffic, "total": bridge_all},
        "convergence": {
            **{f"{a} (testbed)": testbed_runs[a] for a in ALGORITHMS},
            **{f"{a} (simulated)": simulated[a] for a in ALGORITHMS},
        },
        "simulated_params": asdict(params),
    }


# --------------------------------------------------------------------------- output
def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(report: dict[str, Any]) -> str:
    """The results as text tables: transfers, then convergence per algorithm."""
    t, br, cfg = report["traffic"], report["bridge"]["during_traffic"], report["config"]
    lines = [
        f"oae demo: {cfg['nodes']}-node ring, loss {cfg['loss']:.1%} and reorder "
        f"{cfg['reorder']:.1%} per link and direction (impairing bridge), seed {cfg['seed']}",
        "",
        f"AIT transfers (real frames, {len(t['per_direction'])} link directions, "
        f"{cfg['transfers']:,} each):",
    ]
    for key in ("attempted", "committed", "aborted", "unsettled", "duplicated", "lost",
                "disagreed"):  # fmt: skip
        lines.append(f"  {key:<12}{_fmt(t[key]):>12}")
    if t["partition"]:
        lines.append(
            f"  link {t['partition']['link']} cut for {t['partition']['seconds']:g} s: "
            f"{t['links_down']} link ends went down, {t['reconciles']} reconciliations"
        )
    lines.append(
        f"  {t['committed_per_s'] or 0:,.0f} commits/s over {t['seconds']:.1f} s; the bridge "
        f"dropped {br.get('lost', 0):,} and reordered {br.get('reordered', 0):,} of "
        f"{br.get('received', 0):,} frames"
    )
    conv = report["convergence"]
    names = list(conv)
    rows = [
        ("network", lambda r: r["network"]),
        ("transitions committed", lambda r: r["committed"]),
        ("aborted", lambda r: r["aborted"]),
        ("stuck", lambda r: r["stuck"]),
        ("node kill -9 + restarts", lambda r: r["crashes"]),
        ("convergence median µs", lambda r: r["median_convergence_us"]),
        ("convergence p99 µs", lambda r: r["p99_convergence_us"]),
        ("link exchange µs", lambda r: r["median_link_rtt_us"]),
        ("app frames delivered", _testbed_only("app_frames")),
        ("mixed-epoch frames", _testbed_only("mixed_epoch_frames")),
        ("mixed-epoch states", lambda r: f"{r['mixed_epoch_states']}/{r['probes']}"),
        ("inconsistent states", _inconsistent_states),
        ("node CPU ms/transition", _testbed_only("cpu_ms_per_transition")),
    ]
    width = max(len(n) for n in names) + 2
    lines += ["", f"Epoch transitions ({cfg['epochs']} per algorithm):",
              f"  {'':<24}" + "".join(f"{n:>{width}}" for n in names)]  # fmt: skip
    for label, get in rows:
        lines.append(f"  {label:<24}" + "".join(f"{_fmt(get(conv[n])):>{width}}" for n in names))
    lines += [
        "",
        "  testbed: one `oae node --epochs` process per node, real frames through the",
        "  impairing bridge, same seed, faults and crash draws for both (a crash is kill -9",
        "  of a node process, restarted from its state dir; one due while its node is down",
        "  does nothing); convergence timed inside the initiator's process. simulated: as many",
        "  transitions on oae.epoch.sim, crashes at the same rate, the testbed's loss and",
        "  bilateral link exchange as round trip.",
        "  mixed-epoch frames: application frames delivered into another epoch than the one",
        "  their sender tagged. mixed-epoch states: probes whose durable epochs would restore",
        "  a mix (testbed: one at a random instant in each transition, one after it;",
        "  simulated: a crash at a random instant). inconsistent states (simulated only):",
        "  single-epoch recovered states whose checkpoints are no consistent cut (a message",
        "  counted as sent but not as received, or the reverse).",
        "  link exchange: on the testbed, the median transfer latency (send to outcome,",
        "  durable link state; CONTROL for bilateral, application for snap-t).",
        "  snap-t convergence is its clock schedule (from the start of the transition to the",
        "  last durable write), with no one knowing it.",
    ]
    return "\n".join(lines)


def _testbed_only(key: str) -> Callable[[dict[str, Any]], object]:
    """Frames are shown as measured on real links; the simulated counts stay in the report."""
    return lambda r: r[key] if r["network"] == "testbed" else None


def _inconsistent_states(r: dict[str, Any]) -> str:
    if r["network"] == "testbed":
        return "-"  # not probed on real links
    return f"{r['inconsistent_states']}/{r['probes']}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: a ring testbed with faults, exactly-once transfers, bilateral "
        "vs snap-t epoch convergence on its real links (needs root)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, help=f"ring size (default {DEFAULTS['nodes']})")
    p.add_argument(
        "--transfers",
        type=int,
        help=f"AITs per link and direction (default {DEFAULTS['transfers']})",
    )
    p.add_argument(
        "--epochs", type=int, help=f"transitions per algorithm (default {DEFAULTS['epochs']})"
    )
    p.add_argument(
        "--loss", default="2%", help="frame loss per link direction: 2%% or 0.02 (default 2%%)"
    )
    p.add_argument(
        "--reorder",
        default="2%",
        help="frames reordered per link direction, at most 50%% (default 2%%)",
    )
    p.add_argument(
        "--partition",
        type=float,
        default=1.5,
        metavar="SECONDS",
        help="cut the first link for this long during the traffic, longer than the link's "
        f"{DEAD:g} s dead timer: it fails, transfers caught in flight settle by "
        "reconciliation (committed or reversed), and it goes on (default 1.5; 0: no cut)",
    )
    p.add_argument(
        "--crash-rate",
        type=float,
        default=0.2,
        metavar="P",
        help="probability that a node process is killed (SIGKILL: links, epoch layer and "
        "traffic gone at once; restarted from its state dir 0.6-1 s later) during each "
        "transition on the testbed, the same "
        "crashes for bilateral and snap-t; the simulated runs get as many per transition "
        "on average (default 0.2; 0: none)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of impairments and runs (default 1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"short run: {QUICK['nodes']} nodes, {QUICK['transfers']} transfers, "
        f"{QUICK['epochs']} epochs (flags given explicitly still win)",
    )
    p.add_argument(
        "--report", default=DEFAULT_REPORT, help=f"JSON report file (default ./{DEFAULT_REPORT})"
    )
    p.add_argument(
        "--plot",
        metavar="DIR",
        help="PNG plots go to DIR (default: the report's directory; needs matplotlib)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the report on stdout instead of the tables"
    )
    p.set_defaults(func=_cli)


def _fraction(flag: str, value: str) -> float:
    try:
        return parse_fraction(float(value) if value.replace(".", "", 1).isdigit() else value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    base = QUICK if args.quick else DEFAULTS
    reorder = _fraction("--reorder", args.reorder)
    if reorder > 0.5:
        raise UsageError("--reorder: at most 50% (each reordered frame is overtaken by one)")
    cfg = DemoConfig(
        nodes=args.nodes if args.nodes is not None else base["nodes"],
        transfers=args.transfers if args.transfers is not None else base["transfers"],
        epochs=args.epochs if args.epochs is not None else base["epochs"],
        loss=_fraction("--loss", args.loss),
        reorder=reorder,
        partition=args.partition,
        crash_rate=args.crash_rate,
        seed=args.seed,
    )
    cfg.check()
    return cfg


def _cli(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    kernel.require_root("oae demo")  # up front, before anything is written
    report_path = Path(args.report)
    plot_dir = Path(args.plot) if args.plot else report_path.resolve().parent
    try:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        plot_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {exc.filename}: {exc.strerror}") from None
    say = _progress(False)
    report = run_demo(cfg, say)
    from oae.bench import plots

    report["plots"] = [str(p) for p in plots.demo_plots(report, plot_dir)]
    try:
        report_path.write_text(json.dumps(report, indent=1) + "\n")
    except OSError as exc:
        raise UsageError(f"--report {report_path}: {exc.strerror}") from None
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(format_table(report))
        print(f"\nreport: {report_path.resolve()}")
        for p in report["plots"]:
            print(f"plot:   {p}")
        if not report["plots"]:
            print("plots:  none (matplotlib is not installed)")
    say(f"[demo] done in {report['seconds']:.1f} s; report in {report_path.resolve()}")
    return 0
