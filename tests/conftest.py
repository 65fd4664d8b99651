"""Hypothesis settings profiles, shared by every test module.

``dev``       quick local runs (20 examples, randomized)
``ci``        the default: derandomized so a green run is reproducible, bounded time
``thorough``  release checks: many more examples, randomized

Select one with ``HYPOTHESIS_PROFILE=thorough python -m pytest``.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
