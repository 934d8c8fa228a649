"""The C wire codec under AddressSanitizer and UBSan: a short, bounded libFuzzer run of
csrc/fuzz_wire.c seeded with the golden vectors, and a sanitized standalone driver that
checks the codec against every golden vector. Long runs: docs/fuzzing.md."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fuzzutil import NEEDS_CLANG, ROOT, build, short_run

from oae.wire import ErrorCode

VECTORS = json.loads((ROOT / "tests" / "vectors" / "wire_v1.json").read_text())["vectors"]

pytestmark = NEEDS_CLANG


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fuzz_wire"), "fuzz_wire", "fuzz_wire_vectors")


def _vector_lines(vectors: list[dict]) -> str:
    lines = []
    for v in vectors:
        code = ErrorCode[v["error"]["code"]] if "error" in v else 0
        offset = v["error"]["offset"] if "error" in v else 0
        lines.append(f"{v['frame_hex'] or '-'} {v['ethertype']} {v['key_hex'] or '-'} "
                     f"{int(code)} {offset}")  # fmt: skip
    return "\n".join(lines) + "\n"


def _run_driver(binaries: Path, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries / "fuzz_wire_vectors.bin")],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sanitized_codec_passes_golden_vectors(binaries: Path) -> None:
    result = _run_driver(binaries, _vector_lines(VECTORS))
    assert result.returncode == 0, result.stderr
    assert f"{len(VECTORS)} vectors, 0 failures" in result.stdout


def test_vector_driver_reports_a_wrong_expectation(binaries: Path) -> None:
    """The driver is a real check: a vector with the wrong expected error fails it."""
    bad = dict(VECTORS[-1], error={"code": "SEQ", "field": "seq", "offset": 30})
    result = _run_driver(binaries, _vector_lines([bad]))
    assert result.returncode == 1
    assert "want SEQ at 30" in result.stderr


def test_fuzz_target_short_run(binaries: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, v in enumerate(VECTORS):
        mode, key = (1, bytes.fromhex(v["key_hex"])) if v["key_hex"] else (0, b"")
        mode |= 2 if v["ethertype"] == 0x88B6 else 0
        (corpus / f"vector{i}").write_bytes(bytes([mode]) + key + bytes.fromhex(v["frame_hex"]))
    short_run(
        binaries / "fuzz_wire.bin",
        corpus,
        tmp_path,
        "-runs=1000000",
        "-max_total_time=15",
        "-seed=1",
    )
