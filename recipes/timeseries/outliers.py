"""Values far outside the rest of their column: entry errors in public data sets, found by a
rule robust to the values themselves (distance from the median in interquartile ranges)."""

from __future__ import annotations

import logging

import numpy as np

from .data import Series

log = logging.getLogger("fusion_core")

OUTLIER_POLICIES = ("warn", "mask", "clip", "error", "ignore")


def flag_outliers(series: Series, values: np.ndarray, policy: str = "warn", iqr_limit: float = 50.0,
                  observed: np.ndarray | None = None, row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Values far from the rest of their column: more than ``iqr_limit`` interquartile ranges from
    the column's median (robust to the values themselves: one wrong reading cannot widen the range
    that judges it). Public data sets carry entry errors of ~150 IQRs; daily stock returns' worst
    days sit ~20 IQRs out, so the default of 50 flags the first and leaves the second alone.

    Args:
        values: ``(T, F)`` what the model will see (levels, or increments with a transform).
        policy: ``warn`` (name each column's worst cell and train on), ``mask`` (mark them
            unobserved: windows holding one are dropped), ``clip`` (to the median ± the limit),
            ``error``, or ``ignore``.
        row_offset: rows of ``values`` are rows ``+ row_offset`` of ``series`` (increments).

    Returns:
        ``(values, observed)``, changed as the policy says.
    """
    if policy not in OUTLIER_POLICIES:
        raise ValueError(f"data.outliers must be one of {OUTLIER_POLICIES}, got {policy!r}")
    observed = np.ones(values.shape, dtype=bool) if observed is None else observed.copy()
    if policy == "ignore":
        return values, observed
    values = values.copy()
    found = []
    for f in range(values.shape[1]):
        col = values[:, f]
        ok = np.isfinite(col)
        if ok.sum() < 4:
            continue
        q25, med, q75 = np.percentile(col[ok], [25, 50, 75])
        scale = q75 - q25 or 1.4826 * np.median(np.abs(col[ok] - med))
        if scale <= 0:
            continue  # a (nearly) constant column: nothing to judge by
        dist = np.where(ok, np.abs(col - med) / scale, 0.0)
        bad = dist > iqr_limit
        if not bad.any():
            continue
        worst = int(np.argmax(dist))
        name = series.columns[f] if f < len(series.columns) else f"feature {f}"
        found.append(f"column {name!r}: {int(bad.sum())} value(s), the worst {col[worst]:.6g} at "
                     f"{series.where(worst + row_offset)}, {dist[worst]:.0f} IQRs from the median {med:.6g}")
        if policy == "mask":
            observed[:, f] &= ~bad
        elif policy == "clip":
            values[:, f] = np.clip(col, med - iqr_limit * scale, med + iqr_limit * scale)
    if found:
        what = "; ".join(found)
        if policy == "error":
            raise ValueError(f"values far outside the rest of their column (> {iqr_limit:g} IQRs from the "
                             f"median): {what}; fix them, or set data.outliers=mask or clip")
        action = {"warn": "training on them (data.outliers=mask or clip to change that)",
                  "mask": "windows holding them are left out", "clip": "clipped"}[policy]
        log.warning("values far outside the rest of their column (> %g IQRs from the median): %s; %s",
                    iqr_limit, what, action)
    return values, observed
