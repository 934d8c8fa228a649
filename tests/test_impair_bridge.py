"""The impairing bridge on real frames: what arrives is exactly what the seeded engine
decides (replayed here), at the rates claimed; partitions and run-time changes work."""

from __future__ import annotations

import os
import socket
import statistics
import time

import pytest

from oae.testbed import manager, probe
from oae.testbed.impair import ETH_HEADER, Impairment, LinkImpairer
from oae.testbed.topology import loads

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, veth)")
BURST = 200


def _pair(testbed, impair: str, name: str) -> manager.Testbed:
    text = f'[topology]\nname = "{name}"\nshape = "pair"\nseed = 11\n' + (
        f'[[link]]\na = "n0"\nb = "n1"\nimpair = {{ {impair} }}\n'
    )
    return testbed(loads(text, f"{name}.toml"))


def _payload(i: int) -> bytes:
    return b"oae-seq " + i.to_bytes(4, "big") + bytes(40)


def _seq(frame: bytes) -> int:
    return int.from_bytes(frame[ETH_HEADER + 8 : ETH_HEADER + 12], "big")


def _send(sock: socket.socket, n: int) -> list[bytes]:
    """n numbered frames in bursts (the bridge's socket buffer holds a burst easily)."""
    frames = [probe.frame(_payload(i)) for i in range(n)]
    for i, f in enumerate(frames):
        sock.send(f)
        if i % BURST == BURST - 1:
            time.sleep(0.002)
    return frames


def _receive(sock: socket.socket, quiet: float = 0.5) -> list[tuple[float, bytes]]:
    """Everything arriving until `quiet` seconds pass without a frame."""
    out = []
    sock.settimeout(quiet)
    while True:
        try:
            f = sock.recv(65536)
        except TimeoutError:
            return out
        out.append((time.monotonic(), f))  # the socket only gets EtherType 0x88B5


def _replay(tb: manager.Testbed, frames: list[bytes]) -> list[bytes]:
    """What the engine, seeded like the bridge's link, emits for these frames (a->b)."""
    rec = tb.state["links"][0]
    li = LinkImpairer(Impairment.from_json(rec["impair"]), rec["seed"], 0.0)
    out = []
    for f in frames:
        li.submit(0, f, 0.0)
        out += li.poll(0, 0.0)
    return out + li.poll(0, float("inf"))


def _run(tb: manager.Testbed, n: int) -> tuple[list[bytes], list[bytes], dict]:
    with probe.link_sockets(tb, "n0-n1") as (sa, sb):
        sent = _send(sa, n)
        got = [f for _, f in _receive(sb)]
    stats = manager.impair(tb.name, "n0-n1", [])
    assert stats["a_to_b"]["received"] == n  # the bridge saw every frame we sent
    return sent, got, stats


def test_loss_10_percent_real_frames(testbed) -> None:
    n = 5000
    tb = _pair(testbed, 'loss = "10%"', "loss")
    sent, got, stats = _run(tb, n)
    assert got == _replay(tb, sent)  # frame for frame what the seeded engine decided
    measured = 1 - len(got) / n
    assert abs(measured - 0.10) < 0.01, measured
    assert stats["a_to_b"]["lost"] == n - len(got)


def test_duplicate_real_frames(testbed) -> None:
    n = 3000
    tb = _pair(testbed, 'duplicate = "10%"', "dup")
    sent, got, stats = _run(tb, n)
    assert got == _replay(tb, sent)
    dups = len(got) - n
    assert abs(dups / n - 0.10) < 0.02 and dups == stats["a_to_b"]["duplicated"]
    assert {_seq(f) for f in got} == set(range(n))


def test_corrupt_real_frames_one_bit_each(testbed) -> None:
    n = 3000
    tb = _pair(testbed, 'corrupt = "10%"', "corrupt")
    sent, got, stats = _run(tb, n)
    assert got == _replay(tb, sent) and len(got) == n
    flips = [
        sum(bin(a ^ b).count("1") for a, b in zip(g, s, strict=True))
        for g, s in zip(got, sent, strict=True)
    ]
    assert set(flips) <= {0, 1}
    assert sum(flips) == stats["a_to_b"]["corrupted"]
    assert abs(sum(flips) / n - 0.10) < 0.02


def test_reorder_real_frames(testbed) -> None:
    n = 3000
    tb = _pair(testbed, 'reorder = "20%"', "reorder")
    _, got, stats = _run(tb, n)
    seqs = [_seq(f) for f in got]
    assert sorted(seqs) == list(range(n))  # reordering loses and adds nothing
    overtaken = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
    held = stats["a_to_b"]["reordered"]
    # a held frame is overtaken unless its successor comes >10 ms later (burst gaps)
    assert 0.9 * held <= overtaken <= held
    assert abs(overtaken / n - 0.20) < 0.03, overtaken / n


def test_delay_and_jitter_real_frames(testbed) -> None:
    tb = _pair(testbed, 'delay = "30ms", jitter = "5ms"', "delay")
    lat = []
    with probe.link_sockets(tb, "n0-n1") as (sa, sb):
        sb.settimeout(2.0)
        for i in range(20):
            t0 = time.monotonic()
            sa.send(probe.frame(_payload(i)))
            while _seq(sb.recv(65536)) != i:
                pass
            lat.append(time.monotonic() - t0)
    assert min(lat) >= 0.025  # the claimed minimum: delay - jitter
    assert 0.025 <= statistics.median(lat) < 0.5
    assert max(lat) - min(lat) > 0.001  # jitter varies it


def test_rate_limit_real_frames(testbed) -> None:
    tb = _pair(testbed, 'rate = "1mbit"', "rate")
    with probe.link_sockets(tb, "n0-n1") as (sa, sb):
        for i in range(40):  # 1000-byte frames: 8 ms each at 1 Mbit/s
            sa.send(probe.frame(_payload(i).ljust(986, b"r")))
        arrivals = [t for t, _ in _receive(sb)]
    assert len(arrivals) == 40
    assert arrivals[-1] - arrivals[0] >= 39 * 0.008 * 0.95


def test_runtime_partition_and_loss_change(testbed) -> None:
    tb = _pair(testbed, "", "part")  # bridged, no impairment yet
    assert probe.probe_link(tb, "n0-n1")
    manager.impair(tb.name, "n0-n1", ["partition=on"])
    with probe.link_sockets(tb, "n0-n1") as (sa, sb):
        _send(sa, 100)
        sb.send(probe.frame(_payload(7)))
        assert _receive(sb, 0.3) == [] and _receive(sa, 0.1) == []
    stats = manager.impair(tb.name, "n0-n1", ["partition=off", "loss=100%"])
    assert stats["a_to_b"]["partitioned"] == 100 and stats["b_to_a"]["partitioned"] == 1
    assert not probe.probe_link(tb, "n0-n1", timeout=0.2, attempts=2)
    manager.impair(tb.name, "n0-n1", ["loss=0%"])
    assert probe.probe_link(tb, "n0-n1")


def test_scheduled_partition_from_file(testbed) -> None:
    tb = _pair(testbed, 'partition = [{ at = "0s", for = "3s" }]', "sched")
    started = time.monotonic()
    assert not probe.probe_link(tb, "n0-n1", timeout=0.2, attempts=1)
    time.sleep(max(0.0, started + 3.3 - time.monotonic()))
    assert probe.probe_link(tb, "n0-n1")
