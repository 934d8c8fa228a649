"""tc netem through pyroute2, for kernels that have it (this project's reference kernel
does not: there the impairing bridge is the only impairer).

A netem link is a direct veth with a netem qdisc on each end's egress, one per direction.
netem gives kernel-speed impairment but no seeded, replayable decisions, no scheduled
partitions or flaps and no per-link counters, so the bridge stays the default
(`impairer = "bridge"`); `"netem"` demands netem, `"auto"` uses it where the kernel has it
and the link's impairments can be expressed in it.
"""

from __future__ import annotations

import errno
import secrets

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from oae.errors import UsageError
from oae.testbed import kernel
from oae.testbed.impair import Impairment

_U32_MAX = 2**32 - 1
_available: bool | None = None


def netem_options(spec: Impairment) -> dict[str, object]:
    """pyroute2 `tc(..., "netem", ...)` arguments for `spec` (delay in µs, probabilities in
    percent, rate in bytes/s); UsageError if netem cannot do what `spec` asks."""
    if spec.partitions or spec.flap:
        raise UsageError('netem cannot schedule partitions or flaps; use impairer = "bridge"')
    if spec.reorder and not spec.delay:
        raise UsageError("with netem, reorder needs a delay (netem reorders by skipping it)")
    if spec.rate / 8 > _U32_MAX:
        raise UsageError(f"netem rate is at most {_U32_MAX * 8 / 1e9:.0f}gbit")
    opts: dict[str, object] = {
        "delay": round(spec.delay * 1e6),
        "jitter": round(spec.jitter * 1e6),
        "loss": 100.0 if spec.partitioned else spec.loss * 100,
        "duplicate": spec.duplicate * 100,
        "limit": spec.limit,
    }
    if spec.reorder:
        opts["prob_reorder"] = spec.reorder * 100
    if spec.corrupt:
        opts["prob_corrupt"] = spec.corrupt * 100
    if spec.rate:
        opts["rate"] = int(spec.rate / 8)
    return opts


def expressible(spec: Impairment) -> bool:
    try:
        netem_options(spec)
    except UsageError:
        return False
    return True


def available() -> bool:
    """Does this kernel have the netem qdisc? Tried once per process on a veth in a
    scratch namespace (named with the run prefix, removed at once)."""
    global _available
    if _available is None:
        kernel.require_root("probing for tc netem")
        ns = f"{kernel.new_run_prefix()}-netemprobe{secrets.token_hex(2)}"
        kernel.create_netns(ns)
        try:
            kernel.add_veth(ns, "probe0", ns, "probe1")
            with kernel.in_netns(ns), IPRoute() as ipr:
                index = ipr.link_lookup(ifname="probe0")[0]
                try:
                    ipr.tc("add", "netem", index=index, handle="1:0", delay=1000)
                    _available = True
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    _available = False
        finally:
            kernel.remove_netns(ns)
    return _available


def apply(ns: str, ifname: str, spec: Impairment) -> None:
    """Install (or replace) the netem qdisc on the egress of `ifname` in `ns`."""
    opts = netem_options(spec)
    with kernel.in_netns(ns), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            raise UsageError(f"interface {ifname!r} not found in namespace {ns!r}")
        ipr.tc("replace", "netem", index=index[0], handle="1:0", **opts)
