"""`oae capture`: record the frames of an interface (optionally inside a network namespace)
into a pcapng or pcap file that Wireshark and tshark open.

Two layers, kept apart so the file formats are testable without sockets or root:

- sans-I/O: `pcapng_header`/`pcapng_packet`, `pcap_header`/`pcap_packet` turn packets into
  file bytes, and `read_capture` turns pcap/pcapng bytes back into packets (used by
  `oae decode`);
- the socket loop `capture()`: an AF_PACKET socket opened in the namespace (via
  `oae.testbed.kernel.in_netns`), stopping at a frame count, a duration or Ctrl-C/SIGTERM,
  always leaving a complete, closed file.
"""

from __future__ import annotations

import argparse
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import BinaryIO

from oae.errors import UsageError

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
SNAPLEN = 262144
DRAIN_MAX = 256  # frames taken per wake-up before the loop looks at the clock again
FORMATS = ("pcapng", "pcap")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4

# pcapng block types and the magic numbers of both formats
_SHB, _IDB, _EPB, _SPB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000003
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_PCAP_MAGIC_US, _PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D

# sll_pkttype -> pcapng epb_flags (bits 0-1 direction, bits 2-4 reception type)
_EPB_FLAGS = {0: 0b00101, 1: 0b01101, 2: 0b01001, 3: 0b10001, PACKET_OUTGOING: 0b00010}


@dataclass(frozen=True)
class Packet:
    """One captured packet: timestamp in ns since the epoch, the bytes kept, the length on
    the wire, the link type of its interface, and whether we sent it (None if unknown)."""

    ts_ns: int
    data: bytes
    orig_len: int
    linktype: int = LINKTYPE_ETHERNET
    outbound: bool | None = None


# -- writers (sans-I/O) ---------------------------------------------------------------------


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def pcapng_header(
    ifname: str, linktype: int = LINKTYPE_ETHERNET, snaplen: int = SNAPLEN, comment: str = ""
) -> bytes:
    """A Section Header Block (little-endian, with the writing application) and one
    Interface Description Block with nanosecond timestamps (if_tsresol = 9)."""
    shb_opts = _option(4, b"oae capture")  # shb_userappl
    if comment:
        shb_opts += _option(1, comment.encode())  # opt_comment
    shb_opts += _option(0, b"")
    shb = _block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + shb_opts)
    idb_opts = _option(2, ifname.encode()) + _option(9, b"\x09") + _option(0, b"")
    idb = _block(_IDB, struct.pack("<HHI", linktype, 0, snaplen) + idb_opts)
    return shb + idb


def pcapng_packet(
    ts_ns: int,
    data: bytes,
    orig_len: int | None = None,
    outbound: bool | None = None,
    pkttype: int | None = None,
) -> bytes:
    """An Enhanced Packet Block on interface 0 (nanosecond timestamp); `pkttype` (the
    sockaddr_ll packet type) becomes the epb_flags direction/reception option."""
    orig = len(data) if orig_len is None else orig_len
    opts = b""
    if pkttype is not None and pkttype in _EPB_FLAGS:
        opts = _option(2, struct.pack("<I", _EPB_FLAGS[pkttype])) + _option(0, b"")
    elif outbound is not None:
        opts = _option(2, struct.pack("<I", 0b10 if outbound else 0b01)) + _option(0, b"")
    body = struct.pack("<IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), orig)
    return _block(_EPB, body + _pad4(data) + opts)


def pcap_header(linktype: int = LINKTYPE_ETHERNET, snaplen: int = SNAPLEN) -> bytes:
    """A classic pcap file header, little-endian, nanosecond timestamps."""
    return struct.pack("<IHHiIII", _PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, linktype)


def pcap_packet(ts_ns: int, data: bytes, orig_len: int | None = None) -> bytes:
    """A classic pcap record header + data (nanosecond timestamp)."""
    orig = len(data) if orig_len is None else orig_len
    sec, nsec = divmod(ts_ns, 1_000_000_000)
    return struct.pack("<IIII", sec, nsec, len(data), orig) + data


class CaptureWriter:
    """Writes packets to an open binary file in either format; `close()` flushes."""

    def __init__(
        self,
        out: BinaryIO,
        fmt: str,
        ifname: str,
        linktype: int = LINKTYPE_ETHERNET,
        comment: str = "",
    ) -> None:
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt!r}: choose pcapng or pcap")
        self._out = out
        self._fmt = fmt
        self.packets = 0
        self.bytes = 0
        if fmt == "pcapng":
            out.write(pcapng_header(ifname, linktype, comment=comment))
        else:
            out.write(pcap_header(linktype))

    def write(self, ts_ns: int, data: bytes, orig_len: int, pkttype: int | None = None) -> None:
        if self._fmt == "pcapng":
            self._out.write(pcapng_packet(ts_ns, data, orig_len, pkttype=pkttype))
        else:
            self._out.write(pcap_packet(ts_ns, data, orig_len))
        self.packets += 1
        self.bytes += orig_len

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.flush()


