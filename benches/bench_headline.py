"""The headline: cross entropy of (8192, 32000) float32 logits (8192 tokens, a 32000-word vocabulary).

1 GiB of logits, so the value alone must read 1 GiB and value and gradient also write 1 GiB. The float64
reference is left out at this size (it needs about 10 GB and seconds per call); ``SoftmaxGrad`` times it
at the suite's sizes.
"""
from . import _suite

IMPLS = ["fastloss", "torch", "fastloss-cupy", "torch-cuda"]
HEADLINE = [IMPLS, ["cross_entropy"], [8192 * 32000], ["float32"]]


class CrossEntropyHeadline(_suite._Value):
    params = HEADLINE


class CrossEntropyHeadlineGrad(_suite._ValueAndGrad):
    params = HEADLINE


class CrossEntropyHeadlineIntoBuffer:
    """fastloss's value and gradient into one reused buffer, as a training loop calls it (no page
    faults for a fresh 1 GiB array per step); PyTorch has no such call."""

    params = [["fastloss", "fastloss-cupy"], ["cross_entropy"], [8192 * 32000], ["float32"]]
    param_names = _suite.PARAM_NAMES
    timeout = 600
    repeat = _suite.REPEAT

    def setup(self, impl, name, size, dtype):
        spec, self.case = _suite.make_case(name, size, dtype)
        self.sync = lambda: None  # noqa: E731
        if impl == "fastloss-cupy":
            self.case, self.sync = _suite.cupy_case(self.case)
        self.vg = _suite.fastloss.value_and_grad(spec.fn)
        self.out = self.vg(*self.case.args, **self.case.kwargs)[1]  # also the JIT warm-up
        self.sync()
        _suite.reset_peak_rss()

    def time_value_and_grad_into_buffer(self, *params):
        self.vg(*self.case.args, out=self.out, **self.case.kwargs)
        self.sync()

    def peakmem_value_and_grad_into_buffer(self, *params):
        self.vg(*self.case.args, out=self.out, **self.case.kwargs)
