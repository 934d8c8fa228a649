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

import argparse
import json
import math
import random
import sys
from collections.abc import Callable
from typing import Protocol

from oae.epoch.bilateral import Bilateral
from oae.epoch.sim import NetParams, Process, Sim, Topology, make_topology
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


# --------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    names = ", ".join(algorithms())
    p = sub.add_parser(
        "converge",
        help="run N epoch transitions with one or more algorithms and compare them",
        description=__doc__
        + "\nBy default the network is simulated (virtual clock, modelled AIT links; see\n"
        'docs/convergence.md) and results say "network": "simulated". With --testbed,\n'
        "TOPOLOGY names a running testbed (or a topology file: one is brought up for the\n"
        "run) and bilateral, snap-t, rolling and 2pc run on its real links in `oae node`\n"
        'processes, with application traffic ("network": "testbed").\n\nAlgorithms: '
        + names
        + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "topology",
        metavar="TOPOLOGY",
        help="a shape (chain, ring, star, tree, mesh, grid), a netns/*.toml file, or with "
        "--testbed the name of a running testbed",
    )
    p.add_argument(
        "--algorithm",
        default="bilateral",
        help=f"comma-separated, or 'all' (default bilateral): {names}",
    )
    p.add_argument("--epochs", type=int, default=50, help="transitions to run (default 50)")
    p.add_argument("--nodes", type=int, help="nodes of a shape (default 8, or the file's)")
    p.add_argument(
        "--crash-rate",
        type=float,
        default=0.0,
        help="mean node crash-restarts per transition (default 0)",
    )
    p.add_argument(
        "--flap-rate", type=float, default=0.0, help="mean link failures per transition (default 0)"
    )
    p.add_argument(
        "--loss",
        type=float,
        default=0.0,
        help="per-transfer loss probability, paid as retransmission delay",
    )
    p.add_argument(
        "--refuse-rate",
        type=float,
        default=0.0,
        help="probability that a node's checkpoint write fails",
    )
    p.add_argument("--rtt-us", type=float, default=40.0, help="link round trip (default 40)")
    p.add_argument(
        "--persist-us",
        type=float,
        default=200.0,
        help="median checkpoint write latency (default 200)",
    )
    p.add_argument(
        "--app-period-us",
        type=float,
        help="one application frame per link direction per period; 0: none (default 10, "
        "with --testbed 50000)",
    )
    p.add_argument(
        "--skew-us",
        type=float,
        default=50.0,
        help="with --testbed: clock skew sigma of snap-t and rolling nodes (default 50, as "
        "the simulated baselines)",
    )
    p.add_argument(
        "--probes", type=int, default=2, help="recovered-state probes per transition (default 2)"
    )
    p.add_argument("--initiator", type=int, help="initiating node (default: random each time)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--testbed",
        action="store_true",
        help="TOPOLOGY names a running testbed (`oae testbed up`), or is a topology file to "
        "bring one up for the run and down after: run bilateral, snap-t, rolling or 2pc on its "
        "real links, one `oae node --epochs` process per testbed node driven through its "
        "control socket, with application traffic; --crash-rate, --persist-us (snap-t "
        "writes), --skew-us and --app-period-us apply (a crash is SIGKILL of a node "
        "process, restarted from its state dir 0.6-1 s later), the testbed's own links set "
        "loss and delay, the other simulation flags do not apply",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    makers = algorithms()
    names = list(makers) if args.algorithm == "all" else args.algorithm.split(",")
    for name in names:
        if name not in makers:
            raise UsageError(f"unknown algorithm {name!r}; choose from {', '.join(makers)}, all")
    for flag in ("crash_rate", "flap_rate", "refuse_rate", "loss"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0")
    if args.loss >= 1 or args.refuse_rate > 1:
        raise UsageError("--loss must be < 1 and --refuse-rate <= 1")
    if args.skew_us < 0:
        raise UsageError("--skew-us must be >= 0")
    if args.app_period_us is None:
        args.app_period_us = 50_000.0 if args.testbed else 10.0
    if args.rtt_us <= 0 or args.persist_us <= 0 or args.app_period_us < 0 or args.probes < 0:
        raise UsageError("--rtt-us and --persist-us must be > 0, --app-period-us and --probes >= 0")
    if args.testbed:
        return _cli_testbed(args, names)
    topo = make_topology(args.topology, args.nodes)
    params = NetParams(
        rtt_us=args.rtt_us,
        loss=args.loss,
        rto_us=3 * args.rtt_us,
        persist_us=args.persist_us,
        refuse_rate=args.refuse_rate,
        app_period_us=args.app_period_us,
        downtime_us=(2.5 * args.rtt_us, 25 * args.rtt_us),
    )

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: dict[str, dict[str, object]] = {}
    for name in names:
        results[name] = run(
            name,
            topo,
            args.epochs,
            args.seed,
            params,
            args.crash_rate,
            args.flap_rate,
            args.probes,
            args.initiator,
            progress=progress if args.epochs >= 10 else None,
        )
    header = (
        f"network: simulated, topology {topo.name} ({topo.n} nodes, {len(topo.edges)} links),"
        f" {args.epochs} transitions, seed {args.seed}"
    )
    return _print(args, "simulated", header, names, results)


def _cli_testbed(args: argparse.Namespace, names: list[str]) -> int:
    from oae.epoch.fleet import ALGORITHMS, run_sync
    from oae.testbed import manager

    if args.algorithm == "all":
        names = list(ALGORITHMS)
    for name in names:
        if name not in ALGORITHMS:
            raise UsageError(
                f"--testbed runs --algorithm {', '.join(ALGORITHMS)} or all, not {name}"
            )

    def run_all(tb: manager.Testbed) -> dict[str, dict[str, object]]:
        return {
            name: run_sync(tb, args.epochs, args.seed, args.initiator, args.crash_rate, name,
                           args.app_period_us * 1e-6, args.persist_us, args.skew_us)
            for name in names
        }  # fmt: skip

    if args.topology.endswith(".toml"):
        # A topology file: bring a testbed up for this run and take it down afterwards.
        from oae.testbed import topology

        tb = manager.up(topology.load(args.topology, args.nodes))
        try:
            results = run_all(tb)
        finally:
            manager.down(tb.name)
    else:
        tb = manager.load(args.topology)
        results = run_all(tb)
    r = results[names[0]]
    header = (
        f"network: testbed {tb.name} ({r['nodes']} nodes, {r['links']} links, real frames),"
        f" {args.epochs} transitions, seed {args.seed}, one application frame per link "
        f"direction every {args.app_period_us / 1000:g} ms"
    )
    return _print(args, "testbed", header, names, results)


def _print(
    args: argparse.Namespace,
    network: str,
    header: str,
    names: list[str],
    results: dict[str, dict[str, object]],
) -> int:
    if args.json:
        json.dump({"network": network, "results": results}, sys.stdout, indent=2)
        print()
        return 0
    keys = [
        "committed",
        "aborted",
        "stuck",
        "median_convergence_us",
        "p99_convergence_us",
        "critical_path_exchanges",
        "convergence_ratio",
        "median_link_rtt_us",
        "median_control_delivery_us",
        "delivery_floor_ratio",
        "mixed_epoch_frames",
        "app_frames",
        "uncommitted_tag_frames",
        "mixed_epoch_states",
        "inconsistent_states",
        "probes",
        "crashes",
        "cpu_ms_per_transition",
    ]
    print(header)
    print(f"{'':<26}" + "".join(f"{n:>15}" for n in names))
    for k in keys:
        cells = []
        for n in names:
            v = results[n].get(k)
            cells.append(
                f"{'-' if v is None else (f'{v:,.1f}' if isinstance(v, float) else v):>15}"
            )
        print(f"{k:<26}" + "".join(cells))
    return 0
