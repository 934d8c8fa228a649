"""The impairing bridge: one process per testbed forwarding real frames for all its
impaired links, with the impairments decided by `oae.testbed.impair.LinkImpairer`.

Wiring of an impaired link A-B: node A's interface is a veth whose peer `l<i>a` lives in
the testbed's bridge namespace, node B's likewise with `l<i>b`. The bridge holds one
AF_PACKET socket in that namespace, sees which interface each frame came in on, and sends
it out of the link's other one, through the impairer.

Control channel: a Unix stream socket; one JSON request line per connection, one JSON
reply line: {"cmd": "ping"}, {"cmd": "get", "link": L}, {"cmd": "set", "link": L,
"impair": {...}}, {"cmd": "stats"}, {"cmd": "stop"}.

Run as `python -m oae.testbed.bridge --ns BRIDGE_NS --state STATE_JSON`; it exits on
`stop`, SIGTERM/SIGINT, or when its namespace disappears (so `clean` also stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from oae.testbed import kernel
from oae.testbed.impair import Impairment, LinkImpairer

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23
SOL_PACKET = 263
SO_RCVBUFFORCE = 33
RX_BATCH = 64
NS_CHECK_INTERVAL = 0.5


def packet_socket(ns: str) -> socket.socket:
    """One non-blocking AF_PACKET socket for every interface of `ns`: it receives what
    arrives on any of them (veth hands over frames for any MAC) but not what it sends
    itself. One socket, not one per interface, because each AF_PACKET close waits for an
    RCU grace period: 128 sockets took 1.7 s to close."""
    with kernel.in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with contextlib.suppress(OSError):
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    try:  # beyond rmem_max (root only), so bursts are not dropped before we see them
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.setblocking(False)
    return s


class _Link:
    def __init__(self, name: str, impairer: LinkImpairer, ifnames: tuple[str, str]):
        self.name = name
        self.impairer = impairer
        self.ifnames = ifnames  # [0] faces node a, [1] faces node b
        self.send_errors = 0

    def flush(self, sock: socket.socket, now: float) -> None:
        for direction in (0, 1):
            out = (self.ifnames[1 - direction], 0)
            for frame in self.impairer.poll(direction, now):
                try:
                    sock.sendto(frame, out)
                except OSError:  # interface down or queue full: the frame is lost
                    self.send_errors += 1

    def report(self) -> dict[str, Any]:
        return {
            "impair": self.impairer.spec.to_json(),
            "a_to_b": asdict(self.impairer.stats(0)),
            "b_to_a": asdict(self.impairer.stats(1)),
            "send_errors": self.send_errors,
        }


class Bridge:
    """The bridge's event loop over its packet socket and the control socket."""

    def __init__(self, ns: str, state: dict[str, Any]) -> None:
        self.ns = ns
        self.start = time.monotonic()
        self.sel = selectors.DefaultSelector()
        self.links: dict[str, _Link] = {}
        self.by_ifname: dict[str, tuple[_Link, int]] = {}
        self.running = True
        for spec in state["links"]:
            br = spec.get("bridge")
            if not br:
                continue
            imp = LinkImpairer(Impairment.from_json(spec["impair"]), spec["seed"], self.start)
            link = _Link(spec["name"], imp, (br["if_a"], br["if_b"]))
            self.links[link.name] = link
            self.by_ifname[br["if_a"]] = (link, 0)
            self.by_ifname[br["if_b"]] = (link, 1)
        self.sock = packet_socket(ns)
        self.sel.register(self.sock, selectors.EVENT_READ, "frames")
        control = state["control"]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control)
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(control)
        os.chmod(control, 0o600)
        self.control.listen(8)
        self.control.setblocking(False)
        self.sel.register(self.control, selectors.EVENT_READ, None)

    def _request(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid(), "links": sorted(self.links)}
        if cmd == "stop":
            self.running = False
            return {"ok": True}
        if cmd == "stats":
            return {"ok": True, "links": {n: lk.report() for n, lk in self.links.items()}}
        link = self.links.get(req.get("link", ""))
        if link is None:
            return {"ok": False, "error": f"link {req.get('link')!r} is not bridged"}
        if cmd == "get":
            return {"ok": True, **link.report()}
        if cmd == "set":
            link.impairer.spec = Impairment.from_json(req["impair"])
            return {"ok": True, **link.report()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _serve_control(self) -> None:
        try:
            conn, _ = self.control.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                line = conn.makefile("rb").readline(1 << 16)
                try:
                    reply = self._request(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def _receive(self, busy: set[_Link]) -> None:
        now = time.monotonic()
        for _ in range(RX_BATCH):
            try:
                frame, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            hit = self.by_ifname.get(addr[0])
            if hit is not None and addr[2] != PACKET_OUTGOING:
                link, direction = hit
                link.impairer.submit(direction, frame, now)
                busy.add(link)

    def run(self) -> None:
        """Forward until stopped; the loop wakes for frames, control requests, the next
        due frame, and a periodic check that our namespace still exists."""
        next_ns_check = time.monotonic() + NS_CHECK_INTERVAL
        busy: set[_Link] = set()
        while self.running:
            now = time.monotonic()
            deadline = next_ns_check
            for link in busy:
                d = link.impairer.next_deadline()
                if d is not None and d < deadline:
                    deadline = d
            for key, _ in self.sel.select(max(0.0, deadline - now)):
                if key.data is None:
                    self._serve_control()
                else:
                    self._receive(busy)
            now = time.monotonic()
            for link in list(busy):
                link.flush(self.sock, now)
                if link.impairer.next_deadline() is None:
                    busy.discard(link)
            if now >= next_ns_check:
                next_ns_check = now + NS_CHECK_INTERVAL
                if not kernel.netns_exists(self.ns):
                    break

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


class _Stopped(Exception):
    """Raised by the SIGTERM/SIGINT handler so that a blocking select() ends at once."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise _Stopped

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oae.testbed.bridge")
    ap.add_argument("--ns", required=True, help="the testbed's bridge namespace")
    ap.add_argument("--state", required=True, help="the testbed's state.json")
    args = ap.parse_args(argv)
    with open(args.state) as f:
        state = json.load(f)
    bridge = Bridge(args.ns, state)
    try:
        with _stop_on_signals():
            bridge.run()
    except _Stopped:
        pass
    finally:
        bridge.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state["control"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
