"""`oae experiment`: the founding paper's claims made measurable.

- `atomicity`: the fraction of checkpoints that are single-epoch (atomic) when k
  persistence domains each checkpoint at their own clock's time t (snap-t), with a fitted
  exponential A·b^k, next to the bilateral protocol measured the same way (recovered
  states probed at random instants, with crash-restarts, on a simulated k-node tree).
- `optimizer`: restore a mixed-epoch state of Adam on a small linear regression
  (parameters at step e, moments at step e-1) and show that the next update is none of
  the updates the optimizer makes from any single-epoch state.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass

from oae.epoch.sim import NetParams, make_topology
from oae.errors import UsageError


# --------------------------------------------------------------------------- atomicity
@dataclass(frozen=True)
class SnapModel:
    """How one persistence domain checkpoints under snap-t (times in µs).

    The operator means "the state at the end of step s", which is due at time B, and
    schedules Snap(t) at t = B + margin. Domain i reads t on its own clock (skew ~
    N(0, skew_us)) and really finishes step s at B + N(0, straggle_us) (stragglers). It
    copies its state from its t on, for a log-normal latency (median persist_us), while
    training goes on. Its checkpoint holds step s if it started after its own end of step
    s, step s-1 if it finished copying before it, and is torn if the copy straddles it.
    The k checkpoints are single-epoch only if none is torn and all hold the same step:
    each domain lands on its own side of the instant, independently."""

    skew_us: float = 50.0
    straggle_us: float = 50.0
    margin_us: float = 50.0
    persist_us: float = 20.0
    persist_sigma: float = 0.5


def snap_t_trial(k: int, model: SnapModel, rng: random.Random) -> bool:
    """One checkpoint across k domains: True when it is single-epoch (atomic)."""
    sides = set()
    for _ in range(k):
        start = model.margin_us + rng.gauss(0.0, model.skew_us)
        end = start + model.persist_us * math.exp(rng.gauss(0.0, model.persist_sigma))
        boundary = rng.gauss(0.0, model.straggle_us)
        if start < boundary < end:
            return False  # torn: the copy straddles this domain's step boundary
        sides.add(start >= boundary)
    return len(sides) == 1


def fit_exponential(ks: list[int], fracs: list[float]) -> dict[str, float] | None:
    """Least-squares fit of ln f = ln A + k ln b over the points with f > 0."""
    pts = [(k, math.log(f)) for k, f in zip(ks, fracs, strict=True) if f > 0]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(k for k, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((k - mx) ** 2 for k, _ in pts)
    if sxx == 0:
        return None
    slope = sum((k - mx) * (y - my) for k, y in pts) / sxx
    icept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    ss_res = sum((y - icept - slope * k) ** 2 for k, y in pts)
    return {
        "A": math.exp(icept),
        "base": math.exp(slope),
        "rate": -slope,
        "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0,
    }


def bilateral_atomicity(k: int, trials: int, seed: int, crash_rate: float) -> tuple[int, int]:
    """Probe recovered states of the bilateral protocol on a k-node tree: (atomic, probes)."""
    from oae.epoch.converge import run

    if k == 1:
        topo = make_topology("chain", 2)  # one domain needs a peer to talk to; count both
    else:
        topo = make_topology("tree", k)
    params = NetParams(app_period_us=40.0, loss=0.01)
    r = run(
        "bilateral",
        topo,
        trials,
        seed=seed,
        params=params,
        crash_rate=crash_rate,
        probes=1,
    )
    probes = int(r["probes"])  # type: ignore[arg-type]
    bad = int(r["mixed_epoch_states"]) + int(r["inconsistent_states"])  # type: ignore[arg-type]
    return probes - bad, probes


def atomicity(
    domains: list[int],
    trials: int,
    bilateral_trials: int,
    seed: int,
    model: SnapModel,
    crash_rate: float,
    progress: bool,
) -> dict[str, object]:
    rng = random.Random(seed)
    snap: list[float] = []
    bil: list[dict[str, float | int]] = []
    for k in domains:
        ok = sum(snap_t_trial(k, model, rng) for _ in range(trials))
        snap.append(ok / trials)
        atomic, probes = bilateral_atomicity(k, bilateral_trials, seed + k, crash_rate)
        bil.append(
            {
                "domains": k,
                "atomic": atomic,
                "probes": probes,
                "fraction": atomic / probes if probes else float("nan"),
            }
        )
        if progress:
            print(
                f"[atomicity] k={k}: snap-t {snap[-1]:.3f}, bilateral {atomic}/{probes}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "network": "simulated",
        "domains": domains,
        "trials": trials,
        "seed": seed,
        "snap_t": {
            "fraction_atomic": snap,
            "fit": fit_exponential(domains, snap),
            "model": model.__dict__,
        },
        "bilateral": bil,
    }


def plot_atomicity(doc: dict[str, object], path: str) -> bool:
    """Write a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ks = doc["domains"]
    snap = doc["snap_t"]  # type: ignore[index]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, snap["fraction_atomic"], "o", label="snap-t (measured)")  # type: ignore[index]
    fit = snap["fit"]  # type: ignore[index]
    if fit:
        xs = [k / 4 for k in range(4 * min(ks), 4 * max(ks) + 1)]  # type: ignore[type-var]
        ax.plot(
            xs,
            [fit["A"] * fit["base"] ** x for x in xs],
            "-",
            label=f"fit {fit['A']:.2f}·{fit['base']:.3f}^k",
        )
    bil = doc["bilateral"]
    ax.plot(
        [b["domains"] for b in bil],
        [b["fraction"] for b in bil],
        "s",  # type: ignore[union-attr]
        label="bilateral (measured)",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("persistence domains k")
    ax.set_ylabel("fraction of checkpoints that are single-epoch")
    ax.set_title("Atomic checkpoints: Snap(t) vs Conv(P, e) (simulated)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- optimizer
@dataclass
class AdamState:
    """Parameters and Adam moments after `t` steps (the state a checkpoint must hold)."""

    w: list[float]
    m: list[float]
    v: list[float]
    t: int


def _grad(w: list[float], xs: list[list[float]], ys: list[float]) -> list[float]:
    """Gradient of the mean squared error of y ≈ w·x (x has a constant 1 for the bias)."""
    g = [0.0] * len(w)
    for x, y in zip(xs, ys, strict=True):
        err = sum(wi * xi for wi, xi in zip(w, x, strict=True)) - y
        for i, xi in enumerate(x):
            g[i] += 2 * err * xi / len(xs)
    return g


def adam_step(s: AdamState, g: list[float], lr: float = 0.05) -> AdamState:
    b1, b2, eps = 0.9, 0.999, 1e-8
    t = s.t + 1
    m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(s.m, g, strict=True)]
    v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(s.v, g, strict=True)]
    w = [
        wi - lr * (mi / (1 - b1**t)) / (math.sqrt(vi / (1 - b2**t)) + eps)
        for wi, mi, vi in zip(s.w, m, v, strict=True)
    ]
    return AdamState(w, m, v, t)


