"""GraphedCall (fusion_core.graphs) on the CPU: the guards that keep a call eager, and the
capture/replay plumbing (static buffers refreshed, outputs copied, one capture per signature,
failed captures remembered) through a stand-in backend that re-runs the function on replay.
Real CUDA capture is checked by bench/gpu_check.py on a GPU."""

import pytest
import torch

from fusion_core import FusionModel, TransformerArgs
from fusion_core import generation as gen
from fusion_core.diffusion import GaussianDiffusion
from fusion_core.generation import SampleArgs
from fusion_core.graphs import CudaGraphBackend, GraphedCall, _Graph
from modalities.timeseries import TimeSeriesAdapter


class Replaying:
    """Captures by remembering ``fn`` and its static inputs; a replay re-runs ``fn`` on those
    buffers into the static output, as a CUDA graph would."""

    def __init__(self, fail: bool = False):
        self.captures, self.fail = 0, fail

    def unsupported(self, args):
        return None

    def capture(self, fn, inputs):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        out = fn(*inputs).clone()
        return _Graph(inputs, out, lambda: out.copy_(fn(*inputs)))


def _model():
    torch.manual_seed(0)
    a = TimeSeriesAdapter(32, 3, patch=4)
    return FusionModel(TransformerArgs(dim=32, n_layers=2, n_heads=4), [a],
                       diffusion=GaussianDiffusion("cosine", 100, "v")).eval()


@torch.no_grad()
def test_replays_match_the_eager_denoiser_on_fresh_inputs():
    model = _model()
    eager = model.span_denoiser("timeseries")
    backend = Replaying()
    graphed = GraphedCall(model.span_denoiser("timeseries"), backend=backend)
    outs = []
    for i in range(4):  # new inputs each call: a stale static buffer would repeat the first output
        x, t = torch.randn(5, 16, 3), torch.full((5,), 10 * i + 3)
        got = graphed(x, t)
        assert graphed.reason is None
        torch.testing.assert_close(got, eager(x, t), rtol=0, atol=0)
        outs.append(got)
    assert backend.captures == 1 and graphed.replays == 4
    assert not torch.equal(outs[0], outs[1])
    outs[0].zero_()  # the caller's copy, not the static buffer
    assert graphed.graphs[next(iter(graphed.graphs))].output.abs().sum() > 0
    graphed(torch.randn(2, 16, 3), torch.full((2,), 5))  # a new chunk size: a second graph
    assert backend.captures == 2


@torch.no_grad()
def test_a_failed_capture_runs_eagerly_and_is_not_retried():
    model = _model()
    backend = Replaying(fail=True)
    graphed = GraphedCall(model.span_denoiser("timeseries"), backend=backend)
    x, t = torch.randn(3, 16, 3), torch.full((3,), 7)
    torch.testing.assert_close(graphed(x, t), model.span_denoiser("timeseries")(x, t))
    assert graphed.reason.startswith("capture failed: RuntimeError: operation not permitted")
    backend.fail = False
    graphed(x, t)
    assert backend.captures == 0 and "capture failed" in graphed.reason


@torch.no_grad()
def test_max_graphs_bounds_the_signatures_held():
    backend = Replaying()
    graphed = GraphedCall(lambda x: x * 2, max_graphs=1, backend=backend)
    graphed(torch.ones(2))
    out = graphed(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0)) and "max_graphs" in graphed.reason
    assert backend.captures == 1


def test_guards_keep_calls_eager_with_a_reason():
    graphed = GraphedCall(lambda x: x + 1)  # the CUDA backend
    with torch.no_grad():
        assert torch.equal(graphed(torch.zeros(2)), torch.ones(2))
    assert graphed.reason == "inputs on cpu: CUDA graphs need CUDA tensors" and not graphed.graphs
    graphed_any = GraphedCall(lambda x: x + 1, backend=Replaying())
    graphed_any(torch.zeros(2))  # grad mode on
    assert graphed_any.reason.startswith("autograd is on")
    with torch.no_grad():
        other = GraphedCall(lambda x, k: x * k, backend=Replaying())
        assert torch.equal(other(torch.ones(1), 3), torch.full((1,), 3.0))
        assert other.reason == "an argument is not a tensor"
    with pytest.raises(TypeError, match="callable"):
        GraphedCall(3)
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedCall(lambda x: x, max_graphs=-1)
    assert CudaGraphBackend().unsupported([torch.zeros(1)]).startswith("inputs on cpu")


def test_sampling_with_cuda_graphs_off_cuda_is_the_same_sampling():
    model = _model()
    sampler = SampleArgs(sampler="ddim", steps=5).make(model.diffusion["timeseries"])
    a = gen.sample(model, "timeseries", 7, (16, 3), sampler, seed=3, chunk=4)
    b = gen.sample(model, "timeseries", 7, (16, 3), sampler, seed=3, chunk=4, cuda_graphs=True)
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="cuda_graphs must be True or False"):
        gen.sample(model, "timeseries", 2, (16, 3), sampler, cuda_graphs="yes")
    assert SampleArgs(cuda_graphs=True).cuda_graphs is True
