import numpy as np
import pytest

from fusion_core.engine.stats import frechet_distance, mean_ci95


def test_frechet_distance_matches_closed_form():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    b = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-8
    # 1-D Gaussians: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    x, y = rng.normal(0, 1, size=(20000, 1)), rng.normal(2, 3, size=(20000, 1))
    assert frechet_distance(x, y) == pytest.approx(4 + 4, rel=0.05)


def test_mean_ci95_uses_the_t_distribution():
    m, h = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.3027 / np.sqrt(3), rel=1e-4)
    assert np.isnan(mean_ci95([5.0])[1])
