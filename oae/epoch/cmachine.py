"""The C epoch machine (csrc/epoch.c) behind the interface of oae.epoch.machine.

`CEpochMachine` takes the same inputs as `EpochMachine` and returns the same actions and
queries; it is what the node's epoch runner (csrc/epochrun.c) runs without Python, and
tests/test_epoch_diff.py holds it to the Python machine, its oracle. `machine_status`
takes a JSON-able snapshot of a C machine of either extension module (this one's, or a
runner's in oae._pump).
"""

from __future__ import annotations

from typing import Any

from oae._epoch import ffi, lib
from oae.epoch.durable import DurableError, DurableRecord
from oae.epoch.machine import (
    Action,
    Capture,
    Commit,
    Converged,
    Decided,
    Discard,
    EpochSafetyError,
    Hold,
    LinkEpoch,
    Offer,
    Persist,
    Refuse,
    Report,
    Reset,
)
from oae.epoch.messages import MessageError, Wave
from oae.errors import OaeError


class EpochMachineError(OaeError):
    """The C machine reached one of its fixed bounds within one input (csrc/epoch.h)."""


def load_record(record: DurableRecord, c: Any = None) -> Any:
    """`record` as an `oae_epoch_record *` of module `c` (default: oae._epoch)."""
    f, lb = (ffi, lib) if c is None else (c.ffi, c.lib)
    out = f.new("oae_epoch_record *")
    data = record.to_bytes()
    if lb.oae_epoch_record_decode(data, len(data), out) != 0:
        raise DurableError("durable epoch record rejected by the C decoder")  # a codec bug
    return out


def raise_for(rc: int, what: str) -> None:
    """Raise what the Python machine raises where the C machine returned `rc` < 0."""
    if rc == lib.OAE_EPOCH_ELINK:
        raise KeyError(what)
    if rc == lib.OAE_EPOCH_ESAFETY:
        raise EpochSafetyError(f"C epoch machine: safety contradicted ({what})")
    if rc == lib.OAE_EPOCH_ERANGE:
        raise MessageError("epoch or attempt does not fit in 32 bits")
    if rc == lib.OAE_EPOCH_ESTATE:
        raise KeyError(f"C epoch machine: {what} impossible in its state")
    if rc == lib.OAE_EPOCH_ERECORD:
        raise DurableError(
            "durable epoch record: undecodable, or its parents/children are not all neighbours"
        )
    raise EpochMachineError(f"C epoch machine failed ({what}): a bound of csrc/epoch.h reached")


def _wave(w: Any) -> Wave:
    return Wave(w.epoch, w.attempt, w.initiator)


def convert(f: Any, lb: Any, m: Any, n: int) -> list[Action]:
    """The `n` actions of machine `m`'s last input (module ffi `f`, lib `lb`)."""
    acts = lb.oae_epoch_actions(m)
    out: list[Action] = []
    size = f.new("size_t *")
    for i in range(n):
        a = acts[i]
        t = a.type
        if t == lb.OAE_EA_OFFER:
            out.append(Offer(a.link, bytes(f.buffer(a.payload, a.len)), bool(a.gated)))
        elif t == lb.OAE_EA_HOLD:
            out.append(Hold(a.link, a.tid))
        elif t == lb.OAE_EA_REFUSE:
            out.append(Refuse(a.link, a.tid))
        elif t == lb.OAE_EA_COMMIT:
            out.append(Commit(a.link, a.tid))
        elif t == lb.OAE_EA_REPORT:
            out.append(Report(a.link, a.tid))
        elif t == lb.OAE_EA_RESET:
            out.append(Reset(a.link))
        elif t == lb.OAE_EA_PERSIST:
            p = lb.oae_epoch_persisted(m, a.tid, size)
            out.append(Persist(DurableRecord.from_bytes(bytes(f.buffer(p, size[0])))))
        elif t == lb.OAE_EA_CAPTURE:
            out.append(Capture(_wave(a.wave)))
        elif t == lb.OAE_EA_DISCARD:
            out.append(Discard(_wave(a.wave)))
        elif t == lb.OAE_EA_LINK_EPOCH:
            out.append(LinkEpoch(a.link, a.epoch))
        elif t == lb.OAE_EA_DECIDED:
            out.append(Decided(_wave(a.wave), bool(a.ok)))
        elif t == lb.OAE_EA_CONVERGED:
            out.append(Converged(_wave(a.wave)))
    return out


def machine_status(f: Any, lb: Any, m: Any, node_id: int) -> dict[str, object]:
    """A JSON-able snapshot of C machine `m` (module ffi `f`, lib `lb`): the committed and
    prepared waves, the wave in progress, the deferred waves, each link's state, the
    counters."""

    def w(x: Any) -> list[int]:
        return [x.epoch, x.attempt, x.initiator]

    ids = []
    ls = f.new("oae_epoch_link_state *")
    links: dict[str, object] = {}
    for i in range(lb.oae_epoch_links(m)):
        lb.oae_epoch_link_get(m, i, ls)
        ids.append(ls.id)
        links[str(ls.id)] = {
            "up": bool(ls.up),
            "heard": ls.heard if ls.has_heard else None,
            "epoch": ls.epoch,
            "send_epoch": None if ls.send_epoch < 0 else ls.send_epoch,
            "unsettled_app": ls.unsettled_app,
        }

    def members(bits: int) -> list[int]:
        return [n for i, n in enumerate(ids) if bits >> i & 1]

    r = lb.oae_epoch_record_get(m)
    st = f.new("oae_epoch_wave_state *")
    lb.oae_epoch_wave_get(m, st)
    deferred = []
    dw, senders = f.new("oae_epoch_wave *"), f.new("uint64_t *")
    while lb.oae_epoch_deferred_get(m, len(deferred), dw, senders) == 0:
        deferred.append((_wave(dw), members(senders[0])))
    ctr = f.new("oae_epoch_counters *")
    lb.oae_epoch_counters_get(m, ctr)
    return {
        "node": node_id,
        "epoch": r.committed.epoch,
        "committed": w(r.committed),
        "prepared": w(r.prepared) if r.has_prepared else None,
        "wave": None
        if not st.active
        else {
            "wave": w(st.wave),
            "parent": st.parent if st.has_parent else None,
            "waiting": members(st.waiting),
            "children": members(st.children),
            "crossing": members(st.crossing),
            "written": bool(st.written),
            "accepted": bool(st.accepted),
        },
        "deferred": {str(w(k)): v for k, v in sorted(deferred)},
        "links": links,
        "mixed_frames": ctr.mixed_frames,
        "bad_messages": ctr.bad_messages,
    }


