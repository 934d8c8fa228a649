"""Every golden vector (tests/vectors/wire_v1.json) through three decoders — the Lua
dissector under tshark, the C codec (oae.wire) and the pure-Python codec (oae.model.wire) —
asserting the same field values for valid frames and the same rejection (code, field,
frame offset) for invalid ones, all equal to the vector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from vectors.wire_fields import frame_fields

import oae.model.wire as model
import oae.wire as cwire
from oae.capture import CaptureWriter
from oae.wireshark import tshark_fields

VECTORS = json.loads((Path(__file__).parent / "vectors" / "wire_v1.json").read_text())["vectors"]

# vector field name -> tshark field
TSHARK = {
    "dst": "eth.dst",
    "src": "eth.src",
    "ethertype": "eth.type",
    "version": "oae.version",
    "opcode": "oae.opcode",
    "phase": "oae.phase",
    "state": "oae.state",
    "transition": "oae.transition",
    "direction": "oae.direction",
    "peer_half": "oae.peer_half",
    "tid": "oae.tid",
    "epoch": "oae.epoch",
    "seq": "oae.seq",
    "nonce": "oae.nonce",
    "commit_upto": "oae.commit_upto",
    "held_upto": "oae.held_upto",
    "delivered_upto": "oae.delivered_upto",
    "beat_size": "oae.beat.size",
    "beat_index": "oae.beat.index",
    "sack": "oae.sack",
    "length": "oae.length",
    "flags": "oae.flags",
    "payload": "oae.payload",
    "check": "oae.check",
}
HEX_FIELDS = ("dst", "src", "peer_half", "payload")
EXTRA = [
    "frame.protocols",
    "oae.error",
    "oae.error.field",
    "oae.error.offset",
    "oae.check.status",
    "oae.transfer",
]


def _from_tshark(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, column in TSHARK.items():
        value = row[column]
        if name in HEX_FIELDS:
            out[name] = value.replace(":", "")
        elif name == "check":
            out[name] = f"{int(value, 0):016x}"
        else:
            out[name] = int(value, 0)
    return out


def _codec(decode: Any, v: dict[str, Any]) -> tuple[str, Any]:
    raw = bytes.fromhex(v["frame_hex"])
    key = bytes.fromhex(v["key_hex"]) if v["key_hex"] else None
    try:
        frame = decode(raw, v["ethertype"], key)
    except cwire.DecodeError as exc:
        return "reject", (exc.code.name, exc.field, exc.offset)
    return "accept", frame_fields(frame)


def _dissector(row: dict[str, str], v: dict[str, Any]) -> tuple[str, Any]:
    """The dissector's verdict in the codecs' terms. Frames it never sees as oae (shorter
    than an Ethernet header, another EtherType than configured) are ETHERTYPE/TRUNCATED
    rejections that happen before oae, which the vector must then expect."""
    if "oae" not in row["frame.protocols"].split(":"):
        return "not-oae", None
    if row["oae.error"]:
        return "reject", (row["oae.error"], row["oae.error.field"], int(row["oae.error.offset"]))
    if row["oae.check.status"] == "unverified-keyed" and not v["key_hex"]:
        # A viewer without the key shows the fields and marks the check unverified; an
        # endpoint without the key rejects the record with CHECK at the check slice.
        return "reject", ("CHECK", "check", 70)
    assert row["oae.check.status"] == "good", row
    return "accept", _from_tshark(row)


@pytest.fixture(scope="module")
def dissected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """tshark's view of every vector: one capture and one tshark run per link
    configuration (EtherType, key), with the dissector's preferences set to match."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (CI installs it via scripts/setup.sh)")
    groups: dict[tuple[int, str | None], list[dict[str, Any]]] = {}
    for v in VECTORS:
        groups.setdefault((v["ethertype"], v["key_hex"]), []).append(v)
    out: dict[str, dict[str, str]] = {}
    tmp = tmp_path_factory.mktemp("vectors")
    for i, ((ethertype, key_hex), vectors) in enumerate(groups.items()):
        path = tmp / f"group{i}.pcap"
        with path.open("wb") as f:
            writer = CaptureWriter(f, "pcap", "vectors")
            for n, v in enumerate(vectors):
                raw = bytes.fromhex(v["frame_hex"])
                writer.write(n * 1000, raw, len(raw))
            writer.close()
        prefs = {"oae.ethertype": str(ethertype)}
        if key_hex:
            prefs["oae.key"] = key_hex
        rows = tshark_fields(path, list(TSHARK.values()) + EXTRA, prefs)
        assert len(rows) == len(vectors)
        for v, row in zip(vectors, rows, strict=True):
            out[v["name"]] = row
    return out


def test_vectors_cover_valid_and_every_error_code() -> None:
    codes = {v["error"]["code"] for v in VECTORS if "error" in v}
    assert codes == {c.name for c in cwire.ErrorCode}
    assert sum("fields" in v for v in VECTORS) >= 10


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_three_decoders_agree(v: dict[str, Any], dissected: dict[str, dict[str, str]]) -> None:
    c_verdict = _codec(cwire.decode_frame, v)
    py_verdict = _codec(model.decode_frame, v)
    lua_verdict = _dissector(dissected[v["name"]], v)
    if "fields" in v:
        expected = ("accept", v["fields"])
        assert c_verdict == expected
        assert py_verdict == expected
        assert lua_verdict == expected
        # the transfer filter field carries the transfer id first on every frame naming one
        if v["fields"]["tid"]:
            assert dissected[v["name"]]["oae.transfer"] == str(v["fields"]["tid"])
    else:
        err = v["error"]
        expected = ("reject", (err["code"], err["field"], err["offset"]))
        assert c_verdict == expected
        assert py_verdict == expected
        if lua_verdict[0] == "not-oae":
            raw = bytes.fromhex(v["frame_hex"])
            too_short = len(raw) < 14
            foreign = not too_short and int.from_bytes(raw[12:14], "big") != v["ethertype"]
            assert (err["code"] == "TRUNCATED" and too_short) or (
                err["code"] == "ETHERTYPE" and foreign
            ), f"the dissector did not see vector {v['name']} as oae"
        else:
            assert lua_verdict == expected
