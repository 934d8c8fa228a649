"""Shared pytest configuration: the testbed plugin (namespaces, veth fixtures, leak check)."""

pytest_plugins = ["oae.testbed.pytest_plugin"]
