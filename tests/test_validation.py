"""Contract §4 (docs/contract.md): bad input gets a specific exception before any kernel runs; plus the package-level API."""
import subprocess
import sys

import numpy as np
import pytest

import fastloss as fl

X = np.linspace(-1, 1, 12).reshape(4, 3)
P = np.linspace(0.1, 0.9, 12).reshape(4, 3)


@pytest.mark.parametrize("fn,kw", [
    (fl.smooth_l1_loss, {"beta": -0.5}),
    (fl.huber_loss, {"delta": -1.0}),
])
def test_negative_beta_or_delta(fn, kw):
    with pytest.raises(ValueError, match="non-negative"):
        fn(X, X, **kw)


def test_negative_triplet_margin():
    with pytest.raises(ValueError, match="margin"):
        fl.triplet_margin_loss(X, X, X, margin=-1.0)


def test_nonpositive_triplet_p():
    with pytest.raises(ValueError, match="p must be positive"):
        fl.triplet_margin_loss(X, X, X, p=0)


@pytest.mark.parametrize("bad", [-0.5, 1.5])
def test_bce_input_outside_unit_interval(bad):
    x = P.copy()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=str(bad)):
        fl.binary_cross_entropy(x, P)


def test_bce_nan_input_is_data_not_an_error():
    x = P.copy()
    x[0, 0] = np.nan
    assert np.isnan(fl.binary_cross_entropy(x, P))


@pytest.mark.parametrize("bad", [3, -1, 99])
def test_class_index_out_of_range_names_the_value(bad):
    t = np.array([0, 1, bad, 2])
    with pytest.raises(IndexError, match=str(bad)):
        fl.cross_entropy(X, t)
    with pytest.raises(IndexError, match=str(bad)):
        fl.nll_loss(X, t)


def test_ignore_index_is_not_out_of_range():
    t = np.array([0, -100, 2, 1])
    assert np.isfinite(fl.cross_entropy(X, t))
    t = np.array([0, 7, 2, 1])
    assert np.isfinite(fl.cross_entropy(X, t, ignore_index=7))


def test_cross_entropy_target_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        fl.cross_entropy(X, np.zeros(5, dtype=np.int64))


def test_cross_entropy_weight_shape():
    with pytest.raises(ValueError, match="weight"):
        fl.cross_entropy(X, np.zeros(4, dtype=np.int64), weight=np.ones(4))


def test_label_smoothing_outside_unit_interval():
    with pytest.raises(ValueError, match="label_smoothing"):
        fl.cross_entropy(X, np.zeros(4, dtype=np.int64), label_smoothing=1.5)


def test_float_class_target_for_nll_is_a_type_error():
    with pytest.raises(TypeError):
        fl.nll_loss(X, np.zeros(4))


def test_pointwise_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)"):
        fl.mse_loss(X, X.T)


def test_pointwise_broadcasting_is_refused():
    with pytest.raises(ValueError):
        fl.l1_loss(X, X[0])


def test_kl_div_accepts_batchmean_and_names_it_in_errors():
    assert np.isfinite(fl.kl_div(np.log(P), P, reduction="batchmean"))
    with pytest.raises(ValueError, match="batchmean"):
        fl.kl_div(np.log(P), P, reduction="batch")


def test_complex_target_is_a_type_error():
    with pytest.raises(TypeError):
        fl.mse_loss(X, X.astype(complex))


def test_integer_target_is_converted():
    t = np.arange(12).reshape(4, 3)
    np.testing.assert_allclose(float(fl.mse_loss(X, t)), float(np.mean((X - t) ** 2)), rtol=1e-12)


def test_lists_are_accepted_like_numpy_asarray():
    assert float(fl.l1_loss([1.0, 2.0], [0.0, 4.0])) == 1.5


def test_threads_round_trip():
    n = fl.get_num_threads()
    try:
        fl.set_num_threads(1)
        assert fl.get_num_threads() == 1
        with pytest.raises(ValueError):
            fl.set_num_threads(0)
    finally:
        fl.set_num_threads(n)


def test_import_pulls_in_neither_cuda_nor_cupy():
    code = "import sys, fastloss; bad = [m for m in ('numba.cuda', 'cupy') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cupy_range_checks_wait_for_the_gpu_once(monkeypatch):
    """CuPy targets' (min, max) come back in one device-to-host copy (one host sync per check, not two).

    A stand-in ``cupy`` module counts the copies: its arrays are NumPy arrays whose class claims CuPy."""
    import types

    from fastloss import _validation as V

    copies = []

    class FakeCupy(np.ndarray):
        def tolist(self):
            copies.append(self.shape)
            return np.asarray(self).tolist()

        def __int__(self):  # the old way, int(t.min()): one copy per value
            copies.append(())
            return int(np.asarray(self))

    FakeCupy.__module__ = "cupy._core"
    fake = types.ModuleType("cupy")
    fake.stack = lambda values: np.stack([np.asarray(v) for v in values]).view(FakeCupy)
    monkeypatch.setattr(V, "_namespace", lambda a: fake if type(a).__module__.startswith("cupy") else np)
    t = np.array([3, 0, 7, 2]).view(FakeCupy)
    assert V._min_max(t) == (0, 7)
    V.class_indices("target", t, 8, -100)
    with pytest.raises(IndexError, match="7"):
        V.class_indices("target", t, 7, -100)
    assert copies == [(2,)] * 3
