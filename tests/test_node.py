"""`oae node` processes in two namespaces: data through the control socket, and a node
killed mid-stream and restarted from its state dir settling every transfer the same way
as its peer (no loss, no duplicate)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from oae.errors import UsageError
from oae.runtime.control import request
from oae.runtime.link import LinkOptions, open_link

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")

OAE = [sys.executable, "-m", "oae.cli"]
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_node(iface: str, netns: str, control: Path, state: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*OAE, "node", "--iface", iface, "--netns", netns, "--control", str(control),
         "--state-dir", str(state), "--json", *extra],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"oae node exited {proc.returncode}: {proc.stderr.read()}")
        try:
            request(str(control), {"op": "status"}, timeout=2)
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("oae node did not open its control socket within 15 s")


def stop_node(proc: subprocess.Popen, how: signal.Signals = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(how)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode in (0, -signal.SIGKILL), err
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OAE, *args], env=_env(), capture_output=True, text=True, timeout=60)


def test_two_node_processes_exchange_data_through_the_control_socket(veth_pair, tmp_path) -> None:
    ca, cb = tmp_path / "a.sock", tmp_path / "b.sock"
    na = start_node(veth_pair.if_a, veth_pair.ns_a, ca, tmp_path / "sa")
    nb = start_node(veth_pair.if_b, veth_pair.ns_b, cb, tmp_path / "sb")
    try:
        deadline = time.monotonic() + 10
        while request(str(ca), {"op": "status"})["status"]["links"][0]["phase"] != "LIVE":
            assert time.monotonic() < deadline, "link did not come up"
            time.sleep(0.05)
        sent = cli("send", "--control", str(ca), "--json", "hello", "world")
        assert sent.returncode == 0, sent.stderr
        outs = [json.loads(line) for line in sent.stdout.splitlines()]
        assert [(o["tid"], o["outcome"]) for o in outs] == [(1, "committed"), (2, "committed")]
        got = cli("recv", "--control", str(cb), "--json", "--timeout", "5")
        assert got.returncode == 0, got.stderr
        msgs = [json.loads(line) for line in got.stdout.splitlines()]
        assert [(m["tid"], m["text"]) for m in msgs] == [(1, "hello"), (2, "world")]
        # each message is handed out once
        again = cli("recv", "--control", str(cb), "--json", "--timeout", "0")
        assert again.stdout == ""
        status = cli("status", "--control", str(cb), "--json")
        st = json.loads(status.stdout)["links"][0]
        assert st["peer"] == veth_pair.mac_a and st["delivered"] == 2 and st["dropped"] == 0
        text = cli("status", "--control", str(cb))
        assert "phase LIVE" in text.stdout and veth_pair.mac_a in text.stdout
        bad = cli("send", "--control", str(ca), "x" * 17)
        assert bad.returncode == 2 and "at most 16 bytes" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    finally:
        out_a, out_b = stop_node(na, signal.SIGINT), stop_node(nb)  # Ctrl-C, systemd stop
    events = [json.loads(line)["event"] for line in out_b.splitlines()]
    assert events[0] == "started" and "link-up" in events and events[-1] == "stopping"
    assert not ca.exists() and not cb.exists()  # control sockets removed on exit
    assert "link-up" in out_a and '"signal": "SIGINT"' in out_a


def _drain(control: Path, op: str) -> list[dict]:
    """Everything a node hands out for `op` (recv or outcomes) until it has nothing more."""
    got: list[dict] = []
    while True:
        ans = request(str(control), {"op": op, "max": 1000, "timeout": 0.5})
        items = ans["messages" if op == "recv" else "outcomes"]
        if not items:
            return got
        got += items


def test_killed_receiving_node_hands_out_every_delivery_once_after_restart(
    veth_pair, tmp_path
) -> None:
    """The receiving node is killed mid-stream with messages nobody has read yet: after
    its restart `oae recv` hands out every committed payload exactly once (those delivered
    before the crash flagged redelivered), and none the sender saw aborted."""
    n = 2000
    control, state = tmp_path / "b.sock", tmp_path / "state-b"
    node = start_node(veth_pair.if_b, veth_pair.ns_b, control, state, "--dead", "0.2")
    restarted: list[subprocess.Popen] = []
    payloads = [f"m{i}".encode() for i in range(n)]
    early: list[dict] = []

    async def sender() -> list:
        opts = LinkOptions(window=64, dead=0.2)
        async with open_link(veth_pair.if_a, veth_pair.ns_a, options=opts) as a:
            with trio.fail_after(15):
                await a.wait_up()
            async with trio.open_nursery() as nursery:

                async def kill_and_restart() -> None:
                    while a.counters["committed"] < n // 5:
                        await trio.sleep(0.005)
                    # some are read (and released) before the crash, the rest are not
                    early.extend(await trio.to_thread.run_sync(
                        lambda: request(str(control), {"op": "recv", "max": 100})["messages"]))
                    node.kill()  # SIGKILL mid-stream: no chance to clean up
                    await trio.to_thread.run_sync(node.wait)
                    await trio.sleep(0.3)  # the sender declares the link failed
                    proc = await trio.to_thread.run_sync(
                        lambda: start_node(veth_pair.if_b, veth_pair.ns_b, control, state,
                                           "--dead", "0.2"))  # fmt: skip
                    restarted.append(proc)

                nursery.start_soon(kill_and_restart)
                with trio.fail_after(90):
                    outcomes = await a.send_many(payloads)
            assert a.counters["links_down"] >= 1, "the kill was not noticed mid-stream"
            return outcomes

    try:
        outcomes = trio.run(sender)
        late = _drain(control, "recv")
    finally:
        for proc in [node, *restarted]:
            stop_node(proc)
    assert len(restarted) == 1 and early
    assert len(outcomes) == n and [o.tid for o in outcomes] == list(range(1, n + 1))
    committed = {o.tid: payloads[o.tid - 1] for o in outcomes if o.committed}
    # as an application would: by tid. The node releases what `recv` handed out once its
    # answer is written, and the kill may land between the two: such a message comes
    # again, flagged redelivered; no other one does
    late_tids = [m["tid"] for m in late]
    assert len(late_tids) == len(set(late_tids)), "a message was handed out twice"
    again = {m["tid"] for m in early} & set(late_tids)
    assert all(m["redelivered"] for m in late if m["tid"] in again)
    got = {m["tid"]: bytes.fromhex(m["hex"]) for m in early + late}
    assert got == committed
    assert not any(m["redelivered"] for m in early)
    assert any(m["redelivered"] for m in late), "nothing was pending at the crash"
    assert len(committed) >= n // 5


def test_killed_sending_node_reports_every_outcome_once_after_restart(
    veth_pair, tmp_path
) -> None:
    """The sending node is killed while it works through posted, keyed transfers: after
    its restart `oae outcomes` reports exactly one outcome for every key up to the link's
    last key (restored, an aborted one with its payload back), none above it (never
    offered: the application would submit those again), and the receiver got exactly the
    committed ones."""
    n = 2000
    control, state = tmp_path / "a.sock", tmp_path / "state-a"
    items = [f"s{i}".encode() for i in range(1, n + 1)]  # key k carries items[k - 1]
    node = start_node(veth_pair.if_a, veth_pair.ns_a, control, state, "--dead", "0.2")
    restarted: list[subprocess.Popen] = []
    got: list[tuple[int, bytes]] = []

    async def receiver() -> int:
        opts = LinkOptions(dead=0.2)
        async with open_link(veth_pair.if_b, veth_pair.ns_b, options=opts) as b:
            with trio.fail_after(15):
                await b.wait_up()
            async with trio.open_nursery() as nursery:

                async def collect() -> None:
                    async for msg in b.received():
                        got.append((msg.tid, msg.payload))

                nursery.start_soon(collect)
                request(str(control), {"op": "post", "items": [i.hex() for i in items],
                                       "keys": list(range(1, n + 1))})  # fmt: skip
                with trio.fail_after(60):
                    while len(got) < n // 5:
                        await trio.sleep(0.005)
                node.kill()
                await trio.to_thread.run_sync(node.wait)
                await trio.sleep(0.3)
                restarted.append(await trio.to_thread.run_sync(
                    lambda: start_node(veth_pair.if_a, veth_pair.ns_a, control, state,
                                       "--dead", "0.2")))  # fmt: skip
                with trio.fail_after(60):  # the restarted sender settles what was in flight
                    while True:
                        st = request(str(control), {"op": "status"})["status"]["links"][0]
                        if st["phase"] == "LIVE" and st["out_settled"] == st["out_hi"] > 0:
                            break
                        await trio.sleep(0.05)
                await trio.sleep(0.2)  # last deliveries reach `collect`
                nursery.cancel_scope.cancel()
            assert b.counters["links_down"] >= 1, "the kill was not noticed mid-stream"
        return st["last_key"]

    try:
        last_key = trio.run(receiver)
        reported = _drain(control, "outcomes")
        assert _drain(control, "outcomes") == []  # acknowledged: not handed out again
        pump = request(str(control), {"op": "status"})["status"]["links"][0]["pump"]
    finally:
        for proc in [node, *restarted]:
            stop_node(proc)
    assert n // 5 <= last_key < n, "the kill did not land mid-stream"
    keys = [o["key"] for o in reported]
    assert sorted(keys) == list(range(1, last_key + 1)), "an outcome missing or reported twice"
    assert all(o["restored"] for o in reported) and pump["restore_conflicts"] == 0
    committed = {o["key"] for o in reported if o["outcome"] == "committed"}
    received = [items.index(payload) + 1 for _, payload in got]
    assert received == sorted(committed), "receiver's deliveries != sender's commits"
    assert [t for t, _ in got] == sorted(t for t, _ in got)
    # an aborted transfer's payload comes back with its key, also after the restart
    assert all(bytes.fromhex(o["hex"]) == items[o["key"] - 1]
               for o in reported if o["outcome"] == "aborted")  # fmt: skip


def test_outcomes_of_posted_sends_come_once_through_the_control_socket(
    veth_pair, tmp_path
) -> None:
    ca, cb = tmp_path / "a.sock", tmp_path / "b.sock"
    na = start_node(veth_pair.if_a, veth_pair.ns_a, ca, tmp_path / "sa")
    nb = start_node(veth_pair.if_b, veth_pair.ns_b, cb, tmp_path / "sb")
    try:
        deadline = time.monotonic() + 10
        while request(str(ca), {"op": "status"})["status"]["links"][0]["phase"] != "LIVE":
            assert time.monotonic() < deadline, "link did not come up"
            time.sleep(0.05)
        posted = cli("send", "--control", str(ca), "--no-wait", "--key", "7", "one", "two")
        assert posted.returncode == 0 and "queued 2" in posted.stdout, posted.stderr
        outs: list[dict] = []
        while len(outs) < 2:
            r = cli("outcomes", "--control", str(ca), "--json", "--timeout", "5")
            assert r.returncode == 0, r.stderr
            outs += [json.loads(line) for line in r.stdout.splitlines()]
        assert [(o["key"], o["outcome"], o["restored"]) for o in outs] == [
            (7, "committed", False), (8, "committed", False)]  # fmt: skip
        assert cli("outcomes", "--control", str(ca), "--timeout", "0").stdout == ""
        bad = cli("send", "--control", str(ca), "--no-wait", "--key", "8", "x")
        assert bad.returncode == 2 and "grow strictly" in bad.stderr  # 8 was used
        assert cli("send", "--control", str(ca), "--key", "9", "x").returncode == 2
        text = cli("status", "--control", str(ca)).stdout
        assert "last key 8" in text and "outcomes 0" in text
    finally:
        stop_node(na)
        stop_node(nb)


async def test_node_owns_several_links_and_serves_them_by_name(veth_pair, tmp_path) -> None:
    from oae.runtime.node import LinkSpec, open_node

    specs = [LinkSpec(veth_pair.if_a, veth_pair.ns_a), LinkSpec(veth_pair.if_b, veth_pair.ns_b)]
    sock = tmp_path / "n.sock"
    async with open_node(specs, control=str(sock)) as node:
        with trio.fail_after(10):
            for link in node.links.values():
                await link.wait_up()
        assert (await node.link(veth_pair.if_a).send(b"a->b")).committed
        assert (await node.link(veth_pair.if_b).send(b"b->a")).committed
        got_b = await node.recv(veth_pair.if_b, 10, timeout=5)
        got_a = await node.recv(veth_pair.if_a, 10, timeout=5)
        assert [m.payload for m in got_b] == [b"a->b"] and [m.payload for m in got_a] == [b"b->a"]
        with pytest.raises(UsageError, match="node has 2 links"):
            node.link()
        status = await trio.to_thread.run_sync(request, str(sock), {"op": "status"})
        assert {ln["iface"] for ln in status["status"]["links"]} == {veth_pair.if_a,
                                                                    veth_pair.if_b}  # fmt: skip
        with pytest.raises(UsageError, match="unknown op"):
            await trio.to_thread.run_sync(request, str(sock), {"op": "nope"})
    assert not sock.exists()