# -- reader (sans-I/O) ----------------------------------------------------------------------


class CaptureFormatError(UsageError):
    """The file is not a pcap/pcapng file we can read, or is cut short."""


def read_capture(data: bytes | mmap.mmap) -> Iterator[Packet]:
    """The packets of a pcap or pcapng file's bytes (or a map of the file), in file order. Raises
    CaptureFormatError (naming the byte offset) on a file that is neither or is damaged;
    packets before the damage have been yielded by then."""
    if len(data) < 4:
        raise CaptureFormatError("not a pcap or pcapng file (shorter than 4 bytes)")
    magic_le = struct.unpack_from("<I", data)[0]
    if magic_le == _SHB:
        yield from _read_pcapng(data)
        return
    for endian in "<>":
        magic = struct.unpack_from(endian + "I", data)[0]
        if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            yield from _read_pcap(data, endian, 1 if magic == _PCAP_MAGIC_NS else 1000)
            return
    raise CaptureFormatError(f"not a pcap or pcapng file (magic 0x{magic_le:08x})")


def _read_pcap(data: bytes | mmap.mmap, e: str, ns_per_tick: int) -> Iterator[Packet]:
    if len(data) < 24:
        raise CaptureFormatError("pcap file header cut short")
    linktype = struct.unpack_from(e + "I", data, 20)[0] & 0x0FFFFFFF
    off = 24
    while off < len(data):
        if off + 16 > len(data):
            raise CaptureFormatError(f"pcap record header cut short at byte {off}")
        sec, frac, incl, orig = struct.unpack_from(e + "IIII", data, off)
        if off + 16 + incl > len(data):
            raise CaptureFormatError(f"pcap record at byte {off} cut short")
        yield Packet(
            sec * 1_000_000_000 + frac * ns_per_tick,
            data[off + 16 : off + 16 + incl],
            orig,
            linktype,
        )
        off += 16 + incl


