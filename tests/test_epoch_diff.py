"""The C epoch machine (csrc/epoch.c) against its oracle, the Python machine
(oae/epoch/machine.py), under the same inputs: identical actions (and the bytes of every
record they persist), identical queries after every input, and an exception from the
Python machine exactly where the C machine returns an error.

Input sequences come from: tests/test_epoch_machine.py's adversarial harness (its property
and scenarios) and the simulator on gated links (oae.epoch.sim's LegSim: loss, link flaps,
crash-restarts, refused checkpoints, application traffic), every node's machine a `Twin`;
Hypothesis' arbitrary inputs to one node, bad and out-of-order ones included, and a few
scripted rare paths; and the binary record codec, C against Python, on arbitrary records
and damaged bytes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oae._epoch import ffi, lib

from oae.epoch import bilateral
from oae.epoch.cmachine import CEpochMachine
from oae.epoch.converge import run
from oae.epoch.durable import DurableError, DurableRecord
from oae.epoch.machine import Action, EpochMachine, EpochSafetyError, Persist
from oae.epoch.messages import Kind, Message, MessageError, Wave, decode
from oae.epoch.sim import NetParams, make_topology


def c_records(c: CEpochMachine, n: int) -> list[bytes]:
    """The bytes of the first `n` records the C machine's last input persisted."""
    size = ffi.new("size_t *")
    out = []
    for i in range(n):
        p = lib.oae_epoch_persisted(c._m, i, size)
        out.append(bytes(ffi.buffer(p, size[0])))
    return out


def c_record_now(c: CEpochMachine) -> bytes:
    buf = ffi.new("uint8_t[]", lib.OAE_EPOCH_RECORD_MAX)
    n = lib.oae_epoch_record_encode(lib.oae_epoch_record_get(c._m), buf)
    return bytes(ffi.buffer(buf, n))


def py_status(m: EpochMachine) -> dict[str, object]:
    """The Python machine's state in the shape of cmachine.machine_status (the C one's)."""

    def w(x: Wave | None) -> list[int] | None:
        return None if x is None else [x.epoch, x.attempt, x.initiator]

    st = m.wave
    return {
        "node": m.node_id,
        "epoch": m.rec.epoch,
        "committed": w(m.rec.committed),
        "prepared": w(m.rec.prepared),
        "wave": None
        if st is None
        else {
            "wave": w(st.wave),
            "parent": st.parent,
            "waiting": sorted(st.waiting),
            "children": sorted(st.children),
            "crossing": sorted(st.crossing),
            "written": st.written,
            "accepted": st.accepted,
        },
        "deferred": {str(w(k)): sorted(v) for k, v in sorted(m.deferred.items())},
        "links": {
            str(n): {
                "up": ls.up,
                "heard": ls.heard,
                "epoch": ls.epoch,
                "send_epoch": m.send_epoch(n),
                "unsettled_app": ls.unsettled_app,
            }
            for n, ls in m.links.items()
        },
        "mixed_frames": m.mixed_frames,
        "bad_messages": m.bad_messages,
    }


class Twin:
    """An EpochMachine whose every input also goes to a CEpochMachine: the two must
    agree. Queries and attributes not listed here read the Python machine."""

    INPUTS = (
        "start", "propose", "checkpoint_written", "link_up", "link_down", "offered",
        "reflected", "delivered", "outcome", "app_frame", "app_sent", "app_settled",
    )  # fmt: skip

    def __init__(self, node_id: int, neighbours: list[int], record: DurableRecord) -> None:
        self.py = EpochMachine(node_id, neighbours, record)
        self.c = CEpochMachine(node_id, neighbours, record)
        self.inputs = 0
        self.compare()

    def __getattr__(self, name: str) -> Any:
        if name in Twin.INPUTS:
            return lambda *args: self.both(name, *args)
        return getattr(self.py, name)

    def both(self, name: str, *args: Any) -> Any:
        self.inputs += 1
        try:
            want = getattr(self.py, name)(*args)
        except Exception as exc:
            with pytest.raises(type(exc)):
                getattr(self.c, name)(*args)
            raise
        got = getattr(self.c, name)(*args)
        assert got == want, f"{name}{args}: C {got} != Python {want}"
        actions: list[Action] = []
        if isinstance(want, tuple):
            actions = want[1]
        elif isinstance(want, list):
            actions = want
        persisted = [a.record.to_bytes() for a in actions if isinstance(a, Persist)]
        assert c_records(self.c, len(persisted)) == persisted, f"{name}{args}: record bytes"
        self.compare()
        return want

    def compare(self) -> None:
        py, c = self.py, self.c
        assert c.status() == py_status(py)
        assert c.in_wave() == py.in_wave() and c.epoch == py.epoch
        assert c_record_now(c) == py.rec.to_bytes()
        for n in py.links:
            assert c.send_epoch(n) == py.send_epoch(n)


