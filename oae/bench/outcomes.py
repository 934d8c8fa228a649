"""`oae bench outcomes`: what the exactly-once outcome stream costs against plain send_many,
on the same links in the same run.

One veth pair, window 1024, beats of 64, the receiver consuming in its pump (sink), in two
configurations: `volatile` (no state dir: what the stream costs the application's
process) and `durable` (both ends with a state dir, as an exactly-once application runs
them: durable registers and event log, whose fdatasyncs dominate). For each, on the same
two links, each repeat measures for `seconds` each, in alternating order:
  * send_many: `await link.send_many(chunk)` in a loop, chunks of 16,384 payloads, two
    calls in flight (each waits for its chunk's outcomes, acknowledged as they are
    returned; the other keeps the window full meanwhile);
  * stream: keyed `link.post(chunk)` kept ahead of the window, and `async for o in
    link.outcomes()` taking (and so acknowledging) every outcome one by one.
Figures are transfers settled per second at the sender and CPU µs per transfer of the
application's (Trio) thread, the stream's own cost (the pump threads and the disk do the
same work either way; rates swing with the disk and the beat sizes the link falls into);
medians, and the medians of per-repeat stream / send_many ratios.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

import trio

from oae.bench.cli import BenchOptions
from oae.runtime.link import Link, LinkOptions, open_link
from oae.testbed.kernel import VethPair, require_root, veth_pair

WINDOW = 1024
BEAT = 64
CHUNK = 16_384
PAYLOAD = b"oae-bench-eo-16b"


async def _send_many(link: Link, seconds: float) -> tuple[float, float]:
    """Two send_many calls in flight at a time, so the window never drains at the end of a
    chunk (the stream keeps it full too): transfers/s, and CPU µs of the application's
    (Trio) thread per transfer."""
    done = 0
    t0, c0 = time.perf_counter(), time.thread_time()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() - t0 < seconds:
            done += len(await link.send_many([PAYLOAD] * CHUNK))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        nursery.start_soon(worker)
    return done / (time.perf_counter() - t0), (time.thread_time() - c0) * 1e6 / done


async def _stream(link: Link, seconds: float, keys: Iterator[int]) -> tuple[float, float]:
    posted = done = 0
    rate = 0.0
    c0 = time.thread_time()
    feeding = trio.CancelScope()

    async def feed() -> None:
        nonlocal posted
        with feeding:
            while True:
                if link.backlog() < CHUNK:
                    link.post([PAYLOAD] * CHUNK, keys=list(itertools.islice(keys, CHUNK)))
                    posted += CHUNK
                await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        t0 = time.perf_counter()
        async for _ in link.outcomes():
            done += 1
            if not rate and not done % 256 and time.perf_counter() - t0 >= seconds:
                rate = done / (time.perf_counter() - t0)
                feeding.cancel()  # no more posts: take what is still coming
            if rate and done == posted:
                break
    return rate, (time.thread_time() - c0) * 1e6 / done


async def _measure(pair: VethPair, durable: bool, opts: BenchOptions) -> dict:
    tx = LinkOptions(window=WINDOW, beat=BEAT, idle=0.0)
    rx = LinkOptions(window=WINDOW, beat=BEAT, idle=0.0, sink=True)
    plain: list[tuple[float, float]] = []
    stream: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="oae-bench-outcomes-") as tmp:
        dirs = ({"state_dir": f"{tmp}/a"}, {"state_dir": f"{tmp}/b"}) if durable else ({}, {})
        async with (
            open_link(pair.if_a, pair.ns_a, options=tx, **dirs[0]) as a,  # type: ignore[arg-type]
            open_link(pair.if_b, pair.ns_b, options=rx, **dirs[1]),  # type: ignore[arg-type]
        ):
            with trio.fail_after(10):
                await a.wait_up()
            await a.send_many([PAYLOAD] * 4096)  # warm up
            keys = itertools.count(1)
            for i in range(opts.repeats):
                if i % 2:
                    stream.append(await _stream(a, opts.seconds, keys))
                    plain.append(await _send_many(a, opts.seconds))
                else:
                    plain.append(await _send_many(a, opts.seconds))
                    stream.append(await _stream(a, opts.seconds, keys))
                if opts.progress:
                    mode = "durable" if durable else "volatile"
                    print(f"[bench] outcomes {mode} {i + 1}/{opts.repeats}: send_many "
                          f"{plain[-1][0]:,.0f}/s {plain[-1][1]:.1f} µs, stream "
                          f"{stream[-1][0]:,.0f}/s {stream[-1][1]:.1f} µs",
                          file=sys.stderr, flush=True)  # fmt: skip
    pairs = list(zip(stream, plain, strict=True))
    return {
        "send_many_per_s": statistics.median(p[0] for p in plain),
        "stream_per_s": statistics.median(s[0] for s in stream),
        "ratio": statistics.median(s[0] / p[0] for s, p in pairs),
        "send_many_cpu_us": statistics.median(p[1] for p in plain),
        "stream_cpu_us": statistics.median(s[1] for s in stream),
        "cpu_ratio": statistics.median(s[1] / p[1] for s, p in pairs),
    }


def run(opts: BenchOptions) -> dict:
    require_root("oae bench outcomes")
    with veth_pair() as pair:
        out: dict = {mode: trio.run(_measure, pair, mode == "durable", opts)
                     for mode in ("volatile", "durable")}  # fmt: skip
    return {
        **out,
        "window": WINDOW,
        "beat": BEAT,
        "repeats": opts.repeats,
        "units": {
            "send_many_per_s": "transfers settled/s at the sender, send_many of 16,384 at a time,"
            " two calls in flight (median)",
            "stream_per_s": "transfers settled/s at the sender, keyed post + outcomes() taking"
            " and acknowledging each (median)",
            "ratio": "x (stream / send_many, median of per-repeat ratios)",
            "send_many_cpu_us": "CPU µs of the application's (Trio) thread per transfer,"
            " send_many (median)",
            "stream_cpu_us": "CPU µs of the application's (Trio) thread per transfer, post +"
            " outcomes() (median)",
            "cpu_ratio": "x (stream / send_many CPU per transfer, median of per-repeat ratios)",
        },
    }
