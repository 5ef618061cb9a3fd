"""The prior regulariser: keeps the latent policy pi_theta(eps|s) close to the decoder's prior N(0, I).

Why it matters: the decoder was fitted on latents drawn from N(0, I). A latent policy that drifts far
from the prior feeds the decoder inputs it never saw, so the decoded actions stop meaning anything.

Two forms, both per stage-weighted by ``beta`` in the encoder loss:
- ``kl``: the analytic KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions, as the
  paper's text states;
- ``l2``: ``mean(mu^2) + mean(sigma^2)``, what the authors' code computes. It is not a KL (there is
  no ``-log sigma^2`` term), so on its own it pulls sigma towards 0, not 1.
"""

from __future__ import annotations

from typing import Literal

import torch

PriorReg = Literal["kl", "l2", "none"]


def kl_to_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale^2) || N(0, 1)) summed over the last dim; shape ``loc.shape[:-1]``."""
    var = scale.pow(2)
    return 0.5 * (var + loc.pow(2) - 1.0 - torch.log(var)).sum(-1)


def prior_regulariser(loc: torch.Tensor, scale: torch.Tensor, kind: PriorReg) -> torch.Tensor:
    """The scalar penalty of ``kind`` (before the ``beta`` weight), computed in fp32."""
    loc, scale = loc.float(), scale.float()
    if kind == "kl":
        return kl_to_standard_normal(loc, scale).mean()
    if kind == "l2":
        return loc.pow(2).mean() + scale.pow(2).mean()
    if kind == "none":
        return loc.new_zeros(())
    raise ValueError(f"unknown prior_reg {kind!r}; valid: kl, l2, none")
