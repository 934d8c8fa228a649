"""A scapy layer for oae records (docs/protocol.md), bound to EtherType 0x88B5, so that
`Ether(dst=..., src=...)/OAE(...)` builds a valid frame and `Ether(raw)` dissects ours.

Field names follow the spec, with the sub-byte fields split out (`version`/`opcode` of
`ver_op`, `direction`/`transition` of `trans_dir`, `beat_size`/`beat_index` of `beat`), and
one exception: the payload field is `data`, because scapy reserves `payload` for the next
layer. `beat_size` holds the size (1, 4, 16, 64), not its 2-bit code, as in `oae.Record`.

`length` and `check` are computed when built if not given (the check as CRC32C); a KEYED
record needs the link key, so build it with `seal(pkt, key)`. Scapy does not validate:
`check_ok(pkt, key)` says whether the check is right, and `oae.decode_frame` is the judge of
everything else. A valid frame is 78 bytes, above Ethernet's 60-byte minimum, so it never
carries padding; any bytes after the 64-byte record dissect as `Padding`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from scapy.fields import (
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    FlagsField,
    IntField,
    StrFixedLenField,
    XByteField,
    XLongField,
    XStrFixedLenField,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_bottom_up, bind_layers

from oae import wire
from oae._wire import lib

_FLAG_NAMES = ["KEYED", "REFUSE", "CONTROL", "RES3", "RES4", "RES5", "RES6", "RES7"]


class _BeatSizeField(BitField):
    """The 2-bit beat size code on the wire, shown and set as the size (1/4/16/64)."""

    def i2m(self, pkt: Packet | None, x: int | None) -> int:
        if x is None:
            return 0
        if x not in wire.BEAT_SIZES:
            raise ValueError(f"beat_size must be one of {wire.BEAT_SIZES}, got {x}")
        return wire.BEAT_SIZES.index(x)

    def m2i(self, pkt: Packet | None, x: int) -> int:
        return wire.BEAT_SIZES[x]


def _names(enum: type[IntEnum]) -> dict[int, str]:
    return {int(v): v.name for v in enum}


class OAE(Packet):
    """One 64-byte oae record (wire format v1)."""

    name = "OAE"
    fields_desc = [
        BitField("version", wire.VERSION, 4),
        BitEnumField("opcode", wire.Opcode.TOKEN, 4, _names(wire.Opcode)),
        ByteEnumField("phase", wire.Phase.LIVE, _names(wire.Phase)),
        ByteEnumField("state", wire.State.IDLE, _names(wire.State)),
        BitEnumField("direction", wire.Direction.OUT, 1, _names(wire.Direction)),
        BitEnumField("transition", wire.Transition.NONE, 7, _names(wire.Transition)),
        XStrFixedLenField("peer_half", bytes(4), 4),
        IntField("tid", 0),
        IntField("epoch", 0),
        IntField("seq", 1),
        IntField("nonce", 1),
        IntField("commit_upto", 0),
        IntField("held_upto", 0),
        IntField("delivered_upto", 0),
        _BeatSizeField("beat_size", 1, 2),
        BitField("beat_index", 0, 6),
        XByteField("sack", 0),
        ByteField("length", None),
        FlagsField("flags", 0, 8, _FLAG_NAMES),
        StrFixedLenField("data", b"", wire.PAYLOAD_MAX),
        XLongField("check", None),
    ]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.length is None:
            p = p[:38] + bytes([min(len(self.data), wire.PAYLOAD_MAX)]) + p[39:]
        if self.check is None:
            if p[39] & wire.Flag.KEYED:
                raise ValueError("a KEYED OAE record needs the link key: use seal(pkt, key)")
            p = p[:56] + bytes(4) + lib.oae_crc32c(p[:56], 56).to_bytes(4, "big")
        return p + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s

    def mysummary(self) -> str:
        return self.sprintf(
            "OAE %opcode% %phase% seq=%seq% tid=%tid% %state% %transition% %direction%"
        )


bind_layers(Ether, OAE, type=wire.ETHERTYPE)


def bind(ethertype: int) -> None:
    """Also dissect `ethertype` as OAE (for links configured with another EtherType); building
    keeps 0x88B5 unless `type=` is given."""
    bind_bottom_up(Ether, OAE, type=ethertype)


def seal(pkt: Packet, key: bytes) -> Packet:
    """A copy of pkt whose OAE record is KEYED and carries the SipHash-2-4 check for key."""
    wire.check_key(key)
    if key is None:
        raise ValueError("seal needs a 16-byte key")
    out = pkt.copy()
    layer = out[OAE]
    layer.flags = int(layer.flags) | wire.Flag.KEYED
    layer.check = 0
    body = bytes(layer)[:56]
    layer.check = lib.oae_siphash24(key, body, 56)
    return out


def check_ok(pkt: Packet, key: bytes | None = None) -> bool:
    """Whether the OAE record's check is correct for a link with this key (or none), exactly
    as a decoder judges it: a keyed link accepts only KEYED records, an unkeyed one only
    CRC32C ones with bytes 56-59 zero."""
    wire.check_key(key)
    if OAE not in pkt:
        return False
    r = bytes(pkt[OAE])[: wire.RECORD_LEN]
    if len(r) < wire.RECORD_LEN:
        return False
    found = int.from_bytes(r[56:64], "big")
    if r[39] & wire.Flag.KEYED:
        return key is not None and lib.oae_siphash24(key, r, 56) == found
    return key is None and found == lib.oae_crc32c(r, 56)


def record_of(pkt: Packet) -> dict[str, Any]:
    """The OAE layer's fields as `oae.Record` names them (payload trimmed to `length`)."""
    layer = pkt[OAE]
    fields = {f.name: layer.getfieldval(f.name) for f in layer.fields_desc}
    fields["flags"] = int(fields["flags"])
    fields["payload"] = fields.pop("data")[: fields["length"]]
    return fields
