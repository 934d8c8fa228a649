"""Kernel layer: veth pairs pass frames, in_netns switches only the calling thread, clean
removes only prefixed objects."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from oae.errors import UsageError
from oae.testbed import kernel

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, veth)")
ETH_P_OAE_TEST = 0x88B5


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _raw(ns: str, ifname: str) -> socket.socket:
    with kernel.in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_OAE_TEST))
    s.bind((ifname, 0))
    s.settimeout(2.0)
    return s


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def test_new_run_prefix_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernel.RUN_PREFIX_ENV, raising=False)
    p = kernel.new_run_prefix()
    assert p.startswith("oae") and len(p) == 7
    assert kernel.check_prefix(p) == p
    monkeypatch.setenv(kernel.RUN_PREFIX_ENV, "oaezz9")
    assert kernel.new_run_prefix() == "oaezz9"


@pytest.mark.parametrize("bad", ["", "oae", "xoae12", "oae-12", "oae1234567", "OAE12"])
def test_bad_prefix_rejected(bad: str) -> None:
    with pytest.raises(UsageError):
        kernel.check_prefix(bad)


def test_ifname_limit() -> None:
    assert kernel.check_ifname("a" * 15)
    with pytest.raises(UsageError):
        kernel.check_ifname("a" * 16)


@root
def test_veth_pair_passes_frames_both_ways(veth_pair: kernel.VethPair, run_prefix: str) -> None:
    vp = veth_pair
    for name in (vp.ns_a, vp.ns_b, vp.if_a, vp.if_b):
        assert name.startswith(run_prefix)
        assert len(name) <= 15 or name in (vp.ns_a, vp.ns_b)
    a, b = _raw(vp.ns_a, vp.if_a), _raw(vp.ns_b, vp.if_b)
    with a, b:
        a.send(_mac(vp.mac_b) + _mac(vp.mac_a) + b"\x88\xb5" + b"ab" * 32)
        got = b.recv(2000)
        assert got[:6] == _mac(vp.mac_b) and got[14:] == b"ab" * 32
        b.send(_mac(vp.mac_a) + _mac(vp.mac_b) + b"\x88\xb5" + b"ba" * 32)
        assert a.recv(2000)[14:] == b"ba" * 32


@root
def test_in_netns_switches_only_calling_thread_and_back(veth_pair: kernel.VethPair) -> None:
    home = _netns_inode()
    seen_other: list[int] = []
    inside_ino = os.stat(f"/run/netns/{veth_pair.ns_a}").st_ino
    entered, checked = threading.Event(), threading.Event()

    def other_thread() -> None:  # started before the switch: must stay at home
        entered.wait(5)
        seen_other.append(_netns_inode())
        checked.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with kernel.in_netns(veth_pair.ns_a):
        assert _netns_inode() == inside_ino
        entered.set()
        checked.wait(5)
    t.join()
    assert seen_other == [home]
    assert _netns_inode() == home


@root
def test_in_netns_restores_on_exception(veth_pair: kernel.VethPair) -> None:
    home = _netns_inode()
    with pytest.raises(RuntimeError), kernel.in_netns(veth_pair.ns_b):
        raise RuntimeError("boom")
    assert _netns_inode() == home


def test_in_netns_missing_namespace() -> None:
    with pytest.raises(UsageError, match="does not exist"):
        with kernel.in_netns("oaenope-does-not-exist"):
            pass


@root
def test_veth_pair_removed_on_exception(run_prefix: str) -> None:
    names: list[str] = []
    with pytest.raises(KeyboardInterrupt), kernel.veth_pair() as vp:
        names += [vp.ns_a, vp.ns_b]
        assert set(names) <= set(kernel.list_netns(run_prefix))
        raise KeyboardInterrupt
    assert not set(names) & set(kernel.list_netns(run_prefix))


@root
def test_clean_removes_only_prefixed(run_prefix: str) -> None:
    mine = f"{run_prefix}-cleanme"
    other_prefix = kernel.check_prefix(run_prefix[:3] + "zz" + run_prefix[3:5])
    other = f"{other_prefix}-keep"
    kernel.create_netns(mine)
    kernel.create_netns(other)
    try:
        removed = kernel.clean(run_prefix)
        assert f"netns:{mine}" in removed
        assert kernel.netns_exists(other) and not kernel.netns_exists(mine)
    finally:
        kernel.remove_netns(mine)
        kernel.remove_netns(other)
