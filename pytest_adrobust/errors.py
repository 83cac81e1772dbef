"""Error and warning types that users of the plugin can act on."""

from __future__ import annotations

import pytest


class AdrobustError(Exception):
    """Invalid settings, data or detector, with a message that names the value and the fix."""


class AdrobustUsageError(AdrobustError, pytest.UsageError):
    """Invalid command-line option, ini key or marker argument.

    Subclasses :class:`pytest.UsageError`, so pytest prints the message without a traceback and
    exits with its usage-error status.
    """


class AdrobustWarning(pytest.PytestWarning):
    """Result that needs the reader's attention: random weights, a failed self-check."""
