"""The bilateral convergence protocol on the simulator: `EpochMachine` behind a thin
process adapter (the same shape of adapter runs it on real links: it only turns actions
into sends, durable writes and checkpoint writes)."""

from __future__ import annotations

import copy

from oae.epoch.durable import MemoryStore
from oae.epoch.machine import (
    Action,
    Capture,
    Converged,
    Decided,
    Discard,
    EpochMachine,
    LinkEpoch,
    Persist,
    Send,
)
from oae.epoch.messages import Wave
from oae.epoch.sim import NetParams, Process, Sim, Topology


class BilateralProcess(Process):
    """One node: an EpochMachine, its MemoryStore, and the simulator as its world."""

    def __init__(self, sim: Sim, v: int, nbrs: list[int], store: MemoryStore, algo: Bilateral):
        self.sim, self.v, self.store, self.algo = sim, v, store, algo
        self.m = EpochMachine(v, nbrs, store.load())

    def do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self.sim.send(self.v, a.link, a.payload)
            elif isinstance(a, Persist):
                self.store.write(a.record)
            elif isinstance(a, Capture):
                self.sim.capture(self.v, a.wave.epoch)
                self.sim.write_checkpoint(self.v, a.wave.epoch, a.wave)
            elif isinstance(a, Discard):
                self.sim.discard(self.v, a.wave.epoch)
            elif isinstance(a, LinkEpoch):
                self.algo.link_switched(self.v, a.link, a.epoch, self.sim.now)
            elif isinstance(a, Decided):
                self.algo.decided(a.wave, a.committed, self.sim.now)
            elif isinstance(a, Converged):
                self.algo.converged(a.wave, self.sim.now)

    def start(self) -> None:
        self.do(self.m.start())

    def link_up(self, link: int) -> None:
        self.do(self.m.link_up(link))

    def link_down(self, link: int) -> None:
        self.do(self.m.link_down(link))

    def message(self, link: int, payload: bytes) -> None:
        self.do(self.m.receive(link, payload))

    def transfer_aborted(self, link: int, payload: bytes) -> None:
        self.do(self.m.transfer_aborted(link, payload))

    def checkpoint_done(self, token: object, ok: bool) -> None:
        assert isinstance(token, Wave)
        self.do(self.m.checkpoint_written(token, ok))

    def send_epoch(self, link: int) -> int | None:
        return self.m.send_epoch(link)

    def frame_received(self, link: int, tag: int) -> tuple[bool, bool]:
        ok = self.m.frame_received(link, tag)
        return ok, not ok

    def committed_epoch(self) -> int:
        return self.m.epoch


class Bilateral:
    """Algorithm `bilateral`: one initiator proposes; the machine does the rest."""

    name = "bilateral"
    checks_cut = True

    def __init__(self) -> None:
        self.decisions: dict[Wave, tuple[bool, float]] = {}
        self.conv: dict[Wave, float] = {}
        self.switched: dict[int, set[tuple[int, int]]] = {}
        self.all_links: dict[int, float] = {}
        self.n_link_ends = 0
        self.current: Wave | None = None

    def factory(self, sim: Sim, v: int, nbrs: list[int], store: object) -> Process:
        assert isinstance(store, MemoryStore)
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
        """Prepare echo (out and back) plus commit echo: 2 x eccentricity round trips."""
        return 2.0 * topo.eccentricity(initiator)

    def recovered(self, sim: Sim) -> dict[int, tuple[int, dict[int, int]]]:
        """What the cluster restores if every node crashed now: run the recovery
        (reconciliation over fault-free links) on copies of the durable stores."""
        stores = [copy.deepcopy(slot.store) for slot in sim.nodes]
        it = iter(stores)
        probe = Bilateral()
        rsim = Sim(
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
