"""`oae decode FILE`: print the frames of a pcap/pcapng capture with oae's own codec
(`oae.wire`, the C codec), for people without Wireshark: one line per frame, or one JSON
document with `--json`. Frames the codec rejects are printed with the error code, field
and frame offset (docs/protocol.md section 5); frames of other EtherTypes are listed as
such. A damaged file prints the frames before the damage, then a one-line error.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from oae.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    CaptureFormatError,
    Packet,
    parse_ethertype,
    read_capture,
)
from oae.errors import UsageError
from oae.wire import (
    ETH_HLEN,
    ETHERTYPE,
    KEY_LEN,
    DecodeError,
    Direction,
    ErrorCode,
    Flag,
    Record,
    decode_frame,
    decode_record,
)

_VLAN_TPIDS = (0x8100, 0x88A8)


@dataclass(frozen=True)
class Decoded:
    """One packet of a capture as oae sees it: `status` is "ok" (a valid record), "bad"
    (an oae frame the codec rejects: `error`), "snapped" (an oae frame the capture kept only
    part of) or "other" (not our EtherType)."""

    number: int
    packet: Packet
    status: str
    src: bytes | None
    dst: bytes | None
    ethertype: int | None
    record: Record | None = None
    error: DecodeError | None = None
    keyed_unverifiable: bool = False  # rejected with CHECK because a keyed record had no key


def _mac(b: bytes | None) -> str:
    return ":".join(f"{x:02x}" for x in b) if b else "?"


def summary(rec: Record) -> str:
    """The state change a record carries, as the Wireshark dissector's Info column shows
    it, e.g. `TOKEN LIVE tid=5 OFFER→ TENTATIVE commit≤3 held≤4 delivered≤2 seq=7`; the
    transfer part is left out of records that act on none (tid 0, IDLE, NONE, out)."""
    arrow = "→" if rec.direction == Direction.OUT else "←"
    text = f"{rec.opcode.name} {rec.phase.name}"
    if rec.tid or rec.state or rec.transition or rec.direction:  # it acts on a transfer
        text += f" tid={rec.tid} {rec.transition.name}{arrow} {rec.state.name}"
    text += (
        f" commit≤{rec.commit_upto} held≤{rec.held_upto} delivered≤{rec.delivered_upto}"
        f" seq={rec.seq}"
    )
    if rec.epoch:
        text += f" epoch={rec.epoch}"
    return text


def record_dict(rec: Record) -> dict[str, Any]:
    """The record's fields for JSON: enums by name, bytes as hex, the check as 16 hex digits."""
    return {
        "opcode": rec.opcode.name,
        "phase": rec.phase.name,
        "state": rec.state.name,
        "transition": rec.transition.name,
        "direction": rec.direction.name,
        "peer_half": rec.peer_half.hex(),
        "tid": rec.tid,
        "epoch": rec.epoch,
        "seq": rec.seq,
        "nonce": rec.nonce,
        "commit_upto": rec.commit_upto,
        "held_upto": rec.held_upto,
        "delivered_upto": rec.delivered_upto,
        "beat_size": rec.beat_size,
        "beat_index": rec.beat_index,
        "sack": rec.sack,
        "length": rec.length,
        "flags": rec.flags,
        "payload": rec.payload.hex(),
        "check": f"{rec.check:016x}",
    }


def decode_packet(
    number: int, pkt: Packet, ethertype: int = ETHERTYPE, key: bytes | None = None
) -> Decoded:
    """Classify and decode one captured packet (Ethernet or Linux cooked SLL/SLL2)."""
    data = pkt.data
    if pkt.linktype == LINKTYPE_ETHERNET:
        if len(data) < ETH_HLEN:
            return _decode_eth(number, pkt, ethertype, key, None)
        et = int.from_bytes(data[12:14], "big")
        tagged_ours = et in _VLAN_TPIDS and data[16:18] == ethertype.to_bytes(2, "big")
        if et != ethertype and not tagged_ours:
            return Decoded(number, pkt, "other", data[6:12], data[0:6], et)
        return _decode_eth(number, pkt, ethertype, key, et)
    if pkt.linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        if pkt.linktype == LINKTYPE_LINUX_SLL:
            hdr, et_off, addr_off = 16, 14, 6
        else:
            hdr, et_off, addr_off = 20, 0, 12
        if len(data) < hdr:
            return Decoded(number, pkt, "other", None, None, None)
        et = int.from_bytes(data[et_off : et_off + 2], "big")
        src = data[addr_off : addr_off + 6]
        if et != ethertype:
            return Decoded(number, pkt, "other", src, None, et)
        try:
            rec = decode_record(data[hdr:], key)
        except DecodeError as exc:
            return Decoded(number, pkt, "bad", src, None, et, error=exc)
        return Decoded(number, pkt, "ok", src, None, et, record=rec)
    return Decoded(number, pkt, "other", None, None, None)


