"""PNG plots of the demo report and of the bench document, drawn only from their measured
figures. matplotlib is optional: without it every function returns no files (callers say
so), and the import happens here only, with the non-interactive Agg backend.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def _pyplot() -> Any | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def available() -> bool:
    """Is matplotlib installed (plots can be drawn)?"""
    return _pyplot() is not None


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- demo
def demo_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """oae-demo-transfers.png (per link direction) and oae-demo-convergence.png."""
    plt = _pyplot()
    if plt is None:
        return []
    files = []
    t = report["traffic"]
    dirs = t["per_direction"]
    labels = [f"{d['from']}→{d['to']}" for d in dirs]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(dirs)), 4))
    x = range(len(dirs))
    ax.bar(x, [d["committed"] for d in dirs], label="committed", color="tab:green")
    ax.bar(x, [d["aborted"] for d in dirs], bottom=[d["committed"] for d in dirs],
           label="aborted", color="tab:orange")  # fmt: skip
    ax.set_xticks(list(x), labels, rotation=60, fontsize=7)
    ax.set_ylabel("transfers")
    ax.set_title(f"AIT over the impaired ring: duplicated {t['duplicated']}, lost {t['lost']}, "
                 f"disagreed {t['disagreed']}", fontsize=9)  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    files.append(_save(plt, fig, out / "oae-demo-transfers.png"))

    conv = report["convergence"]
    names = list(conv)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    med = [conv[n]["median_convergence_us"] or 0.0 for n in names]
    p99 = [conv[n]["p99_convergence_us"] or 0.0 for n in names]
    xs = range(len(names))
    a1.bar([i - 0.2 for i in xs], med, width=0.4, label="median")
    a1.bar([i + 0.2 for i in xs], p99, width=0.4, label="p99")
    a1.set_yscale("log")
    a1.set_xticks(list(xs), names, fontsize=7, rotation=20)
    a1.set_ylabel("convergence time (µs)")
    a1.set_title("time to Conv(P, e+1)", fontsize=9)
    a1.legend(fontsize=8)
    mixed, torn = [], []
    for n in names:
        r = conv[n]
        total = r["probes"]
        mixed.append(r["mixed_epoch_states"] / total if total else 0.0)
        bad_cut = r.get("inconsistent_states") or 0
        torn.append(bad_cut / total if total else 0.0)
    a2.bar(list(xs), mixed, color="tab:red", label="mixed epochs")
    a2.bar(list(xs), torn, bottom=mixed, color="tab:orange", label="one epoch, inconsistent cut")
    a2.set_xticks(list(xs), names, fontsize=7, rotation=20)
    a2.set_ylim(0, 1)
    a2.set_ylabel("fraction of states")
    a2.set_title("bad states per probe (testbed: durable epochs; sim: crash probes)", fontsize=9)
    a2.legend(fontsize=8)
    files.append(_save(plt, fig, out / "oae-demo-convergence.png"))
    return files


# --------------------------------------------------------------------------- bench
_CONV_KEY = re.compile(r"^(ring|tree|mesh|star|chain|grid)(\d+)_(.+)_us$")


def bench_plots(doc: dict[str, Any], out: Path) -> list[Path]:
    """From whichever parts ran: exchange rate vs beats and commits/s vs window (part
    `sweep`), convergence time vs nodes per topology and algorithm (part `convergence`)."""
    plt = _pyplot()
    if plt is None:
        return []
    parts = doc.get("parts", {})
    files = []
    sweep = parts.get("sweep")
    if sweep:
        flood = sweep["baseline_pps"]
        for axis, other in (("beat", "window"), ("window", "beat")):
            pts = sorted(sweep[f"by_{axis}"], key=lambda p: p[axis])
            fig, ax = plt.subplots(figsize=(6, 4))
            xs = [p[axis] for p in pts]
            ax.plot(xs, [p["commits_per_s"] for p in pts], "o-", label="committed transfers/s")
            ax.plot(xs, [p["exchanges_per_s"] for p in pts], "s--",
                    label="frames/s sent by the sender")  # fmt: skip
            ax.axhline(flood, color="grey", linestyle=":", label="one-way C flood, frames/s")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{axis} ({'records per exchange' if axis == 'beat' else 'in flight'})")
            ax.set_ylabel("per second")
            ax.set_title(f"one veth pair, {other} {pts[0][other]}", fontsize=9)
            ax.legend(fontsize=8)
            name = "bench-exchange-vs-beat.png" if axis == "beat" else "bench-commits-vs-window.png"
            files.append(_save(plt, fig, out / name))
    conv = parts.get("convergence")
    real = parts.get("convergence_testbed") or {}
    if conv or real:
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for source, suffix in ((conv or {}, ""), (real, " (testbed)")):
            for key, value in source.items():
                m = _CONV_KEY.match(key)
                if m and m.group(3) in ("bilateral", "2pc") and isinstance(value, int | float):
                    algo = m.group(3) + suffix
                    series.setdefault((m.group(1), algo), []).append((int(m.group(2)), value))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        shapes = sorted({shape for shape, _ in series})
        for (shape, algo), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    marker="s" if algo.endswith("(testbed)") else "o",
                    linestyle={"bilateral": "-", "2pc": "--"}.get(algo, ":"),
                    color=f"C{shapes.index(shape)}", label=f"{shape} {algo}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("median convergence time (µs)")
        title = "epoch convergence"
        if conv:
            title += f"; simulated: link round trip {conv.get('rtt_us', '?')} µs"
        if real:
            title += "; testbed: real frames, durable link state"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        files.append(_save(plt, fig, out / "bench-convergence-vs-nodes.png"))
    return files
