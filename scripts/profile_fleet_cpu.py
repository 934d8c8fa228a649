"""Where the CPU of a fleet of `oae node --epochs` processes goes, idle and per epoch
transition (root; one-off profiling; docs/convergence.md §11.11).

    python scripts/profile_fleet_cpu.py ring 64 [--epochs 12] [--idle 2] [--perf DIR]

Brings up a namespace testbed of SHAPE and NODES (direct veths), starts the fleet of
`oae bench convergence_testbed` (oae.epoch.fleet, bilateral), waits until every link is
ready, then measures two windows:

- idle, for `--idle` seconds: links kept alive, nothing to do;
- `--epochs` transitions initiated by node 0, one after the other (propose, wait for the
  initiator's outcome: no probes, no harvests in the window).

In each window the CPU time is read per thread from /proc/PID/task/TID/schedstat (ns,
exact) and split by thread: the node processes' `oae-pump` threads, their epoch runner
(`oae-epochrun`), their main (Python/Trio) thread and their other threads; this driver
process; kernel threads (ksoftirqd, kworker, jbd2, other); and the machine total from
/proc/stat (idle excluded), whose remainder is everything else that ran. The pumps'
counters (frames sent and received, wake-ups) are summed from the nodes' status. With
`--perf DIR` the transitions window is also sampled with `perf record -a -g -e cpu-clock`
and the top symbols per thread group are printed (DIR keeps perf.data).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import trio

from oae.epoch.fleet import Fleet, NodeProcess, open_fleet, run_trio
from oae.epoch.layers import transition_timeout
from oae.testbed import manager
from oae.testbed.topology import loads

PUMP_KEYS = ("tx_frames", "rx_frames", "wakeups", "persists", "tx_calls", "rx_calls")


def threads(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (comm, CPU ns so far) for every thread of `pid` ({} if gone)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for t in tids:
        try:
            comm = Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()
            ns = int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[int(t)] = (comm, ns)
    return out


def switches(pid: int, tid: int) -> int:
    """Voluntary context switches of a thread so far (its wake-ups from sleep)."""
    try:
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def kernel_threads() -> dict[int, tuple[str, int]]:
    """Kernel threads (children of kthreadd) and their CPU ns."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[1] != "2":
                continue
        except (OSError, IndexError):
            continue
        out.update({int(p) * 100000 + t: v for t, v in threads(int(p)).items()})
    return out


def machine_ns() -> int:
    """Busy CPU time of the whole machine (all columns of /proc/stat's cpu line but idle
    and iowait), in ns."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(f) - f[3] - f[4] - (f[8] if len(f) > 8 else 0) - (f[9] if len(f) > 9 else 0)
    return busy * 10**9 // os.sysconf("SC_CLK_TCK")


def node_group(pid: int, tid: int, comm: str) -> str:
    if comm == "oae-pump":
        return "node:pump"
    if comm == "oae-epochrun":
        return "node:runner"
    if tid == pid:
        return "node:main (Python/Trio)"
    return f"node:thread {comm}" if not comm.startswith("Trio") else "node:trio worker"


def kernel_group(comm: str) -> str:
    for prefix in ("ksoftirqd", "kworker", "jbd2", "rcu"):
        if comm.startswith(prefix):
            return f"kernel:{prefix}"
    return "kernel:other"


class Snapshot:
    """CPU per thread group, machine busy time and pump counters at one instant."""

    def __init__(self, fleet: Fleet) -> None:
        self.pump: dict[str, int] = {}
        self.at = time.monotonic()
        self.by_tid: dict[tuple[int, int], tuple[str, int]] = {}
        for n in fleet.nodes:
            if n.proc is None:
                continue
            pid = n.proc.pid
            for tid, (comm, ns) in threads(pid).items():
                self.by_tid[(pid, tid)] = (node_group(pid, tid, comm), ns)
        me = os.getpid()
        for tid, (_, ns) in threads(me).items():
            self.by_tid[(me, tid)] = ("driver (fleet, this script)", ns)
        for tid, (comm, ns) in kernel_threads().items():
            self.by_tid[(0, tid)] = (kernel_group(comm), ns)
        self.machine = machine_ns()
        self.switches: collections.Counter[str] = collections.Counter()
        for n in fleet.nodes:
            if n.proc is not None:
                for tid, (comm, _) in threads(n.proc.pid).items():
                    group = node_group(n.proc.pid, tid, comm)
                    self.switches[group] += switches(n.proc.pid, tid)


def delta(a: Snapshot, b: Snapshot) -> dict[str, float]:
    """ns per thread group between two snapshots (threads born in between count whole)."""
    out: collections.Counter[str] = collections.Counter()
    for key, (group, ns) in b.by_tid.items():
        out[group] += ns - a.by_tid.get(key, (group, 0))[1]
    named = sum(out.values())
    out["rest of the machine (interrupts, other processes)"] = (b.machine - a.machine) - named
    return dict(out)


async def pump_counters(fleet: Fleet) -> dict[str, int]:
    """The pumps' counters summed over every link end (one status request per node: read
    before a window starts and after it ends, so its CPU is not in the window)."""
    total: collections.Counter[str] = collections.Counter()

    async def one(node: NodeProcess) -> None:
        st = await node.request({"op": "status"})
        for ln in st["status"]["links"] if "status" in st else st["links"]:
            for k in PUMP_KEYS:
                total[k] += ln["pump"][k]
            total["link_ends"] += 1

    await fleet.each(one)
    return dict(total)


def report(title: str, a: Snapshot, b: Snapshot, per: float, unit: str, nodes: int) -> None:
    d = delta(a, b)
    print(f"\n== {title}: {b.at - a.at:.2f} s wall; CPU in ms {unit}")
    for group, ns in sorted(d.items(), key=lambda kv: -kv[1]):
        print(f"  {ns / 1e6 / per:9.2f}  {group}")
    node = sum(v for k, v in d.items() if k.startswith("node:"))
    print(f"  {node / 1e6 / per:9.2f}  = all node processes")
    print(f"  {(b.machine - a.machine) / 1e6 / per:9.2f}  = machine (busy)")
    ends = b.pump.get("link_ends", 1)
    for k in PUMP_KEYS:
        v = b.pump.get(k, 0) - a.pump.get(k, 0)
        print(f"  pumps' {k}: {v / per:,.0f} {unit} in all, {v / per / ends:,.1f} per link end")
    mains = sorted((ns - a.by_tid.get(key, (g, 0))[1]) / 1e6 / per
                   for key, (g, ns) in b.by_tid.items() if g.startswith("node:main"))
    if mains:
        print(f"  node:main per node: median {mains[len(mains) // 2]:.3f}, max {mains[-1]:.3f}"
              f" (top 3 {[round(m, 3) for m in mains[-3:]]})")
    for group in sorted(b.switches):
        v = b.switches[group] - a.switches.get(group, 0)
        print(f"  wake-ups of {group}: {v / per:,.0f} {unit} in all, "
              f"{v / per / nodes:,.1f} per node")
    print(f"  ({nodes} nodes, {ends} link ends)")


def perf_top(data: Path, pids: set[int], limit: int) -> None:
    """The top symbols of the node processes' threads by thread name, from perf.data."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,ip,sym",
                          "-G"], capture_output=True, text=True, check=False).stdout  # fmt: skip
    by: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3 or "/" not in parts[1]:
            continue
        pid = int(parts[1].split("/")[0])
        comm = parts[0]
        sym = " ".join(parts[3:]) or "?"
        total += 1
        group = comm if pid in pids else ("kernel" if pid == 0 else f"other:{comm}")
        by[group][sym] += 1
    print(f"\n== perf samples over the transitions: {total}")
    for group, c in sorted(by.items(), key=lambda kv: -sum(kv[1].values()))[:8]:
        n = sum(c.values())
        print(f"  {group}: {n} samples ({100 * n / max(total, 1):.1f} %)")
        for sym, k in c.most_common(limit):
            print(f"      {100 * k / n:5.1f} %  {sym}")


