"""Loss-level balancers: task weights from the losses (and their own history), a KPI, or noise.

They cost nothing beyond the forward/backward of an ``equal`` step and work with any sampler
(one task per step or all tasks). Weight of task i as implemented::

    equal          1                                                          (the Tianchi baseline)
    static         the configured w_i (``default`` for unnamed tasks)
    log_loss       1 / max(L_i, eps)                       (minimise sum_i log L_i)
    initial_loss   1 / max(L_i(0), eps)                    (L_i(0): the task's first seen loss)
    uncertainty    exp(-s_i), objective sum_i exp(-s_i) L_i + c s_i        (Kendall et al. 2018)
    dwa            K exp(r_i/T) / sum_j exp(r_j/T), r_i a ratio of window means  (Liu et al. 2019)
    dtp            -(1 - k_i)^gamma log k_i, k_i the running train accuracy    (Guo et al. 2018)
    rlw            T softmax(z)_i, z ~ N(0, I_T) each step (Lin et al. 2022)
    famo           (z_i / L_i) / sum_j (z_j / L_j), z = softmax(xi)           (Liu et al. 2023)
    imtl_l         exp(s_i), objective sum_i exp(s_i) L_i - s_i               (Liu et al. 2021, IMTL-L)
    gls            (prod_j L_j)^(1/T) / (T L_i): the geometric mean's gradient (Chennupati et al. 2019)
    stch           T softmax(log(L/n)/mu)_i / L_i after a log-loss warm-up  (Lin et al. 2024)
    go4align       group means of (sum_j L_j / L_i) p_i, p <- p exp(-eta L)   (Shen et al. 2024)
    igb            T softmax(L/b)_i / L_i after a log-loss warm-up, b base losses (Dai et al. 2023, IGBv1)

One module per method; conventions of the stateful ones in :mod:`mtl.balancers._common`.
"""

from mtl.balancers.loss import (  # noqa: F401  (each module registers its method)
    dtp,
    dwa,
    equal,
    famo,
    gls,
    go4align,
    igb,
    imtl_l,
    initial_loss,
    log_loss,
    rlw,
    static,
    stch,
    uncertainty,
)
from mtl.balancers.loss.dtp import DynamicTaskPrioritization
from mtl.balancers.loss.dwa import DynamicWeightAverage
from mtl.balancers.loss.equal import Equal
from mtl.balancers.loss.famo import FAMO
from mtl.balancers.loss.gls import GeometricLossStrategy
from mtl.balancers.loss.go4align import GO4Align
from mtl.balancers.loss.igb import ImprovableGapBalancing
from mtl.balancers.loss.imtl_l import IMTLL
from mtl.balancers.loss.initial_loss import InitialLoss
from mtl.balancers.loss.log_loss import LogLoss
from mtl.balancers.loss.rlw import RandomLossWeighting
from mtl.balancers.loss.static import Static
from mtl.balancers.loss.stch import SmoothTchebycheff
from mtl.balancers.loss.uncertainty import Uncertainty

__all__ = [
    "DynamicTaskPrioritization",
    "DynamicWeightAverage",
    "Equal",
    "FAMO",
    "GeometricLossStrategy",
    "GO4Align",
    "ImprovableGapBalancing",
    "IMTLL",
    "InitialLoss",
    "LogLoss",
    "RandomLossWeighting",
    "SmoothTchebycheff",
    "Static",
    "Uncertainty",
]
