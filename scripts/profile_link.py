"""Where a link's CPU time goes per frame, at each end (root; perf; one-off profiling).

    python scripts/profile_link.py ait [--seconds 3] [--busy] [--ring]
    python scripts/profile_link.py exchange [--seconds 3] [--busy]
    python scripts/profile_link.py flood [--seconds 3] [--ring]
    python scripts/profile_link.py pingpong [--seconds 3] [--busy]

Runs what `oae bench ait` (window 1024, beat 64, a quiet sender and a sink receiver),
`oae bench exchange` (the idle-0 token exchange, beat 1) or the bare C flood measure, on
a fresh veth pair (`--ring`: the pumps, or the flood, send through a PACKET_TX_RING
instead of sendmmsg), and samples the whole machine with
`perf record -e cpu-clock -g` (software sampling: no hardware counters needed) during the
steady state. Each sample of
an end's thread is put in one category:

  engine     link.c (the state machine)           codec     wire.c (encode, decode, CRC32C)
  pump       pump.c and the libc it calls (mutex, clock, syscall wrappers)
  send:net   the send syscall's network path: veth, and the peer's receive (packet_rcv,
             the peer thread's wake-up), which veth runs in the sender's context
  send:sock  the rest of the send syscall (entry, copying the messages, the skb)
  recv       receive syscalls; yield: sched_yield while polling; wait: ppoll/futex/eventfd
  other      other kernel time of the thread (scheduling, interrupts)

and the shares are turned into CPU microseconds per frame with the thread's own CPU
clock (the pump's cpu_ns, the baseline's CPU time), so perf's sampling rate does not
matter. A frame is a commit for `ait` (the sender sends one frame per commit), a round
trip for `exchange`, a frame for `flood`. The figures are CPU per frame, robust to other
load; the rates printed with them are not (check the load average printed). perf's own
overhead slows syscall-heavy loops (more for `exchange`): compare categories, and take
rates from `oae bench`.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio
from oae._pump import ffi, lib

from oae.runtime.link import LinkOptions, open_link
from oae.runtime.sock import open_socket
from oae.testbed.kernel import VethPair, veth_pair

CSRC = Path(__file__).resolve().parent.parent / "csrc"
FREQ = 4999
PAYLOAD = b"oae-bench-ait-16"
CATEGORIES = ("engine", "codec", "pump", "send:net", "send:sock", "recv", "yield", "wait",
              "other")  # fmt: skip
SEND = ("__sys_sendmmsg", "__x64_sys_sendmmsg", "__x64_sys_sendto", "__sys_sendto")
RECV = ("__sys_recvmmsg", "__x64_sys_recvmmsg", "__x64_sys_recvfrom", "__sys_recvfrom")
WAIT = ("__x64_sys_ppoll", "__x64_sys_futex", "__x64_sys_read", "__x64_sys_write",
        "__x64_sys_epoll_wait")  # fmt: skip
NET = ("__dev_queue_xmit", "net_rx_action", "veth_xmit")
# libc's syscall wrappers: in this VM a cpu-clock sample that falls due in the kernel is
# often taken on the instruction after the syscall returns, inside the wrapper
LIBC_SYSCALLS = {
    **dict.fromkeys(("__libc_recv", "recv", "__recvmmsg", "recvmmsg"), "recv"),
    **dict.fromkeys(("__send", "send", "__libc_send", "__sendmmsg", "sendmmsg"), "send:sock"),
    **dict.fromkeys(("__sched_yield", "sched_yield"), "yield"),
    **dict.fromkeys(("ppoll", "__ppoll", "poll", "__poll", "__GI___poll"), "wait"),
}


def c_functions(source: str) -> set[str]:
    """Names of the functions defined in a csrc/ file (static ones included: perf names
    them when the compiler kept them out of line)."""
    text = (CSRC / source).read_text()
    return set(re.findall(r"^(?:__attribute__\(\(.*?\)\)\s+)?[a-z_][\w \*]*?\b(\w+)\(", text, re.M))


def classify(stack: list[tuple[str, str]], engine: set[str], codec: set[str]) -> str:
    syms = {s for s, _ in stack}
    if syms & set(SEND):
        return "send:net" if syms & set(NET) else "send:sock"
    if syms & set(RECV):
        return "recv"
    if syms & {"do_sched_yield", "__x64_sys_sched_yield"}:
        return "yield"
    if syms & set(WAIT):
        return "wait"
    leaf, dso = stack[0]
    base = leaf.split(".")[0]  # crc32c_hw.constprop.0 -> crc32c_hw
    if "kallsyms" in dso:
        return "other"
    if base in LIBC_SYSCALLS:  # a sample taken as the syscall returned: its cost
        return LIBC_SYSCALLS[base]
    if base in codec:
        return "codec"
    if base in engine:
        return "engine"
    return "pump"


def perf_shares(
    data: Path, tids: dict[int, str], leaves: dict[str, collections.Counter[str]] | None = None
) -> dict[str, collections.Counter[str]]:
    """Samples per category for each named thread (and, into `leaves`, per leaf symbol)."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    engine, codec = c_functions("link.c"), c_functions("wire.c")
    shares: dict[str, collections.Counter[str]] = {
        name: collections.Counter() for name in tids.values()
    }
    for block in out.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        tid = int(lines[0].split()[0])
        if tid not in tids:
            continue
        stack = []
        for line in lines[1:]:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                sym, _, dso = parts[1].rpartition(" (")
                stack.append((sym.split("+")[0], dso.rstrip(")")))
        if stack:
            shares[tids[tid]][classify(stack, engine, codec)] += 1
            if leaves is not None:
                leaves.setdefault(tids[tid], collections.Counter())[stack[0][0]] += 1
    return shares


