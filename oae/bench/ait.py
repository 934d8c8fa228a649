"""`oae bench ait`: committed AIT transfers per second over one veth pair, with a window of
transfers in flight and beats of several records per exchange, against the one-way C
flood rate (frames counted at the receiver) of the same link in the same run.

Two send paths, each against the flood that uses it: the pumps' default (sendmmsg for a
beat) against the sendmmsg flood (`commits_per_s`, `baseline_pps`, `ratio`: the figures
the targets name), and the pumps with `tx_ring` against a flood through a PACKET_TX_RING
(`ring_*`). The CPU each end's thread spends per commit shows where the work goes.

The transfers are queued in bulk, the receiver's pump consumes deliveries itself (sink)
and the sender counts commits without waking Python per transfer (quiet): the figure is
what the link, the engine and the pump sustain, not the speed of a Python consumer.
Each repeat measures both floods and both links; ratios are medians of per-repeat ratios.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

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


def measure_flood(pair: VethPair, seconds: float, ring: bool = False) -> baseline.BaselineResult:
    a = open_socket(pair.if_a, pair.ns_a)
    b = open_socket(pair.if_b, pair.ns_b)
    try:
        return baseline.flood(a, b, seconds, ring)
    finally:
        a.close()
        b.close()


@dataclass(frozen=True)
class Steady:
    """Both ends' stats before and after `seconds` of steady bulk transfer."""

    tx0: dict
    tx1: dict
    rx0: dict
    rx1: dict
    seconds: float

    def delta(self, key: str) -> int:
        return self.tx1[key] - self.tx0[key]

    @property
    def commits_per_s(self) -> float:
        return self.delta("committed") / self.seconds

    def cpu_per_commit(self, tx: bool) -> float:
        """CPU seconds of one end's pump thread per committed transfer."""
        s0, s1 = (self.tx0, self.tx1) if tx else (self.rx0, self.rx1)
        return (s1["pump"]["cpu_ns"] - s0["pump"]["cpu_ns"]) / 1e9 / max(self.delta("committed"), 1)


async def steady_stats(
    pair: VethPair, seconds: float, window: int, beat: int, tx_ring: bool = False
) -> Steady:
    """Stats of both ends around `seconds` of steady bulk transfer (window full, sink
    receiver, quiet sender): what `ait` and `sweep` measure."""
    tx = LinkOptions(window=window, beat=beat, idle=0.0, quiet=True, tx_ring=tx_ring)
    rx = LinkOptions(window=window, beat=beat, idle=0.0, sink=True, tx_ring=tx_ring)
    chunk = [PAYLOAD] * CHUNK
    async with (
        open_link(pair.if_a, pair.ns_a, options=tx) as a,
        open_link(pair.if_b, pair.ns_b, options=rx) as b,
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
            tx0, rx0, t0 = a.stats(), b.stats(), time.perf_counter()
            await trio.sleep(seconds)
            tx1, rx1, t1 = a.stats(), b.stats(), time.perf_counter()
            nursery.cancel_scope.cancel()
        return Steady(tx0, tx1, rx0, rx1, t1 - t0)


def measure_commits(pair: VethPair, seconds: float, tx_ring: bool = False) -> Steady:
    return trio.run(steady_stats, pair, seconds, WINDOW, BEAT, tx_ring)


def _path(floods: list[baseline.BaselineResult], links: list[Steady], prefix: str) -> dict:
    """The figures of one send path: the link's commits/s and CPU against its flood."""
    commits = [s.commits_per_s for s in links]
    return {
        f"{prefix}commits_per_s": statistics.median(commits),
        f"{prefix}baseline_pps": statistics.median(f.rate for f in floods),
        f"{prefix}ratio": statistics.median(
            c / f.rate for c, f in zip(commits, floods, strict=True)
        ),
        f"{prefix}sender_cpu_us_per_commit": statistics.median(
            s.cpu_per_commit(True) for s in links
        )
        * 1e6,
        f"{prefix}receiver_cpu_us_per_commit": statistics.median(
            s.cpu_per_commit(False) for s in links
        )
        * 1e6,
        f"{prefix}flood_sender_cpu_us_per_frame": statistics.median(
            f.peer_cpu_s / max(f.peer_sent, 1) for f in floods
        )
        * 1e6,
    }


def run(opts: BenchOptions) -> dict:
    require_root("oae bench ait")
    floods: list[baseline.BaselineResult] = []
    links: list[Steady] = []
    ring_floods: list[baseline.BaselineResult] = []
    ring_links: list[Steady] = []
    with veth_pair() as pair:
        for i in range(opts.repeats):
            floods.append(measure_flood(pair, opts.seconds))
            links.append(measure_commits(pair, opts.seconds))
            ring_floods.append(measure_flood(pair, opts.seconds, ring=True))
            ring_links.append(measure_commits(pair, opts.seconds, tx_ring=True))
            if opts.progress:
                line = (f"[bench] ait {i + 1}/{opts.repeats}: flood {floods[-1].rate:,.0f} "
                        f"frames/s, link {links[-1].commits_per_s:,.0f} commits/s; TX ring: "
                        f"flood {ring_floods[-1].rate:,.0f}, link "
                        f"{ring_links[-1].commits_per_s:,.0f}")  # fmt: skip
                print(line, file=sys.stderr, flush=True)
    used = all(s.tx1["pump"]["tx_ring"] for s in ring_links)
    return {
        **_path(floods, links, ""),
        **_path(ring_floods, ring_links, "ring_"),
        "tx_ring": int(used),
        "window": WINDOW,
        "beat": BEAT,
        "repeats": opts.repeats,
        "units": {
            "commits_per_s": "committed transfers/s at the sender (median)",
            "baseline_pps": "frames/s received, one-way C sendmmsg flood (median)",
            "ratio": "commits/flood frames, median of per-repeat ratios (target >= 0.6)",
            "sender_cpu_us_per_commit": "CPU us of the sender's pump thread per committed"
            " transfer (median); each commit costs the sender one frame sent",
            "receiver_cpu_us_per_commit": "CPU us of the receiver's pump thread per committed"
            " transfer (median)",
            "flood_sender_cpu_us_per_frame": "CPU us of the flood's sending thread per frame"
            " sent (median): the kernel's cost of one frame, both veth ends",
            "ring_commits_per_s": "committed transfers/s, pumps sending through a"
            " PACKET_TX_RING (median)",
            "ring_baseline_pps": "frames/s received, one-way C flood through a PACKET_TX_RING"
            " (median)",
            "ring_ratio": "ring_commits/ring flood frames, median of per-repeat ratios",
            "ring_sender_cpu_us_per_commit": "as sender_cpu_us_per_commit, TX ring",
            "ring_receiver_cpu_us_per_commit": "as receiver_cpu_us_per_commit, TX ring",
            "ring_flood_sender_cpu_us_per_frame": "as flood_sender_cpu_us_per_frame, TX ring",
            "tx_ring": "1 if the kernel gave the ring_ pumps their TX rings in every repeat",
            "window": "transfers in flight",
            "beat": "records per exchange",
        },
    }