# ------------------------------------------------------------------ the simulator
SHAPES = [("ring", 5), ("tree", 6), ("ring", 3), ("chain", 4), ("mesh", 5)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**31),
    loss=st.sampled_from([0.0, 0.02, 0.1]),
    refuse=st.sampled_from([0.0, 0.05, 0.2]),
    crash_rate=st.sampled_from([0.0, 0.3, 1.0]),
    flap_rate=st.sampled_from([0.0, 0.3, 1.0]),
    initiator=st.none() | st.just(0),
)
def test_c_machine_agrees_on_simulated_runs(
    shape, seed, loss, refuse, crash_rate, flap_rate, initiator
) -> None:
    twins: list[Twin] = []

    def twin(node_id: int, neighbours: list[int], record: DurableRecord) -> Twin:
        twins.append(Twin(node_id, neighbours, record))
        return twins[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bilateral, "EpochMachine", twin)
        topo = make_topology(*shape)
        params = NetParams(loss=loss, refuse_rate=refuse, rto_us=120.0)
        r = run("bilateral", topo, 4, seed=seed, params=params, crash_rate=crash_rate,
                flap_rate=flap_rate, initiator=initiator)  # fmt: skip
    assert r["mixed_epoch_states"] == 0 and r["mixed_epoch_frames"] == 0
    assert sum(t.inputs for t in twins) > 10 * len(topo.edges)


# ------------------------------------------------------------------ the adversarial harness
def test_c_machine_agrees_under_the_adversarial_harness() -> None:
    """tests/test_epoch_machine.py's harness (gated links at record level: loss, reorder,
    link failures and resets, crash-restarts, concurrent proposals, application frames),
    its Hypothesis property and every scenario, with every machine a Twin."""
    import inspect

    import test_epoch_machine as harness

    scenarios = [
        f
        for name, f in vars(harness).items()
        if name.startswith("test_") and callable(f) and not inspect.signature(f).parameters
    ]
    assert len(scenarios) >= 8
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "EpochMachine", Twin)
        for scenario in scenarios:
            scenario()
        harness.test_machine_is_safe_always_and_live_once_faults_stop()


# ------------------------------------------------------------------ arbitrary inputs
# Link ids below 8: the Python machine iterates a set of links in one place (crossing
# neighbours whose hold is due, in _finish), which for such ids is ascending, the C
# machine's order.
LINKS = [1, 3, 5]
INITIATORS = [0, 1, 3, 5]
links = st.sampled_from(LINKS + [4])  # 4: not a neighbour
tids = st.integers(0, 12)
waves = st.builds(Wave, st.integers(0, 3), st.integers(0, 3), st.sampled_from(INITIATORS))
records = st.builds(
    DurableRecord,
    committed=st.builds(Wave, st.integers(0, 2), st.integers(0, 3), st.sampled_from([0, 3])),
    tree_parent=st.none() | st.sampled_from(LINKS),
    tree_children=st.frozensets(st.sampled_from(LINKS)),
    prepared=st.none() | waves,
    prepared_parent=st.none() | st.sampled_from(LINKS),
    prepared_children=st.frozensets(st.sampled_from(LINKS)),
    initiating=st.none() | waves,
    aborted=st.frozensets(waves, max_size=4),
    next_attempt=st.integers(1, 5),
)


