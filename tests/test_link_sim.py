"""Deterministic simulated network: two C engines joined in memory by a seeded impaired wire
on a virtual clock (csrc/linksim.c), 100,000 transfers each way per scenario. The
simulator's application checks, as it goes and at the end: every transfer ends COMMITTED
or ABORTED at its sender, the receiver delivers each committed one exactly once and in
order and never an aborted one, aborted payloads come back to the sender, and nothing is
left INDEFINITE once the link is back."""

from __future__ import annotations

import pytest

from oae.engine import Drop, simulate

N = 100_000
IMPAIRED = dict(loss=0.10, dup=0.05, reorder=0.05, corrupt=0.01)


def _agree(r: object) -> None:
    assert r.ok, r.violation  # type: ignore[attr-defined]
    assert r.offered == (N, N)  # type: ignore[attr-defined]
    for w in (0, 1):
        assert r.committed[w] + r.aborted[w] == N  # type: ignore[attr-defined]
        # each committed transfer was delivered exactly once on the other end
        assert r.delivered[w] == r.committed[w]  # type: ignore[attr-defined]


def test_clean_wire_commits_everything() -> None:
    r = simulate(N, seed=1)
    _agree(r)
    assert r.committed == (N, N) and r.links_up == 2


@pytest.mark.parametrize("seed", [1, 2])
def test_loss_duplication_reordering_corruption(seed: int) -> None:
    r = simulate(N, seed=seed, **IMPAIRED)
    _agree(r)
    assert r.frames_lost > r.frames // 20 and r.frames_duplicated and r.frames_reordered
    assert r.frames_corrupted > 0
    assert r.drops[0][Drop.CHECK] + r.drops[1][Drop.CHECK] > 0  # corruption is caught
    assert r.drops[0][Drop.REPLAY] + r.drops[1][Drop.REPLAY] > 0  # duplicates are caught
    # the wire loses, but reversal is only needed when the link fails: nothing aborted
    assert r.committed == (N, N)


def test_repeated_link_flaps() -> None:
    r = simulate(N, seed=3, flap_every_ns=4_000_000, flap_ns=1_500_000, **IMPAIRED)
    _agree(r)
    assert r.flaps >= 20 and r.links_up >= 2 * 20
    assert sum(r.aborted) > 0  # offers caught in flight by a failure were reversed


def test_crash_restart_from_durable_registers() -> None:
    r = simulate(N, seed=4, crash_every_ns=3_000_000, **IMPAIRED)
    _agree(r)
    assert r.crashes >= 20


def test_crash_restart_with_slow_storage() -> None:
    """Storing the registers takes 20 us (longer than a round trip): the engine holds its
    frames meanwhile, and a crash loses the unfinished write, the deliveries it covered and
    the offers whose tid it held; still every transfer ends the same on both ends."""
    r = simulate(N, seed=8, crash_every_ns=3_000_000, persist_ns=20_000, **IMPAIRED)
    _agree(r)
    assert r.crashes >= 20 and r.renotified > 0  # outcomes reported again after restarts


def test_long_delays_with_crashes() -> None:
    """Reordered frames held back up to 0.9 ms (just under dead_ns): frames of a crashed
    end's previous life, and frames sent to it, are still in flight when it restarts."""
    r = simulate(N, seed=11, crash_every_ns=3_000_000, reorder_ns=900_000, **IMPAIRED)
    _agree(r)
    assert r.crashes >= 20


def test_flaps_and_crashes_together() -> None:
    r = simulate(
        N,
        seed=9,
        flap_every_ns=4_000_000,
        flap_ns=1_500_000,
        crash_every_ns=2_500_000,
        persist_ns=10_000,
        **IMPAIRED,
    )
    _agree(r)
    assert r.flaps >= 20 and r.crashes >= 20


@pytest.mark.parametrize("beat", [1, 4, 64])
def test_every_beat_size_under_impairment(beat: int) -> None:
    r = simulate(20_000, seed=10 + beat, beat=beat, **IMPAIRED)
    assert r.ok, r.violation
    assert r.committed == (20_000, 20_000) and r.delivered == r.committed


def test_keyed_link_under_impairment() -> None:
    r = simulate(N, seed=5, keyed=True, **IMPAIRED)
    _agree(r)


def test_backpressure_reverses_instead_of_dropping() -> None:
    """A slow receiver (one release per 2 us, room for 8) refuses; its sender reverses."""
    r = simulate(20_000, seed=6, release_ns=2_000, rx_capacity=8)
    assert r.ok, r.violation
    assert sum(r.aborted) > 0 and sum(r.committed) > 0
    assert r.committed[0] + r.aborted[0] == 20_000
    assert r.delivered == r.committed


def test_simulator_detects_a_broken_contract() -> None:
    """The checks can fail: a scenario that cannot finish in its time budget is reported."""
    r = simulate(1_000, seed=7, loss=0.10, max_virtual_ns=1_000)
    assert not r.ok and "in time" in r.violation


