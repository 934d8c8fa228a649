"""AF_PACKET sockets for oae, opened by C (csrc/pump.c) in a chosen network namespace.

The namespace switch applies to the calling thread only and is undone right after the
open; the socket keeps its namespace, so one process can hold sockets in many namespaces.
"""

from __future__ import annotations

import errno
import os
from contextlib import nullcontext
from dataclasses import dataclass

from oae._pump import ffi, lib
from oae.errors import NeedsRootError, UsageError
from oae.wire import ETHERTYPE


@dataclass(frozen=True)
class PacketSocket:
    """An open AF_PACKET socket bound to one interface and EtherType."""

    fd: int
    iface: str
    netns: str | None
    mac: bytes
    mtu: int
    ethertype: int

    def close(self) -> None:
        lib.oae_sock_close(self.fd)


def open_socket(
    iface: str, netns: str | None = None, ethertype: int = ETHERTYPE, bypass: bool = False
) -> PacketSocket:
    """Open and bind a raw socket on `iface` (inside `netns` if given).

    bypass=True sets PACKET_QDISC_BYPASS: a little faster, but captures on this host no
    longer see the frames we send.
    """
    if not 0x0600 <= ethertype <= 0xFFFF:
        raise UsageError(f"EtherType {ethertype:#x}: must be in 0x0600..0xffff")
    if netns is not None:
        from oae.testbed.kernel import in_netns

        ctx = in_netns(netns)
    else:
        ctx = nullcontext()
    mac = ffi.new("uint8_t[6]")
    mtu = ffi.new("int *")
    with ctx:
        fd = lib.oae_sock_open(
            iface.encode(), ethertype, lib.OAE_SOCK_BYPASS if bypass else 0, mac, mtu
        )
    if fd < 0:
        code = -fd
        where = f" in namespace {netns!r}" if netns else ""
        if code in (errno.EPERM, errno.EACCES):
            raise NeedsRootError(f"raw sockets on {iface!r} need root or CAP_NET_RAW")
        if code in (errno.ENODEV, errno.ENXIO):
            raise UsageError(f"interface {iface!r} not found{where}")
        raise OSError(code, f"opening an AF_PACKET socket on {iface!r}{where}: {os.strerror(code)}")
    return PacketSocket(fd, iface, netns, bytes(mac), mtu[0], ethertype)


def parse_mac(text: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes; a UsageError names a malformed address."""
    parts = text.split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise UsageError(
            f"MAC address {text!r}: expected six hex pairs like 02:00:00:00:00:01"
        ) from None


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
