"""`oae bench ait`: committed AIT transfers per second over one veth pair, with a window of
transfers in flight and beats of several records per exchange, against the one-way C
flood rate (sendmmsg -> recvmmsg, frames counted at the receiver) of the same link in the
same run.

The transfers are queued in bulk, the receiver's pump consumes deliveries itself (sink)
and the sender counts commits without waking Python per transfer (quiet): the figure is
what the link, the engine and the pump sustain, not the speed of a Python consumer.
Each repeat measures the flood and then the link; `ratio` is the median of per-repeat
ratios.
"""

from __future__ import annotations

import statistics
import sys
import time

import trio

from oae.bench.cli import BenchOptions
from oae.runtime import baseline
from oae.runtime.link import LinkOptions, open_link
from oae.runtime.sock import open_socket
from oae.testbed.kernel import VethPair, require_root, veth_pair

WINDOW = 1024
BEAT = 64
CHUNK = 16_384  # transfers queued at a time; the backlog is kept above this
PAYLOAD = b"oae-bench-ait-16"


def measure_flood(pair: VethPair, seconds: float) -> baseline.BaselineResult:
    a = open_socket(pair.if_a, pair.ns_a)
    b = open_socket(pair.if_b, pair.ns_b)
    try:
        return baseline.flood(a, b, seconds)
    finally:
        a.close()
        b.close()


async def steady_stats(
    pair: VethPair, seconds: float, window: int, beat: int
) -> tuple[dict, dict, float]:
    """The sender's stats before and after `seconds` of steady bulk transfer (window full,
    sink receiver, quiet sender) and the time between them: what `ait` and `sweep` measure."""
    tx = LinkOptions(window=window, beat=beat, idle=0.0, quiet=True)
    rx = LinkOptions(window=window, beat=beat, idle=0.0, sink=True)
    chunk = [PAYLOAD] * CHUNK
    async with (
        open_link(pair.if_a, pair.ns_a, options=tx) as a,
        open_link(pair.if_b, pair.ns_b, options=rx),
    ):
        with trio.fail_after(10):
            await a.wait_up()

        async def feed() -> None:
            while True:
                if a.backlog() < CHUNK:
                    a.submit(chunk)
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            await trio.sleep(min(0.3, seconds / 3))  # window full, steady state
            s0, t0 = a.stats(), time.perf_counter()
            await trio.sleep(seconds)
            s1, t1 = a.stats(), time.perf_counter()
            nursery.cancel_scope.cancel()
        return s0, s1, t1 - t0


async def _commits(pair: VethPair, seconds: float) -> tuple[float, float]:
    """(committed transfers/s, sender pump CPU seconds per commit)"""
    s0, s1, dt = await steady_stats(pair, seconds, WINDOW, BEAT)
    n = s1["committed"] - s0["committed"]
    return n / dt, (s1["pump"]["cpu_ns"] - s0["pump"]["cpu_ns"]) / 1e9 / max(n, 1)


def measure_commits(pair: VethPair, seconds: float) -> tuple[float, float]:
    return trio.run(_commits, pair, seconds)


def run(opts: BenchOptions) -> dict:
    require_root("oae bench ait")
    floods: list[float] = []
    flood_cpu: list[float] = []
    commits: list[float] = []
    link_cpu: list[float] = []
    with veth_pair() as pair:
        for i in range(opts.repeats):
            flood = measure_flood(pair, opts.seconds)
            floods.append(flood.rate)
            flood_cpu.append(flood.peer_cpu_s / max(flood.peer_sent, 1))
            rate, cpu = measure_commits(pair, opts.seconds)
            commits.append(rate)
            link_cpu.append(cpu)
            if opts.progress:
                line = (f"[bench] ait {i + 1}/{opts.repeats}: flood {floods[-1]:,.0f} "
                        f"frames/s, link {commits[-1]:,.0f} commits/s")  # fmt: skip
                print(line, file=sys.stderr, flush=True)
    return {
        "commits_per_s": statistics.median(commits),
        "baseline_pps": statistics.median(floods),
        "ratio": statistics.median(c / f for c, f in zip(commits, floods, strict=True)),
        "sender_cpu_us_per_commit": statistics.median(link_cpu) * 1e6,
        "flood_sender_cpu_us_per_frame": statistics.median(flood_cpu) * 1e6,
        "window": WINDOW,
        "beat": BEAT,
        "repeats": opts.repeats,
        "units": {
            "commits_per_s": "committed transfers/s at the sender (median)",
            "baseline_pps": "frames/s received, one-way C sendmmsg flood (median)",
            "ratio": "commits/flood frames, median of per-repeat ratios (target >= 0.6)",
            "sender_cpu_us_per_commit": "CPU us of the sender's pump thread per committed"
            " transfer (median); each commit costs the sender one frame sent",
            "flood_sender_cpu_us_per_frame": "CPU us of the flood's sending thread per frame"
            " sent (median): the kernel's cost of one frame, both veth ends",
            "window": "transfers in flight",
            "beat": "records per exchange",
        },
    }
