"""Exception types shared across oae: one base class, so the CLI can print any of them as
a single line."""

from __future__ import annotations


class OaeError(Exception):
    """Base class of every error oae raises on purpose."""


class UsageError(OaeError):
    """A bad flag, argument or file that the user can fix; the message names the problem."""


class NeedsRootError(OaeError):
    """The command needs root (or CAP_NET_ADMIN/CAP_NET_RAW) and does not have it."""
