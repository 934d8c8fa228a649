"""The suite layer of `oae bench`: one document in which every figure states its unit and
the baseline it is compared with.

Parts return nested dicts of figures with a `units` mapping (see oae.bench.cli). Here each
numeric figure becomes one entry of `figures`:

    {"part", "name", "value", "unit", "role", "baseline": {"figure", "value", "what"},
     "result"}

`result` is false for the figures of a part that ran while other processes competed for
the CPUs (the document's `conditions`, oae.bench.machine): they are printed flagged and
must not be quoted.

`role` says how the figure relates to a baseline: `measured` (compared with the baseline
figure named, measured in the same run), `baseline` (it is the reference others are
compared with), `ratio` (of the two), `target` (compared with a stated target, given as
the baseline's value, where there is nothing to measure side by side), `parameter` (a
setting, compared with nothing) or `diagnostic` (what limits another figure; its
baseline is described, not measured).
The rules below know each part's figures; a figure that no rule or no unit covers is
listed under `missing`, so a part that adds a figure without saying what it is shows up
(and the suite test fails) instead of slipping through.
"""

from __future__ import annotations

import math
import platform
import re
from dataclasses import dataclass
from typing import Any

# Parts whose figures come from a simulation's own clock: the machine's load cannot move them.
UNTIMED_PARTS = {"convergence"}

# Units of figures that parts report as plain settings.
PARAMETER_UNITS = {
    "repeats": "runs (figures are medians over them)",
    "window": "transfers in flight",
    "beat": "records per exchange",
}


@dataclass(frozen=True)
class Rule:
    """Figures whose dotted name matches `pattern` have `role`; `ref` (a template over the
    pattern's groups) names the baseline figure, `what` describes the baseline; a `target`
    figure is compared with the stated `target` value instead."""

    pattern: str
    role: str
    what: str
    ref: str | None = None
    target: float | None = None


_C_PINGPONG = "bare C ping-pong (csrc/pingpong.c) on the same veth pair, same run"
_C_FLOOD = "one-way C sendmmsg flood (frames received) on the same veth pair, same run"
_C_FLOODS = (
    "one-way C flood (frames received) on the same veth pair, same run, sending as the link"
    " does: sendmmsg, or for ring_ figures through a PACKET_TX_RING"
)
_PY_CODEC = "pure-Python model codec (oae.model.wire), same run"
_PY_MODEL = "pure-Python link model (oae.model.link), same workload, same run"
_BOUND = "critical-path bound: critical-path link exchanges x median link round trip"
_SYSCALLS = (
    "what limits the rate; the bare C ping-pong makes one syscall per frame (a send or a"
    " blocking recv, i.e. one wake-up), the flood 1/64 (sendmmsg/recvmmsg batches of 64)"
)
_C_BOUND = (
    "critical-path link exchanges x bare C ping-pong round trip on a link of the same"
    " testbed, same run"
)
_X_BOUND = "critical-path link exchanges x median CONTROL transfer latency, same run"
_FLOOR = (
    "physical floor of a wave with one durable record per hop: wave legs on the critical"
    " path (4 x eccentricity) x (C one-way frame latency + median fdatasync of the state"
    " dirs' file system), same testbed, same run"
)
_WORK = (
    "this machine's floor: every link's 4 legs x (CPU of one bare C frame + CPU of one"
    " store) / its CPUs, each measured on the same testbed, same run"
)
_CPU = (
    "what the node processes spend; compared with nothing measured side by side (their"
    " idle CPU per second, same run, is reported next to it)"
)
_DIRECT = "direct veth between the same two namespaces, same Python sender, same run"
_SEND_MANY = (
    "Link.send_many of the same payloads, 16,384 at a time, two calls in flight, on the same"
    " links (with or without state dirs, as the figure), same run"
)
_PARAM = Rule(r"(.*\.)?(repeats|window|beat|rtt_us)", "parameter", "a setting, not compared")

