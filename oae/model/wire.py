"""Wire format v1 in pure Python: the same API and results as `oae.wire` (which runs the C
codec), written independently from docs/protocol.md with its own CRC32C and SipHash-2-4.

It is the test oracle for the C codec and the baseline of `oae bench codec`; it shares only
the result types (Record, Frame, DecodeError, the enums) with `oae.wire`.
"""

from __future__ import annotations

import struct

from oae.wire import (
    BEAT_SIZES,
    ETH_HLEN,
    ETHERTYPE,
    FLAGS_RESERVED,
    FRAME_LEN,
    PAYLOAD_MAX,
    RECORD_LEN,
    VERSION,
    DecodeError,
    ErrorCode,
    Flag,
    Frame,
    Record,
    check_key,
)

_M64 = 0xFFFFFFFFFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli, reflected 0x82F63B78, init and final XOR 0xFFFFFFFF)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 of data with a 16-byte key, as a 64-bit integer."""
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:16], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D,
         k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]  # fmt: skip

    def rounds(n: int) -> None:
        v0, v1, v2, v3 = v
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)
        v[:] = [v0, v1, v2, v3]

    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    last = int.from_bytes(data[full:], "little") | ((len(data) & 0xFF) << 56)
    v[3] ^= last
    rounds(2)
    v[0] ^= last
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _check_of(body: bytes, key: bytes | None) -> bytes:
    """The 8 check bytes for record bytes 0-55 (docs/protocol.md section 4)."""
    if key is None:
        return bytes(4) + crc32c(body).to_bytes(4, "big")
    return siphash24(key, body).to_bytes(8, "big")


def encode_record(record: Record, key: bytes | None = None) -> bytes:
    """The 64 bytes of record, with a CRC32C check, or a SipHash-2-4 check (KEYED) if key."""
    check_key(key)
    flags = (record.flags & ~int(Flag.KEYED)) | (Flag.KEYED if key is not None else 0)
    body = b"".join(
        [
            bytes(
                [
                    VERSION << 4 | record.opcode,
                    record.phase,
                    record.state,
                    record.direction << 7 | record.transition,
                ]
            ),  # fmt: skip
            record.peer_half,
            struct.pack(
                ">7I",
                record.tid,
                record.epoch,
                record.seq,
                record.nonce,
                record.commit_upto,
                record.held_upto,
                record.delivered_upto,
            ),
            bytes(
                [
                    BEAT_SIZES.index(record.beat_size) << 6 | record.beat_index,
                    record.sack,
                    len(record.payload),
                    flags,
                ]
            ),  # fmt: skip
            record.payload.ljust(PAYLOAD_MAX, b"\0"),
        ]
    )
    return body + _check_of(body, key)


def _u32(r: bytes, offset: int) -> int:
    return int.from_bytes(r[offset : offset + 4], "big")


def _decode_body(r: bytes, key: bytes | None) -> Record:
    """Validate record bytes in the order of docs/protocol.md section 4; offsets are frame
    offsets, so add the Ethernet header length to record offsets."""
    h = ETH_HLEN
    if r[0] >> 4 != VERSION:
        raise DecodeError(ErrorCode.VERSION, h + 0)
    flags = r[39]
    keyed = bool(flags & Flag.KEYED)
    if keyed != (key is not None) or r[56:] != _check_of(r[:56], key):
        raise DecodeError(ErrorCode.CHECK, h + 56)
    opcode, phase, state = r[0] & 0x0F, r[1], r[2]
    transition, direction = r[3] & 0x7F, r[3] >> 7
    if not 1 <= opcode <= 4:
        raise DecodeError(ErrorCode.OPCODE, h + 0)
    if not 1 <= phase <= 3:
        raise DecodeError(ErrorCode.PHASE, h + 1)
    if state > 5:
        raise DecodeError(ErrorCode.STATE, h + 2)
    if transition > 5:
        raise DecodeError(ErrorCode.TRANSITION, h + 3)
    seq, nonce = _u32(r, 16), _u32(r, 20)
    if seq == 0:
        raise DecodeError(ErrorCode.SEQ, h + 16)
    if nonce == 0:
        raise DecodeError(ErrorCode.NONCE, h + 20)
    beat_size, beat_index = BEAT_SIZES[r[36] >> 6], r[36] & 0x3F
    if beat_index >= beat_size:
        raise DecodeError(ErrorCode.BEAT, h + 36)
    length = r[38]
    if length > PAYLOAD_MAX:
        raise DecodeError(ErrorCode.LENGTH, h + 38)
    if flags & FLAGS_RESERVED:
        raise DecodeError(ErrorCode.FLAGS, h + 39)
    for i in range(40 + length, 56):
        if r[i]:
            raise DecodeError(ErrorCode.PADDING, h + i)
    return Record(
        opcode=opcode,
        phase=phase,
        state=state,
        transition=transition,
        direction=direction,
        peer_half=r[4:8],
        tid=_u32(r, 8),
        epoch=_u32(r, 12),
        seq=seq,
        nonce=nonce,
        commit_upto=_u32(r, 24),
        held_upto=_u32(r, 28),
        delivered_upto=_u32(r, 32),
        beat_size=beat_size,
        beat_index=beat_index,
        sack=r[37],
        payload=r[40 : 40 + length],
        flags=flags,
        check=int.from_bytes(r[56:64], "big"),
    )


def decode_record(data: bytes, key: bytes | None = None) -> Record:
    """Validate and decode 64 record bytes; raises DecodeError (offsets as in a frame)."""
    check_key(key)
    data = bytes(data)
    if len(data) < RECORD_LEN:
        raise DecodeError(ErrorCode.TRUNCATED, len(data) + ETH_HLEN)
    if len(data) > RECORD_LEN:
        raise DecodeError(ErrorCode.OVERSIZED, FRAME_LEN)
    return _decode_body(data, key)


def encode_frame(frame: Frame, key: bytes | None = None) -> bytes:
    """The 78 bytes of frame; see encode_record for the check."""
    return (
        frame.dst
        + frame.src
        + frame.ethertype.to_bytes(2, "big")
        + encode_record(frame.record, key)
    )


def decode_frame(data: bytes, ethertype: int = ETHERTYPE, key: bytes | None = None) -> Frame:
    """Validate and decode a 78-byte frame expected to carry `ethertype`."""
    check_key(key)
    if not 0 <= ethertype <= 0xFFFF:
        raise ValueError(f"ethertype must be 0..0xFFFF, got {ethertype}")
    data = bytes(data)
    if len(data) < FRAME_LEN:
        raise DecodeError(ErrorCode.TRUNCATED, len(data))
    if len(data) > FRAME_LEN:
        raise DecodeError(ErrorCode.OVERSIZED, FRAME_LEN)
    if int.from_bytes(data[12:14], "big") != ethertype:
        raise DecodeError(ErrorCode.ETHERTYPE, 12)
    record = _decode_body(data[ETH_HLEN:], key)
    return Frame(data[0:6], data[6:12], ethertype, record)
