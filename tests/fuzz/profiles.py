"""Hypothesis settings profiles for the fuzz tests, chosen by ``PYMAILD_FUZZ_PROFILE``.

* ``ci`` (default): a few dozen examples per property, so the whole fuzz set takes well
  under a minute in the normal test run.
* ``long``: many examples per property, for ``python3 -m tests.fuzz.run --engine hypothesis``
  or ``PYMAILD_FUZZ_PROFILE=long python3 -m pytest tests/fuzz``. Failures are kept in the
  example database (``.hypothesis/``) and replayed first on the next run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True
)
settings.register_profile(
    "dev", max_examples=500, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True
)
settings.register_profile("smoke", max_examples=5, deadline=None, suppress_health_check=_SLOW_OK)

PROFILE = os.environ.get("PYMAILD_FUZZ_PROFILE", "ci")
# Used as a decorator on each fuzz test (not loaded globally: other tests keep their settings).
FUZZ = settings.get_profile(PROFILE)
