"""Wire format v1: the C codec (oae.wire) and the pure-Python model (oae.model.wire) against
the golden vectors, the check algorithms' published test values, and each other."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from vectors.wire_fields import frame_fields

import oae
from oae import _wire, wire
from oae.model import wire as model

ffi, lib = _wire.ffi, _wire.lib

VECTORS = json.loads((Path(__file__).parent / "vectors" / "wire_v1.json").read_text())["vectors"]
CODECS = [pytest.param(wire, id="c"), pytest.param(model, id="python")]
KEY = bytes(range(16))


def _key(vector: dict[str, Any]) -> bytes | None:
    return bytes.fromhex(vector["key_hex"]) if vector["key_hex"] else None


# --- the check algorithms -------------------------------------------------------------------


def test_crc32c_check_value() -> None:
    assert model.crc32c(b"123456789") == 0xE3069283
    assert lib.oae_crc32c(b"123456789", 9) == 0xE3069283


# SipHash-2-4 paper, appendix A / reference vectors: key 00..0f, message 00..(n-1).
SIPHASH_REFERENCE = {0: 0x726FDB47DD0E0E31, 1: 0x74F839C593DC67FD, 15: 0xA129CA6149BE45E5}


@pytest.mark.parametrize("n", sorted(SIPHASH_REFERENCE))
def test_siphash24_reference_vectors(n: int) -> None:
    msg = bytes(range(n))
    assert model.siphash24(KEY, msg) == SIPHASH_REFERENCE[n]
    assert lib.oae_siphash24(KEY, msg, n) == SIPHASH_REFERENCE[n]


def test_check_algorithms_agree_on_every_length() -> None:
    for n in range(0, 80):
        data, key = os.urandom(n), os.urandom(16)
        assert lib.oae_crc32c(data, n) == model.crc32c(data)
        assert lib.oae_siphash24(key, data, n) == model.siphash24(key, data)


# --- golden vectors ---------------------------------------------------------------------------


def test_vectors_cover_the_spec() -> None:
    valid = [v["fields"] for v in VECTORS if "fields" in v]
    assert len(valid) >= 12
    for name, values in [
        ("opcode", {1, 2, 3, 4}),
        ("phase", {1, 2, 3}),
        ("state", set(range(6))),
        ("transition", set(range(6))),
        ("direction", {0, 1}),
        ("beat_size", {1, 4, 16, 64}),
    ]:
        assert {f[name] for f in valid} == values, name
    assert {0, 1, 16} <= {f["length"] for f in valid}
    assert {f["flags"] & 7 for f in valid} >= {0, 1, 2, 4}
    assert any(f["tid"] == 0xFFFFFFFF for f in valid)
    codes = {v["error"]["code"] for v in VECTORS if "error" in v}
    assert codes == {c.name for c in wire.ErrorCode}


def test_vectors_file_is_what_the_generator_writes() -> None:
    """The checked-in vectors and their generator have not drifted apart."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, str(root / "tests" / "vectors" / "gen_wire_v1.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=60,
        check=True,
    ).stdout
    assert out == (root / "tests" / "vectors" / "wire_v1.json").read_text()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(codec: Any, vector: dict[str, Any]) -> None:
    data, key = bytes.fromhex(vector["frame_hex"]), _key(vector)
    if "error" in vector:
        with pytest.raises(wire.DecodeError) as exc:
            codec.decode_frame(data, vector["ethertype"], key)
        err = exc.value
        assert {"code": err.code.name, "field": err.field, "offset": err.offset} == vector["error"]
        return
    frame = codec.decode_frame(data, vector["ethertype"], key)
    assert frame_fields(frame) == vector["fields"]
    assert int.from_bytes(data[70:78], "big") == frame.record.check
    assert codec.encode_frame(frame, key) == data
    assert codec.decode_record(data[14:], key) == frame.record
    assert codec.encode_record(frame.record, key) == data[14:]


