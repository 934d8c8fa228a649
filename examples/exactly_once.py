"""Exactly-once for applications: a sender and a receiver that survive kill -9 at any
instant (docs/applications.md walks through it; tests/test_exactly_once.py kills them).

Each end keeps its own append-only log, written with one unbuffered write per line, so a
line is either in the file or not when the process dies (the page cache outlives the
process):

    sender log     S <key>              payload <key> is about to be submitted
                   O <key> <c|a>        its outcome: committed or aborted
                   X <key>              an outcome handed out again after a restart,
                                        already in the log (not applied twice)
    receiver log   R <tid> <key>        a message received (tid: the link's incoming id)
                   D <tid>              a message handed out again after a restart,
                                        already in the log (not applied twice)

The sender numbers its payloads 1..N and uses the number as the transfer's key. It
writes S before submitting, and the outcome before acknowledging it (the outcomes()
loop acknowledges an outcome when it asks for the next one). After a restart:
  * keys above link.last_key were never offered: submit them again;
  * every other key without an outcome line gets its outcome from outcomes() (restored);
  * an outcome whose O line is already there came again because its acknowledgement was
    lost with the process: skip it.
The receiver applies a message (writes R) before releasing it (received() releases it
when it asks for the next one); after a restart it is handed the messages it had not
released, and skips those whose tid is not above the last R line.

    python examples/exactly_once.py send --iface veth0 --state-dir /var/lib/app/tx \\
        --log tx.log --count 100000
    python examples/exactly_once.py recv --iface veth1 --state-dir /var/lib/app/rx \\
        --log rx.log
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import trio

import oae

CHUNK = 2048  # payloads submitted at a time
IN_FLIGHT = 8192  # submitted payloads without an outcome, at most


class AppLog:
    """An append-only text log: one os.write per line (no buffer to lose in a crash)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        text = self.path.read_text() if self.path.exists() else ""
        whole = text[: text.rfind("\n") + 1]  # a line cut short (a crash of the machine,
        self.lines = whole.splitlines()  # not of the process) is dropped
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if len(whole) != len(text):
            os.ftruncate(self.fd, len(whole.encode()))

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode())


def payload(key: int) -> bytes:
    return key.to_bytes(8, "big")


async def send(args: argparse.Namespace) -> None:
    log = AppLog(args.log)
    submitted: set[int] = set()
    outcome: dict[int, str] = {}
    for line in log.lines:
        f = line.split()
        if f[:1] == ["S"] and len(f) == 2:
            submitted.add(int(f[1]))
        elif f[:1] == ["O"] and len(f) == 3:
            outcome[int(f[1])] = f[2]
    changed = trio.Event()
    async with oae.open_link(args.iface, args.netns, state_dir=args.state_dir,
                             options=options(args)) as link:  # fmt: skip

        async def consume() -> None:
            nonlocal changed
            async for o in link.outcomes():
                if o.key in outcome:
                    log.write(f"X {o.key}\n")  # its acknowledgement died with the process
                    continue
                outcome[o.key] = "c" if o.committed else "a"
                log.write(f"O {o.key} {outcome[o.key]}\n")
                changed.set()
                if len(outcome) == args.count:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            # never offered before the crash: submit again (with the same keys, in order)
            again = sorted(k for k in submitted if k not in outcome and k > link.last_key)
            if again:
                link.post([payload(k) for k in again], keys=again)
            key = max(submitted, default=0) + 1
            while key <= args.count:
                while len(submitted) - len(outcome) >= IN_FLIGHT:
                    changed = trio.Event()
                    await changed.wait()
                keys = list(range(key, min(args.count, key + CHUNK - 1) + 1))
                log.write("".join(f"S {k}\n" for k in keys))  # before the link sees them
                submitted.update(keys)
                link.post([payload(k) for k in keys], keys=keys)
                key = keys[-1] + 1


async def recv(args: argparse.Namespace) -> None:
    log = AppLog(args.log)
    last = max((int(line.split()[1]) for line in log.lines if line.startswith("R ")), default=0)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with oae.open_link(args.iface, args.netns, state_dir=args.state_dir,
                                 options=options(args)) as link:  # fmt: skip
            async with trio.open_nursery() as nursery:

                async def apply() -> None:
                    nonlocal last
                    async for msg in link.received():
                        if msg.tid <= last:
                            log.write(f"D {msg.tid}\n")  # applied before the crash
                            continue
                        log.write(f"R {msg.tid} {int.from_bytes(msg.payload, 'big')}\n")
                        last = msg.tid

                nursery.start_soon(apply)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break


def options(args: argparse.Namespace) -> oae.LinkOptions:
    return oae.LinkOptions(window=args.window, beat=args.beat, dead=args.dead, rto=args.rto,
                           idle=0.0, hello=0.02, rx_capacity=1 << 20,
                           log_limit=args.log_limit)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="role", required=True)
    for role in ("send", "recv"):
        p = sub.add_parser(role)
        p.add_argument("--iface", required=True)
        p.add_argument("--netns")
        p.add_argument("--state-dir", required=True, help="the link's durable state")
        p.add_argument("--log", required=True, help="the application's own log")
        p.add_argument("--window", type=int, default=1024)
        p.add_argument("--beat", type=int, default=16)
        p.add_argument("--dead", type=float, default=0.3)
        p.add_argument("--rto", type=float, default=0.005)
        p.add_argument("--log-limit", type=int, default=1 << 20, help="compact events.log "
                       "after this many bytes (default 1 MiB)")  # fmt: skip
        if role == "send":
            p.add_argument("--count", type=int, required=True, help="payloads 1..N")
    args = ap.parse_args(argv)
    try:
        trio.run(send if args.role == "send" else recv, args)
    except oae.OaeError as exc:
        print(f"exactly_once: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