async def main(tb: manager.Testbed, args: argparse.Namespace) -> None:
    async with open_fleet(tb, "bilateral", 1, print) as fleet:
        limit = transition_timeout(fleet.topo)
        await fleet.all_ready(limit)
        await trio.sleep(0.5)
        pump = await pump_counters(fleet)
        a = Snapshot(fleet)
        a.pump = pump
        await trio.sleep(args.idle)
        b = Snapshot(fleet)
        b.pump = await pump_counters(fleet)
        report("idle", a, b, b.at - a.at, "per second", len(fleet.nodes))
        node0 = fleet.nodes[0]
        perf = None
        if args.perf:
            Path(args.perf).mkdir(parents=True, exist_ok=True)
            data = str(Path(args.perf) / "perf.data")
            perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999",
                                     "-a", "-g", "-o", data])  # fmt: skip
            await trio.sleep(1.0)
        pump = await pump_counters(fleet)
        a = Snapshot(fleet)
        a.pump = pump
        conv = []
        for _ in range(args.epochs):
            while True:
                ans = await node0.request({"op": "epoch-propose"})
                if ans["wave"] is not None:
                    break
                await trio.sleep(0.01)
            r = await node0.request({"op": "epoch-outcome", "wave": ans["wave"],
                                     "timeout": limit}, limit)  # fmt: skip
            assert r["outcome"] == "committed", r
            conv.append((r["at"] - ans["at"]) * 1e3)
        b = Snapshot(fleet)
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        b.pump = await pump_counters(fleet)
        report(f"{args.epochs} transitions", a, b, args.epochs, "per transition",
               len(fleet.nodes))
        conv.sort()
        print(f"  convergence ms (initiator): median {conv[len(conv) // 2]:.1f}, "
              f"all {[round(c, 1) for c in conv]}")
        if perf is not None:
            pids = {n.proc.pid for n in fleet.nodes if n.proc is not None}
            perf_top(Path(args.perf) / "perf.data", pids, args.top)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("shape", choices=("ring", "tree", "line", "star"))
    ap.add_argument("nodes", type=int)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--perf", help="sample the transitions with perf into this directory")
    ap.add_argument("--top", type=int, default=12, help="symbols shown per thread group")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    text = f'[topology]\nname = "pcpu{os.getpid()}"\nshape = "{args.shape}"\nnodes = {args.nodes}\n'
    with manager.running(loads(text, "<profile_fleet_cpu>")) as tb:
        run_trio(partial(main, tb, args))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    cli()
