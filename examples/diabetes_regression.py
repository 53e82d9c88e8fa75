"""Regression on scikit-learn's bundled diabetes data with fastloss's smooth L1 and MAPE losses.

A one-hidden-layer NumPy network is trained with ``fl.value_and_grad(fl.smooth_l1_loss)`` on
standardised targets; MAPE (``fl.mape_loss``) and RMSE (``fl.rmse_loss``) are reported on held-out data
next to a constant predictor (the training mean), which the network must beat.

    python examples/diabetes_regression.py
"""
from __future__ import annotations

import argparse

import numpy as np

import fastloss as fl


def load(seed: int = 0):
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed)
    mx, sx = Xtr.mean(0), Xtr.std(0)
    return (Xtr - mx) / sx, (Xte - mx) / sx, ytr, yte


def train(epochs: int = 300, hidden: int = 32, lr: float = 1e-2, beta: float = 0.5, seed: int = 0, verbose=False):
    """Return ``(held-out MAPE, held-out RMSE, baseline MAPE, baseline RMSE)``."""
    rng = np.random.default_rng(seed)
    Xtr, Xte, ytr, yte = load(seed)
    my, sy = ytr.mean(), ytr.std()
    W1 = rng.standard_normal((Xtr.shape[1], hidden)) * np.sqrt(2.0 / Xtr.shape[1])
    b1 = np.zeros(hidden)
    W2 = rng.standard_normal(hidden) * np.sqrt(1.0 / hidden)
    b2 = 0.0
    for epoch in range(epochs):
        h = np.maximum(Xtr @ W1 + b1, 0.0)
        pred = h @ W2 + b2
        loss, dpred = fl.value_and_grad(fl.smooth_l1_loss)(pred, (ytr - my) / sy, beta=beta)
        dh = np.outer(dpred, W2) * (h > 0)
        W2 -= lr * (h.T @ dpred)
        b2 -= lr * dpred.sum()
        W1 -= lr * (Xtr.T @ dh)
        b1 -= lr * dh.sum(0)
        if verbose and epoch % 50 == 49:
            print(f"epoch {epoch + 1:4d}  smooth L1 {float(loss):.4f}")
    pred = (np.maximum(Xte @ W1 + b1, 0.0) @ W2 + b2) * sy + my
    base = np.full_like(yte, my)
    return (float(fl.mape_loss(pred, yte)), float(fl.rmse_loss(pred, yte)),
            float(fl.mape_loss(base, yte)), float(fl.rmse_loss(base, yte)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args(argv)
    mape, rmse, bmape, brmse = train(epochs=args.epochs, verbose=True)
    print(f"held-out MAPE {mape:.3f} (constant predictor {bmape:.3f}); RMSE {rmse:.1f} (constant predictor {brmse:.1f})")


if __name__ == "__main__":
    main()
