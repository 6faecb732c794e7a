"""``graddrop``: Gradient Sign Dropout: per coordinate, keep only the task gradients of one randomly voted sign.

Paper: Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai & D. Anguelov, "Just Pick a Sign:
Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020.
https://arxiv.org/abs/2010.06808 (no official code; reference implementations: LibMTL,
``LibMTL/weighting/GradDrop.py``, and the ``graddrop`` of the CAGrad/MoCo/GO4Align experiment code, which
applies it to the flattened shared-parameter gradients)

Formula, per coordinate ``k`` of the task gradients ``g_t`` (rows of ``BalanceInput.gradients``)::

    P_k = 1/2 (1 + sum_t g_tk / sum_t |g_tk|)               (positive sign purity)
    U_k ~ Uniform(0, 1)
    M_tk = [P_k > U_k] [g_tk > 0] + [P_k < U_k] [g_tk < 0]  (keep the positive ones with probability P_k,
                                                            else the negative ones)
    C_tk = leak + (1 - leak) M_tk,      update = sum_t C_t * g_t

A coordinate where every task agrees keeps everything; where they conflict, one sign survives, chosen in
proportion to its share of the total magnitude. ``leak = 1`` is the plain sum (``equal``).

Knobs:
    ``leak`` (0.0): the share of every gradient that always passes (the paper's leak ``l_i``, one value for
        every task; LibMTL's default 0).
    ``seed`` (0): seed of the balancer's generator for ``U`` (its state is checkpointed).
    ``source`` ("representation"): representation (the paper's place: the activation layer before the
        heads; cheap) | parameters (every shared parameter, as the CAGrad/MoCo experiment code does).

Cost: on the representation a ``T x H`` mask (negligible). On the parameters no mask is formed: with
``pos_k = sum_t max(g_tk, 0)`` and ``neg_k = sum_t min(g_tk, 0)``, ``P_k = pos_k / (pos_k - neg_k)``, and
the masked sum is ``pos_k`` where ``U_k < P_k``, else ``neg_k``; the kept share of task ``t``'s L1 mass
follows from its row sums and ``g_t @ [U < P]``. That is a few passes over the ``T x P`` Jacobian in
cache-sized column chunks, plus one uniform draw per parameter (about a third of the time: 21.5 M draws
for e5-small), in place of the weighted update ``w @ J`` (``scripts/bench_balancers.py``).

Deviations from the reference code:

* **Batch reduction without the activation's sign.** LibMTL multiplies each row's gradient by the sign of
  the activation before summing over the batch (the paper's batch-separated variant), which needs one
  shared input for all tasks. Here every task has its own batch, so the representation's task gradient is
  the batch sum of ``dL_t/dz_t`` (the vector the Gramian is made of; the gradient of a shift of the
  representation); ``P`` and the mask are computed on it and the mask is applied to every row of the task's
  representation gradient (LibMTL likewise applies one per-feature mask to all batch rows).
* ``U`` comes from a private generator (seeded, checkpointed; on the gradients' device, re-seeded each step
  from the checkpointed CPU generator), not the global RNG.
* Where every gradient is zero ``P`` is undefined and nothing is kept (LibMTL adds 1e-7 to the
  denominator, a scale dependence); nothing changes there, since every such gradient is zero.
* One ``leak`` for every task (the paper allows one per task; LibMTL's is a scalar too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.aggregator.base import Aggregation, Aggregator
from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import SeededMixin


def _coefficients(grads: Tensor, magnitudes: Tensor, uniform: Tensor, leak: float) -> Tensor:
    """``C`` from the gradients, their absolute values (computed once by the caller) and ``U``.

    ``M_tk = [P_k > U_k][g_tk > 0] + [P_k < U_k][g_tk < 0]`` is ``sign(g_tk) (P_k - U_k) > 0`` (multiplying by
    a sign is exact); where every gradient is 0, ``P`` is 0/0 = NaN and nothing is kept (nothing to keep).
    """
    purity = 0.5 * (1.0 + grads.sum(0) / magnitudes.sum(0))
    c = (torch.sign(grads).mul_(purity - uniform) > 0).to(grads.dtype)
    return c.mul_(1.0 - leak).add_(leak) if leak else c


def sign_dropout_coefficients(grads: Tensor, uniform: Tensor, leak: float) -> Tensor:
    """``C = leak + (1 - leak) M`` for the task gradients ``grads`` (``T x D``) and one ``U`` per coordinate."""
    return _coefficients(grads, grads.abs(), uniform, leak)


@register_balancer("graddrop")
class GradDrop(SeededMixin, Aggregator):
    """GradDrop (Chen et al., NeurIPS 2020): ``C_tk = leak + (1 - leak) M_tk``, update ``sum_t C_t * g_t``.

    The reported weight of a task is the share of its gradient's L1 mass that passes (1 with ``leak = 1``
    or without conflicts).
    """

    #: columns per chunk on a CPU (cache-sized: the passes over a chunk stay in cache; the CPU generator's
    #: draws of ``U`` continue from chunk to chunk, so the result does not depend on it)
    CHUNK = 1 << 16

    def __init__(
        self,
        task_names: Sequence[str],
        leak: float = 0.0,
        seed: int = 0,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"graddrop leak must be in [0, 1], got {leak}")
        self.leak = float(leak)
        self.seed = int(seed)
        self._init_generator(seed)

    def _step_generator(self, device: torch.device) -> torch.Generator:
        """A generator on ``device`` for this step, seeded from the checkpointed CPU generator."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self._gen))
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        return gen

    def _update_chunk(self, g: Tensor, u: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``sum_t C_t * g_t`` of the columns ``g`` (``T x n``) into ``out``, without forming ``C``; return
        the columns' ``sum_k |g_tk|`` and ``sum_k C_tk |g_tk|`` per task (float64).

        With ``pos = sum_t max(g_t, 0)``, ``neg = sum_t min(g_t, 0)`` and ``m = [U < P] = [U (pos - neg) < pos]``
        (``P = pos / (pos - neg)`` is the formula's purity; no column is kept where every gradient is 0):
        the masked sum is ``neg + m (pos - neg)``; task ``t`` keeps ``sum_k m_k max(g_tk, 0) + (1 - m_k)
        max(-g_tk, 0) = rowsum(max(g_t, 0)) - rowsum(g_t) + g_t @ m`` of its mass ``2 rowsum(max(g_t, 0)) -
        rowsum(g_t)``; a leak ``l`` mixes in the plain sum: ``l sum_t g_t + (1 - l) (...)``.
        """
        pos = g.clamp_min(0.0)
        pos_col, total = pos.sum(0), g.sum(0)
        neg_col = total - pos_col
        abs_col = pos_col - neg_col
        m = torch.lt(u.mul_(abs_col), pos_col).to(g.dtype)
        torch.addcmul(neg_col, m, abs_col, out=out)
        pos_row, row = pos.sum(1), g.sum(1)
        mass = (2.0 * pos_row - row).double()
        kept = (pos_row - row + g @ m).double()
        if self.leak:
            out.mul_(1.0 - self.leak).add_(total, alpha=self.leak)
            kept = self.leak * mass + (1.0 - self.leak) * kept
        return mass, kept

    def aggregation(self, inp: BalanceInput) -> Aggregation:
        grads = inp.gradients
        assert grads is not None
        t, d = grads.shape
        gen = self._step_generator(grads.device)
        per_coordinate = self.source == "representation"
        coefficients = torch.empty_like(grads) if per_coordinate else None
        update = None if per_coordinate else torch.empty(d, dtype=grads.dtype, device=grads.device)
        kept = torch.zeros(t, dtype=torch.float64, device=grads.device)  # sum_k C_tk |g_tk|
        mass = torch.zeros(t, dtype=torch.float64, device=grads.device)  # sum_k |g_tk|
        step = self.CHUNK if grads.device.type == "cpu" else 1 << 22
        with torch.no_grad():
            for start in range(0, d, step):
                g = grads[:, start : start + step]
                u = torch.rand(g.shape[1], generator=gen, device=g.device, dtype=g.dtype)
                if coefficients is not None:
                    a = g.abs()
                    c = _coefficients(g, a, u, self.leak)
                    mass += a.sum(1).double()  # float32 within a chunk, float64 across chunks
                    kept += torch.linalg.vecdot(c, a).double()
                    coefficients[:, start : start + step] = c
                else:
                    assert update is not None
                    chunk_mass, chunk_kept = self._update_chunk(g, u, update[start : start + step])
                    mass += chunk_mass
                    kept += chunk_kept
        share = torch.where(mass > 0, kept / mass.clamp_min(1e-300), torch.ones_like(mass))
        return Aggregation(share.float(), coefficients=coefficients, update=update)