def optimizer(epoch: int, steps: int, seed: int) -> dict[str, object]:
    """Train, restore (w at `epoch`, moments and step count at `epoch`-1), step once, and
    compare with the step from every single-epoch state."""
    if not 1 <= epoch < steps:
        raise UsageError(f"--epoch must be in 1..{steps - 1} (below --steps)")
    rng = random.Random(seed)
    true_w = [rng.uniform(-2, 2) for _ in range(3)]
    xs = [[rng.gauss(0, 1), rng.gauss(0, 1), 1.0] for _ in range(64)]
    ys = [sum(a * b for a, b in zip(true_w, x, strict=True)) + rng.gauss(0, 0.1) for x in xs]
    states = [AdamState([0.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3, 0)]
    for _ in range(steps + 1):
        s = states[-1]
        states.append(adam_step(s, _grad(s.w, xs, ys)))
    good, prev = states[epoch], states[epoch - 1]
    mixed = AdamState(list(good.w), list(prev.m), list(prev.v), prev.t)
    after = adam_step(mixed, _grad(mixed.w, xs, ys))

    def dist(a: list[float], b: list[float]) -> float:
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))

    update = [a - b for a, b in zip(after.w, mixed.w, strict=True)]
    distances = []
    for j in range(len(states) - 1):
        valid = [a - b for a, b in zip(states[j + 1].w, states[j].w, strict=True)]
        distances.append(
            {
                "from_epoch": j,
                "parameter_distance": dist(after.w, states[j + 1].w),
                "update_distance": dist(update, valid),
            }
        )
    closest = min(distances, key=lambda d: d["update_distance"])
    # The oracle is deterministic: restoring a consistent state reproduces its own step.
    again = adam_step(states[epoch], _grad(states[epoch].w, xs, ys))
    own = distances[epoch]
    step_norm = dist(states[epoch + 1].w, states[epoch].w)
    return {
        "model": "linear regression, 3 parameters, mean squared error, Adam(lr=0.05)",
        "restored": {"parameters_epoch": epoch, "moments_epoch": epoch - 1},
        "valid_step_norm": step_norm,
        "distance_to_own_epoch_step": own["update_distance"],
        "consistent_restore_distance": dist(again.w, states[epoch + 1].w),
        "closest_single_epoch_step": closest,
        "relative_distance_to_closest": closest["update_distance"] / step_norm,
        "matches_a_single_epoch_step": closest["update_distance"] <= 1e-9 * max(step_norm, 1e-12),
        "distances": distances,
    }


