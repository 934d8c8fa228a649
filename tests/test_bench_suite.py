"""`oae bench --json --quick`: one document in which every figure states its unit and
the baseline it is compared with; root-only parts are skipped (and said so) without root;
`--plot` writes the PNGs; the suite layer flags figures nobody described."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from oae.bench import machine, plots, suite
from oae.bench.cli import PARTS
from oae.cli import main

ROLES = {"measured", "baseline", "ratio", "target", "parameter", "diagnostic"}


def test_quick_suite_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", "--quick", "--plot", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["options"] == {"seconds": 0.2, "repeats": 1, "quick": True, "nodes": []}
    assert doc["machine"]["cpus"] and doc["machine"]["kernel"] and doc["machine"]["cpu"]
    assert set(doc["parts"]) | set(doc["skipped"]) == set(PARTS)
    if os.geteuid() == 0:
        assert doc["skipped"] == {}
    else:
        assert {"exchange", "ait", "sweep", "testbed", "latency", "outcomes",
                "convergence_testbed"} <= set(doc["skipped"])  # fmt: skip
        assert all("needs root" in why for why in doc["skipped"].values())
    assert doc["missing"] == []
    # the machine's state is recorded for every part that ran, and decides `result`
    assert set(doc["conditions"]) == set(doc["parts"])
    for part, cond in doc["conditions"].items():
        assert len(cond["load_before"]) == len(cond["load_after"]) == 3
        assert cond["other_cpu"] >= 0 and cond["own_cpu"] > 0 and cond["seconds"] > 0
        timed = part not in suite.UNTIMED_PARTS
        assert (part in doc["loaded"]) == (timed and not cond["quiet"])
        assert all(f["result"] == (part not in doc["loaded"]) for f in doc["figures"]
                   if f["part"] == part)  # fmt: skip

    figs = {(f["part"], f["name"]): f for f in doc["figures"]}
    # every number of every part is a figure (nothing undescribed slips through)
    for part, result in doc["parts"].items():
        numbers = [k for k, v in suite._flatten(result).items() if suite._number(v)]
        assert numbers and all((part, k) in figs for k in numbers), part
    for f in doc["figures"]:
        assert isinstance(f["unit"], str) and f["unit"], f
        assert f["role"] in ROLES, f
        assert f["baseline"]["what"], f
        assert math.isfinite(f["value"]), f
        if f["role"] in ("measured", "ratio"):
            ref = f["baseline"]["figure"]
            assert ref and f["baseline"]["value"] > 0, f
        if f["role"] == "target":
            assert f["baseline"]["value"] > 0, f
    # with one repeat, each ratio is exactly measured / baseline
    p = doc["parts"]
    codec = p["codec"]
    assert codec["ratio"] == pytest.approx(codec["c_api_records_per_s"] / codec["py_records_per_s"])
    assert p["engine"]["ratio"] == pytest.approx(p["engine"]["c"] / p["engine"]["model"])
    conv = p["convergence"]
    measured = {k.removesuffix("_bilateral_us") for k in conv if k.endswith("_bilateral_us")}
    assert measured == {f"{s}{n}" for s in ("ring", "tree", "mesh") for n in (8, 16)}
    bound = figs[("convergence", "ring8_bilateral_us")]["baseline"]
    assert bound["figure"] == "ring8_bilateral_bound_us"
    assert bound["value"] == pytest.approx(
        conv["ring8_bilateral_us"] / conv["ring8_bilateral_ratio"]
    )
    if "ait" in p:
        assert p["ait"]["ratio"] == pytest.approx(
            p["ait"]["commits_per_s"] / p["ait"]["baseline_pps"]
        )
        for mode in ("blocking", "busy_poll"):
            ex = p["exchange"][mode]
            assert ex["ratio"] == pytest.approx(ex["engine_rt_per_s"] / ex["baseline_rt_per_s"])
        sweep = p["sweep"]
        assert [pt["beat"] for pt in sweep["by_beat"]] == [1, 4, 16, 64]
        assert [pt["window"] for pt in sweep["by_window"]] == [1, 4, 16, 64, 256, 1024]
        lat = p["latency"]
        assert lat["durable_over_c_rtt"] == pytest.approx(
            lat["durable_transfer_us"] / lat["c_rtt_us"]
        )
        real = p["convergence_testbed"]
        assert real["ring4_committed"] == real["epochs"]
        assert real["ring4_c_bound_us"] == pytest.approx(
            real["ring4_critical_path_exchanges"] * real["ring4_c_rtt_us"]
        )
        assert real["ring4_ratio_vs_c"] == pytest.approx(
            real["ring4_bilateral_us"] / real["ring4_c_bound_us"]
        )
        # a one-way delivery is part of its own transfer: shorter, and the floor follows
        assert 0 < real["ring4_control_delivery_us"] < real["ring4_link_exchange_us"]
        assert real["ring4_ratio_floor"] == pytest.approx(
            2 * real["ring4_control_delivery_us"] / real["ring4_link_exchange_us"]
        )
        tb = p["testbed"]
        assert tb["bridge_vs_direct_ratio"] == pytest.approx(
            tb["bridge_frames_per_s"] / tb["direct_veth_frames_per_s"]
        )
        assert figs[("testbed", "ring64_up")]["baseline"]["value"] == 60.0
        for pt in sweep["by_beat"] + sweep["by_window"]:
            assert pt["commits_per_s"] > 0 and pt["syscalls_per_frame"] > 0

    if plots.available():
        names = {Path(x).name for x in doc["plots"]}
        assert "bench-convergence-vs-nodes.png" in names
        if "sweep" in p:
            assert {"bench-exchange-vs-beat.png", "bench-commits-vs-window.png"} <= names
        assert all(Path(x).stat().st_size > 0 for x in doc["plots"])


def test_loaded_machine_makes_figures_not_results() -> None:
    """Other processes' CPU time during a part (not the part's own threads, not the load
    average) decides whether its figures are results; a simulated part is never loaded."""
    t0 = machine.Sample(wall=0.0, busy=100.0, steal=5.0, own=10.0, load=(0.1, 0.1, 0.1))
    # 10 s: the machine was busy 21 CPU-seconds, 20 of them this process's own threads
    quiet = machine.Sample(wall=10.0, busy=121.0, steal=5.0, own=30.0, load=(1.9, 0.6, 0.2))
    cond = machine.conditions(t0, quiet)
    assert cond["quiet"] and cond["other_cpu"] == pytest.approx(0.1)
    assert cond["own_cpu"] == pytest.approx(2.0) and cond["load_after"] == [1.9, 0.6, 0.2]
    others = machine.Sample(wall=10.0, busy=125.0, steal=5.0, own=30.0, load=(1.9, 0.6, 0.2))
    assert not machine.conditions(t0, others)["quiet"]  # 0.5 CPUs of other processes
    stolen = machine.Sample(wall=10.0, busy=120.0, steal=7.0, own=30.0, load=(0.2, 0.1, 0.1))
    assert not machine.conditions(t0, stolen)["quiet"]  # the hypervisor took 0.2 CPUs

    ait = {
        "commits_per_s": 10.0,
        "baseline_pps": 20.0,
        "ratio": 0.5,
        "units": {"commits_per_s": "transfers/s", "baseline_pps": "frames/s", "ratio": "x"},
    }
    conv = {"ring8_bilateral_us": 3.0, "ring8_bilateral_ratio": 1.5,
            "units": {"ring8_bilateral_us": "us", "ring8_bilateral_ratio": "x"}}  # fmt: skip
    loaded = machine.conditions(t0, others)
    doc = {"machine": {}, "parts": {"ait": ait, "convergence": conv},
           "conditions": {"ait": loaded, "convergence": loaded}}  # fmt: skip
    suite.document(doc)
    assert doc["loaded"] == ["ait"]
    assert {(f["part"], f["result"]) for f in doc["figures"]} == {
        ("ait", False),
        ("convergence", True),
    }
    text = suite.format_figures(doc).splitlines()
    assert text[0].startswith("WARNING ait: other processes used 0.50 CPUs")
    ratio = next(line for line in text if line.startswith("ait          ratio"))
    assert "LOADED, not a result" in ratio
    doc["conditions"]["ait"] = cond
    suite.document(doc)
    assert doc["loaded"] == [] and all(f["result"] for f in doc["figures"])
    assert "LOADED" not in suite.format_figures(doc)


def test_undescribed_figures_are_flagged() -> None:
    result = {
        "commits_per_s": 10.0,
        "baseline_pps": 20.0,
        "ratio": 0.5,
        "surprise": 3.0,
        "units": {"commits_per_s": "transfers/s", "baseline_pps": "frames/s", "ratio": "x"},
    }
    figs, missing = suite.figures("ait", result)
    assert [f["name"] for f in figs] == ["commits_per_s", "baseline_pps", "ratio"]
    assert figs[0]["baseline"]["value"] == 20.0 and figs[0]["role"] == "measured"
    assert sorted(missing) == [
        "ait.surprise: no baseline rule in oae.bench.suite.RULES",
        "ait.surprise: no unit",
    ]
    _, missing = suite.figures("ait", {"commits_per_s": 1.0, "units": {"commits_per_s": "x"}})
    assert missing == ["ait.commits_per_s: baseline figure baseline_pps not measured"]


def test_bench_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needle in (
        (["nope"], "unknown bench part 'nope'"),
        (["codec", "--seconds", "0"], "--seconds must be > 0"),
        (["codec", "--plot", "/proc/oae-no-such-dir"], "--plot /proc/oae-no-such-dir"),
    ):
        assert main(["bench", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("oae bench: error:") and needle in err and "\n" not in err
