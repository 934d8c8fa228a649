"""Wire format v1 (docs/protocol.md): typed records and frames, encoded and decoded by the
C codec in csrc/wire.c.

The types here are shared with the pure-Python model codec (`oae.model.wire`), which is the
test oracle; both return equal objects and raise equal `DecodeError`s for the same bytes.
A `Record` validates itself on construction, so an encoder can only ever be handed a valid
record, and a decoder only ever hands out valid ones.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from oae._wire import ffi, lib
from oae.errors import OaeError

ETHERTYPE = 0x88B5
FRAME_LEN = 78
RECORD_LEN = 64
ETH_HLEN = 14
PAYLOAD_MAX = 16
KEY_LEN = 16
VERSION = 1
HELLO_GROUP = bytes.fromhex("030ae0000001")
BEAT_SIZES = (1, 4, 16, 64)


class Opcode(IntEnum):
    HELLO = 1
    TOKEN = 2
    RECONCILE = 3
    BYE = 4


class Phase(IntEnum):
    DISCOVER = 1
    RECONCILE = 2
    LIVE = 3


class State(IntEnum):
    IDLE = 0
    TENTATIVE = 1
    REFLECTING = 2
    COMMITTED = 3
    ABORTED = 4
    INDEFINITE = 5


class Transition(IntEnum):
    NONE = 0
    OFFER = 1
    REFLECT = 2
    COMMIT = 3
    FREE = 4
    REVERSE = 5


class Direction(IntEnum):
    """Bit 7 of `trans_dir`: which way transfer `tid` flows, seen from the record's sender."""

    OUT = 0  # from the sender of this record to its receiver
    IN = 1  # towards the sender of this record (the peer's transfer)


class Flag(IntFlag):
    KEYED = 0x01
    REFUSE = 0x02
    CONTROL = 0x04


FLAGS_RESERVED = 0xF8


class ErrorCode(IntEnum):
    TRUNCATED = 1
    OVERSIZED = 2
    ETHERTYPE = 3
    VERSION = 4
    OPCODE = 5
    PHASE = 6
    STATE = 7
    TRANSITION = 8
    SEQ = 9
    NONCE = 10
    BEAT = 11
    LENGTH = 12
    FLAGS = 13
    PADDING = 14
    CHECK = 15


# code -> (field name, what is wrong); docs/protocol.md section 5
_ERRORS: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.TRUNCATED: ("frame", f"shorter than {FRAME_LEN} bytes"),
    ErrorCode.OVERSIZED: ("frame", f"longer than {FRAME_LEN} bytes (padding or FCS?)"),
    ErrorCode.ETHERTYPE: ("ethertype", "not the link's EtherType"),
    ErrorCode.VERSION: ("version", f"not wire format version {VERSION}"),
    ErrorCode.OPCODE: ("opcode", "not HELLO, TOKEN, RECONCILE or BYE"),
    ErrorCode.PHASE: ("phase", "not DISCOVER, RECONCILE or LIVE"),
    ErrorCode.STATE: ("state", "not an AIT state (0-5)"),
    ErrorCode.TRANSITION: ("transition", "not a transition (0-5)"),
    ErrorCode.SEQ: ("seq", "sequence number 0"),
    ErrorCode.NONCE: ("nonce", "session nonce 0"),
    ErrorCode.BEAT: ("beat", "index not below the beat size"),
    ErrorCode.LENGTH: ("length", f"payload length above {PAYLOAD_MAX}"),
    ErrorCode.FLAGS: ("flags", "reserved flag bits set"),
    ErrorCode.PADDING: ("payload", "non-zero byte past the payload length"),
    ErrorCode.CHECK: ("check", "integrity check does not match (corrupt, or key mismatch)"),
}


class DecodeError(OaeError):
    """Bytes that are not a valid v1 frame/record: `code`, `field` and frame `offset` say
    what and where, identically in the C and the pure-Python codec."""

    def __init__(self, code: int, offset: int) -> None:
        self.code = ErrorCode(code)
        self.field, what = _ERRORS[self.code]
        self.offset = offset
        super().__init__(
            f"bad frame: {self.code.name} at offset {offset} (field {self.field}): {what}"
        )


