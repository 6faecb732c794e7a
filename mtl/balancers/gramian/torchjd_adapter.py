"""``torchjd``: any torchjd aggregator or weighting, driven by the Gramian only (``balancer=torchjd``).

Paper: P. Quinton & V. Rey, "Jacobian Descent for Multi-Objective Optimization", 2024.
https://arxiv.org/abs/2406.16232 (library: https://github.com/TorchJD/torchjd; ``pip install "mtl[jd]"``)

Formula: ``w`` = the chosen aggregator's weights, computed from ``G`` alone (three ways, below); the
update is ``d = J^T w = sum_t w_t g_t``, applied as ``sum_t w_t L_t``.

torchjd (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization") splits most
aggregators into a *weighting* (weights from a matrix statistic) and the combination
``J^T w``. The trainer only has the Gramian ``G = J J^T``, so the adapter picks, by the kind
of object the name resolves to:

``gramian``
    Gramian weightings and the aggregators built on them (``GramianWeightedAggregator``):
    UPGrad, MGDA, DualProj, IMTLG, PCGrad, GradVac, AlignedMTL, CAGrad, FairGrad, Krum, PCD
    (and ``...Weighting`` names). The weighting is called on ``G``: exact. ``MoDoWeighting``
    and ``SDMGradWeighting`` expect ``J_1 J_2^T`` from two independent batches; they get the
    single-batch ``G`` (an approximation the torchjd docs warn about).
``matrix``
    Matrix weightings of ``WeightedAggregator``s that depend on ``J`` only through ``J J^T``
    (Mean, Sum, Random, Constant, NashMTL): called on a surrogate Jacobian ``L`` with
    ``L L^T = G`` (:func:`~mtl.balancers.gramian.linalg.gramian_factor`): exact.
``aggregate``
    Other aggregators (ConFIG): the aggregator runs on ``L`` and the weights are recovered
    from its output ``v`` by least squares ``L^T w = v`` (minimum-norm ``w``); exact whenever
    the aggregator returns a linear combination of the rows and commutes with rotations
    (``A(J Q) = A(J) Q``). The first call checks both properties on a randomly rotated, padded
    surrogate and raises if they fail.

Refused with a clear error: GradDrop and TrimmedMean (coordinate-wise, their output is not a
function of the Gramian), ExcessMTL (per-coordinate gradient statistics).

Constructor arguments go in ``aggregator_kwargs`` (or as extra keys), e.g.
``balancer=torchjd balancer.aggregator=CAGrad +balancer.aggregator_kwargs.c=0.4``. Lists become
float64 tensors (``pref_vector``, ``weights``, ``tau``...); ``n_tasks`` is filled in with the
number of tasks when the constructor wants it; a string ``weighting`` argument (CRMOGMWeighting)
names another torchjd weighting. Stateful torchjd objects (GradVac, PCD, MoDo, SDMGrad,
CRMOGM) are checkpointed through ``extra_state`` (their buffers and ``_state_key``); NashMTL's
cvxpy warm start is not. torchjd's own random draws (PCGrad, GradVac, Random orders) use the
global torch RNG.

Knobs:
    ``aggregator`` ("UPGrad"): UPGrad | MGDA | DualProj | IMTLG | PCGrad | GradVac | AlignedMTL |
    ConFIG | Mean | ... (case-insensitive; :func:`available` lists them).
    ``aggregator_kwargs`` (None, i.e. ``{}``): constructor arguments, e.g.
    ``+balancer.aggregator_kwargs.pref_vector=[1,2,1]``.
    ``seed`` (0): seed of the one-off equivariance probe for non-weighted aggregators.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from torchjd itself: weights come from the Gramian, not from the Jacobian, which is exact for
the ``gramian`` and ``matrix`` kinds and for ``aggregate`` aggregators that pass the probe;
``MoDoWeighting`` and ``SDMGradWeighting`` get the single-batch Gramian (see above); UPGrad and DualProj
use a scipy NNLS projector (:func:`nnls_projector`) when quadprog is not installed.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import gramian_factor

INSTALL_HINT = 'the torchjd balancer needs the optional dependency torchjd: pip install "mtl[jd]"'

#: Matrix weightings that expect a (cross-)Gramian-like m x m matrix rather than a Jacobian.
_GRAMIAN_LIKE_MATRIX = {"MoDoWeighting", "SDMGradWeighting"}
#: Not expressible from the Gramian.
_UNSUPPORTED = {
    "GradDrop": "it masks gradient coordinates by sign, so its output is not a function of the Gramian",
    "TrimmedMean": "it trims per coordinate, so its output is not a function of the Gramian",
    "ExcessMTL": "it accumulates per-coordinate squared gradients, which the Gramian does not carry",
    "ExcessMTLWeighting": "it accumulates per-coordinate squared gradients, which the Gramian does not carry",
}
_BASES = {"Aggregator", "Weighting", "WeightedAggregator", "GramianWeightedAggregator"}


def _import_torchjd() -> Any:
    try:
        import torchjd.aggregation as agg
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return agg


def available(agg: Any | None = None) -> list[str]:
    """Names of torchjd aggregators/weightings the adapter accepts."""
    agg = agg or _import_torchjd()
    return sorted(n for n in getattr(agg, "__all__", dir(agg)) if n not in _BASES and n not in _UNSUPPORTED)


def _resolve_name(agg: Any, name: str) -> tuple[str, type]:
    names = list(getattr(agg, "__all__", dir(agg)))
    by_lower = {n.lower(): n for n in names}
    real = name if name in names else by_lower.get(str(name).lower())
    if real is None:
        raise KeyError(f"torchjd has no aggregator {name!r}; available: {', '.join(available(agg))}")
    if real in _UNSUPPORTED:
        raise ValueError(f"torchjd aggregator {real!r} cannot be used as a Gramian balancer: {_UNSUPPORTED[real]}")
    if real in _BASES:
        raise ValueError(f"{real!r} is an abstract torchjd base class; available: {', '.join(available(agg))}")
    return real, getattr(agg, real)


def _convert(key: str, value: Any, agg: Any, n_tasks: int) -> Any:
    if key == "weighting" and isinstance(value, str):
        return _build(agg, value, {}, n_tasks)[1]
    if isinstance(value, Mapping | str | bytes):
        return value
    if isinstance(value, Sequence) or (hasattr(value, "__iter__") and not isinstance(value, Tensor)):
        items = list(value)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            return torch.tensor([float(v) for v in items], dtype=torch.float64)
    return value


def nnls_projector(norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Any:
    """A torchjd ``DualConeProjector`` that needs only scipy (for UPGrad, DualProj).

    Same problem and preprocessing as torchjd's default ``QuadprogProjector`` (Gramian divided
    by its trace, ``reg_eps`` added to the diagonal): for each ``u``,
    ``min_v v^T G v  s.t.  v >= u``. With ``G = R^T R`` (Cholesky) and ``v = u + x`` this is the
    non-negative least-squares problem ``min_{x >= 0} ||R x + R u||``, solved exactly by
    Lawson-Hanson (``scipy.optimize.nnls``).
    """
    from scipy.optimize import nnls
    from torchjd.linalg import DualConeProjector

    class NNLSProjector(DualConeProjector):
        def __init__(self) -> None:
            self.norm_eps = norm_eps
            self.reg_eps = reg_eps

        def __repr__(self) -> str:
            return f"NNLSProjector(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"

        def __call__(self, U: Tensor, G: Tensor) -> Tensor:
            g = G.detach().to("cpu", torch.float64)
            trace = float(torch.diagonal(g).sum())
            g = torch.zeros_like(g) if trace < self.norm_eps else g / trace
            g = 0.5 * (g + g.T) + self.reg_eps * torch.eye(g.shape[0], dtype=g.dtype)
            r = torch.linalg.cholesky(g).T.numpy()
            u_all = U.detach().to("cpu", torch.float64).reshape(-1, g.shape[0]).numpy()
            out = [u + nnls(r, -(r @ u))[0] for u in u_all]
            w = torch.as_tensor(np.stack(out) if out else u_all).reshape(U.shape)
            return w.to(device=G.device, dtype=G.dtype)

    return NNLSProjector()


def _has_quadprog() -> bool:
    return importlib.util.find_spec("quadprog") is not None and importlib.util.find_spec("qpsolvers") is not None


def _build(agg: Any, name: str, kwargs: Mapping[str, Any], n_tasks: int) -> tuple[str, nn.Module]:
    real, cls = _resolve_name(agg, name)
    params = inspect.signature(cls.__init__).parameters
    call = {k: _convert(k, v, agg, n_tasks) for k, v in kwargs.items()}
    if "n_tasks" in params and "n_tasks" not in call:
        call["n_tasks"] = n_tasks
    if "projector" in params:
        choice = call.get("projector", "auto")
        if choice == "nnls" or (choice in ("auto", None) and not _has_quadprog()):
            call["projector"] = nnls_projector()
        elif choice in ("auto", "quadprog", None):
            call.pop("projector", None)  # torchjd's default QuadprogProjector
    try:
        obj = cls(**call)
    except ImportError as exc:
        raise ImportError(f"torchjd {real} needs extra packages: {exc}") from exc
    except TypeError as exc:
        raise TypeError(f"torchjd {real}{inspect.signature(cls.__init__)}: {exc}") from exc
    return real, obj


def _classify(agg: Any, obj: nn.Module) -> tuple[str, nn.Module]:
    """(mode, callable) for an instantiated torchjd aggregator or weighting."""
    from torchjd.aggregation._weighting_bases import _GramianWeighting, _MatrixWeighting

    if isinstance(obj, agg.GramianWeightedAggregator):
        return "gramian", obj.gramian_weighting
    if isinstance(obj, agg.WeightedAggregator):
        return _classify(agg, obj.weighting)
    if isinstance(obj, agg.Aggregator):
        return "aggregate", obj
    if isinstance(obj, agg.Weighting):
        if type(obj).__name__ in _GRAMIAN_LIKE_MATRIX or isinstance(obj, _GramianWeighting):
            return "gramian", obj
        if type(obj).__name__ in _UNSUPPORTED:
            raise ValueError(f"torchjd {type(obj).__name__} cannot be used: {_UNSUPPORTED[type(obj).__name__]}")
        if isinstance(obj, _MatrixWeighting):
            return "matrix", obj
        inner = getattr(obj, "weighting", None)  # wrappers such as CRMOGMWeighting
        if isinstance(inner, nn.Module):
            return _classify(agg, inner)[0], obj
    raise TypeError(f"cannot use torchjd object {obj!r} as a balancer")


def _weights_from_vector(factor: Tensor, vector: Tensor) -> tuple[Tensor, float]:
    """Minimum-norm ``w`` with ``factor^T w = vector`` and the relative residual."""
    sol = torch.linalg.lstsq(factor.T, vector.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    resid = float(torch.linalg.vector_norm(factor.T @ sol - vector))
    scale = max(float(torch.linalg.vector_norm(vector)), 1e-300)
    return sol, resid / scale


@register_balancer("torchjd")
class TorchJD(GramianBalancer):
    """Adapter: weights of any torchjd aggregator computed from the Gramian (see module docs)."""

    #: extra keyword options are the aggregator's own constructor arguments
    open_options = True

    def __init__(
        self,
        task_names: Sequence[str],
        aggregator: str = "UPGrad",
        aggregator_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
        source: GradientSource | None = "representation",
        **extra: Any,
    ) -> None:
        super().__init__(task_names, source=source)
        agg = _import_torchjd()
        kwargs = {**dict(aggregator_kwargs or {}), **extra}
        name, obj = _build(agg, aggregator, kwargs, len(self.task_names))
        mode, fn = _classify(agg, obj)
        self.aggregator = name
        self.mode = mode
        self.seed = int(seed)
        # kept out of the module tree: torchjd registers ``None`` buffers that would make a
        # strict ``load_state_dict`` fail; its state travels in ``extra_state`` instead
        object.__setattr__(self, "_jd", obj)
        object.__setattr__(self, "_fn", fn)
        self._probed = mode != "aggregate"

    # ------------------------------------------------------------------ weights
    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        if self.mode == "gramian":
            w = self._fn(gramian)
        elif self.mode == "matrix":
            w = self._fn(gramian_factor(gramian))
        else:
            w = self._aggregate(gramian)
        return w.detach().to("cpu", torch.float64).reshape(-1)

    def _aggregate(self, gramian: Tensor) -> Tensor:
        factor = gramian_factor(gramian)
        if not self._probed:
            self._probe(gramian, factor)
            self._probed = True
        w, _ = _weights_from_vector(factor, self._fn(factor).to(torch.float64))
        return w

    def _probe(self, gramian: Tensor, factor: Tensor) -> None:
        """Check on a rotated, padded surrogate that the aggregator is a rotation-equivariant
        linear combination of its rows (otherwise the Gramian does not determine it)."""
        t = gramian.shape[0]
        gen = torch.Generator().manual_seed(self.seed)
        q, _ = torch.linalg.qr(torch.randn(t + 3, t + 3, generator=gen, dtype=torch.float64))
        padded = torch.cat([factor, torch.zeros(t, 3, dtype=torch.float64)], dim=1) @ q.T
        w_rot, resid = _weights_from_vector(padded, self._fn(padded).to(torch.float64))
        w_ref, _ = _weights_from_vector(factor, self._fn(factor).to(torch.float64))
        diff = w_rot - w_ref
        scale = max(float(w_ref @ gramian @ w_ref), float(torch.diagonal(gramian).max()) * 1e-12, 1e-300)
        if resid > 1e-5 or float(diff @ gramian @ diff) > 1e-8 * scale:
            raise ValueError(
                f"torchjd aggregator {self.aggregator!r} is not a rotation-equivariant linear combination of "
                "the task gradients, so it cannot be computed from the Gramian"
            )

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for prefix, mod in self._jd.named_modules():
            for bname, buf in mod._buffers.items():
                if buf is not None:
                    state[f"{prefix}|buffer|{bname}"] = buf.detach().clone()
            key = mod.__dict__.get("_state_key", None)
            if key is not None:
                state[f"{prefix}|state_key"] = key
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        mods = dict(self._jd.named_modules())
        for full, value in (state or {}).items():
            prefix, kind, *rest = full.split("|")
            mod = mods.get(prefix)
            if mod is None:
                continue
            if kind == "buffer":
                mod._buffers[rest[0]] = value.clone()
            elif kind == "state_key":
                mod.__dict__["_state_key"] = tuple(value) if isinstance(value, list) else value

    def extra_repr(self) -> str:
        return f"aggregator={self._jd!r}, mode={self.mode}"
