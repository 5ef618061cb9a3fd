"""Decoders ``g_phi(s, eps) -> pre-tanh action``: identity (stage 0), flow matching, diffusion."""

from gorl.decoders.base import DecoderModule
from gorl.decoders.diffusion import DiffusionDecoder
from gorl.decoders.flow import FlowDecoder
from gorl.decoders.identity import IdentityDecoder

__all__ = ["DecoderModule", "IdentityDecoder", "FlowDecoder", "DiffusionDecoder"]
