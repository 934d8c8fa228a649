"""`oae bench convergence_testbed`: bilateral convergence on real frames, against the
physical ceiling of the same links, and against 2pc on the same testbed in the same run.

For each configuration a namespace testbed comes up (direct veths, no impairment). First
the bare C ping-pong runs on one of its links (the round trip the hardware path allows);
then `epochs` transitions of the bilateral protocol run on all its links, one EpochNode
per node, initiated by node 0 (oae.epoch.testbed_run). The figures: median convergence
time; the median CONTROL transfer latency (send to outcome, durable link state: the
protocol's real link exchange); and two bounds — critical-path link exchanges (2 x the
initiator's eccentricity) times the C round trip, and times the CONTROL latency.
Convergence / C bound says how far the whole stack is from the wire; convergence /
exchange bound says how far the wave is from its own critical path (issue 6's ratio).
The wave's 2 x path one-way hops each ride a CONTROL transfer and go on at its delivery,
which AIT allows only after the offer, the peer's hold and the commit (3 of the
transfer's 4 legs, and all of its durable stores); so the run also reports the median
one-way delivery and the floor it sets under that ratio, 2 x delivery / CONTROL latency.
Then, on the same testbed, `epochs` transitions of `2pc` (the simulated baseline's
algorithm on the same links, oae.epoch.twopc_testbed), coordinated by node 0: its
convergence (proposal to the coordinator holding every node's commit ACK), its critical
path (PREPARE/YES and COMMIT/ACK relayed to and from the farthest node: 2 x eccentricity,
counted as bilateral's) and the median CONTROL transfer latency of its own run, keys
`{config}_2pc_*`; `{config}_2pc_over_bilateral` compares the two medians.
`oae bench convergence_testbed --nodes 64` measures a ring and a tree of 64 nodes instead
of the default configurations.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial

import trio

from oae.bench.cli import BenchOptions
from oae.epoch.testbed_run import run_on_testbed
from oae.runtime import baseline
from oae.runtime.sock import open_socket
from oae.testbed import manager
from oae.testbed.kernel import require_root
from oae.testbed.manager import Testbed
from oae.testbed.topology import loads

CONFIGS = [("ring", 8), ("tree", 8), ("ring", 16)]
QUICK_CONFIGS = [("ring", 4)]


def _c_round_trip_us(tb: Testbed, seconds: float) -> float:
    """µs per round trip of one bare C ping-pong run (blocking) on the testbed's first link."""
    lk = tb.state["links"][0]
    a = open_socket(lk["if_a"], tb.ns(lk["a"]))
    b = open_socket(lk["if_b"], tb.ns(lk["b"]))
    try:
        return 1e6 / baseline.pingpong(a, b, seconds, False).rate
    finally:
        a.close()
        b.close()


def _progress(enabled: bool, key: str) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if enabled:
            print(f"[bench] {key}: {msg}", file=sys.stderr, flush=True)

    return say


