"""Errors that teach: the mistakes a PyTorch user makes first get a message that says what to do."""
import numpy as np
import pytest

import fastloss as fl

rng = np.random.default_rng(0)
X = rng.standard_normal((6, 4))
T = rng.integers(0, 4, 6)


@pytest.mark.parametrize("fn", [fl.cross_entropy, fl.value_and_grad(fl.cross_entropy)])
def test_float_class_indices_to_cross_entropy(fn):
    with pytest.raises(ValueError, match="class indices must be integers") as e:
        fn(X, T.astype(np.float32))
    assert "probabilities" in str(e.value) and "(6, 4)" in str(e.value)


def test_float_target_of_another_shape_says_both_kinds():
    with pytest.raises(ValueError, match=r"probabilities and must have input's shape \(6, 4\)") as e:
        fl.cross_entropy(X, np.zeros((3, 2)))
    assert "integer array of shape (6,)" in str(e.value)


def test_float_class_indices_to_nll_loss():
    with pytest.raises(TypeError, match="class indices, which must be integers"):
        fl.nll_loss(X, T.astype(np.float64))


def test_float_probabilities_still_work():
    q = fl.softmax(X, axis=1)
    assert np.isfinite(fl.cross_entropy(X, q))


@pytest.mark.parametrize("fn", [fl.log_softmax, fl.softmax])
def test_dim_is_an_alias_of_axis(fn):
    x = rng.standard_normal((3, 4, 5))
    for d in (0, 1, -1, 2):
        np.testing.assert_array_equal(fn(x, dim=d), fn(x, axis=d))
    np.testing.assert_array_equal(fn(x), fn(x, axis=-1))
    v1, g1 = fl.value_and_grad(fn)(x, dim=1, grad_output=np.ones_like(x))
    v2, g2 = fl.value_and_grad(fn)(x, axis=1, grad_output=np.ones_like(x))
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("fn", [fl.log_softmax, fl.softmax])
def test_dim_and_axis_together_is_a_type_error(fn):
    with pytest.raises(TypeError, match="not both"):
        fn(X, axis=1, dim=1)


@pytest.mark.parametrize("fn", [fl.log_softmax, fl.softmax])
def test_dim_out_of_range(fn):
    with pytest.raises(ValueError, match="out of bounds"):
        fn(X, dim=2)
