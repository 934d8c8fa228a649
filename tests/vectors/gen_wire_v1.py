"""Generate tests/vectors/wire_v1.json, the golden vectors of wire format v1.

Run once and check the output in; tests only read the JSON. Valid frames are encoded by
the pure-Python model codec (itself checked against the spec's CRC32C and SipHash test
values); invalid ones are valid frames with one defect, re-sealed with a correct check
where the defect is in a field (so the field error, not CHECK, is what a decoder must
report). Usage: python tests/vectors/gen_wire_v1.py > tests/vectors/wire_v1.json
"""

from __future__ import annotations

import json
import sys

from wire_fields import frame_fields  # tests/vectors/wire_fields.py, next to this script

from oae.model.wire import _check_of, decode_frame, encode_frame
from oae.wire import (
    ETHERTYPE,
    HELLO_GROUP,
    DecodeError,
    Direction,
    Flag,
    Frame,
    Opcode,
    Phase,
    Record,
    State,
    Transition,
)

A = bytes.fromhex("020000000a01")
B = bytes.fromhex("020000000b02")
KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))


def frame(record: Record, dst: bytes = B, src: bytes = A, ethertype: int = ETHERTYPE) -> Frame:
    return Frame(dst, src, ethertype, record)


VALID: list[tuple[str, Frame, bytes | None]] = [
    ("hello_discover", frame(Record(opcode=Opcode.HELLO, phase=Phase.DISCOVER,
                                    seq=1, nonce=0x1234ABCD), dst=HELLO_GROUP), None),
    ("token_keepalive_empty", frame(Record(seq=2, nonce=0x1234ABCD, peer_half=bytes.fromhex(
        "12030000"), sack=0xFF)), None),
    ("token_offer_payload16_beat4", frame(Record(
        state=State.TENTATIVE, transition=Transition.OFFER, tid=1, epoch=7, seq=3,
        nonce=0x1234ABCD, beat_size=4, beat_index=3, payload=bytes(range(0x41, 0x51)),
        peer_half=bytes.fromhex("23030000"), sack=0xFF)), None),
    ("token_reflect_in_payload1", frame(Record(
        state=State.REFLECTING, transition=Transition.REFLECT, direction=Direction.IN, tid=1,
        epoch=7, seq=9, nonce=0x0BADCAFE, held_upto=1, payload=b"\x5a",
        peer_half=bytes.fromhex("23030101"), sack=0xFF), dst=A, src=B), None),
    ("token_commit", frame(Record(
        state=State.COMMITTED, transition=Transition.COMMIT, tid=1, epoch=7, seq=4,
        nonce=0x1234ABCD, commit_upto=1, peer_half=bytes.fromhex("23028082"),
        sack=0xFF)), None),
    ("token_free_in", frame(Record(
        state=State.COMMITTED, transition=Transition.FREE, direction=Direction.IN, tid=1,
        epoch=7, seq=10, nonce=0x0BADCAFE, held_upto=1, delivered_upto=1,
        peer_half=bytes.fromhex("23030303"), sack=0xFF), dst=A, src=B), None),
    ("token_reverse_aborted", frame(Record(
        state=State.ABORTED, transition=Transition.REVERSE, tid=2, epoch=7, seq=5,
        nonce=0x1234ABCD, commit_upto=1, peer_half=bytes.fromhex("23030000"),
        sack=0xFF)), None),
    ("reconcile_indefinite", frame(Record(
        opcode=Opcode.RECONCILE, phase=Phase.RECONCILE, state=State.INDEFINITE, tid=3,
        epoch=7, seq=1, nonce=0x77777777, commit_upto=2, held_upto=5, delivered_upto=4)),
     None),
    ("bye", frame(Record(opcode=Opcode.BYE, seq=6, nonce=0x1234ABCD, epoch=7)), None),
    ("token_refuse_beat16", frame(Record(
        seq=11, nonce=0x0BADCAFE, held_upto=4, flags=Flag.REFUSE, beat_size=16,
        beat_index=0, sack=0xFF)), None),
    ("token_control_epoch_message", frame(Record(
        state=State.TENTATIVE, transition=Transition.OFFER, tid=5, epoch=7, seq=12,
        nonce=0x1234ABCD, flags=Flag.CONTROL, payload=b"\x01\x00\x00\x00\x08")), None),
    ("keyed_token_offer", frame(Record(
        state=State.TENTATIVE, transition=Transition.OFFER, tid=6, epoch=7, seq=13,
        nonce=0x1234ABCD, payload=b"keyed payload", sack=0xFF)), KEY),
    ("keyed_all_flags_beat16", frame(Record(
        state=State.REFLECTING, transition=Transition.REFLECT, direction=Direction.IN, tid=6,
        epoch=7, seq=14, nonce=0x0BADCAFE, flags=Flag.REFUSE | Flag.CONTROL, beat_size=16,
        beat_index=15, payload=bytes(16))), KEY),
    ("boundary_max_values_beat64", frame(Record(
        opcode=Opcode.TOKEN, phase=Phase.LIVE, state=State.INDEFINITE,
        transition=Transition.REVERSE, direction=Direction.IN, peer_half=b"\xff" * 4,
        tid=0xFFFFFFFF, epoch=0xFFFFFFFF, seq=0xFFFFFFFF, nonce=0xFFFFFFFF,
        commit_upto=0xFFFFFFFF, held_upto=0xFFFFFFFF, delivered_upto=0xFFFFFFFF,
        beat_size=64, beat_index=63, sack=0xFF, flags=Flag.REFUSE | Flag.CONTROL,
        payload=b"\xff" * 16), dst=b"\xff" * 6, src=b"\xfe" * 6), None),
    ("boundary_min_values", frame(Record(
        opcode=Opcode.HELLO, phase=Phase.DISCOVER, seq=1, nonce=1), dst=bytes(6),
        src=bytes(6)), None),
    ("custom_ethertype_88b6", frame(Record(seq=15, nonce=0x1234ABCD), ethertype=0x88B6),
     None),
]  # fmt: skip


