"""`oae bench sweep`: committed transfers/s and frames/s of one link over a veth pair as
the beat (records per exchange) and the window (transfers in flight) vary, against the
one-way C flood of the same link in the same run: the data of the plots "exchange rate vs
beats" and "commits/s vs window".

Method as in `oae bench ait` (bulk-queued transfers, a sink receiver, a quiet sender);
each point is the median over the repeats, the flood is measured once per repeat.
"""

from __future__ import annotations

import statistics
import sys
import time

import trio

from oae.bench.ait import CHUNK, PAYLOAD, measure_flood
from oae.bench.cli import BenchOptions
from oae.runtime.link import LinkOptions, open_link
from oae.testbed.kernel import VethPair, require_root, veth_pair

BEATS = (1, 4, 16, 64)
WINDOWS = (1, 4, 16, 64, 256, 1024)
FIXED_WINDOW = 1024  # while the beat varies
FIXED_BEAT = 64  # while the window varies


async def _point(pair: VethPair, seconds: float, window: int, beat: int) -> tuple[float, float]:
    """(committed transfers/s, frames/s sent by the sender) in the steady state."""
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
        dt = t1 - t0
        return (s1["committed"] - s0["committed"]) / dt, (s1["frames_out"] - s0["frames_out"]) / dt


def run(opts: BenchOptions) -> dict:
    require_root("oae bench sweep")
    points = [(FIXED_WINDOW, b) for b in BEATS] + [(w, FIXED_BEAT) for w in WINDOWS]
    points = list(dict.fromkeys(points))  # (1024, 64) is on both axes
    commits: dict[tuple[int, int], list[float]] = {p: [] for p in points}
    frames: dict[tuple[int, int], list[float]] = {p: [] for p in points}
    floods: list[float] = []
    with veth_pair() as pair:
        for i in range(opts.repeats):
            floods.append(measure_flood(pair, opts.seconds))
            for window, beat in points:
                c, f = trio.run(_point, pair, opts.seconds, window, beat)
                commits[(window, beat)].append(c)
                frames[(window, beat)].append(f)
                if opts.progress:
                    print(f"[bench] sweep {i + 1}/{opts.repeats} window {window} beat {beat}: "
                          f"{c:,.0f} commits/s", file=sys.stderr, flush=True)  # fmt: skip
    flood = statistics.median(floods)

    def point(window: int, beat: int) -> dict[str, float]:
        c = statistics.median(commits[(window, beat)])
        return {
            "window": window,
            "beat": beat,
            "commits_per_s": c,
            "exchanges_per_s": statistics.median(frames[(window, beat)]),
            "ratio": c / flood,
        }

    return {
        "baseline_pps": flood,
        "by_beat": [point(FIXED_WINDOW, b) for b in BEATS],
        "by_window": [point(w, FIXED_BEAT) for w in WINDOWS],
        "repeats": opts.repeats,
        "units": {
            "baseline_pps": "frames/s received, one-way C sendmmsg flood (median)",
            "commits_per_s": "committed transfers/s at the sender (median)",
            "exchanges_per_s": "frames/s sent by the sender, each an exchange (median)",
            "ratio": "commits/flood frames",
            "window": "transfers in flight (parameter)",
            "beat": "records per exchange (parameter)",
        },
    }