RULES: dict[str, list[Rule]] = {
    "codec": [
        Rule(r"(keyed_)?c_(api|loop)_records_per_s", "measured", _PY_CODEC,
             r"\1py_records_per_s"),
        Rule(r"(keyed_)?py_records_per_s", "baseline", _PY_CODEC),
        Rule(r"(keyed_)?ratio", "ratio", _PY_CODEC, r"\1py_records_per_s"),
    ],
    "engine": [
        Rule(r"c|c_from_python", "measured", _PY_MODEL, "model"),
        Rule(r"model", "baseline", _PY_MODEL),
        Rule(r"ratio|ratio_from_python", "ratio", _PY_MODEL, "model"),
    ],
    "exchange": [
        Rule(r"(\w+)\.engine_rt_per_s", "measured", _C_PINGPONG, r"\1.baseline_rt_per_s"),
        Rule(r"(\w+)\.engine_cpu_us_per_rt", "measured", _C_PINGPONG,
             r"\1.baseline_cpu_us_per_rt"),
        Rule(r"(\w+)\.baseline_(rt_per_s|cpu_us_per_rt)", "baseline", _C_PINGPONG),
        Rule(r"(\w+)\.ratio", "ratio", _C_PINGPONG, r"\1.baseline_rt_per_s"),
        _PARAM,
    ],
    "ait": [
        Rule(r"(ring_)?commits_per_s", "measured", _C_FLOODS, r"\1baseline_pps"),
        Rule(r"(ring_)?(baseline_pps|flood_sender_cpu_us_per_frame)", "baseline", _C_FLOODS),
        Rule(r"(ring_)?ratio", "ratio", _C_FLOODS, r"\1baseline_pps"),
        Rule(r"(ring_)?(sender|receiver)_cpu_us_per_commit", "measured", _C_FLOODS,
             r"\1flood_sender_cpu_us_per_frame"),
        Rule(r"tx_ring", "parameter", "a property of the run, not compared"),
        _PARAM,
    ],
    "sweep": [
        Rule(r"by_\w+\.\w+\.(commits|exchanges)_per_s", "measured", _C_FLOOD, "baseline_pps"),
        Rule(r"baseline_pps", "baseline", _C_FLOOD),
        Rule(r"by_\w+\.\w+\.ratio", "ratio", _C_FLOOD, "baseline_pps"),
        Rule(r"by_\w+\.\w+\.(syscalls|wakeups)_per_frame", "diagnostic", _SYSCALLS),
        _PARAM,
        Rule(r"by_\w+\.\w+\.(window|beat)", "parameter", "a setting, not compared"),
    ],
    "convergence": [
        Rule(r"(\w+?\d+)_(bilateral|2pc)_us", "measured", _BOUND, r"\1_\2_bound_us"),
        Rule(r"(\w+?\d+)_(bilateral|2pc)_ratio", "ratio", _BOUND, r"\1_\2_bound_us"),
        Rule(r"(\w+?\d+)_2pc_over_bilateral", "ratio",
             "bilateral's median convergence time, same topology, same run", r"\1_bilateral_us"),
        _PARAM,
    ],
    "convergence_testbed": [
        Rule(r"(\w+?\d+)_bilateral_us", "measured", _FLOOR, r"\1_floor_us"),
        Rule(r"(\w+?\d+)_floor_us", "baseline", _FLOOR),
        Rule(r"(\w+?\d+)_(2pc_)?ratio_vs_floor", "ratio", _FLOOR, r"\1_floor_us"),
        Rule(r"(\w+?\d+)_c_one_way_us", "baseline", _C_PINGPONG),
        Rule(r"(\w+?\d+)_fsync_us", "baseline",
             "64-byte in-place write + fdatasync in the state dirs' file system, same run"),
        Rule(r"(\w+?\d+)_wave_legs", "parameter", "a property of the topology, not compared"),
        Rule(r"(\w+?\d+)_(frame|store)_cpu_us", "baseline",
             "CPU of one bare C frame (ping-pong, same link) and of one store (16 writers at "
             "once, state dirs' file system), same run"),
        Rule(r"(\w+?\d+)_work_floor_us", "baseline", _WORK),
        Rule(r"(\w+?\d+)_ratio_vs_work_floor", "ratio", _WORK, r"\1_work_floor_us"),
        Rule(r"(\w+?\d+)_work_over_floor", "ratio", _FLOOR, r"\1_floor_us"),
        Rule(r"(\w+?\d+)_(2pc_)?cpu_ms_per_transition|(\w+?\d+)_idle_cpu_ms_per_s",
             "diagnostic", _CPU),
        Rule(r"(\w+?\d+)_c_bound_us", "baseline", _C_BOUND),
        Rule(r"(\w+?\d+)_c_rtt_us", "baseline", _C_PINGPONG),
        Rule(r"(\w+?\d+)_link_exchange_us", "measured", _C_PINGPONG, r"\1_c_rtt_us"),
        Rule(r"(\w+?\d+)_ratio_vs_c", "ratio", _C_BOUND, r"\1_c_bound_us"),
        Rule(r"(\w+?\d+)_ratio_vs_exchange", "ratio", _X_BOUND, r"\1_link_exchange_us"),
        Rule(r"(\w+?\d+)_control_delivery_us", "measured",
             "median CONTROL transfer latency (send to outcome), same run",
             r"\1_link_exchange_us"),
        Rule(r"(\w+?\d+)_ratio_floor", "diagnostic",
             "the floor the link's own delivery sets under ratio_vs_exchange: 2 x median "
             "one-way CONTROL delivery / median CONTROL transfer latency, same run"),
        Rule(r"(\w+?\d+)_(committed|critical_path_exchanges)|epochs", "parameter",
             "a count or a property of the topology, not compared"),
        # 2pc on the same testbed, same run: its critical path is counted as bilateral's
        # (2 x eccentricity of node 0), so the C bound is the same figure.
        Rule(r"(\w+?\d+)_2pc_us", "measured", _FLOOR, r"\1_floor_us"),
        Rule(r"(\w+?\d+)_2pc_link_exchange_us", "measured", _C_PINGPONG, r"\1_c_rtt_us"),
        Rule(r"(\w+?\d+)_2pc_ratio_vs_c", "ratio", _C_BOUND, r"\1_c_bound_us"),
        Rule(r"(\w+?\d+)_2pc_ratio_vs_exchange", "ratio", _X_BOUND,
             r"\1_2pc_link_exchange_us"),
        Rule(r"(\w+?\d+)_2pc_over_bilateral", "ratio",
             "bilateral's median convergence, same testbed, same run", r"\1_bilateral_us"),
        Rule(r"(\w+?\d+)_2pc_(committed|critical_path_exchanges)", "parameter",
             "a count or a property of the topology, not compared"),
    ],
    "latency": [
        Rule(r"c_rtt_us", "baseline", _C_PINGPONG),
        Rule(r"(durable_)?transfer_us", "measured", _C_PINGPONG, "c_rtt_us"),
        Rule(r"(durable|transfer)_over_c_rtt", "ratio", _C_PINGPONG, "c_rtt_us"),
        _PARAM,
    ],
    "outcomes": [
        Rule(r"(\w+)\.stream_per_s", "measured", _SEND_MANY, r"\1.send_many_per_s"),
        Rule(r"(\w+)\.send_many_per_s", "baseline", _SEND_MANY),
        Rule(r"(\w+)\.ratio", "ratio", _SEND_MANY, r"\1.send_many_per_s"),
        Rule(r"(\w+)\.stream_cpu_us", "measured", _SEND_MANY, r"\1.send_many_cpu_us"),
        Rule(r"(\w+)\.send_many_cpu_us", "baseline", _SEND_MANY),
        Rule(r"(\w+)\.cpu_ratio", "ratio", _SEND_MANY, r"\1.send_many_cpu_us"),
        _PARAM,
    ],
    "testbed": [
        Rule(r"ring64_(up|down)", "target", "issue 5's target: under a minute", target=60.0),
        Rule(r"bridge_frames_per_s", "measured", _DIRECT, "direct_veth_frames_per_s"),
        Rule(r"direct_veth_frames_per_s", "baseline", _DIRECT),
        Rule(r"bridge_vs_direct_ratio", "ratio", _DIRECT, "direct_veth_frames_per_s"),
    ],
}  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted names of a part's values; list items of dicts are named by their window
    and beat (sweep points), or their index."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, v in value.items():
            if key != "units":
                out.update(_flatten(v, f"{prefix}{key}."))
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            tag = f"w{v['window']}_b{v['beat']}" if {"window", "beat"} <= set(v) else str(i)
            out.update(_flatten(v, f"{prefix}{tag}."))
    else:
        out[prefix[:-1]] = value
    return out


