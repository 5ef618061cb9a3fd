"""One optimiser step of either phase: backward, gradient averaging, NaN guard, norm clipping.

Every optimiser step of a run (each PPO minibatch, each SAC update, each decoder batch) goes
through :func:`guarded_step`, so precision, DDP and the NaN guard behave the same everywhere.

Why not Lightning's ``clip_gradients``: in manual optimisation it clips the gradients as they are
after ``manual_backward``, which under ``16-mixed`` are still multiplied by the GradScaler's scale
(Lightning unscales later, inside ``optimizer.step()``), so ``max_norm`` would be applied to
``scale * grad`` and the real step would be ``scale`` times too small. Here the gradient norm is
computed once, divided by the scale, and used both for the NaN guard and for clipping; the step
itself stays Lightning's (unscale, skip-on-overflow and scale update included).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from gorl.distributed import average_gradients_
from gorl.errors import NonFiniteError


def guarded_step(module: pl.LightningModule, optimizer, loss: torch.Tensor, max_norm: float | None, where: str) -> None:
    """``loss.backward()`` and one step of ``optimizer`` (a Lightning optimizer) on ``module``.

    Raises :class:`NonFiniteError` (naming ``where``) on a non-finite loss, or on non-finite
    gradients in full / bf16 precision. Under ``16-mixed`` non-finite gradients are the GradScaler's
    overflow signal, not an error: the step is left to Lightning, which skips it and lowers the scale.
    """
    if not torch.isfinite(loss):
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
    if params:
        average_gradients_(params)
        scaler = getattr(module.trainer.precision_plugin, "scaler", None)
        scaled = scaler is not None and scaler.is_enabled()
        scale = float(scaler.get_scale()) if scaled else 1.0
        # One pass over the gradients serves both the NaN guard and the clipping.
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if not torch.isfinite(norm):
            if not scaled:
                raise NonFiniteError(f"non-finite gradient in the {where}; the last checkpoint is kept")
        elif max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm * scale, norm, foreach=True)
    optimizer.step()
