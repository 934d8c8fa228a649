"""`oae bench outcomes`: what the exactly-once outcome stream costs against plain send_many,
on the same links in the same run.

One veth pair, both ends with a state dir (durable registers and event log, as an
exactly-once application runs them), window 1024, beats of 64, the receiver consuming
in its pump (sink). Each repeat measures, on the same two links, for `seconds` each and
in alternating order:
  * send_many: `await link.send_many(chunk)` in a loop, chunks of 16,384 payloads (each
    call waits for its chunk's outcomes, which are acknowledged as they are returned);
  * stream: keyed `link.post(chunk)` kept ahead of the window, and `async for o in
    link.outcomes()` taking (and so acknowledging) every outcome one by one.
Figures are transfers settled per second at the sender (medians); `ratio` is the median of
per-repeat stream / send_many ratios.
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
from oae.testbed.kernel import require_root, veth_pair

WINDOW = 1024
BEAT = 64
CHUNK = 16_384
PAYLOAD = b"oae-bench-eo-16b"


async def _send_many(link: Link, seconds: float) -> float:
    done = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        done += len(await link.send_many([PAYLOAD] * CHUNK))
    return done / elapsed


async def _stream(link: Link, seconds: float, keys: Iterator[int]) -> float:
    posted = done = 0
    rate = 0.0
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
    return rate


async def _measure(pair: object, seconds: float, repeats: int, progress: bool) -> dict:
    tx = LinkOptions(window=WINDOW, beat=BEAT, idle=0.0)
    rx = LinkOptions(window=WINDOW, beat=BEAT, idle=0.0, sink=True)
    plain: list[float] = []
    stream: list[float] = []
    with tempfile.TemporaryDirectory(prefix="oae-bench-outcomes-") as tmp:
        async with (
            open_link(pair.if_a, pair.ns_a, state_dir=f"{tmp}/a", options=tx) as a,  # type: ignore[attr-defined]
            open_link(pair.if_b, pair.ns_b, state_dir=f"{tmp}/b", options=rx),  # type: ignore[attr-defined]
        ):
            with trio.fail_after(10):
                await a.wait_up()
            await a.send_many([PAYLOAD] * 4096)  # warm up
            keys = itertools.count(1)
            for i in range(repeats):
                if i % 2:
                    stream.append(await _stream(a, seconds, keys))
                    plain.append(await _send_many(a, seconds))
                else:
                    plain.append(await _send_many(a, seconds))
                    stream.append(await _stream(a, seconds, keys))
                if progress:
                    print(f"[bench] outcomes {i + 1}/{repeats}: send_many {plain[-1]:,.0f}/s, "
                          f"stream {stream[-1]:,.0f}/s", file=sys.stderr, flush=True)  # fmt: skip
    return {
        "send_many_per_s": statistics.median(plain),
        "stream_per_s": statistics.median(stream),
        "stream_over_send_many": statistics.median(
            s / p for s, p in zip(stream, plain, strict=True)
        ),
        "window": WINDOW,
        "beat": BEAT,
        "repeats": repeats,
        "units": {
            "send_many_per_s": "transfers settled/s at the sender, send_many of 16,384 at a time,"
            " both ends durable (median)",
            "stream_per_s": "transfers settled/s at the sender, keyed post + outcomes() taking"
            " and acknowledging each, both ends durable (median)",
            "stream_over_send_many": "x (stream / send_many, median of per-repeat ratios)",
        },
    }


def run(opts: BenchOptions) -> dict:
    require_root("oae bench outcomes")
    with veth_pair() as pair:
        return trio.run(_measure, pair, opts.seconds, opts.repeats, opts.progress)
