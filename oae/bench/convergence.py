"""`oae bench convergence`: convergence time of the bilateral protocol against the
critical-path bound, ring/tree/mesh up to 64 nodes, with 2pc measured alongside.

Simulated network (oae.epoch.sim): 40 µs link round trips with ±20 % jitter, 1 µs of
processing per CONTROL message, 50 µs median checkpoint writes, no faults, no
application traffic. For each configuration, `repeats` transitions from node 0; the
ratio is median convergence time / (critical-path link exchanges x median link round trip
measured in the same run). Bilateral's critical path is 2 x eccentricity exchanges
(prepare echo, commit echo); 2pc's is 2.5 x eccentricity (prepare/vote, commit/ack,
release), so the two ratios each measure distance from their own bound, and the times
compare directly.
"""

from __future__ import annotations

import sys

from oae.bench.cli import BenchOptions
from oae.epoch.converge import run as converge
from oae.epoch.sim import NetParams, make_topology

CONFIGS = [(shape, n) for shape in ("ring", "tree", "mesh") for n in (8, 16, 32, 64)]
PARAMS = NetParams(app_period_us=0.0, persist_us=50.0)


def run(opts: BenchOptions) -> dict:
    out: dict[str, object] = {"network": "simulated", "rtt_us": PARAMS.rtt_us}
    units: dict[str, str] = {"rtt_us": "µs (simulated link round trip)"}
    for shape, n in [(s, n) for s, n in CONFIGS if n <= 16 or not opts.quick]:
        topo = make_topology(shape, n)
        for algo in ("bilateral", "2pc"):
            if opts.progress:
                print(f"[bench] convergence {shape}-{n} {algo}", file=sys.stderr, flush=True)
            r = converge(algo, topo, max(opts.repeats, 3), seed=1, params=PARAMS, initiator=0)
            key = f"{shape}{n}_{algo}"
            out[f"{key}_us"] = r["median_convergence_us"]
            out[f"{key}_ratio"] = r["convergence_ratio"]
            units[f"{key}_us"] = "µs median convergence"
            units[f"{key}_ratio"] = "x (critical-path exchanges x median RTT)"
        out[f"{shape}{n}_2pc_over_bilateral"] = (
            out[f"{shape}{n}_2pc_us"] / out[f"{shape}{n}_bilateral_us"]
        )  # type: ignore[operator]
        units[f"{shape}{n}_2pc_over_bilateral"] = "x (time ratio)"
    out["units"] = units
    return out
