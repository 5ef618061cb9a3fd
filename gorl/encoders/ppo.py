"""The encoder: a latent Gaussian policy pi_theta(eps | s) trained by PPO, with a prior regulariser.

GoRL's only RL-trained part. It lives in latent space: the environment sees
``tanh(decoder(s, eps))``, but PPO's likelihood ratio, entropy bonus and prior regulariser are all
computed on the latent ``eps``, where the policy is a tractable diagonal Gaussian. With the identity
decoder of stage 0 this is exactly Gaussian PPO in pre-tanh action space (the tanh Jacobian does not
depend on theta, so it cancels in the ratio).

One PPO update (:meth:`EncoderModule.train_on`) is the update every PPO-trained policy of the
project shares (:func:`gorl.encoders.ppo_update.ppo_update`, hyperparameters
:class:`gorl.encoders.ppo_config.PPOConfig`); this module supplies what is latent PPO's own:

1. the observation statistics: a rollout's observations enter the running statistics after the
   update (``obs_stats="post_update"``, the authors' current "rollout consistent" mode: the update
   normalises with the statistics the rollout was collected with, so the stored log-probs are
   exact), or before it (``obs_stats="pre_update"``, Brax's and their older mode);
2. the rewards: multiplied by ``reward_scale`` and optionally divided by the running std of the
   discounted return (``reward_norm``);
3. the loss on a minibatch (:meth:`EncoderModule.ppo_loss`): the clipped ratio of latent
   log-probs, the latent Gaussian's entropy bonus, the value loss, plus ``beta * prior_regulariser``.

Which GAE is our default, and why: ``gae="rollout"`` (once per rollout). It works for any unroll
length and lets minibatches mix frames from every env and time step (TorchRL's and CleanRL's PPO);
per-minibatch GAE (``gae="minibatch"``) needs minibatches made of whole unrolls, which on a CPU
rollout of 64 envs makes a minibatch of 512 frames 16 correlated segments. The paper recipes
(``conf/encoder/gorl_fm.yaml``, ``conf/encoder/gorl_diffusion.yaml``) set ``gae: minibatch``, as the
authors do. Where we differ from them on purpose: a truncated episode (the 1000-step limit)
bootstraps from the value of its last observation here; their code gives truncated steps zero
advantage and no value target.

The loss is TorchRL's ``ClipPPOLoss`` (``loss_impl="torchrl"``) or, by default, the same maths in
plain tensors (``loss_impl="fused"``, :meth:`EncoderModule.ppo_loss`). Why our own: an optimiser step
of a small-network PPO is dominated by per-call overhead on CPU, and ``ClipPPOLoss``'s TensorDict
plumbing and extra diagnostics (ESS, explained variance, ratio extremes) are a sizeable part of a
whole step (measured: the archive of ``benchmarks/RESULTS.md``,
``benchmarks/logs/2026-11-22_to_2026-12-01_results.md``, runs of 2026-11-23). Both give the same losses and gradients (tested
against each other); ``ClipPPOLoss`` stays the reference.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.modules import IndependentNormal, ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from gorl.encoders.base import LatentEncoder, OptimizeFn
from gorl.encoders.ppo_config import PPOConfig, StageFloat
from gorl.encoders.ppo_update import (  # noqa: F401  (Critic, LossAndStats, MAX_LOG_RATIO: re-exported)
    MAX_LOG_RATIO,
    Critic,
    GAEMode,
    LossAndStats,
    PolicyLoss,
    advantages,
    clipped_surrogate,
    graphed_ppo_update,
    minibatches,
    normalize,
    ppo_update,
    value_loss_of,
)
from gorl.errors import ConfigError
from gorl.networks import GaussianHead, InitScheme, RunningNorm, check_init, gaussian_log_prob, stage_item, stage_value
from gorl.prior import PriorReg, prior_regulariser
from gorl.step_graphs import StepGraphs

ResetMode = Literal["fresh", "gaussian", "warm", "warm_value"]
RESET_MODES = ("fresh", "gaussian", "warm", "warm_value")
LossImpl = Literal["fused", "torchrl"]
ObsStatsTiming = Literal["post_update", "pre_update"]
ObsStatsAccumulation = Literal["cumulative", "batch_only"]
_ENTROPY_PER_DIM = 0.5 + 0.5 * math.log(2 * math.pi)  # a Gaussian's entropy is this + log(scale)


class EncoderModule(LatentEncoder):
    """Latent PPO with a prior regulariser. Defaults: the authors' flow recipe
    (``configs/methods/gorl_fm.toml`` at bennidict23/GoRL@8a0209c, as ``conf/encoder/gorl_fm.yaml``).

    Args:
        obs_dim, act_dim: given by the system from the env.
        latent_dim: latent size; ``None`` = action dim (required by the identity decoder).
        actor_hidden, critic_hidden: MLP widths (SiLU).
        lr, unroll, epochs, minibatch_size, gamma, lmbda, clip_epsilon, max_grad_norm, entropy_coef,
            value_coef, reward_scale, normalize_advantage: the PPO loop, shared with the baselines
            (:class:`~gorl.encoders.ppo_config.PPOConfig`). ``lr``, ``clip_epsilon``,
            ``max_grad_norm`` and ``entropy_coef`` may be per stage (a list: one value per stage,
            the last repeats); the entropy is the latent Gaussian's.
        rollouts_per_update: rollouts collected with the same weights before one update, their
            ``unroll``-step segments side by side. The authors' Brax PPO collects 16 unrolls of 30
            steps from 2048 envs per update (983,040 frames, 32 minibatches of 1024 segments):
            ``num_envs: 2048, unroll: 30, rollouts_per_update: 16, minibatch_size: 30720`` is that
            update exactly (``conf/recipes/paper_gpu.yaml``). Needs ``reward_norm: false`` (its return
            tracking runs per env across consecutive rollouts).
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
        tanh_entropy: add the tanh's log-det-Jacobian at a reparameterised sample to the entropy
            bonus, as Brax's ``NormalTanhDistribution.entropy`` does for its ``tanh_normal``
            policies (the authors' humanoid teacher and latent stages). Their dm_control profile
            leaves it off (``tanh_entropy_correction = false``), our default. Fused loss only.
    """

    graph_safe_act = True  # act(): plain tensor code (gorl.acceleration)
    supports_bounded_latent = True

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
        tanh_entropy: bool = False,
    ) -> None:
        super().__init__()
        if loss_impl not in ("fused", "torchrl"):
            raise ConfigError(f"loss_impl must be 'fused' or 'torchrl', got {loss_impl!r}")
        if tanh_entropy and loss_impl != "fused":
            raise ConfigError("encoder.tanh_entropy needs loss_impl: fused (TorchRL's ClipPPOLoss has the Gaussian's entropy only)")
        if rollouts_per_update < 1:
            raise ConfigError(f"encoder.rollouts_per_update must be >= 1, got {rollouts_per_update}")
        if rollouts_per_update > 1 and reward_norm:
            raise ConfigError("encoder.reward_norm tracks returns per env across consecutive rollouts; it needs rollouts_per_update: 1")
        self.rollouts_per_update = rollouts_per_update
        # Explicit dict: frame inspection picks the wrong frame when jsonargparse builds us.
        self.save_hyperparameters({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.ppo = PPOConfig.from_hparams(self.hparams)
        check_init(init, "encoder")
        for name, value, valid in (("reset", reset, RESET_MODES),
                                   ("obs_stats", obs_stats, ("post_update", "pre_update")),
                                   ("obs_stats_accumulation", obs_stats_accumulation, ("cumulative", "batch_only")),
                                   ("gae", gae, ("rollout", "minibatch"))):
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item not in valid:
                    raise ConfigError(f"encoder.{name}: {item!r} is not one of {', '.join(valid)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self._compiled_terms: Callable[..., LossAndStats] | None = None  # model.speed.compile (compile_loss)
        self._step_graphs: StepGraphs | None = None  # model.speed.step_graphs (use_step_graphs)
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
            # Our modules are plain nn.Modules used in place: TorchRL's functional parameter swap
            # would only add per-call overhead to every minibatch.
            functional=False,
        )
        self.loss_module.set_keys(action="latent", sample_log_prob="latent_log_prob")
        self.gae = GAE(gamma=gamma, lmbda=lmbda, value_network=self.critic, average_gae=False)

    # --- the interface the stage loop drives (gorl.encoders.base) -----------------------------
    @property
    def rollout_steps(self) -> int:
        return self.ppo.unroll

    @property
    def latent_head(self) -> GaussianHead:
        return self.actor_net

    def act(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        """The latent and its log-prob, in plain tensor code (the acting path runs once per env
        step; see :mod:`gorl.policy`). Same density as ``self.actor`` (tested)."""
        loc, scale = self.actor_net(obs)
        latent = loc if deterministic else loc + scale * torch.randn_like(loc)
        out = {"latent": latent, "latent_log_prob": gaussian_log_prob(latent, loc, scale)}
        if self.bounded_latent:  # the decoder's input lies in (-1, 1); the deterministic one is tanh(loc), Brax's mode
            out["squashed_latent"] = torch.tanh(latent)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # fused: one kernel for the whole parameter update instead of one per tensor; a PPO update
        # takes tens of these steps per rollout.
        return torch.optim.Adam(self.parameters(), lr=self.ppo.at(0).lr, fused=True)

    def set_stage(self, stage: int, optimizer: torch.optim.Optimizer) -> None:
        """Apply the per-stage schedule (clip, entropy, lr) for ``stage``."""
        hp = self.ppo.at(stage)
        self.loss_module.clip_epsilon.fill_(hp.clip_epsilon)
        self.loss_module.entropy_coeff.fill_(hp.entropy_coef)
        for group in optimizer.param_groups:
            group["lr"] = hp.lr

    def train_on(self, rollout: TensorDictBase, optimize: OptimizeFn, stage: int) -> dict[str, float]:
        """One PPO update on a rollout of shape ``[*batch, T]`` (time last)."""
        hp = self.hparams
        data = rollout.reshape(-1, rollout.shape[-1])
        post_update = stage_item(hp.obs_stats, stage) == "post_update"
        if not post_update:
            self._update_obs_statistics(data["observation"], stage)
        reward = data.get(("next", "reward")) * self.ppo.reward_scale
        if hp.reward_norm:
            reward = self._normalize_reward(reward, data.get(("next", "done")))
        data.set(("next", "reward"), reward)
        if self._step_graphs is not None:
            metrics = graphed_ppo_update(data, self._loss_at(stage), self._step_graphs, self.ppo, self._LOSS_KEYS,
                                         self.critic_net, self.gae, hp.gae, stage, self._graph_key(stage))
        else:
            batches = minibatches(data, self.ppo, self._LOSS_KEYS, self.critic_net, self.gae, hp.gae,
                                  segment_gae_in_tensors=hp.loss_impl == "fused")
            metrics = ppo_update(batches, self._loss_at(stage), optimize, self.ppo, stage)
        if post_update:
            self._update_obs_statistics(data["observation"], stage)
        return metrics

    # Only what the loss reads: indexing fewer entries per minibatch is measurably cheaper.
    _LOSS_KEYS = ("observation", "latent", "latent_log_prob")

    def _loss_at(self, stage: int) -> PolicyLoss:
        """Latent PPO's minibatch loss for ``stage``: the PPO losses (fused or TorchRL's) plus
        ``beta * prior_regulariser`` on the same policy outputs."""
        hp = self.hparams
        beta = stage_value(hp.prior_coef, stage)
        at = self.ppo.at(stage)
        use_prior = hp.prior_reg != "none" and beta > 0

        if hp.loss_impl == "fused":
            if self._compiled_terms is not None:
                # The stage's constants as device tensors, made once per update: the compiled graph
                # is then the same in every stage (a Python float is a constant it would recompile for).
                clip, ent, b = torch.tensor([at.clip_epsilon, at.entropy_coef, beta], device=self.device).unbind()
                terms = self._compiled_terms
            else:
                clip, ent, b, terms = at.clip_epsilon, at.entropy_coef, beta, self.fused_terms

            def fused(batch: TensorDictBase, advantage: torch.Tensor) -> LossAndStats:
                return terms(batch["observation"], batch["latent"], batch["latent_log_prob"], advantage, batch["value_target"],
                             clip, ent, b, use_prior)

            return fused

        def torchrl_loss(batch: TensorDictBase, advantage: torch.Tensor) -> LossAndStats:
            out = self.loss_module(batch)  # ClipPPOLoss standardises the batch's advantages itself (normalize_advantage)
            total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
            if use_prior:  # ClipPPOLoss does not expose the distribution's parameters
                prior = prior_regulariser(*self.actor_net(batch["observation"]), hp.prior_reg)
                total = total + beta * prior
            else:
                prior = torch.zeros((), device=total.device)
            return total, {"loss_objective": out["loss_objective"], "loss_critic": out["loss_critic"],
                           "entropy": out["entropy"], "prior": prior, "clip_fraction": out["clip_fraction"],
                           "kl_approx": out["kl_approx"]}

        return torchrl_loss

    def fused_terms(self, obs: torch.Tensor, latent: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor,
                    value_target: torch.Tensor, clip: float | torch.Tensor, entropy_coef: float | torch.Tensor,
                    beta: float | torch.Tensor, use_prior: bool) -> LossAndStats:
        """The fused minibatch loss in plain tensors, prior regulariser included: what
        ``model.speed.compile`` compiles (:meth:`compile_loss`)."""
        out, (loc, scale) = self._ppo_terms(obs, latent, old_log_prob, advantage, value_target, clip, entropy_coef)
        total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
        if use_prior:
            prior = prior_regulariser(loc, scale, self.hparams.prior_reg)
            total = total + beta * prior
        else:
            prior = torch.zeros((), device=total.device)
        return total, {"loss_objective": out["loss_objective"], "loss_critic": out["loss_critic"], "entropy": out["entropy"],
                       "prior": prior, "clip_fraction": out["clip_fraction"], "kl_approx": out["kl_approx"]}

    def compile_loss(self, backend: str | Callable = "inductor", mode: str | None = None) -> None:
        """Replace the fused minibatch loss by ``torch.compile`` of it (``model.speed.compile``): on
        a GPU with ``mode="reduce-overhead"`` the forward and backward replay from CUDA graphs, one
        launch where the eager step makes hundreds. Falls back to eager, saying why once, if
        compiling fails (:class:`gorl.acceleration.CompiledFn`)."""
        from gorl.acceleration import CompiledFn

        if self.hparams.loss_impl != "fused":
            raise ConfigError("model.speed.compile compiles the fused PPO loss: it needs encoder.loss_impl: fused")
        self._compiled_terms = CompiledFn(self.fused_terms, "the PPO minibatch loss", backend=backend, mode=mode)

    def use_step_graphs(self, graphs: StepGraphs | None) -> None:
        """Take every minibatch step through ``graphs`` (``model.speed.step_graphs``: on a GPU, each
        step one replayed CUDA graph; :mod:`gorl.step_graphs`); ``None``: the eager steps.
        The fused loss only (TorchRL's loss reads values on the host)."""
        if graphs is not None and self.hparams.loss_impl != "fused":
            raise ConfigError("model.speed.step_graphs captures the fused PPO loss: it needs encoder.loss_impl: fused")
        self._step_graphs = graphs

    def _graph_key(self, stage: int) -> tuple:
        """What the fused loss of ``stage`` decides in Python: its constants, and whether the
        observation statistics are still empty (:class:`~gorl.networks.RunningNorm` branches on it)."""
        at = self.ppo.at(stage)
        return (at.clip_epsilon, at.entropy_coef, stage_value(self.hparams.prior_coef, stage), self.obs_norm.empty)

    def _update_obs_statistics(self, obs: torch.Tensor, stage: int) -> None:
        self.obs_norm.update(obs, batch_only_var=stage_item(self.hparams.obs_stats_accumulation, stage) == "batch_only")

    def ppo_loss(self, batch: TensorDictBase, clip: float, entropy_coef: float | None = None,
                 advantage: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``ClipPPOLoss``'s losses on a minibatch, in plain tensors, and the policy's ``(loc, scale)``
        (reused by the prior regulariser, which would otherwise need another actor forward).

        The same quantities as the TorchRL loss configured in ``__init__``: per-minibatch advantage
        standardisation (``advantage``: already standardised by the update; ``None``: from the
        batch), clipped surrogate on the latent log-ratio, analytic entropy of the latent Gaussian
        weighted by ``-entropy_coef``, ``value_coef * (V(s) - value_target)^2``. Diagnostics: clip
        fraction and the k3 estimate of KL(old || new) (TorchRL logs the k1 estimate).
        """
        entropy_coef = self.ppo.at(0).entropy_coef if entropy_coef is None else entropy_coef
        if advantage is None:
            advantage = advantages(batch, self.ppo.normalize_advantage)
        return self._ppo_terms(batch["observation"], batch["latent"], batch["latent_log_prob"], advantage, batch["value_target"],
                               clip, entropy_coef)

    def _ppo_terms(self, obs: torch.Tensor, latent: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor,
                   value_target: torch.Tensor, clip: float | torch.Tensor, entropy_coef: float | torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        loc, scale = self.actor_net(obs)
        log_prob = gaussian_log_prob(latent, loc, scale)
        loss_objective, stats = clipped_surrogate(log_prob - old_log_prob, advantage, clip)
        entropy = (scale.log() + _ENTROPY_PER_DIM).sum(-1).mean()
        if self.hparams.tanh_entropy:  # + log|d tanh(u)/du| at u ~ pi, reparameterised (Brax's TanhBijector)
            u = loc + scale * torch.randn_like(loc)
            entropy = entropy + (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1).mean()
        loss_critic = value_loss_of(self.critic_net, obs, value_target, self.ppo.value_coef)
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
            ret = ret * self.ppo.gamma + reward[:, t].reshape(batch, 1)
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
