"""Whole-policy baselines of the GoRL paper, as :class:`~gorl.encoders.base.LatentEncoder` s.

Their "latent" *is* the pre-tanh action: run them with the identity decoder and one stage
(``conf/baselines/*.yaml``). Gaussian PPO is :class:`gorl.encoders.EncoderModule` itself
(``conf/encoder/ppo_baseline.yaml``).

- :class:`FPO`: Flow Policy Optimization (arXiv 2507.21053), a flow policy with a CFM-loss ratio.
- :class:`DPPO`: Diffusion Policy Policy Optimization (arXiv 2409.00588), the denoising chain as an MDP.
"""

from gorl.baselines.dppo import DPPO
from gorl.baselines.fpo import FPO

__all__ = ["FPO", "DPPO"]