def reseal(data: bytes, key: bytes | None = None) -> bytes:
    """Recompute the check of a (possibly invalid) frame, as a buggy or forging sender
    would, so that a field defect is what the decoder reports."""
    body = data[14:70]
    return data[:70] + _check_of(body, key)


def patch(data: bytes, offset: int, value: int, key: bytes | None = None) -> bytes:
    out = bytearray(data)
    out[offset] = value
    return reseal(bytes(out), key)


def main() -> None:
    base = encode_frame(VALID[2][1])  # token_offer_payload16_beat4
    short = encode_frame(VALID[1][1])  # empty payload
    keyed = encode_frame(VALID[11][1], KEY)
    flipped = bytearray(base)
    flipped[60] ^= 0x01
    crc_hi = bytearray(base)
    crc_hi[70] = 0x01
    invalid: list[tuple[str, bytes, int, bytes | None]] = [
        ("truncated_empty", b"", ETHERTYPE, None),
        ("truncated_60_min_ethernet", base[:60], ETHERTYPE, None),
        ("truncated_77", base[:77], ETHERTYPE, None),
        ("oversized_with_fcs", base + bytes.fromhex("deadbeef"), ETHERTYPE, None),
        ("oversized_padded_to_79", base + b"\0", ETHERTYPE, None),
        ("ethertype_ipv4", base[:12] + b"\x08\x00" + base[14:], ETHERTYPE, None),
        ("ethertype_vlan_tag", base[:12] + b"\x81\x00" + base[14:], ETHERTYPE, None),
        ("ethertype_link_configured_88b6", base, 0x88B6, None),
        ("version_0", patch(base, 14, 0x02), ETHERTYPE, None),
        ("version_2", patch(base, 14, 0x22), ETHERTYPE, None),
        ("version_before_check", bytes(base[:14]) + b"\x22" + base[15:], ETHERTYPE, None),
        ("check_bit_flip_payload", bytes(flipped), ETHERTYPE, None),
        ("check_before_opcode", bytes(base[:14]) + b"\x10" + base[15:], ETHERTYPE, None),
        ("check_keyed_frame_unkeyed_link", keyed, ETHERTYPE, None),
        ("check_unkeyed_frame_keyed_link", base, ETHERTYPE, KEY),
        ("check_keyed_wrong_key", keyed, ETHERTYPE, OTHER_KEY),
        ("check_unkeyed_nonzero_high_bytes", reseal(bytes(crc_hi))[:70] + b"\x01"
         + reseal(bytes(crc_hi))[71:], ETHERTYPE, None),
        ("opcode_0", patch(base, 14, 0x10), ETHERTYPE, None),
        ("opcode_5", patch(base, 14, 0x15), ETHERTYPE, None),
        ("opcode_15_keyed", patch(keyed, 14, 0x1F, KEY), ETHERTYPE, KEY),
        ("phase_0", patch(base, 15, 0), ETHERTYPE, None),
        ("phase_4", patch(base, 15, 4), ETHERTYPE, None),
        ("state_6", patch(base, 16, 6), ETHERTYPE, None),
        ("transition_6", patch(base, 17, 0x06), ETHERTYPE, None),
        ("transition_127_direction_in", patch(base, 17, 0xFF), ETHERTYPE, None),
        ("seq_0", reseal(base[:30] + bytes(4) + base[34:]), ETHERTYPE, None),
        ("nonce_0", reseal(base[:34] + bytes(4) + base[38:]), ETHERTYPE, None),
        ("beat_size1_index1", patch(base, 50, 0x01), ETHERTYPE, None),
        ("beat_size4_index4", patch(base, 50, 0x44), ETHERTYPE, None),
        ("beat_size16_index63", patch(base, 50, 0xBF), ETHERTYPE, None),
        ("length_17", patch(base, 52, 17), ETHERTYPE, None),
        ("length_255", patch(base, 52, 255), ETHERTYPE, None),
        ("flags_reserved_bit3", patch(base, 53, 0x08), ETHERTYPE, None),
        ("flags_reserved_bit7_keyed", patch(keyed, 53, 0x81, KEY), ETHERTYPE, KEY),
        ("padding_length0_last_byte", patch(short, 69, 0x01), ETHERTYPE, None),
        ("padding_length2_byte5", patch(patch(short, 52, 2), 59, 0x80), ETHERTYPE, None),
        ("first_field_error_wins", reseal(patch(base, 15, 0)[:30] + bytes(4)
                                          + base[34:]), ETHERTYPE, None),
    ]  # fmt: skip
    vectors = []
    for name, f, key in VALID:
        data = encode_frame(f, key)
        vectors.append(
            {
                "name": name,
                "frame_hex": data.hex(),
                "ethertype": f.ethertype,
                "key_hex": key.hex() if key else None,
                "fields": frame_fields(decode_frame(data, f.ethertype, key)),
            }
        )
    for name, data, ethertype, key in invalid:
        try:
            decode_frame(data, ethertype, key)
        except DecodeError as e:
            error = {"code": e.code.name, "field": e.field, "offset": e.offset}
        else:
            raise SystemExit(f"invalid vector {name} decodes")
        vectors.append(
            {
                "name": name,
                "frame_hex": data.hex(),
                "ethertype": ethertype,
                "key_hex": key.hex() if key else None,
                "error": error,
            }
        )
    json.dump({"format": "oae wire v1 golden vectors", "vectors": vectors}, sys.stdout,
              indent=1)  # fmt: skip
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
