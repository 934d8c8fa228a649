"""Epoch-layer messages: what the bilateral convergence protocol says over a link.

Each message travels as the CONTROL payload of one AIT transfer (docs/protocol.md: at most
16 payload bytes, flags bit 2 set), so every encoding here is at most 16 bytes. A wave
(one attempt to move the cluster from epoch e to e+1) is named by `Wave(epoch, attempt,
initiator)`; waves are totally ordered by that tuple, which is how concurrent proposals of
the same epoch are resolved. PROPOSE travels as a link's gated wave transfer, whose legs
are the wave's phases (docs/convergence.md §3); the others are status messages, ordinary
CONTROL transfers used when a link restarted under a wave. Layout (big-endian):

    byte 0      0xE0 | type (type in the low nibble; the high nibble tags the layer)
    bytes 1-4   epoch
    bytes 5-8   attempt
    bytes 9-12  initiator node id
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from oae.errors import OaeError

MAGIC = 0xE0
_WAVE = struct.Struct(">BIII")
MAX_U32 = 0xFFFFFFFF


class MessageError(OaeError):
    """Bytes that are not a valid epoch-layer message (counted and dropped by the machine)."""


class Kind(enum.IntEnum):
    """Message types; each one names a wave (or, for COMMIT, the wave that committed).
    Types 2 and 3 (ACCEPT and REFUSE of the message-based protocol) are now the hold and
    the refusal of the PROPOSE transfer itself, and are not valid messages."""

    PROPOSE = 1  # the gated wave transfer: join W (hold = ACCEPT, commit = COMMIT, ...)
    ABORT = 4  # W is aborted (flooded to every neighbour without a W transfer)
    COMMIT = 5  # I have durably committed W.epoch (by wave W); also the status on link up
    PREPARED = 6  # link up: I am prepared for W, tell me its fate if you know it
    DONE = 7  # child -> parent, after a link restart: my subtree switched to W.epoch


@dataclass(frozen=True, order=True)
class Wave:
    """One attempt to reach `epoch`; ordered by (epoch, attempt, initiator)."""

    epoch: int
    attempt: int
    initiator: int

    def __post_init__(self) -> None:
        for name in ("epoch", "attempt", "initiator"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_U32:
                raise MessageError(f"{name} {value} does not fit in 32 bits")


GENESIS = Wave(0, 0, 0)


@dataclass(frozen=True)
class Message:
    """A decoded epoch-layer message."""

    kind: Kind
    wave: Wave

    def encode(self) -> bytes:
        """The ≤ 16-byte CONTROL payload."""
        w = self.wave
        return _WAVE.pack(MAGIC | self.kind, w.epoch, w.attempt, w.initiator)


def decode(data: bytes) -> Message:
    """Parse a CONTROL payload; raise MessageError naming what is wrong."""
    if len(data) < 1:
        raise MessageError("empty epoch message")
    head = data[0]
    if head & 0xF0 != MAGIC:
        raise MessageError(f"not an epoch message (first byte 0x{head:02x})")
    try:
        kind = Kind(head & 0x0F)
    except ValueError:
        raise MessageError(f"unknown epoch message type {head & 0x0F}") from None
    if len(data) != _WAVE.size:
        raise MessageError(f"{kind.name} must be {_WAVE.size} bytes, got {len(data)}")
    _, epoch, attempt, initiator = _WAVE.unpack(data)
    return Message(kind, Wave(epoch, attempt, initiator))
