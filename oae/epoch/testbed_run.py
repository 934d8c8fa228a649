"""The in-process testbed runner: epoch transitions on a namespace testbed, on real
frames, with `bilateral`, the clock-driven baselines `snap-t` and `rolling`, or `2pc`
(the simulated baseline's processes over these links: oae.epoch.twopc_testbed), all in
one Trio process that opens every link end of the testbed (each in its node's namespace,
with its own state dir) and runs one node per testbed node over them; loss, delay and
reordering are whatever the testbed's links impose (its impairing bridge).

`oae converge --testbed`, `oae bench convergence_testbed` and `oae demo` run one `oae
node` process per testbed node instead (oae.epoch.fleet: the same rules and metrics);
this runner stays for profiling the epoch layer in one process
(scripts/profile_epoch_hops.py monkeypatches it) and for comparison with those.

Application traffic (`app_period` > 0): every node sends application transfers on every
link, each payload starting with the sender's epoch at submission (bilateral: the tag its
link end uses, held across the switch as the machine dictates; 2pc: the node's
committed epoch, held from its capture at PREPARE until released, as in the simulation;
clock baselines: the node's current epoch). A receiver compares that epoch with its own
at delivery: a mismatch is a mixed-epoch frame.

Reported like the simulated runs, with `"network": "testbed"`: bilateral convergence is
wall-clock time from the proposal to the initiator's Conv(P, e+1), the baselines' is
from the start of the transition to the last node's durable write (as in the
simulation); 2pc's is from the proposal to the coordinator holding every node's commit
ACK (it then knows every node committed, as bilateral's initiator at Conv), with its
critical path counted as bilateral's: 2 x eccentricity (PREPARE/YES and COMMIT/ACK
relayed to and from the farthest node); `median_all_links_us` is 2pc's proposal to the
last node released (the simulated 2pc's convergence). The link exchange time is the
median transfer latency (send to outcome, CONTROL for bilateral and 2pc, application for
the clock baselines) of the same run. Mixed-epoch states are counted by probes of the
nodes' durable records: one at a random instant in each transition, under each
algorithm's own restore rule, and one after it.
"""

from __future__ import annotations

import math
import random
import struct
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import trio

from oae.epoch.baselines import TwoPC, restore_2pc
from oae.epoch.converge import quantile
from oae.epoch.durable import FileStore
from oae.epoch.fleet import (
    ALGORITHMS,
    LEAD,
    SKEW_US,
    bilateral_restore_mixed,
    testbed_topology,
)
from oae.epoch.layers import read_clock_epoch, transition_timeout, write_clock_epoch
from oae.epoch.messages import Wave
from oae.epoch.node import EpochNode, open_epoch_node
from oae.epoch.sim import NetParams
from oae.epoch.twopc_testbed import TwoPCNet, TwoPCNode, default_timers, load_store
from oae.errors import UsageError
from oae.runtime.link import LinkError, LinkOptions, open_link
from oae.testbed.manager import Testbed

_APP = struct.Struct(">II")  # after the epoch tag: sender node id, sequence number