# --------------------------------------------------------------------------- CLI
def _domains(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--domains {text!r}: give comma-separated whole numbers") from None
    if not ks or any(k < 1 or k > 512 for k in ks):
        raise UsageError(f"--domains {text!r}: each k must be in 1..512")
    return sorted(set(ks))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="the paper's claims, measured: atomicity vs domains, mixed-epoch optimizer state",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    a = exp.add_parser(
        "atomicity",
        help="fraction of single-epoch checkpoints vs persistence domains k",
        description="Fraction of checkpoints that are single-epoch for snap-t against k "
        "(Monte Carlo of the SnapModel, with a fitted exponential A*b^k), next to the "
        "bilateral protocol measured on a simulated k-node tree with crash-restarts.",
    )
    a.add_argument(
        "--domains",
        default="1,2,4,8,16,32,64",
        help="comma-separated k values (default 1,2,4,8,16,32,64)",
    )
    a.add_argument("--trials", type=int, default=2000, help="snap-t checkpoints per k")
    a.add_argument(
        "--bilateral-trials",
        type=int,
        default=10,
        help="bilateral transitions per k, one probe each plus one per crash",
    )
    a.add_argument(
        "--crash-rate",
        type=float,
        default=0.5,
        help="bilateral: mean node crashes per transition (default 0.5)",
    )
    a.add_argument("--skew-us", type=float, default=50.0, help="snap-t clock skew (std dev)")
    a.add_argument(
        "--straggle-us",
        type=float,
        default=50.0,
        help="snap-t spread of the domains' real end of step (std dev)",
    )
    a.add_argument(
        "--margin-us",
        type=float,
        default=50.0,
        help="snap-t: t is scheduled this long after the step's due end",
    )
    a.add_argument(
        "--persist-us", type=float, default=20.0, help="snap-t median persistence (copy) latency"
    )
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--json", action="store_true", help="print one JSON document")
    a.add_argument("--plot", metavar="FILE.png", help="also write a plot (needs matplotlib)")
    a.set_defaults(func=_run_atomicity)
    o = exp.add_parser(
        "optimizer",
        help="restore parameters at e with Adam moments at e-1 and compare the next step",
        description="Trains a 3-parameter linear regression with Adam, restores a "
        "mixed-epoch state and reports the distance of its next update to the update "
        "from every single-epoch state.",
    )
    o.add_argument("--epoch", type=int, default=20, help="parameters' epoch (moments: e-1)")
    o.add_argument("--steps", type=int, default=40, help="training steps recorded")
    o.add_argument("--seed", type=int, default=1)
    o.add_argument("--json", action="store_true", help="print one JSON document")
    o.set_defaults(func=_run_optimizer)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run_atomicity(args: argparse.Namespace) -> int:
    if args.trials < 1 or args.bilateral_trials < 1:
        raise UsageError("--trials and --bilateral-trials must be >= 1")
    if min(args.skew_us, args.straggle_us, args.crash_rate) < 0 or args.persist_us <= 0:
        raise UsageError("--skew-us, --straggle-us, --crash-rate must be >= 0; --persist-us > 0")
    model = SnapModel(args.skew_us, args.straggle_us, args.margin_us, args.persist_us)
    doc = atomicity(
        _domains(args.domains),
        args.trials,
        args.bilateral_trials,
        args.seed,
        model,
        args.crash_rate,
        progress=True,
    )
    if args.plot:
        doc["plot"] = args.plot if plot_atomicity(doc, args.plot) else None
        if doc["plot"] is None:
            print("oae experiment: matplotlib is not installed; no plot", file=sys.stderr)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0
    print("atomic (single-epoch) checkpoints, network: simulated")
    print(f"{'k':>4} {'snap-t':>8} {'bilateral':>14}")
    for k, f, b in zip(
        doc["domains"],
        doc["snap_t"]["fraction_atomic"],
        doc["bilateral"],  # type: ignore[index]
        strict=True,
    ):
        print(f"{k:>4} {f:>8.4f} {b['atomic']:>6}/{b['probes']:<6} ({b['fraction']:.3f})")
    fit = doc["snap_t"]["fit"]  # type: ignore[index]
    if fit:
        print(
            f"snap-t fit: {fit['A']:.3f} * {fit['base']:.4f}^k  (rate {fit['rate']:.4f}/domain,"
            f" r2 {fit['r2']:.3f})"
        )
    return 0


def _run_optimizer(args: argparse.Namespace) -> int:
    doc = optimizer(args.epoch, args.steps, args.seed)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0
    c = doc["closest_single_epoch_step"]
    print(f"restored parameters at epoch {args.epoch}, Adam moments at epoch {args.epoch - 1}")
    print(f"valid step size                   {doc['valid_step_norm']:.6g}")
    print(f"distance to epoch {args.epoch}'s own step     {doc['distance_to_own_epoch_step']:.6g}")
    print(
        f"closest single-epoch step (from {c['from_epoch']}) {c['update_distance']:.6g}"  # type: ignore[index]
        f"  ({doc['relative_distance_to_closest']:.1%} of a step)"
    )
    print("matches a single-epoch step:", doc["matches_a_single_epoch_step"])
    return 0
