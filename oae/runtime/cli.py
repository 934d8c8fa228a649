"""`oae node`, `oae status`, `oae send`, `oae recv`, `oae outcomes`: run a node on real
interfaces and talk to it through its control socket (docs/two-hosts.md walks through two
physical hosts; docs/applications.md says what survives a crash of the node)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import trio

from oae.epoch import daemon
from oae.epoch.layers import link_options
from oae.errors import UsageError
from oae.runtime.control import default_control_path, find_control_path, request
from oae.runtime.link import LinkOptions
from oae.runtime.node import LinkSpec, open_node
from oae.wire import KEY_LEN

STATE_ROOT = "/var/lib/oae"


def read_key_file(path: str) -> bytes:
    """A link key file holds 16 raw bytes or 32 hex digits (whitespace ignored)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"key file {path}: {exc.strerror}") from None
    text = data.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    if len(data) == KEY_LEN:
        return data
    raise UsageError(f"key file {path}: must hold {KEY_LEN} raw bytes or {2 * KEY_LEN} hex "
                     "digits")  # fmt: skip


def _ethertype(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0x88b5)") from None
    if not 0x0600 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text}: must be in 0x0600..0xffff")
    return value


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="PATH",
                   help="the node's control socket (default: derived from --iface/--netns, "
                   "else the only socket in /run/oae)")  # fmt: skip
    p.add_argument("--iface", help="find the node that runs on this interface")
    p.add_argument("--netns", help="... in this network namespace")
    p.add_argument("--link", help="with a multi-link node: which link (interface name)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "node",
        help="run an OAE node on one or more interfaces",
        description=(
            "Run an OAE node: a link on each --iface that finds its peer by HELLO to the "
            "discovery group (no IP configuration), keeps the token alternating and "
            "settles every transfer exactly once. A control socket (JSON lines) serves "
            "`oae status`, `oae send`, `oae recv` and `oae outcomes`. With --state-dir "
            f"(default {STATE_ROOT}/<netns>-<iface>) the link's durable registers and its "
            "event log survive a crash: a restarted node reconciles with its peer without "
            "loss or duplicate, and hands out again what no client had read (messages, "
            "outcomes). Stop with Ctrl-C or SIGTERM. Needs CAP_NET_RAW."
        ),
    )
    p.add_argument(
        "--iface",
        action="append",
        required=True,
        metavar="IFACE",
        help="interface to run a link on (repeat for several links)",
    )
    p.add_argument("--netns", help="network namespace the interfaces are in")
    p.add_argument("--peer", metavar="MAC", help="accept only this peer MAC (one link only)")
    p.add_argument(
        "--key-file",
        metavar="F",
        help="16-byte link key (raw or 32 hex digits): SipHash-2-4 instead of CRC32C",
    )
    p.add_argument(
        "--control",
        metavar="PATH",
        help="control socket path (default /run/oae/node-<netns|host>-<iface>.sock)",
    )
    p.add_argument("--state-dir", metavar="DIR",
                   help="durable state directory (one link only; default "
                   f"{STATE_ROOT}/<netns|host>-<iface>)")  # fmt: skip
    p.add_argument(
        "--no-state",
        action="store_true",
        help="keep no durable state (a restart starts a fresh link)",
    )
    p.add_argument("--ethertype", type=_ethertype, default=0x88B5, help="default 0x88b5")
    p.add_argument("--window", type=int, default=64, help="transfers in flight (default 64)")
    p.add_argument(
        "--beat",
        type=int,
        default=1,
        choices=(1, 4, 16, 64),
        help="records per exchange (default 1)",
    )
    p.add_argument(
        "--dead",
        type=float,
        default=1.0,
        help="seconds of silence before the link is declared failed (default 1)",
    )
    p.add_argument(
        "--hello",
        type=float,
        default=0.05,
        help="seconds between discovery HELLOs while the link is not LIVE (default 0.05)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=0.01,
        help="how long the leader holds the token when nothing is pending, in s (default"
        " 0.01; new work wakes the link at once; the re-offer timer follows: 2 x idle)",
    )
    p.add_argument("--busy", action="store_true", help="busy-poll (one core per link)")
    p.add_argument(
        "--bypass",
        action="store_true",
        help="PACKET_QDISC_BYPASS: faster, but local captures miss sent frames",
    )
    p.add_argument("--json", action="store_true", help="log events as JSON lines")
    daemon.add_arguments(p)
    p.set_defaults(func=run_node)

    for name, helptext, desc in (
        ("status", "show a running node's links and counters",
         "Ask a running `oae node` for its links: phase, peer, frames, drops by reason, "
         "transfers delivered/committed/aborted."),
        ("send", "send data through a running node (one transfer per argument)",
         "Transfer each DATA argument (<= 16 bytes; text, or hex with --hex) over a running "
         "node's link, in order, and print each outcome: committed or aborted, the same "
         "on both ends."),
        ("recv", "print data a running node has received",
         "Print messages a running `oae node` has delivered (each exactly once), waiting "
         "up to --timeout seconds for the first. A message is released once printed; "
         "one the node had not handed out when it crashed comes again after its restart "
         "(marked redelivered; its tid tells it apart)."),
        ("outcomes", "print outcomes nobody waited for (--no-wait sends, timeouts, restarts)",
         "Print the outcomes of transfers a running `oae node` settled with nobody waiting "
         "for them: sends made with --no-wait, sends whose --timeout ran out, and "
         "transfers settled after a restart of the node (restored). Each is acknowledged "
         "once printed and not shown again; with --key, every outcome carries its key."),
    ):  # fmt: skip
        c = sub.add_parser(name, help=helptext, description=desc)
        _client_args(c)
        if name == "send":
            c.add_argument("data", nargs="+", metavar="DATA",
                           help="a payload of at most 16 bytes; one transfer each")  # fmt: skip
            c.add_argument("--hex", action="store_true", help="DATA are hex strings")
            c.add_argument(
                "--timeout",
                type=float,
                default=10.0,
                help="seconds to wait for each outcome (default 10)",
            )
            c.add_argument("--no-wait", action="store_true",
                           help="queue the transfers and return; read their outcomes with "
                           "`oae outcomes`")  # fmt: skip
            c.add_argument("--key", type=int, metavar="K",
                           help="with --no-wait: application keys K, K+1, ... (above the "
                           "link's last key), handed back with each outcome")  # fmt: skip
            c.set_defaults(func=run_send)
        elif name in ("recv", "outcomes"):
            c.add_argument("--count", type=int, default=100, help="at most N (default 100)")
            c.add_argument(
                "--timeout",
                type=float,
                default=1.0,
                help="seconds to wait for the first one (default 1)",
            )
            c.set_defaults(func=run_recv if name == "recv" else run_outcomes)
        else:
            c.set_defaults(func=run_status)


