"""``mgda_ub``: MGDA-UB, MGDA on the gradients of the shared representation (an upper bound).

Paper: O. Sener & V. Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
Sec. 3.3. https://arxiv.org/abs/1810.04650 (official code: https://github.com/isl-org/MultiObjectiveOptimization)

Formula: that of :mod:`mtl.balancers.gramian.mgda`, on the Gramian of the gradients with respect to the
shared representation ``z`` (``G[i, j] = <dL_i/dz, dL_j/dz>``) instead of the shared parameters: one
backward through the encoder per step instead of one per task.

Knobs: as ``mgda`` (``normalization`` "none", ``max_iter`` 250, ``tol`` 1e-5, ``polish`` True), with
``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code: those of ``mgda``. The representation Gramian sums each task's
``dL_t/dz_t`` over its batch rows (the gradient of a shift of the representation), so tasks whose batches
hold different sentences stay comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtl.balancers.base import GradientSource, register_balancer
from mtl.balancers.gramian.mgda import MGDA, MGDANormalization


@register_balancer("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun 2018, Sec. 3.3): MGDA on the shared representation's gradients."""

    default_source: GradientSource = "representation"

    def __init__(
        self,
        task_names: Sequence[str],
        normalization: MGDANormalization = "none",
        max_iter: int = 250,
        tol: float = 1e-5,
        polish: bool = True,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(
            task_names, normalization=normalization, max_iter=max_iter, tol=tol, polish=polish, source=source
        )
