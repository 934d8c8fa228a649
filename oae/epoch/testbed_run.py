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
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from oae.epoch.converge import quantile
from oae.epoch.node import EpochNode, open_epoch_node
from oae.epoch.sim import Topology
from oae.errors import UsageError
from oae.runtime.link import LinkOptions, open_link
from oae.testbed.manager import Testbed

TRANSITION_TIMEOUT = 30.0


def testbed_topology(tb: Testbed) -> tuple[list[str], Topology]:
    """Node names (id = index) and the graph of a running testbed."""
    names = sorted(tb.state["nodes"])
    index = {n: i for i, n in enumerate(names)}
    edges = tuple((index[lk["a"]], index[lk["b"]]) for lk in tb.state["links"])
    return names, Topology(tb.name, len(names), edges)


async def run_on_testbed(
    tb: Testbed,
    epochs: int,
    seed: int = 1,
    initiator: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
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
    opts = LinkOptions(dead=0.5, hello=0.02)
    conv: list[float] = []
    paths: list[float] = []
    counts = {"committed": 0, "aborted": 0, "stuck": 0}
    mixed_states = 0
    with tempfile.TemporaryDirectory(prefix="oae-converge-") as work:
        async with AsyncExitStack() as stack:
            links: dict[int, dict[int, Any]] = {i: {} for i in range(len(names))}
            for lk in tb.state["links"]:
                a, b = names.index(lk["a"]), names.index(lk["b"])
                for me, peer, end in ((a, b, "a"), (b, a, "b")):
                    sdir = Path(work) / names[me] / f"link-{lk['name']}"
                    links[me][peer] = await stack.enter_async_context(
                        open_link(lk[f"if_{end}"], tb.ns(names[me]), state_dir=sdir, options=opts)
                    )
            nodes: list[EpochNode] = []
            for i in range(len(names)):
                nodes.append(
                    await stack.enter_async_context(
                        open_epoch_node(i, links[i], Path(work) / names[i])
                    )
                )
            with trio.fail_after(TRANSITION_TIMEOUT):
                for node in nodes:
                    await node.wait_ready()
            for k in range(epochs):
                who = initiator if initiator is not None else rng.randrange(len(nodes))
                node = nodes[who]
                t0 = trio.current_time()
                with trio.move_on_after(TRANSITION_TIMEOUT) as scope:
                    await node.wait_ready()
                    wave = await node.propose()
                    if wave is None:
                        raise UsageError(f"node {names[who]} is busy with another transition")
                    committed = await node.wait_outcome(wave)
                if scope.cancelled_caught:
                    counts["stuck"] += 1
                    continue
                if committed:
                    counts["committed"] += 1
                    conv.append((trio.current_time() - t0) * 1e6)
                    paths.append(2.0 * topo.eccentricity(who))
                else:
                    counts["aborted"] += 1
                epochs_now = {n.store.load().epoch for n in nodes}
                if len(epochs_now) != 1:
                    mixed_states += 1
                if progress:
                    kind = "committed" if committed else "aborted"
                    progress(f"[converge] testbed {tb.name} transition {k + 1}/{epochs}: {kind}")
            xfer = [t * 1e6 for n in nodes for t in n.transfer_s]
            mixed_frames = sum(n.machine.mixed_frames for n in nodes)
            bad = sum(n.machine.bad_messages for n in nodes)
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
        "mixed_epoch_frames": mixed_frames,
        "mixed_epoch_states": mixed_states,
        "bad_messages": bad,
    }


def run_sync(tb: Testbed, epochs: int, seed: int, initiator: int | None) -> dict[str, object]:
    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    return trio.run(run_on_testbed, tb, epochs, seed, initiator, progress)
