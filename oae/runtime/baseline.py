"""The bare C baseline on a veth pair: ping-pong round trips and one-way flood rate.

Both ends run concurrently in two threads of this process (cffi releases the GIL around
the C calls), each on a socket opened in its own namespace.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oae._pump import ffi, lib
from oae.runtime.sock import PacketSocket


@dataclass(frozen=True)
class BaselineResult:
    """Counts of one run, as the counting end saw them (the ping-pong's initiator, the
    flood's receiver); cpu_s is the CPU time of both ends' threads together, peer_cpu_s
    that of the other end (the responder, the flood's sender)."""

    count: int
    sent: int
    retries: int
    ignored: int
    elapsed_s: float
    cpu_s: float
    peer_cpu_s: float
    peer_sent: int

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _result(main: Any, peer: Any) -> BaselineResult:
    for r in (main, peer):
        if r.err:
            raise OSError(r.err, f"baseline: {os.strerror(r.err)}")
    return BaselineResult(main.count, main.sent, main.retries, main.ignored,
                          main.elapsed_ns / 1e9, (main.cpu_ns + peer.cpu_ns) / 1e9,
                          peer.cpu_ns / 1e9, peer.sent)  # fmt: skip


def _pair(first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run `first` in a helper thread and `second` here; re-raise the helper's error."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            first()
        except BaseException as exc:  # handed to the joining thread
            errors.append(exc)

    t = threading.Thread(target=guarded, name="oae-baseline-peer")
    t.start()
    try:
        second()
    finally:
        t.join()
    if errors:
        raise errors[0]


def _on_cpu(cpu: int | None, run: Callable[[], None]) -> Callable[[], None]:
    """`run` with the calling thread held to `cpu` (None: wherever the scheduler puts it);
    the thread's CPUs are given back afterwards."""
    if cpu is None:
        return run

    def pinned() -> None:
        before = os.sched_getaffinity(0)  # pid 0: this thread
        os.sched_setaffinity(0, {cpu})
        try:
            run()
        finally:
            os.sched_setaffinity(0, before)

    return pinned


def pingpong(
    a: PacketSocket,
    b: PacketSocket,
    seconds: float,
    busy: bool,
    count: int = 1 << 40,
    cpus: tuple[int, int] | None = None,
) -> BaselineResult:
    """Round trips from `a` (initiator) to `b` (responder) for `seconds`; with `cpus`,
    the initiator's thread runs on cpus[0] and the responder's on cpus[1]."""
    out_a = ffi.new("oae_bench_result *")
    out_b = ffi.new("oae_bench_result *")
    for s in (a, b):
        lib.oae_sock_set_rcvtimeo(s.fd, 20_000_000)
    max_ns = int(seconds * 1e9)
    run = secrets.randbits(32)
    cpu_a, cpu_b = cpus if cpus else (None, None)
    _pair(
        _on_cpu(cpu_b, lambda: lib.oae_pingpong_respond(
            b.fd, b.ethertype, run, max_ns + 2_000_000_000, int(busy), out_b
        )),
        _on_cpu(cpu_a, lambda: lib.oae_pingpong_initiate(
            a.fd, a.mac, b.mac, a.ethertype, run, count, max_ns, int(busy), out_a
        )),
    )  # fmt: skip
    return _result(out_a, out_b)


def flood(a: PacketSocket, b: PacketSocket, seconds: float, ring: bool = False) -> BaselineResult:
    """Frames per second that `b` receives while `a` floods it in batches of 64: with
    sendmmsg, or (ring=True) through a PACKET_TX_RING attached to `a`'s socket, which then
    sends only through it (use a fresh socket)."""
    out_a = ffi.new("oae_bench_result *")
    out_b = ffi.new("oae_bench_result *")
    lib.oae_sock_set_rcvtimeo(b.fd, 20_000_000)
    max_ns = int(seconds * 1e9)
    run = secrets.randbits(32)
    _pair(
        lambda: lib.oae_flood_recv(b.fd, b.ethertype, run, max_ns + 2_000_000_000, out_b),
        lambda: lib.oae_flood_send(
            a.fd, a.mac, b.mac, a.ethertype, run, 1 << 40, max_ns, int(ring), out_a
        ),
    )
    return _result(out_b, out_a)
