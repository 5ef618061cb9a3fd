"""The encoder: a latent Gaussian policy pi_theta(eps | s) trained by PPO, with a prior regulariser.

GoRL's only RL-trained part. It lives in latent space: the environment sees
``tanh(decoder(s, eps))``, but PPO's likelihood ratio, entropy bonus and prior regulariser are all
computed on the latent ``eps``, where the policy is a tractable diagonal Gaussian. With the identity
decoder of stage 0 this is exactly Gaussian PPO in pre-tanh action space (the tanh Jacobian does not
depend on theta, so it cancels in the ratio).

One PPO update, top to bottom (:meth:`EncoderModule.train_on`):
1. scale rewards; with ``gae="rollout"`` compute GAE(gamma, lambda) once for the whole rollout with
   TorchRL's ``GAE`` (truncation bootstraps, termination does not);
2. for ``epochs`` passes over shuffled minibatches: with ``gae="minibatch"`` recompute GAE inside
   the minibatch with the current critic (minibatches are then whole unroll segments, as in Brax
   PPO and the authors' ``src/flow_policy/ppo.py``); the clipped PPO loss (clipped ratio on latent
   log-probs, per-minibatch advantage normalisation, entropy of the latent Gaussian, value loss)
   plus ``beta * prior_regulariser``; one optimiser step each, gradient norm clipped;
3. merge the rollout's observations into the running statistics (``obs_stats="post_update"``, the
   authors' current "rollout consistent" mode: the update normalises with the statistics the
   rollout was collected with, so the stored log-probs are exact). ``obs_stats="pre_update"`` merges
   them before step 1 instead (Brax's and their older mode).

Which GAE is our default, and why: ``gae="rollout"``. It works for any unroll length and lets
minibatches mix frames from every env and time step (TorchRL's and CleanRL's PPO); per-minibatch
GAE needs minibatches made of whole unrolls, which on a CPU rollout of 64 envs makes a minibatch of
512 frames 16 correlated segments. The paper recipes (``conf/encoder/gorl_ppo.yaml``) set
``gae: minibatch``, as the authors do. Where we differ from them on purpose: a truncated episode
(the 1000-step limit) bootstraps from the value of its last observation here; their code gives
truncated steps zero advantage and no value target.

The loss is TorchRL's ``ClipPPOLoss`` (``loss_impl="torchrl"``) or, by default, the same maths in
plain tensors (``loss_impl="fused"``, :meth:`EncoderModule.ppo_loss`). Why our own: an optimiser step
of a small-network PPO is dominated by per-call overhead on CPU, and ``ClipPPOLoss``'s TensorDict
plumbing and extra diagnostics (ESS, explained variance, ratio extremes) cost 2.2-2.8 ms per
minibatch on 2 cores here, 20-40% of a whole step; the PPO loop runs 1.0-1.5x faster without them
(``benchmarks/RESULTS.md``). Both give the same losses and gradients (tested against each other);
``ClipPPOLoss`` stays the reference.
"""

from __future__ import annotations

import math
from typing import Iterator, Literal, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import IndependentNormal, ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from gorl.encoders.advantage import segment_gae
from gorl.encoders.base import LatentEncoder, OptimizeFn
from gorl.errors import ConfigError
from gorl.networks import GaussianHead, InitScheme, RunningNorm, check_init, gaussian_log_prob, mlp, stage_item, stage_value
from gorl.prior import PriorReg, prior_regulariser

ResetMode = Literal["fresh", "gaussian", "warm", "warm_value"]
RESET_MODES = ("fresh", "gaussian", "warm", "warm_value")
LossImpl = Literal["fused", "torchrl"]
ObsStatsTiming = Literal["post_update", "pre_update"]
ObsStatsAccumulation = Literal["cumulative", "batch_only"]
GAEMode = Literal["rollout", "minibatch"]
StageFloat = float | list[float]
_ENTROPY_PER_DIM = 0.5 + 0.5 * math.log(2 * math.pi)  # a Gaussian's entropy is this + log(scale)

#: a policy loss and its diagnostics (fp32 scalars).
LossAndStats = tuple[torch.Tensor, dict[str, torch.Tensor]]

