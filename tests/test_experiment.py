"""`oae experiment`: snap-t atomicity decays exponentially with the number of persistence
domains while bilateral stays at 1.0 (measured), and a mixed-epoch Adam state steps
nowhere a single-epoch state would."""

from __future__ import annotations

import json
import random

import pytest

from oae.cli import main
from oae.epoch.experiment import SnapModel, fit_exponential, optimizer, snap_t_trial


def test_snap_t_atomicity_decays_with_domains_and_fits_an_exponential() -> None:
    rng = random.Random(5)
    ks = [1, 2, 4, 8, 16]
    fracs = [sum(snap_t_trial(k, SnapModel(), rng) for _ in range(1500)) / 1500 for k in ks]
    assert all(a > b for a, b in zip(fracs, fracs[1:], strict=False))
    fit = fit_exponential(ks, fracs)
    assert fit is not None
    assert 0 < fit["base"] < 0.95 and fit["rate"] > 0.05 and fit["r2"] > 0.95


def test_fit_recovers_a_known_exponential() -> None:
    ks = [1, 2, 4, 8]
    fit = fit_exponential(ks, [0.8 * 0.5**k for k in ks])
    assert fit is not None
    assert fit["base"] == pytest.approx(0.5) and fit["A"] == pytest.approx(0.8)


def test_atomicity_cli_measures_bilateral_as_one(capsys, tmp_path) -> None:
    plot = tmp_path / "atomicity.png"
    argv = [
        "experiment",
        "atomicity",
        "--domains",
        "1,4,8",
        "--trials",
        "400",
        "--bilateral-trials",
        "4",
        "--json",
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    snap = doc["snap_t"]["fraction_atomic"]
    assert snap[0] > snap[-1]
    for b in doc["bilateral"]:
        assert b["probes"] >= 4
        assert b["atomic"] == b["probes"]  # every probed recovered state was single-epoch
    assert doc["plot"] is None or plot.stat().st_size > 1000


def test_mixed_epoch_adam_state_matches_no_single_epoch_step() -> None:
    doc = optimizer(epoch=20, steps=40, seed=1)
    assert doc["matches_a_single_epoch_step"] is False
    assert doc["distance_to_own_epoch_step"] > 0.01 * doc["valid_step_norm"]
    assert all(d["update_distance"] > 1e-6 for d in doc["distances"])
    # The oracle itself: a consistent restore does reproduce its own step exactly.
    assert doc["consistent_restore_distance"] == 0.0


def test_experiment_errors_are_one_line(capsys) -> None:
    assert main(["experiment", "atomicity", "--domains", "1,x"]) == 2
    assert "--domains" in capsys.readouterr().err
    assert main(["experiment", "optimizer", "--epoch", "0"]) == 2
    assert "--epoch" in capsys.readouterr().err
