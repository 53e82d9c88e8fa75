"""The headline: cross entropy of (8192, 32000) float32 logits (8192 tokens, a 32000-word vocabulary).

1 GiB of logits, so the value alone must read 1 GiB and value and gradient also write 1 GiB. The float64
reference is left out at this size (it needs about 10 GB and seconds per call); ``SoftmaxReference``
times it at the suite's sizes.
"""
from . import _suite

HEADLINE = [["cross_entropy"], [8192 * 32000], ["float32"]]


class CrossEntropyHeadline(_suite._Loss):
    params = HEADLINE

    def setup(self, name, size, dtype):
        super().setup(name, size, dtype)
        # a training loop reuses one gradient buffer: no page faults for a fresh 1 GiB array per step
        self.out = self._value_and_grad()[1]
        _suite.reset_peak_rss()

    def time_value_and_grad_into_buffer(self, *params):
        self.vg(*self.case.args, out=self.out, **self.case.kwargs)

    def peakmem_value_and_grad_into_buffer(self, *params):
        self.vg(*self.case.args, out=self.out, **self.case.kwargs)


class CrossEntropyHeadlineTorch(_suite._Torch):
    params = HEADLINE
