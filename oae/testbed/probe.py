"""Send real frames over a testbed's links: raw AF_PACKET sockets opened in the nodes'
namespaces (via `in_netns`), used by `oae testbed check` and by tests."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from oae.testbed import kernel
from oae.testbed.manager import Testbed

PROBE_ETHERTYPE = 0x88B5  # IEEE local experimental
BROADCAST = b"\xff" * 6
SO_RCVBUFFORCE = 33


def raw_socket(ns: str | None, ifname: str, ethertype: int = PROBE_ETHERTYPE) -> socket.socket:
    """An AF_PACKET socket bound to `ifname` in namespace `ns` (None: this namespace),
    receiving only `ethertype`, with a large receive buffer."""
    if ns is None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    else:
        with kernel.in_netns(ns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except OSError:  # not root: take what we are given
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ifname, 0))
    return s


def frame(
    payload: bytes,
    src: bytes = b"\x02\x00\x00\x00\x00\x01",
    dst: bytes = BROADCAST,
    ethertype: int = PROBE_ETHERTYPE,
) -> bytes:
    """An Ethernet II frame padded to the 60-byte minimum."""
    return (dst + src + ethertype.to_bytes(2, "big") + payload).ljust(60, b"\0")


@contextmanager
def link_sockets(tb: Testbed, link: str) -> Iterator[tuple[socket.socket, socket.socket]]:
    """Raw sockets on both ends (a, b) of a link, closed on exit."""
    rec = tb.link(link)
    sa = raw_socket(tb.ns(rec["a"]), rec["if_a"])
    try:
        sb = raw_socket(tb.ns(rec["b"]), rec["if_b"])
        try:
            yield sa, sb
        finally:
            sb.close()
    finally:
        sa.close()


def _await(sock: socket.socket, payload: bytes, deadline: float) -> bool:
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got = sock.recv(65536)
        except TimeoutError:
            return False
        if got[14 : 14 + len(payload)] == payload:
            return True
    return False


def probe_link(tb: Testbed, link: str, timeout: float = 1.0, attempts: int = 3) -> bool:
    """True if a frame passes each way over `link` (retried `attempts` times, since an
    impaired link may drop one)."""
    with link_sockets(tb, link) as (sa, sb):
        for src, dst, tag in ((sa, sb, b"a>b"), (sb, sa, b"b>a")):
            for _ in range(attempts):
                payload = b"oae-probe " + tag + os.urandom(8)
                src.send(frame(payload))
                if _await(dst, payload, time.monotonic() + timeout):
                    break
            else:
                return False
    return True


def probe_all(tb: Testbed, timeout: float = 1.0) -> dict[str, bool]:
    """Probe every link; {link name: passed}."""
    return {rec["name"]: probe_link(tb, rec["name"], timeout) for rec in tb.state["links"]}
