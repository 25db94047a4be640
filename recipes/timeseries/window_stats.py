"""Window summary statistics, and a discriminative score built on them: the second method beside
the GRU classifier of :mod:`.metrics` (#27).

A GRU with ``features // 2`` hidden units can score generated windows near its floor while a
summary tells them apart at once — a column that copies another, a reading that is constant in
the real record and noisy in the generated one, paths smoother than real. Here each window becomes
its per-feature statistics and within-window feature correlations (:func:`window_features`,
named by :func:`window_feature_names`); :func:`feature_discriminative_score` classifies them, and
:func:`statistic_aucs` says which statistics differ most, one at a time.

All inputs are ``(n, L, F)`` arrays already scaled to [0, 1] with the real data's per-feature range.
"""

from __future__ import annotations

import numpy as np

from .metrics import _check


WINDOW_STATISTICS = ("mean", "std", "min", "max", "change", "mean |step|", "step std", "lag-1 acf", "step lag-1 acf")


def window_feature_names(columns: list[str]) -> list[str]:
    """What each column of :func:`window_features` is, e.g. ``"lag-1 acf of Close"``, ``"corr Open~Close"``."""
    pairs = np.triu_indices(len(columns), 1)
    return ([f"{stat} of {c}" for stat in WINDOW_STATISTICS for c in columns]
            + [f"corr {columns[i]}~{columns[j]}" for i, j in zip(*pairs)])


def window_features(x: np.ndarray) -> np.ndarray:
    """Summary statistics of each window, ``(n, L, F) -> (n, 9 F + F (F - 1) / 2)``: per feature
    the mean, standard deviation, minimum, maximum, first-to-last change, mean absolute step,
    standard deviation of the steps, lag-1 autocorrelation of the values and of the steps; then
    the Pearson correlation of each pair of features within the window."""
    x = np.asarray(x, dtype=np.float64)
    d = np.diff(x, axis=1)

    def acf1(v):  # lag-1 autocorrelation along time, per window and feature (0 for a flat one)
        c = v - v.mean(1, keepdims=True)
        den = (c * c).sum(1)
        return np.where(den > 0, (c[:, 1:] * c[:, :-1]).sum(1) / np.where(den > 0, den, 1.0), 0.0)

    parts = [x.mean(1), x.std(1), x.min(1), x.max(1), x[:, -1] - x[:, 0], np.abs(d).mean(1), d.std(1),
             acf1(x), acf1(d)]
    n, _, f = x.shape
    if f > 1:
        c = x - x.mean(1, keepdims=True)
        sd = np.sqrt((c * c).sum(1))
        cov = np.einsum("nlf,nlg->nfg", c, c)
        corr = cov / np.where(sd > 0, sd, 1.0)[:, :, None] / np.where(sd > 0, sd, 1.0)[:, None, :]
        iu = np.triu_indices(f, 1)
        parts.append(corr[:, iu[0], iu[1]])
    return np.concatenate(parts, axis=1)


def feature_discriminative_score(real: np.ndarray, fake: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """A second discriminative score that trains no network on the raw series: L2-regularised
    logistic regression on each window's summary statistics (:func:`window_features`,
    standardised), ``|accuracy - 0.5|`` out of fold over ``folds`` stratified folds (both samples
    cut to the same size). A GRU classifier on long windows (hidden size ``F // 2``, hundreds of
    steps) either learns or does not in a given run, so its repeats scatter between ~0 and 0.5;
    this one has no such failure mode, and sees what a summary sees (levels, ranges, roughness,
    autocorrelation, cross-feature correlation), not the order of events in a window."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check(real, fake)
    rng = np.random.default_rng(seed)
    n = min(len(real), len(fake))
    r, f = real[rng.permutation(len(real))[:n]], fake[rng.permutation(len(fake))[:n]]
    x = window_features(np.concatenate([r, f]))
    y = np.r_[np.ones(n), np.zeros(n)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    pred = cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return abs(float((pred == y).mean()) - 0.5)


def statistic_aucs(real: np.ndarray, fake: np.ndarray, columns: list[str], top: int = 8) -> list[dict]:
    """The ``top`` window statistics that tell ``real`` from ``fake`` best one at a time: each
    statistic's ROC AUC (0.5: no difference; real scored as the positive class) and its median in
    each sample, most telling first."""
    from sklearn.metrics import roc_auc_score

    _check(real, fake)
    xr, xf = window_features(real), window_features(fake)
    y = np.r_[np.ones(len(xr)), np.zeros(len(xf))]
    auc = np.array([roc_auc_score(y, np.r_[xr[:, j], xf[:, j]]) for j in range(xr.shape[1])])
    names = window_feature_names(columns)
    return [{"statistic": names[j], "AUC": round(float(auc[j]), 3), "real median": round(float(np.median(xr[:, j])), 4),
             "generated median": round(float(np.median(xf[:, j])), 4)} for j in np.argsort(-np.abs(auc - 0.5))[:top]]
