"""The examples train real models: proof that the gradients are right end to end."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import diabetes_regression  # noqa: E402
import digits_mlp  # noqa: E402


def test_digits_mlp_reaches_95_percent_held_out():
    _, acc = digits_mlp.train(epochs=15)
    assert acc >= 0.95


def test_diabetes_network_beats_the_constant_predictor():
    mape, rmse, base_mape, base_rmse = diabetes_regression.train(epochs=200)
    # Diabetes is a noisy target (a linear model explains about half the variance): a clear margin
    # over the constant predictor is what a working gradient buys.
    assert rmse < 0.9 * base_rmse
    assert mape < 0.85 * base_mape
