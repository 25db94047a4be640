"""What a two-sample test separates in generated series against real ones sharing captions (#28).

The whole-series 1-NN test (:func:`..timeseries.metrics.one_nn_score`) says *whether* two samples
differ; these say *where*: in the structure the caption describes (the fit of
:func:`.fidelity.measure`) or in what the fit leaves (the residual), and in the residual at which
frequencies. ``tests/test_text_timeseries.py`` checks both on planted truth.

Shapes: N series, L steps, F channels.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from ..timeseries.metrics import one_nn_score


def one_nn_parts(real: np.ndarray, fake: np.ndarray, again: np.ndarray,
                 resid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    """What a 1-NN two-sample test (:func:`..timeseries.metrics.one_nn_score`) separates: each
    series split by the fit to its caption's model into its structure (the fit) and its residual
    (``resid``: the three residuals, :func:`.fidelity.measure`'s ``resid`` of ``real``, ``fake``
    and ``again``), scored apart — ``structure`` and ``residual``, each beside its real-vs-real
    floor from ``again`` (a second real series per caption) — and ``hybrid``: the generated
    structure carrying ``again``'s residual, against ``real`` (its floor is ``real`` against
    ``again``, the plain floor). A hybrid at the floor says the residual's texture is all that
    separates ``fake`` from ``real``; ``whole`` is the plain score of ``fake``. ``real``, ``fake``,
    ``again``: ``(N, L, F)``, one per caption (``tests/test_text_timeseries.py`` plants a texture
    and a structure and checks each is found in its own part).
    """
    r, f, g = resid
    return {"structure": one_nn_score(real - r, fake - f), "structure floor": one_nn_score(real - r, again - g),
            "residual": one_nn_score(r, f), "residual floor": one_nn_score(r, g),
            "hybrid": one_nn_score(real, fake - f + g), "whole": one_nn_score(real, fake),
            "floor": one_nn_score(real, again)}


def band_power_ratio(real_resid: np.ndarray, fake_resid: np.ndarray, bands: int = 4) -> list[float]:
    """Where two sets of residuals ``(N, L, F)`` differ in frequency: the mean periodogram of
    ``fake_resid`` over that of ``real_resid`` in ``bands`` equal bands of frequencies 1 .. L/2
    cycles per window (the mean is left out), lowest first. White noise of one level gives ~1 in
    every band; a smooth residual of the same variance, above 1 low and below 1 high."""
    def power(r):
        return (np.abs(np.fft.rfft(r - r.mean(axis=1, keepdims=True), axis=1)) ** 2).mean(axis=(0, 2))

    pr, pf = power(np.asarray(real_resid, float)), power(np.asarray(fake_resid, float))
    edges = np.linspace(1, len(pr), bands + 1).round().astype(int)
    return [float(pf[a:b].sum() / pr[a:b].sum()) if pr[a:b].sum() > 0 else float("nan")
            for a, b in pairwise(edges)]