async def record(seconds: float, data: Path) -> None:
    await trio.run_process(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQ), "-a",
                            "-g", "-o", str(data), "--", "sleep", str(seconds)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


async def profile_links(
    pair: VethPair, mode: str, seconds: float, busy: bool, ring: bool, data: Path
) -> dict:
    extra = {"tx_ring": True} if ring else {}  # (also runs against older checkouts)
    if mode == "ait":
        tx = LinkOptions(window=1024, beat=64, idle=0.0, quiet=True, busy=busy, **extra)
        rx = LinkOptions(window=1024, beat=64, idle=0.0, sink=True, busy=busy, **extra)
    else:
        tx = rx = LinkOptions(idle=0.0, busy=busy)
    async with (
        open_link(pair.if_a, pair.ns_a, options=tx) as a,
        open_link(pair.if_b, pair.ns_b, options=rx) as b,
        trio.open_nursery() as nursery,
    ):
        with trio.fail_after(10):
            await a.wait_up()
            await b.wait_up()

        async def feed() -> None:
            chunk = [PAYLOAD] * 16384
            while True:
                if a.backlog() < len(chunk):
                    a.submit(chunk)
                await trio.sleep(0.005)

        if mode == "ait":
            nursery.start_soon(feed)
        await trio.sleep(0.3)
        s0, t0 = (a.stats(), b.stats()), time.perf_counter()
        await record(seconds, data)
        s1, t1 = (a.stats(), b.stats()), time.perf_counter()
        nursery.cancel_scope.cancel()
    frames = (s1[0]["committed"] - s0[0]["committed"] if mode == "ait"
              else s1[0]["frames_in"] - s0[0]["frames_in"])  # fmt: skip
    names = ("sender", "receiver") if mode == "ait" else ("end a", "end b")
    return {
        "rate": frames / (t1 - t0),
        "frames": frames,
        "tids": {s1[i]["pump"]["tid"]: names[i] for i in (0, 1)},
        "cpu_s": {
            names[i]: (s1[i]["pump"]["cpu_ns"] - s0[i]["pump"]["cpu_ns"]) / 1e9 for i in (0, 1)
        },  # fmt: skip
    }