def inputs(epoch: int) -> st.SearchStrategy[tuple[Any, ...]]:
    """One input to a node at committed epoch `epoch`: waves mostly of the next epoch,
    from a few attempts and initiators, so that offers of one wave meet on several links."""
    near = st.builds(
        Wave, st.sampled_from([epoch, epoch + 1, epoch + 1, epoch + 1, epoch + 2]),
        st.integers(0, 3), st.sampled_from(INITIATORS),
    )  # fmt: skip
    msgs = st.one_of(
        st.builds(lambda k, w: Message(k, w).encode(), st.sampled_from(list(Kind)), near),
        st.binary(max_size=16),
    )
    return st.one_of(
        st.tuples(st.just("propose")),
        st.tuples(st.just("checkpoint_written"), near, st.booleans()),
        st.tuples(st.just("link_up"), links),
        st.tuples(st.just("link_down"), links),
        st.tuples(st.just("offered"), links, tids, msgs, tids),
        st.tuples(st.just("reflected"), links, tids, msgs),
        st.tuples(st.just("delivered"), links, tids, msgs),
        st.tuples(
            st.just("outcome"), links, tids, st.booleans(), st.none() | msgs, st.booleans()
        ),  # fmt: skip
        st.tuples(st.just("app_frame"), links, tids, st.sampled_from([max(epoch - 1, 0), epoch])),
        st.tuples(st.just("app_sent"), links),
        st.tuples(st.just("app_settled"), links),
    )


def impossible(m: EpochMachine, step: tuple[Any, ...]) -> bool:
    """A delivery no peer can make: a commit of the next epoch's wave W while this node is
    not prepared for W, or of a later epoch (EpochSafetyError)."""
    if step[0] != "delivered" or step[1] not in m.links:
        return False
    try:
        msg = decode(step[3])
    except MessageError:
        return False
    w, c = msg.wave, m.epoch
    if msg.kind not in (Kind.PROPOSE, Kind.COMMIT) or w.epoch <= c:
        return False
    return w.epoch > c + 1 or m.wave is None or m.wave.wave != w or not m.wave.accepted


def bounds_reached(c: CEpochMachine) -> bool:
    ctr = ffi.new("oae_epoch_counters *")
    lib.oae_epoch_counters_get(c._m, ctr)
    return bool(ctr.aborted_forgotten or ctr.out_forgotten or ctr.inc_refused)


@settings(max_examples=500, deadline=None)
@given(record=records, data=st.data(), up=st.booleans())
def test_c_machine_agrees_on_arbitrary_inputs(record: DurableRecord, data, up: bool) -> None:
    """Any input in any order, to node 0 with neighbours 1, 3, 5 (4 is none). Where the
    Python machine raises (KeyError for a stranger, EpochSafetyError for a commit it never
    prepared) the C machine returns the matching error, and both stop; such impossible
    commits come seldom, so that runs get deep."""
    m = Twin(0, LINKS, record)
    m.both("start")
    for n in LINKS if up else []:
        m.both("link_up", n)
    for _ in range(data.draw(st.integers(0, 80), label="steps")):
        step = data.draw(inputs(m.py.epoch))
        if impossible(m.py, step) and data.draw(st.integers(0, 9)):
            continue
        try:
            m.both(*step)
        except (KeyError, EpochSafetyError):
            return
        if bounds_reached(m.c):
            return  # a bound of csrc/epoch.h (the Python machine has none)


def propose_msg(w: Wave) -> bytes:
    return Message(Kind.PROPOSE, w).encode()


