"""The `"fields"` of a golden vector (see README.md): a decoded frame as a dict of plain
ints and hex strings. One definition, shared by the generator (gen_wire_v1.py, which
imports it as `wire_fields`) and the tests that compare decoders against the vectors
(which import it as `vectors.wire_fields`)."""

from __future__ import annotations

from typing import Any

from oae.wire import VERSION, Frame


def frame_fields(frame: Frame) -> dict[str, Any]:
    """`frame`'s fields as a vector states them. `version` is always VERSION: a decoder
    hands out no frame of another version (it rejects it with ErrorCode.VERSION)."""
    r = frame.record
    return {
        "dst": frame.dst.hex(),
        "src": frame.src.hex(),
        "ethertype": frame.ethertype,
        "version": VERSION,
        "opcode": int(r.opcode),
        "phase": int(r.phase),
        "state": int(r.state),
        "transition": int(r.transition),
        "direction": int(r.direction),
        "peer_half": r.peer_half.hex(),
        "tid": r.tid,
        "epoch": r.epoch,
        "seq": r.seq,
        "nonce": r.nonce,
        "commit_upto": r.commit_upto,
        "held_upto": r.held_upto,
        "delivered_upto": r.delivered_upto,
        "beat_size": r.beat_size,
        "beat_index": r.beat_index,
        "sack": r.sack,
        "length": r.length,
        "flags": r.flags,
        "payload": r.payload.hex(),
        "check": f"{r.check:016x}",
    }
