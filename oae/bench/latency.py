"""`oae bench latency`: how long one transfer takes, send to outcome, one at a time, on a
veth pair — without and with durable link state (a state dir: registers and the settled-
transfer log written, with fsync, before outcomes are handed out) — against the bare C
ping-pong round trip of the same pair in the same run.

This is the figure behind every real-frame epoch transition: the epoch layer's CONTROL
messages are such transfers, on links that keep durable state. Links run with idle 0
(the token is answered at once); each repeat measures the C round trip, then the link
without and with a state dir, for `seconds` each; figures are medians.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import trio

from oae.bench.cli import BenchOptions
from oae.runtime import baseline
from oae.runtime.link import LinkOptions, open_link
from oae.runtime.sock import open_socket
from oae.testbed.kernel import VethPair, require_root, veth_pair

OPTIONS = LinkOptions(idle=0.0, hello=0.02, dead=0.5)


def _c_rtt_us(pair: VethPair, seconds: float) -> float:
    a = open_socket(pair.if_a, pair.ns_a)
    b = open_socket(pair.if_b, pair.ns_b)
    try:
        return 1e6 / baseline.pingpong(a, b, seconds, False).rate
    finally:
        a.close()
        b.close()


async def _transfer_us(pair: VethPair, seconds: float, durable: bool) -> float:
    """Median µs from send to outcome of transfers sent one after another."""
    with tempfile.TemporaryDirectory(prefix="oae-bench-latency-") as tmp:
        dirs = ({"state_dir": f"{tmp}/a"}, {"state_dir": f"{tmp}/b"}) if durable else ({}, {})
        async with (
            open_link(pair.if_a, pair.ns_a, options=OPTIONS, **dirs[0]) as a,  # type: ignore[arg-type]
            open_link(pair.if_b, pair.ns_b, options=OPTIONS, **dirs[1]) as b,  # type: ignore[arg-type]
        ):
            with trio.fail_after(10):
                await a.wait_up()
                await b.wait_up()

            async def drain() -> None:
                async for _ in b.received():
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await a.send(b"warm-up")
                took: list[float] = []
                end = time.perf_counter() + seconds
                while time.perf_counter() < end or len(took) < 5:
                    t0 = time.perf_counter()
                    await a.send(b"oae-latency")
                    took.append(time.perf_counter() - t0)
                nursery.cancel_scope.cancel()
    return statistics.median(took) * 1e6


def run(opts: BenchOptions) -> dict:
    require_root("oae bench latency")
    c, plain, durable = [], [], []
    with veth_pair() as pair:
        for i in range(opts.repeats):
            c.append(_c_rtt_us(pair, opts.seconds))
            plain.append(trio.run(_transfer_us, pair, opts.seconds, False))
            durable.append(trio.run(_transfer_us, pair, opts.seconds, True))
            if opts.progress:
                print(f"[bench] latency {i + 1}/{opts.repeats}: C round trip {c[-1]:,.1f} µs, "
                      f"transfer {plain[-1]:,.0f} µs, durable {durable[-1]:,.0f} µs",
                      file=sys.stderr, flush=True)  # fmt: skip
    c_med, plain_med, durable_med = (statistics.median(x) for x in (c, plain, durable))
    return {
        "c_rtt_us": c_med,
        "transfer_us": plain_med,
        "durable_transfer_us": durable_med,
        "transfer_over_c_rtt": plain_med / c_med,
        "durable_over_c_rtt": durable_med / c_med,
        "repeats": opts.repeats,
        "units": {
            "c_rtt_us": "µs per round trip, bare C ping-pong (blocking), same veth pair (median)",
            "transfer_us": "µs from send to outcome, one transfer at a time, no state dir",
            "durable_transfer_us": "µs from send to outcome, one at a time, both ends with a"
            " state dir (durable registers and log)",
            "transfer_over_c_rtt": "x (transfer / C round trip)",
            "durable_over_c_rtt": "x (durable transfer / C round trip)",
        },
    }
