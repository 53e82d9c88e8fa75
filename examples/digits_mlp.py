"""Train a small NumPy MLP on scikit-learn's bundled digits with fastloss's fused cross entropy.

The forward and backward passes of the network are plain NumPy; the loss and its gradient come from
``fl.value_and_grad(fl.cross_entropy)`` (with label smoothing) and the weight decay from
``fl.value_and_grad(fl.l2_penalty)``. No download: the digits ship with scikit-learn.

    python examples/digits_mlp.py            # about 97-98 % held-out accuracy in a few seconds
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastloss as fl


def load(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0) + 1e-3
    return (Xtr - mean) / std, (Xte - mean) / std, ytr, yte


class MLP:
    """64 → hidden (ReLU) → 10, He-initialised, trained with Adam."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, rng):
        self.params = {
            "W1": (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            "b1": np.zeros(n_hidden, np.float32),
            "W2": (rng.standard_normal((n_hidden, n_out)) * np.sqrt(2.0 / n_hidden)).astype(np.float32),
            "b2": np.zeros(n_out, np.float32),
        }
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.t = 0

    def logits(self, X):
        p = self.params
        h = np.maximum(X @ p["W1"] + p["b1"], 0.0)
        return h, h @ p["W2"] + p["b2"]

    def step(self, X, y, lr: float, weight_decay: float, label_smoothing: float) -> float:
        p = self.params
        h, z = self.logits(X)
        loss, dz = fl.value_and_grad(fl.cross_entropy)(z, y, label_smoothing=label_smoothing)
        grads = {"W2": h.T @ dz, "b2": dz.sum(axis=0)}
        dh = (dz @ p["W2"].T) * (h > 0)
        grads["W1"], grads["b1"] = X.T @ dh, dh.sum(axis=0)
        for name in ("W1", "W2"):
            penalty, dw = fl.value_and_grad(fl.l2_penalty)(p[name], lam=weight_decay)
            loss = loss + penalty
            grads[name] += dw
        self._adam(grads, lr)
        return float(loss)

    def _adam(self, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            mhat = self.m[k] / (1 - b1**self.t)
            vhat = self.v[k] / (1 - b2**self.t)
            self.params[k] -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)

    def accuracy(self, X, y) -> float:
        return float(np.mean(np.argmax(self.logits(X)[1], axis=1) == y))


def train(epochs: int = 40, batch: int = 64, hidden: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4,
          label_smoothing: float = 0.05, seed: int = 0, verbose: bool = False):
    """Train and return ``(model, held-out accuracy)``."""
    rng = np.random.default_rng(seed)
    Xtr, Xte, ytr, yte = load(seed)
    model = MLP(Xtr.shape[1], hidden, 10, rng)
    for epoch in range(epochs):
        order = rng.permutation(len(Xtr))
        losses = [model.step(Xtr[i], ytr[i], lr, weight_decay, label_smoothing)
                  for i in np.array_split(order, max(1, len(order) // batch))]
        if verbose and (epoch % 10 == 9 or epoch == epochs - 1):
            print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  held-out accuracy {model.accuracy(Xte, yte):.4f}")
    return model, model.accuracy(Xte, yte)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    _, acc = train(epochs=args.epochs, seed=args.seed, verbose=True)
    print(f"held-out accuracy {acc:.4f} after {args.epochs} epochs in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
