"""The impairment decision engine, measured over 100,000 frames with fixed seeds: each
effect happens at the rate it claims, and nothing else happens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oae.errors import UsageError
from oae.testbed.impair import (
    ETH_HEADER,
    Flap,
    Impairment,
    LinkImpairer,
    Window,
    apply_settings,
    parse_duration,
    parse_fraction,
    parse_rate,
)

N = 100_000
DT = 1e-5  # 100 kframes/s offered


def _frame(i: int, size: int = 64) -> bytes:
    return b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + i.to_bytes(4, "big") + bytes(size - 18)


def _run(
    spec: Impairment, n: int = N, seed: int = 1234, dt: float = DT, size: int = 64
) -> tuple[LinkImpairer, list[tuple[float, bytes]]]:
    """Offer n frames at fixed spacing; return the engine and (time sent, frame) out."""
    li = LinkImpairer(spec, seed, 0.0)
    out: list[tuple[float, bytes]] = []

    def drain(until: float) -> None:  # as the bridge does: wake at each deadline
        while (d := li.next_deadline()) is not None and d <= until:
            out.extend((d, f) for f in li.poll(0, d))

    for i in range(n):
        drain(i * dt)
        li.submit(0, _frame(i, size), i * dt)
    drain(float("inf"))
    return li, out


def _seq(f: bytes) -> int:
    return int.from_bytes(f[ETH_HEADER : ETH_HEADER + 4], "big")


def test_no_impairment_is_transparent() -> None:
    _, out = _run(Impairment(), n=1000)
    assert [f for _, f in out] == [_frame(i) for i in range(1000)]


@pytest.mark.parametrize("seed", [1, 99])  # two seeds: the bound is not one lucky draw
def test_loss_10_percent_within_1_point(seed: int) -> None:
    li, out = _run(Impairment(loss=0.10), seed=seed)
    measured = 1 - len(out) / N
    assert abs(measured - 0.10) < 0.01
    assert li.stats(0).lost == N - len(out)
    seqs = [_seq(f) for _, f in out]
    assert seqs == sorted(set(seqs))  # losing reorders and duplicates nothing


def test_duplicate_5_percent() -> None:
    li, out = _run(Impairment(duplicate=0.05))
    seqs = [_seq(f) for _, f in out]
    dups = len(seqs) - len(set(seqs))
    assert abs(dups / N - 0.05) < 0.005 and dups == li.stats(0).duplicated
    assert set(seqs) == set(range(N)) and seqs == sorted(seqs)  # copies follow originals


def test_reorder_10_percent_each_overtaken_by_one() -> None:
    li, out = _run(Impairment(reorder=0.10))
    seqs = [_seq(f) for _, f in out]
    assert sorted(seqs) == list(range(N))
    overtaken = sum(1 for i in range(1, N) if seqs[i] < seqs[i - 1])
    assert abs(overtaken / N - 0.10) < 0.01 and overtaken == li.stats(0).reordered
    assert all(abs(s - i) <= 1 for i, s in enumerate(seqs))  # displaced by one place


def test_reorder_held_frame_released_by_timeout() -> None:
    li = LinkImpairer(Impairment(reorder=0.5), 3, 0.0)
    for i in range(50):  # until one frame is held
        li.submit(0, _frame(i), 0.0)
        if li.poll(0, 0.0) == [] and li.next_deadline() is not None:
            break
    deadline = li.next_deadline()
    assert deadline is not None and li.poll(0, deadline - 1e-6) == []
    assert len(li.poll(0, deadline)) == 1


def test_corrupt_2_percent_flips_one_payload_bit() -> None:
    li, out = _run(Impairment(corrupt=0.02))
    assert len(out) == N  # nothing lost or reordered: out[i] is frame i
    bad = 0
    for i, (_, f) in enumerate(out):
        diff = int.from_bytes(f, "big") ^ int.from_bytes(_frame(i), "big")
        assert diff >> (8 * (len(f) - ETH_HEADER)) == 0  # the Ethernet header is never touched
        flipped = diff.bit_count()
        assert flipped in (0, 1)
        bad += flipped
    assert abs(bad / N - 0.02) < 0.002 and bad == li.stats(0).corrupted


def test_delay_and_jitter_bounds() -> None:
    # frames 11 ms apart: jitter (+-5 ms) never has to be clamped to keep FIFO order
    _, out = _run(Impairment(delay=0.020, jitter=0.005), n=20_000, dt=0.011)
    lat = [t - _seq(f) * 0.011 for t, f in out]
    assert len(lat) == 20_000
    assert min(lat) >= 0.015 - 1e-9 and max(lat) <= 0.025 + 1e-9
    assert abs(sum(lat) / len(lat) - 0.020) < 0.0002
    assert max(lat) - min(lat) > 0.009  # the jitter is really there


def test_jitter_keeps_fifo_under_dense_traffic() -> None:
    _, out = _run(Impairment(delay=0.020, jitter=0.005), n=20_000, dt=1e-3)
    seqs = [_seq(f) for _, f in out]
    assert seqs == list(range(20_000))  # jitter alone does not reorder
    assert min(t - _seq(f) * 1e-3 for t, f in out) >= 0.015 - 1e-9


def test_rate_limit_serialises_and_tail_drops() -> None:
    # 1000-byte frames at 1 Mbit/s take 8 ms each; offered every 1 ms -> queue fills
    spec = Impairment(rate=1e6, limit=50)
    li, out = _run(spec, n=2000, dt=1e-3, size=1000)
    gaps = [b[0] - a[0] for a, b in zip(out, out[1:], strict=False)]
    assert min(gaps) >= 0.008 - 1e-9
    assert li.stats(0).queue_dropped > 0
    assert len(out) + li.stats(0).queue_dropped == 2000


def test_scheduled_partition_and_flap() -> None:
    spec = Impairment(
        partitions=(Window(0.2, 0.1),), flap=Flap(every=0.5, down=0.05, start=0.6, count=2)
    )
    li, out = _run(spec, n=2000, dt=1e-3)  # 2 s of traffic, one frame per ms
    passed = {_seq(f) for _, f in out}
    down = [i for i in range(2000) if i not in passed]
    # windows (ms): [200, 300), [600, 650), [1100, 1150); the flap stops after count=2
    windows = [range(200, 300), range(600, 650), range(1100, 1150)]
    assert abs(len(down) - 200) <= 3 and li.stats(0).partitioned == len(down)
    assert all(any(i in w or i - 1 in w or i + 1 in w for w in windows) for i in down)
    assert all(i not in passed for w in windows for i in w[1:-1])


def test_runtime_partition_drops_both_directions() -> None:
    li = LinkImpairer(Impairment(), 1, 0.0)
    li.spec = apply_settings(li.spec, ["partition=on"])
    li.submit(0, _frame(1), 0.0)
    li.submit(1, _frame(2), 0.0)
    assert li.poll(0, 1.0) == [] and li.poll(1, 1.0) == []
    li.spec = apply_settings(li.spec, ["partition=off"])
    li.submit(1, _frame(3), 2.0)
    assert li.poll(1, 2.0) == [_frame(3)]


def test_same_seed_same_decisions_other_seed_differs() -> None:
    spec = Impairment(loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.1)
    a = [f for _, f in _run(spec, n=5000, seed=7)[1]]
    b = [f for _, f in _run(spec, n=5000, seed=7)[1]]
    c = [f for _, f in _run(spec, n=5000, seed=8)[1]]
    assert a == b and a != c


def test_directions_are_independent() -> None:
    li = LinkImpairer(Impairment(loss=0.5), 5, 0.0)
    for i in range(2000):
        li.submit(0, _frame(i), 0.0)
        li.submit(1, _frame(i), 0.0)
    got0 = {_seq(f) for f in li.poll(0, 1.0)}
    got1 = {_seq(f) for f in li.poll(1, 1.0)}
    assert got0 != got1 and 800 < len(got0) < 1200


def test_value_parsers() -> None:
    assert parse_fraction("12.5%") == 0.125 and parse_fraction(0.3) == 0.3
    assert parse_duration("250us") == pytest.approx(250e-6) and parse_duration("2m") == 120
    assert parse_rate("64kbit") == 64e3 and parse_rate("none") == 0.0
    for bad, fn in [
        ("110%", parse_fraction),
        ("-1ms", parse_duration),
        ("fast", parse_rate),
        (True, parse_fraction),
        ("10 mb", parse_rate),
    ]:
        with pytest.raises(ValueError):
            fn(bad)


# "loss=5": a bare number is a fraction, so 5 is out of range
@pytest.mark.parametrize(
    "bad",
    [
        "loss",
        "loss=",
        "los=5%",
        "loss=5",
        "partition=maybe",
        "reorder=70%",
        "limit=0",
        "delay=soon",
    ],
)
def test_bad_runtime_settings(bad: str) -> None:
    with pytest.raises(UsageError) as err:
        apply_settings(Impairment(), [bad])
    assert bad.split("=")[0] in str(err.value) or "KEY=VALUE" in str(err.value)


def test_json_round_trip_and_describe() -> None:
    spec = Impairment(
        loss=0.05,
        delay=0.01,
        jitter=2e-4,
        rate=1e8,
        partitions=(Window(1, 2),),
        flap=Flap(3, 1, 0, 2),
        partitioned=True,
    )
    assert Impairment.from_json(spec.to_json()) == spec
    text = spec.describe()
    assert "loss=5%" in text and "delay=10ms" in text and "jitter=200us" in text
    assert "rate=100mbit" in text and "partition=on" in text


@settings(max_examples=60, deadline=None)
@given(
    loss=st.floats(0, 1),
    duplicate=st.floats(0, 1),
    reorder=st.floats(0, 0.5),
    corrupt=st.floats(0, 1),
    delay=st.floats(0, 0.01),
    jitter=st.floats(0, 0.01),
    rate=st.sampled_from([0.0, 1e5, 1e7]),
    limit=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 0.005), min_size=1, max_size=300),
    seed=st.integers(0, 2**32 - 1),
)
def test_engine_invariants(loss: float, duplicate: float, reorder: float, corrupt: float,
                           delay: float, jitter: float, rate: float, limit: int,
                           gaps: list[float], seed: int) -> None:  # fmt: skip
    """Whatever the settings and arrival times: every frame is accounted for exactly once
    (sent, lost, dropped, or a counted duplicate), nothing is invented (each output is an
    input or a one-bit corruption of one), and without reorder the order is kept."""
    spec = Impairment(loss=loss, duplicate=duplicate, reorder=reorder, corrupt=corrupt,
                      delay=delay, jitter=jitter, rate=rate, limit=limit)  # fmt: skip
    li = LinkImpairer(spec, seed, 0.0)
    out: list[bytes] = []
    now = 0.0
    for i, gap in enumerate(gaps):
        now += gap
        while (d := li.next_deadline()) is not None and d <= now:
            out += li.poll(0, d)
        li.submit(0, _frame(i), now)
    while (d := li.next_deadline()) is not None:
        out += li.poll(0, d)
    s = li.stats(0)
    assert s.received == len(gaps) and s.sent == len(out)
    assert s.sent == s.received - s.lost - s.partitioned - s.queue_dropped + s.duplicated
    seqs = []
    for f in out:
        i = _seq(f)
        orig = _frame(i) if i < len(gaps) else None
        if orig is None or orig != f:  # a corrupted frame: one bit away from some input
            assert any(
                sum(bin(a ^ b).count("1") for a, b in zip(f, _frame(j), strict=True)) == 1
                for j in range(len(gaps))
            )
        else:
            seqs.append(i)
    if not reorder:
        assert seqs == sorted(seqs)
