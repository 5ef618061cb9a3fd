"""The CPU refit preset converges: a decoder fitted with exactly the shipped settings of
``conf/refinement/cpu.yaml`` and ``conf/decoder/{flow,diffusion}_cpu.yaml`` (the quick start's and
``gorl bench``'s) reproduces a state-conditioned three-mode action distribution, which a Gaussian
policy fitted by maximum likelihood cannot.

The target: context ``c ~ U(-1, 1)`` plus four distractor observation dims; a 2-D pre-tanh action on
one of three modes at angles ``2 pi j / 3 + 0.8 c`` on the unit circle (equal odds), noise 0.03.
The score: the share of samples within 0.15 of a mode centre, and each mode's share.
"""

import importlib
import math
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

from gorl.refinement import DecoderFit, RefinementConfig, clip_targets

CONF = Path(__file__).resolve().parents[1] / "conf"
CONTEXTS = (-0.6, 0.0, 0.6)


def three_modes(n: int, seed: int) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, generator=g) * 2 - 1
    distractors = torch.randn(n, 4, generator=g) * 2
    j = torch.randint(0, 3, (n,), generator=g)
    theta = 2 * math.pi * j / 3 + 0.8 * c[:, 0]
    action = torch.stack([theta.cos(), theta.sin()], -1) + 0.03 * torch.randn(n, 2, generator=g)
    return TensorDict({"observation": torch.cat([c, distractors], 1), "action": action}, batch_size=[n])


def mode_score(samples: torch.Tensor, context: float) -> tuple[float, list[float]]:
    """(share within 0.15 of any mode centre, share near each mode)."""
    theta = 2 * math.pi * torch.arange(3) / 3 + 0.8 * context
    centres = torch.stack([theta.cos(), theta.sin()], -1)
    dist = torch.cdist(samples, centres)
    near = dist.min(1).values < 0.15
    return near.float().mean().item(), [((dist.argmin(1) == k) & near).float().mean().item() for k in range(3)]


def probe(context: float, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.full((n, 1), context), torch.randn(n, 4, generator=g) * 2], 1)


def _load(path: Path) -> dict:
    """A shipped YAML as the CLI reads it (omegaconf: ``1e-3`` is a float)."""
    return OmegaConf.to_container(OmegaConf.load(path))


def shipped_decoder(name: str, obs_dim: int, act_dim: int):
    spec = _load(CONF / "decoder" / f"{name}.yaml")
    module, cls = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(obs_dim, act_dim, **spec.get("init_args", {}))


def shipped_refinement() -> RefinementConfig:
    return RefinementConfig(**_load(CONF / "refinement" / "cpu.yaml"))


def fit_shipped(decoder: str, after_round: Callable[[DecoderFit, torch.nn.Module], None] | None = None) -> tuple[DecoderFit, torch.nn.Module]:
    """Fit a shipped CPU decoder with the shipped CPU refit preset on the quick start's refit data
    size (32,000 frames, 10% held out); ``after_round`` sees the fit after every round."""
    torch.manual_seed(0)
    cfg = shipped_refinement()
    train = clip_targets(three_modes(28_800, seed=0), cfg.target_clip)
    val = clip_targets(three_modes(3_200, seed=1), cfg.target_clip)
    dec = shipped_decoder(decoder, 5, 2)
    dec.fit_obs_statistics(train["observation"])
    opt = dec.configure_optimizers()
    fit = DecoderFit(cfg, train, val)
    while not fit.done:
        fit.step(dec, lambda loss: (opt.zero_grad(), loss.backward(), opt.step()))
        if after_round is not None:
            after_round(fit, dec)
    return fit, dec


@pytest.mark.parametrize("decoder", ["flow_cpu", "diffusion_cpu"])
def test_cpu_refit_preset_fits_three_state_conditioned_modes(decoder):
    fit, dec = fit_shipped(decoder)
    cfg = shipped_refinement()
    assert fit.steps == cfg.steps  # a fit measured in steps runs its steps (no early stop)
    dec.load_state_dict(fit.best_state)
    for context in CONTEXTS:
        with torch.no_grad():
            samples = dec.decode(probe(context, 3000, seed=2), torch.randn(3000, 2))
        near, per_mode = mode_score(samples, context)
        assert near >= 0.6, (decoder, context, near, per_mode)
        assert min(per_mode) >= 0.15, (decoder, context, near, per_mode)


def test_a_gaussian_fit_fails_the_same_check():
    data = three_modes(28_800, seed=0)
    obs, action = data["observation"], data["action"]
    # Maximum likelihood of a Gaussian whose mean is linear in the observation, diagonal std.
    X = torch.cat([obs, torch.ones(len(obs), 1)], 1)
    w = torch.linalg.lstsq(X, action).solution
    std = (action - X @ w).std(0)
    for context in CONTEXTS:
        obs_p = probe(context, 3000, seed=2)
        mean = torch.cat([obs_p, torch.ones(3000, 1)], 1) @ w
        samples = mean + std * torch.randn(3000, 2)
        near, per_mode = mode_score(samples, context)
        assert near < 0.6 or min(per_mode) < 0.15, (context, near, per_mode)
