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

from oae.errors import UsageError

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
}


@dataclass(frozen=True)
class BenchOptions:
    """What every part may look at: how long to run and whether to be chatty."""

    seconds: float
    repeats: int
    progress: bool


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
        description="Run oae's benchmarks. Parts:\n" + parts
        + "\n\nFigures are medians over --repeats runs; ratios compare against a baseline"
        " measured in the same run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("parts", nargs="*", metavar="PART", help="parts to run (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--seconds", type=float, default=1.0,
                   help="measuring time per figure and repeat (default 1.0)")
    p.add_argument("--repeats", type=int, default=5,
                   help="repeats per figure; the median is reported (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = args.parts or list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise UsageError(f"unknown bench part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    if args.seconds <= 0 or args.repeats < 1:
        raise UsageError("--seconds must be > 0 and --repeats >= 1")
    opts = BenchOptions(seconds=args.seconds, repeats=args.repeats, progress=not args.json)
    doc: dict[str, object] = {"machine": machine_info(), "started": time.time(), "parts": {}}
    for name in names:
        module = importlib.import_module(PARTS[name][0])
        if opts.progress:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        result = module.run(opts)
        doc["parts"][name] = result  # type: ignore[index]
        if not args.json:
            print(f"{name}:")
            units = result.get("units", {})
            for key, value in result.items():
                if key == "units":
                    continue
                unit = units.get(key, "")
                shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
                print(f"  {key:<24} {shown} {unit}")
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    return 0
