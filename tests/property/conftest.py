"""Hypothesis profiles for the property tests.

- ``ci`` (the default): a few hundred examples per property, enough to run in the normal suite.
- ``thorough``: thousands per property; select it with ``HYPOTHESIS_PROFILE=thorough``.

How many examples each property ran: ``pytest tests/property --hypothesis-show-statistics``.
No example database is kept (``database=None``): nothing is written into the working tree; a
failure prints its minimal example (and ``print_blob`` a ``@reproduce_failure`` line) instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=250,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", settings.get_profile("ci"), max_examples=4000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
