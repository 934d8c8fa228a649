"""`oae testbed ...`: namespace testbeds from topology files (see docs/testbeds.md)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from oae.errors import UsageError
from oae.testbed import kernel, manager, topology
from oae.testbed.impair import Impairment

EPILOG = """\
examples:
  oae testbed up netns/ring.toml --nodes 16        # namespaces oaeXXXX-ring-n0..n15
  oae testbed exec ring n3 -- ip -br link          # interfaces to-n2, to-n4
  oae testbed impair ring n0-n1 loss=5% delay=10ms # a bridged link, at run time
  oae testbed down ring
  oae testbed clean                                # everything named oae*, after a crash

State lives in /run/oae/testbeds (env OAE_STATE_DIR). Every namespace and link created
starts with a run prefix 'oae' + 4 hex digits (env OAE_RUN_PREFIX forces one).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "testbed",
        help="namespace testbeds: up, down, list, exec, check, impair, clean",
        description="Build network-namespace testbeds from TOML topology files, impair "
        "their links with a user-space bridge (no netem needed), and clean up safely.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = p.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)

    q = tsub.add_parser("up", help="create a testbed from a topology file")
    q.add_argument("file", help="topology file (TOML), e.g. netns/ring.toml")
    q.add_argument("--name", help="testbed name (default: the file's topology.name)")
    q.add_argument("--nodes", type=int, help="size of a parametric shape (ring, mesh, ...)")
    q.add_argument(
        "--start-nodes",
        action="store_true",
        help="start `oae node` on all interfaces of every node (log and control socket "
        "in the state dir: nodes/NODE.log, nodes/NODE.sock; no durable state)",
    )
    q.add_argument(
        "--node-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for each `oae node`, repeatable: --node-arg=--window=8",
    )
    q.add_argument("--json", action="store_true", help="print the testbed state as JSON")
    q.set_defaults(func=_up)

    q = tsub.add_parser("down", help="remove a testbed (namespaces, bridge, state)")
    q.add_argument("name", help="testbed name (see `oae testbed list`)")
    q.add_argument("--json", action="store_true", help="print what was removed as JSON")
    q.set_defaults(func=_down)

    q = tsub.add_parser("list", help="list testbeds, and orphaned objects of crashed runs")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_list)

    q = tsub.add_parser(
        "exec",
        help="run a command inside a node's namespace",
        description="Run CMD inside NODE's network namespace; exits with CMD's status.",
    )
    q.add_argument("name", help="testbed name (see `oae testbed list`)")
    q.add_argument("node", help="node name, e.g. n3")
    q.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    q.set_defaults(func=_exec)

    q = tsub.add_parser(
        "check",
        help="send a raw frame each way over every link and report which pass",
        description="Sends an EtherType 0x88B5 probe frame each way over every link "
        "(3 attempts, as impaired links may drop one); exits 1 if any link fails.",
    )
    q.add_argument("name", help="testbed name (see `oae testbed list`)")
    q.add_argument("--timeout", type=float, default=1.0, help="seconds per attempt")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_check)

    q = tsub.add_parser(
        "impair",
        help="change a bridged link's impairments at run time (or show them)",
        description="KEY=VALUE settings: loss=5% duplicate=1% reorder=2% corrupt=0.1% "
        "delay=10ms jitter=2ms rate=10mbit|none limit=1000 partition=on|off. With no "
        "settings, print the link's impairments and counters.",
    )
    q.add_argument("name", help="testbed name (see `oae testbed list`)")
    q.add_argument("link", help="link name, e.g. n0-n1")
    q.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="see above")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_impair)

    q = tsub.add_parser(
        "clean",
        help="remove every namespace, link, bridge and state entry carrying a prefix",
        description="Reads kernel state (not only state files), so it also cleans up "
        "after a crash. Only names starting with PREFIX are touched. The default prefix "
        "'oae' matches every oae run on this host, including other users' live testbeds: "
        "name one run's prefix (see `oae testbed list`) or look first with --dry-run.",
    )
    q.add_argument("--prefix", default=kernel.BASE_PREFIX, help="default: %(default)s")
    q.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_clean)