class _Host:
    """One node of the testbed in this process: its link ends, its epoch layer (an
    EpochNode, or a clock baseline's current and durable epoch) and its application
    traffic, which a crash tears down together (as a process crash would) and a restart
    reopens from the same state dirs."""

    def __init__(
        self,
        i: int,
        name: str,
        ns: str,
        ends: dict[int, tuple[str, str]],
        work: Path,
        algorithm: str,
        app_period: float,
        rng: random.Random,
        net: TwoPCNet | None = None,
    ) -> None:
        self.i, self.name, self.ns, self.ends, self.work = i, name, ns, ends, work
        self.algorithm, self.app_period, self.rng = algorithm, app_period, rng
        self.node: EpochNode | None = None
        self.net = net
        self.tpc: TwoPCNode | None = None  # 2pc: this incarnation's node
        self.links: dict[int, Any] = {}
        self.alive = False
        self.current = 0  # clock baselines: the epoch this node tags and runs now
        self.epoch_file = work / "clock-epoch.json"
        self.scope: trio.CancelScope | None = None
        self.closed = trio.Event()  # set when the current incarnation has closed its links
        self.nursery: trio.Nursery | None = None
        self.converged: set[Wave] = set()
        self.aborted: set[Wave] = set()
        self.mixed_frames = self.bad_messages = self.app_received = 0
        self.link_downs = self.lost_control = 0
        # link objects whose down events were counted (kept, so no id is reused)
        self._counted: dict[int, Any] = {}
        self.transfer_s: list[float] = []
        # first submit / first hand-over time of each CONTROL message (sender, receiver,
        # payload): bilateral's one-way link delivery is measured from the two
        self.control_sent: dict[tuple[int, int, bytes], float] = {}
        self.control_delivered: dict[tuple[int, int, bytes], float] = {}

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.closed = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self.scope = scope
                async with AsyncExitStack() as stack:
                    links = {}
                    for peer, (iface, lname) in self.ends.items():
                        links[peer] = await stack.enter_async_context(
                            open_link(
                                iface, self.ns, state_dir=self.work / f"link-{lname}", options=LINK
                            )
                        )
                    self.links = links
                    nursery = await stack.enter_async_context(trio.open_nursery())
                    self.nursery = nursery
                    if self.algorithm == "bilateral":
                        self.node = await stack.enter_async_context(
                            open_epoch_node(self.i, links, self.work, tag_epochs=True)
                        )
                        nursery.start_soon(self._drain, self.node)
                    elif self.algorithm == "2pc":
                        assert self.net is not None
                        self.work.mkdir(parents=True, exist_ok=True)
                        self.tpc = TwoPCNode(self.i, links, self.work, self.net)
                        await nursery.start(self.tpc.run)
                    else:
                        self.work.mkdir(parents=True, exist_ok=True)
                        self.current = read_clock_epoch(self.epoch_file)
                        for link in links.values():
                            if self.algorithm == "rolling":
                                link.set_epoch(self.current)
                            nursery.start_soon(self._receive, link)
                    if self.app_period > 0:
                        for peer in links:
                            nursery.start_soon(self._traffic, peer)
                    self.alive = True
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            # every link end closed (its state dir unlocked): a restart may reopen them
            self.closed.set()

    async def _drain(self, node: EpochNode) -> None:
        """Bilateral: the node counted the delivery; nothing else reads the payloads."""
        async for _ in node.received():
            pass

    async def _receive(self, link: Any) -> None:
        """Clock baselines apply whatever arrives; a frame from another epoch is mixed."""
        async for msg in link.received():
            if not msg.control:
                self.app_received += 1
                if int.from_bytes(msg.payload[:4], "big") != self.current:
                    self.mixed_frames += 1

    async def _traffic(self, peer: int) -> None:
        """One application transfer to `peer` about every `app_period`, each waited for
        (bilateral: held while the link changes epoch)."""
        seq = 0
        while True:
            await trio.sleep(self.app_period * self.rng.uniform(0.5, 1.5))
            seq += 1
            body = _APP.pack(self.i, seq)
            t0 = trio.current_time()
            if self.node is not None:
                await self.node.send(peer, body)
            elif self.tpc is not None:
                await self.tpc.send_app(peer, body)  # held while 2pc holds
            else:
                await self.links[peer].send(self.current.to_bytes(4, "big") + body)
                self.transfer_s.append(trio.current_time() - t0)

    async def enter(self, epoch: int, persist_s: float) -> None:
        """A clock baseline reaches its own instant: rolling flips its version (links and
        durable record at once); snap-t tags the new epoch and writes its checkpoint,
        durable only after the write latency (a crash meanwhile loses it)."""
        self.current = epoch
        if self.algorithm == "rolling":
            for link in self.links.values():
                link.set_epoch(epoch)
        else:
            await trio.sleep(persist_s)
        if epoch > read_clock_epoch(self.epoch_file):
            write_clock_epoch(self.epoch_file, epoch)

    def durable_epoch(self) -> int:
        if self.algorithm == "bilateral":
            return FileStore(self.work / "epoch.json").load().epoch
        if self.algorithm == "2pc":
            return load_store(self.work / "2pc.json").epoch
        return read_clock_epoch(self.epoch_file)

    def harvest(self) -> None:
        """Keep what the current incarnation learned and counted."""
        node = self.node
        if node is not None:
            self.converged |= node.converged
            self.aborted |= {w for w, ok in node.decided.items() if not ok}
            self.mixed_frames += node.mixed_app_frames + node.machine.mixed_frames
            self.app_received += node.app_received
            node.app_received = node.mixed_app_frames = node.machine.mixed_frames = 0
            self.bad_messages += node.machine.bad_messages
            node.machine.bad_messages = 0
            self.transfer_s += node.transfer_s
            node.transfer_s = []
            for sent, peer, payload, t in node.control_log:
                if sent:
                    self.control_sent.setdefault((self.i, peer, payload), t)
                else:
                    self.control_delivered.setdefault((peer, self.i, payload), t)
            node.control_log.clear()
        tpc = self.tpc
        if tpc is not None:
            self.mixed_frames += tpc.mixed_frames
            self.app_received += tpc.app_received
            self.bad_messages += tpc.bad_messages
            self.transfer_s += tpc.transfer_s
            self.lost_control += tpc.lost
            tpc.mixed_frames = tpc.app_received = tpc.bad_messages = tpc.lost = 0
            tpc.transfer_s = []
        for link in self.links.values():
            if id(link) not in self._counted:
                self._counted[id(link)] = link
                self.link_downs += link.counters["links_down"]

    def crash(self) -> None:
        self.harvest()
        self.node = None
        self.tpc = None
        self.alive = False
        assert self.scope is not None
        self.scope.cancel()

    def outcome(self, wave: Wave) -> bool | None:
        node = self.node
        if wave in self.converged or (node is not None and wave in node.converged):
            return True
        if wave in self.aborted or (node is not None and node.decided.get(wave) is False):
            return False
        return None


