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

import trio

from oae.bench.ait import measure_flood, steady_stats
from oae.bench.cli import BenchOptions
from oae.testbed.kernel import VethPair, require_root, veth_pair

BEATS = (1, 4, 16, 64)
WINDOWS = (1, 4, 16, 64, 256, 1024)
FIXED_WINDOW = 1024  # while the beat varies
FIXED_BEAT = 64  # while the window varies


async def _point(pair: VethPair, seconds: float, window: int, beat: int) -> dict[str, float]:
    """Committed transfers/s, frames/s sent, and the sender pump's syscalls and blocking
    wake-ups per frame (sent + received), in the steady state."""
    st = await steady_stats(pair, seconds, window, beat)
    p0, p1 = st.tx0["pump"], st.tx1["pump"]
    frames = sum(p1[k] - p0[k] for k in ("rx_frames", "tx_frames")) or 1
    return {
        "commits_per_s": st.commits_per_s,
        "exchanges_per_s": st.delta("frames_out") / st.seconds,
        "syscalls_per_frame": sum(p1[k] - p0[k] for k in ("rx_calls", "tx_calls")) / frames,
        "wakeups_per_frame": (p1["wakeups"] - p0["wakeups"]) / frames,
    }


def run(opts: BenchOptions) -> dict:
    require_root("oae bench sweep")
    points = [(FIXED_WINDOW, b) for b in BEATS] + [(w, FIXED_BEAT) for w in WINDOWS]
    points = list(dict.fromkeys(points))  # (1024, 64) is on both axes
    keys = ("commits_per_s", "exchanges_per_s", "syscalls_per_frame", "wakeups_per_frame")
    runs: dict[tuple[int, int], dict[str, list[float]]] = {p: {k: [] for k in keys} for p in points}
    floods: list[float] = []
    with veth_pair() as pair:
        for i in range(opts.repeats):
            floods.append(measure_flood(pair, opts.seconds).rate)
            for window, beat in points:
                r = trio.run(_point, pair, opts.seconds, window, beat)
                for k in keys:
                    runs[(window, beat)][k].append(r[k])
                if opts.progress:
                    rate = r["commits_per_s"]
                    print(f"[bench] sweep {i + 1}/{opts.repeats} window {window} beat {beat}: "
                          f"{rate:,.0f} commits/s", file=sys.stderr, flush=True)  # fmt: skip
    flood = statistics.median(floods)

    def point(window: int, beat: int) -> dict[str, float]:
        med = {k: statistics.median(v) for k, v in runs[(window, beat)].items()}
        return {"window": window, "beat": beat, **med, "ratio": med["commits_per_s"] / flood}

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
            "syscalls_per_frame": "sender pump's send+receive syscalls per frame sent or"
            " received (median)",
            "wakeups_per_frame": "sender pump's blocking waits per frame sent or received (median)",
            "window": "transfers in flight (parameter)",
            "beat": "records per exchange (parameter)",
        },
    }
