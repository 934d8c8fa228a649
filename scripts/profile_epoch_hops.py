"""Where a bilateral wave's time goes on a namespace testbed (root; one-off profiling).

    python scripts/profile_epoch_hops.py ring 8 10

Brings up a SHAPE/N testbed (direct veths), runs EPOCHS bilateral transitions initiated by
node 0 (oae.epoch.testbed_run) with the epoch layer instrumented by monkeypatching, and
prints: the run's convergence figures; the epoch FileStore writes (count, median time);
the CONTROL transfer latency (send to outcome); the one-way delivery time of a CONTROL
message (the machine's Send action to the peer machine's receive); of which the adapter
queuing (Send action to Link.submit) and, approximately (matched by payload), submit to
the peer's receive.
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
SENT: dict[tuple[int, int, bytes], float] = {}
QT: dict[tuple[int, bytes], float] = {}
LASTSUB: dict[bytes, float] = {}

_write = durable.FileStore.write
_do = nodem.EpochNode._do
_submit = linkm.Link.submit
_receive = mm.EpochMachine.receive
_outcome = nodem.EpochNode._control_outcome


def write(self, rec):  # type: ignore[no-untyped-def]
    t = pc()
    _write(self, rec)
    WRITES.append(pc() - t)


def do(self, actions):  # type: ignore[no-untyped-def]
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
        LASTSUB[payloads[0]] = now
    return _submit(self, payloads, control)


def receive(self, link, payload):  # type: ignore[no-untyped-def]
    t = SENT.pop((link, self.node_id, payload), None)
    if t is not None:
        ONEWAY.append(pc() - t)
    u = LASTSUB.get(payload)
    if u is not None:
        SUBRECV.append(pc() - u)
    return _receive(self, link, payload)


async def outcome(self, n, payload, batch):  # type: ignore[no-untyped-def]
    await _outcome(self, n, payload, batch)
    TRANSFERS.append(self.transfer_s[-1])


def main() -> None:
    durable.FileStore.write = write  # type: ignore[method-assign]
    nodem.EpochNode._do = do  # type: ignore[method-assign]
    linkm.Link.submit = submit  # type: ignore[method-assign]
    mm.EpochMachine.receive = receive  # type: ignore[method-assign]
    nodem.EpochNode._control_outcome = outcome  # type: ignore[method-assign]
    shape, n, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    text = f'[topology]\nname = "prof{os.getpid()}"\nshape = "{shape}"\nnodes = {n}\n'
    with manager.running(loads(text, "<profile>")) as tb:
        t0 = time.time()
        r = trio.run(run_on_testbed, tb, epochs, 1, 0)
        print(f"wall {time.time() - t0:.1f} s")
    for k in (
        "committed",
        "median_convergence_us",
        "critical_path_exchanges",
        "median_link_rtt_us",
        "convergence_ratio",
    ):
        print(k, r.get(k))

    def ms(xs: list[float]) -> str:
        return f"n={len(xs)} median {st.median(xs) * 1e3:.2f} ms" if xs else "n=0"

    print("epoch FileStore writes", ms(WRITES), f"({len(WRITES) / epochs:.0f} per transition)")
    print("CONTROL transfer (send -> outcome)", ms(TRANSFERS))
    print("one-way (Send action -> peer receive)", ms(ONEWAY))
    print("  queuing (Send action -> Link.submit)", ms(QUEUE))
    print("  submit -> peer receive (approx.)", ms(SUBRECV))


if __name__ == "__main__":
    main()