LINK = LinkOptions(dead=0.3, hello=0.02)


def _busy(hosts: list[_Host]) -> str:
    """Which nodes are still in a wave, and where it stands."""
    out = []
    for h in hosts:
        m = h.node.machine if h.node else None
        if m is None:
            out.append(f"{h.name} down")
        elif m.wave is not None or m.deferred:
            st = m.wave
            where = (
                ""
                if st is None
                else (
                    f" {st.wave} parent {st.parent} waiting {sorted(st.waiting)} "
                    f"written {st.written} accepted {st.accepted}"
                )
            )
            out.append(f"{h.name} at {m.epoch}{where} deferred {sorted(m.deferred)}")
    return "; ".join(out) or "nobody"


def _ready(h: _Host) -> bool:
    """Every link end LIVE and, for bilateral, told its peer's epoch."""
    if not h.alive or not all(link.up for link in h.links.values()):
        return False
    return h.node is None or all(
        ls.up and ls.heard is not None for ls in h.node.machine.links.values()
    )


def _not_ready(hosts: list[_Host], names: list[str]) -> str:
    """Which link ends are not LIVE or have not heard their peer's epoch."""
    out = []
    for h in hosts:
        if not h.alive:
            out.append(f"{h.name} down")
            continue
        out += [f"{h.name}->{names[p]} not live" for p, lk in h.links.items() if not lk.up]
        if h.node is None:
            continue
        for peer, ls in h.node.machine.links.items():
            if not (ls.up and ls.heard is not None):
                live = h.node.links[peer].up
                out.append(f"{h.name}->{names[peer]} (live {live}, up {ls.up}, heard {ls.heard})")
    return ", ".join(out)


