"""The bilateral convergence protocol on the simulator: `EpochMachine` behind a thin
process adapter on gated links (oae.epoch.sim.LegSim; the same shape of adapter runs it
on real links: it turns link events into machine inputs, and actions into link calls,
durable writes and checkpoint writes)."""

from __future__ import annotations

import copy

from oae.epoch import legs
from oae.epoch.durable import MemoryStore
from oae.epoch.machine import (
    Action,
    Capture,
    Commit,
    Converged,
    Decided,
    Discard,
    EpochMachine,
    Hold,
    LinkEpoch,
    Offer,
    Persist,
    Refuse,
    Report,
    Reset,
)
from oae.epoch.messages import Wave
from oae.epoch.sim import (
    GatedProcess,
    LegSim,
    LinkDown,
    LinkEvent,
    LinkUp,
    NetParams,
    Sim,
    Topology,
)

_GATE_CALLS = {Hold: "hold", Refuse: "refuse", Commit: "commit", Report: "report"}


class BilateralProcess(GatedProcess):
    """One node: an EpochMachine, its MemoryStore, and the simulator as its world."""

    def __init__(
        self, sim: LegSim, v: int, nbrs: list[int], store: MemoryStore, algo: Bilateral
    ) -> None:
        self.sim, self.v, self.store, self.algo = sim, v, store, algo
        self.m = EpochMachine(v, nbrs, store.load())

    def do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Offer):
                self.sim.offer(self.v, a.link, a.payload, a.gated)
            elif isinstance(a, Hold | Refuse | Commit | Report):
                self.sim.gate(self.v, a.link, _GATE_CALLS[type(a)], a.tid)
            elif isinstance(a, Reset):
                self.sim.reset(self.v, a.link)
            elif isinstance(a, Persist):
                self.store.write(a.record)
            elif isinstance(a, Capture):
                self.sim.capture(self.v, a.wave.epoch)
                self.sim.write_checkpoint(self.v, a.wave.epoch, a.wave)
            elif isinstance(a, Discard):
                self.sim.discard(self.v, a.wave.epoch)
            elif isinstance(a, LinkEpoch):
                self.sim.set_epoch(self.v, a.link, a.epoch)
                self.algo.link_switched(self.v, a.link, a.epoch, self.sim.now)
            elif isinstance(a, Decided):
                self.algo.decided(a.wave, a.committed, self.sim.now)
            elif isinstance(a, Converged):
                self.algo.converged(a.wave, self.sim.now)

    def start(self) -> None:
        self.do(self.m.start())

    def link_event(self, link: int, ev: LinkEvent) -> bool:
        m = self.m
        accepted = True
        if isinstance(ev, LinkUp):
            self.do(m.link_up(link))
        elif isinstance(ev, LinkDown):
            self.do(m.link_down(link))
        elif isinstance(ev, legs.Offered):
            self.do(m.offered(link, ev.tid, ev.payload, ev.info))
        elif isinstance(ev, legs.Reflected):
            self.do(m.reflected(link, ev.tid, ev.payload))
        elif isinstance(ev, legs.Delivered):
            x = ev.xfer
            if x.control:
                assert isinstance(x.data, bytes)
                self.do(m.delivered(link, x.tid, x.data))
            else:
                _, tag = x.data  # type: ignore[misc]
                accepted, actions = m.app_frame(link, x.tid, tag)
                self.do(actions)
        elif ev.xfer.control:
            payload = ev.xfer.data if isinstance(ev.xfer.data, bytes) else None
            self.do(m.outcome(link, ev.xfer.tid, ev.committed, payload, ev.by_round))
        else:
            self.do(m.app_settled(link))
        return accepted

    def app_sent(self, link: int) -> None:
        self.m.app_sent(link)

    def checkpoint_done(self, token: object, ok: bool) -> None:
        assert isinstance(token, Wave)
        self.do(self.m.checkpoint_written(token, ok))

    def send_epoch(self, link: int) -> int | None:
        return self.m.send_epoch(link)

    def committed_epoch(self) -> int:
        return self.m.epoch


class Bilateral:
    """Algorithm `bilateral`: one initiator proposes; the machine does the rest."""

    name = "bilateral"
    checks_cut = True
    sim_class = LegSim

    def __init__(self) -> None:
        self.decisions: dict[Wave, tuple[bool, float]] = {}
        self.conv: dict[Wave, float] = {}
        self.switched: dict[int, set[tuple[int, int]]] = {}
        self.all_links: dict[int, float] = {}
        self.n_link_ends = 0
        self.current: Wave | None = None

    def factory(self, sim: Sim, v: int, nbrs: list[int], store: object) -> GatedProcess:
        assert isinstance(store, MemoryStore) and isinstance(sim, LegSim)
        self.n_link_ends = 2 * len(sim.topo.edges)
        return BilateralProcess(sim, v, nbrs, store, self)

    @staticmethod
    def new_store() -> MemoryStore:
        return MemoryStore()

    # callbacks from processes
    def link_switched(self, v: int, link: int, epoch: int, now: float) -> None:
        ends = self.switched.setdefault(epoch, set())
        ends.add((v, link))
        if len(ends) == self.n_link_ends and epoch not in self.all_links:
            self.all_links[epoch] = now

    def decided(self, wave: Wave, committed: bool, now: float) -> None:
        self.decisions.setdefault(wave, (committed, now))

    def converged(self, wave: Wave, now: float) -> None:
        self.conv.setdefault(wave, now)

    # harness interface
    def begin(self, sim: Sim, initiator: int) -> bool:
        """Propose at `initiator`; False if it cannot start now (dead or busy)."""
        proc = sim.process(initiator)
        if not isinstance(proc, BilateralProcess):
            return False
        wave, actions = proc.m.propose()
        if wave is None:
            return False
        self.current = wave
        proc.do(actions)
        return True

    def outcome(self) -> tuple[str, float] | None:
        """("committed", time Conv is known) / ("aborted", decision time) / None."""
        w = self.current
        if w is None:
            return None
        if w in self.conv:
            return "committed", self.conv[w]
        d = self.decisions.get(w)
        if d is not None and not d[0]:
            return "aborted", d[1]
        return None

    def all_links_time(self) -> float | None:
        w = self.current
        return None if w is None else self.all_links.get(w.epoch)

    @staticmethod
    def critical_path_exchanges(topo: Topology, initiator: int) -> float:
        """PROPOSE out, ACCEPT back, COMMIT out, DONE back: 4 x eccentricity one-way legs,
        2 x eccentricity round trips."""
        return 2.0 * topo.eccentricity(initiator)

    def recovered(self, sim: Sim) -> dict[int, tuple[int, dict[int, int]]]:
        """What the cluster restores if every node crashed now: run the recovery
        (reconciliation over fault-free links) on copies of the durable stores."""
        stores = [copy.deepcopy(slot.store) for slot in sim.nodes]
        it = iter(stores)
        probe = Bilateral()
        rsim = LegSim(
            sim.topo,
            NetParams(app_period_us=0.0, rtt_us=sim.p.rtt_us),
            seed=0,
            factory=probe.factory,
            new_store=lambda: next(it),
        )
        rsim.boot()
        rsim.run(lambda: False, float("inf"))
        out = {}
        for v, st in enumerate(stores):
            rec = st.load()
            before = sim.nodes[v].store.load().epoch  # type: ignore[attr-defined]
            if rec.epoch < before:
                raise AssertionError(f"recovery rolled node {v} back from {before}")
            out[v] = (rec.epoch, dict(rec.committed_log))
        return out
