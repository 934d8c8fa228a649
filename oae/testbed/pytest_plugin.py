"""pytest plugin: fixtures for namespace testbeds that are torn down even when a test fails.

Register with `pytest_plugins = ["oae.testbed.pytest_plugin"]` in a conftest.py. The plugin
gives the whole session one run prefix (sets OAE_RUN_PREFIX unless already set, so
subprocesses share it) and at session end reports, removes and fails on anything left in
the kernel carrying that prefix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oae.testbed import kernel, manager, topology
from oae.testbed.manager import Testbed
from oae.testbed.topology import Topology

_SESSION_PREFIX_KEY = pytest.StashKey[str]()
_STATE_DIR_KEY = pytest.StashKey[str | None]()


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and veth links")


def pytest_configure(config: pytest.Config) -> None:
    prefix = os.environ.get(kernel.RUN_PREFIX_ENV) or kernel.new_run_prefix()
    os.environ[kernel.RUN_PREFIX_ENV] = kernel.check_prefix(prefix, kernel.RUN_PREFIX_ENV)
    config.stash[_SESSION_PREFIX_KEY] = prefix
    # Testbed state of this session goes to a private, short path (Unix socket limit)
    # unless the user chose one, so tests never see or touch the user's testbeds.
    own = None
    if not os.environ.get(manager.STATE_DIR_ENV):
        own = tempfile.mkdtemp(prefix="oae-tb-", dir="/tmp")
        os.environ[manager.STATE_DIR_ENV] = own
    config.stash[_STATE_DIR_KEY] = own


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_STATE_DIR_KEY, None)
    if own:
        shutil.rmtree(own, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    return f"oae testbed run prefix: {config.stash[_SESSION_PREFIX_KEY]}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if any namespace or link of this run's prefix is left behind."""
    if os.geteuid() != 0:
        return
    prefix = session.config.stash[_SESSION_PREFIX_KEY]
    leftover = kernel.list_netns(prefix) + kernel.list_root_links(prefix)
    leftover += [f"process:{pid}" for pid in manager.process_pids(prefix)]
    if not leftover:
        return
    removed = manager.clean(prefix)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    msg = (
        f"oae testbed: {len(leftover)} kernel object(s) with run prefix {prefix} were left "
        f"behind by tests: {', '.join(leftover[:10])}; removed {len(removed)}"
    )
    if reporter is not None:
        reporter.write_line(msg, red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def run_prefix(request: pytest.FixtureRequest) -> str:
    """The session's run prefix (every kernel object created in the session starts with it)."""
    return request.config.stash[_SESSION_PREFIX_KEY]


@pytest.fixture
def veth_pair() -> Iterator[kernel.VethPair]:
    """Two namespaces joined by one veth (both ends up), removed after the test."""
    _need_root()
    with kernel.veth_pair() as pair:
        yield pair


@pytest.fixture
def testbed() -> Iterator[Callable[..., Testbed]]:
    """Factory: `testbed("netns/ring.toml", nodes=16)` (or a Topology; `start_nodes=True`
    runs `oae node` in each node) brings a testbed up; every testbed made is taken down
    after the test, whatever its outcome."""
    _need_root()
    made: list[str] = []

    def make(
        source: str | Path | Topology,
        nodes: int | None = None,
        name: str | None = None,
        start_nodes: bool = False,
        node_args: tuple[str, ...] = (),
    ) -> Testbed:
        topo = source if isinstance(source, Topology) else topology.load(source, nodes)
        tb = manager.up(topo, name, start_nodes, node_args)
        made.append(tb.name)
        return tb

    try:
        yield make
    finally:
        for name in reversed(made):
            manager.down(name)
