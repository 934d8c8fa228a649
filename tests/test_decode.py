"""The capture file formats (sans-I/O writers and reader) and `oae decode`: files we write
are read back identically by our reader and by tshark; foreign pcap variants (big-endian,
microsecond) are read; bad frames, other EtherTypes and damaged files are reported, never a
crash."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from oae.capture import (
    LINKTYPE_ETHERNET,
    CaptureFormatError,
    CaptureWriter,
    Packet,
    pcapng_header,
    pcapng_packet,
    read_capture,
)
from oae.cli import main
from oae.wire import ETHERTYPE, Frame, Record, State, Transition, encode_frame

A, B = bytes.fromhex("020000000a01"), bytes.fromhex("020000000b02")
KEY = bytes(range(16))
T0 = 1_700_000_000_123_456_789


def _frames() -> list[bytes]:
    offer = Record(tid=4, state=State.TENTATIVE, transition=Transition.OFFER, seq=2, nonce=5)
    good = encode_frame(Frame(B, A, ETHERTYPE, offer))
    keyed = encode_frame(Frame(B, A, ETHERTYPE, offer), key=KEY)
    ipv4 = B + A + b"\x08\x00" + bytes(46)
    corrupt = bytearray(good)
    corrupt[20] ^= 0x80
    return [good, ipv4, bytes(corrupt), good[:40], keyed, b"\x01\x02"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def oae(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the `oae` CLI in-process (argparse exits become return codes)."""

    def run(*args: str) -> Result:
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