RESTARTED_PREPARED = DurableRecord(prepared=Wave(1, 1, 1), prepared_parent=1)
SCRIPTS = {
    # prepared for W1 after a restart, a higher W2 offered on two links waits; W1
    # aborts: W2 is joined with the lower sender as parent, the other one crossing
    "deferred wave with two senders": (
        RESTARTED_PREPARED,
        [
            ("offered", 5, 1, propose_msg(Wave(1, 2, 3)), 0),
            ("offered", 3, 1, propose_msg(Wave(1, 2, 3)), 0),
            ("delivered", 1, 1, Message(Kind.ABORT, Wave(1, 1, 1)).encode()),
            ("checkpoint_written", Wave(1, 2, 3), True),
            ("reflected", 1, 1, propose_msg(Wave(1, 2, 3))),
            ("reflected", 5, 1, propose_msg(Wave(1, 2, 3))),
            ("delivered", 3, 1, propose_msg(Wave(1, 2, 3))),
        ],
    ),
    # a child's report of an older wave's transfer counts for nothing
    "late report of an older wave": (
        DurableRecord(),
        [
            ("propose",),
            ("checkpoint_written", Wave(1, 1, 0), True),
            ("reflected", 1, 5, propose_msg(Wave(1, 1, 0))),
            ("outcome", 1, 5, False, propose_msg(Wave(1, 1, 0)), False),
            ("link_up", 1),
            ("link_up", 3),
            ("link_up", 5),
            ("propose",),
            ("checkpoint_written", Wave(1, 2, 0), True),
            ("reflected", 1, 6, propose_msg(Wave(1, 2, 0))),
            ("reflected", 3, 6, propose_msg(Wave(1, 2, 0))),
            ("reflected", 5, 6, propose_msg(Wave(1, 2, 0))),
            ("outcome", 1, 5, True, propose_msg(Wave(1, 1, 0)), False),
            ("outcome", 3, 6, True, propose_msg(Wave(1, 2, 0)), False),
        ],
    ),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_c_machine_agrees_on_rare_paths(script: str) -> None:
    record, steps = SCRIPTS[script]
    m = Twin(0, LINKS, record)
    m.both("start")
    for n in LINKS:
        m.both("link_up", n)
    for step in steps:
        m.both(*step)
    assert m.py.epoch == 1


# ------------------------------------------------------------------ the record codec
@settings(max_examples=300, deadline=None)
@given(record=records, logs=st.lists(st.tuples(st.integers(0, 2**32 - 1),
                                               st.integers(0, 2**64 - 1)), max_size=5))  # fmt: skip
def test_record_codec_is_the_same_in_c_and_python(record: DurableRecord, logs) -> None:
    record = record.evolve(committed_log=tuple(logs), prepared_log=tuple(reversed(logs)))
    data = record.to_bytes()
    assert DurableRecord.from_bytes(data) == record
    r = ffi.new("oae_epoch_record *")
    assert lib.oae_epoch_record_decode(data, len(data), r) == 0
    out = ffi.new("uint8_t[]", lib.OAE_EPOCH_RECORD_MAX)
    assert bytes(ffi.buffer(out, lib.oae_epoch_record_encode(r, out))) == data


@settings(max_examples=300, deadline=None)
@given(record=records, data=st.data())
def test_record_decoders_reject_the_same_damage(record: DurableRecord, data) -> None:
    raw = bytearray(record.to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if op == "flip" and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        elif op == "cut" and raw:
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=12))
    r = ffi.new("oae_epoch_record *")
    c_ok = lib.oae_epoch_record_decode(bytes(raw), len(raw), r) == 0
    try:
        got = DurableRecord.from_bytes(bytes(raw))
    except DurableError:
        assert not c_ok
        return
    assert c_ok
    out = ffi.new("uint8_t[]", lib.OAE_EPOCH_RECORD_MAX)
    assert bytes(ffi.buffer(out, lib.oae_epoch_record_encode(r, out))) == got.to_bytes()


def test_records_beyond_the_bounds_are_refused_by_name() -> None:
    big = DurableRecord(aborted=frozenset(Wave(1, a, 0) for a in range(65)))
    with pytest.raises(DurableError, match="does not fit"):
        big.to_bytes()
    with pytest.raises(DurableError, match="does not fit"):
        DurableRecord(tree_parent=2**32).to_bytes()
