"""`oae bench testbed`: testbed build/teardown time and the impairing bridge's forwarding
rate (needs root).

Figures: `up` and `down` of a 64-node ring (median over min(repeats, 3) rounds), and
frames per second through an unimpaired bridged link against a direct veth measured in
the same run (the baseline), as a ratio. A Python sender offers 64-byte frames in bursts
for `seconds`; a frame counts when the receiving node's socket gets it.
"""

from __future__ import annotations

import os
import statistics
import time

from oae.bench.cli import BenchOptions
from oae.errors import NeedsRootError
from oae.testbed import manager, probe
from oae.testbed.topology import loads

RING = '[topology]\nname = "benchring"\nshape = "ring"\nnodes = 64\n'
PAIR = '[topology]\nname = "{name}"\nshape = "pair"\nbridge = "{bridge}"\n'
BURST = 64


def _forward_rate(bridge: str, seconds: float) -> float:
    """Frames/s received over a pair's link while a sender offers bursts for `seconds`."""
    topo = loads(PAIR.format(name=f"bench_{bridge}", bridge=bridge), "bench.toml")
    with manager.running(topo) as tb, probe.link_sockets(tb, "n0-n1") as (sa, sb):
        sb.setblocking(False)
        frame = probe.frame(b"oae-bench")
        got = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for _ in range(BURST):
                sa.send(frame)
            while True:
                try:
                    sb.recv(2048)
                except BlockingIOError:
                    break
                got += 1
        end = time.monotonic()
        sb.settimeout(0.2)
        while True:  # what is still in flight arrived within the measured interval's load
            try:
                sb.recv(2048)
            except TimeoutError:
                break
            got += 1
            end = time.monotonic()
    return got / (end - start)


def run(opts: BenchOptions) -> dict:
    if os.geteuid() != 0:
        raise NeedsRootError("oae bench testbed needs root (namespaces, veth)")
    ups, downs = [], []
    for _ in range(min(opts.repeats, 3)):
        t0 = time.monotonic()
        tb = manager.up(loads(RING, "ring64.toml"))
        t1 = time.monotonic()
        manager.down(tb.name)
        ups.append(t1 - t0)
        downs.append(time.monotonic() - t1)
    direct = statistics.median(_forward_rate("impaired", opts.seconds) for _ in range(3))
    bridged = statistics.median(_forward_rate("all", opts.seconds) for _ in range(3))
    return {
        "ring64_up": statistics.median(ups),
        "ring64_down": statistics.median(downs),
        "bridge_frames_per_s": bridged,
        "direct_veth_frames_per_s": direct,
        "bridge_vs_direct_ratio": bridged / direct,
        "units": {
            "ring64_up": "s",
            "ring64_down": "s",
            "bridge_frames_per_s": "frames/s",
            "direct_veth_frames_per_s": "frames/s",
            "bridge_vs_direct_ratio": "x",
        },
    }
