"""oae: Open Atomic Ethernet emulator.

Public API (kept small on purpose):

- wire format v1: `Record`, `Frame`, `DecodeError`, `encode_frame`, `decode_frame`
"""

from __future__ import annotations

__version__ = "0.1.0"

from oae.errors import NeedsRootError, OaeError, UsageError
from oae.wire import (
    DecodeError,
    Direction,
    ErrorCode,
    Flag,
    Frame,
    Opcode,
    Phase,
    Record,
    State,
    Transition,
    decode_frame,
    encode_frame,
)

__all__ = [
    "__version__",
    "OaeError",
    "UsageError",
    "NeedsRootError",
    "Record",
    "Frame",
    "DecodeError",
    "encode_frame",
    "decode_frame",
    "Opcode",
    "Phase",
    "State",
    "Transition",
    "Direction",
    "Flag",
    "ErrorCode",
]