def _specs(args: argparse.Namespace, epochs: daemon.EpochConfig | None) -> list[LinkSpec]:
    """One LinkSpec per --iface; with --epochs each link's state lives in the node's
    state dir (link-IFACE)."""
    if len(args.iface) > 1 and (args.peer or (args.state_dir and epochs is None)):
        raise UsageError("--peer and --state-dir apply to one link (or, with --epochs, "
                         "to the node); run one node per link")  # fmt: skip
    if args.window < 1:
        raise UsageError("--window must be >= 1")
    key = read_key_file(args.key_file) if args.key_file else None
    opts = LinkOptions(window=args.window, beat=args.beat, dead=args.dead, idle=args.idle,
                       hello=args.hello, busy=args.busy, bypass=args.bypass)  # fmt: skip
    if epochs is not None:
        opts = link_options(epochs.algorithm, opts)
    opts.check()
    specs = []
    for iface in args.iface:
        state = None
        if epochs is not None:
            state = str(epochs.link_dir(iface))
        elif not args.no_state:
            state = args.state_dir or f"{STATE_ROOT}/{args.netns or 'host'}-{iface}"
        specs.append(LinkSpec(iface, args.netns, args.peer, key, state, opts))
    return specs


def _line(args: argparse.Namespace, event: str, **fields: Any) -> str:
    """One line of the node's log (without its newline)."""
    if args.json:
        return json.dumps({"event": event, **fields})
    rest = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"oae node: {event} {rest}"


def _log(args: argparse.Namespace, event: str, **fields: Any) -> None:
    print(_line(args, event, **fields), flush=True)


def _epoch_line(args: argparse.Namespace) -> tuple[str, str]:
    """The text before and after the number in the log's `epoch` line (for a layer that
    writes that line without Python: the bilateral runner)."""
    mark = 2**32  # no epoch: it cannot appear elsewhere in the line
    before, after = _line(args, "epoch", epoch=mark).split(str(mark))
    return before, after + "\n"


