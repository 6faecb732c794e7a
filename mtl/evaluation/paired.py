"""Paired differences over seeds: is configuration A better than B by more than the seed noise?

Two runs with the same seed see the same data order, dev split and initialisation of everything the two
configurations share, so the per-seed difference ``d_s = A_s − B_s`` removes the variance they have in
common. Over the ``n`` seeds both configurations ran, the mean difference gets a Student-t confidence
interval (paired t-test):

    d̄ ± t_{1−α/2, n−1} · s_d / √n,      s_d the sample standard deviation of the d_s

and a plain verdict: ``better`` (the interval lies above 0), ``worse`` (below 0), ``within noise``
(it contains 0), ``too few seeds`` (n < 2: no interval). The t interval assumes the per-seed differences
are roughly normal; with 3–5 seeds it is wide, which is the point: a difference inside it is not shown.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

__all__ = ["paired_difference", "t_quantile"]


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(a: Mapping[Any, float | None], b: Mapping[Any, float | None],
                      confidence: float = 0.95) -> dict[str, Any]:
    """Paired difference ``a − b`` over the seeds (keys) both have a finite value for.

    Returns ``{"n", "seeds", "differences", "mean", "std", "low", "high", "confidence", "verdict"}``;
    ``low``/``high``/``std`` are None when fewer than 2 seeds pair up.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")

    def ok(v: Any) -> bool:
        return v is not None and math.isfinite(float(v))

    seeds = sorted((s for s in a if s in b and ok(a[s]) and ok(b[s])), key=lambda s: (str(type(s)), s))
    d = [float(a[s]) - float(b[s]) for s in seeds]  # type: ignore[arg-type]
    n = len(d)
    out: dict[str, Any] = {"n": n, "seeds": seeds, "differences": d, "confidence": confidence,
                           "mean": statistics.fmean(d) if d else None, "std": None, "low": None, "high": None}
    if n < 2:
        out["verdict"] = "too few seeds"
        return out
    sd = statistics.stdev(d)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    out.update(std=sd, low=out["mean"] - half, high=out["mean"] + half)
    out["verdict"] = "better" if out["low"] > 0 else "worse" if out["high"] < 0 else "within noise"
    return out