def profile_c(
    pair: VethPair, mode: str, seconds: float, busy: bool, ring: bool, data: Path
) -> dict:
    """The bare C baselines: the one-way flood (a frame each) or the ping-pong (a round trip
    each; end a initiates, end b answers, as the link's ends in `exchange`)."""
    a = open_socket(pair.if_a, pair.ns_a)
    b = open_socket(pair.if_b, pair.ns_b)
    out_a, out_b = ffi.new("oae_bench_result *"), ffi.new("oae_bench_result *")
    tids: dict[int, str] = {}
    run, max_ns = secrets.randbits(32), int((seconds + 0.6) * 1e9)
    names = ("sender", "receiver") if mode == "flood" else ("end a", "end b")
    for s in (a, b):
        lib.oae_sock_set_rcvtimeo(s.fd, 20_000_000)

    def end_a() -> None:
        tids[threading.get_native_id()] = names[0]
        if mode == "flood":
            lib.oae_flood_send(a.fd, a.mac, b.mac, a.ethertype, run, 1 << 40, max_ns, int(ring),
                               out_a)  # fmt: skip
        else:
            lib.oae_pingpong_initiate(a.fd, a.mac, b.mac, a.ethertype, run, 1 << 40, max_ns,
                                      int(busy), out_a)  # fmt: skip

    def end_b() -> None:
        tids[threading.get_native_id()] = names[1]
        if mode == "flood":
            lib.oae_flood_recv(b.fd, b.ethertype, run, max_ns + 2_000_000_000, out_b)
        else:
            lib.oae_pingpong_respond(b.fd, b.ethertype, run, max_ns + 2_000_000_000, int(busy),
                                     out_b)  # fmt: skip

    threads = [threading.Thread(target=f) for f in (end_b, end_a)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    trio.run(record, seconds, data)
    for t in threads:
        t.join()
    a.close()
    b.close()
    # the whole run's CPU per frame (perf saw the middle of it)
    counted = out_b if mode == "flood" else out_a
    return {
        "rate": counted.count / (counted.elapsed_ns / 1e9),
        "frames": out_a.sent if mode == "flood" else out_a.count,
        "tids": tids,
        "cpu_s": {names[0]: out_a.cpu_ns / 1e9, names[1]: out_b.cpu_ns / 1e9},
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("mode", choices=("ait", "exchange", "flood", "pingpong"))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--busy", action="store_true", help="busy-poll pumps")
    ap.add_argument("--ring", action="store_true", help="send through a PACKET_TX_RING")
    ap.add_argument("--symbols", type=int, default=0, metavar="N",
                    help="also the N leaf functions with the most CPU per thread")  # fmt: skip
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("profile_link: needs root (namespaces, raw sockets, perf -a)", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, veth_pair() as pair:
        data = Path(tmp) / "perf.data"
        if args.mode in ("flood", "pingpong"):
            r = profile_c(pair, args.mode, args.seconds, args.busy, args.ring, data)
        else:
            r = trio.run(profile_links, pair, args.mode, args.seconds, args.busy, args.ring, data)
        leaves: dict[str, collections.Counter[str]] = {}
        shares = perf_shares(data, r["tids"], leaves)
    load1 = os.getloadavg()
    unit = {"ait": "commit", "exchange": "round trip", "pingpong": "round trip", "flood": "frame"}[
        args.mode
    ]
    print(f"{args.mode}{' busy-poll' if args.busy else ''}: {r['rate']:,.0f} {unit}s/s under "
          f"perf; load average {load0[0]:.2f} -> {load1[0]:.2f}")  # fmt: skip
    print(f"{'CPU us per ' + unit:<22}" + "".join(f"{n:>12}" for n in shares))
    per = {n: r["cpu_s"][n] * 1e6 / max(r["frames"], 1) for n in shares}
    for cat in CATEGORIES:
        cells = []
        for n, c in shares.items():
            total = sum(c.values()) or 1
            cells.append(f"{per[n] * c[cat] / total:12.3f}")
        print(f"{cat:<22}" + "".join(cells))
    print(f"{'total':<22}" + "".join(f"{per[n]:12.3f}" for n in shares))
    print(f"{'(perf samples)':<22}" + "".join(f"{sum(c.values()):12d}" for c in shares.values()))
    for n, c in leaves.items() if args.symbols else ():
        total = sum(c.values()) or 1
        print(f"{n}: CPU us per {unit} in its {args.symbols} busiest leaf functions")
        for sym, k in c.most_common(args.symbols):
            print(f"  {per[n] * k / total:8.3f}  {sym}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
