"""The link engine under AddressSanitizer and UBSan: a short, bounded libFuzzer run of
csrc/fuzz_link.c (arbitrary bytes as frames plus a byte-driven script of API calls, gate
decisions and resets included, with the engine's invariants checked after every step).
Long runs: docs/fuzzing.md."""

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
    # gates on (config bit 6): a gated CONTROL transfer each way, every decision taken
    # (op 11), then a reset (op 10) or a crash-restart (op 7)
    gated = bytes([0x71]) + bytes([8]) * 3 + bytes([4, 0xC3, 8])
    (corpus / "gated").write_bytes(gated + bytes([11, 8, 11, 8, 11, 8]))
    (corpus / "gated_reset").write_bytes(gated + bytes([9, 0, 8, 10, 1, 8, 8, 8]))
    (corpus / "gated_crash").write_bytes(gated + bytes([11, 8, 7, 1, 3, 200, 8, 8, 11, 8]))


def test_fuzz_target_short_run(fuzzer: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    _seeds(corpus)
    short_run(fuzzer, corpus, tmp_path, "-max_total_time=15", "-seed=1", "-max_len=512")


@pytest.mark.parametrize(
    "marker, replacement",
    [
        # delivered beyond held
        ("    o->in_delivered = l->in_delivered;\n", "    o->in_delivered = l->in_held + 1;\n"),
        # gates: a CONTROL delivery reported before the application's report()
        ("    return l->in_reported < d ? l->in_reported : d;\n", "    return d;\n"),
    ],
    ids=["registers", "report-gate"],
)
def test_fuzz_target_catches_a_broken_invariant(
    fuzzer: Path, tmp_path: Path, marker: str, replacement: str
) -> None:
    """The target's checks are real: running the seeds through a build whose engine breaks
    an invariant aborts."""
    broken = tmp_path / "link_broken.c"
    src = (ROOT / "csrc" / "link.c").read_text()
    assert marker in src
    broken.write_text(src.replace(marker, replacement))
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
