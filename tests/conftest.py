"""Shared test configuration.

Numba compiles on first call (seconds), so hypothesis runs without a deadline.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), every kernel launch of the session is recorded
(kernel and argument types, ``FASTLOSS_RECORD_LAUNCHES``) for the real-target compile test,
``test_cuda_compile.py``, which runs after ``test_cuda.py`` and compiles them all for real GPUs.
"""
import os
import shutil
import tempfile

from hypothesis import settings

settings.register_profile("fastloss", deadline=None, max_examples=40, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastloss"))

#: The launches recorded by this session (set before fastloss._cuda_arrays is first imported), or None.
SESSION_RECORD = None
if os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1" and not os.environ.get("FASTLOSS_RECORD_LAUNCHES"):
    SESSION_RECORD = os.path.join(tempfile.mkdtemp(prefix="fastloss-launches-"), "launches.jsonl")
    os.environ["FASTLOSS_RECORD_LAUNCHES"] = SESSION_RECORD

#: The CUDA test grid of this session: tests collected, deselected and finished (test_cuda.py).
GRID_FILE = "test_cuda.py"
GRID = {"collected": 0, "deselected": 0, "done": 0}


def _in_grid(item_or_report) -> bool:
    return item_or_report.nodeid.split("::")[0].endswith(GRID_FILE)


def pytest_deselected(items):
    GRID["deselected"] += sum(1 for item in items if _in_grid(item))


def pytest_collection_modifyitems(session, config, items):
    # The compile test runs last, so that it compiles every launch of the session, the CUDA tests
    # beyond test_cuda.py (row kernels, linear cross entropy) included.
    items.sort(key=lambda item: item.nodeid.split("::")[0].endswith("test_cuda_compile.py"))


def pytest_collection_finish(session):
    GRID["collected"] = sum(1 for item in session.items if _in_grid(item))


def pytest_runtest_logreport(report):
    if _in_grid(report) and (report.when == "call" or (report.when == "setup" and report.skipped)):
        if report.passed or report.skipped:
            GRID["done"] += 1


def grid_recorded() -> bool:
    """True when this session ran the whole CUDA test grid with recording on, all passed or skipped."""
    return (SESSION_RECORD is not None and GRID["collected"] > 0 and GRID["deselected"] == 0
            and GRID["done"] == GRID["collected"] and os.path.exists(SESSION_RECORD))


def pytest_unconfigure(config):
    if SESSION_RECORD is not None:
        shutil.rmtree(os.path.dirname(SESSION_RECORD), ignore_errors=True)
