"""`oae converge`: run N epoch transitions of one algorithm on a simulated network and
report the same metrics for every algorithm.

Per transition the harness picks an initiator (seeded), injects the faults asked for
(node crash-restarts and link flaps at random instants of the transition, frame loss on
every link), and probes the state the cluster would recover if every node crashed at a
random instant (`probes` per transition, plus one before every injected crash). A probe
is *mixed-epoch* when the nodes would restore different epochs, and *inconsistent* when
they restore one epoch whose checkpoints do not form a consistent cut.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol

from oae.epoch.bilateral import Bilateral
from oae.epoch.sim import NetParams, Process, Sim, Topology
from oae.errors import UsageError


class Algorithm(Protocol):
    name: str
    checks_cut: bool

    def factory(self, sim: Sim, v: int, nbrs: list[int], store: object) -> Process: ...
    def new_store(self) -> object: ...
    def begin(self, sim: Sim, initiator: int) -> bool: ...
    def outcome(self) -> tuple[str, float] | None: ...
    def all_links_time(self) -> float | None: ...
    def critical_path_exchanges(self, topo: Topology, initiator: int) -> float: ...
    def recovered(self, sim: Sim) -> dict[int, tuple[int, dict[int, int]]]: ...


def algorithms() -> dict[str, Callable[[], Algorithm]]:
    from oae.epoch import baselines

    return {
        "bilateral": Bilateral,
        "snap-t": baselines.SnapT,
        "rolling": baselines.Rolling,
        "2pc": baselines.TwoPC,
        "chandy-lamport": baselines.ChandyLamport,
    }


def quantile(xs: list[float], q: float) -> float | None:
    """Linear-interpolated quantile (None for no data)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def run(
    algorithm: str,
    topo: Topology,
    epochs: int,
    seed: int = 1,
    params: NetParams | None = None,
    crash_rate: float = 0.0,
    flap_rate: float = 0.0,
    probes: int = 2,
    initiator: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Run `epochs` transitions and return the metrics (see module docstring)."""
    makers = algorithms()
    if algorithm not in makers:
        raise UsageError(f"unknown algorithm {algorithm!r}; choose from {', '.join(makers)}")
    if epochs < 1:
        raise UsageError("--epochs must be >= 1")
    if initiator is not None and not 0 <= initiator < topo.n:
        raise UsageError(f"--initiator {initiator} is not a node of {topo.name} (0..{topo.n - 1})")
    p = params or NetParams()
    algo = makers[algorithm]()
    sim = Sim(topo, p, seed, algo.factory, algo.new_store)
    frng = random.Random(seed * 7919 + 1)
    sim.boot()
    sim.run(lambda: False, 4 * p.rtt_us)
    conv: list[float] = []
    all_links: list[float] = []
    paths: list[float] = []
    counts = {"committed": 0, "aborted": 0, "stuck": 0}
    probe_stats = {"probes": 0, "mixed_epoch_states": 0, "inconsistent_states": 0}

    def probe() -> None:
        restored = algo.recovered(sim)
        probe_stats["probes"] += 1
        if len({e for e, _ in restored.values()}) != 1:
            probe_stats["mixed_epoch_states"] += 1
        elif algo.checks_cut and not sim.check_cut(restored):
            probe_stats["inconsistent_states"] += 1

    def crash(v: int) -> None:
        if sim.alive(v):
            probe()
            sim.crash(v, frng.uniform(*p.downtime_us))

    backoff = 0.0
    for i in range(epochs):
        t0 = sim.now + 5 * p.rtt_us + backoff
        sim.run(lambda: False, t0)
        who = initiator if initiator is not None else frng.randrange(topo.n)
        ecc = topo.eccentricity(who)
        window = (2 * ecc + 4) * p.rtt_us + 3 * p.persist_us
        for _ in range(_poisson(frng, crash_rate)):
            v = frng.randrange(topo.n)
            sim.at(t0 + frng.uniform(0, window), lambda v=v: crash(v))
        for _ in range(_poisson(frng, flap_rate)):
            a, b = topo.edges[frng.randrange(len(topo.edges))]
            sim.at(
                t0 + frng.uniform(0, window),
                lambda a=a, b=b: sim.flap(a, b, frng.uniform(*p.downtime_us)),
            )
        for _ in range(probes):
            sim.at(t0 + frng.uniform(0, window), probe)
        deadline = t0 + 20 * window + 4 * p.downtime_us[1]
        while not algo.begin(sim, who):
            # The initiator is down or still busy: try again shortly (any live node).
            if not sim.run(lambda: False, sim.now + p.rtt_us) and sim.now > deadline:
                break
            if not sim.alive(who):
                who = frng.randrange(topo.n)
        start = sim.now
        if not sim.run(lambda: algo.outcome() is not None, deadline):
            counts["stuck"] += 1
            backoff = p.downtime_us[1]
            continue
        kind, t = algo.outcome()  # type: ignore[misc]
        counts[kind] += 1
        # After an abort, back off for as long as a fault may last before trying again.
        backoff = p.downtime_us[1] if kind == "aborted" else 0.0
        if kind == "committed":
            conv.append(t - start)
            paths.append(algo.critical_path_exchanges(topo, who))
            t_all = algo.all_links_time()
            if t_all is not None:
                all_links.append(t_all - start)
        if progress:
            progress(f"[converge] {algorithm} transition {i + 1}/{epochs}: {kind}")
    # Let in-flight work settle, then one last probe of the final state.
    sim.run(lambda: False, sim.now + 20 * p.rtt_us + 5 * p.persist_us + p.downtime_us[1])
    probe()
    rtt = 2 * (quantile(sim.one_way, 0.5) or p.rtt_us / 2)
    median = quantile(conv, 0.5)
    path = quantile(paths, 0.5)
    ratio = None if median is None or not path else median / (path * rtt)
    return {
        "algorithm": algorithm,
        "network": "simulated",
        "topology": topo.name,
        "nodes": topo.n,
        "links": len(topo.edges),
        "epochs": epochs,
        "seed": seed,
        **counts,
        "median_convergence_us": median,
        "p99_convergence_us": quantile(conv, 0.99),
        "median_all_links_us": quantile(all_links, 0.5),
        "critical_path_exchanges": path,
        "median_link_rtt_us": rtt,
        "convergence_ratio": ratio,
        "mixed_epoch_frames": sim.stats["mixed_epoch_frames"],
        "uncommitted_tag_frames": sim.stats["uncommitted_tag_frames"],
        **probe_stats,
        "frames_sent": sim.stats["frames_sent"],
        "held_frames": sim.stats["held_frames"],
        "control_messages": sim.stats["control_messages"],
        "crashes": sim.stats["crashes"],
        "flaps": sim.stats["flaps"],
    }
