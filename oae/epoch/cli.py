"""`oae epoch propose|status|wait`: drive the epoch layer of a running `oae node --epochs`
through its control socket (oae.epoch.daemon; docs/two-hosts.md §6)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from oae.errors import UsageError
from oae.runtime.control import find_control_path, request

RPC_SLACK = 5.0  # seconds a request may take beyond the wait it asks for


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "epoch",
        help="propose, inspect and wait for epoch transitions of a running `oae node --epochs`",
        description=(
            "Talk to the epoch layer of a running `oae node --epochs` (bilateral "
            "convergence, docs/convergence.md): `propose` starts a transition to the next "
            "epoch from that node and waits until it knows Conv(P, e+1) (every node "
            "committed, every link switched) or the transition aborted; `status` shows the "
            "committed epoch, each link's epoch, the wave in progress and the last "
            "convergence known; `wait E` waits until the node has committed epoch E."
        ),
    )
    cmds = p.add_subparsers(dest="epoch_command", metavar="COMMAND", required=True)
    for name, helptext in (
        ("propose", "start a transition to the next epoch (or several: --to E) and wait "
                    "for its outcome"),
        ("status", "the node's committed epoch, link epochs, wave in progress, Conv known"),
        ("wait", "wait until the node has committed an epoch"),
    ):  # fmt: skip
        c = cmds.add_parser(name, help=helptext, description=helptext)
        c.add_argument("--control", metavar="PATH",
                       help="the node's control socket (default: derived from --iface/"
                       "--netns, else the only socket in /run/oae)")  # fmt: skip
        c.add_argument("--iface", help="find the node that runs on this interface")
        c.add_argument("--netns", help="... in this network namespace")
        c.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name != "status":
            c.add_argument("--timeout", type=float, default=60.0,
                           help="seconds to wait in all (default 60)")  # fmt: skip
        if name == "propose":
            c.add_argument("--to", type=int, metavar="E",
                           help="propose again (after aborts too) until the node has "
                           "committed epoch E")  # fmt: skip
            c.add_argument("--no-wait", action="store_true",
                           help="print the wave and return at once")  # fmt: skip
            c.set_defaults(func=run_propose)
        elif name == "wait":
            c.add_argument("epoch", type=int, metavar="E", help="the epoch to wait for")
            c.set_defaults(func=run_wait)
        else:
            c.set_defaults(func=run_status)


def _path(args: argparse.Namespace) -> str:
    return find_control_path(args.control, args.iface, args.netns)


def _status(path: str) -> dict[str, Any]:
    return request(path, {"op": "epoch-status"})["status"]


def _wave(w: Any) -> str:
    return "(" + ",".join(map(str, w)) + ")" if isinstance(w, list) else str(w)


def run_status(args: argparse.Namespace) -> int:
    st = _status(_path(args))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    names = {ln["label"]: ln["iface"] for ln in st["links"]}
    head = f"node {st['node_id']} ({st['algorithm']})  epoch {st['epoch']}"
    if st.get("committed"):
        head += f" committed by wave {_wave(st['committed'])}"
    print(head + f"  pid {st['pid']}  cpu {st['cpu_s']:.2f} s")
    w = st.get("wave")
    if w:
        state = "prepared" if w["prepared"] else "joining"
        parent = names.get(w["parent"], "- (initiator)") if w["parent"] is not None else "-"
        waiting = ", ".join(names.get(n, str(n)) for n in w["waiting"]) or "nobody"
        print(f"wave in progress {_wave(w['wave'])}: {state}, parent {parent}, waiting for "
              f"{waiting}")  # fmt: skip
    elif "wave" in st:
        print("wave in progress: none")
    if "converged" in st:
        conv = st["converged"]
        print(f"Conv known here: {'wave ' + _wave(conv) if conv else '-'}")
    for ln in st["links"]:
        epoch = ln.get("epoch")
        state = "up" if ln.get("up") else "down"
        extra = f"  told {ln['told']} heard {ln['heard']}" if "told" in ln else ""
        shown = "held" if epoch is None else epoch
        print(f"link {ln['iface']} [{ln['label']}]  {state}{extra}  epoch {shown}")
    c = st.get("counters", {})
    print(f"application frames received {c.get('app_received', 0)}, refused as mixed-epoch "
          f"{c.get('mixed_app_frames', 0)}")  # fmt: skip
    return 0


def _propose_once(path: str, deadline: float) -> dict[str, Any]:
    """One transition from this node: propose (retried while the node is still busy with
    an earlier wave), then its outcome; raises UsageError when `deadline` passes."""
    while True:
        ans = request(path, {"op": "epoch-propose"})
        if ans.get("wave") is not None:
            break
        if time.monotonic() > deadline:
            raise UsageError(f"the node stayed busy: {ans.get('busy')}")
        time.sleep(0.05)
    left = max(0.0, deadline - time.monotonic())
    out = request(path, {"op": "epoch-outcome", "wave": ans["wave"], "timeout": left},
                  timeout=left + RPC_SLACK)  # fmt: skip
    ms = None if out["at"] is None else round((out["at"] - ans["at"]) * 1e3, 3)
    return {"wave": ans["wave"], "outcome": out["outcome"], "convergence_ms": ms}


def _say(args: argparse.Namespace, r: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(r), flush=True)
    elif r["outcome"] == "committed":
        epoch = r["wave"][0] if isinstance(r["wave"], list) else r["wave"] >> 16
        print(f"wave {_wave(r['wave'])}: committed, Conv(P, {epoch}) known here "
              f"{r['convergence_ms']} ms after the proposal", flush=True)  # fmt: skip
    elif r["outcome"] == "aborted":
        print(f"wave {_wave(r['wave'])}: aborted", flush=True)
    else:
        print(f"wave {_wave(r['wave'])}: undecided within the timeout", flush=True)


def run_propose(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    path = _path(args)
    deadline = time.monotonic() + args.timeout
    if args.no_wait:
        if args.to is not None:
            raise UsageError("--no-wait proposes one transition; drop --to")
        ans = request(path, {"op": "epoch-propose"})
        if ans.get("wave") is None:
            raise UsageError(f"the node is busy: {ans.get('busy')}")
        print(json.dumps({"wave": ans["wave"]}) if args.json else f"proposed {_wave(ans['wave'])}")
        return 0
    if args.to is None:
        r = _propose_once(path, deadline)
        _say(args, r)
        return 0 if r["outcome"] == "committed" else 1
    if args.to <= _status(path)["epoch"]:
        raise UsageError(f"--to {args.to}: the node has committed epoch "
                         f"{_status(path)['epoch']} already")  # fmt: skip
    while _status(path)["epoch"] < args.to:
        r = _propose_once(path, deadline)
        _say(args, r)
        if r["outcome"] is None:
            return 1
    return 0


def run_wait(args: argparse.Namespace) -> int:
    if args.timeout < 0:
        raise UsageError("--timeout must be >= 0")
    req = {"op": "epoch-wait", "epoch": args.epoch, "timeout": args.timeout}
    ans = request(_path(args), req, timeout=args.timeout + RPC_SLACK)
    if args.json:
        print(json.dumps(ans))
    elif ans["reached"]:
        print(f"epoch {ans['epoch']} committed")
    else:
        print(f"epoch {ans['epoch']}: epoch {args.epoch} not committed within {args.timeout:g} s")
    return 0 if ans["reached"] else 1
