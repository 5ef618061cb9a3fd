"""Latent-policy optimisers behind one interface (:class:`~gorl.encoders.base.LatentEncoder`)."""

from gorl.encoders.base import LatentEncoder
from gorl.encoders.ppo import EncoderModule
from gorl.encoders.sac import LatentSAC

__all__ = ["LatentEncoder", "EncoderModule", "LatentSAC"]