class CEpochMachine:
    """One node's epoch layer, run by the C machine; see EpochMachine for the meaning of
    every input, action and query."""

    def __init__(self, node_id: int, neighbours: list[int], record: DurableRecord) -> None:
        self.node_id = node_id
        err = ffi.new("int *")
        nbrs = ffi.new("uint32_t[]", list(neighbours) or [0])
        m = lib.oae_epoch_new(node_id, nbrs, len(neighbours), load_record(record), err)
        if m == ffi.NULL:
            if err[0] == -12:
                raise MemoryError("C epoch machine")
            raise_for(err[0], f"{len(neighbours)} neighbours")
        self._m = ffi.gc(m, lib.oae_epoch_free)
        self._started = ffi.new("int *")
        self._wave = ffi.new("oae_epoch_wave *")
        self._accepted = ffi.new("int *")

    def _take(self, rc: int, what: str) -> list[Action]:
        if rc < 0:
            raise_for(rc, what)
        return convert(ffi, lib, self._m, rc)

    # ----------------------------------------------------------------- queries
    @property
    def epoch(self) -> int:
        return lib.oae_epoch_epoch(self._m)

    @property
    def rec(self) -> DurableRecord:
        out = ffi.new("uint8_t[]", lib.OAE_EPOCH_RECORD_MAX)
        n = lib.oae_epoch_record_encode(lib.oae_epoch_record_get(self._m), out)
        return DurableRecord.from_bytes(bytes(ffi.buffer(out, n)))

    def in_wave(self) -> Wave | None:
        st = ffi.new("oae_epoch_wave_state *")
        lib.oae_epoch_wave_get(self._m, st)
        return _wave(st.wave) if st.active else None

    def send_epoch(self, link: int) -> int | None:
        e = lib.oae_epoch_send_epoch(self._m, link)
        return None if e < 0 else e

    @property
    def mixed_frames(self) -> int:
        return self.status()["mixed_frames"]  # type: ignore[return-value]

    @property
    def bad_messages(self) -> int:
        return self.status()["bad_messages"]  # type: ignore[return-value]

    def status(self) -> dict[str, object]:
        return machine_status(ffi, lib, self._m, self.node_id)

    # ----------------------------------------------------------------- inputs
    def start(self) -> list[Action]:
        return self._take(lib.oae_epoch_start(self._m), "start")

    def propose(self) -> tuple[Wave | None, list[Action]]:
        rc = lib.oae_epoch_propose(self._m, self._started, self._wave)
        actions = self._take(rc, "propose")
        return (_wave(self._wave) if self._started[0] else None), actions

    def checkpoint_written(self, wave: Wave, ok: bool) -> list[Action]:
        w = ffi.new("oae_epoch_wave *", (wave.epoch, wave.attempt, wave.initiator))
        return self._take(lib.oae_epoch_checkpoint_written(self._m, w, ok), "checkpoint_written")

    def link_up(self, link: int) -> list[Action]:
        return self._take(lib.oae_epoch_link_up(self._m, link), f"link {link}")

    def link_down(self, link: int) -> list[Action]:
        return self._take(lib.oae_epoch_link_down(self._m, link), f"link {link}")

    def offered(self, link: int, tid: int, payload: bytes, delivered: int) -> list[Action]:
        rc = lib.oae_epoch_offered(self._m, link, tid, payload, len(payload), delivered)
        return self._take(rc, f"link {link}")

    def reflected(self, link: int, tid: int, payload: bytes) -> list[Action]:
        rc = lib.oae_epoch_reflected(self._m, link, tid, payload, len(payload))
        return self._take(rc, f"link {link}")

    def delivered(self, link: int, tid: int, payload: bytes) -> list[Action]:
        rc = lib.oae_epoch_delivered(self._m, link, tid, payload, len(payload))
        return self._take(rc, f"link {link}")

    def outcome(
        self, link: int, tid: int, committed: bool, payload: bytes | None, by_round: bool
    ) -> list[Action]:
        data = ffi.NULL if payload is None else payload
        n = 0 if payload is None else len(payload)
        rc = lib.oae_epoch_outcome(self._m, link, tid, committed, data, n, by_round)
        return self._take(rc, f"link {link}")

    def app_frame(self, link: int, tid: int, tag: int) -> tuple[bool, list[Action]]:
        rc = lib.oae_epoch_app_frame(self._m, link, tid, tag, self._accepted)
        actions = self._take(rc, f"link {link}")
        return bool(self._accepted[0]), actions

    def app_sent(self, link: int) -> None:
        self._take(lib.oae_epoch_app_sent(self._m, link), f"link {link}")

    def app_settled(self, link: int) -> list[Action]:
        return self._take(lib.oae_epoch_app_settled(self._m, link), f"link {link}")
