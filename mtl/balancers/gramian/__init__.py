"""Gramian-level balancers: task weights from the Gramian ``G[i, j] = <g_i, g_j>`` of the task gradients.

They need every task in every step (``sampler=all_tasks``) and take the gradients where ``source`` says:
on the shared representation (MGDA-UB's trick, the default of all but ``mgda``) or on all shared
parameters. One module per method:

=====================  ===================================================================
``mgda``               min-norm point of the convex hull (Sener & Koltun 2018)
``mgda_ub``            MGDA on the shared representation (Sener & Koltun 2018, Sec. 3.3)
``pcgrad``             gradient surgery (Yu et al. 2020)
``cagrad``             conflict-averse gradient descent (Liu et al. 2021)
``imtl``               IMTL-G, impartial gradient balancing (Liu et al. 2021)
``gradvac``            Gradient Vaccine (Wang et al. 2021)
``nash_mtl``           Nash bargaining solution (Navon et al. 2022)
``aligned_mtl``        independent component alignment (Senushkin et al. 2023)
``primary_auxiliary``  primary task + auxiliaries projected off it when they conflict
``gradnorm``           GradNorm, learnt weights (Chen et al. 2018): needs the gradient norms
``grad_norm_normalized`` unit-norm task gradients, ``w_i = 1/||g_i||``: needs the gradient norms
``db_mtl``             Dual-Balancing (Lin et al. 2023), log losses, max-norm scaling: needs the norms
``upgrad``             each gradient projected onto the dual cone, averaged (Quinton & Rey 2024)
``dualproj``           the mean projected onto the dual cone (Quinton & Rey 2024)
``fairgrad``           alpha-fair allocation, ``G w = w^(-1/alpha)`` (Ban & Ji 2024)
``conflictfree``       ConFIG, equal cosine to every gradient (Liu, Chu & Thuerey 2025)
``excess_mtl``         weights raised by the excess risk (He et al. 2024): reads the task gradients
``torchjd``            any torchjd aggregator/weighting (Quinton & Rey 2024), :mod:`.torchjd_adapter`
=====================  ===================================================================

Shared pieces: :mod:`.base` (:class:`GramianBalancer`, the seeded-order mixin) and :mod:`.linalg`
(min-norm, Nash/FairGrad and dual-cone solvers, Gramian factor, gradient norms).
"""

from mtl.balancers.gramian import (  # noqa: F401  (each module registers its method)
    aligned_mtl,
    cagrad,
    conflictfree,
    db_mtl,
    dualproj,
    excess_mtl,
    fairgrad,
    grad_norm_normalized,
    gradnorm,
    gradvac,
    imtl,
    mgda,
    mgda_ub,
    nash_mtl,
    pcgrad,
    primary_auxiliary,
    torchjd_adapter,
    upgrad,
)
from mtl.balancers.gramian.aligned_mtl import AlignedMTL
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.cagrad import CAGrad
from mtl.balancers.gramian.conflictfree import ConFIG
from mtl.balancers.gramian.db_mtl import DBMTL
from mtl.balancers.gramian.dualproj import DualProj
from mtl.balancers.gramian.excess_mtl import ExcessMTL
from mtl.balancers.gramian.fairgrad import FairGrad
from mtl.balancers.gramian.grad_norm_normalized import GradNormNormalized
from mtl.balancers.gramian.gradnorm import GradNorm
from mtl.balancers.gramian.gradvac import GradVac
from mtl.balancers.gramian.imtl import IMTLG
from mtl.balancers.gramian.mgda import MGDA
from mtl.balancers.gramian.mgda_ub import MGDAUB
from mtl.balancers.gramian.nash_mtl import NashMTL
from mtl.balancers.gramian.pcgrad import PCGrad
from mtl.balancers.gramian.primary_auxiliary import PrimaryAuxiliary
from mtl.balancers.gramian.torchjd_adapter import TorchJD
from mtl.balancers.gramian.upgrad import UPGrad

__all__ = [
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DBMTL",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradNorm",
    "GradNormNormalized",
    "GradVac",
    "GramianBalancer",
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "NashMTL",
    "PCGrad",
    "PrimaryAuxiliary",
    "TorchJD",
    "UPGrad",
]
