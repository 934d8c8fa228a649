"""`oae bench exchange`: the link's token exchange against a bare C ping-pong, side by side
on the same fresh veth pair in the same run, in blocking and busy-poll modes.

A round trip is one frame each way. The baseline is csrc/pingpong.c (one 78-byte frame
outstanding, answered by a C responder). The engine figure is a LIVE link with nothing
to transfer and no answer delay (idle 0): the token alternates as fast as the two C
pump threads can run the link engine. Each repeat measures the baseline and then the
engine, so that drift in machine load hits both; `ratio` is the median of the per-repeat
ratios, the rates are medians.

Where the two ends' threads run decides a round trip's cost more than anything either
side does: on one CPU a round trip is a context switch (~8 µs here), on two it is two
wake-ups of another CPU (~50 µs on this VM, whose idle vCPUs halt). Left to the
scheduler, the ends share a CPU now and then, at random, more often for one side than
the other. So `blocking` and `busy_poll` hold each end to its own CPU, the baseline's and
the link's alike, as the two ends of a link between two hosts would be; `blocking_free`
and `busy_poll_free` leave the placement to the scheduler (with fewer than two CPUs all
four are free).
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time

import trio

from oae.bench.cli import BenchOptions
from oae.runtime import baseline
from oae.runtime.link import LinkOptions, open_link
from oae.runtime.sock import open_socket
from oae.testbed.kernel import VethPair, require_root, veth_pair

MODES = {"blocking": False, "busy_poll": True}


def two_cpus() -> tuple[int, int] | None:
    """The first two CPUs this process may run on, one per end (None: fewer)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def measure_baseline(
    pair: VethPair, seconds: float, busy: bool, cpus: tuple[int, int] | None = None
) -> tuple[float, float]:
    """(round trips/s, CPU seconds of both ends per round trip)"""
    a = open_socket(pair.if_a, pair.ns_a)
    b = open_socket(pair.if_b, pair.ns_b)
    try:
        r = baseline.pingpong(a, b, seconds, busy, cpus=cpus)
        return r.rate, r.cpu_s / max(r.count, 1)
    finally:
        a.close()
        b.close()


async def _engine(
    pair: VethPair, seconds: float, busy: bool, cpus: tuple[int, int] | None
) -> tuple[float, float]:
    opts = LinkOptions(idle=0.0, busy=busy)
    async with (
        open_link(pair.if_a, pair.ns_a, options=opts) as a,
        open_link(pair.if_b, pair.ns_b, options=opts) as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()
            await b.wait_up()
        for link, cpu in zip((a, b), cpus or (), strict=False):
            os.sched_setaffinity(link.stats()["pump"]["tid"], {cpu})
        await trio.sleep(min(0.2, seconds / 5))  # past reconciliation, into the steady state
        sa0, sb0, t0 = a.stats(), b.stats(), time.perf_counter()
        await trio.sleep(seconds)
        sa1, sb1, t1 = a.stats(), b.stats(), time.perf_counter()
        rts = sa1["frames_in"] - sa0["frames_in"]
        cpu = sum(
            s1["pump"]["cpu_ns"] - s0["pump"]["cpu_ns"] for s0, s1 in ((sa0, sa1), (sb0, sb1))
        )
        return rts / (t1 - t0), cpu / 1e9 / max(rts, 1)


def measure_engine(
    pair: VethPair, seconds: float, busy: bool, cpus: tuple[int, int] | None = None
) -> tuple[float, float]:
    return trio.run(_engine, pair, seconds, busy, cpus)


def run(opts: BenchOptions) -> dict:
    require_root("oae bench exchange")
    out: dict[str, object] = {}
    apart = two_cpus()
    with veth_pair() as pair:
        for (mode, busy), (suffix, cpus) in itertools.product(
            MODES.items(), (("", apart), ("_free", None))
        ):
            base: list[float] = []
            eng: list[float] = []
            base_cpu: list[float] = []
            eng_cpu: list[float] = []
            for i in range(opts.repeats):
                rate, cpu = measure_baseline(pair, opts.seconds, busy, cpus)
                base.append(rate)
                base_cpu.append(cpu)
                rate, cpu = measure_engine(pair, opts.seconds, busy, cpus)
                eng.append(rate)
                eng_cpu.append(cpu)
                if opts.progress:
                    print(f"[bench] exchange {mode}{suffix} {i + 1}/{opts.repeats}: "
                          f"baseline {base[-1]:,.0f} rt/s, engine {eng[-1]:,.0f} rt/s",
                          file=sys.stderr, flush=True)  # fmt: skip
            out[mode + suffix] = {
                "baseline_rt_per_s": statistics.median(base),
                "engine_rt_per_s": statistics.median(eng),
                "ratio": statistics.median(e / b for e, b in zip(eng, base, strict=True)),
                "baseline_cpu_us_per_rt": statistics.median(base_cpu) * 1e6,
                "engine_cpu_us_per_rt": statistics.median(eng_cpu) * 1e6,
                "repeats": opts.repeats,
            }
    out["units"] = {
        "baseline_rt_per_s": "round trips/s, bare C ping-pong (median)",
        "engine_rt_per_s": "round trips/s, link token exchange (median)",
        "ratio": "engine/baseline, median of per-repeat ratios (targets: blocking >= 0.9,"
        " busy_poll >= 0.9; each end on its own CPU, `_free`: placed by the scheduler)",
        "baseline_cpu_us_per_rt": "CPU us of both ends' threads per round trip (median);"
        " less sensitive to other load on the machine than the rates",
        "engine_cpu_us_per_rt": "CPU us of both pump threads per round trip (median)",
    }
    return out
