"""Per-call time of a small ``value_and_grad(cross_entropy)`` in a training loop's rhythm (issue 10).

``value_and_grad(cross_entropy)`` on (64, 10) float32 class indices, the mean of ``--calls`` calls:

* ``alone``: back to back;
* ``torch step``: with a PyTorch step between two calls (a (256, 256) product and a ``tanh`` on two
  threads), which leaves the caches cold for the next call: only the fastloss call is timed;
* ``value``: ``cross_entropy`` alone, back to back;

each beside PyTorch's forward+backward (``torch.autograd.grad``) or forward timed the same way in the
same process. Several checkouts can be compared, each sample a fresh process, alternated so that a
machine whose speed drifts affects them alike::

    python benches/percall.py                              # this checkout, 3 samples
    python benches/percall.py --path . --path ../main --samples 3

Needs PyTorch. Nothing here is collected by asv (no ``time_`` functions); run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os

try:
    from ._checkouts import run_child  # imported as benches.NAME (asv's discovery)
except ImportError:
    from _checkouts import run_child  # run as a script

CHILD = r"""
import json, sys, time
import numpy as np, torch
import torch.nn.functional as F
import fastloss as fl
n = int(sys.argv[1])
torch.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 10)).astype(np.float32)
t = rng.integers(0, 10, 64)
tx = torch.from_numpy(x.copy()).requires_grad_(True)
tt = torch.from_numpy(t)
vg = fl.value_and_grad(fl.cross_entropy)
a = torch.randn(256, 256)

def step():
    global a
    a = torch.tanh(a @ a * 0.01)

def torch_vg():
    return torch.autograd.grad(F.cross_entropy(tx, tt), [tx])

calls = {"alone": (lambda: vg(x, t), torch_vg), "value": (lambda: fl.cross_entropy(x, t),
         lambda: F.cross_entropy(tx.detach(), tt)), "torch step": (lambda: vg(x, t), torch_vg)}
out = {"file": fl.__file__}
for name, pair in calls.items():
    for who, f in zip(("fastloss", "torch"), pair):
        f()
        total = 0.0
        for _ in range(n):
            if name == "torch step":
                step()
            s = time.perf_counter()
            f()
            total += time.perf_counter() - s
        out[f"{name} {who}"] = total / n
print(json.dumps(out))
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", action="append", help="a checkout of fastloss (repeatable; default: this one)")
    p.add_argument("--samples", type=int, default=3, help="processes per checkout")
    p.add_argument("--calls", type=int, default=5000, help="calls per mean")
    args = p.parse_args(argv)
    paths = args.path or [os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)]
    for _ in range(args.samples):
        for path in paths:
            r = run_child(path, CHILD, [args.calls])
            cells = [f"{k} {r[k + ' fastloss'] * 1e6:.2f} us (torch {r[k + ' torch'] * 1e6:.2f})"
                     for k in ("alone", "torch step", "value")]
            print(f"{os.path.abspath(path)}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
