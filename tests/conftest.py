"""Shared test configuration.

Numba compiles on first call (seconds), so hypothesis runs without a deadline.
"""
import os

from hypothesis import settings

settings.register_profile("fastloss", deadline=None, max_examples=40, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastloss"))