def _print(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, indent=1) if args.json else text)


def _up(args: argparse.Namespace) -> int:
    if args.nodes is not None and args.nodes < 1:
        raise UsageError(f"--nodes {args.nodes}: must be at least 1")
    topo = topology.load(args.file, args.nodes)
    t0 = time.monotonic()
    if args.node_arg and not args.start_nodes:
        raise UsageError("--node-arg needs --start-nodes")
    tb = manager.up(topo, args.name, args.start_nodes, tuple(args.node_arg))
    took = time.monotonic() - t0
    st = tb.state
    bridged = sum(1 for lk in st["links"] if lk["bridge"])
    _print(
        args,
        {**st, "seconds": round(took, 3)},
        f"testbed {tb.name} up: {len(st['nodes'])} nodes, {len(st['links'])} links "
        f"({bridged} via impairing bridge), {len(st['node_pids'])} nodes running, "
        f"prefix {tb.prefix}, {took:.2f} s",
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    removed = manager.down(args.name)
    took = time.monotonic() - t0
    _print(
        args,
        {"name": args.name, "removed": removed, "seconds": round(took, 3)},
        f"testbed {args.name} down: removed {len(removed)} objects, {took:.2f} s",
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = manager.list_testbeds()
    lines = []
    for r in rows:
        if r.get("orphan"):
            lines.append(
                f"(orphan)  prefix {r['prefix']}: {r['namespaces_present']} namespaces "
                "without state; `oae testbed clean --prefix "
                f"{r['prefix']}` removes them"
            )
        else:
            lines.append(
                f"{r['name']:<16} {r['shape']:<8} {r['nodes']:>4} nodes {r['links']:>5} links "
                f"({r['bridged_links']} bridged, bridge "
                f"{'running' if r['bridge_running'] else 'none'}, "
                f"{r['nodes_running']} oae node running) prefix {r['prefix']}"
            )
    _print(args, rows, "\n".join(lines) if lines else "no testbeds")
    return 0


def _exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    return manager.exec_in(args.name, args.node, cmd)


def _check(args: argparse.Namespace) -> int:
    from oae.testbed import probe

    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: must be positive")
    tb = manager.load(args.name)
    if tb.state["shape"] == "hosts":
        raise UsageError("check works on namespace testbeds; real NICs span two hosts")
    results = probe.probe_all(tb, args.timeout)
    bad = [name for name, ok in results.items() if not ok]
    _print(
        args,
        {"name": args.name, "links": results, "failed": bad},
        f"{len(results) - len(bad)}/{len(results)} links pass frames both ways"
        + (f"; failed: {', '.join(bad)}" if bad else ""),
    )
    return 1 if bad else 0


def _impair(args: argparse.Namespace) -> int:
    rep = manager.impair(args.name, args.link, args.settings)
    shown = Impairment.from_json(rep["impair"]).describe()
    lines = [f"{rep['link']}: {shown}"]
    if rep.get("impairer") == "netem":
        lines.append("  (tc netem: no counters)")
    else:
        for key, label in (("a_to_b", "a->b"), ("b_to_a", "b->a")):
            c = rep[key]
            lines.append(
                f"  {label} received {c['received']} sent {c['sent']} lost {c['lost']} "
                f"partitioned {c['partitioned']}"
            )
    _print(args, rep, "\n".join(lines))
    return 0


def _clean(args: argparse.Namespace) -> int:
    removed = manager.clean(args.prefix, args.dry_run)
    verb = "would remove " if args.dry_run else ""
    _print(
        args,
        {"prefix": args.prefix, "dry_run": args.dry_run, "removed": removed},
        "\n".join(verb + r for r in removed)
        if removed
        else f"nothing carrying prefix {args.prefix!r}",
    )
    return 0
