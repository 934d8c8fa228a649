"""`oae converge --testbed`: epoch transitions on a namespace testbed run by `oae node
--epochs` processes, one per testbed node (its sockets in the node's namespace, its
state dir of its own), driven through their control sockets (oae.epoch.daemon) with
`bilateral`, the clock-driven baselines `snap-t` and `rolling`, or `2pc`; a crash is
SIGKILL of a node process and a restart from its state dir. Loss, delay and reordering
are whatever the testbed's links impose (its impairing bridge).

Application traffic (`app_period` > 0): every node process sends one application
transfer per link about every period (`epoch-traffic`), each payload starting with the
sender's epoch at submission (bilateral: the tag its link end uses, held across the
switch as the machine dictates; 2pc: the node's committed epoch, held from its capture
at PREPARE until released; clock baselines: the node's current epoch). A receiver
compares that epoch with its own at delivery: a mismatch is a mixed-epoch frame.

Reported like the simulated runs, with `"network": "testbed"`. Convergence is measured
where it happens, in the initiator's process, on CLOCK_MONOTONIC (shared by every
process of the machine, so instants of a crashed and restarted initiator still
subtract): bilateral, from the proposal to the initiator's Conv(P, e+1); 2pc, from the
proposal to the coordinator holding every node's commit ACK (it then knows every node
committed, as bilateral's initiator at Conv), with its critical path counted as
bilateral's, 2 x eccentricity (PREPARE/YES and COMMIT/ACK relayed to and from the
farthest node), and `median_all_links_us` from the proposal to the last node released
(the simulated 2pc's convergence); the clock baselines, from the start of the transition
to the last node's durable write (as in the simulation). The link exchange time is the
median transfer latency (submit to outcome, CONTROL for bilateral and 2pc, application
for the clock baselines) of the same run. Mixed-epoch states are counted by probes of
the nodes' durable records, read from their state dirs: one at a random instant in each
transition, under each algorithm's own restore rule, and one after it. The node
processes' CPU time (user + system, /proc) over the transitions is reported too.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from oae.epoch.baselines import restore_2pc
from oae.epoch.converge import quantile
from oae.epoch.durable import DurableRecord, FileStore
from oae.epoch.layers import CLOCK_FILE, read_clock_epoch, transition_timeout
from oae.epoch.sim import NetParams, Topology
from oae.epoch.twopc_testbed import load_store
from oae.errors import OaeError, UsageError
from oae.runtime.link import unwrap_single
from oae.testbed.manager import Testbed, _pythonpath

ALGORITHMS = ("bilateral", "snap-t", "rolling", "2pc")
# Clock baselines: the transition starts, each node acts at start + LEAD + its skew (the
# simulated baselines' 50 us skew, 200 us log-normal write; LEAD is within the window in
# which crashes are injected, so a crash can make a node miss its instant). Their
# schedule is fixed in advance (each node is told its instant at the start): a transition
# does not wait for restarted nodes, and a node down at the start misses the epoch.
LEAD = 0.05
SKEW_US = 50.0
# quick failure detection and rediscovery; idle links paced at 50 ms (re-offers after 0.1 s):
# 64 node processes' idle links cost ~0.06-0.11 of a CPU instead of ~0.2-0.35 at 10 ms,
# and new work wakes a link at once either way (docs/convergence.md §11.13)
NODE_LINK_ARGS = ("--dead", "0.3", "--hello", "0.02", "--idle", "0.05")
START_TIMEOUT = 60.0  # a node process's control socket answers within this (64 start at once)
STOP_TIMEOUT = 5.0
RPC_SLACK = 10.0  # a request may take this long beyond the wait it asks for
TAIL_LINES = 6
CLK_TCK = os.sysconf("SC_CLK_TCK")


class FleetError(OaeError):
    """A node process failed (exited unexpectedly, refused a request) or a transition's
    step did not finish in time; the message names the node and ends with its stderr."""


class _Down(Exception):
    """The node process is not running (killed, or restarting)."""


def testbed_topology(tb: Testbed) -> tuple[list[str], Topology]:
    """Node names (id = index) and the graph of a running testbed."""
    names = sorted(tb.state["nodes"])
    index = {n: i for i, n in enumerate(names)}
    edges = tuple((index[lk["a"]], index[lk["b"]]) for lk in tb.state["links"])
    return names, Topology(tb.name, len(names), edges)


def bilateral_restore_mixed(read: Callable[[], list[DurableRecord]]) -> bool:
    """Would restarting every node from its record leave a mix of epochs? Recovery
    (docs/convergence.md §5) brings the nodes prepared for the highest committed wave to
    its epoch; any other node below it stays behind. `read` reads every node's record,
    one after the other while the nodes run: a wave may prepare and commit between two
    reads (a node read early, unprepared, next to one read late, committed), so the
    highest committed wave is taken from one read and the others are checked in a second
    read. A node that committed W proves every node prepared for W or committed it by
    then, and both last until W commits there: behind in the second read, a node really
    is."""
    top = max(read(), key=lambda r: r.epoch).committed
    return any(r.epoch < top.epoch and r.prepared != top for r in read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads, from /proc (0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class NodeProcess:
    """One `oae node --epochs` process of the fleet: started, asked, killed (SIGKILL) and
    restarted from its state dir. What each incarnation counted is read from it (its
    last harvest) before it is killed and at the end."""

    def __init__(self, fleet: Fleet, i: int, name: str, ns: str,
                 ends: dict[str, int]) -> None:  # fmt: skip
        self.fleet, self.i, self.name, self.ns, self.ends = fleet, i, name, ns, ends
        self.state = fleet.work / name
        self.sock = fleet.work / f"{name}.sock"
        self.proc: trio.Process | None = None
        self.alive = False
        self.incarnation = 0
        self.expected_exit = False
        self.cpu_base = 0.0  # CPU of this incarnation before the transitions began
        self.cpu_done = 0.0  # CPU of earlier incarnations during the transitions
        self.counters: dict[str, int] = {}  # summed over earlier incarnations
        self.last: dict[str, int] = {}  # this incarnation's, as last harvested
        self.base: dict[str, int] = {}  # totals when the run began (`measure`)
        self.transfer_us: list[float] = []
        self.control: list[list[Any]] = []
        self.released: dict[int, float] = {}

    def argv(self) -> list[str]:
        f = self.fleet
        argv = [sys.executable, "-m", "oae.cli", "node", "--netns", self.ns]
        for iface in self.ends:
            argv += ["--iface", iface]
        argv += ["--epochs", "--node-id", str(self.i), "--algorithm", f.algorithm,
                 "--state-dir", str(self.state), "--control", str(self.sock), "--json",
                 *NODE_LINK_ARGS]  # fmt: skip
        for iface, peer in self.ends.items():
            argv += ["--neighbour", f"{iface}={peer}"]
        if f.algorithm == "2pc":
            argv += ["--graph", ",".join(f"{a}-{b}" for a, b in f.topo.edges)]
        return argv

    def log(self, kind: str) -> Path:
        return self.fleet.work / "logs" / f"{self.name}.{self.incarnation}.{kind}"

    def tail(self) -> str:
        try:
            lines = self.log("err").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return " | ".join(lines[-TAIL_LINES:]) or "(no stderr)"

    async def start(self) -> None:
        """Spawn the process and wait until its control socket answers; a watcher turns
        an exit nobody asked for into a FleetError of the run."""
        self.incarnation += 1
        self.expected_exit = False
        self.log("err").parent.mkdir(exist_ok=True)
        with open(self.log("out"), "wb") as out, open(self.log("err"), "wb") as err:
            self.proc = await trio.lowlevel.open_process(
                self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, env={**os.environ, "PYTHONPATH": _pythonpath()},
            )  # fmt: skip
        self.fleet.nursery.start_soon(self._watch, self.proc)
        try:
            await self._rpc({"op": "status"}, START_TIMEOUT)
        except _Down:
            raise FleetError(f"node {self.name} exited at start: {self.tail()}") from None
        self.alive = True
        self.last = {}
        if self.fleet.app_period > 0:
            await self.send_traffic()

    async def send_traffic(self) -> None:
        """Start the run's synthetic application traffic on every link of the node."""
        await self.request({"op": "epoch-traffic", "period": self.fleet.app_period,
                            "seed": self.fleet.seed * 1000 + self.i})  # fmt: skip

    async def _watch(self, proc: trio.Process) -> None:
        await proc.wait()
        if not self.expected_exit and not self.fleet.stopping:
            self.alive = False
            raise FleetError(f"node {self.name} (pid {proc.pid}) exited with status "
                             f"{proc.returncode}: {self.tail()}")  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _rpc(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One request on a connection of its own. A node that is not listening yet, or
        whose listen backlog is full, is asked again (until `timeout`); _Down if the
        process is not running."""
        try:
            with trio.fail_after(timeout):
                while True:
                    try:
                        stream = await trio.open_unix_socket(str(self.sock))
                        break
                    except OSError:
                        if not self.running():
                            raise _Down from None
                        await trio.sleep(0.01)
                async with stream:
                    await stream.send_all(json.dumps(req).encode() + b"\n")
                    buf = b""
                    while b"\n" not in buf:
                        chunk = await stream.receive_some(1 << 16)
                        if not chunk:
                            raise trio.BrokenResourceError
                        buf += chunk
        except (OSError, trio.BrokenResourceError):
            # a dying process closes its sockets before it can be reaped: give it a moment
            if self.proc is not None:
                with trio.move_on_after(1.0):
                    await self.proc.wait()
            if not self.running():
                raise _Down from None
            raise FleetError(f"node {self.name} dropped the connection of a {req['op']} "
                             f"request: {self.tail()}") from None  # fmt: skip
        except trio.TooSlowError:
            if not self.running():
                raise _Down from None
            raise FleetError(f"node {self.name} did not answer {req['op']} within "
                             f"{timeout:g} s: {self.tail()}") from None  # fmt: skip
        answer = json.loads(buf.split(b"\n", 1)[0])
        if not answer.get("ok"):
            raise FleetError(f"node {self.name}: {req['op']}: {answer.get('error')}")
        return answer

    async def request(self, req: dict[str, Any], wait: float = 0.0) -> dict[str, Any]:
        """One request; `wait` is how long the op itself may wait. Raises _Down if the
        process is not running (or dies meanwhile)."""
        if not self.alive:
            raise _Down
        return await self._rpc(req, wait + RPC_SLACK)

    async def harvest(self) -> None:
        """Take this incarnation's measurements and counters (what it has counted so far)."""
        h = await self.request({"op": "epoch-harvest"})
        self.transfer_us += h["transfer_us"]
        self.control += h["control"]
        self.released.update({int(e): t for e, t in h["released"].items()})
        st = h["status"]
        last = dict(st.get("counters", {}))
        last["link_downs"] = sum(ln["links_down"] for ln in st["links"])
        self.last = last

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def _retire(self) -> None:
        """This incarnation ends: its counters and CPU join the earlier ones'."""
        for k, v in self.last.items():
            self.counters[k] = self.counters.get(k, 0) + v
        self.last = {}
        if self.fleet.measuring:
            self.cpu_done += self.cpu() - self.cpu_base
        self.cpu_base = 0.0

    async def kill(self) -> None:
        """A crash: harvest, SIGKILL, wait for the exit (its links' state dirs unlock)."""
        try:
            await self.harvest()
        except _Down:
            pass
        assert self.proc is not None
        self.expected_exit = True
        self._retire()
        self.alive = False
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM (a clean stop removes the control socket), SIGKILL if it lingers."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.expected_exit = True
        self.alive = False
        self.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def total(self, key: str) -> int:
        """What the node counted (all incarnations) since `measure`."""
        return self.counters.get(key, 0) + self.last.get(key, 0) - self.base.get(key, 0)

    async def measure(self) -> None:
        """From now on: counters, measurements and CPU count from zero."""
        await self.harvest()
        self.transfer_us, self.control, self.released = [], [], {}
        self.base = {}
        self.base = {k: self.total(k) for k in {*self.counters, *self.last}}
        self.cpu_base = self.cpu()


class Fleet:
    """Every node process of one run, and the run's shared settings."""

    def __init__(self, tb: Testbed, work: Path, algorithm: str, seed: int) -> None:
        self.tb, self.work, self.algorithm, self.seed = tb, work, algorithm, seed
        self.app_period = 0.0  # set by a run: every node (and every restart) sends traffic
        self.names, self.topo = testbed_topology(tb)
        index = {n: i for i, n in enumerate(self.names)}
        ends: dict[str, dict[str, int]] = {n: {} for n in self.names}
        for lk in tb.state["links"]:
            ends[lk["a"]][lk["if_a"]] = index[lk["b"]]
            ends[lk["b"]][lk["if_b"]] = index[lk["a"]]
        self.nodes = [NodeProcess(self, i, n, tb.ns(n) or "", ends[n])
                      for i, n in enumerate(self.names)]  # fmt: skip
        self.nursery: trio.Nursery
        self.stopping = False
        self.measuring = False

    async def each(self, fn: Callable[[NodeProcess], Any]) -> None:
        """`await fn(node)` for every node at once."""
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(fn, node)

    async def stop(self) -> None:
        self.stopping = True
        with trio.CancelScope(shield=True):
            await self.each(NodeProcess.stop)

    def cpu(self) -> float:
        """CPU of the node processes since the transitions began."""
        return sum(n.cpu_done + (n.cpu() - n.cpu_base if n.alive else 0.0) for n in self.nodes)

    def durable_epoch(self, node: NodeProcess) -> int:
        if self.algorithm == "bilateral":
            return FileStore(node.state / "epoch.json").load().epoch
        if self.algorithm == "2pc":
            return load_store(node.state / "2pc.json").epoch
        return read_clock_epoch(node.state / CLOCK_FILE)

    def probe_mixed(self) -> bool:
        """What every node would restore if all crashed now, by the algorithm's own rule
        (read from the state dirs): disagreeing epochs are a mixed-epoch state."""
        if self.algorithm == "bilateral":
            return bilateral_restore_mixed(
                lambda: [FileStore(n.state / "epoch.json").load() for n in self.nodes]
            )
        if self.algorithm == "2pc":
            stores = [load_store(n.state / "2pc.json") for n in self.nodes]
            return len({e for e, _ in restore_2pc(stores).values()}) != 1
        return len({self.durable_epoch(n) for n in self.nodes}) != 1

    async def all_ready(self, limit: float) -> None:
        """Until every node is running and reports every link LIVE (bilateral: and its
        peer's epoch heard), all at once; bounded by `limit`."""
        ready: dict[int, bool] = {}

        async def ask(node: NodeProcess) -> None:
            try:
                r = await node.request({"op": "epoch-ready", "timeout": 1.0}, 1.0)
                ready[node.i] = r["ready"] and node.alive
            except _Down:
                ready[node.i] = False

        with trio.move_on_after(limit):
            while True:
                await self.each(ask)
                if all(ready.values()):
                    return
                await trio.sleep(0.01)
        raise FleetError(f"links not reconciled within {limit:g} s: {await self.not_ready()}")

    async def not_ready(self) -> str:
        out = []
        for node in self.nodes:
            try:
                st = (await node.request({"op": "epoch-status"}))["status"]
            except _Down:
                out.append(f"{node.name} down")
                continue
            for ln in st["links"]:
                if not ln.get("up") or ln.get("heard", 0) is None:
                    out.append(f"{node.name}:{ln['iface']} {ln}")
        return ", ".join(out) or "(ready now)"


class _Run:
    """One run of `run_fleet`: its random draws, its counts, its transitions."""

    def __init__(self, fleet: Fleet, epochs: int, seed: int, initiator: int | None,
                 say: Callable[[str], None], crash_rate: float, persist_us: float,
                 skew_us: float) -> None:  # fmt: skip
        self.fleet, self.epochs, self.initiator, self.say = fleet, epochs, initiator, say
        self.crash_rate, self.persist_us, self.skew_us = crash_rate, persist_us, skew_us
        self.algorithm = fleet.algorithm
        self.rng = random.Random(seed)
        # skews and write latencies: not shared with the faults' draws
        self.clock_rng = random.Random(seed + 1)
        self.skews = [self.clock_rng.gauss(0.0, skew_us) * 1e-6 for _ in fleet.nodes]
        self.limit = transition_timeout(fleet.topo)
        self.conv: list[float] = []
        self.paths: list[float] = []
        self.committed_2pc: list[tuple[int, float]] = []  # (epoch, proposal instant)
        self.counts = {"committed": 0, "aborted": 0, "stuck": 0, "crashes": 0}
        self.mixed_states = self.probes = self.probes_pending = self.crashes_pending = 0
        self.target = self.attempt = 0  # clock baselines' epoch; 2pc's attempts
        self.cpu = 0.0
        self.idle_s = 0.0
        self.idle_cpu: float | None = None
        self.disturbed = False  # a node was killed since every link was last seen ready

    async def run(self, app_period: float) -> None:
        fleet, nodes = self.fleet, self.fleet.nodes
        await fleet.all_ready(self.limit)
        if self.idle_s > 0:  # what the idle node processes cost (links kept alive)
            before = sum(n.cpu() for n in nodes)
            await trio.sleep(self.idle_s)
            self.idle_cpu = sum(n.cpu() for n in nodes) - before
        fleet.app_period = app_period
        if app_period > 0:
            await fleet.each(NodeProcess.send_traffic)
        await fleet.each(NodeProcess.measure)
        fleet.measuring = True
        for k in range(self.epochs):
            while self.probes_pending:  # an earlier transition's probe reads 64 records:
                await trio.sleep(0.001)  # not on the CPUs while this one is timed
            if self.algorithm in ("bilateral", "2pc") and self.disturbed:
                # links reconciled after a crash-restart (asked only then: 64 requests
                # before every transition would be the runner's CPU in the figures)
                self.disturbed = False
                await fleet.all_ready(self.limit)
            who = self.initiator
            if who is None:
                who = self.rng.randrange(len(nodes))
            if self.rng.random() < self.crash_rate:
                victim = nodes[self.rng.randrange(len(nodes))]
                self.crashes_pending += 1
                fleet.nursery.start_soon(self.crash, victim, self.rng.uniform(0.0, 0.2),
                                         self.rng.uniform(0.6, 1.0))  # fmt: skip
            probe_after = self.rng.uniform(0.0, 2 * LEAD)
            if self.algorithm in ("bilateral", "2pc"):
                result, elapsed = await self.wave(nodes[who], probe_after)
            else:
                result, elapsed = await self.clocks(probe_after)
            self.record(k, who, result, elapsed)
        # a transition may end before its crash is due: the victim is restarted before
        # the end (a harvest of a killed node would find it down)
        while self.crashes_pending:
            await trio.sleep(0.01)
        await fleet.all_ready(self.limit)
        while self.probes_pending:  # the last transition's probe may still be asleep
            await trio.sleep(0.01)
        self.cpu = fleet.cpu()
        await fleet.each(NodeProcess.harvest)

    def record(self, k: int, who: int, result: bool | None, elapsed: float) -> None:
        label = {None: "stuck", True: "committed", False: "aborted"}[result]
        self.counts[label] += 1
        self.say(f"[converge] testbed {self.fleet.tb.name} {self.algorithm} transition "
                 f"{k + 1}/{self.epochs}: {label}")  # fmt: skip
        if result is None:
            return
        if result:
            self.conv.append(elapsed * 1e6)
            if self.algorithm in ("bilateral", "2pc"):
                # Bilateral: PROPOSE/ACCEPT and COMMIT/DONE; 2pc: PREPARE/YES and
                # COMMIT/ACK relayed to and from the farthest node.
                self.paths.append(2.0 * self.fleet.topo.eccentricity(who))
        # after the transition the durable epochs must agree (committed or aborted
        # everywhere; the clock baselines: someone missed the epoch)
        self.probes += 1
        self.mixed_states += len({self.fleet.durable_epoch(n) for n in self.fleet.nodes}) != 1

    async def crash(self, node: NodeProcess, after: float, down: float) -> None:
        """`down` is drawn with the rest of the transition's faults, not here: a draw at
        crash time would interleave with the main loop's by timing, and the algorithms
        would no longer get the same faults from one seed."""
        try:
            await trio.sleep(after)
            if not node.alive:
                return  # still down from an earlier crash: nothing to crash
            self.counts["crashes"] += 1
            self.disturbed = True
            await node.kill()
            await trio.sleep(down)
            await node.start()
        finally:
            self.crashes_pending -= 1

    def start_probe(self, after: float) -> None:
        self.probes_pending += 1
        self.fleet.nursery.start_soon(self._probe_at, after)

    async def _probe_at(self, after: float) -> None:
        await trio.sleep(after)
        self.probes += 1
        self.mixed_states += self.fleet.probe_mixed()
        self.probes_pending -= 1

    async def wave(self, node: NodeProcess, probe_after: float) -> tuple[bool | None, float]:
        """A bilateral or 2pc transition from `node`: (outcome, node-measured time)."""
        req: dict[str, Any] = {"op": "epoch-propose"}
        if self.algorithm == "2pc":
            self.attempt += 1  # grows across coordinators and restarts
            req["attempt"] = self.attempt
        ans = await self.propose(node, req)
        self.start_probe(probe_after)
        result, at = await self.outcome(node, ans["wave"])
        if result and self.algorithm == "2pc":
            self.committed_2pc.append((ans["wave"] >> 16, ans["at"]))
        return result, at - ans["at"]

    async def propose(self, node: NodeProcess, req: dict[str, Any]) -> dict[str, Any]:
        """Propose, again while the node is down or busy (still settling the previous
        transition); bounded by the transition's limit."""
        busy = None
        with trio.move_on_after(self.limit):
            while True:
                try:
                    ans = await node.request(req)
                    if ans["wave"] is not None:
                        return ans
                    busy = ans.get("busy")
                except _Down:
                    busy = "down"
                await trio.sleep(0.01)
        raise FleetError(f"node {node.name} could not start a transition within "
                         f"{self.limit:g} s: {busy}")  # fmt: skip

    async def outcome(self, node: NodeProcess, wave: Any) -> tuple[bool | None, float]:
        """The transition's outcome as the initiator knows it, and when it knew it (asked
        again after a crash-restart of the initiator); None: stuck."""
        deadline = trio.current_time() + self.limit
        while (left := deadline - trio.current_time()) > 0:
            try:
                r = await node.request({"op": "epoch-outcome", "wave": wave, "timeout": left},
                                       left)  # fmt: skip
            except _Down:
                await trio.sleep(0.01)
                continue
            if r["outcome"] is not None:
                return r["outcome"] == "committed", r["at"] or time.monotonic()
        return None, 0.0

    async def clocks(self, probe_after: float) -> tuple[bool, float]:
        """A snap-t or rolling transition: every node is told its instant at the start
        and acts then; none waits for another."""
        self.target += 1
        t0 = time.monotonic()
        self.start_probe(probe_after)
        last = t0
        async with trio.open_nursery() as tell:
            for node, skew in zip(self.fleet.nodes, self.skews, strict=True):
                drift = self.clock_rng.gauss(0.0, self.skew_us / 4) * 1e-6
                at = max(t0, t0 + LEAD + skew + drift)
                persist_s = 0.0
                if self.algorithm == "snap-t":
                    persist_s = self.persist_us * 1e-6 * math.exp(self.clock_rng.gauss(0.0, 0.5))
                last = max(last, at + persist_s)
                req = {"op": "epoch-enter", "epoch": self.target, "at": at, "persist_s": persist_s}
                tell.start_soon(_tell, node, req)
        end = max(last, t0 + 2 * LEAD) + 0.01
        await trio.sleep(max(0.0, end - time.monotonic()))
        # committed: every node has the target durable; otherwise someone missed it (it
        # was down at the start or lost its write)
        result = all(self.fleet.durable_epoch(n) >= self.target for n in self.fleet.nodes)
        return result, last - t0

    def results(self) -> dict[str, object]:
        fleet, nodes, algorithm = self.fleet, self.fleet.nodes, self.algorithm
        rtt = quantile([t for n in nodes for t in n.transfer_us], 0.5)
        delivery = quantile(_one_way_us(fleet), 0.5)
        released = []
        for epoch, t0 in self.committed_2pc:
            times = [n.released.get(epoch) for n in nodes]
            if all(t is not None for t in times):
                released.append((max(times) - t0) * 1e6)  # type: ignore[type-var,operator]
        median = quantile(self.conv, 0.5)
        path = quantile(self.paths, 0.5) if algorithm in ("bilateral", "2pc") else 0.0
        transitions = self.epochs

        def total(key: str) -> int:
            return sum(n.total(key) for n in nodes)

        return {
            "algorithm": algorithm,
            "network": "testbed",
            "runner": "node processes",
            "topology": fleet.tb.name,
            "nodes": fleet.topo.n,
            "links": len(fleet.topo.edges),
            "epochs": self.epochs,
            "seed": fleet.seed,
            **self.counts,
            "median_convergence_us": median,
            "p99_convergence_us": quantile(self.conv, 0.99),
            "median_all_links_us": quantile(released, 0.5),
            "critical_path_exchanges": path,
            "median_link_rtt_us": rtt,
            "convergence_ratio": None if not (median and path and rtt) else median / (path * rtt),
            # bilateral: one CONTROL message's submit to the peer link handing it over
            # (its durable delivery), and the ratio a wave of 2 x path such hops would
            # have if each cost only that delivery: the link's own floor
            "median_control_delivery_us": delivery,
            "delivery_floor_ratio": None if not (delivery and rtt) else 2 * delivery / rtt,
            "mixed_epoch_frames": total("mixed_app_frames") + total("mixed_frames"),
            "app_frames": total("app_received"),
            "mixed_epoch_states": self.mixed_states,
            "probes": self.probes,
            "bad_messages": total("bad_messages"),
            # link-end down events (crashes, missed hellos under load) and, for 2pc,
            # CONTROL messages lost with a failed link (2pc re-sends none; its timeout
            # aborts)
            "link_downs": total("link_downs"),
            "lost_control_messages": total("lost_control_messages") if algorithm == "2pc" else None,
            "restarts": sum(n.incarnation - 1 for n in nodes),
            # user + system CPU of all node processes over the transitions (restarts'
            # start-up included)
            "cpu_s": self.cpu,
            "cpu_ms_per_transition": self.cpu * 1e3 / transitions,
            # the same processes' CPU while idle before the transitions (with `idle_s`)
            "idle_cpu_ms_per_s": (
                None if self.idle_cpu is None else self.idle_cpu * 1e3 / self.idle_s
            ),
        }


async def _stop_on_sigterm(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """SIGTERM ends the run as an error, so the node processes are stopped (as on Ctrl-C)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            raise FleetError("terminated (SIGTERM); the node processes were stopped")


async def _tell(node: NodeProcess, req: dict[str, Any]) -> None:
    try:
        await node.request(req)
    except _Down:
        pass  # down at the start of the transition: it misses the epoch


def _one_way_us(fleet: Fleet) -> list[float]:
    """Each CONTROL message's first submit to its first hand-over at the peer, matched by
    (sender, receiver, payload), in µs."""
    peer = {(n.name, iface): fleet.names[p] for n in fleet.nodes for iface, p in n.ends.items()}
    sent: dict[tuple[str, str, str], float] = {}
    got: dict[tuple[str, str, str], float] = {}
    for n in fleet.nodes:
        for was_sent, iface, payload, t in n.control:
            if was_sent:
                sent.setdefault((n.name, peer[(n.name, iface)], payload), t)
            else:
                got.setdefault((peer[(n.name, iface)], n.name, payload), t)
    return [(t - sent[k]) * 1e6 for k, t in got.items() if k in sent]


def _check(tb: Testbed, algorithm: str) -> None:
    names, _ = testbed_topology(tb)
    if any(tb.ns(n) is None for n in names):
        raise UsageError(f"testbed {tb.name!r} has real-NIC nodes; run oae node on each host")
    if algorithm not in ALGORITHMS:
        raise UsageError(f"--testbed runs {', '.join(ALGORITHMS)}, not {algorithm!r}")


@asynccontextmanager
async def open_fleet(
    tb: Testbed,
    algorithm: str = "bilateral",
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> AsyncIterator[Fleet]:
    """An `oae node --epochs --algorithm ALGORITHM` process on every node of `tb`, each
    with a fresh state dir, all answering on their control sockets; every one is stopped
    on the way out, also on errors, Ctrl-C and SIGTERM. A node process that exits on its
    own raises FleetError (naming it, with its stderr tail) out of the block."""
    _check(tb, algorithm)
    with tempfile.TemporaryDirectory(prefix="oae-fleet-") as tmp:
        fleet = Fleet(tb, Path(tmp), algorithm, seed)
        with unwrap_single():  # a node's error comes out as itself
            async with trio.open_nursery() as nursery:
                fleet.nursery = nursery
                if threading.current_thread() is threading.main_thread():
                    await nursery.start(_stop_on_sigterm)
                try:
                    t0 = time.monotonic()
                    await fleet.each(NodeProcess.start)
                    if progress:
                        progress(f"[converge] {len(fleet.nodes)} node processes up in "
                                 f"{time.monotonic() - t0:.1f} s")  # fmt: skip
                    yield fleet
                finally:
                    await fleet.stop()
                    nursery.cancel_scope.cancel()


async def run_transitions(
    fleet: Fleet,
    epochs: int,
    seed: int = 1,
    initiator: int | None = None,
    progress: Callable[[str], None] | None = None,
    crash_rate: float = 0.0,
    *,
    app_period: float = 0.0,
    persist_us: float = NetParams.persist_us,
    skew_us: float = SKEW_US,
    idle_s: float = 0.0,
) -> dict[str, object]:
    """Run `epochs` transitions of the fleet's algorithm; with `crash_rate`, each
    transition kills (SIGKILL) a random node process with that probability at a random
    instant in its first 200 ms and restarts it from its state dir 0.6-1 s later; with
    `app_period` (seconds), every node sends application transfers on every link. The
    random draws (initiator, crash, crash instant, downtime, probe instant) come in the
    same order for every algorithm, so one seed gives each the same faults. With `idle_s`
    the processes' CPU is also measured for that long, idle, before the transitions.
    Counters and CPU count from the start of this call (earlier traffic is not in them)."""
    n = len(fleet.nodes)
    if initiator is not None and not 0 <= initiator < n:
        raise UsageError(f"--initiator {initiator}: testbed {fleet.tb.name!r} has nodes "
                         f"0..{n - 1}")  # fmt: skip
    if epochs < 1:
        raise UsageError("--epochs must be >= 1")
    run = _Run(fleet, epochs, seed, initiator, progress or (lambda msg: None), crash_rate,
               persist_us, skew_us)  # fmt: skip
    run.idle_s = idle_s
    await run.run(app_period)
    return run.results()


async def run_fleet(
    tb: Testbed,
    epochs: int,
    seed: int = 1,
    initiator: int | None = None,
    progress: Callable[[str], None] | None = None,
    crash_rate: float = 0.0,
    *,
    algorithm: str = "bilateral",
    app_period: float = 0.0,
    persist_us: float = NetParams.persist_us,
    skew_us: float = SKEW_US,
    idle_s: float = 0.0,
) -> dict[str, object]:
    """`run_transitions` on a fleet of `algorithm` node processes started for it."""
    async with open_fleet(tb, algorithm, seed, progress) as fleet:
        return await run_transitions(fleet, epochs, seed, initiator, progress, crash_rate,
                                     app_period=app_period, persist_us=persist_us,
                                     skew_us=skew_us, idle_s=idle_s)  # fmt: skip


def run_sync(tb: Testbed, epochs: int, seed: int, initiator: int | None, crash_rate: float,
             algorithm: str = "bilateral", app_period: float = 0.0,
             persist_us: float = NetParams.persist_us,
             skew_us: float = SKEW_US) -> dict[str, object]:  # fmt: skip
    """`run_fleet` from synchronous code, progress on stderr, a lone error unwrapped."""

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    return run_trio(partial(run_fleet, tb, epochs, seed, initiator, progress, crash_rate,
                            algorithm=algorithm, app_period=app_period,
                            persist_us=persist_us, skew_us=skew_us))  # fmt: skip


def run_trio(fn: Callable[[], Any]) -> Any:
    """trio.run, with one error from inside the nurseries raised as itself (so the CLI
    prints it as one line) and Ctrl-C as KeyboardInterrupt."""
    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            raise KeyboardInterrupt from None
        errors = [e for e in leaves if isinstance(e, OaeError)]
        if errors:
            raise errors[0] from None
        raise


def _leaves(group: BaseException) -> Iterator[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        for exc in group.exceptions:
            yield from _leaves(exc)
    else:
        yield group
