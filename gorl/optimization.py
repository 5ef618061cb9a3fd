"""One optimiser step of either phase: backward, gradient averaging, NaN guard, norm clipping.

Every optimiser step of a run (each PPO minibatch, each SAC update, each decoder batch) goes
through :func:`guarded_step`, so precision, DDP and the NaN guard behave the same everywhere.

Why not Lightning's ``clip_gradients``: in manual optimisation it clips the gradients as they are
after ``manual_backward``, which under ``16-mixed`` are still multiplied by the GradScaler's scale
(Lightning unscales later, inside ``optimizer.step()``), so ``max_norm`` would be applied to
``scale * grad`` and the real step would be ``scale`` times too small. Here the gradient norm is
computed once, divided by the scale, and used both for the NaN guard and for clipping; the step
itself stays Lightning's (unscale, skip-on-overflow and scale update included).

Two ways to check finiteness (``defer``). Checking in every step reads a device value on the host,
which on a GPU is a synchronisation per optimiser step: the CPU then waits for every kernel before it
may queue the next, and a small network's step becomes all launch latency. Deferred, the step only
records "was anything non-finite" in a device flag (:class:`FiniteGuard`), and the caller reads it
once per update (:meth:`FiniteGuard.raise_if_bad`): the run stops with the same error at the end of
that update. The weights in memory may then hold a non-finite step, but nothing is written: the
checkpoint callback never saves non-finite weights, so the last checkpoint on disk is the last good
state, as with the per-step check.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from gorl.distributed import average_gradients_
from gorl.errors import NonFiniteError


class FiniteGuard:
    """Device-side record of non-finite losses and gradients, read on the host once per update."""

    def __init__(self) -> None:
        self.bad_loss: torch.Tensor | None = None
        self.bad_grad: torch.Tensor | None = None

    def note(self, loss_ok: torch.Tensor, grad_ok: torch.Tensor | None) -> None:
        bad = ~loss_ok
        self.bad_loss = bad if self.bad_loss is None else self.bad_loss | bad
        if grad_ok is not None:
            bad = ~grad_ok
            self.bad_grad = bad if self.bad_grad is None else self.bad_grad | bad

    def raise_if_bad(self, where: str) -> None:
        """One host read of both flags; raises :class:`NonFiniteError` naming ``where``."""
        if self.bad_loss is None:
            return
        no_grad_flag = torch.zeros_like(self.bad_loss)
        bad_loss, bad_grad = torch.stack([self.bad_loss, no_grad_flag if self.bad_grad is None else self.bad_grad]).tolist()
        self.bad_loss = self.bad_grad = None
        if bad_loss:
            raise NonFiniteError(f"non-finite loss in the {where} (an optimiser step of this update); the last checkpoint is kept")
        if bad_grad:
            raise NonFiniteError(f"non-finite gradient in the {where} (an optimiser step of this update); the last checkpoint is kept")


def guarded_step(module: pl.LightningModule, optimizer, loss: torch.Tensor, max_norm: float | None, where: str,
                 guard: FiniteGuard | None = None) -> None:
    """``loss.backward()`` and one step of ``optimizer`` (a Lightning optimizer) on ``module``.

    Raises :class:`NonFiniteError` (naming ``where``) on a non-finite loss, or on non-finite
    gradients in full / bf16 precision. Under ``16-mixed`` non-finite gradients are the GradScaler's
    overflow signal, not an error: the step is left to Lightning, which skips it and lowers the scale.
    With a ``guard`` the checks are recorded there instead of read here (module docstring).
    """
    if guard is None and not torch.isfinite(loss):
        raise NonFiniteError(f"non-finite loss ({float(loss)}) in the {where}; the last checkpoint is kept")
    optimizer.zero_grad(set_to_none=True)
    model = module.trainer.model
    if hasattr(model, "require_backward_grad_sync"):
        # Under DDP one module trains while the other idles, and one training_step takes many
        # steps; DDP's reducer would reject the idle parameters. We average the gradients of the
        # optimiser's own parameters instead (gorl/distributed.py), so DDP must not.
        model.require_backward_grad_sync = False
    module.manual_backward(loss)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_ok = None
    if params:
        average_gradients_(params)
        scaler = getattr(module.trainer.precision_plugin, "scaler", None)
        scaled = scaler is not None and scaler.is_enabled()
        scale = float(scaler.get_scale()) if scaled else 1.0
        # One pass over the gradients serves both the NaN guard and the clipping.
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if guard is not None:
            # No host read: clipping with a non-finite norm only spreads what the guard reports.
            grad_ok = None if scaled else torch.isfinite(norm)  # under the fp16 scaler: its overflow signal
            if max_norm:
                torch.nn.utils.clip_grads_with_norm_(params, max_norm * scale, norm, foreach=True)
        elif not torch.isfinite(norm):
            if not scaled:
                raise NonFiniteError(f"non-finite gradient in the {where}; the last checkpoint is kept")
        elif max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm * scale, norm, foreach=True)
    if guard is not None:
        guard.note(torch.isfinite(loss.detach()), grad_ok)
    optimizer.step()
