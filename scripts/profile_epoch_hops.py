"""Where a bilateral wave's time goes on a namespace testbed (root; one-off profiling).

    python scripts/profile_epoch_hops.py ring 8 10

Brings up a SHAPE/N testbed (direct veths), runs EPOCHS bilateral transitions initiated by
node 0 (oae.epoch.testbed_run, every node in this process) with the epoch layer
instrumented by monkeypatching, and prints: the run's convergence figures; the epoch
FileStore writes (count, median time); and each kind of leg of the wave transfers, one-way
from the action at one machine to the event at the peer machine: the offer (Offer action
to OFFERED, matched by payload), the hold (Hold to REFLECTED), the commit (Commit to
DELIVERED) and the report (Report to the COMMITTED outcome), matched by tid; so each
includes the C pump, the wire, the durable store at the end that sends it, and the Trio
hand-over at the peer. Also the process's CPU time (user + system) and that of the Trio
thread (the rest is the links' pump threads).
"""

from __future__ import annotations

import os
import statistics as st
import sys
import time
from typing import Any

import trio

from oae.epoch import durable
from oae.epoch import machine as mm
from oae.epoch import node as nodem
from oae.epoch.testbed_run import run_on_testbed
from oae.testbed import manager
from oae.testbed.topology import loads

pc = time.perf_counter
WRITES: list[float] = []
# (kind, from node, to node, offer payload or tid) -> instant of the action
ACTED: dict[tuple[str, int, int, object], float] = {}
LEGS: dict[str, list[float]] = {"offer": [], "hold": [], "commit": [], "report": []}

_write = durable.FileStore.write
_do = nodem.EpochNode._do
_gate = nodem.EpochNode._gate
_delivered = nodem.EpochNode._delivered
_outcome = mm.EpochMachine.outcome


def write(self: Any, rec: Any) -> None:
    t = pc()
    _write(self, rec)
    WRITES.append(pc() - t)


def do(self: Any, actions: list[Any]) -> None:
    me, now = self.machine.node_id, pc()
    for a in actions:
        if isinstance(a, mm.Offer) and a.gated:
            ACTED[("offer", me, a.link, a.payload)] = now
        elif isinstance(a, mm.Hold | mm.Commit | mm.Report):
            kind = {mm.Hold: "hold", mm.Commit: "commit", mm.Report: "report"}[type(a)]
            ACTED[(kind, me, a.link, a.tid)] = now
    _do(self, actions)


def arrived(kind: str, frm: int, to: int, key: object) -> None:
    t = ACTED.pop((kind, frm, to, key), None)
    if t is not None:
        LEGS[kind].append(pc() - t)


def gate(self: Any, n: int, ev: Any) -> None:
    me = self.machine.node_id
    if isinstance(ev, nodem.Offered):
        arrived("offer", n, me, ev.payload)
    else:
        arrived("hold", n, me, ev.tid)
    _gate(self, n, ev)


def delivered(self: Any, n: int, msg: Any) -> None:
    if msg.control:
        arrived("commit", n, self.machine.node_id, msg.tid)
    _delivered(self, n, msg)


def outcome(self: Any, link: int, tid: int, committed: bool, *rest: Any) -> list[Any]:
    if committed:
        arrived("report", link, self.node_id, tid)
    return _outcome(self, link, tid, committed, *rest)


def main() -> None:
    durable.FileStore.write = write  # type: ignore[method-assign]
    nodem.EpochNode._do = do  # type: ignore[method-assign]
    nodem.EpochNode._gate = gate  # type: ignore[method-assign]
    nodem.EpochNode._delivered = delivered  # type: ignore[method-assign]
    mm.EpochMachine.outcome = outcome  # type: ignore[method-assign]
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

    print("epoch FileStore writes", ms(WRITES), f"({len(WRITES) / epochs:.0f} per transition)")
    for kind, xs in LEGS.items():
        print(f"{kind} leg (action -> peer machine's event)", ms(xs))


if __name__ == "__main__":
    main()
