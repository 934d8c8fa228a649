"""`oae bench convergence_testbed`: bilateral convergence on real frames, run by `oae node
--epochs` processes (one per testbed node), against the physical floor of the same links
and disk, and against 2pc on the same testbed, the same kind of node processes, in the
same run.

For each configuration a namespace testbed comes up (direct veths, no impairment). First
the floor is measured: the bare C ping-pong on one of its links (half its round trip is
the C one-way frame latency) and the median fdatasync of a small in-place write in the
file system of the node processes' state dirs. Then `epochs` transitions of the bilateral
protocol run on all its links, initiated by node 0 (oae.epoch.fleet), convergence timed
inside node 0's process, from its proposal to its Conv(P, e+1). The figures:

- `{cfg}_floor_us`: the physical floor of a wave with one durable record per hop: the
  wave legs on the critical path (4 x the initiator's eccentricity: PROPOSE out, ACCEPT
  back, COMMIT out, DONE back) x (C one-way frame latency + median fdatasync), and
  `{cfg}_ratio_vs_floor`, median convergence / floor (issue 13's target: <= 2);
- diagnostics of the current stack: the median CONTROL transfer latency (submit to
  outcome, durable link state) and issue 6's ratio against critical-path exchanges (2 x
  eccentricity) x that latency; the median one-way CONTROL delivery and the floor it sets
  under that ratio (2 x delivery / CONTROL latency); critical path x C round trip;
- `{cfg}_cpu_ms_per_transition`: the node processes' user + system CPU over the
  transitions per transition, next to their CPU while idle (`{cfg}_idle_cpu_ms_per_s`,
  measured for `--seconds` before the transitions);
- `{cfg}_work_floor_us`: the floor of this machine rather than of the wire and the disk:
  every link's four legs, each one frame and one store as the floor counts them, at their
  CPU cost measured in the same run (`{cfg}_frame_cpu_us`: the bare C ping-pong's CPU per
  frame, both ends; `{cfg}_store_cpu_us`: a store's CPU with 16 writers at once, as a
  level of a tree stores together), spread over all of the machine's CPUs. A testbed runs
  every node on one machine: where this exceeds twice the floor (`{cfg}_work_over_floor`
  > 2), issue 13's target cannot be met here with stores made as the nodes make them.

Then, on the same testbed, `epochs` transitions of `2pc` in node processes (the simulated
baseline's algorithm on the same links, its coordinator learning everything over them,
oae.epoch.twopc_testbed), coordinated by node 0: its convergence (proposal to the
coordinator holding every node's commit ACK), its critical path (PREPARE/YES and
COMMIT/ACK relayed to and from the farthest node: counted as bilateral's), its ratio to
the same floor, the median CONTROL transfer latency of its own run and its CPU, keys
`{cfg}_2pc_*`; `{cfg}_2pc_over_bilateral` compares the two medians.
`oae bench convergence_testbed --nodes 64` measures a ring and a tree of 64 nodes instead
of the default configurations.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial

from oae.bench.cli import BenchOptions
from oae.epoch.fleet import run_fleet, run_trio, testbed_topology
from oae.runtime import baseline
from oae.runtime.sock import open_socket
from oae.testbed import manager
from oae.testbed.kernel import require_root
from oae.testbed.manager import Testbed
from oae.testbed.topology import loads

CONFIGS = [("ring", 8), ("tree", 8), ("ring", 16)]
CPUS = len(os.sched_getaffinity(0))  # every node process of a testbed shares these
QUICK_CONFIGS = [("ring", 4)]


def _c_round_trip_us(tb: Testbed, seconds: float) -> tuple[float, float]:
    """µs per round trip of one bare C ping-pong run (blocking) on the testbed's first link,
    and its CPU in µs per frame (both ends' threads: one send, one wake-up, one receive)."""
    lk = tb.state["links"][0]
    a = open_socket(lk["if_a"], tb.ns(lk["a"]))
    b = open_socket(lk["if_b"], tb.ns(lk["b"]))
    try:
        res = baseline.pingpong(a, b, seconds, False)
        return 1e6 / res.rate, res.cpu_s * 1e6 / (2 * res.count)
    finally:
        a.close()
        b.close()


def fdatasync_us(writes: int = 200, where: str | None = None) -> float:
    """Median time of one 64-byte in-place write + fdatasync (what an epoch record or a
    link register store costs) in the file system of `where` (default: the temporary
    directory, where the node processes' state dirs live), in µs."""
    with tempfile.NamedTemporaryFile(dir=where or tempfile.gettempdir()) as f:
        fd = f.fileno()
        os.pwrite(fd, bytes(4096), 0)
        os.fdatasync(fd)
        times = []
        for i in range(writes):
            t0 = time.perf_counter()
            os.pwrite(fd, i.to_bytes(8, "big") * 8, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def parallel_stores(
    writers: int, seconds: float, where: str | None = None
) -> tuple[int, float, float]:
    """`writers` threads, each rewriting 64 bytes of its own file in `where` (default: the
    temporary directory, where the state dirs live) and fdatasyncing, for `seconds`: the
    stores made in all, the wall time and the writing threads' own CPU (s)."""
    with tempfile.TemporaryDirectory(dir=where or tempfile.gettempdir()) as d:
        fds = []
        for i in range(writers):
            fd = os.open(os.path.join(d, f"w{i}"), os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(fd, bytes(4096), 0)
            os.fdatasync(fd)
            fds.append(fd)
        done: list[tuple[int, float]] = []
        stop = time.monotonic() + seconds

        def write(fd: int) -> None:
            k, cpu0 = 0, time.thread_time()
            while time.monotonic() < stop:
                os.pwrite(fd, k.to_bytes(8, "big") * 8, 0)
                os.fdatasync(fd)
                k += 1
            done.append((k, time.thread_time() - cpu0))

        threads = [threading.Thread(target=write, args=(fd,)) for fd in fds]
        t0 = time.monotonic()
        try:
            for t in threads:
                t.start()
        finally:
            for t in threads:
                t.join()
            for fd in fds:
                os.close(fd)
    return sum(k for k, _ in done), time.monotonic() - t0, sum(c for _, c in done)


def store_cpu_us(writers: int = 16, seconds: float = 0.5) -> float:
    """CPU per store (the writing threads' own, µs) with `writers` storing at once: a
    store's cost when many nodes store together, as a tree's level does (lower than one
    writer's alone)."""
    stores, _, cpu = parallel_stores(writers, seconds)
    return cpu * 1e6 / stores if stores else 0.0


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
        say = _progress(opts.progress, key)
        with manager.running(loads(text, f"<bench {key}>")) as tb:
            # the floor first, on the same links and disk, before any node process runs
            c_rtt, frame_cpu = _c_round_trip_us(tb, opts.seconds)
            fsync = fdatasync_us()
            store_cpu = store_cpu_us()
            topo = testbed_topology(tb)[1]
            legs = 4 * topo.eccentricity(0)
            all_legs = 4 * len(topo.edges)
            r = run_trio(partial(run_fleet, tb, epochs, 1, 0, say, idle_s=opts.seconds))
            t = run_trio(partial(run_fleet, tb, epochs, 1, 0, say, algorithm="2pc"))
        for x in (r, t):
            say(
                f"{x['algorithm']}: committed {x['committed']}, aborted {x['aborted']}, "
                f"stuck {x['stuck']}; link-end downs {x['link_downs']}, lost CONTROL "
                f"messages {x['lost_control_messages']}"
            )
        floor = legs * (c_rtt / 2 + fsync)
        work = all_legs * (frame_cpu + store_cpu) / CPUS
        # A fault-free bilateral run sends no CONTROL transfer that is one exchange (its
        # wave transfers are the wave's legs): the exchange is then 2pc's, same links.
        exchange = r["median_link_rtt_us"] or t["median_link_rtt_us"]
        delivery = r["median_control_delivery_us"]
        median = r["median_convergence_us"]
        path = r["critical_path_exchanges"]
        bound = path * exchange if path and exchange else None  # type: ignore[operator]
        median2 = t["median_convergence_us"]

        def ratio(a: object, b: float | None) -> float | None:
            return a / b if isinstance(a, float) and b else None

        out.update({
            f"{key}_bilateral_us": median,
            f"{key}_committed": r["committed"],
            f"{key}_wave_legs": legs,
            f"{key}_c_one_way_us": c_rtt / 2,
            f"{key}_fsync_us": fsync,
            f"{key}_floor_us": floor,
            f"{key}_ratio_vs_floor": ratio(median, floor),
            f"{key}_frame_cpu_us": frame_cpu,
            f"{key}_store_cpu_us": store_cpu,
            f"{key}_work_floor_us": work,
            f"{key}_work_over_floor": work / floor,
            f"{key}_ratio_vs_work_floor": ratio(median, work),
            f"{key}_cpu_ms_per_transition": r["cpu_ms_per_transition"],
            f"{key}_idle_cpu_ms_per_s": r["idle_cpu_ms_per_s"],
            f"{key}_critical_path_exchanges": path,
            f"{key}_c_rtt_us": c_rtt,
            f"{key}_c_bound_us": path * c_rtt if path else None,  # type: ignore[operator]
            f"{key}_link_exchange_us": exchange,
            f"{key}_ratio_vs_c": ratio(median, path * c_rtt if path else None),  # type: ignore[operator]
            f"{key}_ratio_vs_exchange": ratio(median, bound),
            f"{key}_control_delivery_us": delivery,
            f"{key}_ratio_floor": ratio(2 * delivery if delivery else None, exchange),  # type: ignore[operator]
            f"{key}_2pc_us": median2,
            f"{key}_2pc_committed": t["committed"],
            f"{key}_2pc_critical_path_exchanges": t["critical_path_exchanges"],
            f"{key}_2pc_link_exchange_us": t["median_link_rtt_us"],
            f"{key}_2pc_ratio_vs_exchange": t["convergence_ratio"],
            f"{key}_2pc_ratio_vs_c": ratio(median2, path * c_rtt if path else None),  # type: ignore[operator]
            f"{key}_2pc_ratio_vs_floor": ratio(median2, floor),
            f"{key}_2pc_cpu_ms_per_transition": t["cpu_ms_per_transition"],
            f"{key}_2pc_over_bilateral": ratio(median2, median),  # type: ignore[arg-type]
        })  # fmt: skip
        units.update(
            {
                f"{key}_bilateral_us": "µs median convergence (proposal to Conv(P, e+1), "
                "timed in the initiator's process)",
                f"{key}_committed": "transitions committed",
                f"{key}_wave_legs": "one-way legs on the critical path (4 x eccentricity "
                "of node 0: PROPOSE out, ACCEPT back, COMMIT out, DONE back)",
                f"{key}_c_one_way_us": "µs, half the bare C ping-pong round trip (blocking), "
                "same link",
                f"{key}_fsync_us": "µs median 64-byte in-place write + fdatasync, state "
                "dirs' file system",
                f"{key}_floor_us": "µs: wave legs x (C one-way frame + median fdatasync)",
                f"{key}_ratio_vs_floor": "x (convergence / physical floor)",
                f"{key}_frame_cpu_us": "µs CPU per frame of the bare C ping-pong (both "
                "ends' threads), same link",
                f"{key}_store_cpu_us": "µs CPU per 64-byte in-place write + fdatasync, 16 "
                "writers at once (their threads' own), state dirs' file system",
                f"{key}_work_floor_us": f"µs: every link's 4 legs ({all_legs}) x (frame CPU "
                f"+ store CPU) / {CPUS} CPUs: this machine's least CPU time for the "
                "floor's own frames and stores",
                f"{key}_work_over_floor": "x (work floor / floor: above 2, 2 x floor is "
                "out of reach with stores made as the nodes make them)",
                f"{key}_ratio_vs_work_floor": "x (convergence / work floor)",
                f"{key}_cpu_ms_per_transition": "ms of CPU (user + system, all node "
                "processes) per transition",
                f"{key}_idle_cpu_ms_per_s": "ms of CPU per second of the same node "
                "processes, idle (links kept alive)",
                f"{key}_critical_path_exchanges": "link exchanges (2 x eccentricity of node 0)",
                f"{key}_c_rtt_us": "µs per round trip, bare C ping-pong (blocking), same link",
                f"{key}_c_bound_us": "µs: critical-path exchanges x C round trip",
                f"{key}_link_exchange_us": "µs median CONTROL transfer latency (send to "
                "outcome) of the bilateral run, or of the 2pc run when bilateral's had none",
                f"{key}_ratio_vs_c": "x (convergence / C bound)",
                f"{key}_ratio_vs_exchange": "x (convergence / critical path x CONTROL latency)",
                f"{key}_control_delivery_us": "µs median one-way CONTROL delivery (release to "
                "the peer link handing it over, durable at the peer: a wave transfer's "
                "commit leg)",
                f"{key}_ratio_floor": "x (2 x delivery / CONTROL latency: ratio_vs_exchange "
                "if every wave hop cost only the link's delivery)",
                f"{key}_2pc_us": "µs median 2pc convergence (proposal to every commit ACK "
                "at the coordinator, timed in its process)",
                f"{key}_2pc_committed": "transitions committed",
                f"{key}_2pc_critical_path_exchanges": "link exchanges (2 x eccentricity of "
                "node 0: PREPARE/YES and COMMIT/ACK relayed to the farthest node)",
                f"{key}_2pc_link_exchange_us": "µs median CONTROL transfer latency "
                "(send to outcome) in the 2pc run",
                f"{key}_2pc_ratio_vs_exchange": "x (2pc convergence / critical path x its "
                "CONTROL latency)",
                f"{key}_2pc_ratio_vs_c": "x (2pc convergence / C bound)",
                f"{key}_2pc_ratio_vs_floor": "x (2pc convergence / bilateral's physical floor)",
                f"{key}_2pc_cpu_ms_per_transition": "ms of CPU (user + system, all node "
                "processes) per 2pc transition",
                f"{key}_2pc_over_bilateral": "x (2pc median convergence / bilateral's)",
            }
        )
    out["units"] = units
    return out
