"""The event log (csrc/evlog.c) and what a restarted pump makes of it: records are checked
end to end, a torn tail is ignored and damage refused, replay keeps exactly what the
durable registers still need (docs/applications.md §4), and a pump restarted on a log
hands out first what its application had not consumed, then compacts the log. Replay and
compaction are also fuzzed under ASan/UBSan (csrc/fuzz_evlog.c)."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest
from fuzzutil import NEEDS_CLANG, build, short_run
from oae._pump import ffi, lib

from oae.runtime.link import read_log

DELIVERED, COMMITTED, ABORTED = lib.OAE_EV_DELIVERED, lib.OAE_EV_COMMITTED, lib.OAE_EV_ABORTED
OFFER, ACK, RELEASE = lib.OAE_LOG_OFFER, lib.OAE_LOG_ACK, lib.OAE_LOG_RELEASE
HEAD = lib.OAE_LOG_HEAD
ACKED, RESTORED, REPLAYED = lib.OAE_LOGF_ACKED, lib.OAE_EVF_RESTORED, lib.OAE_PEVF_REPLAYED
REC = lib.OAE_LOG_REC_LEN


def rec(type_: int, tid: int = 0, key: int = 0, payload: bytes = b"", flags: int = 0,
        aux: int = 0) -> bytes:  # fmt: skip
    r = ffi.new("oae_log_record *")
    r.type, r.tid, r.key, r.flags, r.aux = type_, tid, key, flags, aux
    r.length = len(payload)
    r.payload[0 : len(payload)] = payload
    out = ffi.new("uint8_t[]", REC)
    lib.oae_log_encode(out, r)
    return bytes(out)


def v1_rec(type_: int, tid: int, payload: bytes = b"") -> bytes:
    """A record of the first format (40 bytes, magic 'L')."""
    body = struct.pack(">BBBBB3xII16s", 0x4C, type_, 0, 0, len(payload), tid, 0, payload)
    return body + struct.pack(">I", lib.oae_crc32c(body, 32)) + bytes(4)


def regs(out_settled: int = 0, out_hi: int = 0, in_delivered: int = 0) -> object:
    d = ffi.new("oae_link_durable *")
    d.version = lib.OAE_LINK_DURABLE_VERSION
    d.has_peer = 1
    d.peer_mac = bytes([2, 0, 0, 0, 0, 2])
    d.out_settled, d.out_hi, d.in_delivered = out_settled, out_hi, in_delivered
    return d


def replay(data: bytes, d: object) -> tuple[int, object, list[tuple]]:
    """(rc, state, live records as (type, tid, key, flags, payload)) of a log image."""
    st = ffi.new("oae_log_state *")
    rc = lib.oae_log_replay(ffi.from_buffer("uint8_t[]", data), len(data), d, st)
    live = [(r.type, r.tid, r.key, r.flags, bytes(r.payload[0 : r.length]))
            for r in (st.rec[i] for i in range(st.n))]  # fmt: skip
    return rc, st, live


def test_records_round_trip_and_any_damaged_byte_is_refused() -> None:
    r = rec(OFFER, tid=7, key=2**64 - 1, payload=b"sixteen bytes!!!", flags=RESTORED, aux=9)
    out = ffi.new("oae_log_record *")
    assert lib.oae_log_decode(r, len(r), out) == REC
    assert (out.type, out.tid, out.key, out.aux, out.flags) == (OFFER, 7, 2**64 - 1, 9, RESTORED)
    assert bytes(out.payload) == b"sixteen bytes!!!"
    for i in range(REC):
        bad = bytearray(r)
        bad[i] ^= 0x20
        assert lib.oae_log_decode(bytes(bad), REC, out) == 0, i
    assert lib.oae_log_decode(r, REC - 1, out) == 0  # short


def test_first_format_records_are_read_as_consumed() -> None:
    """A log written before keys and acknowledgements existed: its deliveries count as
    released and its outcomes as acknowledged (that contract had neither)."""
    out = ffi.new("oae_log_record *")
    assert lib.oae_log_decode(v1_rec(COMMITTED, 3), 40, out) == 40
    assert out.type == COMMITTED and out.tid == 3 and out.flags & ACKED
    data = v1_rec(DELIVERED, 1, b"a") + v1_rec(DELIVERED, 2, b"b") + v1_rec(COMMITTED, 4)
    data += v1_rec(ABORTED, 5, b"x")
    rc, st, live = replay(data, regs(out_settled=4, out_hi=5, in_delivered=1))
    assert rc == 0 and (st.released, st.delivered_max, st.last_key) == (2, 2, 0)
    # tid 5 is open: the engine settles it again and its logged outcome must stop that
    assert live[1:] == [(ABORTED, 5, 0, ACKED, b"x")]


def test_replay_keeps_what_the_registers_still_need() -> None:
    """Sender: offers 1..6 (keys 10..60), 6 never persisted (out_hi 5); outcomes of 1..3,
    1 acknowledged; registers settled up to 2 only (stored before 3's outcome). Receiver:
    deliveries 1..4, released up to 2."""
    data = rec(HEAD)
    data += b"".join(rec(OFFER, t, 10 * t, b"p%d" % t) for t in range(1, 7))
    data += rec(COMMITTED, 1, 10) + rec(ABORTED, 2, 20, b"p2") + rec(COMMITTED, 3, 30)
    data += rec(ACK, 1, aux=1)
    data += b"".join(rec(DELIVERED, t, payload=b"d%d" % t) for t in range(1, 5))
    data += rec(RELEASE, 2)
    rc, st, live = replay(data, regs(out_settled=2, out_hi=5, in_delivered=3))
    assert rc == 0 and st.torn == 0
    assert (st.last_key, st.released, st.delivered_max) == (50, 2, 4)  # 60 never offered
    assert live == [
        (HEAD, 2, 50, 0, b""),
        (OFFER, 4, 40, 0, b"p4"),  # open, no outcome yet: its key and payload
        (OFFER, 5, 50, 0, b"p5"),
        (ABORTED, 2, 20, 0, b"p2"),  # settled, not acknowledged
        (COMMITTED, 3, 30, 0, b""),  # open (the engine reports it again): kept
        (DELIVERED, 3, 0, 0, b"d3"),  # not released
        (DELIVERED, 4, 0, 0, b"d4"),
    ]
    # acknowledging 2 and 3 drops 2; 3 stays while open, flagged acknowledged
    rc, _, live2 = replay(data + rec(ACK, 2, aux=3), regs(out_settled=2, out_hi=5))
    assert [(t, tid, f) for t, tid, _, f, _ in live2 if t in (COMMITTED, ABORTED)] == [
        (COMMITTED, 3, ACKED)]  # fmt: skip
    # once the registers settled past 3, its acknowledged outcome goes too
    rc, _, live3 = replay(data + rec(ACK, 2, aux=3), regs(out_settled=5, out_hi=5))
    assert [r[:2] for r in live3[1:]] == [(DELIVERED, 3), (DELIVERED, 4)]


def test_replay_is_a_fixed_point_of_compaction() -> None:
    data = rec(HEAD) + b"".join(rec(OFFER, t, t, b"x") for t in range(1, 40))
    data += b"".join(rec(COMMITTED, t, t) for t in range(1, 30))
    data += rec(ACK, 1, aux=10) + rec(ACK, 12, aux=20) + rec(DELIVERED, 5) + rec(RELEASE, 3)
    d = regs(out_settled=25, out_hi=39)
    rc, st, live = replay(data, d)
    img = b"".join(rec(t, tid, key, p, f) for t, tid, key, f, p in live[1:])
    rc2, st2, live2 = replay(rec(HEAD, st.released, st.last_key, aux=st.delivered_max) + img, d)
    assert rc == rc2 == 0 and live2 == live


def test_torn_tail_is_ignored_and_damage_is_refused() -> None:
    good = rec(HEAD) + rec(OFFER, 1, 1) + rec(COMMITTED, 1, 1)
    last = rec(DELIVERED, 1, payload=b"tail")
    for cut in range(1, REC):  # the last record torn at every byte: ignored
        rc, st, live = replay(good + last[:cut], regs(0, 1))
        assert rc == 0 and st.torn == cut and live[-1][:2] == (COMMITTED, 1), cut
    rc, st, _ = replay(good + bytes(100), regs(0, 1))  # zeros past the end (a power cut)
    assert rc == 0 and st.torn == 100
    for i in range(REC, 3 * REC):  # a damaged record before valid ones: refused
        bad = bytearray(good + last)
        bad[i] ^= 0x01
        assert replay(bytes(bad), regs(0, 1))[0] == -errno.EBADMSG, i


def _pump(state: Path, restored: object | None) -> object:
    cfg = ffi.new("oae_link_config *")
    cfg.mac = bytes([2, 0, 0, 0, 0, 1])
    cfg.nonce = 1
    cfg.window, cfg.beat, cfg.rx_capacity = 64, 1, 64
    cfg.rto_ns = cfg.dead_ns = cfg.hello_ns = 10**8
    p = lib.oae_pump_new(-1, cfg, restored if restored is not None else ffi.NULL,
                         str(state).encode(), 0)  # fmt: skip
    if p == ffi.NULL:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    return p


def _events(p: object) -> list[tuple]:
    buf = ffi.new("oae_pump_event[]", 64)
    n = lib.oae_pump_events(p, buf, 64)
    return [(e.ev.type, e.ev.tid, e.key, e.ev.flags, bytes(e.ev.payload[0 : e.ev.length]))
            for e in (buf[i] for i in range(n))]  # fmt: skip


def test_restarted_pump_hands_out_what_was_not_consumed_then_compacts(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    data = rec(HEAD) + b"".join(rec(OFFER, t, 100 + t, b"p%d" % t) for t in range(1, 6))
    data += rec(COMMITTED, 1, 101) + rec(ABORTED, 2, 102, b"p2") + rec(COMMITTED, 3, 103)
    data += rec(ACK, 1, aux=1) + rec(DELIVERED, 1, payload=b"in1") + rec(DELIVERED, 2)
    data += rec(RELEASE, 1) + rec(DELIVERED, 3, payload=b"in3")[:20]  # torn
    log.write_bytes(data)
    p = _pump(tmp_path, regs(out_settled=2, out_hi=4, in_delivered=1))
    try:
        assert _events(p) == [
            (ABORTED, 2, 102, REPLAYED, b"p2"),
            (COMMITTED, 3, 103, REPLAYED, b""),
            (DELIVERED, 2, 0, REPLAYED, b""),
        ]
        assert lib.oae_pump_last_key(p) == 104  # 105 was never persisted: offered again
        ls = ffi.new("oae_link_stats *")
        ps = ffi.new("oae_pump_stats *")
        lib.oae_pump_stats_get(p, ls, ps)
        assert ls.in_delivered == 2 and ps.replayed == 3  # the log is ahead of the registers
    finally:
        lib.oae_pump_free(p)
    assert len(log.read_bytes()) % REC == 0  # compacted, the torn tail gone
    assert [(r.kind, r.tid, r.key, r.acked) for r in read_log(tmp_path)] == [
        ("aborted", 2, 102, False), ("committed", 3, 103, False), ("delivered", 2, 0, False)]
    # restarted again without anything consumed: the same again (nothing lost)
    p = _pump(tmp_path, regs(out_settled=2, out_hi=4, in_delivered=1))
    try:
        assert [e[:2] for e in _events(p)] == [(ABORTED, 2), (COMMITTED, 3), (DELIVERED, 2)]
        assert lib.oae_pump_ack(p, 2, 3, 0) == 0
        lib.oae_pump_release(p, 1, 2)
    finally:
        lib.oae_pump_free(p)  # writes the acknowledgements and the release
    p = _pump(tmp_path, regs(out_settled=2, out_hi=4, in_delivered=2))
    try:
        assert _events(p) == []
    finally:
        lib.oae_pump_free(p)


def test_fresh_link_starts_a_new_log_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    log.write_bytes(rec(DELIVERED, 9) * 3)  # left over without registers: not this link's
    lib.oae_pump_free(_pump(tmp_path, None))
    assert log.read_bytes() == rec(HEAD)
    bad = bytearray(rec(HEAD) + rec(DELIVERED, 1) + rec(DELIVERED, 2))
    bad[REC + 9] ^= 4
    log.write_bytes(bytes(bad))
    with pytest.raises(OSError) as exc:
        _pump(tmp_path, regs(in_delivered=2))
    assert exc.value.errno == errno.EBADMSG
    assert log.read_bytes() == bytes(bad)  # left as it was, for whoever looks at it


@NEEDS_CLANG[0]
@NEEDS_CLANG[1]
def test_fuzz_target_short_run(tmp_path: Path) -> None:
    fuzzer = build(tmp_path, "fuzz_evlog") / "fuzz_evlog.bin"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    head = struct.pack(">IHB", 10, 20, 1)  # out_settled 10, 20 open tids, built records
    (corpus / "built").write_bytes(head + bytes(range(240)))
    raw = rec(HEAD) + rec(OFFER, 12, 5) + rec(COMMITTED, 12, 5) + rec(ACK, 12, aux=12)
    (corpus / "raw").write_bytes(struct.pack(">IHB", 10, 20, 0) + raw)
    short_run(fuzzer, corpus, tmp_path, "-max_total_time=15", "-seed=1", "-max_len=2048")
