"""Every example in the public docstrings runs and prints what it says."""
import doctest

import fastloss.api


def test_api_docstring_examples():
    result = doctest.testmod(fastloss.api, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10
    assert result.failed == 0
