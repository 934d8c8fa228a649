"""Bring testbeds up and down, list them, run commands in nodes, impair links at run time,
and clean up after crashes.

State of running testbeds lives in a state directory (default /run/oae/testbeds, env
OAE_STATE_DIR), one subdirectory per testbed holding state.json, the bridge's control
socket and log. `clean` does not trust that state: it reads the kernel (namespaces and
links named with our prefix) and /proc (bridge processes of our prefix).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from oae.errors import UsageError
from oae.testbed import kernel, netem
from oae.testbed.impair import Impairment, apply_settings
from oae.testbed.topology import NAME_RE, Topology

STATE_DIR_ENV = "OAE_STATE_DIR"
DEFAULT_STATE_DIR = "/run/oae/testbeds"
BRIDGE_MODULE = "oae.testbed.bridge"
BRIDGE_START_TIMEOUT = 10.0
UNIX_PATH_MAX = 107
NODE_START_TIMEOUT = 30.0


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def node_ns(prefix: str, testbed: str, node: str) -> str:
    return f"{prefix}-{testbed}-{node}"


def bridge_ns(prefix: str, testbed: str) -> str:
    # '.' cannot occur in node names, so this never collides with a node namespace.
    return f"{prefix}-{testbed}.br"


@dataclass(frozen=True)
class Testbed:
    """A running testbed as recorded in its state file."""

    state: dict[str, Any]

    @property
    def name(self) -> str:
        return self.state["name"]

    @property
    def prefix(self) -> str:
        return self.state["prefix"]

    def ns(self, node: str) -> str | None:
        """The node's namespace (None for a real-NIC node, which lives in the root one)."""
        nodes = self.state["nodes"]
        if node not in nodes:
            raise UsageError(
                f"testbed {self.name!r} has no node {node!r} (nodes: {_short(list(nodes))})"
            )
        return nodes[node]["ns"]

    def link(self, name: str) -> dict[str, Any]:
        for link in self.state["links"]:
            if link["name"] == name or f"{link['b']}-{link['a']}" == name:
                return link
        names = [lk["name"] for lk in self.state["links"]]
        raise UsageError(f"testbed {self.name!r} has no link {name!r} (links: {_short(names)})")

    def namespaces(self) -> list[str]:
        out = [n["ns"] for n in self.state["nodes"].values() if n["ns"]]
        if self.state.get("bridge_ns"):
            out.append(self.state["bridge_ns"])
        return out


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def load(name: str) -> Testbed:
    path = state_dir() / name / "state.json"
    try:
        return Testbed(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsageError(f"no testbed named {name!r} (see `oae testbed list`)") from None
    except ValueError as exc:
        raise UsageError(f"{path}: unreadable state ({exc}); use `oae testbed clean`") from None


def up(
    topo: Topology,
    name: str | None = None,
    start_nodes: bool = False,
    node_args: tuple[str, ...] = (),
) -> Testbed:
    """Create the namespaces, veths and bridge of `topo`, and with `start_nodes` an
    `oae node` in every node namespace (extra `node_args` appended); on any failure or
    Ctrl-C, remove what was created and re-raise."""
    name = name or topo.name
    if not NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: 1-24 characters of [A-Za-z0-9_]")
    kernel.require_root("oae testbed up")
    prefix = kernel.new_run_prefix()
    tb_dir = state_dir() / name
    if (tb_dir / "state.json").exists():
        raise UsageError(f"testbed {name!r} is already up (`oae testbed down {name}` first)")
    control = str(tb_dir / "control.sock")
    if len(control) > UNIX_PATH_MAX:
        raise UsageError(f"{STATE_DIR_ENV}: path too long for a Unix socket: {control}")
    hosts = topo.shape == "hosts"
    if start_nodes and hosts:
        raise UsageError("--start-nodes: on real NICs run `oae node` on each host yourself")
    use_netem = _netem_links(topo)
    bridged = [lk for lk in topo.links if lk.impair is not None and lk.name not in use_netem]
    tb_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "name": name,
        "prefix": prefix,
        "topology": topo.name,
        "shape": topo.shape,
        "seed": topo.seed,
        "created": time.time(),
        "nodes": {n: {"ns": None if hosts else node_ns(prefix, name, n)} for n in topo.nodes},
        "links": [],
        "bridge_ns": bridge_ns(prefix, name) if bridged else None,
        "bridge_pid": None,
        "control": control,
        "node_pids": {},
    }
    tb = Testbed(state)
    taken = [ns for ns in tb.namespaces() if kernel.netns_exists(ns)]
    if taken:
        raise UsageError(f"network namespace {taken[0]!r} already exists")
    with _Interrupts() as guard:
        try:
            if hosts:
                _up_hosts(topo, state)
            else:
                for ns in tb.namespaces():
                    guard.check()
                    kernel.create_netns(ns)
                state["links"] = _wire(topo, state, use_netem, guard.check)
            _write_state(tb_dir / "state.json", state)
            if bridged:
                state["bridge_pid"] = _start_bridge(tb, tb_dir, guard.check)
                _write_state(tb_dir / "state.json", state)
            if start_nodes:
                _start_nodes(tb, tb_dir, node_args, guard.check)
                _write_state(tb_dir / "state.json", state)
            guard.check()
        except BaseException:
            # By name, not by bookkeeping: a failure can come between creating a namespace
            # or starting a process and recording it. (Signals stay deferred meanwhile.)
            _stop_processes(state)
            for ns in tb.namespaces():
                kernel.remove_netns(ns)
            shutil.rmtree(tb_dir, ignore_errors=True)
            raise
    return tb


