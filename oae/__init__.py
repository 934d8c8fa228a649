"""oae: Open Atomic Ethernet emulator.

Public API (kept small on purpose):

- wire format v1: `Record`, `Frame`, `DecodeError`, `encode_frame`, `decode_frame`
- Trio runtime: `open_link` (-> `Link`: `send`, `post`, `outcomes`, `received`, `stats`;
  exactly-once for applications: docs/applications.md), `Outcome`, `Message`,
  `LinkOptions`, `LinkError`; `open_node`, `Node`, `LinkSpec`
- epoch layer: `EpochMachine` (sans-I/O), `Wave`, `open_epoch_node` (-> `EpochNode`)
- link engine (sans-I/O, C): `LinkEngine`, `LinkConfig`, `Durable`, events `LinkUp`,
  `LinkDown`, `Delivered`, `Committed`, `Aborted`, `Persist`, and with gates `Offered`,
  `Reflected` (also what `Link.gate_events()` yields); `Drop` reasons
"""

from __future__ import annotations

__version__ = "0.1.0"

from oae.engine import (
    Aborted,
    Committed,
    Delivered,
    Drop,
    Durable,
    LinkConfig,
    LinkDown,
    LinkEngine,
    LinkUp,
    Offered,
    Persist,
    Reflected,
)
from oae.epoch.machine import EpochMachine
from oae.epoch.messages import Wave
from oae.epoch.node import EpochNode, open_epoch_node
from oae.errors import NeedsRootError, OaeError, UsageError
from oae.runtime.link import Link, LinkError, LinkOptions, Message, Outcome, open_link
from oae.runtime.node import LinkSpec, Node, open_node
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
    "open_link",
    "Link",
    "LinkOptions",
    "LinkError",
    "Outcome",
    "Message",
    "open_node",
    "Node",
    "LinkSpec",
    "EpochMachine",
    "Wave",
    "EpochNode",
    "open_epoch_node",
    "LinkEngine",
    "LinkConfig",
    "Durable",
    "LinkUp",
    "LinkDown",
    "Delivered",
    "Committed",
    "Aborted",
    "Persist",
    "Offered",
    "Reflected",
    "Drop",
]
