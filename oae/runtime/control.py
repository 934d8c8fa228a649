"""The node control socket: a Unix-domain stream socket speaking JSON lines.

Each request is one JSON object on one line, each answer one JSON object on one line:

    {"op": "status"}
        -> {"ok": true, "status": {"pid": ..., "links": [{...stats...}]}}
    {"op": "send", "data": "text" | "hex": "0a0b", "link": "eth1"?, "timeout": 10}
        -> {"ok": true, "tid": 7, "outcome": "committed"}
    {"op": "send", "items": ["0a0b", "0c"], "link": "eth1"?}     (in order, no timeout)
        -> {"ok": true, "outcomes": [[7, "committed"], [8, "aborted"]]}
    {"op": "post", "items": ["0a0b", "0c"], "keys": [41, 42]?, "link": "eth1"?}
        -> {"ok": true, "queued": 2, "last_key": 40}      (outcomes come from "outcomes")
    {"op": "recv", "max": 100, "timeout": 1.0, "link": "eth1"?}
        -> {"ok": true, "messages": [{"tid": 7, "hex": "...", "text": "...", "control": false,
                                      "redelivered": false}]}
    {"op": "outcomes", "max": 100, "timeout": 1.0, "link": "eth1"?}
        -> {"ok": true, "outcomes": [{"tid": 7, "key": 41, "outcome": "committed",
                                      "restored": false, "hex": ""}]}

`recv` and `outcomes` hand out what the link's application side holds (messages not yet
released, outcomes nobody waited for: posted transfers, sends that timed out, transfers
settled after a restart) and release / acknowledge it once the answer is written; if
writing fails it stays for the next request. With a state dir, what was not yet handed
out when the node crashed comes again after its restart (redelivered / restored).

A layer above the links adds ops of its own (`Node.ops`; the epoch layer's are listed in
oae/epoch/daemon.py). A bad request gets {"ok": false, "error": "<one line>"} and the
connection stays usable.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from oae.errors import OaeError, UsageError

if TYPE_CHECKING:
    from oae.runtime.node import Node

CONTROL_DIR = "/run/oae"
LINE_MAX = 64 * 1024


def default_control_path(iface: str, netns: str | None) -> str:
    """Where `oae node` listens unless told otherwise: one socket per namespace+interface."""
    return os.path.join(CONTROL_DIR, f"node-{netns or 'host'}-{iface}.sock")


def find_control_path(control: str | None, iface: str | None, netns: str | None) -> str:
    """The control socket a client should use: --control, else the default path of
    --iface/--netns, else the only node socket under /run/oae."""
    if control:
        return control
    if iface:
        return default_control_path(iface, netns)
    try:
        found = sorted(p for p in os.listdir(CONTROL_DIR) if p.endswith(".sock"))
    except FileNotFoundError:
        found = []
    if len(found) == 1:
        return os.path.join(CONTROL_DIR, found[0])
    if not found:
        raise UsageError(f"no running node found in {CONTROL_DIR}; start `oae node` or "
                         "pass --control PATH")  # fmt: skip
    raise UsageError(f"several nodes run ({', '.join(found)}); pick one with --control or "
                     "--iface/--netns")  # fmt: skip


def _message_json(m: Any) -> dict[str, Any]:
    text = m.payload.decode("utf-8", "replace")
    return {"tid": m.tid, "hex": m.payload.hex(), "text": text, "control": m.control,
            "redelivered": m.redelivered}  # fmt: skip


def _outcome_json(o: Any) -> dict[str, Any]:
    return {"tid": o.tid, "key": o.key, "outcome": o.status, "restored": o.restored,
            "hex": o.payload.hex()}  # fmt: skip


def _link_name(req: dict[str, Any]) -> str | None:
    name = req.get("link")
    if name is not None and not isinstance(name, str):
        raise UsageError('"link" must be an interface name')
    return name


def _hex_items(req: dict[str, Any]) -> list[bytes]:
    items = req.get("items")
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise UsageError('"items" must be a list of hex strings')
    try:
        return [bytes.fromhex(i) for i in items]
    except ValueError:
        raise UsageError('"items" holds a string that is not hex') from None


def _post(node: Node, req: dict[str, Any]) -> dict[str, Any]:
    """Queue transfers whose outcomes are read with "outcomes"."""
    if node.layered:
        raise UsageError("post goes around the epoch layer (frames untagged): use send")
    payloads = _hex_items(req)
    keys = req.get("keys")
    if keys is not None and (not isinstance(keys, list) or
                             not all(isinstance(k, int) and not isinstance(k, bool)
                                     for k in keys)):  # fmt: skip
        raise UsageError('"keys" must be a list of whole numbers, one per item')
    link = node.link(_link_name(req))
    link.post(payloads, keys=keys)
    return {"ok": True, "queued": len(payloads), "last_key": link.last_key}


def _taking(req: Any) -> bool:
    return isinstance(req, dict) and req.get("op") in ("recv", "outcomes")


async def _serve_taking(node: Node, req: dict[str, Any], stream: trio.SocketStream) -> None:
    """`recv` and `outcomes`: what is handed out is released / acknowledged only once the
    answer is written (and stays for the next request if writing it fails)."""
    link = node.link(_link_name(req))
    max_count = int(req.get("max", 100))
    timeout = float(req.get("timeout", 0.0))
    if max_count < 1 or timeout < 0:
        raise UsageError('"max" must be >= 1 and "timeout" >= 0')
    if req["op"] == "recv" and node.layered:  # the layer's in-memory inbox
        msgs = await node.recv(link.iface, max_count, timeout)
        await _answer(stream, {"ok": True, "messages": [_message_json(m) for m in msgs]})
    elif req["op"] == "recv":
        async with link.taking_messages(max_count, timeout) as msgs:
            await _answer(stream, {"ok": True, "messages": [_message_json(m) for m in msgs]})
    else:
        async with link.taking_outcomes(max_count, timeout) as outs:
            await _answer(stream, {"ok": True, "outcomes": [_outcome_json(o) for o in outs]})


async def _answer(stream: trio.SocketStream, answer: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(answer).encode() + b"\n")


async def _handle(node: Node, req: Any) -> dict[str, Any]:
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise UsageError('a request is a JSON object with an "op" string')
    op = req["op"]
    link_name = _link_name(req)
    if op == "status":
        return {"ok": True, "status": node.status()}
    if op == "post":
        return _post(node, req)
    if op == "send" and "items" in req:
        outcomes = await node.send(link_name, _hex_items(req))
        return {"ok": True, "outcomes": [[o.tid, o.status] for o in outcomes]}
    if op == "send":
        if "hex" in req:
            try:
                payload = bytes.fromhex(str(req["hex"]))
            except ValueError:
                raise UsageError('"hex" is not a hex string') from None
        elif isinstance(req.get("data"), str):
            payload = req["data"].encode()
        else:
            raise UsageError('send needs "data" (text) or "hex"')
        timeout = float(req.get("timeout", 10.0))
        with trio.move_on_after(timeout) as scope:
            (outcome,) = await node.send(link_name, [payload])
        if scope.cancelled_caught:
            raise UsageError(f"no outcome within {timeout:g} s (is the link up?); the "
                             "transfer stays queued and will settle")  # fmt: skip
        return {"ok": True, "tid": outcome.tid, "outcome": outcome.status}
    if op in node.ops:
        return {"ok": True, **await node.ops[op](req)}
    ops = ["status", "send", "post", "recv", "outcomes", *node.ops]
    raise UsageError(f"unknown op {op!r}; ops: {', '.join(ops)}")


async def _serve_one(node: Node, stream: trio.SocketStream) -> None:
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # the client left
        await _serve_lines(node, stream)


async def _serve_lines(node: Node, stream: trio.SocketStream) -> None:
    buf = b""
    async with stream:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            buf += data
            if len(buf) > LINE_MAX and b"\n" not in buf:
                await stream.send_all(b'{"ok": false, "error": "request line too long"}\n')
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                    if _taking(req):
                        await _serve_taking(node, req, stream)
                        continue
                    answer = await _handle(node, req)
                except (OaeError, ValueError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc).splitlines()[0] if str(exc)
                              else type(exc).__name__}  # fmt: skip
                await _answer(stream, answer)


async def serve_control(
    node: Node, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on `path` until cancelled; the socket file is removed on the way out. A
    stale socket left by a killed node is replaced; a live one is an error."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"control socket directory {p.parent}: {exc.strerror}") from None
    if p.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(p))
        except OSError:
            p.unlink()  # nobody listens: left over from a killed node
        else:
            raise UsageError(f"control socket {path} is in use by a running node")
        finally:
            probe.close()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        try:
            await sock.bind(str(p))
        except OSError as exc:
            raise UsageError(f"control socket {path}: {exc.strerror}") from None
        bound = True
        os.chmod(p, 0o660)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(lambda s: _serve_one(node, s), [listener])
    finally:
        sock.close()
        if bound:
            p.unlink(missing_ok=True)


def request(path: str, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request to a node's control socket (blocking client for the CLI)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise UsageError(f"no node listens on {path}") from None
        except PermissionError:
            raise UsageError(f"control socket {path}: permission denied") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise UsageError(f"node on {path} closed the connection")
            buf += chunk
    except TimeoutError:
        raise UsageError(f"node on {path} did not answer within {timeout:g} s") from None
    finally:
        s.close()
    answer = json.loads(buf.split(b"\n", 1)[0])
    if not answer.get("ok"):
        raise UsageError(answer.get("error", "request failed"))
    return answer
