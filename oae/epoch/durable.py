"""Durable node state of the epoch layer, and stores that write it atomically.

A node acknowledges nothing that depends on its state before that state is durable: the
machine (oae.epoch.machine) emits `Persist(record)` and the driver must complete the
write before it performs any later action of the same step. `FileStore` keeps two slots
in one preallocated file, each a framed record (magic, format, sequence number, length,
CRC32, the record in its binary encoding below); a write overwrites in place the slot
that does not hold the newest record and fdatasyncs once, so a crash at any point leaves
either the old or the new record, never a torn one (a torn slot fails its CRC and the
other slot is read). Both stores refuse a record whose committed epoch is lower than the
stored one: a committed epoch is never rolled back.

The binary record (`DurableRecord.to_bytes`; the C machine, csrc/epoch.c, writes and
reads the same bytes): big-endian, a fixed 60-byte head and five counted arrays.

    0      version (1)
    1      flags: 1 tree_parent, 2 prepared, 4 prepared_parent, 8 initiating present
    2-6    counts: tree_children, committed_log, prepared_children, prepared_log, aborted
    7      0
    8-19   committed wave (epoch, attempt, initiator: u32 each)
    20-23  tree_parent        24-35 prepared wave       36-39 prepared_parent
    40-51  initiating wave    52-59 next_attempt (u64); absent fields are zero
    60-    tree_children (u32 each, ascending), committed_log ((u32 node, u64 frames)
           each), prepared_children, prepared_log, aborted (waves, ascending)

Bounds: at most 64 children and log entries (links per node) and 64 aborted waves; node
ids fit in 32 bits. Records written before (a JSON document, in a slot or as the whole
file) still load.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from oae.epoch.messages import GENESIS, Wave
from oae.errors import OaeError


class DurableError(OaeError):
    """A durable record could not be read or would roll a committed epoch back."""


@dataclass(frozen=True)
class DurableRecord:
    """Everything a node needs after a crash to reconcile with its neighbours.

    committed: the wave whose epoch this node has committed (GENESIS for epoch 0).
    tree_parent/tree_children: this node's place in the echo tree of `committed` (or of
    `prepared` while prepared), so that DONE feedback can be re-sent after a restart.
    prepared: the wave this node has durably prepared (checkpoint of e+1 written, the
    channel log below complete) and promised to commit if it is decided.
    prepared_log / committed_log: per neighbour, how many application frames received
    after the capture and before that neighbour's marker belong to the checkpoint
    (Chandy-Lamport channel state) of the prepared / committed epoch.
    initiating: the wave this node started and has not decided; after a restart it is
    aborted (presumed abort: a commit decision is durable before it is sent).
    aborted: waves for epoch committed+1 known to be aborted (answered on request).
    next_attempt: attempts are never reused across restarts.
    """

    committed: Wave = GENESIS
    tree_parent: int | None = None
    tree_children: frozenset[int] = frozenset()
    committed_log: tuple[tuple[int, int], ...] = ()
    prepared: Wave | None = None
    prepared_parent: int | None = None
    prepared_children: frozenset[int] = frozenset()
    prepared_log: tuple[tuple[int, int], ...] = ()
    initiating: Wave | None = None
    aborted: frozenset[Wave] = field(default_factory=frozenset)
    next_attempt: int = 1

    @property
    def epoch(self) -> int:
        return self.committed.epoch

    def to_bytes(self) -> bytes:
        """The binary encoding (module docstring); DurableError if the record exceeds its
        bounds."""
        try:
            arrays = [
                _ids(self.tree_children),
                _log(self.committed_log),
                _ids(self.prepared_children),
                _log(self.prepared_log),
                b"".join(_WAVE.pack(a.epoch, a.attempt, a.initiator) for a in sorted(self.aborted)),
            ]
            counts = (
                len(self.tree_children),
                len(self.committed_log),
                len(self.prepared_children),
                len(self.prepared_log),
                len(self.aborted),
            )
            if max(counts[:4]) > LINKS_MAX or counts[4] > ABORTED_MAX:
                raise ValueError(
                    f"more than {LINKS_MAX} children or log entries, or more "
                    f"than {ABORTED_MAX} aborted waves"
                )
            flags = (
                (self.tree_parent is not None)
                | (self.prepared is not None) << 1
                | (self.prepared_parent is not None) << 2
                | (self.initiating is not None) << 3
            )
            head = _HEAD.pack(
                RECORD_VERSION,
                flags,
                *counts,
                0,
                *_wave(self.committed),
                self.tree_parent or 0,
                *_wave(self.prepared),
                self.prepared_parent or 0,
                *_wave(self.initiating),
                self.next_attempt,
            )
        except (struct.error, ValueError) as exc:
            raise DurableError(f"durable epoch record does not fit its encoding: {exc}") from None
        return head + b"".join(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> DurableRecord:
        """Decode `to_bytes`'s encoding; DurableError naming what is wrong."""

        def bad(why: str) -> DurableError:
            return DurableError(f"corrupt durable epoch record: {why}")

        if len(data) < _HEAD.size:
            raise bad(f"{len(data)} bytes, shorter than the {_HEAD.size}-byte head")
        head = _HEAD.unpack_from(data)
        version, flags, counts, zero, f = head[0], head[1], head[2:7], head[7], head[8:]
        if version != RECORD_VERSION:
            raise bad(f"format version {version}, this build reads {RECORD_VERSION}")
        if flags & ~0x0F or zero:
            raise bad("unknown flags")
        if max(counts[:4]) > LINKS_MAX or counts[4] > ABORTED_MAX:
            raise bad("an array longer than its bound")
        n_tc, n_cl, n_pc, n_pl, n_ab = counts
        want = _HEAD.size + 4 * (n_tc + n_pc) + 12 * (n_cl + n_pl + n_ab)
        if len(data) != want:
            raise bad(f"{len(data)} bytes, its counts say {want}")
        committed, tree_parent = Wave(*f[0:3]), f[3]
        prepared, prepared_parent, initiating = Wave(*f[4:7]), f[7], Wave(*f[8:11])
        present = [bool(flags & b) for b in (1, 2, 4, 8)]
        fields = (tree_parent, prepared != GENESIS, prepared_parent, initiating != GENESIS)
        if any(v and not p for v, p in zip(fields, present, strict=True)):
            raise bad("a field marked absent is not zero")
        off = _HEAD.size

        def take(n: int, size: int) -> list[bytes]:
            nonlocal off
            out = [data[off + i * size : off + (i + 1) * size] for i in range(n)]
            off += n * size
            return out

        tree_children = [struct.unpack(">I", b)[0] for b in take(n_tc, 4)]
        committed_log = tuple(_LOGENT.unpack(b) for b in take(n_cl, 12))
        prepared_children = [struct.unpack(">I", b)[0] for b in take(n_pc, 4)]
        prepared_log = tuple(_LOGENT.unpack(b) for b in take(n_pl, 12))
        aborted = [Wave(*_WAVE.unpack(b)) for b in take(n_ab, 12)]
        for name, xs in (
            ("tree_children", tree_children),
            ("prepared_children", prepared_children),
            ("aborted", aborted),
        ):
            if any(a >= b for a, b in zip(xs, xs[1:], strict=False)):  # type: ignore[operator]
                raise bad(f"{name} not ascending")
        return cls(
            committed=committed,
            tree_parent=tree_parent if present[0] else None,
            tree_children=frozenset(tree_children),
            committed_log=committed_log,
            prepared=prepared if present[1] else None,
            prepared_parent=prepared_parent if present[2] else None,
            prepared_children=frozenset(prepared_children),
            prepared_log=prepared_log,
            initiating=initiating if present[3] else None,
            aborted=frozenset(aborted),
            next_attempt=f[11],
        )

    @classmethod
    def from_json(cls, text: str) -> DurableRecord:
        """A record of the JSON layout used before the binary one (still loads)."""
        try:
            d = json.loads(text)

            def w(x: list[int] | None) -> Wave | None:
                return None if x is None else Wave(*x)

            committed = w(d["committed"])
            if committed is None:
                raise ValueError("committed is null")
            return cls(
                committed=committed,
                tree_parent=d["tree_parent"],
                tree_children=frozenset(d["tree_children"]),
                committed_log=tuple((int(a), int(b)) for a, b in d["committed_log"]),
                prepared=w(d["prepared"]),
                prepared_parent=d["prepared_parent"],
                prepared_children=frozenset(d["prepared_children"]),
                prepared_log=tuple((int(a), int(b)) for a, b in d["prepared_log"]),
                initiating=w(d["initiating"]),
                aborted=frozenset(Wave(*a) for a in d["aborted"]),
                next_attempt=int(d["next_attempt"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DurableError(f"corrupt durable epoch record: {exc}") from None

    def evolve(self, **changes: object) -> DurableRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


RECORD_VERSION = 1
LINKS_MAX = 64  # csrc/epoch.h OAE_EPOCH_LINKS_MAX
ABORTED_MAX = 64  # OAE_EPOCH_ABORTED_MAX
_HEAD = struct.Struct(">8B3II3II3IQ")
_WAVE = struct.Struct(">III")
_LOGENT = struct.Struct(">IQ")


def _wave(w: Wave | None) -> tuple[int, int, int]:
    return (0, 0, 0) if w is None else (w.epoch, w.attempt, w.initiator)


def _ids(ids: frozenset[int]) -> bytes:
    return b"".join(struct.pack(">I", n) for n in sorted(ids))


def _log(log: tuple[tuple[int, int], ...]) -> bytes:
    return b"".join(_LOGENT.pack(n, frames) for n, frames in log)


def check_monotone(old: DurableRecord | None, new: DurableRecord) -> None:
    """Raise if `new` would roll back the committed epoch of `old`."""
    if old is not None and new.epoch < old.epoch:
        raise DurableError(f"refusing to roll committed epoch {old.epoch} back to {new.epoch}")


class MemoryStore:
    """The simulator's store: survives a simulated crash because the simulator keeps it."""

    def __init__(self) -> None:
        self.record: DurableRecord | None = None

    def load(self) -> DurableRecord:
        return self.record or DurableRecord()

    def write(self, record: DurableRecord) -> None:
        check_monotone(self.record, record)
        self.record = record


# FileStore layout. The file is 2*S bytes (S a multiple of _BLOCK): slot 0 at offset 0,
# slot 1 at offset S, each a record framed as below and zero-padded to S. The slots sit in
# different blocks, so writing one never rewrites the other's sectors.
_MAGIC = b"OAEP"
_FORMAT = 1
_HDR = struct.Struct(">4sHHQI")  # magic, format, reserved (0), sequence number, length
_CRC = struct.Struct(">I")  # CRC32 (zlib) of the header and the payload, after the header
_FRAME = _HDR.size + _CRC.size
_BLOCK = 4096
_SEQ_MOD = 1 << 64


def _newer(a: int, b: int) -> bool:
    """Serial-number order on 64-bit sequence numbers (a write stores newest+1)."""
    return 0 < (a - b) % _SEQ_MOD < _SEQ_MOD // 2


def _frame(seq: int, payload: bytes) -> bytes:
    hdr = _HDR.pack(_MAGIC, _FORMAT, 0, seq % _SEQ_MOD, len(payload))
    return hdr + _CRC.pack(zlib.crc32(payload, zlib.crc32(hdr))) + payload


def _unframe(data: bytes, off: int, limit: int) -> tuple[int, bytes] | None:
    """The (sequence number, payload) of the slot at `off`, or None if it is not a valid
    record (empty, torn, damaged) or would extend past `limit`."""
    if off + _FRAME > limit:
        return None
    magic, fmt, reserved, seq, length = _HDR.unpack_from(data, off)
    if magic != _MAGIC or fmt != _FORMAT or reserved or off + _FRAME + length > limit:
        return None
    payload = bytes(data[off + _FRAME : off + _FRAME + length])
    (crc,) = _CRC.unpack_from(data, off + _HDR.size)
    if zlib.crc32(payload, zlib.crc32(data[off : off + _HDR.size])) != crc:
        return None
    return seq, payload


def _slots(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, sequence number, payload) of the two slots of a well-formed file, the
    valid ones only; [] if the size is not a 2*S layout."""
    s = len(data) // 2
    if s < _BLOCK or s % _BLOCK or len(data) != 2 * s:
        return []
    out = []
    for off in (0, s):
        rec = _unframe(data, off, off + s)
        if rec is not None:
            out.append((off, *rec))
    return out


def _newest(cands: list[tuple[int, int, bytes]]) -> tuple[int, int, bytes] | None:
    best = None
    for c in cands:
        if best is None or _newer(c[1], best[1]):
            best = c
    return best


class SlotFile:
    """A crash-atomic file holding one byte string (a record), two slots updated in place.

    `write` pwrites the slot that does not hold the newest valid record and fdatasyncs
    once; the file is created (or resized, when a record outgrows its slots) by temp
    file, fdatasync, rename and directory fsync. `read` gives the newest valid record, so
    after a crash at any point the old or the new one, never a torn one. Meant for one
    writer per file (readers may run alongside: a slot being written fails its CRC and
    the other one is read). `what` names the record in errors."""

    def __init__(self, path: str | os.PathLike[str], what: str = "durable record") -> None:
        self.path = Path(path)
        self.what = what

    def read(self) -> bytes | None:
        """The newest valid record; None if the file does not exist; a file of the plain
        layout used before (a JSON document, starting with '{') whole. DurableError if
        no slot is valid."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if data[:1] == b"{":
            return data
        # any 4 KiB boundary may hold a slot: a file cut short still yields the slots it holds
        cands = []
        for off in range(0, len(data), _BLOCK):
            rec = _unframe(data, off, len(data))
            if rec is not None:
                cands.append((off, *rec))
        best = _newest(cands)
        if best is None:
            raise DurableError(
                f"corrupt {self.what} {self.path}: no valid slot"
                f" ({len(data)} bytes; damaged, or not a file of this kind)"
            )
        return best[2]

    def write(self, payload: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            self._create(1, payload)
            return
        try:
            data = os.pread(fd, os.fstat(fd).st_size + 1, 0)
            slots = _slots(data)
            newest = _newest(slots)
            seq = 1 if newest is None else newest[1] + 1
            size = len(data) // 2
            if not slots or _FRAME + len(payload) > size:
                # an older layout, a damaged file, or a record that outgrew its slots
                self._create(seq, payload)
            else:
                off = size if newest is not None and newest[0] == 0 else 0
                img = _frame(seq, payload)
                if os.pwrite(fd, img, off) != len(img):
                    raise DurableError(f"short write to {self.path}")
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def _create(self, seq: int, payload: bytes) -> None:
        """A new file, record in slot 0, put in place atomically (rare: first write, or
        slots too small). Slots are sized with room for the record to double."""
        size = max(_BLOCK, -(-2 * (_FRAME + len(payload)) // _BLOCK) * _BLOCK)
        img = bytearray(2 * size)
        frame = _frame(seq, payload)
        img[: len(frame)] = frame
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            if os.write(fd, img) != len(img):
                raise DurableError(f"short write to {tmp}")
            os.fdatasync(fd)  # data and size; the name is made durable by the dir fsync
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class FileStore:
    """One file per node (a SlotFile: two framed slots, the record's binary encoding,
    updated in place with one fdatasync; csrc/epochrun.c writes the same file).

    Read the latest record with `FileStore(path).load()` (the file is not plain JSON)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = SlotFile(self.path, "durable epoch record")
        self._last: DurableRecord | None = None  # the record this store last wrote

    def load(self) -> DurableRecord:
        """The newest valid record; the genesis record if the file does not exist."""
        data = self._file.read()
        if data is None:
            return DurableRecord()
        if data[:1] != b"{":
            try:
                return DurableRecord.from_bytes(data)
            except DurableError as exc:
                raise DurableError(f"{exc} ({self.path})") from None
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise DurableError(f"corrupt durable epoch record {self.path}: {exc}") from None
        return DurableRecord.from_json(text)

    def write(self, record: DurableRecord) -> None:
        old = self._last
        if old is None:
            old = self.load() if self.path.exists() else None
        check_monotone(old, record)
        self._file.write(record.to_bytes())
        self._last = record
