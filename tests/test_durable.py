"""Durable stores: the link's register file (csrc/durable.c) and the epoch layer's
FileStore (oae/epoch/durable.py). Both keep two slots in one file, overwrite the older in
place and fdatasync once; a crash at any point must leave the old or the new record.

A crash during an in-place write can leave the written slot torn (any prefix or suffix of
the new bytes over the old ones, or garbage); it never touches the other slot and never
changes the file's size. The tests below do each of those at every byte offset of each
slot, plus truncation (not a crash outcome here, but a damaged file must give the
surviving slot or a clear error) and sequence numbers around the 64-bit wrap.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from oae._pump import ffi, lib

from oae.epoch.durable import DurableError, DurableRecord, FileStore
from oae.epoch.messages import Wave

SLOT = lib.OAE_DURABLE_SLOT
DSIZE = ffi.sizeof("oae_link_durable")
REC = 16 + DSIZE + 4  # header, registers, CRC32C


# ------------------------------------------------------------------ link registers (C)
def regs(n: int, version: int = lib.OAE_LINK_DURABLE_VERSION) -> object:
    d = ffi.new("oae_link_durable *")
    d.version = version
    d.peer_mac = bytes([2, 0, 0, 0, 0, n & 0xFF])
    d.has_peer = 1
    d.out_hi = n
    d.out_settled = n
    d.in_delivered = 3 * n
    d.epoch = n // 2
    return d


def store(path: Path, d: object) -> None:
    assert lib.oae_durable_store(str(path).encode(), d) == 0


def load(path: Path) -> tuple[int, int | None]:
    """(rc, out_hi): out_hi identifies which record was read (None if rc != 0)."""
    d = ffi.new("oae_link_durable *")
    rc = lib.oae_durable_load(str(path).encode(), d)
    if rc != 0:
        return rc, None
    assert bytes(ffi.buffer(d)) == bytes(ffi.buffer(regs(d.out_hi)))  # never a mix
    return rc, d.out_hi


def slot_image(seq: int, d: object) -> bytes:
    body = struct.pack(">IBBHQ", 0x4F414452, 0, 1, DSIZE, seq) + bytes(ffi.buffer(d))
    return body + struct.pack(">I", lib.oae_crc32c(body, len(body)))


def slot_seq(data: bytes, i: int) -> int:
    return struct.unpack_from(">Q", data, i * SLOT + 8)[0]


def test_registers_round_trip_in_place_and_alternate_slots(tmp_path: Path) -> None:
    p = tmp_path / "durable"
    assert load(p) == (-errno.ENOENT, None)
    store(p, regs(1))
    ino = p.stat().st_ino
    assert p.stat().st_size == 2 * SLOT and load(p) == (0, 1)
    assert not (tmp_path / "durable.tmp").exists()
    for n in range(2, 7):
        store(p, regs(n))
        data = p.read_bytes()
        # record n (sequence n) is in slot (n-1) % 2, the other holds n-1
        assert slot_seq(data, (n - 1) % 2) == n and slot_seq(data, n % 2) == n - 1
        assert load(p) == (0, n)
    assert p.stat().st_ino == ino  # updated in place, never replaced


def _two_slot_file(p: Path) -> tuple[bytes, bytes]:
    """Records 1 (slot 0) and 2 (slot 1) stored; the file image before and after storing
    record 3 (which goes to slot 0)."""
    store(p, regs(1))
    store(p, regs(2))
    before = p.read_bytes()
    store(p, regs(3))
    after = p.read_bytes()
    assert after[SLOT:] == before[SLOT:] and after[REC:] == before[REC:]
    return before, after


def test_registers_torn_write_at_every_offset_leaves_old_or_new(tmp_path: Path) -> None:
    p = tmp_path / "durable"
    before, after = _two_slot_file(p)
    for k in range(REC + 1):
        for img in (after[:k] + before[k:], before[:k] + after[k:REC] + before[REC:]):
            p.write_bytes(img)
            rc, got = load(p)
            assert rc == 0 and got in (2, 3), k
            assert got == (3 if img == after else 2), k
        # after the crash the next store continues from the record that survived
        p.write_bytes(after[:k] + before[k:])
        store(p, regs(4))
        assert load(p) == (0, 4)


def test_registers_corrupt_byte_in_either_slot_reads_the_other(tmp_path: Path) -> None:
    p = tmp_path / "durable"
    _, after = _two_slot_file(p)  # slot 0: record 3 (newest), slot 1: record 2
    for slot, survivor in ((0, 2), (1, 3)):
        for k in range(REC):
            img = bytearray(after)
            img[slot * SLOT + k] ^= 0x5A
            p.write_bytes(bytes(img))
            assert load(p) == (0, survivor), (slot, k)
    img = bytearray(after)
    img[5] ^= 1
    img[SLOT + 20] ^= 1
    p.write_bytes(bytes(img))
    assert load(p) == (-errno.EINVAL, None)  # both slots bad: damaged, not a guess


def test_registers_truncated_file_gives_a_whole_slot_or_einval(tmp_path: Path) -> None:
    p = tmp_path / "durable"
    _, after = _two_slot_file(p)  # slot 0: record 3, slot 1: record 2
    for n in range(len(after) + 1):
        p.write_bytes(after[:n])
        rc, got = load(p)
        if n < REC:
            assert rc == -errno.EINVAL, n
        else:
            assert (rc, got) == (0, 3), n
    p.write_bytes(after[:SLOT])  # a damaged layout: the next store rewrites it whole
    store(p, regs(9))
    assert load(p) == (0, 9) and p.stat().st_size == 2 * SLOT
    assert slot_seq(p.read_bytes(), 0) == 4  # the sequence continues


@pytest.mark.parametrize("first", [2**64 - 2, 2**64 - 1])
def test_registers_sequence_wraps(tmp_path: Path, first: int) -> None:
    p = tmp_path / "durable"
    img = bytearray(2 * SLOT)
    img[:REC] = slot_image(first, regs(1))
    img[SLOT : SLOT + REC] = slot_image(first - 1, regs(0))
    p.write_bytes(bytes(img))
    assert load(p) == (0, 1)
    for n in range(2, 6):
        store(p, regs(n))
        assert load(p) == (0, n)
    data = p.read_bytes()
    assert {slot_seq(data, 0), slot_seq(data, 1)} == {(first + 3) % 2**64, (first + 4) % 2**64}


def test_registers_newest_sequence_wins_in_either_slot(tmp_path: Path) -> None:
    p = tmp_path / "durable"
    for a, b, want in ((7, 8, 2), (8, 7, 1), (1, 1000, 2)):
        img = bytearray(2 * SLOT)
        img[:REC] = slot_image(a, regs(1))
        img[SLOT : SLOT + REC] = slot_image(b, regs(2))
        p.write_bytes(bytes(img))
        assert load(p) == (0, want)
        store(p, regs(5))  # overwrites the older slot only
        assert load(p) == (0, 5)
        data = p.read_bytes()
        kept = 1 if want == 2 else 0  # the slot holding the newest record
        assert data[kept * SLOT : kept * SLOT + REC] == img[kept * SLOT : kept * SLOT + REC]


def test_registers_bad_files_are_einval(tmp_path: Path) -> None:
    p = tmp_path / "durable"
    for data in (b"", b"\0" * (2 * SLOT), os.urandom(2 * SLOT), b"x" * (2 * SLOT + 1)):
        p.write_bytes(data)
        assert load(p)[0] == -errno.EINVAL
    img = bytearray(2 * SLOT)
    img[:REC] = slot_image(1, regs(1, version=lib.OAE_LINK_DURABLE_VERSION + 1))
    p.write_bytes(bytes(img))
    assert load(p)[0] == -errno.EINVAL  # another version: not read as this one
    p.unlink()
    p.mkdir()
    assert load(p)[0] < 0


def test_registers_file_of_the_previous_layout_loads_and_is_converted(tmp_path: Path) -> None:
    p = tmp_path / "durable"
    body = bytes(ffi.buffer(regs(4)))
    p.write_bytes(struct.pack(">II", 0x4F414544, lib.oae_crc32c(body, len(body))) + body)
    assert load(p) == (0, 4)
    store(p, regs(5))
    assert p.stat().st_size == 2 * SLOT and load(p) == (0, 5)


def test_runtime_refuses_a_damaged_register_file(tmp_path: Path) -> None:
    from oae.errors import UsageError
    from oae.runtime.link import _load_durable

    assert _load_durable(tmp_path) == ffi.NULL
    store(tmp_path / "durable", regs(3))
    assert _load_durable(tmp_path).out_hi == 3
    (tmp_path / "durable").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="damaged"):
        _load_durable(tmp_path)


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_register_store_under_address_and_undefined_sanitizers(tmp_path: Path) -> None:
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    r = subprocess.run(["make", "-s", "-C", str(csrc), f"OUT={tmp_path}", "durable_check"],
                       capture_output=True, text=True, timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(tmp_path / "durable_check.bin"), str(tmp_path)],
                       capture_output=True, text=True, timeout=240)  # fmt: skip
    assert r.returncode == 0 and "durable_check: ok" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------ epoch FileStore
def rec(e: int, **kw: object) -> DurableRecord:
    return DurableRecord(committed=Wave(e, 1, 0), next_attempt=e + 1, **kw)  # type: ignore[arg-type]


def _epoch_file(p: Path) -> tuple[bytes, bytes]:
    """Records of epochs 1 (slot 0) and 2 (slot 1); the image before and after epoch 3."""
    st = FileStore(p)
    st.write(rec(1))
    st.write(rec(2))
    before = p.read_bytes()
    st.write(rec(3))
    after = p.read_bytes()
    assert len(before) == len(after) == 2 * 4096
    return before, after


def test_file_store_round_trip_in_place(tmp_path: Path) -> None:
    p = tmp_path / "epoch.json"
    st = FileStore(p)
    assert st.load() == DurableRecord()
    r1 = rec(1, tree_parent=2, tree_children=frozenset({3, 4}), committed_log=((3, 7),))
    st.write(r1)
    ino = p.stat().st_ino
    assert FileStore(p).load() == r1 and p.stat().st_size == 8192
    for e in range(2, 10):
        st.write(rec(e, aborted=frozenset({Wave(e + 1, 1, 2)})))
        assert FileStore(p).load() == rec(e, aborted=frozenset({Wave(e + 1, 1, 2)}))
    st.write(rec(9))  # same epoch again: allowed (not a rollback)
    assert p.stat().st_ino == ino and not (tmp_path / "epoch.json.tmp").exists()


def test_file_store_torn_write_at_every_offset_leaves_old_or_new(tmp_path: Path) -> None:
    p = tmp_path / "epoch.json"
    before, after = _epoch_file(p)
    n = next(i for i in range(len(after) - 1, -1, -1) if after[i] != before[i]) + 1
    assert n <= 4096  # record 3 went to slot 0 only
    for k in range(n + 1):
        for img in (after[:k] + before[k:], before[:k] + after[k:n] + before[n:]):
            p.write_bytes(img)
            got = FileStore(p).load()
            assert got == (rec(3) if img == after else rec(2)), k
        p.write_bytes(after[:k] + before[k:])
        st = FileStore(p)  # a restarted node: reads the survivor, continues from it
        st.write(rec(4))
        assert FileStore(p).load() == rec(4)


def test_file_store_corrupt_byte_in_either_slot_reads_the_other(tmp_path: Path) -> None:
    p = tmp_path / "epoch.json"
    _, after = _epoch_file(p)  # slot 0: epoch 3, slot 1: epoch 2
    n = 24 + len(rec(3).to_bytes())
    for slot, survivor in ((0, rec(2)), (1, rec(3))):
        for k in range(n):
            img = bytearray(after)
            img[slot * 4096 + k] ^= 0x21
            p.write_bytes(bytes(img))
            assert FileStore(p).load() == survivor, (slot, k)
    img = bytearray(after)
    img[30] ^= 1
    img[4096 + 30] ^= 1
    p.write_bytes(bytes(img))
    with pytest.raises(DurableError, match="corrupt durable epoch record .*no valid slot"):
        FileStore(p).load()
    with pytest.raises(DurableError, match="corrupt"):  # and a write does not paper over it
        FileStore(p).write(rec(5))


def test_file_store_truncated_gives_a_whole_record_or_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "epoch.json"
    _, after = _epoch_file(p)
    n0 = 24 + len(rec(3).to_bytes())
    for n in range(len(after) + 1):
        p.write_bytes(after[:n])
        if n < n0:
            with pytest.raises(DurableError, match="corrupt"):
                FileStore(p).load()
        else:
            assert FileStore(p).load() == rec(3), n
    p.write_bytes(after[:5000])  # a damaged layout: rewritten whole by the next write
    st = FileStore(p)
    st.write(rec(4))
    assert FileStore(p).load() == rec(4) and p.stat().st_size == 8192


def test_file_store_refuses_rollback_also_after_restart(tmp_path: Path) -> None:
    p = tmp_path / "epoch.json"
    FileStore(p).write(rec(5))
    FileStore(p).write(rec(6))
    for st in (FileStore(p), FileStore(p)):
        with pytest.raises(DurableError, match="roll committed epoch 6 back to 5"):
            st.write(rec(5))
    assert FileStore(p).load() == rec(6)


def test_file_store_sequence_wraps(tmp_path: Path) -> None:
    from oae.epoch import durable

    p = tmp_path / "epoch.json"
    img = bytearray(8192)
    f1 = durable._frame(2**64 - 1, rec(1).to_bytes())
    f0 = durable._frame(2**64 - 2, rec(0).to_bytes())
    img[: len(f1)] = f1
    img[4096 : 4096 + len(f0)] = f0
    p.write_bytes(bytes(img))
    assert FileStore(p).load() == rec(1)
    st = FileStore(p)
    for e in range(2, 6):
        st.write(rec(e))
        assert FileStore(p).load() == rec(e)
    seqs = {struct.unpack_from(">Q", p.read_bytes(), off + 8)[0] for off in (0, 4096)}
    assert seqs == {2, 3}


def test_file_store_records_never_outgrow_the_first_slots(tmp_path: Path) -> None:
    p = tmp_path / "epoch.json"
    st = FileStore(p)
    st.write(rec(1))
    ino = p.stat().st_ino
    full = rec(
        2,
        tree_parent=7,
        tree_children=frozenset(range(64)),
        committed_log=tuple((n, 2**64 - 1) for n in range(64)),
        prepared=Wave(3, 2**32 - 1, 2**32 - 1),
        prepared_parent=2**32 - 1,
        prepared_children=frozenset(range(64, 128)),
        prepared_log=tuple((n, n) for n in range(64)),
        initiating=Wave(3, 1, 0),
        aborted=frozenset(Wave(3, a, a % 7) for a in range(1, 65)),
    )
    assert len(full.to_bytes()) == 2876  # csrc/epoch.h OAE_EPOCH_RECORD_MAX
    for r in (full, rec(3), full.evolve(committed=Wave(4, 1, 0))):
        st.write(r)
        assert FileStore(p).load() == r
    assert p.stat().st_ino == ino and p.stat().st_size == 8192


def test_slot_file_grows_when_a_payload_outgrows_its_slots(tmp_path: Path) -> None:
    from oae.epoch.durable import SlotFile

    f = SlotFile(tmp_path / "big")
    f.write(b"small")
    f.write(b"x" * 5000)
    size = (tmp_path / "big").stat().st_size
    assert size > 8192 and size % 8192 == 0 and f.read() == b"x" * 5000
    ino = (tmp_path / "big").stat().st_ino
    f.write(b"y" * 4000)
    f.write(b"z" * 5000)
    assert (tmp_path / "big").stat().st_ino == ino and f.read() == b"z" * 5000


LEGACY_JSON = (
    '{"aborted": [[5, 2, 1]], "committed": [4, 1, 0], "committed_log": [[3, 7]], '
    '"initiating": null, "next_attempt": 5, "prepared": null, "prepared_children": [], '
    '"prepared_log": [], "prepared_parent": null, "tree_children": [3], "tree_parent": 2}'
)
LEGACY = rec(4, aborted=frozenset({Wave(5, 2, 1)}), committed_log=((3, 7),),
             tree_children=frozenset({3}), tree_parent=2)  # fmt: skip


def test_file_store_reads_the_previous_json_layouts_and_converts_them(tmp_path: Path) -> None:
    from oae.epoch import durable

    p = tmp_path / "epoch.json"
    p.write_text(LEGACY_JSON)  # the plain file of the first layout
    assert FileStore(p).load() == LEGACY
    with pytest.raises(DurableError, match="roll"):
        FileStore(p).write(rec(3))
    FileStore(p).write(rec(5))
    assert FileStore(p).load() == rec(5) and p.stat().st_size == 8192
    img = bytearray(8192)  # JSON in a slot: the second layout
    f = durable._frame(7, LEGACY_JSON.encode())
    img[: len(f)] = f
    p.write_bytes(bytes(img))
    assert FileStore(p).load() == LEGACY
    FileStore(p).write(rec(6))
    assert FileStore(p).load() == rec(6) and p.read_bytes()[4096 + 24] == 1  # binary, v1


def test_file_store_bad_files_give_a_clear_error(tmp_path: Path) -> None:
    from oae.epoch import durable

    p = tmp_path / "epoch.json"
    for data in (b"", b"{not json", b"\0" * 8192, os.urandom(8192), b"OAEP" + b"\xff" * 100):
        p.write_bytes(data)
        with pytest.raises(DurableError, match="corrupt durable epoch record"):
            FileStore(p).load()
    for payload in (
        b"\xff\xfe",
        b"[1, 2]",
        b'{"committed": null}',
        b"\x02" + bytes(59),
        rec(1).to_bytes()[:-1],
        rec(1).to_bytes() + b"\0",
    ):
        img = bytearray(8192)
        f = durable._frame(1, payload)
        img[: len(f)] = f
        p.write_bytes(bytes(img))
        with pytest.raises(DurableError, match="corrupt durable epoch record"):
            FileStore(p).load()


def test_slot_file_holds_any_bytes_and_names_its_record_in_errors(tmp_path: Path) -> None:
    from oae.epoch.durable import SlotFile

    f = SlotFile(tmp_path / "2pc.json", "2pc store")
    assert f.read() is None
    for i in range(5):
        f.write(bytes([i]) * (i * 1500))
        assert SlotFile(f.path).read() == bytes([i]) * (i * 1500)
    assert f.path.stat().st_size == 2 * 12288  # grew once (at 4,500 bytes), room to double
    f.path.write_bytes(b"\0" * 100)
    with pytest.raises(DurableError, match=r"corrupt 2pc store .*2pc.json: no valid slot"):
        f.read()
