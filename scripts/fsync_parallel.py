"""How many small in-place write + fdatasync pairs per second a file system takes from N
writers at once (one-off measurement; docs/convergence.md §11.12).

    python scripts/fsync_parallel.py [--dir DIR] [--seconds 1] [--writers 1,2,4,16,64]

Each writer is a thread with its own file in DIR (default: the temporary directory, where
the testbeds' state dirs live) and rewrites 64 bytes of it, then fdatasyncs, for
`--seconds` (`oae.bench.testbed_convergence.parallel_stores`, which the bench's
`store_cpu_us` uses too): what an epoch record or a link register store costs, as
`oae bench convergence_testbed` measures one alone (`fsync_us`). A fleet of node processes
on one machine shares one disk: this is the rate all of them together can store at.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from oae.bench.testbed_convergence import parallel_stores


def rate(writers: int, seconds: float, where: str) -> float:
    """fdatasyncs per second, all writers together."""
    stores, elapsed, _ = parallel_stores(writers, seconds, where)
    return stores / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="file system to measure")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--writers", default="1,2,4,16,64", help="comma-separated counts")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    for n in (int(x) for x in args.writers.split(",")):
        print(f"{n:4d} writers: {rate(n, args.seconds, args.dir):9,.0f} fdatasyncs/s in all",
              flush=True)  # fmt: skip
    print(f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