def _u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be 0..2**32-1, got {value}")


@dataclass(frozen=True, kw_only=True)
class Record:
    """One 64-byte record (docs/protocol.md section 2). `length` is `len(payload)`; `check`
    is the check as decoded (encoders compute it and ignore this field); `flags` holds
    REFUSE/CONTROL, and KEYED as decoded (encoders set KEYED from whether a key is given)."""

    opcode: Opcode = Opcode.TOKEN
    phase: Phase = Phase.LIVE
    state: State = State.IDLE
    transition: Transition = Transition.NONE
    direction: Direction = Direction.OUT
    peer_half: bytes = bytes(4)
    tid: int = 0
    epoch: int = 0
    seq: int = 1
    nonce: int = 1
    commit_upto: int = 0
    held_upto: int = 0
    delivered_upto: int = 0
    beat_size: int = 1
    beat_index: int = 0
    sack: int = 0
    payload: bytes = b""
    flags: int = 0
    check: int = 0

    def __post_init__(self) -> None:
        # Coerce to the enums; their constructors raise ValueError for invalid values.
        set_ = object.__setattr__
        set_(self, "opcode", Opcode(self.opcode))
        set_(self, "phase", Phase(self.phase))
        set_(self, "state", State(self.state))
        set_(self, "transition", Transition(self.transition))
        set_(self, "direction", Direction(self.direction))
        if not isinstance(self.peer_half, bytes) or len(self.peer_half) != 4:
            raise ValueError("peer_half must be 4 bytes")
        for name in ("tid", "epoch", "seq", "nonce", "commit_upto", "held_upto", "delivered_upto"):
            _u32(name, getattr(self, name))
        if self.seq == 0:
            raise ValueError("seq must be non-zero")
        if self.nonce == 0:
            raise ValueError("nonce must be non-zero")
        if self.beat_size not in BEAT_SIZES:
            raise ValueError(f"beat_size must be one of {BEAT_SIZES}, got {self.beat_size}")
        if not 0 <= self.beat_index < self.beat_size:
            raise ValueError(f"beat_index must be 0..{self.beat_size - 1}")
        if not 0 <= self.sack <= 0xFF:
            raise ValueError("sack must be 0..255")
        if not isinstance(self.payload, bytes) or len(self.payload) > PAYLOAD_MAX:
            raise ValueError(f"payload must be bytes of length 0..{PAYLOAD_MAX}")
        if not 0 <= self.flags <= 0xFF or self.flags & FLAGS_RESERVED:
            raise ValueError("flags may only combine KEYED, REFUSE and CONTROL")
        if not 0 <= self.check <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError("check must be a 64-bit unsigned value")

    @property
    def length(self) -> int:
        return len(self.payload)

    @property
    def keyed(self) -> bool:
        return bool(self.flags & Flag.KEYED)


@dataclass(frozen=True)
class Frame:
    """An Ethernet II frame carrying one record (docs/protocol.md section 1)."""

    dst: bytes
    src: bytes
    ethertype: int
    record: Record

    def __post_init__(self) -> None:
        if not isinstance(self.dst, bytes) or len(self.dst) != 6:
            raise ValueError("dst must be a 6-byte MAC address")
        if not isinstance(self.src, bytes) or len(self.src) != 6:
            raise ValueError("src must be a 6-byte MAC address")
        _check_ethertype(self.ethertype)
        if not isinstance(self.record, Record):
            raise ValueError("record must be a Record")


def _check_ethertype(ethertype: int) -> None:
    if not 0 <= ethertype <= 0xFFFF:
        raise ValueError(f"ethertype must be 0..0xFFFF, got {ethertype}")


def check_key(key: bytes | None) -> None:
    """Raise ValueError unless key is None or 16 bytes."""
    if key is not None and (not isinstance(key, bytes) or len(key) != KEY_LEN):
        raise ValueError(f"key must be {KEY_LEN} bytes or None")


# Wire value -> enum member, by tuple index (the C decoder has checked the range).
_OPCODES = (None, *Opcode)
_PHASES = (None, *Phase)
_STATES = tuple(State)
_TRANSITIONS = tuple(Transition)
_DIRECTIONS = tuple(Direction)

