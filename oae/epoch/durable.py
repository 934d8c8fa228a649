"""Durable node state of the epoch layer, and stores that write it atomically.

A node acknowledges nothing that depends on its state before that state is durable: the
machine (oae.epoch.machine) emits `Persist(record)` and the driver must complete the
write before it performs any later action of the same step. `FileStore` writes a
temporary file, fdatasyncs it, renames it over the old one and fsyncs the directory, so a
crash at any point leaves either the old or the new record, never a torn one. Both stores
refuse a record whose committed epoch is lower than the stored one: a committed epoch is
never rolled back.
"""

from __future__ import annotations

import json
import os
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

    def to_json(self) -> str:
        def w(x: Wave | None) -> list[int] | None:
            return None if x is None else [x.epoch, x.attempt, x.initiator]

        return json.dumps(
            {
                "committed": w(self.committed),
                "tree_parent": self.tree_parent,
                "tree_children": sorted(self.tree_children),
                "committed_log": [list(p) for p in self.committed_log],
                "prepared": w(self.prepared),
                "prepared_parent": self.prepared_parent,
                "prepared_children": sorted(self.prepared_children),
                "prepared_log": [list(p) for p in self.prepared_log],
                "initiating": w(self.initiating),
                "aborted": sorted(w(a) for a in self.aborted),
                "next_attempt": self.next_attempt,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> DurableRecord:
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


class FileStore:
    """One JSON file per node, replaced atomically (temp file, fdatasync, rename, dir fsync)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._last: DurableRecord | None = None  # the record this store last wrote

    def load(self) -> DurableRecord:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return DurableRecord()
        return DurableRecord.from_json(text)

    def write(self, record: DurableRecord) -> None:
        old = self._last
        if old is None:
            old = self.load() if self.path.exists() else None
        check_monotone(old, record)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, record.to_json().encode())
            # Data and size; the name is made durable by the directory fsync below.
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._last = record