class _Interrupts:
    """Defers SIGINT and SIGTERM during `up` (main thread only) to checkpoints between
    kernel operations, where `check()` raises KeyboardInterrupt, so that `up` rolls back
    cleanly and a signal never lands inside pyroute2's event loop. A signal that comes
    after the last checkpoint is delivered again once the handlers are restored."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: object) -> None:
        self.pending = signum

    def check(self) -> None:
        if self.pending is not None:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        if self.pending is not None and exc[0] is None:
            signal.raise_signal(self.pending)


def _up_hosts(topo: Topology, state: dict[str, Any]) -> None:
    """Real NICs: record which of the named interfaces exist here and bring them up."""
    local = []
    with IPRoute() as ipr:
        for node, ifname in topo.interfaces.items():
            idx = ipr.link_lookup(ifname=ifname)
            state["nodes"][node]["interface"] = ifname
            state["nodes"][node]["local"] = bool(idx)
            if idx:
                ipr.link("set", index=idx[0], state="up")
                local.append(node)
    if not local:
        names = ", ".join(topo.interfaces.values())
        raise UsageError(f"none of the interfaces {names} exists on this host")
    lk = topo.links[0]
    state["links"] = [
        {
            "name": lk.name,
            "a": lk.a,
            "b": lk.b,
            "if_a": topo.ifname(lk.a, lk),
            "if_b": topo.ifname(lk.b, lk),
            "bridge": None,
            "impair": None,
            "seed": lk.seed,
        }
    ]


def _netem_links(topo: Topology) -> set[str]:
    """Names of the impaired links that get netem instead of the bridge (see
    oae.testbed.netem): all with impairer "netem" (an error without kernel netem), those
    netem can express with "auto" on a kernel that has it, none with "bridge"."""
    impaired = {lk.name: lk.impair for lk in topo.links if lk.impair is not None}
    if not impaired or topo.impairer == "bridge":
        return set()
    have = netem.available()
    if topo.impairer == "auto":
        return {name for name, spec in impaired.items() if have and netem.expressible(spec)}
    if not have:
        raise UsageError(
            'impairer = "netem": this kernel has no tc netem (sch_netem); use "bridge" or "auto"'
        )
    for name, spec in impaired.items():
        try:
            netem.netem_options(spec)
        except UsageError as exc:
            raise UsageError(f"link {name}: {exc}") from None
    return set(impaired)


def _wire(
    topo: Topology, state: dict[str, Any], use_netem: set[str], check: Callable[[], None]
) -> list[dict[str, Any]]:
    """Create every link's veth(s), bring all interfaces up and install netem qdiscs;
    returns the link records. `check()` runs between kernel operations."""
    nodes, mid = state["nodes"], state["bridge_ns"]
    records: list[dict[str, Any]] = []
    up_in: dict[str, list[str]] = {}
    for i, lk in enumerate(topo.links):
        ns_a, ns_b = nodes[lk.a]["ns"], nodes[lk.b]["ns"]
        if_a, if_b = topo.ifname(lk.a, lk), topo.ifname(lk.b, lk)
        rec: dict[str, Any] = {
            "name": lk.name,
            "a": lk.a,
            "b": lk.b,
            "if_a": if_a,
            "if_b": if_b,
            "bridge": None,
            "impair": None,
            "impairer": None,
            "seed": lk.seed,
        }
        check()
        if lk.impair is None or lk.name in use_netem:
            kernel.add_veth(ns_a, if_a, ns_b, if_b)
            if lk.impair is not None:
                rec["impairer"], rec["impair"] = "netem", lk.impair.to_json()
        else:
            br = {"ns": mid, "if_a": f"l{i}a", "if_b": f"l{i}b"}
            kernel.add_veth(ns_a, if_a, mid, br["if_a"])
            kernel.add_veth(mid, br["if_b"], ns_b, if_b)
            rec["bridge"], rec["impair"] = br, lk.impair.to_json()
            rec["impairer"] = "bridge"
            up_in.setdefault(mid, []).extend([br["if_a"], br["if_b"]])
        up_in.setdefault(ns_a, []).append(if_a)
        up_in.setdefault(ns_b, []).append(if_b)
        records.append(rec)
    for ns, ifnames in up_in.items():
        check()
        macs = kernel.links_up(ns, ifnames)
        for rec in records:
            for end in ("a", "b"):
                if nodes[rec[end]]["ns"] == ns and rec[f"if_{end}"] in macs:
                    rec[f"mac_{end}"] = macs[rec[f"if_{end}"]]
    for rec in records:
        if rec["impairer"] == "netem":
            for end in ("a", "b"):  # each end's egress is one direction
                netem.apply(nodes[rec[end]]["ns"], rec[f"if_{end}"],
                            Impairment.from_json(rec["impair"]))  # fmt: skip
    return records


def _start_bridge(tb: Testbed, tb_dir: Path, check: Callable[[], None]) -> int:
    """Start the bridge detached (own session, survives our exit) and wait until its
    control socket answers."""
    log = open(tb_dir / "bridge.log", "ab")
    with log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                BRIDGE_MODULE,
                "--ns",
                tb.state["bridge_ns"],
                "--state",
                str(tb_dir / "state.json"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": _pythonpath()},
        )
    deadline = time.monotonic() + BRIDGE_START_TIMEOUT
    while time.monotonic() < deadline:
        check()
        if proc.poll() is not None:
            tail = (tb_dir / "bridge.log").read_text(errors="replace").strip().splitlines()
            raise UsageError(f"impairing bridge exited at start: {tail[-1] if tail else '?'}")
        with contextlib.suppress(OSError):
            if control(tb, {"cmd": "ping"}).get("ok"):
                return proc.pid
        time.sleep(0.05)
    proc.kill()
    raise UsageError(f"impairing bridge did not answer within {BRIDGE_START_TIMEOUT:.0f} s")


def _start_nodes(
    tb: Testbed, tb_dir: Path, node_args: tuple[str, ...], check: Callable[[], None]
) -> None:
    """`oae node` on all interfaces of each node namespace, detached, logging JSON lines to
    nodes/NODE.log, control socket nodes/NODE.sock, no durable state (the testbed's
    lifetime is the node's). Waits until every node's control socket exists; fails if a
    node exits first or NODE_START_TIMEOUT passes."""
    nodes_dir = tb_dir / "nodes"
    nodes_dir.mkdir(exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for node, info in tb.state["nodes"].items():
        ifaces = [lk[f"if_{end}"] for lk in tb.state["links"] for end in ("a", "b")
                  if lk[end] == node]  # fmt: skip
        argv = [sys.executable, "-m", "oae.cli", "node", "--netns", info["ns"]]
        for iface in ifaces:
            argv += ["--iface", iface]
        argv += ["--no-state", "--json", "--control", str(nodes_dir / f"{node}.sock")]
        with open(nodes_dir / f"{node}.log", "ab") as log:
            procs[node] = subprocess.Popen(
                [*argv, *node_args], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, env={**os.environ, "PYTHONPATH": _pythonpath()},
            )  # fmt: skip
        tb.state["node_pids"][node] = procs[node].pid
        check()
    deadline = time.monotonic() + NODE_START_TIMEOUT
    waiting = dict(procs)
    while waiting:
        check()
        for node, proc in list(waiting.items()):
            if proc.poll() is not None:
                log = (nodes_dir / f"{node}.log").read_text(errors="replace").strip()
                last = log.splitlines()[-1] if log else "?"
                raise UsageError(f"oae node in {node} exited at start: {last}")
            if (nodes_dir / f"{node}.sock").exists():
                del waiting[node]
        if time.monotonic() > deadline:
            raise UsageError(
                f"oae node did not start within {NODE_START_TIMEOUT:.0f} s in "
                f"{_short(sorted(waiting))} (logs in {nodes_dir})"
            )
        time.sleep(0.05)


def _pythonpath() -> str:
    """Make the bridge import this very oae package, also when run from a source tree."""
    here = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)


def control(tb: Testbed, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request/reply on the bridge's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(tb.state["control"])
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = s.makefile("rb").readline()
    return json.loads(reply)


def _pid_alive(pid: int | None) -> bool:
    """Running (not a zombie: a detached bridge's parent may be slow to reap it)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _stop_processes(state: dict[str, Any]) -> list[str]:
    """Stop the testbed's nodes and its bridge — those recorded in the state and any
    other process of ours on its namespaces; returns what was stopped."""
    tb = Testbed(state)
    recorded = {pid: f"node:{n}" for n, pid in state.get("node_pids", {}).items()}
    if state.get("bridge_pid"):
        recorded[state["bridge_pid"]] = "bridge"
    found = set(process_pids(f"{tb.prefix}-{tb.name}-"))  # node namespaces
    if state.get("bridge_ns"):
        found |= set(process_pids(state["bridge_ns"]))
    pids = sorted(found | {p for p in recorded if _is_our_process(p, tb.prefix)})
    pids = [p for p in pids if _pid_alive(p)]
    _terminate(pids)
    return [f"{recorded.get(pid, 'process')}:{pid}" for pid in pids]


def _terminate(pids: list[int], timeout: float = 3.0) -> None:
    """SIGTERM all at once, wait for them together, SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(map(_pid_alive, pids)):
        for pid in pids:
            _reap(pid)
        time.sleep(0.02)
    for pid in pids:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_our_process(pid: int, prefix: str) -> bool:
    """Is `pid` a bridge (`-m oae.testbed.bridge --ns NS`) or a node (`-m oae.cli node
    --netns NS`) for a namespace NS starting with `prefix`? Decided by the exact command
    line, never by a loose name match."""
    argv = _cmdline(pid)
    if BRIDGE_MODULE in argv:
        flag = "--ns"
    elif argv[1:4] == ["-m", "oae.cli", "node"]:
        flag = "--netns"
    else:
        return False
    i = argv.index(flag) if flag in argv else len(argv)
    return i + 1 < len(argv) and argv[i + 1].startswith(prefix)


def process_pids(prefix: str) -> list[int]:
    """Running bridges and testbed nodes of namespaces starting with `prefix` (from /proc)."""
    me = os.getpid()
    return [
        int(e) for e in os.listdir("/proc")
        if e.isdigit() and int(e) != me and _is_our_process(int(e), prefix)
    ]  # fmt: skip


def down(name: str) -> list[str]:
    """Stop nodes and bridge, remove the namespaces and the state; returns what was
    removed."""
    tb = load(name)
    if tb.state["shape"] != "hosts":
        kernel.require_root("oae testbed down")
    removed = _stop_processes(tb.state)
    for ns in tb.namespaces():
        if kernel.remove_netns(ns):
            removed.append(f"netns:{ns}")
    shutil.rmtree(state_dir() / name, ignore_errors=True)
    return removed


def list_testbeds() -> list[dict[str, Any]]:
    """Testbeds with a state file, plus `orphan` entries for prefixes found in the kernel
    without one (e.g. after a crash: remove them with `oae testbed clean`)."""
    out: list[dict[str, Any]] = []
    known: set[str] = set()
    root = state_dir()
    for path in sorted(root.glob("*/state.json")) if root.is_dir() else []:
        try:
            tb = Testbed(json.loads(path.read_text()))
        except ValueError:
            continue
        nss = tb.namespaces()
        known.update(nss)
        out.append(
            {
                "name": tb.name,
                "prefix": tb.prefix,
                "shape": tb.state["shape"],
                "nodes": len(tb.state["nodes"]),
                "links": len(tb.state["links"]),
                "bridged_links": sum(1 for lk in tb.state["links"] if lk["bridge"]),
                "bridge_running": _pid_alive(tb.state.get("bridge_pid")),
                "nodes_running": sum(map(_pid_alive, tb.state.get("node_pids", {}).values())),
                "namespaces_present": sum(1 for ns in nss if kernel.netns_exists(ns)),
            }
        )
    orphans: dict[str, int] = {}
    for ns in kernel.list_netns(kernel.BASE_PREFIX):
        if ns not in known:
            pfx = ns.split("-", 1)[0]
            orphans[pfx] = orphans.get(pfx, 0) + 1
    for pfx, count in sorted(orphans.items()):
        out.append({"name": None, "prefix": pfx, "orphan": True, "namespaces_present": count})
    return out


def clean(prefix: str = kernel.BASE_PREFIX, dry_run: bool = False) -> list[str]:
    """Remove everything carrying `prefix`: bridge and node processes, namespaces, root links, and
    state entries of testbeds with that prefix. Reads the kernel, so it works after a
    crash; never touches a name without the prefix. `dry_run` only lists them."""
    if not prefix.startswith(kernel.BASE_PREFIX):
        raise UsageError(f"--prefix {prefix!r}: must start with {kernel.BASE_PREFIX!r}")
    kernel.require_root("oae testbed clean")
    removed = []
    pids = process_pids(prefix)
    if not dry_run:
        _terminate(pids)
    removed += [f"process:{pid}" for pid in pids]
    removed += kernel.clean(prefix, dry_run)
    root = state_dir()
    for path in sorted(root.glob("*/state.json")) if root.is_dir() else []:
        try:
            pfx = json.loads(path.read_text())["prefix"]
        except (ValueError, KeyError):
            pfx = None
        if pfx is None or pfx.startswith(prefix):
            if not dry_run:
                shutil.rmtree(path.parent, ignore_errors=True)
            removed.append(f"state:{path.parent.name}")
    return removed


def impair(name: str, link: str, settings: list[str]) -> dict[str, Any]:
    """Change a bridged link's impairments at run time; with no settings, report them and
    the link's counters."""
    tb = load(name)
    rec = tb.link(link)
    if rec.get("impairer") == "netem":
        return _impair_netem(tb, rec, settings)
    if not rec["bridge"]:
        raise UsageError(
            f"link {rec['name']!r} is a direct veth; give it an impair table in the file "
            '(even empty) or set `bridge = "all"` in [topology] to impair it at run time'
        )
    try:
        reply = control(tb, {"cmd": "get", "link": rec["name"]})
        if settings:
            spec = apply_settings(Impairment.from_json(reply["impair"]), settings)
            reply = control(tb, {"cmd": "set", "link": rec["name"], "impair": spec.to_json()})
    except OSError as exc:
        raise UsageError(
            f"testbed {name!r}: the impairing bridge does not answer ({exc.strerror or exc})"
        ) from None
    if not reply.get("ok"):
        raise UsageError(f"testbed {name!r}: bridge: {reply.get('error')}")
    reply.pop("ok")
    return {"link": rec["name"], "impairer": "bridge", **reply}


def _impair_netem(tb: Testbed, rec: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """Run-time change of a netem link: replace the qdisc on both ends, record the spec."""
    spec = apply_settings(Impairment.from_json(rec["impair"]), settings)
    if settings:
        for end in ("a", "b"):
            netem.apply(tb.state["nodes"][rec[end]]["ns"], rec[f"if_{end}"], spec)
        rec["impair"] = spec.to_json()
        _write_state(state_dir() / tb.name / "state.json", tb.state)
    return {"link": rec["name"], "impairer": "netem", "impair": spec.to_json()}


@contextlib.contextmanager
def running(
    topo: Topology,
    name: str | None = None,
    start_nodes: bool = False,
    node_args: tuple[str, ...] = (),
) -> Iterator[Testbed]:
    """A testbed for the duration of a with-block (tests, scripts); down on any exit."""
    tb = up(topo, name, start_nodes, node_args)
    try:
        yield tb
    finally:
        down(tb.name)


def exec_in(name: str, node: str, argv: list[str]) -> int:
    """Run argv inside the node's namespace (a real-NIC node: on this host) with env vars
    OAE_TESTBED and OAE_NODE set; returns its exit status."""
    if not argv:
        raise UsageError("exec: no command given (oae testbed exec NAME NODE -- CMD ...)")
    tb = load(name)
    ns = tb.ns(node)
    if ns is None and not tb.state["nodes"][node].get("local"):
        raise UsageError(f"node {node!r} is on the other host")
    ctx = kernel.in_netns(ns) if ns else contextlib.nullcontext()
    try:
        with ctx:
            # the child inherits this thread's namespace; OAE_TESTBED/OAE_NODE tell it where
            env = {**os.environ, "OAE_TESTBED": name, "OAE_NODE": node}
            proc = subprocess.Popen(argv, env=env)
    except FileNotFoundError:
        raise UsageError(f"exec: command not found: {argv[0]}") from None
    return proc.wait()