def run(opts: BenchOptions) -> dict:
    require_root("oae bench convergence_testbed")
    epochs = 3 if opts.quick else max(5, 2 * opts.repeats)
    out: dict[str, object] = {"network": "testbed", "epochs": epochs}
    units: dict[str, str] = {"epochs": "transitions per configuration"}
    if opts.nodes:  # --nodes N[,N...]: a ring and a tree of each size
        configs = [(shape, n) for n in opts.nodes for shape in ("ring", "tree")]
    else:
        configs = QUICK_CONFIGS if opts.quick else CONFIGS
    for shape, n in configs:
        key = f"{shape}{n}"
        name = f"bconv{os.getpid()}"
        text = f'[topology]\nname = "{name}"\nshape = "{shape}"\nnodes = {n}\n'
        with manager.running(loads(text, f"<bench {key}>")) as tb:
            c_rtt = _c_round_trip_us(tb, opts.seconds)
            say = _progress(opts.progress, key)
            r = trio.run(run_on_testbed, tb, epochs, 1, 0, say)
            t = trio.run(partial(run_on_testbed, tb, epochs, 1, 0, say, algorithm="2pc"))
        for x in (r, t):
            say(
                f"{x['algorithm']}: committed {x['committed']}, aborted {x['aborted']}, "
                f"stuck {x['stuck']}; link-end downs {x['link_downs']}, lost CONTROL "
                f"messages {x['lost_control_messages']}"
            )
        median = r["median_convergence_us"]
        path = r["critical_path_exchanges"]
        exchange = r["median_link_rtt_us"]
        out[f"{key}_bilateral_us"] = median
        out[f"{key}_committed"] = r["committed"]
        out[f"{key}_critical_path_exchanges"] = path
        out[f"{key}_c_rtt_us"] = c_rtt
        out[f"{key}_c_bound_us"] = path * c_rtt if path else None  # type: ignore[operator]
        out[f"{key}_link_exchange_us"] = exchange
        out[f"{key}_ratio_vs_c"] = (
            median / (path * c_rtt) if median and path else None  # type: ignore[operator]
        )
        out[f"{key}_ratio_vs_exchange"] = r["convergence_ratio"]
        out[f"{key}_control_delivery_us"] = r["median_control_delivery_us"]
        out[f"{key}_ratio_floor"] = r["delivery_floor_ratio"]
        median2 = t["median_convergence_us"]
        out[f"{key}_2pc_us"] = median2
        out[f"{key}_2pc_committed"] = t["committed"]
        out[f"{key}_2pc_critical_path_exchanges"] = t["critical_path_exchanges"]
        out[f"{key}_2pc_link_exchange_us"] = t["median_link_rtt_us"]
        out[f"{key}_2pc_ratio_vs_exchange"] = t["convergence_ratio"]
        out[f"{key}_2pc_ratio_vs_c"] = (
            median2 / (path * c_rtt) if median2 and path else None  # type: ignore[operator]
        )
        out[f"{key}_2pc_over_bilateral"] = (
            median2 / median if median2 and median else None  # type: ignore[operator]
        )
        units.update(
            {
                f"{key}_bilateral_us": "µs median convergence (proposal to Conv(P, e+1))",
                f"{key}_committed": "transitions committed",
                f"{key}_critical_path_exchanges": "link exchanges (2 x eccentricity of node 0)",
                f"{key}_c_rtt_us": "µs per round trip, bare C ping-pong (blocking), same link",
                f"{key}_c_bound_us": "µs: critical-path exchanges x C round trip",
                f"{key}_link_exchange_us": "µs median CONTROL transfer latency (send to outcome)",
                f"{key}_ratio_vs_c": "x (convergence / C bound)",
                f"{key}_ratio_vs_exchange": "x (convergence / critical path x CONTROL latency)",
                f"{key}_control_delivery_us": "µs median one-way CONTROL delivery (submit to "
                "the peer link handing it over, durable at the peer)",
                f"{key}_ratio_floor": "x (2 x delivery / CONTROL latency: ratio_vs_exchange "
                "if every wave hop cost only the link's delivery)",
                f"{key}_2pc_us": "µs median 2pc convergence (proposal to every commit ACK "
                "at the coordinator)",
                f"{key}_2pc_committed": "transitions committed",
                f"{key}_2pc_critical_path_exchanges": "link exchanges (2 x eccentricity of "
                "node 0: PREPARE/YES and COMMIT/ACK relayed to the farthest node)",
                f"{key}_2pc_link_exchange_us": "µs median CONTROL transfer latency "
                "(send to outcome) in the 2pc run",
                f"{key}_2pc_ratio_vs_exchange": "x (2pc convergence / critical path x its "
                "CONTROL latency)",
                f"{key}_2pc_ratio_vs_c": "x (2pc convergence / C bound)",
                f"{key}_2pc_over_bilateral": "x (2pc median convergence / bilateral's)",
            }
        )
    out["units"] = units
    return out
