"""pytest plugin: fixtures for namespace testbeds that are torn down even when a test fails.

Register with `pytest_plugins = ["oae.testbed.pytest_plugin"]` in a conftest.py. The plugin
gives the whole session one run prefix (sets OAE_RUN_PREFIX unless already set, so
subprocesses share it) and at session end reports, removes and fails on anything left in
the kernel carrying that prefix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from oae.testbed import kernel

_SESSION_PREFIX_KEY = pytest.StashKey[str]()


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and veth links")


def pytest_configure(config: pytest.Config) -> None:
    prefix = os.environ.get(kernel.RUN_PREFIX_ENV) or kernel.new_run_prefix()
    os.environ[kernel.RUN_PREFIX_ENV] = kernel.check_prefix(prefix, kernel.RUN_PREFIX_ENV)
    config.stash[_SESSION_PREFIX_KEY] = prefix


def pytest_report_header(config: pytest.Config) -> str:
    return f"oae testbed run prefix: {config.stash[_SESSION_PREFIX_KEY]}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if any namespace or link of this run's prefix is left behind."""
    if os.geteuid() != 0:
        return
    prefix = session.config.stash[_SESSION_PREFIX_KEY]
    leftover = kernel.list_netns(prefix) + kernel.list_root_links(prefix)
    if not leftover:
        return
    removed = kernel.clean(prefix)
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