# The C structs, packed and unpacked in their native layout with the struct module: one call
# moves every field across the cffi boundary, instead of one cdata access per field.
_C_RECORD_FIELDS = (
    ("opcode", "B"), ("phase", "B"), ("state", "B"), ("transition", "B"), ("direction", "B"),
    ("peer_half", "4s"), ("tid", "I"), ("epoch", "I"), ("seq", "I"), ("nonce", "I"),
    ("commit_upto", "I"), ("held_upto", "I"), ("delivered_upto", "I"), ("beat_size", "B"),
    ("beat_index", "B"), ("sack", "B"), ("length", "B"), ("flags", "B"), ("payload", "16s"),
    ("check", "Q"),
)  # fmt: skip
_C_RECORD_FORMAT = "".join(fmt for _, fmt in _C_RECORD_FIELDS)
_C_RECORD = struct.Struct("@" + _C_RECORD_FORMAT)
# One scratch buffer holds an oae_frame_hdr at 0 and an oae_record at _REC_AT (8-aligned, as
# oae_record needs), so that encode_frame packs both with one call.
_REC_AT = 16
_C_FRAME = struct.Struct("@6s6sH2x" + _C_RECORD_FORMAT)


def _check_layout() -> None:
    """Refuse to run if the struct module's idea of the C layout differs from the compiler's
    (it cannot on the ABIs CPython supports, but a silent mismatch would corrupt frames)."""
    prefix = "@"
    for name, fmt in _C_RECORD_FIELDS:
        offset = struct.calcsize(prefix + fmt) - struct.calcsize(fmt)
        if offset != ffi.offsetof("oae_record", name):
            raise ImportError(f"oae._wire: unexpected C layout of oae_record.{name}")
        prefix += fmt
    if (
        _C_RECORD.size != ffi.sizeof("oae_record")
        or _C_FRAME.size != _REC_AT + _C_RECORD.size
        or ffi.sizeof("oae_frame_hdr") > _REC_AT
        or ffi.offsetof("oae_frame_hdr", "ethertype") != 12
        or ffi.alignof("oae_record") > 8
    ):
        raise ImportError("oae._wire: unexpected C layout of oae_record or oae_frame_hdr")


_check_layout()


class _Scratch(threading.local):
    """Per-thread buffers shared with C (cffi releases the GIL during calls, so threads must
    not share them); allocated once so a call costs one pack, one C call and one unpack."""

    def __init__(self) -> None:
        buf = bytearray(_C_FRAME.size)
        out = bytearray(FRAME_LEN)
        base = ffi.from_buffer(buf)
        self.bufs = (
            buf,
            out,
            ffi.cast("oae_frame_hdr *", base),
            ffi.cast("oae_record *", base + _REC_AT),
            ffi.from_buffer("uint8_t[]", out),
            ffi.new("oae_decode_err *"),
        )


_scratch = _Scratch()
_NULL = ffi.NULL
_c_record_encode = lib.oae_record_encode
_c_record_decode = lib.oae_record_decode
_c_frame_encode = lib.oae_frame_encode
_c_frame_decode = lib.oae_frame_decode
_pack_record = _C_RECORD.pack_into
_pack_frame = _C_FRAME.pack_into
_unpack_record = _C_RECORD.unpack_from
_new = object.__new__


class _RawRecord:
    """Same instance layout as Record but no frozen __setattr__, so filling one costs plain
    attribute stores; `_unpack` then turns it into a Record (see there)."""


class _RawFrame:
    """Same role for Frame."""


