"""The bare C baseline that benchmarks compare against: it must really exchange frames
over the veth pair, and ignore frames of another run."""

from __future__ import annotations

import os
import time

import pytest

from oae.runtime import baseline
from oae.runtime.sock import open_socket

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")


@pytest.mark.parametrize("busy", [False, True], ids=["blocking", "busy"])
def test_pingpong_counts_round_trips(veth_pair, busy: bool) -> None:
    a = open_socket(veth_pair.if_a, veth_pair.ns_a)
    b = open_socket(veth_pair.if_b, veth_pair.ns_b)
    try:
        r = baseline.pingpong(a, b, seconds=5.0, busy=busy, count=2000)
        assert r.count == 2000  # bounded by count, well before the time limit
        assert r.sent == r.count + r.retries
        assert 0 < r.cpu_s < 2 * r.elapsed_s + 0.1  # two threads at most
        again = baseline.pingpong(a, b, seconds=5.0, busy=busy, count=500)
        assert again.count == 500  # the previous run's STOP frames did not end this one
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("ring", [False, True], ids=["sendmmsg", "tx_ring"])
def test_flood_is_received_and_counted(veth_pair, ring: bool) -> None:
    a = open_socket(veth_pair.if_a, veth_pair.ns_a)
    b = open_socket(veth_pair.if_b, veth_pair.ns_b)
    try:
        t0 = time.monotonic()
        r = baseline.flood(a, b, seconds=0.3, ring=ring)
        # the receiver ended on the sender's STOP frames, not at its own limit (0.3 + 2 s)
        assert time.monotonic() - t0 < 2.0
        assert r.count > 1000 and r.elapsed_s > 0
        # the sender sent at least what was counted (a full receive buffer drops frames)
        assert r.peer_sent >= r.count
        assert 0 < r.peer_cpu_s < r.cpu_s
    finally:
        a.close()
        b.close()


def test_socket_reports_mac_and_mtu(veth_pair) -> None:
    s = open_socket(veth_pair.if_a, veth_pair.ns_a)
    try:
        assert s.mac.hex(":") == veth_pair.mac_a and s.mtu == 1500
    finally:
        s.close()
