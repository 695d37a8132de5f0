"""External programs the tests run (swaks, mbsync, opendkim-testmsg ...).

Locally a missing program skips its tests; under CI (``CI`` set, as ``.ci/run`` runs)
it is a failure, because ``.ci/run`` installs every one of them and a failed install
must not pass unnoticed as a row of skips."""

from __future__ import annotations

import os
import shutil

import pytest


def needs_tool(tool: str, package: str) -> pytest.MarkDecorator:
    """A skipif mark: skip without ``tool`` unless under CI, where the tests then run
    and fail on the missing program."""
    return pytest.mark.skipif(shutil.which(tool) is None and not os.environ.get("CI"),
                              reason=f"{tool} not installed (Debian package {package}; .ci/run installs it)")


def require_tool(tool: str, package: str) -> None:
    """Inside a test or fixture: skip without ``tool``, or fail under CI."""
    if shutil.which(tool) is None:
        missing(f"{tool} not installed (Debian package {package}; .ci/run installs it)")


def missing(message: str) -> None:
    """Something .ci/run installs is not there: skip locally, fail under CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
