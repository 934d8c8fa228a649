"""Where a bilateral wave's time goes on a namespace testbed (root; one-off profiling).

    python scripts/profile_epoch_hops.py ring 8 10

Brings up a SHAPE/N testbed (direct veths), runs EPOCHS bilateral transitions initiated by
node 0 (oae.epoch.testbed_run, every node in this process, each an epoch runner), and
prints: the run's convergence figures; the epoch records the runners wrote (count per
transition, mean time: pwrite and fdatasync); and each kind of leg of the wave transfers,
one-way from the action at one node to the event at the peer node, from the runners'
CONTROL logs (EpochNode.harvest): the offer (matched by payload), the hold, the commit and
the report (matched by tid); so each includes the runner-to-pump and pump-to-runner
hand-overs, the wire and any durable store the pump makes first. Also the process's CPU
time (user + system) and that of the Trio thread (the rest is the runners' and the links'
pump threads).
"""

from __future__ import annotations

import os
import statistics as st
import sys
import time
from typing import Any

import trio

from oae.epoch import node as nodem
from oae.epoch.testbed_run import run_on_testbed
from oae.testbed import manager
from oae.testbed.topology import loads

LEGS: list[tuple[int, nodem.Leg]] = []  # (node, leg end)
RECORDS: dict[int, tuple[int, int]] = {}  # node -> records written, ns spent writing them
_harvest = nodem.EpochNode.harvest


def harvest(self: Any) -> Any:
    took, legs = _harvest(self)
    LEGS.extend((self.node_id, x) for x in legs)
    s = self.stats()
    RECORDS[self.node_id] = (s["persists"], s["persist_ns"])
    return took, legs


def leg_times() -> dict[str, list[float]]:
    """Each leg's one-way time: the acting node's entry to the peer's arriving one."""
    acted = {}
    for v, x in LEGS:
        if x.acted:
            key = x.payload if x.leg == "offer" else x.tid
            acted.setdefault((x.leg, v, x.neighbour, key), x.at)
    out: dict[str, list[float]] = {"offer": [], "hold": [], "commit": [], "report": []}
    for v, x in LEGS:
        if not x.acted:
            key = x.payload if x.leg == "offer" else x.tid
            t = acted.get((x.leg, x.neighbour, v, key))
            if t is not None:
                out[x.leg].append(x.at - t)
    return out


def main() -> None:
    nodem.EpochNode.harvest = harvest  # type: ignore[method-assign]
    shape, n, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    text = f'[topology]\nname = "prof{os.getpid()}"\nshape = "{shape}"\nnodes = {n}\n'

    with manager.running(loads(text, "<profile>")) as tb:
        t0, c0, th0 = time.time(), os.times(), time.thread_time()
        r = trio.run(run_on_testbed, tb, epochs, 1, 0)
        c1, th = os.times(), time.thread_time() - th0
        cpu = c1.user - c0.user + c1.system - c0.system
        print(
            f"wall {time.time() - t0:.1f} s, CPU {cpu:.1f} s (user {c1.user - c0.user:.1f}), "
            f"of which the Trio thread {th:.1f} s"
        )
    for k in ("committed", "median_convergence_us", "critical_path_exchanges"):
        print(k, r.get(k))

    def ms(xs: list[float]) -> str:
        if not xs:
            return "n=0"
        p90 = sorted(xs)[int(0.9 * (len(xs) - 1))]
        return (
            f"n={len(xs)} median {st.median(xs) * 1e3:.2f} ms, mean {st.mean(xs) * 1e3:.2f}, "
            f"p90 {p90 * 1e3:.2f}"
        )

    count = sum(c for c, _ in RECORDS.values())
    spent = sum(ns for _, ns in RECORDS.values())
    print(f"epoch records written: {count / epochs:.0f} per transition, "
          f"{spent / max(count, 1) / 1e3:.0f} µs each (pwrite + fdatasync)")  # fmt: skip
    for kind, xs in leg_times().items():
        print(f"{kind} leg (action -> peer node's event)", ms(xs))


if __name__ == "__main__":
    main()
