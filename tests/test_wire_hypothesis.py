"""Property tests of wire format v1: encode then decode is the identity for every valid
record, and every mutation of a valid frame is either a valid frame with a correct check or
rejected, with the C codec and the pure-Python model agreeing byte for byte and error for
error."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from oae import wire
from oae.model import wire as model

u32 = st.integers(0, 0xFFFFFFFF)
nonzero_u32 = st.integers(1, 0xFFFFFFFF)
keys = st.none() | st.binary(min_size=16, max_size=16)
macs = st.binary(min_size=6, max_size=6)
ethertypes = st.just(wire.ETHERTYPE) | st.integers(0, 0xFFFF)


@st.composite
def records(draw: st.DrawFn) -> wire.Record:
    beat_size = draw(st.sampled_from(wire.BEAT_SIZES))
    return wire.Record(
        opcode=draw(st.sampled_from(wire.Opcode)),
        phase=draw(st.sampled_from(wire.Phase)),
        state=draw(st.sampled_from(wire.State)),
        transition=draw(st.sampled_from(wire.Transition)),
        direction=draw(st.sampled_from(wire.Direction)),
        peer_half=draw(st.binary(min_size=4, max_size=4)),
        tid=draw(u32),
        epoch=draw(u32),
        seq=draw(nonzero_u32),
        nonce=draw(nonzero_u32),
        commit_upto=draw(u32),
        held_upto=draw(u32),
        delivered_upto=draw(u32),
        beat_size=beat_size,
        beat_index=draw(st.integers(0, beat_size - 1)),
        sack=draw(st.integers(0, 255)),
        payload=draw(st.binary(max_size=16)),
        flags=draw(st.integers(0, 7)),
    )


frames = st.builds(wire.Frame, dst=macs, src=macs, ethertype=ethertypes, record=records())

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(codec: object, data: bytes, ethertype: int, key: bytes | None) -> object:
    try:
        return codec.decode_frame(data, ethertype, key)  # type: ignore[attr-defined]
    except wire.DecodeError as e:
        return (e.code, e.field, e.offset, str(e))


@PROPERTY
@given(frame=frames, key=keys)
def test_encode_decode_is_identity(frame: wire.Frame, key: bytes | None) -> None:
    data = wire.encode_frame(frame, key)
    assert data == model.encode_frame(frame, key)
    assert len(data) == wire.FRAME_LEN
    decoded = wire.decode_frame(data, frame.ethertype, key)
    assert decoded == model.decode_frame(data, frame.ethertype, key)
    keyed = wire.Flag.KEYED if key is not None else 0
    expected = dataclasses.replace(
        frame.record,
        flags=(frame.record.flags & ~int(wire.Flag.KEYED)) | keyed,
        check=int.from_bytes(data[70:], "big"),
    )
    assert decoded == wire.Frame(frame.dst, frame.src, frame.ethertype, expected)
    assert wire.encode_frame(decoded, key) == data
    assert wire.decode_record(data[14:], key) == expected
    assert model.encode_record(expected, key) == data[14:]


# Frame offsets of the fields the codec validates (docs/protocol.md section 5).
FIELD_BYTES = [14, 15, 16, 17, 30, 33, 34, 37, 50, 52, 53, 54, 60, 69]
# Values at and around the valid ranges' edges, and version 1 with each opcode edge.
EDGE_VALUES = [0, 1, 3, 4, 5, 6, 7, 8, 0x10, 0x14, 0x15, 0x1F, 0x3F, 0x40, 0x80, 0x86, 0xFF]


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, bytes, int, bytes | None]:
    """A valid frame and a mutation of it: bit flips, truncation, extension, random byte
    overwrites, a whole random frame, or a field byte changed and the check recomputed (as a
    buggy or key-holding sender would), which reaches the field checks behind CHECK."""
    frame, key = draw(frames), draw(keys)
    data = wire.encode_frame(frame, key)
    kind = draw(
        st.sampled_from(["flip", "truncate", "extend", "overwrite", "random", "reseal", "reseal"])
    )
    buf = bytearray(data)
    if kind == "flip":
        for pos in draw(st.lists(st.integers(0, len(buf) * 8 - 1), min_size=1, max_size=4)):
            buf[pos // 8] ^= 1 << (pos % 8)
    elif kind == "truncate":
        del buf[draw(st.integers(0, len(buf) - 1)) :]
    elif kind == "extend":
        buf += draw(st.binary(min_size=1, max_size=8))
    elif kind == "overwrite":
        pos = draw(st.integers(0, len(buf) - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        buf[pos : pos + len(patch)] = patch
    elif kind == "random":
        buf = bytearray(draw(st.binary(min_size=78, max_size=78)))
        if draw(st.booleans()):  # a random record behind a good header
            buf[:14] = data[:14]
    else:
        for _ in range(draw(st.integers(1, 2))):
            if draw(st.integers(0, 4)) == 0:  # seq or nonce to 0
                pos = draw(st.sampled_from([30, 34]))
                buf[pos : pos + 4] = bytes(4)
            else:
                pos = draw(st.sampled_from(FIELD_BYTES) | st.integers(14, 69))
                buf[pos] = draw(st.sampled_from(EDGE_VALUES) | st.integers(0, 255))
        # The check matches the mutated record for the key the receiver holds.
        flags = buf[53]
        keyed = bool(flags & wire.Flag.KEYED)
        check_key = key if keyed and key is not None else None
        if keyed and key is None:
            check_key = bytes(16)
        body = bytes(buf[14:70])
        buf[70:78] = (
            model.siphash24(check_key, body).to_bytes(8, "big")
            if check_key is not None
            else bytes(4) + model.crc32c(body).to_bytes(4, "big")
        )
    return data, bytes(buf), frame.ethertype, key


@PROPERTY
@given(case=mutations())
def test_mutations_are_valid_or_rejected_alike(
    case: tuple[bytes, bytes, int, bytes | None],
) -> None:
    original, mutated, ethertype, key = case
    c = _outcome(wire, mutated, ethertype, key)
    py = _outcome(model, mutated, ethertype, key)
    assert c == py
    event("accepted" if isinstance(c, wire.Frame) else f"rejected: {c[0].name}")  # type: ignore[index]
    if isinstance(c, wire.Frame):
        # Accepted: the check is correct for these bytes, and the frame is canonical.
        assert wire.encode_frame(c, key) == mutated
        assert c.record.check == int.from_bytes(mutated[70:], "big")
    else:
        code, field, offset, message = c  # type: ignore[misc]
        assert mutated != original
        assert 0 <= offset <= wire.FRAME_LEN
        assert message.startswith(f"bad frame: {code.name} at offset {offset} (field {field})")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100), ethertype=ethertypes, key=keys)
def test_arbitrary_bytes_decode_alike(data: bytes, ethertype: int, key: bytes | None) -> None:
    assert _outcome(wire, data, ethertype, key) == _outcome(model, data, ethertype, key)
