"""`oae converge --testbed NAME`: the bilateral protocol on a namespace testbed, on real
frames. One Trio process opens every link end of the testbed (each in its node's
namespace, with its own state dir) and runs one EpochNode per node over them; loss,
delay and reordering are whatever the testbed's links impose (its impairing bridge).

Reported like the simulated runs, with `"network": "testbed"`: convergence is wall-clock
time from the proposal to the initiator's Conv(P, e+1); the link exchange time is the
median CONTROL transfer latency (send to outcome) measured in the same run; mixed-epoch
frames are what the epoch machines refused; a mixed-epoch state is a transition after
which the nodes' durable records disagree on the committed epoch.
"""

from __future__ import annotations

import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from oae.epoch.converge import quantile
from oae.epoch.durable import FileStore
from oae.epoch.messages import Wave
from oae.epoch.node import EpochNode, open_epoch_node
from oae.epoch.sim import Topology
from oae.errors import OaeError, UsageError
from oae.runtime.link import LinkError, LinkOptions, open_link
from oae.testbed.manager import Testbed

TRANSITION_TIMEOUT = 30.0


def testbed_topology(tb: Testbed) -> tuple[list[str], Topology]:
    """Node names (id = index) and the graph of a running testbed."""
    names = sorted(tb.state["nodes"])
    index = {n: i for i, n in enumerate(names)}
    edges = tuple((index[lk["a"]], index[lk["b"]]) for lk in tb.state["links"])
    return names, Topology(tb.name, len(names), edges)


class _Host:
    """One node of the testbed in this process: its link ends and its EpochNode, which a
    crash tears down together (as a process crash would) and a restart reopens from the
    same state dirs."""

    def __init__(self, i: int, name: str, ns: str, ends: dict[int, tuple[str, str]], work: Path):
        self.i, self.name, self.ns, self.ends, self.work = i, name, ns, ends, work
        self.node: EpochNode | None = None
        self.scope: trio.CancelScope | None = None
        self.converged: set[Wave] = set()
        self.aborted: set[Wave] = set()
        self.mixed_frames = self.bad_messages = 0
        self.transfer_s: list[float] = []

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
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
                self.node = await stack.enter_async_context(
                    open_epoch_node(self.i, links, self.work)
                )
                task_status.started()
                await trio.sleep_forever()

    def harvest(self) -> None:
        """Keep what the current incarnation learned and counted."""
        node = self.node
        if node is not None:
            self.converged |= node.converged
            self.aborted |= {w for w, ok in node.decided.items() if not ok}
            self.mixed_frames += node.machine.mixed_frames
            self.bad_messages += node.machine.bad_messages
            self.transfer_s += node.transfer_s
            node.transfer_s = []

    def crash(self) -> None:
        self.harvest()
        self.node = None
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


