"""The link engine under AddressSanitizer and UBSan: a short, bounded libFuzzer run of
csrc/fuzz_link.c (arbitrary bytes as frames plus a byte-driven script of API calls, with
the engine's invariants checked after every step). Long runs: docs/fuzzing.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fuzzutil import NEEDS_CLANG, ROOT, build, short_run

pytestmark = NEEDS_CLANG


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fuzz_link"), "fuzz_link") / "fuzz_link.bin"


def _seeds(corpus: Path) -> None:
    """Scripts that reach LIVE and move transfers, so that the fuzzer starts deep."""
    corpus.mkdir()
    live = bytes([0x31]) + bytes([8]) * 3  # config, then clean exchanges until LIVE
    (corpus / "live").write_bytes(live + bytes([4, 5, 8, 8, 6, 0x0F, 8]))
    (corpus / "replay").write_bytes(live + bytes([4, 7, 8, 2, 2, 1, 30, 1, 8]))
    (corpus / "crash").write_bytes(live + bytes([4, 9, 8, 7, 1, 3, 200, 8, 8, 7, 0, 8, 8]))


def test_fuzz_target_short_run(fuzzer: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    _seeds(corpus)
    short_run(fuzzer, corpus, tmp_path, "-max_total_time=15", "-seed=1", "-max_len=512")


def test_fuzz_target_catches_a_broken_invariant(fuzzer: Path, tmp_path: Path) -> None:
    """The target's checks are real: running a seed through a build whose engine breaks
    an invariant (delivered beyond held) aborts."""
    broken = tmp_path / "link_broken.c"
    src = (ROOT / "csrc" / "link.c").read_text()
    marker = "    o->in_delivered = l->in_delivered;\n"
    assert marker in src
    broken.write_text(src.replace(marker, "    o->in_delivered = l->in_held + 1;\n"))
    binary = tmp_path / "fuzz_link_broken.bin"
    build = subprocess.run(
        ["clang", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", f"-I{ROOT / 'csrc'}",
         "-o", str(binary), str(ROOT / "csrc" / "fuzz_link.c"), str(broken),
         str(ROOT / "csrc" / "wire.c")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    corpus = tmp_path / "corpus"
    _seeds(corpus)
    result = subprocess.run(
        [str(binary), "-runs=10", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "invariant failed" in result.stderr
