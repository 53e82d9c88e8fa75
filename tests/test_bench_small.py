"""``fastloss bench --small`` (fastloss.bench_small): a table of per-call means beside PyTorch."""
from __future__ import annotations

import numpy as np

from fastloss import bench_small

from _helpers import needs_torch, torch


def test_rows_without_torch():
    rows = bench_small.run(["mse_loss", "cross_entropy"], "float32", sizes=(640,), calls=5, torch=None)
    assert [r[0] for r in rows] == ["mse_loss", "cross_entropy"]
    for name, shape, ours, theirs, *others in rows:
        assert np.prod(shape) > 0 and 0 < ours < 1
        assert theirs is None and others == [None] * 4
    text = bench_small.format_rows(rows)
    assert "mse_loss | 640 |" in text and "| - |" in text


@needs_torch
def test_rows_with_torch_busy():
    rows = bench_small.run(["cross_entropy", "log_loss"], "float64", sizes=(640,), calls=5, torch=torch)
    (ce, log_loss) = rows
    assert len(ce) == 8 and all(t is not None and t > 0 for t in ce[2:])
    assert log_loss[3] is None and log_loss[5] is None and log_loss[7] is None  # PyTorch has no log_loss
    assert all(t > 0 for t in log_loss[2::2])
    text = bench_small.format_rows(rows)
    assert "step: fastloss us" in text
    ce_line = next(line for line in text.splitlines() if line.startswith("cross_entropy |"))
    assert len(ce_line.split(" | ")) == 2 + 3 * 3  # loss, shape, then three columns per mode


def test_cli_flag(capsys):
    from fastloss.__main__ import main

    assert main(["bench", "--small", "--quick", "--no-torch", "--loss", "l1_loss"]) == 0
    out = capsys.readouterr().out
    assert "small calls, float32" in out and "l1_loss | 640 |" in out


@needs_torch
def test_every_registered_loss_runs_beside_torch():
    """Every loss's small case runs on both sides (an optional differentiable argument its case leaves
    out, such as linear_cross_entropy's bias, once broke the table)."""
    from fastloss._registry import REGISTRY

    names = sorted(REGISTRY)
    rows = bench_small.run(names, "float32", sizes=(640,), calls=1, torch=torch)
    assert [r[0] for r in rows] == names
    for name, shape, ours, theirs, ours_step, theirs_step, ours_busy, theirs_busy in rows:
        assert ours > 0 and ours_step > 0 and ours_busy > 0, name