def _derived(part: str, flat: dict[str, Any]) -> dict[str, float]:
    """Baseline figures a part implies without naming them: the convergence bound is the
    measured time divided by its ratio to the bound."""
    out: dict[str, float] = {}
    if part == "convergence":
        for key, value in flat.items():
            m = re.fullmatch(r"(\w+?\d+)_(bilateral|2pc)_ratio", key)
            us = flat.get(f"{m.group(1)}_{m.group(2)}_us") if m else None
            if m and isinstance(value, int | float) and value and isinstance(us, int | float):
                out[f"{m.group(1)}_{m.group(2)}_bound_us"] = us / value
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def figures(part: str, result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The figures of one part's result, and what lacks a unit or a baseline."""
    units = result.get("units", {})
    flat = _flatten(result)
    derived = _derived(part, flat)
    out, missing = [], []
    for name, value in flat.items():
        if value is None:
            missing.append(f"{part}.{name}: not measured (null)")
            continue
        if not _number(value):
            continue  # context such as "network": "simulated"
        leaf = name.rsplit(".", 1)[-1]
        unit = units.get(name) or units.get(leaf) or PARAMETER_UNITS.get(leaf)
        rule = next((r for r in RULES.get(part, []) if re.fullmatch(r.pattern, name)), None)
        if unit is None:
            missing.append(f"{part}.{name}: no unit")
        if rule is None:
            missing.append(f"{part}.{name}: no baseline rule in oae.bench.suite.RULES")
            continue
        base: dict[str, Any] = {"what": rule.what, "figure": None, "value": rule.target}
        if rule.ref is not None:
            m = re.fullmatch(rule.pattern, name)
            assert m is not None
            ref = m.expand(rule.ref)
            ref_value = flat.get(ref, derived.get(ref))
            if not _number(ref_value):
                missing.append(f"{part}.{name}: baseline figure {ref} not measured")
            base.update(figure=ref, value=ref_value)
        entry = {"part": part, "name": name, "value": value, "unit": unit, "role": rule.role}
        entry["baseline"] = base
        if isinstance(value, float) and not math.isfinite(value):
            missing.append(f"{part}.{name}: not a finite number")
        out.append(entry)
    return out, missing


def document(doc: dict[str, Any]) -> dict[str, Any]:
    """Add `figures`, `missing`, `loaded` and the CPU model to a bench document (in
    place). Each figure's `result` says whether it may be quoted: false when its part ran
    while other processes competed for the CPUs (`conditions`, oae.bench.machine)."""
    doc["machine"]["cpu"] = cpu_model()
    conditions = doc.get("conditions", {})
    all_figures: list[dict[str, Any]] = []
    missing: list[str] = []
    for part, result in doc["parts"].items():
        f, m = figures(part, result)
        quiet = part in UNTIMED_PARTS or conditions.get(part, {}).get("quiet", True)
        for entry in f:
            entry["result"] = bool(quiet)
        all_figures += f
        missing += m
    doc["figures"] = all_figures
    doc["missing"] = missing
    doc["loaded"] = sorted(
        p for p, c in conditions.items() if not c["quiet"] and p not in UNTIMED_PARTS
    )
    return doc


def format_figures(doc: dict[str, Any]) -> str:
    """The figures as a text table: value, unit, and the baseline compared with."""
    lines = []
    for part in doc.get("loaded", []):
        c = doc["conditions"][part]
        lines.append(
            f"WARNING {part}: other processes used {c['other_cpu']:.2f} CPUs (steal "
            f"{c['steal_cpu']:.2f}) while it ran, load average {c['load_before'][0]:.2f} -> "
            f"{c['load_after'][0]:.2f}: its figures are not results; measure on a quiet machine"
        )
    for f in doc["figures"]:
        v = f["value"]
        shown = f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"
        base = f["baseline"]
        if f["role"] == "measured" and _number(base["value"]):
            against = f"vs {base['figure']} = {base['value']:,.2f}"
        elif f["role"] == "ratio":
            against = f"ratio against {base['figure']}"
        elif f["role"] == "target":
            against = f"target {base['value']:g}"
        else:
            against = f["role"]
        if not f.get("result", True) and f["role"] in ("measured", "baseline", "ratio"):
            against = f"LOADED, not a result; {against}"
        lines.append(f"{f['part']:<12} {f['name']:<34} {shown:>16}  {f['unit']}  [{against}]")
    for m in doc["missing"]:
        lines.append(f"MISSING {m}")
    return "\n".join(lines)
