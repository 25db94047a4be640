"""Replaying a fixed-shape call as a CUDA graph: a small model's denoising step is dozens of tiny
kernels whose launch costs more than their work; a captured graph launches them as one.

:class:`GraphedCall` wraps ``fn(*tensors) -> Tensor``. The first call with a new input signature
(shapes, dtypes, device) warms ``fn`` up on a side stream and captures it into a graph with static
input and output buffers; later calls copy their inputs into those buffers, replay, and return a
copy of the output. Whatever cannot be captured runs ``fn`` as it is, and :attr:`GraphedCall.reason`
says why: inputs off CUDA, autograd on, a capture already in progress, too many signatures held,
or a capture that failed (an op that waits for the host, a shape read from data). A failed
signature is not tried again.

``fn`` must be a pure function of its tensor inputs and of state that does not move while the
wrapper lives: the graph reads the parameters' memory as it was at capture (build the wrapper per
sampling call, not once per model, so weight swaps such as EMA between calls are seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


@dataclass
class _Graph:
    inputs: list[Tensor]  # static buffers the replay reads
    output: Tensor  # static buffer the replay writes
    replay: Callable[[], None]


class CudaGraphBackend:
    """Capture and replay with ``torch.cuda.CUDAGraph`` (one memory pool shared by the graphs of
    one wrapper)."""

    def __init__(self, warmup: int = 2):
        self.warmup, self.pool = warmup, None

    def unsupported(self, args: Sequence[Tensor]) -> str | None:
        off = [str(a.device) for a in args if a.device.type != "cuda"]
        if off:
            return f"inputs on {off[0]}: CUDA graphs need CUDA tensors"
        if torch.cuda.is_current_stream_capturing():
            return "a CUDA graph capture is already in progress"
        return None

    def capture(self, fn: Callable[..., Tensor], inputs: list[Tensor]) -> _Graph:
        side = torch.cuda.Stream(device=inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy init, cached layouts, cuBLAS workspaces
            for _ in range(self.warmup):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = fn(*inputs)
        return _Graph(inputs, output, graph.replay)


class GraphedCall:
    """``fn(*tensors) -> Tensor``, replayed from one CUDA graph per input signature.

    Args:
        fn: a function of tensors only, returning one tensor; no host syncs, no data-dependent
            shapes, no randomness (dropout off), state fixed while the wrapper lives.
        max_graphs: signatures captured at most (each holds its buffers); more run eagerly.
        backend: how graphs are captured and replayed (default CUDA's; tests pass a stand-in).

    Raises:
        TypeError: ``fn`` is not callable.
        ValueError: ``max_graphs`` below 0.

    Example:
        >>> denoise = GraphedCall(model.span_denoiser(modality))  # doctest: +SKIP
        >>> pred = denoise(x_t, t)  # eager on the first call of a shape, replayed after
    """

    def __init__(self, fn: Callable[..., Tensor], max_graphs: int = 4, backend=None):
        if not callable(fn):
            raise TypeError(f"GraphedCall needs a callable, got {type(fn).__name__}")
        if int(max_graphs) < 0:
            raise ValueError(f"max_graphs must be >= 0, got {max_graphs}")
        self.fn, self.max_graphs = fn, int(max_graphs)
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.graphs: dict[tuple, _Graph] = {}
        self.failed: dict[tuple, str] = {}
        self.reason: str | None = None  # why the last call ran eagerly (None: it was replayed)
        self.replays = 0

    @staticmethod
    def signature(args: Sequence[Tensor]) -> tuple:
        return tuple((tuple(a.shape), a.dtype, str(a.device)) for a in args)

    def _unsupported(self, args: Sequence[Tensor], key: tuple) -> str | None:
        if not all(isinstance(a, Tensor) for a in args):
            return "an argument is not a tensor"
        if torch.is_grad_enabled():
            return "autograd is on (graphs replay inference only: call under torch.no_grad())"
        if key in self.failed:
            return self.failed[key]
        if key not in self.graphs and len(self.graphs) >= self.max_graphs:
            return f"{self.max_graphs} signatures already captured (max_graphs)"
        return self.backend.unsupported(args)

    def __call__(self, *args: Tensor) -> Tensor:
        key = self.signature(args) if all(isinstance(a, Tensor) for a in args) else None
        self.reason = self._unsupported(args, key)
        if self.reason is not None:
            return self.fn(*args)
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = self.backend.capture(self.fn, [a.detach().clone() for a in args])
            except Exception as e:  # noqa: BLE001 - any op that cannot be captured: stay eager
                self.failed[key] = self.reason = f"capture failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                return self.fn(*args)
            self.graphs[key] = graph
        for buf, a in zip(graph.inputs, args):
            buf.copy_(a)
        graph.replay()
        self.replays += 1
        return graph.output.clone()