def _tsresol_ns(value: int) -> tuple[int, int]:
    """(multiplier, divisor) turning if_tsresol ticks into nanoseconds."""
    if value & 0x80:
        per_sec = 2 ** (value & 0x7F)
    else:
        per_sec = 10**value
    return (1_000_000_000 // per_sec, 1) if per_sec <= 1_000_000_000 else (1, per_sec // 10**9)


def _options(data: bytes | mmap.mmap, off: int, end: int, e: str) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= end:
        code, length = struct.unpack_from(e + "HH", data, off)
        if code == 0:
            return
        yield code, data[off + 4 : off + 4 + length]
        off += 4 + length + (-length % 4)


def _read_pcapng(data: bytes | mmap.mmap) -> Iterator[Packet]:
    e = "<"
    ifaces: list[tuple[int, int, int]] = []  # (linktype, mul, div)
    off = 0
    while off < len(data):
        if off + 12 > len(data):
            raise CaptureFormatError(f"pcapng block header cut short at byte {off}")
        btype = struct.unpack_from(e + "I", data, off)[0]  # the SHB type reads the same in both
        if btype == _SHB:
            bom = data[off + 8 : off + 12]
            if bom == struct.pack("<I", _BYTE_ORDER_MAGIC):
                e = "<"
            elif bom == struct.pack(">I", _BYTE_ORDER_MAGIC):
                e = ">"
            else:
                raise CaptureFormatError(f"pcapng section at byte {off}: bad byte-order magic")
            ifaces = []
        total = struct.unpack_from(e + "I", data, off + 4)[0]
        if total < 12 or total % 4 or off + total > len(data):
            raise CaptureFormatError(f"pcapng block at byte {off}: bad length {total}")
        body, end = off + 8, off + total - 4
        if btype == _IDB:
            linktype = struct.unpack_from(e + "H", data, body)[0]
            mul, div = 1000, 1  # default if_tsresol 6 (microseconds)
            for code, value in _options(data, body + 8, end, e):
                if code == 9 and value:
                    mul, div = _tsresol_ns(value[0])
            ifaces.append((linktype, mul, div))
        elif btype == _EPB:
            ifid, hi, lo, incl, orig = struct.unpack_from(e + "IIIII", data, body)
            if ifid >= len(ifaces) or body + 20 + incl > end:
                raise CaptureFormatError(f"pcapng packet block at byte {off} is inconsistent")
            linktype, mul, div = ifaces[ifid]
            outbound = None
            for code, value in _options(data, body + 20 + incl + (-incl % 4), end, e):
                if code == 2 and len(value) == 4:
                    direction = struct.unpack(e + "I", value)[0] & 0b11
                    outbound = {1: False, 2: True}.get(direction)
            yield Packet(
                ((hi << 32) | lo) * mul // div,
                data[body + 20 : body + 20 + incl],
                orig,
                linktype,
                outbound,
            )
        elif btype == _SPB:
            if not ifaces:
                raise CaptureFormatError(f"pcapng simple packet block at byte {off}: no interface")
            orig = struct.unpack_from(e + "I", data, body)[0]
            yield Packet(
                0, data[body + 4 : body + 4 + min(orig, end - body - 4)], orig, ifaces[0][0]
            )
        off += total


# -- the socket loop ------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureStats:
    packets: int
    bytes: int
    seconds: float
    kernel_drops: int
    stopped_by: str  # "count", "duration", "interrupt"


@contextmanager
def _stop_signals(stop: list[bool]) -> Iterator[None]:
    """While capturing, SIGINT and SIGTERM only set stop[0]: the loop then ends between two
    complete blocks, never in the middle of writing one (only possible in the main thread;
    elsewhere Ctrl-C cannot reach the loop anyway)."""

    def handler(signum: int, frame: object) -> None:
        stop[0] = True

    try:
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def open_packet_socket(iface: str, netns: str | None) -> socket.socket:
    """An AF_PACKET socket bound to `iface` (all EtherTypes, both directions), opened in
    `netns` if given; with kernel nanosecond timestamps."""
    from oae.testbed.kernel import check_ifname, in_netns

    check_ifname(iface)
    if os.geteuid() != 0:
        from oae.errors import NeedsRootError

        raise NeedsRootError("capturing needs root (CAP_NET_RAW, and CAP_SYS_ADMIN for --netns)")
    with in_netns(netns) if netns else nullcontext():
        # protocol 0: the socket receives nothing until bound to the interface below, so no
        # frame of another interface slips in between socket() and bind()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((iface, ETH_P_ALL))
        except OSError as exc:
            sock.close()
            where = f" in namespace {netns!r}" if netns else ""
            raise UsageError(f"interface {iface!r}{where}: {exc.strerror}") from None
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def capture(
    iface: str,
    path: str,
    netns: str | None = None,
    count: int | None = None,
    duration: float | None = None,
    fmt: str = "pcapng",
    ethertype: int | None = None,
    ready: Callable[[], None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> CaptureStats:
    """Capture frames of `iface` into `path` until `count` frames (of `ethertype`, if
    given) are written, `duration` seconds pass or Ctrl-C/SIGTERM; the file is complete and
    closed in every case. `ready` is called once the socket listens; `progress(packets,
    bytes, elapsed)` about twice a second."""
    if count is not None and count < 1:
        raise UsageError("--count must be at least 1")
    if duration is not None and duration <= 0:
        raise UsageError("--duration must be > 0 seconds")
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose pcapng or pcap")
    stop = [False]
    with ExitStack() as stack:
        stack.enter_context(_stop_signals(stop))  # from here on, Ctrl-C ends with a full file
        sock = open_packet_socket(iface, netns)
        stack.callback(sock.close)
        try:
            out = stack.enter_context(open(path, "wb"))
        except OSError as exc:
            raise UsageError(f"cannot write {path!r}: {exc.strerror}") from None
        writer = CaptureWriter(
            out,
            fmt,
            iface,
            comment=f"oae capture on {iface}" + (f" in netns {netns}" if netns else ""),
        )
        stack.callback(writer.close)
        start = time.monotonic()
        deadline = start + duration if duration is not None else None
        next_progress = start + 0.5
        stopped_by = "interrupt"
        ancbufsize = socket.CMSG_SPACE(16)
        if ready:
            ready()
        while not stop[0]:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                stopped_by = "duration"
                break
            if now >= next_progress:  # readers of a growing file see frames soon
                writer.flush()
                if progress:
                    progress(writer.packets, writer.bytes, now - start)
                next_progress = now + 0.5
            wait = 0.2 if deadline is None else min(0.2, deadline - now)
            if not select.select([sock], [], [], max(wait, 0))[0]:
                continue
            for _ in range(DRAIN_MAX):  # what is queued, without a select per frame
                try:
                    data, anc, _flags, addr = sock.recvmsg(SNAPLEN, ancbufsize, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if ethertype is not None and (
                    len(data) < 14 or int.from_bytes(data[12:14], "big") != ethertype
                ):
                    continue
                writer.write(_timestamp(anc), data, len(data), pkttype=addr[2])
                if count is not None and writer.packets >= count:
                    stopped_by = "count"
                    stop[0] = True
                    break
        drops = _kernel_drops(sock)
        return CaptureStats(
            writer.packets, writer.bytes, time.monotonic() - start, drops, stopped_by
        )


def _timestamp(anc: list[tuple[int, int, bytes]]) -> int:
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = struct.unpack("=qq", value[:16])
            return sec * 1_000_000_000 + nsec
    return time.time_ns()


def _kernel_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped since the last call (tpacket_stats.tp_drops)."""
    try:
        _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    except OSError:
        return 0
    return drops


# -- CLI ------------------------------------------------------------------------------------


def parse_ethertype(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0x88b5)") from None
    if not 0x0600 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text}: an EtherType is 0x0600..0xffff")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture",
        help="capture an interface's frames to a pcapng/pcap file",
        description=(
            "Capture the frames of an interface (both directions, all EtherTypes unless "
            "--ethertype) into a pcapng (default) or pcap file that Wireshark and tshark "
            "open; `oae wireshark install` adds the oae dissector, `oae decode` prints the "
            "file without Wireshark. Stops after --count frames, after --duration seconds, "
            "or on Ctrl-C/SIGTERM, and always leaves a complete file. Needs root. "
            "Note: frames sent with PACKET_QDISC_BYPASS are not seen by a capture on the "
            "sending side; capture on the receiving side."
        ),
    )
    where = p.add_argument_group(
        "where",
        "an interface (--iface, --netns), or a link of a running testbed (--testbed, --link, --at)",
    )
    where.add_argument("--iface", "-i", help="interface to capture on")
    where.add_argument("--netns", "-n", help="network namespace the interface lives in")
    where.add_argument("--testbed", "-t", metavar="NAME", help="a running testbed (oae testbed)")
    where.add_argument("--link", "-l", metavar="LINK", help="the testbed link, e.g. n2-n3")
    where.add_argument(
        "--at", metavar="NODE", help="the end of the link to capture on (default: its second node)"
    )
    p.add_argument(
        "-w",
        "--write",
        dest="path",
        required=True,
        metavar="FILE",
        help="output file (.pcapng or .pcap)",
    )
    p.add_argument("--count", "-c", type=int, help="stop after this many frames")
    p.add_argument("--duration", "-d", type=float, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--format",
        "-F",
        choices=FORMATS,
        default=None,
        help="file format (default: from the file name, else pcapng)",
    )
    p.add_argument(
        "--ethertype",
        type=parse_ethertype,
        metavar="HEX",
        help="keep only frames of this EtherType (e.g. 0x88b5)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def resolve_where(args: argparse.Namespace) -> tuple[str, str | None]:
    """(interface, namespace) from --iface/--netns, or from --testbed/--link/--at."""
    by_link = args.testbed or args.link or args.at
    if by_link and (args.iface or args.netns):
        raise UsageError("give either --iface/--netns or --testbed/--link, not both")
    if not by_link:
        if not args.iface:
            raise UsageError("say where to capture: --iface IFACE [--netns NS], or "
                             "--testbed NAME --link LINK [--at NODE]")  # fmt: skip
        return args.iface, args.netns
    if not (args.testbed and args.link):
        raise UsageError("--testbed and --link go together (and --at names one end)")
    from oae.testbed import manager

    tb = manager.load(args.testbed)
    link = tb.link(args.link)
    at = args.at or link["b"]
    if at not in (link["a"], link["b"]):
        raise UsageError(f"--at {at!r}: link {link['name']!r} joins {link['a']} and {link['b']}")
    end = "a" if at == link["a"] else "b"
    return link[f"if_{end}"], tb.ns(at)


def run(args: argparse.Namespace) -> int:
    fmt = args.format or ("pcap" if args.path.endswith(".pcap") else "pcapng")
    args.iface, args.netns = resolve_where(args)
    where = f"{args.iface}" + (f" in netns {args.netns}" if args.netns else "")
    tty = sys.stderr.isatty()
    last_line = [0.0]

    def ready() -> None:
        print(
            f"oae capture: capturing on {where} -> {args.path} ({fmt})", file=sys.stderr, flush=True
        )

    def progress(packets: int, nbytes: int, elapsed: float) -> None:
        line = f"oae capture: {packets} frames, {nbytes} bytes, {elapsed:.1f} s"
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif elapsed - last_line[0] >= 10:  # a log, not a terminal: one line per 10 s
            last_line[0] = elapsed
            print(line, file=sys.stderr, flush=True)

    stats = capture(
        args.iface,
        args.path,
        args.netns,
        args.count,
        args.duration,
        fmt,
        args.ethertype,
        ready=ready,
        progress=None if args.quiet else progress,
    )
    if tty and not args.quiet:
        print(file=sys.stderr)
    drops = f", {stats.kernel_drops} dropped by the kernel" if stats.kernel_drops else ""
    print(
        f"oae capture: {stats.packets} frames ({stats.bytes} bytes) in {stats.seconds:.1f} s"
        f" written to {args.path}; stopped by {stats.stopped_by}{drops}",
        file=sys.stderr,
        flush=True,
    )
    return 0
