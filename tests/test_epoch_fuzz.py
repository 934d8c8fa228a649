"""The epoch machine under AddressSanitizer and UBSan: a short, bounded libFuzzer run of
csrc/fuzz_epoch.c (a byte-driven script of inputs to one node, records and payloads from
arbitrary bytes, the machine's invariants checked after every input). Long runs:
docs/fuzzing.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzutil import NEEDS_CLANG, broken_build_aborts, build, short_run

from oae.epoch.durable import DurableRecord
from oae.epoch.messages import Wave

pytestmark = NEEDS_CLANG

RECORD = DurableRecord(
    committed=Wave(1, 1, 0),
    initiating=Wave(2, 0, 0),
    aborted=frozenset({Wave(2, 1, 30)}),
    next_attempt=2,
).to_bytes()
# steps: op, link byte, tid, then the op's payload bytes (see csrc/fuzz_epoch.c); the
# link byte 0x00 names neighbour 20, 0x08 neighbour 10
ALL_UP, PROPOSE, WRITTEN = [14, 0, 0], [0, 0, 0], [1, 0, 0]
MY_WAVE = [0x01, 0xE1]  # payload: PROPOSE of (1, 1, 0), the wave node 0 starts
PROPOSE_W = [0x02, 0x00]  # payload: PROPOSE of (1, 0, 20)


def reflected(link: int, payload: list[int]) -> list[int]:
    return [6, link, 1, *payload]  # tid 1


SEEDS = {
    # two links: initiate, write, both neighbours hold, commit; their reports (DONE)
    "initiate": [0x01, *ALL_UP, *PROPOSE, *WRITTEN, *reflected(0x00, MY_WAVE),
                 *reflected(0x08, MY_WAVE), 0x19, 0x00, 1, 0x00, 0x00, 0x19, 0x08, 1, 0x00,
                 0x00],
    # join from 20, a child on 10, prepare (hold 20's offer), the commit arrives
    "join": [0x01, *ALL_UP, 4, 0x00, 1, *PROPOSE_W, 0, *WRITTEN, *reflected(0x08, PROPOSE_W),
             7, 0x00, 1, *PROPOSE_W, 8, 0x08, 1, 0x84, 0xE5, 0, 0, 0],
    # a record (committed epoch 1, an undecided wave of its own: aborted at the start,
    # one aborted wave already) and status messages after restart
    "record": [0x0A, len(RECORD), *RECORD, *ALL_UP,
               7, 0x08, 3, 0x1A, 0x00, 9, 0x10, 3, 0x84, 0xE5, 0, 0, 0],
}  # fmt: skip


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fuzz_epoch"), "fuzz_epoch") / "fuzz_epoch.bin"


def _seeds(corpus: Path) -> None:
    corpus.mkdir()
    for name, script in SEEDS.items():
        (corpus / name).write_bytes(bytes(script))


def test_fuzz_target_short_run(fuzzer: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    _seeds(corpus)
    short_run(fuzzer, corpus, tmp_path, "-max_total_time=15", "-seed=1", "-max_len=512")


@pytest.mark.parametrize(
    "marker, replacement",
    [
        # the parent's offer held under a tid it never offered
        ("    emit_link(m, OAE_EA_HOLD, p, inc->tid);\n",
         "    emit_link(m, OAE_EA_HOLD, p, inc->tid + 1);\n"),
        # a wave transfer committed under a tid never reflected
        ("            emit_link(m, OAE_EA_COMMIT, (int)i, o->tid);\n",
         "            emit_link(m, OAE_EA_COMMIT, (int)i, o->tid + 1);\n"),
        # the record loses its aborted waves on the way to the disk
        ("    out[6] = (uint8_t)r->n_aborted;\n", "    out[6] = 0;\n"),
    ],
    ids=["hold-tid", "commit-tid", "record"],
)  # fmt: skip
def test_fuzz_target_catches_a_broken_invariant(
    tmp_path: Path, marker: str, replacement: str
) -> None:
    """The target's checks are real: running the seeds through a build whose machine
    breaks an invariant aborts."""
    broken_build_aborts(tmp_path, "fuzz_epoch", "epoch", marker, replacement, [], _seeds)