async def run_on_testbed(
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
) -> dict[str, object]:
    """Run `epochs` transitions of `algorithm`; with `crash_rate`, each transition crashes
    a random node with that probability at a random instant and restarts it 0.6-1 s later;
    with `app_period` (seconds), every node sends application transfers on every link.
    The random draws (initiator, crash, crash instant, probe instant) come in the same
    order for every algorithm, so one seed gives each the same faults."""
    names, topo = testbed_topology(tb)
    if any(tb.ns(n) is None for n in names):
        raise UsageError(f"testbed {tb.name!r} has real-NIC nodes; run oae node on each host")
    if initiator is not None and not 0 <= initiator < len(names):
        raise UsageError(
            f"--initiator {initiator}: testbed {tb.name!r} has nodes 0..{len(names) - 1}"
        )
    if epochs < 1:
        raise UsageError("--epochs must be >= 1")
    if algorithm not in ALGORITHMS:
        raise UsageError(f"--testbed runs {', '.join(ALGORITHMS)}, not {algorithm!r}")
    rng = random.Random(seed)
    clock_rng = random.Random(seed + 1)  # skews and write latencies: not shared with faults
    skews = [clock_rng.gauss(0.0, skew_us) * 1e-6 for _ in names]
    conv: list[float] = []
    paths: list[float] = []
    released: list[float] = []  # 2pc: start -> every node released (the simulated 2pc's)
    twopc = TwoPC()
    limit = transition_timeout(topo)
    net = TwoPCNet(topo, twopc, *default_timers(topo, 0.8 * limit))
    counts = {"committed": 0, "aborted": 0, "stuck": 0, "crashes": 0}
    mixed_states = probes = 0
    with tempfile.TemporaryDirectory(prefix="oae-converge-") as work:
        ends: dict[int, dict[int, tuple[str, str]]] = {i: {} for i in range(len(names))}
        for lk in tb.state["links"]:
            a, b = names.index(lk["a"]), names.index(lk["b"])
            ends[a][b] = (lk["if_a"], lk["name"])
            ends[b][a] = (lk["if_b"], lk["name"])
        hosts = [
            _Host(i, n, tb.ns(n) or "", ends[i], Path(work) / n, algorithm, app_period,
                  random.Random(seed * 1000 + i), net)
            for i, n in enumerate(names)
        ]  # fmt: skip
        async with trio.open_nursery() as nursery:
            for h in hosts:
                await nursery.start(h.serve)

            async def all_ready() -> None:
                # Polled, not awaited per node: a node may crash while we wait.
                with trio.move_on_after(limit):
                    while not all(_ready(h) for h in hosts):
                        await trio.sleep(0.01)
                    return
                raise LinkError("links not reconciled in time: " + _not_ready(hosts, names))

            async def crash(h: _Host, after: float, down: float) -> None:
                """`down` is drawn with the rest of the transition's faults, not here:
                a draw at crash time would interleave with the main loop's by timing, and
                the algorithms would no longer get the same faults from one seed."""
                await trio.sleep(after)
                if not h.alive:
                    return  # still down from an earlier crash: nothing to crash
                counts["crashes"] += 1
                h.crash()
                await trio.sleep(down)
                # A real crash frees the link ends at once; here their close may still be
                # under way (a pump thread finishing its writes): restart after it.
                await h.closed.wait()
                await nursery.start(h.serve)

            def probe_mixed() -> bool:
                """What every node would restore if all crashed now, by the algorithm's
                own rule: disagreeing epochs are a mixed-epoch state."""
                if algorithm == "bilateral":
                    recs = [FileStore(h.work / "epoch.json").load() for h in hosts]
                    return bilateral_restore_mixed(recs)
                if algorithm == "2pc":
                    stores = [load_store(h.work / "2pc.json") for h in hosts]
                    return len({e for e, _ in restore_2pc(stores).values()}) != 1
                return len({h.durable_epoch() for h in hosts}) != 1

            probes_pending = 0

            async def probe_at(after: float) -> None:
                nonlocal mixed_states, probes, probes_pending
                await trio.sleep(after)
                probes += 1
                mixed_states += probe_mixed()
                probes_pending -= 1

            def start_probe(after: float) -> None:
                nonlocal probes_pending
                probes_pending += 1
                nursery.start_soon(probe_at, after)

            async def fire(h: _Host, at: float, target: int, persist_s: float) -> None:
                await trio.sleep_until(at)
                if h.alive and h.nursery is not None:
                    h.nursery.start_soon(h.enter, target, persist_s)

            target = 0
            await all_ready()
            for k in range(epochs):
                if algorithm in ("bilateral", "2pc"):
                    await all_ready()
                who = initiator if initiator is not None else rng.randrange(len(hosts))
                if rng.random() < crash_rate:
                    nursery.start_soon(crash, hosts[rng.randrange(len(hosts))],
                                       rng.uniform(0.0, 0.2), rng.uniform(0.6, 1.0))  # fmt: skip
                probe_after = rng.uniform(0.0, 2 * LEAD)
                result: bool | None = None
                if algorithm == "bilateral":
                    host = hosts[who]
                    wave = None
                    with trio.move_on_after(limit):
                        # The initiator may still be settling the previous wave (an ABORT
                        # still spreading, a restart still waiting for a decision).
                        while host.node is None or (wave := await host.node.propose()) is None:
                            await trio.sleep(0.01)
                    if wave is None:
                        raise LinkError(f"node {names[who]} stayed busy: " + _busy(hosts))
                    t0 = trio.current_time()
                    start_probe(probe_after)
                    with trio.move_on_after(limit):
                        while (result := host.outcome(wave)) is None:
                            await trio.sleep(0.002)
                    elapsed = trio.current_time() - t0
                elif algorithm == "2pc":
                    began = False
                    with trio.move_on_after(limit):
                        # The coordinator may still hold the previous transaction (not
                        # released yet, or prepared and waiting for a decision).
                        while not began:
                            tpc = hosts[who].tpc
                            began = tpc is not None and tpc.call(partial(twopc.begin, net, who))
                            if not began:
                                await trio.sleep(0.01)
                    if began:
                        t0 = trio.current_time()
                        start_probe(probe_after)
                        done = twopc.tracker.done
                        with trio.move_on_after(limit):
                            # Polled as bilateral's outcome is: convergence is the
                            # coordinator released, i.e. it has every node's commit ACK.
                            while result is None:
                                if twopc.decision is not None and not twopc.decision[0]:
                                    result = False
                                elif who in done:
                                    result = True
                                else:
                                    await trio.sleep(0.002)
                        elapsed = trio.current_time() - t0
                        if result:
                            # Every node released (the next coordinator must be): bounded.
                            with trio.move_on_after(limit):
                                while len(done) < topo.n:
                                    await trio.sleep(0.002)
                            if len(done) == topo.n:
                                released.append(max(done.values()) - t0 * 1e6)
                else:
                    # Every node acts at its own clock's instant; none waits for another.
                    target += 1
                    t0 = trio.current_time()
                    start_probe(probe_after)
                    last = t0
                    for h, skew in zip(hosts, skews, strict=True):
                        at = max(t0, t0 + LEAD + skew + clock_rng.gauss(0.0, skew_us / 4) * 1e-6)
                        persist_s = 0.0
                        if algorithm == "snap-t":
                            persist_s = persist_us * 1e-6 * math.exp(clock_rng.gauss(0.0, 0.5))
                        last = max(last, at + persist_s)
                        nursery.start_soon(fire, h, at, target, persist_s)
                    await trio.sleep_until(max(last, t0 + 2 * LEAD) + 0.01)
                    # committed: every node has the target durable; otherwise someone
                    # missed it (it was down at its instant or lost its write).
                    result = all(h.durable_epoch() >= target for h in hosts)
                    elapsed = last - t0
                if result is None:
                    counts["stuck"] += 1
                    if progress:
                        progress(
                            f"[converge] testbed {tb.name} {algorithm} transition "
                            f"{k + 1}/{epochs}: stuck"
                        )
                    continue
                if result:
                    counts["committed"] += 1
                    conv.append(elapsed * 1e6)
                    if algorithm in ("bilateral", "2pc"):
                        # Bilateral: PROPOSE/ACCEPT and COMMIT/DONE; 2pc: PREPARE/YES and
                        # COMMIT/ACK relayed to and from the farthest node.
                        paths.append(2.0 * topo.eccentricity(who))
                else:
                    counts["aborted"] += 1
                probes += 1
                if len({h.durable_epoch() for h in hosts}) != 1:
                    mixed_states += 1
                if progress:
                    kind = "committed" if result else "aborted"
                    progress(
                        f"[converge] testbed {tb.name} {algorithm} transition "
                        f"{k + 1}/{epochs}: {kind}"
                    )
            await all_ready()
            while probes_pending:  # the last transition's probe may still be asleep
                await trio.sleep(0.01)
            for h in hosts:
                h.harvest()
            nursery.cancel_scope.cancel()
    xfer = [t * 1e6 for h in hosts for t in h.transfer_s]
    rtt = quantile(xfer, 0.5)
    sent = {k: t for h in hosts for k, t in h.control_sent.items()}
    delivery = quantile(
        [(t - sent[k]) * 1e6 for h in hosts for k, t in h.control_delivered.items() if k in sent],
        0.5,
    )
    median = quantile(conv, 0.5)
    path = quantile(paths, 0.5) if algorithm in ("bilateral", "2pc") else 0.0
    return {
        "algorithm": algorithm,
        "network": "testbed",
        "topology": tb.name,
        "nodes": topo.n,
        "links": len(topo.edges),
        "epochs": epochs,
        "seed": seed,
        **counts,
        "median_convergence_us": median,
        "p99_convergence_us": quantile(conv, 0.99),
        "median_all_links_us": quantile(released, 0.5),
        "critical_path_exchanges": path,
        "median_link_rtt_us": rtt,
        "convergence_ratio": None if not (median and path and rtt) else median / (path * rtt),
        # bilateral: one CONTROL message's submit to the peer link handing it over (its
        # durable delivery), and the ratio a wave of 2 x path such hops would have if each
        # cost only that delivery (nothing of the epoch layer): the link's own floor
        "median_control_delivery_us": delivery,
        "delivery_floor_ratio": None if not (delivery and rtt) else 2 * delivery / rtt,
        "mixed_epoch_frames": sum(h.mixed_frames for h in hosts),
        "app_frames": sum(h.app_received for h in hosts),
        "mixed_epoch_states": mixed_states,
        "probes": probes,
        "bad_messages": sum(h.bad_messages for h in hosts),
        # link-end down events (crashes, missed hellos under load) and, for 2pc, CONTROL
        # messages lost with a failed link (2pc re-sends none; its timeout aborts)
        "link_downs": sum(h.link_downs for h in hosts),
        "lost_control_messages": (
            sum(h.lost_control for h in hosts) if algorithm == "2pc" else None
        ),
    }