# --- Record validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"opcode": 0},
        {"opcode": 5},
        {"phase": 0},
        {"phase": 4},
        {"state": 6},
        {"transition": 6},
        {"direction": 2},
        {"peer_half": b"abc"},
        {"tid": -1},
        {"epoch": 1 << 32},
        {"seq": 0},
        {"nonce": 0},
        {"commit_upto": 1 << 32},
        {"delivered_upto": -1},
        {"beat_size": 2},
        {"beat_size": 4, "beat_index": 4},
        {"beat_index": -1},
        {"sack": 256},
        {"payload": bytes(17)},
        {"payload": "text"},
        {"flags": 0x08},
        {"flags": 0x100},
        {"check": 1 << 64},
    ],
)
def test_record_rejects_out_of_range(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wire.Record(**bad)


def test_record_coerces_to_enums() -> None:
    r = wire.Record(opcode=1, phase=2, state=5, transition=4, direction=1)
    assert r.opcode is wire.Opcode.HELLO and r.phase is wire.Phase.RECONCILE
    assert r.state is wire.State.INDEFINITE and r.transition is wire.Transition.FREE
    assert r.direction is wire.Direction.IN
    assert r.length == 0 and not r.keyed


@pytest.mark.parametrize(
    "bad",
    [
        {"dst": bytes(5)},
        {"src": bytes(7)},
        {"ethertype": 0x10000},
        {"ethertype": -1},
        {"record": "x"},
    ],
)
def test_frame_rejects_out_of_range(bad: dict[str, Any]) -> None:
    args = {"dst": bytes(6), "src": bytes(6), "ethertype": wire.ETHERTYPE, "record": wire.Record()}
    with pytest.raises(ValueError):
        wire.Frame(**(args | bad))


@pytest.mark.parametrize("codec", CODECS)
def test_bad_key_and_ethertype_arguments(codec: Any) -> None:
    frame = wire.Frame(bytes(6), bytes(6), wire.ETHERTYPE, wire.Record())
    with pytest.raises(ValueError, match="key"):
        codec.encode_frame(frame, bytes(15))
    with pytest.raises(ValueError, match="key"):
        codec.decode_frame(wire.encode_frame(frame), key=b"short")
    with pytest.raises(ValueError, match="ethertype"):
        codec.decode_frame(wire.encode_frame(frame), ethertype=0x10000)


# --- behaviour both codecs share ----------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_keyed_flag_follows_the_key(codec: Any) -> None:
    record = wire.Record(flags=wire.Flag.KEYED | wire.Flag.CONTROL)
    frame = wire.Frame(bytes(6), bytes(6), wire.ETHERTYPE, record)
    unkeyed = codec.decode_frame(codec.encode_frame(frame)).record
    assert unkeyed.flags == wire.Flag.CONTROL and not unkeyed.keyed
    assert unkeyed.check == model.crc32c(codec.encode_frame(frame)[14:70])
    keyed = codec.decode_frame(codec.encode_frame(frame, KEY), key=KEY).record
    assert keyed.flags == wire.Flag.KEYED | wire.Flag.CONTROL and keyed.keyed
    assert keyed == dataclasses.replace(record, check=keyed.check)


@pytest.mark.parametrize("codec", CODECS)
def test_record_level_length_errors(codec: Any) -> None:
    rec = codec.encode_record(wire.Record())
    with pytest.raises(wire.DecodeError) as short:
        codec.decode_record(rec[:63])
    assert (short.value.code, short.value.offset) == (wire.ErrorCode.TRUNCATED, 77)
    with pytest.raises(wire.DecodeError) as long:
        codec.decode_record(rec + b"\0")
    assert (long.value.code, long.value.offset) == (wire.ErrorCode.OVERSIZED, 78)


@pytest.mark.parametrize("codec", CODECS)
def test_padding_every_length_and_offset(codec: Any) -> None:
    """Every payload length, and a non-zero byte at each position of the record's payload
    field: inside the payload it is data, in the padding it is PADDING at its offset (the
    C decoder tests the padding a word at a time, then finds the offset)."""

    def with_check(raw: bytearray) -> bytes:
        raw[70:74] = bytes(4)
        raw[74:78] = model.crc32c(bytes(raw[14:70])).to_bytes(4, "big")
        return bytes(raw)

    for length in range(wire.PAYLOAD_MAX + 1):
        base = wire.Frame(bytes(6), bytes(6), wire.ETHERTYPE, wire.Record(payload=bytes(length)))
        clean = bytearray(wire.encode_frame(base))
        for pos in range(wire.PAYLOAD_MAX):
            for value in (0x01, 0x80):
                raw = bytearray(clean)
                raw[54 + pos] = value
                data = with_check(raw)
                if pos < length:
                    assert codec.decode_frame(data).record.payload[pos] == value
                    continue
                with pytest.raises(wire.DecodeError) as exc:
                    codec.decode_frame(data)
                assert (exc.value.code, exc.value.offset) == (wire.ErrorCode.PADDING, 54 + pos)


@pytest.mark.parametrize("codec", CODECS)
def test_accepts_any_bytes_like(codec: Any) -> None:
    data = wire.encode_frame(wire.Frame(bytes(6), bytes(6), wire.ETHERTYPE, wire.Record()))
    expected = codec.decode_frame(data)
    assert codec.decode_frame(bytearray(data)) == expected
    assert codec.decode_frame(memoryview(data)) == expected


def test_decode_error_is_one_clear_exception() -> None:
    with pytest.raises(oae.DecodeError) as exc:
        oae.decode_frame(bytes(78))
    err = exc.value
    assert isinstance(err, oae.OaeError)
    assert str(err).startswith("bad frame: ETHERTYPE at offset 12 (field ethertype): ")
    assert (err.code, err.field, err.offset) == (oae.ErrorCode.ETHERTYPE, "ethertype", 12)


def test_c_error_names_match_enum() -> None:
    for code in wire.ErrorCode:
        assert ffi.string(lib.oae_error_name(code)).decode() == code.name
    assert ffi.string(lib.oae_error_name(0)) == b"OK"
    assert ffi.string(lib.oae_error_name(99)) == b"UNKNOWN"


def test_c_loop_round_trips() -> None:
    rec = ffi.new("oae_record *")
    rec.opcode, rec.phase, rec.seq, rec.nonce, rec.beat_size = 2, 3, 0xFFFFFFF0, 1, 1
    assert lib.oae_codec_loop(rec, ffi.NULL, 100) == 100  # seq wraps past 0 to 1
    assert lib.oae_codec_loop(rec, KEY, 100) == 100


def test_threads_do_not_share_buffers() -> None:
    """The binding keeps per-thread C buffers; concurrent codecs must not see each other's."""
    failures: list[str] = []

    def worker(n: int) -> None:
        for i in range(1, 1500):
            rec = wire.Record(seq=i, nonce=n, tid=i * n, payload=bytes([n]) * (i % 17))
            frame = wire.Frame(bytes([n]) * 6, bytes(6), wire.ETHERTYPE, rec)
            got = wire.decode_frame(wire.encode_frame(frame)).record
            if dataclasses.replace(got, check=0) != rec:
                failures.append(f"thread {n} record {i}")
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.mark.parametrize("codec", CODECS)
def test_decoded_objects_are_ordinary_frozen_records(codec: Any) -> None:
    """The C binding builds decoded Records/Frames without re-running validation; they must
    still be exactly the public types, frozen, and equal/hashable/repr'd as constructed ones."""
    rec = wire.Record(state=2, transition=2, seq=5, nonce=9, beat_size=4, payload=b"ab")
    frame = wire.Frame(bytes(6), bytes([1]) * 6, wire.ETHERTYPE, rec)
    got = codec.decode_frame(codec.encode_frame(frame, KEY), key=KEY)
    built = wire.Frame(
        frame.dst, frame.src, frame.ethertype, dataclasses.replace(got.record, seq=5)
    )
    assert type(got) is wire.Frame and type(got.record) is wire.Record
    assert got == built and hash(got) == hash(built) and repr(got) == repr(built)
    assert got.record.keyed and got.record.state is wire.State.REFLECTING
    for obj, field in ((got, "dst"), (got.record, "seq")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(obj, field)
    assert vars(got.record) == vars(built.record)
    decoded = codec.decode_record(codec.encode_record(rec))
    assert type(decoded) is wire.Record and decoded == dataclasses.replace(rec, check=decoded.check)
