"""Loaded at interpreter start when this directory is first on PYTHONPATH (fault tests only)."""

import os

if os.environ.get("PYMAILD_TEST_FAULTS"):
    from tests.support.faults import install

    install(os.environ["PYMAILD_TEST_FAULTS"])