@pytest.mark.parametrize("seed", [21, 22])
def test_idle_pacing_and_wake_ups_under_impairment(seed: int) -> None:
    """Offers spaced out so that the link idles between them (paced by the leader) and
    the follower wakes it for each new transfer; impairments, flaps and crashes on top."""
    n = 3_000
    r = simulate(n, seed=seed, idle_ns=200_000, offer_ns=300_000, rto_ns=400_000,
                 dead_ns=4_000_000, hello_ns=400_000, flap_every_ns=90_000_000,
                 flap_ns=6_000_000, crash_every_ns=70_000_000, **IMPAIRED)  # fmt: skip
    assert r.ok, r.violation
    assert r.offered == (n, n)
    for w in (0, 1):
        assert r.committed[w] + r.aborted[w] == n
        assert r.delivered[w] == r.committed[w]
    assert r.wakes[1] == 0 and r.flaps > 0 and r.crashes > 0


def test_idle_wake_ups_on_a_clean_wire() -> None:
    """Clean wire: every transfer commits, nearly every one of the follower's (end A)
    goes out by a wake-up, the leader never wakes, and no re-offer timer fires."""
    n = 5_000
    r = simulate(n, seed=23, idle_ns=200_000, offer_ns=1_000_000, rto_ns=400_000,
                 dead_ns=4_000_000, hello_ns=400_000)  # fmt: skip
    assert r.ok, r.violation
    assert r.committed == (n, n)
    assert r.wakes[0] > 0.9 * n and r.wakes[1] == 0
    assert r.timeouts_rto == (0, 0)


# gated CONTROL transfers (docs/protocol.md 7.11): half the transfers are CONTROL and half
# of those gated; the applications hold (1% refuse), commit (0.5% reset the link instead)
# and report, each up to 30 us after the event (three round trips)
GATED = dict(gates=True, control=0.5, gated=0.5, refuse=0.01, reset=0.005, decide_ns=30_000)


def _gated(r: object, n: int) -> None:
    assert r.ok, r.violation  # type: ignore[attr-defined]
    assert r.offered == (n, n)  # type: ignore[attr-defined]
    for w in (0, 1):
        assert r.committed[w] + r.aborted[w] == n  # type: ignore[attr-defined]
        assert r.delivered[w] == r.committed[w]  # type: ignore[attr-defined]
    # every kind of decision was taken, and rounds decided some outcomes
    assert min(r.holds, r.refusals, r.commits, r.reports, r.resets) > 0  # type: ignore[attr-defined]
    assert r.round_outcomes > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [31, 32])
def test_gated_transfers_under_impairment(seed: int) -> None:
    r = simulate(30_000, seed=seed, **GATED, **IMPAIRED)
    _gated(r, 30_000)
    assert sum(r.committed) > 10_000


def test_gated_transfers_with_flaps_crashes_and_slow_storage() -> None:
    r = simulate(30_000, seed=33, flap_every_ns=4_000_000, flap_ns=1_500_000,
                 crash_every_ns=2_500_000, persist_ns=10_000, **GATED, **IMPAIRED)  # fmt: skip
    _gated(r, 30_000)
    assert r.flaps >= 20 and r.crashes >= 20


def test_gated_transfers_with_backpressure_and_long_delays() -> None:
    """A slow receiver refuses behind undecided gated transfers; frames of a crashed
    end's previous life are still in flight when it restarts."""
    r = simulate(20_000, seed=34, release_ns=2_000, rx_capacity=8, crash_every_ns=3_000_000,
                 reorder_ns=900_000, **GATED, **IMPAIRED)  # fmt: skip
    _gated(r, 20_000)


def test_gated_transfers_keep_an_idle_link_paced() -> None:
    """Spaced offers, every decision up to 2 ms late (ten idle periods): the exchange waits
    on the applications at idle pace, not at the wire's speed (a full-speed exchange would
    send hundreds of frames per decision), also under impairment, flaps and crashes."""
    n = 1_000
    paced = dict(idle_ns=200_000, offer_ns=5_000_000, rto_ns=400_000, dead_ns=4_000_000,
                 hello_ns=400_000)  # fmt: skip
    plain = simulate(n, seed=35, **paced)
    r = simulate(n, seed=35, **{**GATED, "decide_ns": 2_000_000}, **paced)
    assert r.ok, r.violation
    assert r.frames <= 1.2 * plain.frames and r.committed[0] + r.aborted[0] == n
    assert r.timeouts_rto == (0, 0)
    faults = dict(flap_every_ns=90_000_000, flap_ns=6_000_000, crash_every_ns=70_000_000)
    r = simulate(n, seed=36, **{**GATED, "decide_ns": 2_000_000}, **paced, **IMPAIRED, **faults)
    _gated(r, n)