def _unpack(buf: bytearray) -> Record:
    """Build a Record from the oae_record the C decoder filled, skipping __post_init__
    because C has validated every field. The fields are stored on a plain `_RawRecord` (no
    frozen __setattr__ in the way) and its class is then set to Record: CPython moves the
    attributes into the instance dict on that assignment, and the result is an ordinary
    frozen Record, the same as one built by its constructor. That is about 2x cheaper than
    filling a fresh Record's __dict__ by keyword."""
    (opcode, phase, state, transition, direction, peer_half, tid, epoch, seq, nonce,
     commit_upto, held_upto, delivered_upto, beat_size, beat_index, sack, length, flags,
     payload, check) = _unpack_record(buf, _REC_AT)  # fmt: skip
    rec = _new(_RawRecord)
    rec.opcode = _OPCODES[opcode]
    rec.phase = _PHASES[phase]
    rec.state = _STATES[state]
    rec.transition = _TRANSITIONS[transition]
    rec.direction = _DIRECTIONS[direction]
    rec.peer_half = peer_half
    rec.tid = tid
    rec.epoch = epoch
    rec.seq = seq
    rec.nonce = nonce
    rec.commit_upto = commit_upto
    rec.held_upto = held_upto
    rec.delivered_upto = delivered_upto
    rec.beat_size = beat_size
    rec.beat_index = beat_index
    rec.sack = sack
    rec.payload = payload[:length]
    rec.flags = flags
    rec.check = check
    rec.__class__ = Record  # type: ignore[assignment]
    return rec  # type: ignore[return-value]


def encode_record(record: Record, key: bytes | None = None) -> bytes:
    """The 64 bytes of record, with a CRC32C check, or a SipHash-2-4 check (KEYED) if key."""
    if key is not None:
        check_key(key)
    buf, out, _, c_rec, c_out, _ = _scratch.bufs
    r = record
    _pack_record(
        buf, _REC_AT, r.opcode, r.phase, r.state, r.transition, r.direction, r.peer_half,
        r.tid, r.epoch, r.seq, r.nonce, r.commit_upto, r.held_upto, r.delivered_upto,
        r.beat_size, r.beat_index, r.sack, len(r.payload), r.flags, r.payload, r.check,
    )  # fmt: skip
    _c_record_encode(c_rec, key or _NULL, c_out)
    return bytes(out[:RECORD_LEN])


def decode_record(data: bytes, key: bytes | None = None) -> Record:
    """Validate and decode 64 record bytes; raises DecodeError (offsets as in a frame)."""
    if key is not None:
        check_key(key)
    buf, _, _, c_rec, _, c_err = _scratch.bufs
    if type(data) is not bytes:
        data = bytes(data)
    if _c_record_decode(data, len(data), key or _NULL, c_rec, c_err):
        raise DecodeError(c_err.code, c_err.offset)
    return _unpack(buf)


def encode_frame(frame: Frame, key: bytes | None = None) -> bytes:
    """The 78 bytes of frame; see encode_record for the check."""
    if key is not None:
        check_key(key)
    buf, out, c_hdr, c_rec, c_out, _ = _scratch.bufs
    r = frame.record
    _pack_frame(
        buf, 0, frame.dst, frame.src, frame.ethertype, r.opcode, r.phase, r.state,
        r.transition, r.direction, r.peer_half, r.tid, r.epoch, r.seq, r.nonce, r.commit_upto,
        r.held_upto, r.delivered_upto, r.beat_size, r.beat_index, r.sack, len(r.payload),
        r.flags, r.payload, r.check,
    )  # fmt: skip
    _c_frame_encode(c_hdr, c_rec, key or _NULL, c_out)
    return bytes(out)


def decode_frame(data: bytes, ethertype: int = ETHERTYPE, key: bytes | None = None) -> Frame:
    """Validate and decode a 78-byte frame expected to carry `ethertype`; a link with a key
    accepts only KEYED records checked with it, a link without only CRC32C ones."""
    if key is not None:
        check_key(key)
    if not 0 <= ethertype <= 0xFFFF:
        _check_ethertype(ethertype)
    buf, _, _, c_rec, _, c_err = _scratch.bufs
    if type(data) is not bytes:
        data = bytes(data)
    if _c_frame_decode(data, len(data), ethertype, key or _NULL, _NULL, c_rec, c_err):
        raise DecodeError(c_err.code, c_err.offset)
    frame = _new(_RawFrame)
    frame.dst = data[0:6]
    frame.src = data[6:12]
    frame.ethertype = ethertype
    frame.record = _unpack(buf)
    frame.__class__ = Frame  # type: ignore[assignment]
    return frame  # type: ignore[return-value]
