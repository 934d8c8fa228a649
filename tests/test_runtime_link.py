"""The Trio runtime over a real veth pair between two namespaces: discovery, exactly-once
in-order transfers, and bad frames from outside that are counted, dropped and change
nothing."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

import pytest
import trio

from oae.errors import UsageError
from oae.runtime.link import LinkOptions, open_link
from oae.runtime.sock import open_socket
from oae.wire import ETHERTYPE, Frame, Opcode, Phase, Record, encode_frame

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, raw sockets")


async def test_link_comes_up_by_itself(veth_pair) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b) as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()
            await b.wait_up()
        sa, sb = a.stats(), b.stats()
        assert sa["phase"] == sb["phase"] == "LIVE"
        assert sa["peer"] == veth_pair.mac_b and sb["peer"] == veth_pair.mac_a
        assert sa["mac"] == veth_pair.mac_a
        out = await a.send(b"first")
        assert out.committed and out.tid == 1
        async for msg in b.received():
            assert (msg.tid, msg.payload) == (1, b"first")
            break


@pytest.mark.parametrize("tx_ring", [True, False], ids=["tx_ring", "plain"])
async def test_100k_transfers_commit_exactly_once_in_order(veth_pair, tx_ring: bool) -> None:
    """Both send paths: bursts through a PACKET_TX_RING, and plain sendmmsg (the fallback
    where the kernel has no ring)."""
    n = 100_000
    # rx_capacity above n: the receiving task may lag behind the link under CPU load, and
    # that backpressure (REFUSE, then reversal) is a correct outcome, but not this test's
    opts = LinkOptions(window=1024, beat=64, rx_capacity=1 << 20, tx_ring=tx_ring)
    payloads = [i.to_bytes(4, "big") for i in range(n)]
    got: list[tuple[int, bytes]] = []
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, options=opts) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, options=opts) as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()

        async def receive() -> None:
            async for msg in b.received():
                got.append((msg.tid, msg.payload))
                if len(got) == n:
                    return

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                outcomes = await a.send_many(payloads)
        assert [o.status for o in outcomes] == ["committed"] * n
        tids = [o.tid for o in outcomes]
        assert tids == list(range(1, n + 1))
        assert got == list(zip(tids, payloads, strict=True))
        sa, sb = a.stats(), b.stats()
        assert sa["committed"] == sb["delivered"] == n
        assert sa["aborted"] == 0 and sa["out_settled"] == n and sb["in_delivered"] == n
        # one record per frame: every payload rode in a frame of its own, sent from C
        assert sa["pump"]["cpu_ns"] > 0 and sa["pump"]["tx_frames"] >= n
        assert sa["pump"]["tx_ring"] == sb["pump"]["tx_ring"] == int(tx_ring)
        assert sa["pump"]["tx_errors"] == 0
        # each pump runs in a thread of its own that tools can find by id and name
        pumps = {sa["pump"]["tid"], sb["pump"]["tid"]}
        assert len(pumps) == 2 and threading.get_native_id() not in pumps
        for tid in pumps:
            assert Path(f"/proc/self/task/{tid}/comm").read_text().strip() == "oae-pump"


def _garbage_frames(dst: bytes, src: bytes) -> list[bytes]:
    eth = dst + src + ETHERTYPE.to_bytes(2, "big")
    record = Record(opcode=Opcode.TOKEN, phase=Phase.LIVE, seq=5, nonce=77)
    good = encode_frame(Frame(dst, src, ETHERTYPE, record))
    corrupt = bytearray(good)
    corrupt[40] ^= 0x10
    return [
        eth + b"\x12" + secrets.token_bytes(63),  # version 1, random rest: CHECK
        eth + bytes(10),  # short: TRUNCATED
        eth + bytes(64) + b"\x00" * 4,  # long: OVERSIZED
        bytes(corrupt),  # one flipped bit: CHECK
    ]


async def test_foreign_and_garbage_frames_are_counted_dropped_and_change_nothing(
    veth_pair,
) -> None:
    third_mac = bytes.fromhex("02aa00000099")
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b) as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()
            await b.wait_up()
        assert (await a.send(b"before")).committed
        before = a.stats()
        a_mac = bytes.fromhex(veth_pair.mac_a.replace(":", ""))
        b_mac = bytes.fromhex(veth_pair.mac_b.replace(":", ""))
        # a valid, correctly checked record, but from a MAC that is not the bound peer
        foreign = encode_frame(Frame(a_mac, third_mac, ETHERTYPE, Record(
            opcode=Opcode.TOKEN, phase=Phase.LIVE, seq=1, nonce=1234, tid=1,
            payload=b"forged", held_upto=0)))  # fmt: skip
        frames = [foreign] * 20 + _garbage_frames(a_mac, b_mac) * 5
        inject = open_socket(veth_pair.if_b, veth_pair.ns_b)
        try:
            for f in frames:
                os.write(inject.fd, f)
        finally:
            inject.close()
        with trio.fail_after(10):
            while a.stats()["dropped"] - before["dropped"] < len(frames):
                await trio.sleep(0.01)
        after = a.stats()
        drops = {k: after["drops"].get(k, 0) - before["drops"].get(k, 0) for k in after["drops"]}
        assert drops.get("foreign") == 20
        assert drops.get("check") == 10
        assert drops.get("truncated") == 5 and drops.get("oversized") == 5
        # no state changed: still LIVE with the same peer, nothing delivered or reset
        assert after["phase"] == "LIVE" and after["peer"] == veth_pair.mac_b
        assert after["links_down"] == before["links_down"] == 0
        assert after["delivered"] == before["delivered"] == 0
        assert after["in_delivered"] == 0
        assert b.stats()["delivered"] == 1
        assert (await a.send(b"after")).committed
        msgs = []
        async for msg in b.received():
            msgs.append(msg.payload)
            if len(msgs) == 2:
                break
        assert msgs == [b"before", b"after"]


async def test_payload_over_16_bytes_is_refused_with_a_clear_error(veth_pair) -> None:
    async with open_link(veth_pair.if_a, veth_pair.ns_a) as a:
        with pytest.raises(UsageError, match="at most 16 bytes"):
            await a.send(b"x" * 17)
        assert a.stats()["pump"]["queued"] == 0


async def test_missing_interface_is_a_usage_error(veth_pair) -> None:
    with pytest.raises(UsageError, match="not found"):
        async with open_link("nosuchif0", veth_pair.ns_a):
            pass


async def test_cancellation_closes_socket_and_event_fd(veth_pair) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    with trio.move_on_after(0.3):
        async with open_link(veth_pair.if_a, veth_pair.ns_a) as a:
            a.submit([b"queued"])  # never settles: the peer is absent
            await trio.sleep_forever()
    await trio.sleep(0.05)
    assert set(os.listdir("/proc/self/fd")) <= fds_before


def test_link_options_are_checked() -> None:
    with pytest.raises(UsageError, match="beat"):
        LinkOptions(beat=3).check()
    with pytest.raises(UsageError, match="window"):
        LinkOptions(window=0).check()
    with pytest.raises(UsageError, match="twice idle"):
        LinkOptions(idle=0.02, rto=0.03).check()
    LinkOptions(idle=0.0, rto=0.001).check()
    # an rto nobody chose follows idle (also through open_link's overrides)
    assert LinkOptions().rto == 0.02 and LinkOptions(idle=0.05).rto == 0.1
    merged = LinkOptions(**{**LinkOptions().__dict__, "idle": 0.03})
    assert merged.rto == pytest.approx(0.06)
    merged.check()
    assert LinkOptions(**{**LinkOptions(rto=0.5).__dict__, "idle": 0.03}).rto == 0.5


@pytest.mark.parametrize("sender", ["a", "b"])
async def test_new_work_on_an_idle_link_does_not_wait_for_pacing(veth_pair, sender) -> None:
    """With a long idle hold (0.3 s), a transfer submitted while the link idles commits
    in far less than the hold, from either end (leader or follower): the follower's pump
    is woken in its idle wait and wakes the link; the leader answers its held token."""
    opts = LinkOptions(idle=0.3, rto=1.0, dead=3.0, hello=0.02)
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, options=opts) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, options=opts) as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()
            await b.wait_up()
        src = a if sender == "a" else b
        times = []
        for i in range(6):
            await trio.sleep(0.05 + 0.07 * i)  # land at different points of the hold
            t0 = trio.current_time()
            with trio.fail_after(5):
                out = await src.send(b"%d" % i)
            assert out.committed
            times.append(trio.current_time() - t0)
        assert sorted(times)[len(times) // 2] < 0.1, times
        # idle again: a few frames per hold, not a stream
        f0 = a.stats()["frames_out"] + b.stats()["frames_out"]
        await trio.sleep(1.0)
        f1 = a.stats()["frames_out"] + b.stats()["frames_out"]
        assert f1 - f0 <= 2 * (1.0 / 0.3 + 2), f1 - f0


async def test_set_epoch_during_persistence_is_stored(veth_pair, tmp_path) -> None:
    """set_epoch may run while the pump writes the registers (outside its lock): the
    newer epoch must still reach the register file (it is stored again)."""
    from oae._pump import ffi, lib

    opts = LinkOptions(idle=0.01, rto=0.05, hello=0.02)
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, options=opts, state_dir=tmp_path / "a") as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, options=opts, state_dir=tmp_path / "b") as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()
            await b.wait_up()
        for epoch in range(1, 40):
            a.submit([b"e%d" % epoch])
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            await trio.sleep(0.002)
        await trio.sleep(0.3)
        assert a.stats()["pump"]["persists"] > 0
    for side in ("a", "b"):
        d = ffi.new("oae_link_durable *")
        assert lib.oae_durable_load(str(tmp_path / side / "durable").encode(), d) == 0
        assert d.epoch == 39


async def test_keyed_link_comes_up_and_a_wrong_key_never_binds(veth_pair) -> None:
    key = bytes(range(16))
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, key=key) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, key=key) as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()
            await b.wait_up()
        assert (await a.send(b"keyed")).committed
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, key=key) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, key=bytes(16)) as b,
    ):
        await trio.sleep(0.5)
        assert not a.up and not b.up
        assert a.stats()["drops"].get("check", 0) > 0 and a.stats()["delivered"] == 0
    with pytest.raises(UsageError, match="16 bytes"):
        async with open_link(veth_pair.if_a, veth_pair.ns_a, key=b"short"):
            pass


async def test_configured_peer_refuses_any_other_mac(veth_pair) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, peer="02:00:00:00:00:01") as a,
        open_link(veth_pair.if_b, veth_pair.ns_b),
    ):
        await trio.sleep(0.5)
        assert not a.up
        assert a.stats()["drops"].get("foreign", 0) > 0


async def test_interface_removed_under_a_running_link_raises_link_error(veth_pair) -> None:
    from pyroute2 import IPRoute

    from oae.runtime.link import LinkError
    from oae.testbed.kernel import in_netns

    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LinkError, match="stopped"):
        async with open_link(veth_pair.if_a, veth_pair.ns_a) as a:
            with in_netns(veth_pair.ns_a), IPRoute() as ipr:
                ipr.link("del", index=ipr.link_lookup(ifname=veth_pair.if_a)[0])
            with trio.fail_after(5):
                async for _ in a.received():
                    pass
    assert set(os.listdir("/proc/self/fd")) <= fds_before


@pytest.mark.parametrize("mode", ["busy", "bypass"])
async def test_busy_poll_and_qdisc_bypass_links_work(veth_pair, mode: str) -> None:
    opts = LinkOptions(busy=mode == "busy", bypass=mode == "bypass")
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, options=opts) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, options=opts) as b,
    ):
        with trio.fail_after(10):
            await a.wait_up()
        outcomes = await a.send_many([b"%d" % i for i in range(1000)])
        assert all(o.committed for o in outcomes)
        got = []
        async for msg in b.received():
            got.append(msg.payload)
            if len(got) == 1000:
                break
        assert got == [b"%d" % i for i in range(1000)]
        assert (a.stats()["pump"]["wakeups"] == 0) == (mode == "busy")  # busy never sleeps


# ---- exactly-once for applications (docs/applications.md) ----------------------------
async def _up(*links) -> None:
    with trio.fail_after(10):
        for link in links:
            await link.wait_up()


async def _take(stream, n: int, seconds: float = 30) -> list:
    got = []
    with trio.fail_after(seconds):
        async for item in stream:
            got.append(item)
            if len(got) == n:
                break
    return got


async def test_keys_come_back_with_every_outcome_and_must_grow(veth_pair) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b),
    ):
        await _up(a)
        outs = await a.send_many([b"x", b"y"], keys=[5, 9])
        assert [(o.key, o.committed, o.restored) for o in outs] == [(5, True, False),
                                                                   (9, True, False)]  # fmt: skip
        assert (await a.send(b"no key")).key is None and a.last_key == 9
        for bad in ([9], [10, 10], [0], [2**64], ["11"]):
            with pytest.raises(UsageError, match="grow strictly"):
                a.post([b"z"] * len(bad), keys=bad)
        with pytest.raises(UsageError, match="one key per payload"):
            a.post([b"z"], keys=[11, 12])
        a.post([b"p%d" % i for i in range(100)], keys=list(range(10, 110)))
        got = await _take(a.outcomes(), 100)
        assert [o.key for o in got] == list(range(10, 110)) and all(o.committed for o in got)


async def test_a_full_outcome_stream_pauses_offers_and_drops_nothing(veth_pair) -> None:
    opts = LinkOptions(window=8, outcome_buffer=16)
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, options=opts) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, options=opts),
    ):
        await _up(a)
        n = 300
        a.post([b"%d" % i for i in range(n)], keys=list(range(1, n + 1)))
        with trio.fail_after(10):
            while not a.stats()["offers_paused"]:
                await trio.sleep(0.01)
        await trio.sleep(0.3)
        st = a.stats()
        # nobody consumes: what settled is bounded by the buffer plus a window in flight
        assert 16 <= st["committed"] <= 16 + 8 and st["backlog"] >= n - 24
        got = await _take(a.outcomes(), n)
        assert sorted(o.key for o in got) == list(range(1, n + 1))
        assert not a.stats()["offers_paused"]


async def test_cancelled_sends_settle_into_the_outcome_stream(veth_pair) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b),
    ):
        await _up(a)
        with trio.move_on_after(0.001):
            await a.send_many([b"%d" % i for i in range(500)], keys=list(range(1, 501)))
        got = await _take(a.outcomes(), 500)
        assert sorted(o.key for o in got) == list(range(1, 501))


async def test_restart_hands_out_again_only_what_was_not_consumed(veth_pair, tmp_path) -> None:
    """Both ends close (as a crash would, for what matters here) with outcomes not yet
    acknowledged and messages not yet released: reopened on the same state dirs they get
    exactly those again (restored / redelivered), then nothing more."""
    sa, sb = tmp_path / "a", tmp_path / "b"
    n = 200
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=sa) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=sb) as b,
    ):
        await _up(a, b)
        a.post([b"%d" % i for i in range(n)], keys=list(range(1, n + 1)))
        first = await _take(a.outcomes(), 51)  # 50 acknowledged; the 51st's body never ends
        first_msgs = await _take(b.received(), 81)  # 80 released; the 81st's body never ends
        with trio.fail_after(10):
            while a.stats()["outcomes_waiting"] < n - 51:
                await trio.sleep(0.01)
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=sa) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=sb) as b,
    ):
        assert a.last_key == n
        again = await _take(a.outcomes(), n - 50, 10)
        assert [o.key for o in again] == list(range(51, n + 1))
        assert all(o.restored and o.committed for o in again)
        msgs = await _take(b.received(), n - 80, 10)
        assert [m.tid for m in msgs] == list(range(81, n + 1)) and all(m.redelivered for m in msgs)
        assert [m.payload for m in first_msgs[:80] + msgs] == [b"%d" % i for i in range(n)]
        assert {o.key for o in first[:50]}.isdisjoint(o.key for o in again)
        await _up(a, b)
        assert (await a.send(b"more", key=n + 1)).committed  # the round has settled
        # the last commits were logged after the registers' last store, so the engine
        # settled them again; the pump knew them from its log and reported none twice
        assert a.stats()["outcomes_waiting"] == 0
        pump = a.stats()["pump"]
        assert pump["restored_dups"] > 0 and pump["restore_conflicts"] == 0


async def test_event_log_is_compacted_while_the_link_runs(veth_pair, tmp_path) -> None:
    from oae.runtime.link import read_log

    sa, sb = tmp_path / "a", tmp_path / "b"
    opts = LinkOptions(window=256, beat=16, log_limit=16384)
    n = 5000
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=sa, options=opts) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=sb, options=opts) as b,
    ):
        await _up(a, b)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_take, b.received(), n, 60)
            a.post([b"%d" % i for i in range(n)], keys=list(range(1, n + 1)))
            outs = await _take(a.outcomes(), n, 60)
        assert all(o.committed for o in outs)
        assert a.stats()["pump"]["compactions"] > 0 and b.stats()["pump"]["compactions"] > 0
        for s in (sa, sb):  # kept whole, ~10,000 records of 48 bytes: 480 kB
            assert (s / "events.log").stat().st_size < 16384 + 256 * 48 * 4
        await a.send(b"last", key=n + 1)
    async with (  # reopened: each log compacted to what is still owed
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=sa) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b, state_dir=sb),
    ):
        assert a.last_key == n + 1  # kept through the compactions
    # released all but the one whose loop body ended with `break` and the one never taken
    assert [(r.kind, r.tid) for r in read_log(sb)] == [("delivered", n), ("delivered", n + 1)]
    # the sender's: the outcome taken last (not acknowledged: its loop ended with `break`),
    # and the one send() returned, acknowledged, until the registers count it as settled
    # (were it forgotten, a restart would report it again)
    assert [(r.kind, r.key, r.acked) for r in read_log(sa)] in (
        [("committed", n, False), ("committed", n + 1, True)], [("committed", n, False)])


async def test_damaged_event_log_is_refused_with_a_clear_error(veth_pair, tmp_path) -> None:
    async with (
        open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=tmp_path) as a,
        open_link(veth_pair.if_b, veth_pair.ns_b),
    ):
        await _up(a)
        await a.send_many([b"x"] * 3)
    log = tmp_path / "events.log"
    data = bytearray(log.read_bytes())
    assert len(data) >= 3 * 48
    data[48 + 10] ^= 1  # the second record: valid ones follow
    log.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="events.log is damaged"):
        async with open_link(veth_pair.if_a, veth_pair.ns_a, state_dir=tmp_path):
            pass
