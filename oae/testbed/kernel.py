"""Kernel objects for testbeds, built with pyroute2 (no `ip` subprocess).

Naming: every namespace and every link created here starts with a *run prefix*, `oae`
followed by 4 hex digits (e.g. `oae3f2a`), so that a crashed run can be found and removed
by name, and nothing that is not ours is ever touched. The prefix can be forced with the
environment variable OAE_RUN_PREFIX (tests do this so that a whole session shares one).
Interface names are limited to 15 bytes by the kernel (IFNAMSIZ - 1).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute, netns

from oae.errors import NeedsRootError, UsageError

BASE_PREFIX = "oae"
RUN_PREFIX_ENV = "OAE_RUN_PREFIX"
IFNAMSIZ_MAX = 15
NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_PREFIX_RE = re.compile(r"^oae[0-9a-z]{1,6}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_NSNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")

_libc = ctypes.CDLL(None, use_errno=True)


def new_run_prefix() -> str:
    """A fresh run prefix (`oae` + 4 hex digits), or OAE_RUN_PREFIX when it is set."""
    forced = os.environ.get(RUN_PREFIX_ENV)
    if forced:
        return check_prefix(forced, source=RUN_PREFIX_ENV)
    return BASE_PREFIX + secrets.token_hex(2)


def check_prefix(prefix: str, source: str = "prefix") -> str:
    """Reject prefixes that could match objects that are not ours, or make names too long."""
    if not _PREFIX_RE.match(prefix):
        raise UsageError(
            f"{source}={prefix!r}: a run prefix is 'oae' followed by 1-6 lowercase letters/digits"
        )
    return prefix


def check_ifname(name: str) -> str:
    if not _IFNAME_RE.match(name):
        raise UsageError(
            f"interface name {name!r}: must be 1-{IFNAMSIZ_MAX} characters of [A-Za-z0-9_.-]"
        )
    return name


def check_nsname(name: str) -> str:
    if not _NSNAME_RE.match(name):
        raise UsageError(f"namespace name {name!r}: must be characters of [A-Za-z0-9_.-]")
    return name


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise NeedsRootError(f"{what} needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the *calling thread* inside namespace `name`, then switch back.

    Sockets opened inside keep their namespace after the switch back, so a normal process
    can hold AF_PACKET sockets in many namespaces at once. Other threads are unaffected.
    """
    check_nsname(name)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"network namespace {name!r} does not exist") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def create_netns(name: str) -> None:
    """Create a named namespace with IPv6 off (no router solicitations on captures) and lo up."""
    check_nsname(name)
    if netns_exists(name):
        raise UsageError(f"network namespace {name!r} already exists")
    netns.create(name)
    with in_netns(name):
        for key in ("all", "default"):
            try:
                with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
                    f.write("1")
            except FileNotFoundError:  # kernel without IPv6
                break
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove_netns(name: str) -> bool:
    """Remove a named namespace; False if it was already gone. Its veths die with it."""
    check_nsname(name)
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def list_netns(prefix: str = BASE_PREFIX) -> list[str]:
    """Names of namespaces starting with `prefix`, sorted."""
    try:
        names = netns.listnetns()
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def add_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """Create a veth pair whose ends are born directly inside ns_a and ns_b (never in the
    root namespace, so a crash cannot strand them there)."""
    check_ifname(if_a)
    check_ifname(if_b)
    with IPRoute() as ipr:
        ipr.link(
            "add",
            ifname=if_a,
            kind="veth",
            net_ns_fd=ns_a,
            peer={"ifname": if_b, "net_ns_fd": ns_b},
        )


def links_up(ns: str, ifnames: list[str]) -> dict[str, str]:
    """Bring interfaces in `ns` up; return {ifname: MAC}."""
    macs: dict[str, str] = {}
    with in_netns(ns), IPRoute() as ipr:
        for ifname in ifnames:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise UsageError(f"interface {ifname!r} not found in namespace {ns!r}")
            ipr.link("set", index=idx[0], state="up")
            macs[ifname] = ipr.link("get", index=idx[0])[0].get("address")
    return macs


def list_root_links(prefix: str = BASE_PREFIX) -> list[str]:
    """Links in the calling thread's namespace whose names start with `prefix`."""
    with IPRoute() as ipr:
        names = [link.get("ifname") for link in ipr.link("dump")]
    return sorted(n for n in names if n and n.startswith(prefix))


def clean(prefix: str = BASE_PREFIX, dry_run: bool = False) -> list[str]:
    """Remove namespaces and root-namespace links whose names start with `prefix`.

    Reads kernel state (not our state files), so it also works after a crash. Returns the
    names removed, or with `dry_run` the names it would remove (namespaces as
    `netns:NAME`, links as `link:NAME`).
    """
    if not prefix.startswith(BASE_PREFIX):
        raise UsageError(f"prefix {prefix!r}: must start with {BASE_PREFIX!r}")
    require_root("removing namespaces")
    removed: list[str] = []
    for name in list_netns(prefix):
        if dry_run or remove_netns(name):
            removed.append(f"netns:{name}")
    with IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = link.get("ifname")
            if name and name.startswith(prefix) and not dry_run:
                try:
                    ipr.link("del", index=link["index"])
                except OSError as exc:  # the peer's deletion already took it
                    if exc.errno != errno.ENODEV:
                        raise
            if name and name.startswith(prefix):
                removed.append(f"link:{name}")
    return removed


@dataclass(frozen=True)
class VethPair:
    """Two namespaces joined by one veth; MACs as 'aa:bb:cc:dd:ee:ff'."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    mac_a: str
    mac_b: str


@contextmanager
def veth_pair(prefix: str | None = None) -> Iterator[VethPair]:
    """Two fresh namespaces joined by one veth, both ends up; all removed on exit, also on
    exceptions and KeyboardInterrupt. Names: `<prefix>-<id>a`/`b` (namespaces),
    `<prefix><id>a`/`b` (interfaces), with a random 4-hex id per pair."""
    require_root("veth_pair")
    prefix = check_prefix(prefix) if prefix else new_run_prefix()
    tag = secrets.token_hex(2)
    ns_a, ns_b = f"{prefix}-{tag}a", f"{prefix}-{tag}b"
    if_a, if_b = f"{prefix}{tag}a", f"{prefix}{tag}b"
    for ns in (ns_a, ns_b):
        if netns_exists(ns):
            raise UsageError(f"network namespace {ns!r} already exists")
    try:
        # Removal goes by name, not by what was created so far: a Ctrl-C landing between
        # a namespace's creation and its bookkeeping must not leak it.
        for ns in (ns_a, ns_b):
            create_netns(ns)
        add_veth(ns_a, if_a, ns_b, if_b)
        mac_a = links_up(ns_a, [if_a])[if_a]
        mac_b = links_up(ns_b, [if_b])[if_b]
        yield VethPair(ns_a, ns_b, if_a, if_b, mac_a, mac_b)
    finally:
        for ns in (ns_a, ns_b):
            remove_netns(ns)
