"""Topology files (TOML): nodes, links, per-link impairments and a seed.

A file either names a parametric `shape` (pair, chain, ring, star, tree, mesh, grid; sized
by `nodes`, overridable with `--nodes N`) or lists `[[node]]`s and `[[link]]`s itself
(`shape = "explicit"`), or names real interfaces (`shape = "hosts"`, no namespaces). Errors
name the file, the line and the field, on one line. The format is documented in
docs/testbeds.md.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from oae.errors import UsageError
from oae.testbed.impair import Impairment, link_seed, parse_impair_field

SHAPES = ("pair", "chain", "ring", "star", "tree", "mesh", "grid", "explicit", "hosts")
PARAMETRIC = ("pair", "chain", "ring", "star", "tree", "mesh", "grid")
MAX_NODES = 512
# Node names end up in interface names ("to-" + peer <= 15 chars) and namespace names.
NODE_RE = re.compile(r"^[A-Za-z0-9_]{1,12}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,24}$")
_TOP_KEYS = {"name", "shape", "nodes", "seed", "arity", "columns", "bridge", "impairer"}
IMPAIRERS = ("bridge", "netem", "auto")


@dataclass(frozen=True)
class Link:
    """An undirected link between nodes a and b. `impair` None means a direct veth; a link
    with an Impairment (possibly all zero) goes through the impairing bridge."""

    name: str
    a: str
    b: str
    impair: Impairment | None
    seed: int


@dataclass(frozen=True)
class Topology:
    name: str
    shape: str
    nodes: tuple[str, ...]
    links: tuple[Link, ...]
    seed: int
    interfaces: Mapping[str, str]  # hosts shape only: node -> real interface name
    impairer: str = "bridge"  # for impaired links: bridge, netem or auto (oae.testbed.netem)

    def ifname(self, node: str, link: Link) -> str:
        """The interface of `node` on `link`, named after the peer (`to-PEER`)."""
        if self.shape == "hosts":
            return self.interfaces[node]
        return "to-" + (link.b if node == link.a else link.a)

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.name == name:
                return link
        raise UsageError(f"testbed {self.name!r} has no link {name!r} (links look like n0-n1)")


class _Source:
    """The TOML text, to find the line of a field for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, table: str, index: int | None, key: str | None) -> int:
        """Line of `key` inside the `index`-th `[[table]]` (or `[table]`), best effort."""
        header = re.compile(
            r"^\s*\[\[\s*" + re.escape(table) + r"\s*\]\]"
            if index is not None
            else r"^\s*\[\s*" + re.escape(table) + r"\s*\]"
        )
        any_header = re.compile(r"^\s*\[")
        own_sub = re.compile(r"^\s*\[\s*" + re.escape(table) + r"\.")
        start, seen = None, -1
        for i, line in enumerate(self.lines):
            if header.match(line):
                seen += 1
                if index is None or seen == index:
                    start = i
                    break
        if start is None:
            return 1
        if key is None:
            return start + 1
        key_re = re.compile(r"(^|[\s{,])" + re.escape(key) + r"\s*=")
        for i in range(start + 1, len(self.lines)):
            line = self.lines[i]
            if any_header.match(line) and not own_sub.match(line):
                break
            if key_re.search(line.split("#", 1)[0]):
                return i + 1
        return start + 1

    def error(
        self,
        msg: str,
        table: str,
        index: int | None = None,
        key: str | None = None,
        field: str | None = None,
    ) -> UsageError:
        line = self.line_of(table, index, key)
        name = field or (f"{table}[{index + 1}]" if index is not None else table) + (
            f".{key}" if key else ""
        )
        return UsageError(f"{self.path}:{line}: {name}: {msg}")


def _int(src: _Source, top: Mapping[str, object], key: str, default: int, lo: int) -> int:
    v = top.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise src.error(
            f"{v!r} is not a whole number >= {lo}", "topology", None, key, f"topology.{key}"
        )
    return v


