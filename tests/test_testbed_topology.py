"""Topology files: every shipped file parses, shapes have the right links, and bad files
get one-line errors naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from oae.errors import UsageError
from oae.testbed import topology
from oae.testbed.topology import loads, shape_edges

NETNS = Path(__file__).resolve().parents[1] / "netns"


@pytest.mark.parametrize("path", sorted(NETNS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_files_parse(path: Path) -> None:
    topo = topology.load(path)
    assert len(topo.nodes) >= 2 and topo.links
    for link in topo.links:
        for node in (link.a, link.b):
            assert len(topo.ifname(node, link)) <= 15


@pytest.mark.parametrize(
    ("shape", "n", "expected"),
    [
        ("chain", 5, 4),
        ("ring", 16, 16),
        ("star", 7, 6),
        ("tree", 16, 15),
        ("mesh", 16, 120),
        ("grid", 16, 24),
        ("grid", 10, 13),
        ("pair", 2, 1),
    ],
)
def test_shape_link_counts(shape: str, n: int, expected: int) -> None:
    edges = shape_edges(shape, n)
    assert len(edges) == expected
    assert len({frozenset(e) for e in edges}) == expected  # no duplicate links
    assert {i for e in edges for i in e} == set(range(n))  # connected to every node


def test_tree_parent_and_arity() -> None:
    assert shape_edges("tree", 7, arity=3) == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]


def test_nodes_override_and_link_impairment() -> None:
    text = (NETNS / "ring.toml").read_text()
    topo = loads(text, "ring.toml", nodes=20)
    assert len(topo.nodes) == 20 and len(topo.links) == 20
    imp = topo.link("n0-n1").impair
    assert imp is not None and imp.loss == pytest.approx(0.01) and imp.delay == 0.002
    assert topo.link("n1-n2").impair is None
    assert topo.ifname("n0", topo.link("n0-n1")) == "to-n1"


def test_defaults_merge_with_link_table() -> None:
    topo = topology.load(NETNS / "lossy-chain.toml")
    a, b = topo.link("n0-n1").impair, topo.link("n1-n2").impair
    assert a is not None and b is not None
    assert a.loss == pytest.approx(0.02) and b.loss == pytest.approx(0.05)
    assert b.duplicate == pytest.approx(0.01)  # inherited from [defaults.impair]
    assert b.partitions[0].start == 30 and b.flap is not None and b.flap.count == 3
    assert topo.link("n0-n1").seed != topo.link("n1-n2").seed


def test_bridge_all_puts_every_link_on_the_bridge() -> None:
    topo = loads('[topology]\nshape = "chain"\nnodes = 3\nbridge = "all"\n', "x.toml")
    assert all(link.impair is not None for link in topo.links)


BAD = [
    (
        '[topology]\nshape = "ring"\nnodes = 4\n[[link]]\na = "n0"\nb = "n1"\n'
        '[link.impair]\ndelay = "10ms"\nloss = "12 percent"\n',
        9,
        "link[1].impair.loss",
    ),
    ('[topology]\nshape = "rnig"\n', 2, "topology.shape"),
    ('[topology]\nshape = "ring"\nnodes = 2\n', 3, "topology.nodes"),
    ('[topology]\nshape = "mesh"\nnodez = 3\n', 3, "topology.nodez"),
    (
        '[topology]\nshape = "explicit"\n[[node]]\nname = "a"\n[[node]]\nname = "b"\n'
        '[[link]]\na = "a"\nb = "c"\n',
        9,
        "link[1].b",
    ),
    ('[topology]\nshape = "explicit"\n[[node]]\nname = "a-b"\n', 4, "node[1].name"),
    ('[topology]\nshape = "chain"\nnodes = 3\n[[link]]\na = "n0"\nb = "n2"\n', 5, "link[1]"),
    (
        '[topology]\nshape = "chain"\n[defaults.impair]\nreorder = "60%"\n',
        4,
        "defaults.impair.reorder",
    ),
    (
        '[topology]\nshape = "chain"\n[defaults.impair]\nflap = { every = "1s", down = "2s" }\n',
        4,
        "defaults.impair.flap",
    ),
    (
        '[topology]\nshape = "chain"\n[[link]]\na = "n0"\nb = "n1"\nimpair = { jitter = "fast" }\n',
        6,
        "link[1].impair.jitter",
    ),
    ('[topology]\nshape = "chain"\nnodes = = 3\n', 3, "TOML syntax"),
]


@pytest.mark.parametrize(("text", "line", "field"), BAD)
def test_bad_files_name_file_line_field(text: str, line: int, field: str) -> None:
    with pytest.raises(UsageError) as err:
        loads(text, "bad.toml")
    msg = str(err.value)
    assert msg.startswith(f"bad.toml:{line}: {field}"), msg
    assert "\n" not in msg


def test_nodes_flag_rejected_for_explicit_and_pair() -> None:
    with pytest.raises(UsageError, match="parametric"):
        topology.load(NETNS / "explicit.toml", nodes=5)
    with pytest.raises(UsageError, match="exactly 2"):
        topology.load(NETNS / "pair.toml", nodes=3)


def test_hosts_file_rejects_impairments_and_missing_file() -> None:
    text = (NETNS / "two-host.toml").read_text() + 'impair = { loss = "1%" }\n'
    with pytest.raises(UsageError, match="real-NIC"):
        loads(text, "two-host.toml")
    with pytest.raises(UsageError, match="cannot read"):
        topology.load(NETNS / "nope.toml")
