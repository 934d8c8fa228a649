"""The scapy layer against the golden vectors and the C codec: same bytes, same fields, same
verdict on the check."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Ether
from scapy.packet import Padding, Raw, raw

from oae import wire
from oae.model import wire as model
from oae.scapy_layer import OAE, bind, check_ok, record_of, seal

VECTORS = json.loads((Path(__file__).parent / "vectors" / "wire_v1.json").read_text())["vectors"]
VALID = [v for v in VECTORS if "fields" in v]
INVALID = [v for v in VECTORS if "error" in v]
KEY = bytes(range(16))


def _key(vector: dict[str, Any]) -> bytes | None:
    return bytes.fromhex(vector["key_hex"]) if vector["key_hex"] else None


def _build(dst: bytes, src: bytes, ethertype: int, fields: dict[str, Any]) -> Ether:
    """Ether()/OAE() from record fields, leaving length and check to the layer."""
    return Ether(dst=dst, src=src, type=ethertype) / OAE(
        opcode=fields["opcode"],
        phase=fields["phase"],
        state=fields["state"],
        direction=fields["direction"],
        transition=fields["transition"],
        peer_half=fields["peer_half"],
        tid=fields["tid"],
        epoch=fields["epoch"],
        seq=fields["seq"],
        nonce=fields["nonce"],
        commit_upto=fields["commit_upto"],
        held_upto=fields["held_upto"],
        delivered_upto=fields["delivered_upto"],
        beat_size=fields["beat_size"],
        beat_index=fields["beat_index"],
        sack=fields["sack"],
        flags=fields["flags"] & ~int(wire.Flag.KEYED),
        data=fields["payload"],
    )


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_dissects_and_builds(vector: dict[str, Any]) -> None:
    data, key = bytes.fromhex(vector["frame_hex"]), _key(vector)
    bind(vector["ethertype"])
    pkt = Ether(data)
    assert OAE in pkt and check_ok(pkt, key)
    got = record_of(pkt)
    expected = vector["fields"]
    assert pkt.dst.replace(":", "") == expected["dst"]
    assert pkt.src.replace(":", "") == expected["src"]
    assert pkt.type == expected["ethertype"]
    assert got["payload"].hex() == expected["payload"]
    assert got["peer_half"].hex() == expected["peer_half"]
    assert f"{got['check']:016x}" == expected["check"]
    for name in set(expected) - {"dst", "src", "ethertype", "payload", "peer_half", "check"}:
        assert got[name] == expected[name], name
    assert raw(pkt) == data
    fields = {**expected, "peer_half": bytes.fromhex(expected["peer_half"])}
    fields["payload"] = bytes.fromhex(expected["payload"])
    built = _build(bytes.fromhex(expected["dst"]), bytes.fromhex(expected["src"]),
                   expected["ethertype"], fields)  # fmt: skip
    if key is not None:
        built = seal(built, key)
    assert raw(built) == data


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_check_verdict_matches_codec(vector: dict[str, Any]) -> None:
    """check_ok agrees with the codecs wherever they get as far as the check: False where they
    report CHECK, True where they report a field error found after the check."""
    data, key = bytes.fromhex(vector["frame_hex"]), _key(vector)
    pkt = Ether(data)
    code = wire.ErrorCode[vector["error"]["code"]]
    if code == wire.ErrorCode.TRUNCATED:
        assert OAE not in pkt and not check_ok(pkt, key)
    elif code == wire.ErrorCode.ETHERTYPE:
        # Foreign EtherTypes are not dissected as OAE; ours on a link configured otherwise is.
        assert (OAE in pkt) == (pkt.type == wire.ETHERTYPE)
    elif code == wire.ErrorCode.OVERSIZED:
        assert isinstance(pkt[OAE].payload, Padding)
        assert check_ok(pkt, key)  # the record itself is fine; the trailer is not part of it
    elif code == wire.ErrorCode.CHECK:
        assert not check_ok(pkt, key)
    elif code > wire.ErrorCode.VERSION:  # field errors, found only behind a correct check
        assert check_ok(pkt, key)


def test_built_frame_is_exactly_78_bytes_without_padding() -> None:
    """78 bytes is above Ethernet's 60-byte minimum: scapy adds no padding, and a trailing
    FCS or padding dissects as Padding after the record (which the codecs reject)."""
    pkt = Ether(dst="02:00:00:00:0b:02", src="02:00:00:00:0a:01") / OAE(seq=5, nonce=7)
    data = raw(pkt)
    assert len(data) == wire.FRAME_LEN
    assert data[12:14] == b"\x88\xb5"
    assert Padding not in Ether(data)
    trailer = Ether(data + bytes(4))
    assert raw(trailer[Padding]) == bytes(4)
    with pytest.raises(wire.DecodeError) as exc:
        wire.decode_frame(data + bytes(4))
    assert exc.value.code == wire.ErrorCode.OVERSIZED
    assert isinstance(Ether(data[:60]).payload, Raw)  # too short for a record


def test_keyed_record_needs_the_key() -> None:
    pkt = Ether() / OAE(flags="KEYED")
    with pytest.raises(ValueError, match="seal"):
        raw(pkt)
    sealed = seal(Ether() / OAE(), KEY)
    assert check_ok(sealed, KEY)
    assert not check_ok(sealed) and not check_ok(sealed, bytes(16))
    assert not check_ok(Ether() / OAE(), KEY)
    with pytest.raises(ValueError):
        seal(Ether() / OAE(), b"short")


def test_beat_size_rejects_invalid_size() -> None:
    with pytest.raises(ValueError, match="beat_size"):
        raw(OAE(beat_size=8))


u32 = st.integers(0, 0xFFFFFFFF)


@settings(max_examples=150, deadline=None)
@given(
    record=st.builds(
        wire.Record,
        opcode=st.sampled_from(wire.Opcode),
        phase=st.sampled_from(wire.Phase),
        state=st.sampled_from(wire.State),
        transition=st.sampled_from(wire.Transition),
        direction=st.sampled_from(wire.Direction),
        peer_half=st.binary(min_size=4, max_size=4),
        tid=u32,
        epoch=u32,
        seq=st.integers(1, 0xFFFFFFFF),
        nonce=st.integers(1, 0xFFFFFFFF),
        commit_upto=u32,
        held_upto=u32,
        delivered_upto=u32,
        sack=st.integers(0, 255),
        payload=st.binary(max_size=16),
        flags=st.integers(0, 6),
    ),
    beat=st.sampled_from([(1, 0), (4, 3), (16, 9), (64, 63)]),
    key=st.none() | st.binary(min_size=16, max_size=16),
)
def test_scapy_builds_what_the_codec_encodes(
    record: wire.Record, beat: tuple[int, int], key: bytes | None
) -> None:
    record = dataclasses.replace(record, beat_size=beat[0], beat_index=beat[1])
    frame = wire.Frame(b"\x02" * 6, b"\x04" * 6, wire.ETHERTYPE, record)
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    pkt = _build(frame.dst, frame.src, frame.ethertype, fields)
    if key is not None:
        pkt = seal(pkt, key)
    data = raw(pkt)
    assert data == wire.encode_frame(frame, key) == model.encode_frame(frame, key)
    decoded = wire.decode_frame(data, key=key).record
    assert record_of(Ether(data)) == {
        **{f.name: getattr(decoded, f.name) for f in dataclasses.fields(decoded)},
        "version": 1,
        "length": decoded.length,
    }