def shape_edges(shape: str, n: int, arity: int = 2, columns: int = 0) -> list[tuple[int, int]]:
    """The links of a parametric shape on nodes 0..n-1."""
    if shape == "pair" or shape == "chain":
        return [(i, i + 1) for i in range(n - 1)]
    if shape == "ring":
        return [(i, i + 1) for i in range(n - 1)] + [(n - 1, 0)]
    if shape == "star":
        return [(0, i) for i in range(1, n)]
    if shape == "tree":
        return [((i - 1) // arity, i) for i in range(1, n)]
    if shape == "mesh":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if shape == "grid":
        cols = columns or math.ceil(math.sqrt(n))
        edges = []
        for i in range(n):
            if (i + 1) % cols and i + 1 < n:
                edges.append((i, i + 1))
            if i + cols < n:
                edges.append((i, i + cols))
        return edges
    raise ValueError(shape)


_MIN_NODES = {"pair": 2, "chain": 2, "ring": 3, "star": 2, "tree": 2, "mesh": 2, "grid": 2}


def _impairment(
    src: _Source,
    table: Mapping[str, object],
    base: Impairment | None,
    where: str,
    index: int | None,
    prefix: str,
) -> Impairment:
    kw: dict[str, object] = {}
    for key, value in table.items():
        try:
            kw.update(parse_impair_field(key, value))
        except ValueError as exc:
            raise src.error(str(exc), where, index, key, f"{prefix}.{key}") from None
    start = base or Impairment()
    return Impairment(**{**start.__dict__, **kw})


def loads(text: str, path: str = "<topology>", nodes: int | None = None) -> Topology:
    """Parse a topology file's text; `nodes` overrides the size of a parametric shape."""
    src = _Source(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise UsageError(f"{path}:{m.group(1) if m else 1}: TOML syntax: {exc}") from None
    unknown = set(doc) - {"topology", "defaults", "node", "link"}
    if unknown:
        key = sorted(unknown)[0]
        raise src.error(
            "unknown table (known: topology, defaults, node, link)", key, None, None, key
        )
    top = doc.get("topology")
    if not isinstance(top, dict):
        raise UsageError(f"{path}:1: topology: missing [topology] table")
    for key in top:
        if key not in _TOP_KEYS:
            raise src.error(
                f"unknown field (known: {', '.join(sorted(_TOP_KEYS))})",
                "topology",
                None,
                key,
                f"topology.{key}",
            )
    name = top.get("name", Path(path).stem.replace("-", "_"))
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise src.error(
            f"{name!r}: 1-24 characters of [A-Za-z0-9_]", "topology", None, "name", "topology.name"
        )
    shape = top.get("shape")
    if shape not in SHAPES:
        raise src.error(
            f"{shape!r}: one of {', '.join(SHAPES)}", "topology", None, "shape", "topology.shape"
        )
    seed = _int(src, top, "seed", 1, 0)
    impairer = top.get("impairer", "bridge")
    if impairer not in IMPAIRERS:
        raise src.error(
            f"{impairer!r}: one of {', '.join(IMPAIRERS)}",
            "topology",
            None,
            "impairer",
            "topology.impairer",
        )
    bridge = top.get("bridge", "impaired")
    if bridge not in ("impaired", "all"):
        raise src.error(
            f"{bridge!r}: 'impaired' (default) or 'all'",
            "topology",
            None,
            "bridge",
            "topology.bridge",
        )

    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - {"impair"}:
        raise src.error("only [defaults.impair] is allowed", "defaults", None, None, "defaults")
    default_impair = None
    if "impair" in defaults:
        default_impair = _impairment(
            src, defaults["impair"], None, "defaults.impair", None, "defaults.impair"
        )

    raw_nodes = doc.get("node", [])
    raw_links = doc.get("link", [])
    if not isinstance(raw_nodes, list) or not isinstance(raw_links, list):
        raise UsageError(f"{path}:1: node/link: write them as [[node]] and [[link]] tables")

    interfaces: dict[str, str] = {}
    if shape in PARAMETRIC:
        if raw_nodes:
            raise src.error(
                "a parametric shape names its own nodes n0..nN-1; drop [[node]]",
                "node",
                0,
                None,
                "node",
            )
        n = nodes if nodes is not None else _int(src, top, "nodes", _MIN_NODES[shape], 1)
        if shape == "pair" and n != 2:
            raise UsageError(f"{path}: --nodes/nodes: a pair has exactly 2 nodes, not {n}")
        if nodes is not None and not _MIN_NODES[shape] <= n <= MAX_NODES:
            raise UsageError(f"--nodes {n}: a {shape} has {_MIN_NODES[shape]}..{MAX_NODES} nodes")
        if not _MIN_NODES[shape] <= n <= MAX_NODES:
            raise src.error(
                f"{n} nodes: {shape} needs {_MIN_NODES[shape]}..{MAX_NODES}",
                "topology",
                None,
                "nodes",
                "topology.nodes",
            )
        arity = _int(src, top, "arity", 2, 1)
        columns = _int(src, top, "columns", 0, 0)
        node_names = tuple(f"n{i}" for i in range(n))
        pairs = [(node_names[i], node_names[j]) for i, j in shape_edges(shape, n, arity, columns)]
    else:
        if nodes is not None:
            raise UsageError(f"{path}: --nodes applies to parametric shapes only, not {shape}")
        names: list[str] = []
        for i, nd in enumerate(raw_nodes):
            nname = nd.get("name") if isinstance(nd, dict) else None
            if not isinstance(nname, str) or not NODE_RE.match(nname):
                raise src.error(
                    f"{nname!r}: 1-12 characters of [A-Za-z0-9_]",
                    "node",
                    i,
                    "name",
                    f"node[{i + 1}].name",
                )
            if nname in names:
                raise src.error(
                    f"duplicate node {nname!r}", "node", i, "name", f"node[{i + 1}].name"
                )
            extra = set(nd) - ({"name", "interface"} if shape == "hosts" else {"name"})
            if extra:
                key = sorted(extra)[0]
                raise src.error("unknown field", "node", i, key, f"node[{i + 1}].{key}")
            if shape == "hosts":
                ifname = nd.get("interface")
                if not isinstance(ifname, str) or not re.match(r"^[A-Za-z0-9_.@-]{1,15}$", ifname):
                    raise src.error(
                        f"{ifname!r}: a real interface name (<= 15 chars)",
                        "node",
                        i,
                        "interface",
                        f"node[{i + 1}].interface",
                    )
                interfaces[nname] = ifname
            names.append(nname)
        if len(names) < 2:
            raise UsageError(f"{path}: node: a {shape} topology needs at least 2 [[node]]s")
        node_names = tuple(names)
        pairs = []

    # [[link]]: in explicit/hosts shapes they define links; in parametric shapes they name
    # an existing link (a, b) to give it its own impairment.
    overrides: dict[frozenset[str], tuple[int, dict]] = {}
    for i, lk in enumerate(raw_links):
        if not isinstance(lk, dict):
            raise src.error("must be a table", "link", i, None, f"link[{i + 1}]")
        extra = set(lk) - {"a", "b", "impair"}
        if extra:
            key = sorted(extra)[0]
            raise src.error(
                "unknown field (known: a, b, impair)", "link", i, key, f"link[{i + 1}].{key}"
            )
        ends = []
        for key in ("a", "b"):
            v = lk.get(key)
            if v not in node_names:
                raise src.error(
                    f"{v!r} is not a node of this topology", "link", i, key, f"link[{i + 1}].{key}"
                )
            ends.append(v)
        if ends[0] == ends[1]:
            raise src.error("a link joins two different nodes", "link", i, "b", f"link[{i + 1}].b")
        k = frozenset(ends)
        if k in overrides:
            raise src.error(f"duplicate link {ends[0]}-{ends[1]}", "link", i, "a", f"link[{i + 1}]")
        impair = lk.get("impair")
        if impair is not None and not isinstance(impair, dict):
            raise src.error("must be a table", "link", i, "impair", f"link[{i + 1}].impair")
        overrides[k] = (i, impair)
        if shape in PARAMETRIC:
            if k not in {frozenset(p) for p in pairs}:
                raise src.error(
                    f"{ends[0]}-{ends[1]} is not a link of this {shape}",
                    "link",
                    i,
                    "a",
                    f"link[{i + 1}]",
                )
        else:
            pairs.append((ends[0], ends[1]))
    if shape == "hosts":
        if len(pairs) != 1 or len(node_names) != 2:
            raise UsageError(f"{path}: link: a hosts topology has 2 nodes and 1 link")
        if default_impair is not None or any(imp for _, imp in overrides.values()):
            raise UsageError(f"{path}: impair: real-NIC links cannot be impaired by oae")
    if not pairs:
        raise UsageError(f"{path}: link: the topology has no links")

    links = []
    for a, b in pairs:
        lname = f"{a}-{b}"
        i, table = overrides.get(frozenset((a, b)), (None, None))
        impair = default_impair
        if table is not None:
            impair = _impairment(src, table, default_impair, "link", i, f"link[{i + 1}].impair")
        if impair is None and bridge == "all" and shape != "hosts":
            impair = Impairment()
        links.append(Link(lname, a, b, impair, link_seed(seed, lname)))
    return Topology(name, shape, node_names, tuple(links), seed, interfaces, impairer)


def load(path: str | Path, nodes: int | None = None) -> Topology:
    """Read and parse a topology file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read topology file: {exc.strerror}") from None
    return loads(text, str(path), nodes)
