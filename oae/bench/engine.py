"""`oae bench engine`: in-memory exchanges per second of the link engine, C vs Python.

One *exchange* is one frame built by one end and accepted by the other. All figures run
the same workload: two ends over a perfect in-memory wire, transfers offered both ways as
fast as the window (64) and beats (16 records) allow, every transfer carried through all
three AIT signals. Figures:

- `c`: the C engine driven by the C simulator (csrc/linksim.c): no Python per frame, the
  way the runtime pump runs it;
- `c_from_python`: the same C engine driven frame by frame from Python (`LinkEngine`);
- `model`: the pure-Python model (`LinkModel`), the baseline;
- `ratio` = c / model, `ratio_from_python` = c_from_python / model.

Repeats are interleaved so that load from elsewhere hits all alike; medians are reported.
"""

from __future__ import annotations

import statistics
import time

from oae.bench.cli import BenchOptions
from oae.engine import Delivered, LinkConfig, LinkEngine, simulate
from oae.model.link import LinkModel

A_MAC = bytes.fromhex("02000000000a")
B_MAC = bytes.fromhex("02000000000b")
WINDOW, BEAT = 64, 16


def _c_rate(seconds: float) -> float:
    """Frames per second of the C simulator, sized to run about `seconds`."""
    transfers = 20_000
    while True:
        start = time.perf_counter()
        r = simulate(transfers, seed=1, window=WINDOW, beat=BEAT)
        elapsed = time.perf_counter() - start
        if not r.ok:
            raise RuntimeError(f"simulation failed: {r.violation}")
        if elapsed >= seconds or transfers >= 50_000_000:
            return r.frames / elapsed
        transfers = int(transfers * max(2.0, 1.2 * seconds / max(elapsed, 1e-6)))


def _py_rate(cls: type, seconds: float) -> float:
    """Frames per second of two `cls` ends exchanging transfers in a Python loop."""
    ends = [
        cls(LinkConfig(mac=A_MAC, nonce=1, window=WINDOW, beat=BEAT, rx_capacity=2 * WINDOW)),
        cls(LinkConfig(mac=B_MAC, nonce=2, window=WINDOW, beat=BEAT, rx_capacity=2 * WINDOW)),
    ]
    now, frames = 0, 0
    payload = bytes(9)
    start = time.perf_counter()
    while True:
        for w in (0, 1):
            me, peer = ends[w], ends[1 - w]
            while me.offer(payload):  # 0 once the window is full (or before LIVE)
                pass
            out = me.poll_tx(now)
            for f in out:
                peer.on_frame(f, now)
            frames += len(out)
            peer.release(sum(1 for e in peer.poll_events() if isinstance(e, Delivered)))
            me.poll_events()
        now += 1_000
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return frames / elapsed


def run(opts: BenchOptions) -> dict:
    c, via, model = [], [], []
    for _ in range(opts.repeats):
        c.append(_c_rate(opts.seconds))
        via.append(_py_rate(LinkEngine, opts.seconds))
        model.append(_py_rate(LinkModel, opts.seconds))
    c_med, via_med, model_med = (statistics.median(x) for x in (c, via, model))
    return {
        "c": c_med,
        "c_from_python": via_med,
        "model": model_med,
        "ratio": c_med / model_med,
        "ratio_from_python": via_med / model_med,
        "units": {
            "c": "exchanges/s",
            "c_from_python": "exchanges/s",
            "model": "exchanges/s",
            "ratio": "x",
            "ratio_from_python": "x",
        },
    }
