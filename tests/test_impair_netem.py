"""tc netem where the kernel has it: option mapping, detection, and the fallback to the
impairing bridge where it does not (as on this project's reference kernel)."""

from __future__ import annotations

import os

import pytest

from oae.errors import UsageError
from oae.testbed import kernel, manager, netem, probe
from oae.testbed.impair import Flap, Impairment, Window
from oae.testbed.topology import loads

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, veth, tc)")


def _pair(impairer: str, impair: str) -> str:
    return (
        f'[topology]\nname = "nt_{impairer}"\nshape = "pair"\nimpairer = "{impairer}"\n'
        f'[[link]]\na = "n0"\nb = "n1"\nimpair = {{ {impair} }}\n'
    )


def test_netem_options_units() -> None:
    spec = Impairment(loss=0.1, duplicate=0.01, reorder=0.05, corrupt=0.001, delay=0.010,
                      jitter=0.001, rate=100e6, limit=500)  # fmt: skip
    assert netem.netem_options(spec) == {
        "delay": 10_000,  # µs
        "jitter": 1_000,
        "loss": pytest.approx(10.0),  # percent
        "duplicate": pytest.approx(1.0),
        "prob_reorder": pytest.approx(5.0),
        "prob_corrupt": pytest.approx(0.1),
        "rate": 12_500_000,  # bytes/s
        "limit": 500,
    }
    assert netem.netem_options(Impairment(loss=0.2, partitioned=True))["loss"] == 100.0


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (Impairment(partitions=(Window(1, 1),)), "partitions or flaps"),
        (Impairment(flap=Flap(2, 1)), "partitions or flaps"),
        (Impairment(reorder=0.1), "reorder needs a delay"),
        (Impairment(rate=40e9), "at most"),
    ],
)
def test_netem_cannot_express(spec: Impairment, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        netem.netem_options(spec)
    assert not netem.expressible(spec)


def test_impairer_field_checked() -> None:
    with pytest.raises(UsageError, match="x.toml:4: topology.impairer"):
        loads('[topology]\nshape = "pair"\n\nimpairer = "tc"\n', "x.toml")


@root
def test_detection_leaves_nothing(run_prefix: str) -> None:
    assert isinstance(netem.available(), bool)
    assert not [ns for ns in kernel.list_netns(run_prefix) if "netemprobe" in ns]


@root
def test_netem_demanded_without_kernel_support(run_prefix: str) -> None:
    if netem.available():
        pytest.skip("this kernel has tc netem")
    before = kernel.list_netns(run_prefix)
    with pytest.raises(UsageError, match="no tc netem"):
        manager.up(loads(_pair("netem", 'loss = "5%", delay = "1ms"'), "p.toml"))
    assert kernel.list_netns(run_prefix) == before
    assert not (manager.state_dir() / "nt_netem").exists()


@root
def test_auto_uses_netem_where_possible_else_bridge(testbed) -> None:
    tb = testbed(loads(_pair("auto", 'loss = "5%", delay = "1ms"'), "p.toml"))
    rec = tb.state["links"][0]
    assert rec["impairer"] == ("netem" if netem.available() else "bridge")
    assert (rec["bridge"] is None) == (rec["impairer"] == "netem")
    assert probe.probe_link(tb, "n0-n1")
    # a scheduled partition is beyond netem: always the bridge
    tb2 = testbed(loads(_pair("auto", 'partition = [{ at = "600s", for = "1s" }]'), "p.toml"),
                  name="nt_auto2")  # fmt: skip
    assert tb2.state["links"][0]["impairer"] == "bridge"


@root
@pytest.mark.skipif(
    os.geteuid() != 0 or not netem.available(), reason="this kernel has no tc netem"
)
def test_netem_link_loss_and_runtime_change(testbed) -> None:
    tb = testbed(loads(_pair("netem", 'loss = "100%"'), "p.toml"))
    assert tb.state["links"][0]["impairer"] == "netem"
    assert not probe.probe_link(tb, "n0-n1", timeout=0.2, attempts=2)
    rep = manager.impair(tb.name, "n0-n1", ["loss=0%"])
    assert rep["impairer"] == "netem" and rep["impair"]["loss"] == 0
    assert probe.probe_link(tb, "n0-n1")
    assert manager.load(tb.name).link("n0-n1")["impair"]["loss"] == 0
