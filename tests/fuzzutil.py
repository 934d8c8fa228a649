"""Shared by the sanitizer tests (test_fuzz_wire.py, test_link_fuzz.py, test_epoch_fuzz.py):
skip without clang or make, build csrc/ fuzz targets, and make a short libFuzzer run that
must end clean."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

NEEDS_CLANG = [
    pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def build(out: Path, *targets: str) -> Path:
    """`make` the csrc/ targets (e.g. "fuzz_wire") into `out`; their binaries are
    `out / "<target>.bin"`."""
    made = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "csrc"), f"OUT={out}", *targets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    return out


def short_run(fuzzer: Path, corpus: Path, artifacts: Path, *options: str) -> None:
    """Run `fuzzer` over `corpus` with the libFuzzer `options` (which should bound it, e.g.
    -max_total_time=15); it must finish without a finding."""
    result = subprocess.run(
        [str(fuzzer), *options, f"-artifact_prefix={artifacts}/", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr
    assert not list(artifacts.glob("crash-*"))


def broken_build_aborts(
    tmp_path: Path,
    target: str,
    broken: str,
    marker: str,
    replacement: str,
    others: list[str],
    seed: Callable[[Path], None],
) -> None:
    """Build fuzz target `target` (csrc/<target>.c) against a copy of csrc/<broken>.c
    with `marker` replaced, plus csrc/ sources `others`; its seeds (written by `seed`
    into a corpus dir) must make it abort on an invariant: the target's checks are real."""
    src = (ROOT / "csrc" / f"{broken}.c").read_text()
    assert marker in src
    copy = tmp_path / f"{broken}_broken.c"
    copy.write_text(src.replace(marker, replacement))
    binary = tmp_path / f"{target}_broken.bin"
    csrc = ROOT / "csrc"
    made = subprocess.run(
        ["clang", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", f"-I{csrc}",
         "-o", str(binary), str(csrc / f"{target}.c"), str(copy),
         *(str(csrc / o) for o in others)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    corpus = tmp_path / "corpus"
    seed(corpus)
    result = subprocess.run(
        [str(binary), "-runs=10", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "invariant failed" in result.stderr
