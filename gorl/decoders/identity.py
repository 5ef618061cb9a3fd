"""The identity decoder of stage 0: ``g(s, eps) = eps`` exactly, so stage 0 is Gaussian PPO."""

from __future__ import annotations

import torch

from gorl.decoders.base import DecoderModule


class IdentityDecoder(DecoderModule):
    """Exact identity; nothing to train."""

    graph_safe = True

    trainable = False

    def decode(self, obs: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if eps.shape[-1] != self.act_dim:
            raise ValueError(f"identity decoder needs latent_dim == action dim ({self.act_dim}), got {eps.shape[-1]}")
        return eps

    def loss(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the identity decoder has nothing to fit")