def _not_ready(hosts: list[_Host], names: list[str]) -> str:
    """Which link ends are not LIVE or have not heard their peer's epoch."""
    out = []
    for h in hosts:
        if h.node is None:
            out.append(f"{h.name} down")
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
) -> dict[str, object]:
    """Run `epochs` transitions; with `crash_rate`, each transition crashes a random node
    with that probability at a random instant and restarts it 0.6-1 s later."""
    names, topo = testbed_topology(tb)
    if any(tb.ns(n) is None for n in names):
        raise UsageError(f"testbed {tb.name!r} has real-NIC nodes; run oae node on each host")
    if initiator is not None and not 0 <= initiator < len(names):
        raise UsageError(
            f"--initiator {initiator}: testbed {tb.name!r} has nodes 0..{len(names) - 1}"
        )
    if epochs < 1:
        raise UsageError("--epochs must be >= 1")
    rng = random.Random(seed)
    conv: list[float] = []
    paths: list[float] = []
    counts = {"committed": 0, "aborted": 0, "stuck": 0, "crashes": 0}
    mixed_states = 0
    with tempfile.TemporaryDirectory(prefix="oae-converge-") as work:
        ends: dict[int, dict[int, tuple[str, str]]] = {i: {} for i in range(len(names))}
        for lk in tb.state["links"]:
            a, b = names.index(lk["a"]), names.index(lk["b"])
            ends[a][b] = (lk["if_a"], lk["name"])
            ends[b][a] = (lk["if_b"], lk["name"])
        hosts = [_Host(i, n, tb.ns(n) or "", ends[i], Path(work) / n) for i, n in enumerate(names)]
        async with trio.open_nursery() as nursery:
            for h in hosts:
                await nursery.start(h.serve)

            async def all_ready() -> None:
                with trio.move_on_after(TRANSITION_TIMEOUT):
                    while any(h.node is None for h in hosts):
                        await trio.sleep(0.01)
                    for h in hosts:
                        assert h.node is not None
                        await h.node.wait_ready()
                    return
                raise LinkError("links not reconciled in time: " + _not_ready(hosts, names))

            async def crash(h: _Host, after: float) -> None:
                await trio.sleep(after)
                if h.node is None:
                    return
                counts["crashes"] += 1
                h.crash()
                await trio.sleep(rng.uniform(0.6, 1.0))
                await nursery.start(h.serve)

            for k in range(epochs):
                await all_ready()
                who = initiator if initiator is not None else rng.randrange(len(hosts))
                if rng.random() < crash_rate:
                    nursery.start_soon(crash, hosts[rng.randrange(len(hosts))],
                                       rng.uniform(0.0, 0.2))  # fmt: skip
                host = hosts[who]
                wave = None
                with trio.move_on_after(TRANSITION_TIMEOUT):
                    # The initiator may still be settling the previous wave (an ABORT
                    # still spreading, a restart still waiting for a decision).
                    while host.node is None or (wave := await host.node.propose()) is None:
                        await trio.sleep(0.01)
                if wave is None:
                    raise LinkError(f"node {names[who]} stayed busy: " + _busy(hosts))
                t0 = trio.current_time()
                result = None
                with trio.move_on_after(TRANSITION_TIMEOUT):
                    while (result := host.outcome(wave)) is None:
                        await trio.sleep(0.002)
                if result is None:
                    counts["stuck"] += 1
                    continue
                if result:
                    counts["committed"] += 1
                    conv.append((trio.current_time() - t0) * 1e6)
                    paths.append(2.0 * topo.eccentricity(who))
                else:
                    counts["aborted"] += 1
                if len({FileStore(h.work / "epoch.json").load().epoch for h in hosts}) != 1:
                    mixed_states += 1
                if progress:
                    kind = "committed" if result else "aborted"
                    progress(f"[converge] testbed {tb.name} transition {k + 1}/{epochs}: {kind}")
            await all_ready()
            for h in hosts:
                h.harvest()
            nursery.cancel_scope.cancel()
    xfer = [t * 1e6 for h in hosts for t in h.transfer_s]
    rtt = quantile(xfer, 0.5)
    median = quantile(conv, 0.5)
    path = quantile(paths, 0.5)
    return {
        "algorithm": "bilateral",
        "network": "testbed",
        "topology": tb.name,
        "nodes": topo.n,
        "links": len(topo.edges),
        "epochs": epochs,
        "seed": seed,
        **counts,
        "median_convergence_us": median,
        "p99_convergence_us": quantile(conv, 0.99),
        "critical_path_exchanges": path,
        "median_link_rtt_us": rtt,
        "convergence_ratio": None if not (median and path and rtt) else median / (path * rtt),
        "mixed_epoch_frames": sum(h.mixed_frames for h in hosts),
        "mixed_epoch_states": mixed_states,
        "bad_messages": sum(h.bad_messages for h in hosts),
    }


def run_sync(
    tb: Testbed, epochs: int, seed: int, initiator: int | None, crash_rate: float
) -> dict[str, object]:
    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        return trio.run(run_on_testbed, tb, epochs, seed, initiator, progress, crash_rate)
    except BaseExceptionGroup as group:
        # One error from inside the nursery: let the CLI print it as one line.
        leaves = list(_leaves(group))
        if len(leaves) == 1 and isinstance(leaves[0], OaeError):
            raise leaves[0] from None
        raise


def _leaves(group: BaseException) -> Iterator[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        for exc in group.exceptions:
            yield from _leaves(exc)
    else:
        yield group