# Numerical guard only: exp(20) ~ 5e8 is far beyond any ratio the clip lets matter; without it a
# degenerate minibatch could overflow the ratio to inf and end the run with a non-finite loss.
MAX_LOG_RATIO = 20.0


def clipped_surrogate(log_ratio: torch.Tensor, advantage: torch.Tensor, clip: float) -> LossAndStats:
    """PPO's pessimistic objective ``-E[min(r A, clip(r, 1 - c, 1 + c) A)]`` with ``r = exp(log_ratio)``.

    ``log_ratio`` and ``advantage`` broadcast together (DPPO: ``[n, K]`` against ``[n, 1]``); all
    in fp32. Returns the loss and diagnostics (clip fraction, the k3 estimate of KL(old || new)).
    """
    log_ratio = log_ratio.float().clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    advantage = advantage.float()
    ratio = log_ratio.exp()
    unclipped = ratio * advantage
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantage
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
            "kl_approx": ((ratio - 1.0) - log_ratio).mean(),
            "ratio": ratio.mean(),
        }
    return loss, stats


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit std (fp32); a single element is only centred."""
    x = x.float()
    centred = x - x.mean()
    return centred / (x.std() + eps) if x.numel() > 1 else centred


class Critic(nn.Module):
    """State-value network on normalised observations."""

    def __init__(self, obs_norm: RunningNorm, obs_dim: int, hidden: Sequence[int], init: InitScheme = "lecun") -> None:
        super().__init__()
        self.obs_norm = obs_norm
        self.net = mlp(obs_dim, hidden, 1, init=init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.obs_norm(obs)).float()


class EncoderModule(LatentEncoder):
    """Latent PPO with a prior regulariser (defaults: the authors' code, see DESIGN.md).

    Args:
        obs_dim, act_dim: given by the system from the env.
        latent_dim: latent size; ``None`` = action dim (required by the identity decoder).
        actor_hidden, critic_hidden: MLP widths (SiLU).
        lr: Adam learning rate, per stage (a list: one value per stage, the last repeats).
        unroll: env steps per env per rollout; a rollout has ``num_envs * num_workers * unroll`` frames.
        rollouts_per_update: rollouts collected with the same weights before one update, their
            ``unroll``-step segments side by side. The authors' Brax PPO collects 16 unrolls of 30
            steps from 2048 envs per update (983,040 frames, 32 minibatches of 1024 segments):
            ``num_envs: 2048, unroll: 30, rollouts_per_update: 16, minibatch_size: 30720`` is that
            update exactly (``conf/env/paper_gpu.yaml``). Needs ``reward_norm: false`` (its return
            tracking runs per env across consecutive rollouts).
        epochs, minibatch_size: passes over a rollout and the size of its shuffled minibatches
            (a rollout smaller than one minibatch is one minibatch).
        gamma, lmbda: discount and GAE lambda.
        clip_epsilon, max_grad_norm: per stage.
        entropy_coef: weight of the latent Gaussian's entropy, per stage.
        value_coef: weight of the value loss.
        reward_scale: rewards are multiplied by this before GAE.
        reward_norm: also divide rewards by the running std of the discounted return (as gym's
            ``NormalizeReward``, which CleanRL's PPO uses): value targets stay O(1) whatever the
            task's reward scale. Off in the authors' setting (they use a fixed scale of 10).
        prior_reg: ``kl`` (paper text), ``l2`` (authors' code) or ``none``.
        prior_coef: beta, per stage.
        reset: how the encoder starts each stage (a list is indexed by the stage being started):
            ``fresh`` (a newly initialised actor and critic, new obs statistics: the authors'
            ``FRESH``, ``PpoState.init``; its policy is a random, narrower-than-prior function of the
            observation, see :class:`~gorl.networks.GaussianHead`), ``gaussian`` (as fresh, but the
            actor's output layer set so the policy is exactly N(0, I): their ``GAUSSIAN``, and this
            project's ``fresh`` before), ``warm`` (actor, critic and obs statistics of the finished
            stage's best encoder, their diffusion recipe's warm start) or ``warm_value`` (a fresh
            actor set exactly to N(0, I), critic and obs statistics of the best encoder kept: their
            ``gaussian_warm_value``). Entry 0 is how stage 0 starts: ``gaussian`` there starts it at
            the exact prior, any other mode means ``fresh`` (nothing to keep yet; the authors' stage
            0 is always fresh, ``_encoder_initialization`` in their ``src/gorl/pipeline.py``). The
            optimiser's moments restart in every mode, as theirs do. (bennidict23/GoRL@8a0209c,
            ``initialize_agent`` in ``src/gorl/algorithms/dm_control_training.py``.)
        init: initialisation of the actor and critic layers: ``lecun`` (the authors' ``mlp_init``:
            LeCun-uniform weights, zero biases) or ``torch_default`` (PyTorch's, this project's before).
        obs_stats: when a rollout's observations enter the running statistics, per stage:
            ``post_update`` (after the update, the authors' current "rollout_consistent") or
            ``pre_update`` (before it: Brax and their older "legacy_pre_update").
        obs_stats_accumulation: ``cumulative`` (running moments of everything seen) or
            ``batch_only`` (their ``legacy_batch_only``, see :meth:`RunningNorm.update`), per stage.
        gae: ``rollout`` (once per rollout, default) or ``minibatch`` (recomputed in each minibatch
            with the current critic; minibatches are whole unroll segments). See the module docstring.
        loss_impl: ``fused`` (default, :meth:`ppo_loss`) or ``torchrl`` (TorchRL's ``ClipPPOLoss``):
            the same loss and gradients; ``fused`` skips TorchRL's per-call overhead (module docstring).
    """

    graph_safe_act = True  # act(): plain tensor code (gorl.acceleration)

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        latent_dim: int | None = None,
        actor_hidden: Sequence[int] = (32, 32, 32, 32),
        critic_hidden: Sequence[int] = (256, 256, 256, 256, 256),
        lr: StageFloat = 1e-3,
        unroll: int = 30,
        rollouts_per_update: int = 1,
        epochs: int = 16,
        minibatch_size: int = 1024,
        gamma: float = 0.995,
        lmbda: float = 0.95,
        clip_epsilon: StageFloat = [0.15, 0.3],  # noqa: B006  (read-only, jsonargparse shows it)
        max_grad_norm: StageFloat = 0.5,
        entropy_coef: StageFloat = 0.01,
        value_coef: float = 0.25,
        reward_scale: float = 10.0,
        normalize_advantage: bool = True,
        reward_norm: bool = False,
        prior_reg: PriorReg = "kl",
        prior_coef: StageFloat = [5e-4, 1e-3],  # noqa: B006
        reset: ResetMode | list[ResetMode] = "fresh",
        init: InitScheme = "lecun",
        obs_stats: ObsStatsTiming | list[ObsStatsTiming] = "post_update",
        obs_stats_accumulation: ObsStatsAccumulation | list[ObsStatsAccumulation] = "cumulative",
        gae: GAEMode = "rollout",
        loss_impl: LossImpl = "fused",
    ) -> None:
        super().__init__()
        if loss_impl not in ("fused", "torchrl"):
            raise ConfigError(f"loss_impl must be 'fused' or 'torchrl', got {loss_impl!r}")
        if rollouts_per_update < 1:
            raise ConfigError(f"encoder.rollouts_per_update must be >= 1, got {rollouts_per_update}")
        if rollouts_per_update > 1 and reward_norm:
            raise ConfigError("encoder.reward_norm tracks returns per env across consecutive rollouts; it needs rollouts_per_update: 1")
        self.rollouts_per_update = rollouts_per_update
        # Explicit dict: frame inspection picks the wrong frame when jsonargparse builds us.
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        check_init(init, "encoder")
        for name, value, valid in (("reset", reset, RESET_MODES),
                                   ("obs_stats", obs_stats, ("post_update", "pre_update")),
                                   ("obs_stats_accumulation", obs_stats_accumulation, ("cumulative", "batch_only")),
                                   ("gae", gae, ("rollout", "minibatch"))):
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item not in valid:
                    raise ConfigError(f"encoder.{name}: {item!r} is not one of {', '.join(valid)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.latent_dim = act_dim if latent_dim is None else latent_dim
        self.obs_norm = RunningNorm(obs_dim)
        self.return_norm = RunningNorm(1)  # statistics of the discounted return (reward_norm)
        self._running_return: torch.Tensor | None = None
        self.actor_net = GaussianHead(self.obs_norm, obs_dim, actor_hidden, self.latent_dim, init=init,
                                      prior=stage_item(reset, 0) == "gaussian")
        self.critic_net = Critic(self.obs_norm, obs_dim, critic_hidden, init=init)
        self.actor = ProbabilisticActor(
            TensorDictModule(self.actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
            in_keys=["loc", "scale"],
            out_keys=["latent"],
            distribution_class=IndependentNormal,
            return_log_prob=True,
            log_prob_key="latent_log_prob",
        )
        self.critic = ValueOperator(self.critic_net, in_keys=["observation"])
        self.loss_module = ClipPPOLoss(
            self.actor,
            self.critic,
            clip_epsilon=stage_value(clip_epsilon, 0),
            entropy_coeff=stage_value(entropy_coef, 0),
            critic_coeff=value_coef,
            loss_critic_type="l2",
            normalize_advantage=normalize_advantage,
            # Our modules are plain nn.Modules used in place: skipping TorchRL's functional
            # parameter swap per call cuts the loss's per-minibatch overhead (measured ~10%).
            functional=False,
        )
        self.loss_module.set_keys(action="latent", sample_log_prob="latent_log_prob")
        self.gae = GAE(gamma=gamma, lmbda=lmbda, value_network=self.critic, average_gae=False)

    # --- the interface the stage loop drives (gorl.encoders.base) -----------------------------
    @property
    def rollout_steps(self) -> int:
        return self.hparams.unroll

    @property
    def latent_head(self) -> GaussianHead:
        return self.actor_net

    def act(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """The latent and its log-prob, in plain tensor code (the acting path runs once per env
        step; see :mod:`gorl.policy`). Same density as ``self.actor`` (tested)."""
        loc, scale = self.actor_net(obs)
        latent = loc if deterministic else loc + scale * torch.randn_like(loc)
        return {"latent": latent, "latent_log_prob": gaussian_log_prob(latent, loc, scale)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # fused: one kernel for the whole update (CPU and GPU); measured 0.57 -> 0.22 ms per step
        # on 2 CPU cores, where a PPO update takes tens of these steps per rollout.
        return torch.optim.Adam(self.parameters(), lr=stage_value(self.hparams.lr, 0), fused=True)

    def set_stage(self, stage: int, optimizer: torch.optim.Optimizer) -> None:
        """Apply the per-stage schedule (clip, entropy, lr) for ``stage``."""
        self.loss_module.clip_epsilon.fill_(stage_value(self.hparams.clip_epsilon, stage))
        self.loss_module.entropy_coeff.fill_(stage_value(self.hparams.entropy_coef, stage))
        for group in optimizer.param_groups:
            group["lr"] = stage_value(self.hparams.lr, stage)

    def train_on(self, rollout: TensorDictBase, optimize: OptimizeFn, stage: int) -> dict[str, float]:
        """One PPO update on a rollout of shape ``[*batch, T]`` (time last)."""
        hp = self.hparams
        data = rollout.reshape(-1, rollout.shape[-1])
        post_update = stage_item(hp.obs_stats, stage) == "post_update"
        if not post_update:
            self._update_obs_statistics(data["observation"], stage)
        reward = data.get(("next", "reward")) * hp.reward_scale
        if hp.reward_norm:
            reward = self._normalize_reward(reward, data.get(("next", "done")))
        data.set(("next", "reward"), reward)
        beta = stage_value(hp.prior_coef, stage)
        max_norm = stage_value(hp.max_grad_norm, stage)
        clip = stage_value(hp.clip_epsilon, stage)
        entropy_coef = stage_value(hp.entropy_coef, stage)
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for batch in self._minibatches(data):
            if hp.loss_impl == "fused":
                out, (loc, scale) = self.ppo_loss(batch, clip, entropy_coef)
            else:
                out, loc = self.loss_module(batch), None
            loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
            if hp.prior_reg != "none" and beta > 0:
                if loc is None:  # ClipPPOLoss does not expose the distribution's parameters
                    loc, scale = self.actor_net(batch["observation"])
                prior = prior_regulariser(loc, scale, hp.prior_reg)
                loss = loss + beta * prior
            else:
                prior = torch.zeros((), device=loss.device)
            optimize(loss, max_norm)
            for k, v in (
                ("loss", loss),
                ("loss_objective", out["loss_objective"]),
                ("loss_critic", out["loss_critic"]),
                ("entropy", out["entropy"]),
                ("prior", prior),
                ("clip_fraction", out["clip_fraction"]),
                ("kl_approx", out["kl_approx"]),
            ):
                # Accumulate as tensors: one host sync per update, not one per metric per step.
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            steps += 1
        if post_update:
            self._update_obs_statistics(data["observation"], stage)
        return {k: float(v) / max(steps, 1) for k, v in sums.items()}

    # Only what the loss reads: indexing fewer entries per minibatch is measurably cheaper.
    _LOSS_KEYS = ("observation", "latent", "latent_log_prob", "advantage", "value_target")

    def _minibatches(self, data: TensorDictBase) -> Iterator[TensorDictBase]:
        """``epochs`` passes of shuffled, flat minibatches carrying ``advantage`` and ``value_target``.

        ``gae="rollout"``: GAE once, then minibatches of single frames. ``gae="minibatch"``:
        minibatches of ``minibatch_size // T`` whole unroll segments, GAE recomputed in each with
        the current critic (the value targets follow the critic as it learns within the update).
        """
        hp = self.hparams
        if hp.gae == "rollout":
            with torch.no_grad():
                self.gae(data)
            flat = data.select(*self._LOSS_KEYS).reshape(-1)
            n = flat.numel()
            mb = min(n, hp.minibatch_size)
            for _ in range(hp.epochs):
                perm = torch.randperm(n, device=flat.device)
                for start in range(0, n - mb + 1, mb):
                    yield flat[perm[start : start + mb]]
            return
        if hp.loss_impl == "fused":
            yield from self._segment_minibatches(data)
            return
        segments = data.select("observation", "latent", "latent_log_prob", "next")
        rows, unroll = segments.shape
        per_mb = max(1, min(rows, hp.minibatch_size // unroll))
        for _ in range(hp.epochs):
            perm = torch.randperm(rows, device=segments.device)
            for start in range(0, rows - per_mb + 1, per_mb):
                batch = segments[perm[start : start + per_mb]]
                with torch.no_grad():
                    self.gae(batch)
                yield batch.select(*self._LOSS_KEYS).reshape(-1)

    def _segment_minibatches(self, data: TensorDictBase) -> Iterator[TensorDictBase]:
        """``gae="minibatch"`` in plain tensors (``loss_impl="fused"``): the same minibatches (same
        shuffle, whole segments) and the same advantages as the TorchRL path above, computed by
        :func:`~gorl.encoders.advantage.segment_gae` with one critic call per minibatch and no
        host reads (the TorchRL path reads segment lengths on the host in every minibatch)."""
        hp = self.hparams
        obs, next_obs = data["observation"], data["next", "observation"]
        reward, done, terminated = data["next", "reward"], data["next", "done"], data["next", "terminated"]
        latent, log_prob = data["latent"], data["latent_log_prob"]
        rows, unroll = data.shape
        per_mb = max(1, min(rows, hp.minibatch_size // unroll))
        for _ in range(hp.epochs):
            perm = torch.randperm(rows, device=obs.device)
            for start in range(0, rows - per_mb + 1, per_mb):
                idx = perm[start : start + per_mb]
                o = obs[idx]
                with torch.no_grad():
                    values = self.critic_net(torch.cat([o, next_obs[idx]], 0))
                    value, next_value = values[:per_mb], values[per_mb:]
                    advantage = segment_gae(reward[idx], value, next_value, done[idx], terminated[idx], hp.gamma, hp.lmbda)
                n = per_mb * unroll
                yield TensorDict({"observation": o.reshape(n, -1), "latent": latent[idx].reshape(n, -1),
                                  "latent_log_prob": log_prob[idx].reshape(n), "advantage": advantage.reshape(n, 1),
                                  "value_target": (advantage + value).reshape(n, 1)}, batch_size=[n], device=o.device)

    def _update_obs_statistics(self, obs: torch.Tensor, stage: int) -> None:
        self.obs_norm.update(obs, batch_only_var=stage_item(self.hparams.obs_stats_accumulation, stage) == "batch_only")

    def ppo_loss(self, batch: TensorDictBase, clip: float, entropy_coef: float | None = None) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``ClipPPOLoss``'s losses on a minibatch, in plain tensors, and the policy's ``(loc, scale)``
        (reused by the prior regulariser, which would otherwise need another actor forward).

        The same quantities as the TorchRL loss configured in ``__init__``: per-minibatch advantage
        standardisation, clipped surrogate on the latent log-ratio, analytic entropy of the latent
        Gaussian weighted by ``-entropy_coef``, ``value_coef * (V(s) - value_target)^2``. Diagnostics:
        clip fraction and the k3 estimate of KL(old || new) (TorchRL logs the k1 estimate).
        """
        hp = self.hparams
        entropy_coef = stage_value(hp.entropy_coef, 0) if entropy_coef is None else entropy_coef
        advantage = batch["advantage"].reshape(-1)
        if hp.normalize_advantage:
            advantage = normalize(advantage)
        loc, scale = self.actor_net(batch["observation"])
        log_prob = gaussian_log_prob(batch["latent"], loc, scale)
        loss_objective, stats = clipped_surrogate(log_prob - batch["latent_log_prob"], advantage, clip)
        entropy = (scale.log() + _ENTROPY_PER_DIM).sum(-1).mean()
        value = self.critic_net(batch["observation"])
        loss_critic = hp.value_coef * (value - batch["value_target"]).pow(2).mean()
        out = {"loss_objective": loss_objective, "loss_critic": loss_critic, "loss_entropy": -entropy_coef * entropy,
               "entropy": entropy.detach(), "clip_fraction": stats["clip_fraction"], "kl_approx": stats["kl_approx"]}
        return out, (loc, scale)

    @torch.no_grad()
    def _normalize_reward(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """``reward / std(discounted return)``, the return tracked per env copy across rollouts."""
        batch, steps = reward.shape[:2]
        if self._running_return is None or self._running_return.shape[0] != batch:
            self._running_return = torch.zeros(batch, 1, device=reward.device)
        ret, returns = self._running_return, []
        for t in range(steps):
            ret = ret * self.hparams.gamma + reward[:, t].reshape(batch, 1)
            returns.append(ret)
            ret = ret * (~done[:, t].reshape(batch, 1)).to(ret.dtype)
        self._running_return = ret
        self.return_norm.update(torch.stack(returns, 1))
        return reward / (self.return_norm.var + 1e-8).sqrt().clamp_min(1e-3).to(reward.dtype)

    # --- stage boundaries -------------------------------------------------------------------
    def reset(self, best: dict[str, torch.Tensor] | None = None, stage: int = 1) -> None:
        """Start ``stage`` as its entry of ``reset`` says (see the class docstring); ``best`` is the
        finished stage's best snapshot, the agent the authors warm-start from.

        Works on the sub-networks, not on ``state_dict`` keys: the actor and critic are reachable
        under several names (TorchRL's loss and GAE hold them too) that share the same tensors.
        """
        mode = stage_item(self.hparams.reset, stage)
        keeps = mode in ("warm", "warm_value")
        if keeps and best is not None:
            self.load_state_dict(best)
        if mode == "warm":
            return
        # A newly initialised network of the same shape: the authors build one with
        # ``PpoState.init`` in every mode, then overwrite what the mode keeps.
        args = {k: v for k, v in self.hparams.items() if k not in ("obs_dim", "act_dim", "reset")}
        fresh = type(self)(self.obs_dim, self.act_dim, **args)
        self.actor_net.net.load_state_dict(fresh.actor_net.net.state_dict())
        if mode in ("gaussian", "warm_value"):
            self.actor_net.set_to_prior_()  # their gaussian_policy_params
        if not keeps:
            self.critic_net.net.load_state_dict(fresh.critic_net.net.state_dict())
            self.obs_norm.load_state_dict(fresh.obs_norm.state_dict())
            self.return_norm.load_state_dict(fresh.return_norm.state_dict())
            self._running_return = None
