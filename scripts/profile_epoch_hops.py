"""Where a bilateral wave's time goes on a namespace testbed (root; one-off profiling).

    python scripts/profile_epoch_hops.py ring 8 10

Brings up a SHAPE/N testbed (direct veths), runs EPOCHS bilateral transitions initiated by
node 0 (oae.epoch.testbed_run) with the epoch layer instrumented by monkeypatching, and
prints: the run's convergence figures; the epoch FileStore writes (count, median time);
the CONTROL transfer latency (send to outcome); the one-way delivery time of a CONTROL
message (the machine's Send action to the peer machine's receive); of which the adapter
queuing (Send action to Link.submit: the epoch records written before the Send in the same
step), submit to the peer link's event task taking the DELIVERED event (the C pump, the
wire, the peer's durable link write, its event fd and the Trio wake-up), and that event
to the peer machine's receive (the peer's receiver task getting scheduled). Messages are
matched by (sender, receiver, payload). Also the process's CPU time (user + system) and
that of the Trio thread (the rest is the links' pump threads).
"""

from __future__ import annotations

import os
import statistics as st
import sys
import time

import trio

from oae.epoch import durable
from oae.epoch import machine as mm
from oae.epoch import node as nodem
from oae.epoch.testbed_run import run_on_testbed
from oae.runtime import link as linkm
from oae.testbed import manager
from oae.testbed.topology import loads

pc = time.perf_counter
WRITES: list[float] = []
TRANSFERS: list[float] = []
ONEWAY: list[float] = []
QUEUE: list[float] = []
SUBRECV: list[float] = []
DISPRECV: list[float] = []
SENT: dict[tuple[int, int, bytes], float] = {}
QT: dict[tuple[int, bytes], float] = {}
SUBT: dict[tuple[int, bytes], float] = {}  # (id of the sending Link, payload)
DISP: dict[tuple[int, bytes], float] = {}  # (id of the receiving Link, payload)
ENDS: dict[tuple[int, int], int] = {}  # (node, peer) -> id of the node's Link to the peer
NODES: dict[int, nodem.EpochNode] = {}  # id of a machine -> its EpochNode

_write = durable.FileStore.write
_do = nodem.EpochNode._do
_submit = linkm.Link.submit
_receive = mm.EpochMachine.receive
_on_event = linkm.Link._on_event
_outcome = nodem.EpochNode._control_outcome


def write(self, rec):  # type: ignore[no-untyped-def]
    t = pc()
    _write(self, rec)
    WRITES.append(pc() - t)


def do(self, actions):  # type: ignore[no-untyped-def]
    if id(self.machine) not in NODES:
        NODES[id(self.machine)] = self
        for peer, lk in self.links.items():
            ENDS[(self.machine.node_id, peer)] = id(lk)
    for a in actions:
        if isinstance(a, mm.Send):
            SENT[(self.machine.node_id, a.link, a.payload)] = pc()
            QT[(id(self.links[a.link]), a.payload)] = pc()
    _do(self, actions)


def submit(self, payloads, control=False):  # type: ignore[no-untyped-def]
    if control:
        now = pc()
        q = QT.pop((id(self), payloads[0]), None)
        if q is not None:
            QUEUE.append(now - q)
        SUBT[(id(self), payloads[0])] = now
    return _submit(self, payloads, control)


def on_event(self, pe, now):  # type: ignore[no-untyped-def]
    ev = pe.ev
    if ev.type == linkm.lib.OAE_EV_DELIVERED and ev.data_flags & linkm.lib.OAE_F_CONTROL:
        payload = bytes(linkm.ffi.buffer(ev.payload, ev.length))
        DISP[(id(self), payload)] = pc()
    return _on_event(self, pe, now)


def receive(self, link, payload):  # type: ignore[no-untyped-def]
    t = SENT.pop((link, self.node_id, payload), None)
    if t is not None:
        ONEWAY.append(pc() - t)
    node = NODES.get(id(self))
    if node is not None:
        lk = node.links[link]
        d = DISP.pop((id(lk), payload), None)
        if d is not None:
            DISPRECV.append(pc() - d)
        u = SUBT.pop((ENDS.get((link, self.node_id), 0), payload), None)
        if u is not None and d is not None:
            SUBRECV.append(d - u)
    return _receive(self, link, payload)


async def outcome(self, *args):  # type: ignore[no-untyped-def]
    await _outcome(self, *args)
    TRANSFERS.append(self.transfer_s[-1])


def main() -> None:
    durable.FileStore.write = write  # type: ignore[method-assign]
    nodem.EpochNode._do = do  # type: ignore[method-assign]
    linkm.Link.submit = submit  # type: ignore[method-assign]
    mm.EpochMachine.receive = receive  # type: ignore[method-assign]
    linkm.Link._on_event = on_event  # type: ignore[method-assign]
    nodem.EpochNode._control_outcome = outcome  # type: ignore[method-assign]
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
    for k in (
        "committed",
        "median_convergence_us",
        "critical_path_exchanges",
        "median_link_rtt_us",
        "convergence_ratio",
    ):
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
    print("CONTROL transfer (send -> outcome)", ms(TRANSFERS))
    print("one-way (Send action -> peer receive)", ms(ONEWAY))
    print("  queuing (Send action -> Link.submit)", ms(QUEUE))
    print("  submit -> peer link's DELIVERED event", ms(SUBRECV))
    print("  peer link's DELIVERED event -> peer machine's receive", ms(DISPRECV))


if __name__ == "__main__":
    main()
