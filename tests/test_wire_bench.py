"""`oae bench codec` runs and explains itself (its figures are not judged here: speed is
reported by the bench, never asserted by a test)."""

from __future__ import annotations

import json

import pytest

from oae.bench import codec
from oae.bench.cli import BenchOptions
from oae.cli import main


def test_codec_part_reports_every_figure_with_a_unit() -> None:
    result = codec.run(BenchOptions(seconds=0.01, repeats=1, progress=False))
    units = result.pop("units")
    assert set(result) == set(units)
    assert {"c_api_records_per_s", "c_loop_records_per_s", "py_records_per_s", "ratio"} <= set(
        result
    )
    assert all(value > 0 for value in result.values())
    assert result["ratio"] == pytest.approx(
        result["c_api_records_per_s"] / result["py_records_per_s"]
    )
    assert result["keyed_ratio"] == pytest.approx(
        result["keyed_c_api_records_per_s"] / result["keyed_py_records_per_s"]
    )


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "codec", "--json", "--seconds", "0.01", "--repeats", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    part = doc["parts"]["codec"]
    assert part["units"]["ratio"].startswith("x")
    assert part["c_loop_records_per_s"] > 0