async def _node_main(args: argparse.Namespace) -> None:
    epochs = daemon.config_from_args(args, STATE_ROOT)
    specs = _specs(args, epochs)
    control = args.control or default_control_path(args.iface[0], args.netns)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_node(specs, control, layered=epochs is not None) as node:
            for link in node.links.values():
                st = link.stats()
                _log(args, "started", iface=link.iface, netns=link.netns, mac=st["mac"],
                     control=control, out_settled=st["out_settled"],
                     in_delivered=st["in_delivered"])  # fmt: skip
            layer = nullcontext() if epochs is None else daemon.serve(
                node, epochs, partial(_log, args), _epoch_line(args))  # fmt: skip
            async with layer, trio.open_nursery() as nursery:

                async def watch(link: Any) -> None:
                    was_up = False
                    while True:
                        if link.up != was_up:
                            was_up = link.up
                            _log(args, "link-up" if was_up else "link-down", iface=link.iface,
                                 peer=link.stats()["peer"])  # fmt: skip
                        await link.wait_state_change()

                for link in node.links.values():
                    nursery.start_soon(watch, link)
                async for signum in signals:
                    _log(args, "stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break


def run_node(args: argparse.Namespace) -> int:
    trio.run(_node_main, args)
    return 0


def _path(args: argparse.Namespace) -> str:
    return find_control_path(args.control, args.iface, args.netns)


def run_status(args: argparse.Namespace) -> int:
    status = request(_path(args), {"op": "status"})["status"]
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"node pid {status['pid']}  control {status['control']}  up {status['uptime_s']} s")
    if "epoch" in status:
        ep = status["epoch"]
        print(f"epoch {ep['epoch']}  ({ep['algorithm']}, node id {ep['node_id']}; "
              "`oae epoch status` for more)")  # fmt: skip
    for ln in status["links"]:
        where = f"{ln['netns']}/" if ln["netns"] else ""
        print(f"link {where}{ln['iface']}  mac {ln['mac']}  peer {ln['peer'] or '-'}  "
              f"phase {ln['phase']}")  # fmt: skip
        print(f"  frames in {ln['frames_in']} accepted {ln['frames_accepted']} out "
              f"{ln['frames_out']} dropped {ln['dropped']}"
              + (f" ({', '.join(f'{k} {v}' for k, v in ln['drops'].items())})"
                 if ln["drops"] else ""))  # fmt: skip
        paused = "  (offers paused)" if ln["offers_paused"] else ""
        print(f"  transfers delivered {ln['delivered']} committed {ln['committed']} aborted "
              f"{ln['aborted']}  links up {ln['links_up']} down {ln['links_down']}  "
              f"inbox {ln['inbox']}  outcomes {ln['outcomes_waiting']}  last key "
              f"{ln['last_key']}{paused}")  # fmt: skip
    return 0


def run_send(args: argparse.Namespace) -> int:
    path = _path(args)
    if args.no_wait:
        return _post(args, path)
    if args.key is not None:
        raise UsageError("--key goes with --no-wait (the outcomes then come from `oae outcomes`)")
    failed = 0
    for item in args.data:
        req: dict[str, Any] = {"op": "send", "timeout": args.timeout}
        if args.hex:
            req["hex"] = item
        else:
            req["data"] = item
        if args.link:
            req["link"] = args.link
        ans = request(path, req, timeout=args.timeout + 5)
        failed += ans["outcome"] != "committed"
        if args.json:
            print(json.dumps({"data": item, "tid": ans["tid"], "outcome": ans["outcome"]}))
        else:
            print(f"tid {ans['tid']}: {ans['outcome']}")
    return 1 if failed else 0


def _post(args: argparse.Namespace, path: str) -> int:
    """`oae send --no-wait`: queue the transfers; their outcomes come from `oae outcomes`."""
    items = [d if args.hex else d.encode().hex() for d in args.data]
    req: dict[str, Any] = {"op": "post", "items": items}
    if args.key is not None:
        req["keys"] = list(range(args.key, args.key + len(items)))
    if args.link:
        req["link"] = args.link
    ans = request(path, req)
    if args.json:
        print(json.dumps({"queued": ans["queued"], "last_key": ans["last_key"]}))
    else:
        print(f"queued {ans['queued']}; read the outcomes with `oae outcomes`")
    return 0


def _taking_request(args: argparse.Namespace, op: str) -> list[dict[str, Any]]:
    if args.count < 1 or args.timeout < 0:
        raise UsageError("--count must be >= 1 and --timeout >= 0")
    req: dict[str, Any] = {"op": op, "max": args.count, "timeout": args.timeout}
    if args.link:
        req["link"] = args.link
    return request(_path(args), req, timeout=args.timeout + 5)["messages" if op == "recv"
                                                                else "outcomes"]  # fmt: skip


def run_recv(args: argparse.Namespace) -> int:
    msgs = _taking_request(args, "recv")
    for m in msgs:
        if args.json:
            print(json.dumps(m))
        else:
            shown = m["text"] if m["text"].isprintable() else "0x" + m["hex"]
            again = "  (redelivered)" if m["redelivered"] else ""
            print(f"tid {m['tid']}: {shown}{again}")
    if not msgs and not args.json:
        print("(nothing received)", file=sys.stderr)
    return 0


def run_outcomes(args: argparse.Namespace) -> int:
    outs = _taking_request(args, "outcomes")
    for o in outs:
        if args.json:
            print(json.dumps(o))
        else:
            key = f" key {o['key']}" if o["key"] is not None else ""
            again = "  (restored)" if o["restored"] else ""
            print(f"tid {o['tid']}{key}: {o['outcome']}{again}")
    if not outs and not args.json:
        print("(no outcome waiting)", file=sys.stderr)
    return 0
