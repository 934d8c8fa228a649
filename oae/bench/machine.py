"""Whether the machine was quiet while a bench part ran: a figure taken while other work
competed for the CPUs is not a result.

On a 2-core machine the bench's own threads use both cores (a flood's sender and receiver,
two link pumps), so the load average cannot tell its own load from anyone else's: it lags
by a minute, counts the bench's threads and its previous parts, and a part that runs 20 s
moves it by about as much as a competing process would. What disturbs a measurement is
CPU time taken by other processes while it runs. That is measured directly: the CPU time
the whole machine was busy (/proc/stat: user, nice, system, irq, softirq) minus this
process's own (os.times(), all threads, waited-for children), over the part's wall time,
in CPUs; plus the time the hypervisor gave our virtual CPUs to others (steal). Softirq
work done in our threads' context (a veth delivering our frames) is charged to them.

A part is quiet when other processes used at most OTHER_CPU_MAX CPUs on average and steal
stayed below STEAL_CPU_MAX; its ratios are then results. The load averages before and
after are kept as the record the figures are quoted with.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

OTHER_CPU_MAX = 0.25  # CPUs (of all of them) other processes may use during a part
STEAL_CPU_MAX = 0.10  # CPUs the hypervisor may take from us during a part
_BUSY_FIELDS = (0, 1, 2, 5, 6)  # /proc/stat cpu line: user nice system . . irq softirq
_STEAL_FIELD = 7


@dataclass(frozen=True)
class Sample:
    """The machine's counters at one instant."""

    wall: float
    busy: float  # CPU-seconds the whole machine spent busy since boot
    steal: float  # CPU-seconds stolen by the hypervisor since boot
    own: float  # CPU-seconds of this process (all threads, waited-for children)
    load: tuple[float, float, float]


def _proc_stat() -> tuple[float, float]:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    busy = sum(fields[i] for i in _BUSY_FIELDS if i < len(fields))
    steal = fields[_STEAL_FIELD] if len(fields) > _STEAL_FIELD else 0
    return busy / tick, steal / tick


def sample() -> Sample:
    busy, steal = _proc_stat()
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return Sample(time.monotonic(), busy, steal, own, os.getloadavg())


def conditions(before: Sample, after: Sample) -> dict[str, object]:
    """What the machine did while a part ran between two samples, and whether that makes
    its figures results."""
    wall = max(after.wall - before.wall, 1e-9)
    other = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall
    steal = max(0.0, after.steal - before.steal) / wall
    quiet = other <= OTHER_CPU_MAX and steal <= STEAL_CPU_MAX
    return {
        "load_before": [round(x, 2) for x in before.load],
        "load_after": [round(x, 2) for x in after.load],
        "other_cpu": round(other, 3),
        "steal_cpu": round(steal, 3),
        "own_cpu": round((after.own - before.own) / wall, 3),
        "seconds": round(wall, 1),
        "quiet": quiet,
        "rule": f"quiet: other processes <= {OTHER_CPU_MAX} CPUs and steal <= {STEAL_CPU_MAX}"
        " CPUs on average over the part",
    }


def describe(part: str, cond: dict[str, object]) -> str:
    """One line for the progress output."""
    lb, la = cond["load_before"], cond["load_after"]
    assert isinstance(lb, list) and isinstance(la, list)
    state = "quiet" if cond["quiet"] else "LOADED: its ratios are not results"
    return (
        f"[bench] {part}: load average {lb[0]:.2f} -> {la[0]:.2f}, other processes "
        f"{cond['other_cpu']:.2f} CPUs, steal {cond['steal_cpu']:.2f} CPUs: {state}"
    )