def _decode_eth(
    number: int, pkt: Packet, ethertype: int, key: bytes | None, et: int | None
) -> Decoded:
    data = pkt.data
    src = data[6:12] if len(data) >= 12 else None
    dst = data[0:6] if len(data) >= 6 else None
    try:
        frame = decode_frame(data, ethertype, key)
    except DecodeError as exc:
        if exc.code == ErrorCode.TRUNCATED and pkt.orig_len > len(data):
            return Decoded(number, pkt, "snapped", src, dst, et)  # cut by the capture only
        keyed = key is None and len(data) > 53 and bool(data[53] & Flag.KEYED)
        return Decoded(
            number,
            pkt,
            "bad",
            src,
            dst,
            et,
            error=exc,
            keyed_unverifiable=keyed and exc.code == ErrorCode.CHECK,
        )
    return Decoded(number, pkt, "ok", src, dst, et, record=frame.record)


def decoded_dict(d: Decoded) -> dict[str, Any]:
    out: dict[str, Any] = {
        "number": d.number,
        "time": d.packet.ts_ns / 1e9,
        "length": d.packet.orig_len,
        "captured": len(d.packet.data),
        "src": _mac(d.src) if d.src else None,
        "dst": _mac(d.dst) if d.dst else None,
        "ethertype": d.ethertype,
        "status": d.status,
    }
    if d.packet.outbound is not None:
        out["outbound"] = d.packet.outbound
    if d.record is not None:
        out["record"] = record_dict(d.record)
        out["summary"] = summary(d.record)
    if d.error is not None:
        out["error"] = {
            "code": d.error.code.name,
            "field": d.error.field,
            "offset": d.error.offset,
            "message": str(d.error),
        }
    return out


def line(d: Decoded, t0: int) -> str:
    """One human-readable line: number, relative time, MACs, and what the frame says."""
    head = f"{d.number:>6} {(d.packet.ts_ns - t0) / 1e9:>11.6f} {_mac(d.src)} → {_mac(d.dst)}"
    if d.record is not None:
        return f"{head} OAE {summary(d.record)}"
    if d.error is not None:
        hint = " (a keyed record: pass --key)" if d.keyed_unverifiable else ""
        return f"{head} OAE {d.error}{hint}"
    if d.status == "snapped":
        return (
            f"{head} OAE not decoded: the capture kept {len(d.packet.data)} of "
            f"{d.packet.orig_len} bytes (snap length)"
        )
    et = f"0x{d.ethertype:04x}" if d.ethertype is not None else "?"
    return f"{head} other (EtherType {et}, {d.packet.orig_len} bytes)"


def decode_file(
    path: str, ethertype: int = ETHERTYPE, key: bytes | None = None
) -> tuple[list[Decoded], str | None]:
    """All packets of the file, decoded; plus the file error that stopped reading, if any."""
    try:
        with open(path, "rb") as f, ExitStack() as stack:
            size = os.fstat(f.fileno()).st_size
            # mapped, not read: a capture of gigabytes is paged in as it is decoded
            data: bytes | mmap.mmap = b""
            if size:
                data = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            frames: list[Decoded] = []
            try:
                for i, pkt in enumerate(read_capture(data), start=1):
                    frames.append(decode_packet(i, pkt, ethertype, key))
            except CaptureFormatError as exc:
                return frames, f"{path}: {exc}"
            return frames, None
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}") from None


# -- CLI ------------------------------------------------------------------------------------


def _key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raise argparse.ArgumentTypeError("the key must be hex digits") from None
    if len(key) != KEY_LEN:
        raise argparse.ArgumentTypeError(f"the key must be {KEY_LEN} bytes ({2 * KEY_LEN} hex)")
    return key


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode",
        help="print the oae frames of a pcap/pcapng file (no Wireshark needed)",
        description=(
            "Decode a pcap or pcapng capture (Ethernet or Linux cooked) with oae's own codec "
            "and print one line per frame, or one JSON document with --json. Rejected frames "
            "are shown with their error code, field and frame offset (docs/protocol.md §5); "
            "frames of other EtherTypes are listed as 'other'. Exit status 0, or 1 if the "
            "file is damaged (the frames before the damage are still printed)."
        ),
    )
    p.add_argument("file", help="capture file (pcap or pcapng)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument(
        "--ethertype",
        type=parse_ethertype,
        default=ETHERTYPE,
        metavar="HEX",
        help="the links' EtherType (default 0x88b5)",
    )
    p.add_argument(
        "--key",
        type=_key,
        metavar="HEX",
        help="16-byte link key (32 hex digits): verify keyed (SipHash) checks",
    )
    p.add_argument("--oae-only", action="store_true", help="leave out frames of other EtherTypes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    frames, file_error = decode_file(args.file, args.ethertype, args.key)
    shown = [d for d in frames if not (args.oae_only and d.status == "other")]
    counts = {s: sum(d.status == s for d in frames) for s in ("ok", "bad", "snapped", "other")}
    if args.json:
        doc = {
            "file": args.file,
            "frames": [decoded_dict(d) for d in shown],
            "counts": counts,
            "file_error": file_error,
        }
        json.dump(doc, sys.stdout, indent=1, ensure_ascii=False)
        print()
    else:
        t0 = frames[0].packet.ts_ns if frames else 0
        for d in shown:
            print(line(d, t0))
        snapped = f", {counts['snapped']} cut by the snap length" if counts["snapped"] else ""
        print(
            f"{len(frames)} frames: {counts['ok']} valid oae, {counts['bad']} rejected, "
            f"{counts['other']} other{snapped}",
            file=sys.stderr,
        )
    if file_error:
        print(f"oae decode: error: {file_error}", file=sys.stderr)
        return 1
    return 0
