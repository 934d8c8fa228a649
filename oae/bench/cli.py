"""`oae bench [PART ...]`: run the benchmark suite or some parts of it.

Each part lives in its own module under `oae.bench` and exposes
`run(opts: BenchOptions) -> dict`; the dict holds the part's figures. A figure that is
compared with a baseline carries the baseline's figure and a `ratio` next to it, and every
figure names its unit in a `units` mapping, so the JSON document explains itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oae.bench import machine
from oae.errors import NeedsRootError, UsageError

# part name -> (module, one-line description)
PARTS: dict[str, tuple[str, str]] = {
    "codec": ("oae.bench.codec", "records encoded+decoded per second, C vs pure Python"),
    "engine": ("oae.bench.engine", "in-memory link exchanges/s, C engine vs Python model"),
    "exchange": ("oae.bench.exchange", "link token exchange vs bare C ping-pong, round trips/s"),
    "ait": ("oae.bench.ait", "committed transfers/s (window, beats) vs one-way C flood"),
    "convergence": (
        "oae.bench.convergence",
        "epoch convergence vs critical-path bound, ring/tree/mesh to 64 nodes (simulated)",
    ),
    "sweep": ("oae.bench.sweep", "commits/s and frames/s vs beat and vs window, vs C flood"),
    "convergence_testbed": (
        "oae.bench.testbed_convergence",
        "bilateral and 2pc convergence on real frames vs critical path x link exchange, same run",
    ),
    "latency": (
        "oae.bench.latency",
        "one transfer's send-to-outcome time, with and without durable state, vs C RTT",
    ),
    "outcomes": (
        "oae.bench.outcomes",
        "exactly-once outcome stream (post + outcomes()) vs send_many, transfers/s, same run",
    ),
    "testbed": ("oae.testbed.bench", "64-node ring up/down time; bridge frames/s vs direct veth"),
}
QUICK_SECONDS, QUICK_REPEATS = 0.2, 1


@dataclass(frozen=True)
class BenchOptions:
    """What every part may look at: how long to run and whether to be chatty."""

    seconds: float
    repeats: int
    progress: bool
    quick: bool = False  # a short run: parts may measure fewer configurations
    nodes: tuple[int, ...] = ()  # convergence_testbed: ring and tree of these sizes


def machine_info() -> dict[str, object]:
    import os

    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def register(sub: argparse._SubParsersAction) -> None:
    parts = "\n".join(f"  {name:<12} {desc}" for name, (_, desc) in PARTS.items())
    p = sub.add_parser(
        "bench",
        help="run benchmarks (all parts, or the ones named)",
        description="Run oae's benchmarks. Parts:\n"
        + parts
        + "\n\nFigures are medians over --repeats runs; ratios compare against a baseline"
        " measured in the same run. The --json document's `figures` list gives every figure"
        " with its unit, its role and the baseline it is compared with (oae.bench.suite);"
        " parts that need root are skipped without it when no part is named. Each part's"
        " machine state is recorded (`conditions`: load average before and after, CPU used"
        " by other processes meanwhile); when other processes used more than"
        f" {machine.OTHER_CPU_MAX} CPUs, the part's figures are flagged as not results.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("parts", nargs="*", metavar="PART", help="parts to run (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument(
        "--seconds",
        type=float,
        help="measuring time per figure and repeat (default 1.0; --quick 0.2)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="repeats per figure; the median is reported (default 5; --quick 1)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run: --seconds 0.2 --repeats 1, fewer configurations",
    )
    p.add_argument(
        "--nodes",
        metavar="N[,N...]",
        help="convergence_testbed: a ring and a tree of each of these node counts instead of"
        " its default configurations (e.g. --nodes 64)",
    )
    p.add_argument(
        "--plot", metavar="DIR", help="write PNG plots of the figures to DIR (needs matplotlib)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from oae.bench import plots, suite

    names = args.parts or list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise UsageError(f"unknown bench part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    seconds = args.seconds if args.seconds is not None else QUICK_SECONDS if args.quick else 1.0
    repeats = args.repeats if args.repeats is not None else QUICK_REPEATS if args.quick else 5
    if seconds <= 0 or repeats < 1:
        raise UsageError("--seconds must be > 0 and --repeats >= 1")
    try:
        nodes = tuple(int(x) for x in args.nodes.split(",")) if args.nodes else ()
    except ValueError:
        raise UsageError(f"--nodes {args.nodes!r}: give node counts like 64 or 8,64") from None
    if any(n < 2 for n in nodes):
        raise UsageError("--nodes: every node count must be >= 2")
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None:
        try:
            plot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--plot {plot_dir}: {exc.strerror}") from None
    opts = BenchOptions(
        seconds=seconds, repeats=repeats, progress=True, quick=args.quick, nodes=nodes
    )
    doc: dict[str, Any] = {
        "machine": machine_info(),
        "started": time.time(),
        "options": {"seconds": seconds, "repeats": repeats, "quick": args.quick, "nodes": nodes},
        "parts": {},
        "skipped": {},
        "conditions": {},
    }
    for name in names:
        module = importlib.import_module(PARTS[name][0])
        if opts.progress:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        before = machine.sample()
        try:
            doc["parts"][name] = module.run(opts)
        except NeedsRootError as exc:
            if args.parts:  # asked for by name: an error
                raise
            doc["skipped"][name] = str(exc)
            print(f"[bench] {name} skipped: {exc}", file=sys.stderr, flush=True)
            continue
        doc["conditions"][name] = machine.conditions(before, machine.sample())
        if opts.progress:
            print(machine.describe(name, doc["conditions"][name]), file=sys.stderr, flush=True)
    suite.document(doc)
    if plot_dir is not None:
        doc["plots"] = [str(p) for p in plots.bench_plots(doc, plot_dir)]
        if not plots.available():
            print("[bench] --plot: matplotlib is not installed, no plots", file=sys.stderr)
    if not args.json:
        print(suite.format_figures(doc))
        for path in doc.get("plots", []):
            print(f"plot: {path}")
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    return 0
