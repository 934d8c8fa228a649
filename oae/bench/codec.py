"""`oae bench codec`: how many records per second the wire codec encodes and decodes.

Three figures for one encode + decode round of a typical TOKEN frame (16-byte payload,
CRC32C check): the C codec as applications see it (through `oae.wire`), the C codec in a
pure C loop (`oae_codec_loop`, no Python per record) and the pure-Python model codec
(`oae.model.wire`), the baseline. C API and Python repeats are interleaved so that load from
elsewhere on the machine hits both alike; each rate is the median over the repeats and the
ratio is the median of the per-repeat ratios (each from back-to-back measurements). The
same is done once more with a SipHash-2-4 link key.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from oae import wire
from oae._wire import ffi, lib
from oae.bench.cli import BenchOptions
from oae.model import wire as model

KEY = bytes(range(16))

FRAME = wire.Frame(
    dst=bytes.fromhex("020000000b02"),
    src=bytes.fromhex("020000000a01"),
    ethertype=wire.ETHERTYPE,
    record=wire.Record(
        state=wire.State.TENTATIVE,
        transition=wire.Transition.OFFER,
        peer_half=bytes.fromhex("23030000"),
        tid=1,
        epoch=7,
        seq=3,
        nonce=0x1234ABCD,
        beat_size=4,
        beat_index=3,
        sack=0xFF,
        payload=bytes(range(16)),
    ),
)


def _round_trip(codec: object, key: bytes | None) -> Callable[[], object]:
    encode, decode = codec.encode_frame, codec.decode_frame  # type: ignore[attr-defined]
    frame, ethertype = FRAME, FRAME.ethertype

    def once() -> object:
        return decode(encode(frame, key), ethertype, key)

    return once


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of fn per second, run in batches for at least `seconds`."""
    batch, calls = 64, 0
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def _c_loop_rate(key: bytes | None, seconds: float) -> float:
    rec = ffi.new("oae_record *")
    r = FRAME.record
    rec.opcode, rec.phase, rec.state, rec.transition = r.opcode, r.phase, r.state, r.transition
    rec.peer_half = r.peer_half
    rec.tid, rec.epoch, rec.seq, rec.nonce = r.tid, r.epoch, r.seq, r.nonce
    rec.beat_size, rec.beat_index, rec.sack = r.beat_size, r.beat_index, r.sack
    rec.length, rec.payload = len(r.payload), r.payload
    k = key or ffi.NULL
    n = 1000
    while True:
        start = time.perf_counter()
        ok = lib.oae_codec_loop(rec, k, n)
        elapsed = time.perf_counter() - start
        if ok != n:
            raise RuntimeError(f"oae_codec_loop decoded {ok} of {n} records")
        if elapsed >= seconds:
            return n / elapsed
        n = max(n * 2, int(n * seconds / max(elapsed, 1e-6) * 1.1))


def _check_agreement(key: bytes | None) -> None:
    """Refuse to time codecs that disagree: both must produce the same frame and record."""
    c_bytes, py_bytes = wire.encode_frame(FRAME, key), model.encode_frame(FRAME, key)
    if c_bytes != py_bytes or wire.decode_frame(c_bytes, key=key) != model.decode_frame(
        py_bytes, key=key
    ):
        raise RuntimeError("C and Python codecs disagree; run the tests")


def _measure(key: bytes | None, opts: BenchOptions) -> tuple[float, float, float, float]:
    """Medians of the C API, Python and C loop rates, and of the per-repeat ratios."""
    _check_agreement(key)
    c_api, py, c_loop = [], [], []
    for _ in range(opts.repeats):
        c_api.append(_rate(_round_trip(wire, key), opts.seconds))
        py.append(_rate(_round_trip(model, key), opts.seconds))
        c_loop.append(_c_loop_rate(key, opts.seconds))
    ratio = statistics.median(c / p for c, p in zip(c_api, py, strict=True))
    return statistics.median(c_api), statistics.median(py), statistics.median(c_loop), ratio


def run(opts: BenchOptions) -> dict:
    c_api, py, c_loop, ratio = _measure(None, opts)
    k_api, k_py, k_loop, k_ratio = _measure(KEY, opts)
    per_s = "records/s"
    return {
        "c_api_records_per_s": c_api,
        "c_loop_records_per_s": c_loop,
        "py_records_per_s": py,
        "ratio": ratio,
        "keyed_c_api_records_per_s": k_api,
        "keyed_c_loop_records_per_s": k_loop,
        "keyed_py_records_per_s": k_py,
        "keyed_ratio": k_ratio,
        "units": {
            "c_api_records_per_s": per_s,
            "c_loop_records_per_s": per_s,
            "py_records_per_s": per_s,
            "ratio": "x (median of per-repeat c_api / py)",
            "keyed_c_api_records_per_s": per_s,
            "keyed_c_loop_records_per_s": per_s,
            "keyed_py_records_per_s": per_s,
            "keyed_ratio": "x (median of per-repeat keyed c_api / keyed py)",
        },
    }