@pytest.mark.parametrize("fmt", ["pcapng", "pcap"])
def test_writer_reader_round_trip(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"x.{fmt}"
    frames = _frames()
    with path.open("wb") as f:
        w = CaptureWriter(f, fmt, "eth0")
        for i, data in enumerate(frames):
            w.write(T0 + i, data, len(data) + (10 if i == 1 else 0), pkttype=4 if i else 0)
        w.close()
    packets = list(read_capture(path.read_bytes()))
    assert [p.data for p in packets] == frames
    assert [p.ts_ns for p in packets] == [T0 + i for i in range(len(frames))]
    assert packets[1].orig_len == len(frames[1]) + 10
    if fmt == "pcapng":  # the direction survives in epb_flags
        assert [p.outbound for p in packets] == [False] + [True] * (len(frames) - 1)
    if shutil.which("tshark"):
        out = subprocess.run(
            ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch",
             "-e", "frame.len", "-e", "frame.cap_len"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        rows = [ln.split("\t") for ln in out.stdout.splitlines()]
        assert len(rows) == len(frames)
        assert rows[0][0] == "1700000000.123456789"  # nanoseconds kept
        assert rows[1][1:] == [str(len(frames[1]) + 10), str(len(frames[1]))]


def test_reader_foreign_variants() -> None:
    """Big-endian microsecond pcap, and a big-endian pcapng section with default
    (microsecond) timestamps and a simple packet block."""
    data = b"\xaa" * 20
    pcap_be = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    pcap_be += struct.pack(">IIII", 10, 250, len(data), len(data)) + data
    (p,) = read_capture(pcap_be)
    assert p == Packet(10_000_250_000, data, len(data), LINKTYPE_ETHERNET)

    def block(btype: int, body: bytes) -> bytes:
        return struct.pack(">II", btype, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))

    ng = block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    ng += block(1, struct.pack(">HHI", 1, 0, 0))
    ng += block(6, struct.pack(">IIIII", 0, 0, 3_000_001, 20, 20) + data)
    ng += block(3, struct.pack(">I", 20) + data)
    ng += block(5, b"\0" * 8)  # an interface statistics block: skipped
    p1, p2 = read_capture(ng)
    assert (p1.ts_ns, p1.data, p2.data) == (3_000_001_000, data, data)


def test_reader_rejects_damage_with_offsets() -> None:
    good = pcapng_header("eth0") + pcapng_packet(T0, b"\x00" * 60)
    with pytest.raises(CaptureFormatError, match="magic"):
        list(read_capture(b"GIF89a" + bytes(30)))
    with pytest.raises(CaptureFormatError, match="shorter than 4"):
        list(read_capture(b""))
    cut = good + pcapng_packet(T0, b"\x01" * 60)[:-10]
    got: list[Packet] = []
    with pytest.raises(CaptureFormatError, match=f"byte {len(good)}"):
        for p in read_capture(cut):
            got.append(p)
    assert len(got) == 1  # the frame before the damage was read


def test_decode_cli_human_and_json(tmp_path: Path, oae: Callable[..., Result]) -> None:
    path = tmp_path / "mixed.pcapng"
    frames = _frames()
    with path.open("wb") as f:
        w = CaptureWriter(f, "pcapng", "eth0")
        for i, data in enumerate(frames):
            w.write(T0 + i * 1000, data, len(data))
        w.close()
    res = oae("decode", str(path), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["counts"] == {"ok": 1, "bad": 4, "snapped": 0, "other": 1}
    got = [(f["status"], f.get("error", {}).get("code")) for f in doc["frames"]]
    assert got == [
        ("ok", None), ("other", None), ("bad", "CHECK"), ("bad", "TRUNCATED"),
        ("bad", "CHECK"), ("bad", "TRUNCATED"),
    ]  # fmt: skip
    rec = doc["frames"][0]["record"]
    assert (rec["tid"], rec["state"], rec["transition"], rec["seq"]) == (
        4,
        "TENTATIVE",
        "OFFER",
        2,
    )
    assert doc["frames"][0]["summary"].startswith("TOKEN LIVE tid=4 OFFER→ TENTATIVE")
    assert doc["frames"][3]["error"] == {
        "code": "TRUNCATED",
        "field": "frame",
        "offset": 40,
        "message": doc["frames"][3]["error"]["message"],
    }
    # with the key the keyed frame is valid; --oae-only hides the IPv4 frame
    res = oae("decode", str(path), "--key", KEY.hex(), "--oae-only")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert len(lines) == 5
    assert "TOKEN LIVE tid=4 OFFER→ TENTATIVE" in lines[3]  # keyed frame, verified
    assert "CHECK" in lines[0]  # unkeyed frame on a keyed link
    assert "6 frames: 1 valid oae, 4 rejected, 1 other" in res.stderr
    plain = oae("decode", str(path))
    assert "pass --key" in plain.stdout.splitlines()[4]


def test_decode_cli_damaged_and_missing_files(tmp_path: Path, oae: Callable[..., Result]) -> None:
    path = tmp_path / "cut.pcapng"
    good = encode_frame(Frame(B, A, ETHERTYPE, Record()))
    path.write_bytes(pcapng_header("eth0") + pcapng_packet(T0, good) + b"\x06\x00\x00")
    res = oae("decode", str(path))
    assert res.returncode == 1
    assert len(res.stdout.splitlines()) == 1  # the frame before the damage
    assert res.stderr.strip().splitlines()[-1].startswith("oae decode: error:")
    res = oae("decode", str(path), "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 1 and doc["file_error"] and len(doc["frames"]) == 1
    res = oae("decode", str(tmp_path / "missing.pcap"))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"oae decode: error: cannot read '{tmp_path / 'missing.pcap'}': No such file or directory"
    )
    res = oae("decode", str(path), "--key", "abcd")
    assert res.returncode == 2 and "16 bytes" in res.stderr


def test_decode_snapped_frames_are_not_called_truncated(
    tmp_path: Path, oae: Callable[..., Result]
) -> None:
    """A frame the capture kept only part of (snap length) was not truncated on the wire."""
    good = _frames()[0]
    path = tmp_path / "snap.pcapng"
    path.write_bytes(
        pcapng_header("eth0") + pcapng_packet(T0, good[:40], 78) + pcapng_packet(T0, good[:40])
    )
    res = oae("decode", str(path), "--json")
    doc = json.loads(res.stdout)
    assert [f["status"] for f in doc["frames"]] == ["snapped", "bad"]
    assert doc["frames"][1]["error"]["code"] == "TRUNCATED"
    if shutil.which("tshark"):
        from oae.wireshark import tshark_fields

        rows = tshark_fields(path, ["oae.tid", "oae.error", "oae.check.status"])
        assert rows[0] == {"oae.tid": "4", "oae.error": "", "oae.check.status": ""}
        assert rows[1]["oae.error"] == "TRUNCATED"
