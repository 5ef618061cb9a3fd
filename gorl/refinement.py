"""Decoder refinement: fit a decoder, from the fixed prior, onto the best encoder's behaviour.

At the end of an encoder phase (:mod:`gorl.stage_cycle` drives these steps, one per ``training_step``):

1. **collect** — with the stage's handoff encoder (its best, restored, or with ``handoff: final``
   the final one) frozen, roll out *stochastic* latents
   through the current decoder and keep ``(observation, pre-tanh action)`` pairs with their episode
   id and reward. By default (``collect_from: reset``, :func:`collect_from_reset`) this runs complete
   episodes from env reset on a dedicated env, as the authors' ``collect_dataset`` does, so every
   state in the data was reached by the best encoder; ``collect_from: training_envs`` keeps
   stepping the running training envs instead (:func:`collect`). The decoder is fitted from fresh prior noise, never from the rollout latent
   (:func:`decoder_pairs`). The one exception is the authors' *pairwise term* of their current
   diffusion recipe (``pairwise_weight > 0``): ``weight * |decode(s, z_rollout) - a|^2`` ties the
   latent that produced an action to that action, so that a warm-started encoder keeps its meaning
   through the new decoder. Only then is the rollout latent kept; with weight 0 the fit never sees it.
2. **check and split**: the data's mean episode return must pass ``min_data_return`` if set (the
   authors' humanoid teacher gate); ``val_fraction`` of the episodes (or, ``split_unit:
   transition``, of the transitions) validate, the rest train (optionally only the top-q episodes
   by return are kept, off by default as in the authors' code). Pre-tanh targets are clipped to
   ``+-target_clip`` (theirs: 3; 1 under bounded action semantics, where targets are env actions).
3. **fit** a fresh (or warm-started) decoder with Adam for a fixed number of optimiser ``steps``
   (batches drawn with replacement, or ``epoch_permutation``: each epoch one permutation),
   validating every ``val_every`` steps and keeping the best-validation weights: the authors' current flow recipe (``configs/methods/gorl_fm.toml``:
   ``train_steps = 50000``, ``batch_sampling = "with_replacement"``, ``checkpoint_metric =
   "val_loss"``). Epochs remain an alternative unit (``epochs``: that many passes' worth of steps,
   their diffusion recipe's ``epochs = 50``). Early stopping (``patience``) is optional and off by
   default: a fit measured in steps runs its steps.

The fit advances one *round* (``val_every`` optimiser steps and one validation) per iteration, so a
run checkpoints and reports progress inside a long fit. Each refit may have settings of its own
(:meth:`RefinementConfig.for_refit`): the authors' humanoid recipes change epochs, warm starts,
pairwise weights, data sizes and the handoff from one refit to the next.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import lightning.pytorch as pl
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from gorl.decoders.base import DecoderModule
from gorl.distributed import min_over_ranks
from gorl.errors import ConfigError
from gorl.networks import stage_item
from gorl.policy import on_env_device
from gorl.step_graphs import StepGraphs

# (loss) -> None: backward + step with the system's decoder optimiser.
StepFn = Callable[[torch.Tensor], None]
ReduceFn = Callable[[torch.Tensor], torch.Tensor]
Metric = Literal["val_loss", "val_endpoint_mse"]
CollectFrom = Literal["reset", "training_envs"]
Handoff = Literal["best", "final"]
ObsStatsMode = Literal["refit", "cumulative", "frozen", "legacy_new_batch"]
SplitUnit = Literal["episode", "transition"]
BatchSampling = Literal["with_replacement", "epoch_permutation"]
#: The settings that may differ per refit (a list, indexed by the stage the refit ends; see
#: :meth:`RefinementConfig.for_refit`).
PER_REFIT = ("episodes", "steps", "epochs", "warm_start", "pairwise_weight", "decoder_obs_stats", "handoff", "min_data_return")


@dataclass
class RefinementConfig:
    """How each decoder refinement collects data and fits.

    Settings marked *per refit* take one value for every refit or a list indexed by the stage the
    refit ends: entry 0 is the refit after stage 0 (whose data the Gaussian stage 0, the authors'
    humanoid "teacher", gives), entry k the refit after stage k; the last entry holds for later
    refits (:meth:`for_refit`). The authors' humanoid recipes vary them per decoder stage
    (``resolve_stage_settings`` in ``src/gorl/config.py`` at bennidict23/GoRL@8a0209c).

    Attributes:
        transitions: env frames of data collected per refinement (the authors: ~4,096 episodes of
            1000 steps, about 4.1M frames); with ``collect_from: reset``, whole episodes until at
            least this many frames.
        episodes: (per refit) if set, collect this many episodes instead (``training_envs``: until
            this many have *finished*; the frames it took are still counted); ``transitions`` is
            then ignored.
        collect_from: where the data comes from. ``reset`` (default): complete episodes of the
            handoff encoder from env reset, ``collect_envs`` at a time on an env of their own, the
            authors' ``collect_dataset`` (``src/gorl/algorithms/collection.py`` at
            bennidict23/GoRL@8a0209c: ``auto_reset=False``, 64 envs at a time, episodes of at most
            1,000 steps). ``training_envs``: keep stepping the running training envs (the data then
            starts mid-episode, keeps partial first and last episodes, and its first states were
            reached by the last-trained encoder, not the handoff one).
        collect_envs: env copies stepped together by ``reset`` collection (theirs: 64).
        max_episode_steps: step cap of a collected episode (``reset``; theirs: ``episode_length``,
            1,000).
        handoff: (per refit) which agent of the finished stage gives the refit's data and the next
            stage's warm start: ``best`` (the stage's best-evaluated encoder, the authors' dm_control
            pipeline and most humanoid cells) or ``final`` (the encoder as the stage ended: their
            humanoid teacher always, ``decoder_data_selection = "final"``, and HumanoidRun
            diffusion's ``encoder_handoff = "final"``; ``src/gorl/humanoid/pipeline.py``).
        min_data_return: (per refit) the data's quality gate: if the mean return of the collected
            episodes is below this, the run stops with one clear line before fitting (the
            authors' ``teacher_dataset_min_return_mean``, HumanoidStand 60, HumanoidRun 15, for
            the first refit). ``null`` = no gate. Needs ``collect_from: reset`` (whole episodes).
        val_fraction: fraction of *episodes* (or transitions, ``split_unit``) held out for
            validation.
        split_unit: what the validation split holds out: whole ``episode``\ s (default) or single
            ``transition``\ s (the authors' humanoid recipes, ``split_unit = "transition"``).
        steps: (per refit) optimiser steps per fit (the authors' flow recipe: 50,000). ``null`` to
            count in ``epochs`` instead; exactly one of the two is set for every refit.
        epochs: (per refit) the alternative unit: ``epochs * max(1, train size // batch_size)``
            steps (the authors' ``train_steps_from_epochs``).
        batch_sampling: ``with_replacement`` (default, the authors' dm_control recipes) or
            ``epoch_permutation``: each epoch's batches are one permutation of the training pairs
            without replacement, the remainder under a batch dropped (their humanoid recipes).
        val_every: optimiser steps between validations (theirs: 100); in epoch mode, ``null``
            validates once per epoch.
        patience: validations without improvement before stopping early; ``null`` (default) = off.
        batch_size: minibatch size.
        val_samples: validation pairs scored per validation, evenly spaced (theirs: 8 x 8192;
            ``null`` = all).
        target_clip: pre-tanh action targets are clipped to ``+-target_clip`` (theirs: 3.0;
            ``null`` = no clip, their HopperStand flow recipe).
        pairwise_weight: (per refit) weight of the pairwise term ``|decode(s, z_rollout) - a|^2``
            (their diffusion recipe: 1e-3; 0 = off, the rollout latent is then never kept).
        checkpoint_metric: what picks the kept weights: ``val_loss`` (the generative loss) or
            ``val_endpoint_mse`` (their FingerSpin / FishSwim flow recipes; see
            :func:`endpoint_mse`).
        top_q: keep only this fraction of episodes, ranked by return (``null`` = keep all).
        warm_start: (per refit) start from the acting decoder instead of a fresh one (never for the
            first refit, whose acting decoder is the identity).
        decoder_obs_stats: (per refit) the decoder's observation statistics on a *warm* fit:
            ``refit`` (default) recomputes them from the new training data, as a fresh fit does;
            the authors' humanoid modes (``warm_observation_stats_mode``) carry them over:
            ``cumulative`` merges the new data into the previous moments, ``frozen`` keeps the
            previous ones, ``legacy_new_batch`` keeps the previous count and mean but only the new
            data's squared deviations (their ``ObservationStats.update_float32_legacy_new_batch``,
            ``src/gorl/algorithms/decoder_training.py``). A fresh fit always recomputes.
    """

    transitions: int = 4_096_000
    episodes: int | list[int] | None = None
    collect_from: CollectFrom = "reset"
    collect_envs: int = 64
    max_episode_steps: int = 1000
    handoff: Handoff | list[Handoff] = "best"
    min_data_return: float | list[float | None] | None = None
    val_fraction: float = 0.1
    split_unit: SplitUnit = "episode"
    steps: int | list[int | None] | None = 50_000
    epochs: int | list[int | None] | None = None
    batch_sampling: BatchSampling = "with_replacement"
    val_every: int | None = 100
    patience: int | None = None
    batch_size: int = 8192
    val_samples: int | None = 65_536
    target_clip: float | None = 3.0
    pairwise_weight: float | list[float] = 0.0
    checkpoint_metric: Metric = "val_loss"
    top_q: float | None = None
    warm_start: bool | list[bool] = False
    decoder_obs_stats: ObsStatsMode | list[ObsStatsMode] = "refit"

    def __post_init__(self) -> None:
        lists = [len(getattr(self, name)) for name in PER_REFIT if isinstance(getattr(self, name), (list, tuple))]
        if lists:  # check what every refit resolves to; the scalar checks below then run once per refit
            if min(lists) == 0:
                raise ConfigError(f"refinement: a per-refit list needs at least one entry ({', '.join(PER_REFIT)})")
            for stage in range(max(lists)):
                try:
                    self.for_refit(stage)
                except ConfigError as err:
                    raise ConfigError(f"{err} (in the settings of the refit after stage {stage})") from None
            return
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"refinement.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.top_q is not None and not 0.0 < self.top_q <= 1.0:
            raise ConfigError(f"refinement.top_q must be in (0, 1] or null, got {self.top_q}")
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"refinement.episodes must be >= 1 or null, got {self.episodes}")
        if self.collect_from not in ("reset", "training_envs"):
            raise ConfigError(f"refinement.collect_from must be reset or training_envs, got {self.collect_from!r}")
        if self.collect_envs < 1 or self.max_episode_steps < 1:
            raise ConfigError(f"refinement.collect_envs and max_episode_steps must be >= 1, got {self.collect_envs}, {self.max_episode_steps}")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError(f"set exactly one of refinement.steps and refinement.epochs (the other null), got steps={self.steps}, epochs={self.epochs}")
        for name in ("steps", "epochs", "val_every", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"refinement.{name} must be >= 1 or null, got {value}")
        if self.steps is not None and self.val_every is None:
            raise ConfigError("refinement.val_every must be set when the fit is measured in steps")
        if not isinstance(self.transitions, int) or isinstance(self.transitions, bool):
            raise ConfigError(f"refinement.transitions must be an integer >= 2 (set refinement.episodes to collect episodes "
                              f"instead), got {self.transitions!r}")
        if self.transitions < 2 or self.batch_size < 1:
            raise ConfigError(f"refinement.transitions must be >= 2 and batch_size >= 1, got {self.transitions}, {self.batch_size}")
        if self.target_clip is not None and self.target_clip <= 0:
            raise ConfigError(f"refinement.target_clip must be > 0 or null (no clip), got {self.target_clip}")
        if self.pairwise_weight < 0:
            raise ConfigError(f"refinement.pairwise_weight must be >= 0, got {self.pairwise_weight}")
        if self.checkpoint_metric not in ("val_loss", "val_endpoint_mse"):
            raise ConfigError(f"refinement.checkpoint_metric must be val_loss or val_endpoint_mse, got {self.checkpoint_metric!r}")
        choices = {"handoff": Handoff, "decoder_obs_stats": ObsStatsMode, "split_unit": SplitUnit, "batch_sampling": BatchSampling}
        for name, kind in choices.items():
            if getattr(self, name) not in kind.__args__:
                raise ConfigError(f"refinement.{name} must be one of {', '.join(kind.__args__)}, got {getattr(self, name)!r}")
        if self.min_data_return is not None and self.collect_from != "reset":
            raise ConfigError("refinement.min_data_return needs collect_from: reset (the gate scores whole episodes)")

    def for_refit(self, stage: int) -> RefinementConfig:
        """The settings of the refit that ends ``stage``: every per-refit list resolved to its entry
        (checked as a whole config)."""
        return dataclasses.replace(self, **{name: stage_item(getattr(self, name), stage) for name in PER_REFIT})

    @property
    def keeps_latent(self) -> bool:
        """Whether the fit needs the rollout latent (only for the pairwise term)."""
        return self.pairwise_weight > 0

    def total_steps(self, n_train: int) -> int:
        """Optimiser steps of a fit on ``n_train`` training pairs."""
        if self.steps is not None:
            return self.steps
        return self.epochs * max(1, n_train // min(self.batch_size, max(n_train, 1)))

    def round_steps(self, n_train: int) -> int:
        """Optimiser steps between two validations."""
        if self.val_every is not None:
            return self.val_every
        return max(1, n_train // min(self.batch_size, max(n_train, 1)))


def decoder_pairs(rollout: TensorDictBase, keep_latent: bool = False) -> TensorDict:
    """The view of a rollout a decoder is trained on: observation and pre-tanh action (the
    decoder's output; under ``action_semantics: bounded`` the unclipped action).

    The latent the decoder was given is carried over only with ``keep_latent`` (the pairwise term).
    """
    flat = rollout.reshape(-1)
    entries = {
        "observation": flat["observation"],
        "action": flat["pre_tanh"],
        "episode": flat["collector", "traj_ids"].reshape(-1),
        "reward": flat["next", "reward"].reshape(-1),
    }
    if keep_latent:
        entries["latent"] = _decoded_latent(flat)
    return TensorDict(entries, batch_size=flat.shape)


def _decoded_latent(rollout: TensorDictBase) -> torch.Tensor:
    """The latent the decoder was given: ``squashed_latent`` under bounded action semantics."""
    return rollout["squashed_latent"] if "squashed_latent" in rollout.keys() else rollout["latent"]


def collect(batches: Iterator[TensorDictBase], frames: int, episodes: int | None = None, keep_latent: bool = False) -> tuple[TensorDict, int]:
    """Pairs from collector batches until ``frames`` env frames are gathered (or, with
    ``episodes``, until that many episodes have finished); returns (data, frames)."""
    parts, got, finished = [], 0, 0
    while (got < frames) if episodes is None else (finished < episodes):
        batch = next(batches)
        parts.append(decoder_pairs(batch, keep_latent))
        got += batch.numel()
        finished += int(batch["next", "done"].sum())
    return torch.cat(parts), got


@torch.no_grad()
def collect_from_reset(env: EnvBase, policy: TensorDictModuleBase, max_steps: int, episodes: int | None = None,
                       frames: int | None = None, keep_latent: bool = False) -> tuple[TensorDict, int]:
    """Complete episodes from env reset, ``env``'s copies at a time, with stochastic latents: the
    authors' ``collect_dataset`` (``src/gorl/algorithms/collection.py`` at bennidict23/GoRL@8a0209c).

    Each batch resets every copy of ``env`` and rolls ``policy`` (the stage's best encoder through
    the current decoder) until every copy's first episode has ended or ``max_steps`` steps have
    passed; each copy contributes its first episode only, up to and including the step that ended
    it (theirs: ``auto_reset=False`` and the steps before the first ``discount == 0``). Batches go on
    until ``episodes`` episodes are kept (the last batch keeps only as many as are still missing,
    as theirs rolls only that many) or, with ``episodes=None``, until at least ``frames`` frames.

    Returns the pairs, with the fields of :func:`decoder_pairs` (``episode`` ids unique over the
    whole collection), and the env frames spent: the steps of every copy's first episode, kept
    or not.
    """
    if (episodes is None) == (frames is None):
        raise ValueError("collect_from_reset needs exactly one of episodes and frames")
    parts, kept_episodes, kept_frames, spent = [], 0, 0, 0
    while (kept_episodes < episodes) if episodes is not None else (kept_frames < frames):
        with set_exploration_type(ExplorationType.RANDOM):
            rollout = env.rollout(max_steps, on_env_device(policy, env), break_when_any_done=False, break_when_all_done=True,
                                  auto_cast_to_device=True)
        rollout = rollout.reshape(-1, rollout.shape[-1])  # [copies, time]
        n, device = rollout.shape[0], rollout.device
        done = rollout["next", "done"].reshape(rollout.shape).to(torch.long)
        first = (torch.cumsum(done, 1) - done) == 0  # each copy's first episode, from reset
        spent += int(first.sum())
        keep = n if episodes is None else min(n, episodes - kept_episodes)
        valid = first & (torch.arange(n, device=device) < keep).unsqueeze(1)
        ids = (torch.arange(n, device=device) + kept_episodes).unsqueeze(1).expand(rollout.shape)
        entries = {
            "observation": rollout["observation"][valid],
            "action": rollout["pre_tanh"][valid],
            "episode": ids[valid],
            "reward": rollout["next", "reward"].reshape(rollout.shape)[valid],
        }
        if keep_latent:
            entries["latent"] = _decoded_latent(rollout)[valid]
        parts.append(TensorDict(entries, batch_size=[int(valid.sum())], device=device))
        kept_episodes += keep
        kept_frames += int(valid.sum())
    return torch.cat(parts), spent


def clip_targets(data: TensorDict, clip: float | None) -> TensorDict:
    """Pre-tanh targets clipped to ``+-clip`` (tanh(3) = 0.995: beyond it only the tail of a
    saturated Gaussian lives, and unbounded targets dominate a squared loss)."""
    if clip is not None:
        data["action"] = data["action"].clamp(-clip, clip)
    return data


def top_q_episodes(data: TensorDict, q: float) -> TensorDict:
    """Keep the transitions of the best ``q`` fraction of episodes by (collected) return."""
    ids, inverse = torch.unique(data["episode"], return_inverse=True)
    returns = torch.zeros(len(ids), device=ids.device).index_add_(0, inverse, data["reward"].float())
    keep_n = max(1, int(round(q * len(ids))))
    keep = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    keep[returns.topk(keep_n).indices] = True
    return data[keep[inverse]]


def split_by_episode(data: TensorDict, val_fraction: float, generator: torch.Generator) -> tuple[TensorDict, TensorDict]:
    """Train/validation split that never puts two halves of one episode on both sides."""
    ids, inverse = torch.unique(data["episode"], return_inverse=True)
    if len(ids) < 2:
        # One (partial) episode cannot be split by episode: fall back to a split by time.
        n_val = max(1, int(len(data) * val_fraction))
        return data[:-n_val], data[-n_val:]
    n_val = max(1, int(round(len(ids) * val_fraction)))
    is_val = torch.zeros(len(ids), dtype=torch.bool)
    is_val[torch.randperm(len(ids), generator=generator)[:n_val]] = True  # drawn on the CPU: the same split on any device
    is_val = is_val.to(ids.device)
    mask = is_val[inverse]
    return data[~mask], data[mask]


def split_by_transition(data: TensorDict, val_fraction: float, generator: torch.Generator) -> tuple[TensorDict, TensorDict]:
    """Train/validation split of single transitions (``split_unit: transition``, the authors'
    humanoid recipes): neighbouring steps of one episode can land on both sides, so validation
    measures fit to the behaviour's states rather than to unseen episodes."""
    n_val = max(1, int(round(len(data) * val_fraction)))
    is_val = torch.zeros(len(data), dtype=torch.bool)
    is_val[torch.randperm(len(data), generator=generator)[:n_val]] = True  # on the CPU: the same split on any device
    is_val = is_val.to(data.device)
    return data[~is_val], data[is_val]


def split(data: TensorDict, cfg: RefinementConfig, generator: torch.Generator) -> tuple[TensorDict, TensorDict]:
    """The split ``cfg.split_unit`` asks for."""
    if cfg.split_unit == "transition":
        return split_by_transition(data, cfg.val_fraction, generator)
    return split_by_episode(data, cfg.val_fraction, generator)


def data_return_mean(data: TensorDict) -> float:
    """Mean return of the episodes in ``data`` (summed rewards per episode id)."""
    ids, inverse = torch.unique(data["episode"], return_inverse=True)
    returns = torch.zeros(len(ids), dtype=torch.float64, device=ids.device).index_add_(0, inverse, data["reward"].double())
    return float(returns.mean())


def pairwise_loss(decoder: DecoderModule, obs: torch.Tensor, latent: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``|decode(s, z_rollout) - a|^2`` summed over action dims, through the whole sampler."""
    return (decoder.decode(obs, latent).float() - action.float()).pow(2).sum(-1).mean()


class DecoderFit:
    """A fit of a fixed number of optimiser steps in rounds; its state survives checkpoints.

    Each :meth:`step` runs one round (``round_steps`` optimiser steps on batches drawn as
    ``batch_sampling`` says, then a validation) and keeps the best-validation weights. ``seed``
    draws the epoch permutations of ``epoch_permutation``.
    """

    def __init__(self, cfg: RefinementConfig, train: TensorDict, val: TensorDict, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed
        keys = ("observation", "action", "latent") if cfg.keeps_latent else ("observation", "action")
        self.train = train.select(*keys)
        self.val = val.select(*keys)
        self.total_steps = cfg.total_steps(len(self.train))
        self.steps = 0
        self.rounds = 0
        self.best_val = float("inf")
        self.best_step = 0
        self.bad_rounds = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.done = False
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation), a cache

    def batch_indices(self, step: int, n: int, bs: int, device: torch.device) -> torch.Tensor:
        """Rows of optimiser step ``step``. ``with_replacement``: ``bs`` uniform draws.
        ``epoch_permutation``: slice ``step % per_epoch`` of epoch ``step // per_epoch``'s permutation,
        which is drawn from ``(seed, epoch)`` alone, so a resumed fit draws what an uninterrupted one
        would (their ``_iter_training_batch_indices``: ``n // batch`` batches per epoch, the rest
        dropped)."""
        if self.cfg.batch_sampling == "with_replacement":
            return torch.randint(0, n, (bs,), device=device)  # drawn where it is used: no copy per step
        per_epoch = max(1, n // bs)
        epoch, batch = divmod(step, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=gen).to(device))
        return self._perm[1][batch * bs : (batch + 1) * bs]

    def validate(self, decoder: DecoderModule, reduce: ReduceFn = lambda x: x) -> dict[str, float]:
        """Score the decoder as it is now and keep it if it is the best so far."""
        cfg = self.cfg
        metrics = {"val_loss": float(reduce(validation_loss(decoder, self.val, cfg.batch_size, cfg.val_samples, cfg.pairwise_weight)))}
        if cfg.checkpoint_metric == "val_endpoint_mse":
            metrics["val_endpoint_mse"] = float(reduce(endpoint_mse(decoder, self.val, cfg.batch_size)))
        score = metrics[cfg.checkpoint_metric]
        if score < self.best_val:
            self.best_val, self.best_step, self.bad_rounds = score, self.steps, 0
            self.best_state = copy.deepcopy(decoder.state_dict())
        else:
            self.bad_rounds += 1
        return metrics

    def step(self, decoder: DecoderModule, optimize: StepFn, reduce: ReduceFn = lambda x: x,
             graphs: StepGraphs | None = None) -> dict[str, float]:
        """One round: optimiser steps, then one validation; updates the best-weights state.

        The first round first scores the untrained decoder (step 0), so the kept weights are never
        worse on validation than where the fit started (the authors validate at step 0 too).
        ``graphs`` (``model.speed.step_graphs``) takes the optimiser steps instead of ``optimize``:
        on a GPU each is one replayed CUDA graph, the batch's draw included (:mod:`gorl.step_graphs`)."""
        if self.steps == 0 and self.best_state is None:
            self.validate(decoder, reduce)
            self.bad_rounds = 0
        decoder.train()
        cfg, n = self.cfg, len(self.train)
        # The dataset crosses to the decoder's device once, not once per minibatch; the loss sums
        # stay there too (a .cpu() per step would be a device sync per step).
        if self.train["observation"].device != decoder.device:
            self.train = self.train.to(decoder.device)
        # Every rank must take the same number of optimiser steps (each one all-reduces gradients).
        todo = min_over_ranks(min(cfg.round_steps(n), self.total_steps - self.steps))
        bs = min(cfg.batch_size, n)
        # Plain tensors in the step loop: indexing a TensorDict per step costs more host time than a
        # GPU spends on the step itself.
        data = {"observation": self.train["observation"], "action": self.train["action"]}
        if cfg.pairwise_weight > 0:
            data["latent"] = self.train["latent"]
        drawn = cfg.batch_sampling == "with_replacement"

        def body(d: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            # with replacement the rows are drawn inside the step (where they are used: no copy per step)
            idx = torch.randint(0, n, (bs,), device=d["observation"].device) if drawn else inputs["idx"]
            obs, action = d["observation"][idx], d["action"][idx]
            loss = decoder.training_loss(obs, action)
            stats = {"train_loss": loss.detach()}
            if "latent" in d:
                pair = pairwise_loss(decoder, obs, d["latent"][idx], action)
                stats["train_pairwise"] = pair.detach()
                loss = loss + cfg.pairwise_weight * pair
            return loss, stats

        def inputs(i: int) -> dict[str, torch.Tensor]:
            return {} if drawn else {"idx": self.batch_indices(self.steps + i, n, bs, decoder.device)}

        if graphs is not None:
            norm = getattr(decoder, "obs_norm", None)
            graphs.begin(("refit", id(decoder), norm is not None and norm.empty, cfg.pairwise_weight, bs, drawn), data)
            for i in range(todo):
                graphs.step(body, inputs(i), None)
            sums = graphs.end()
        else:
            totals: dict[str, torch.Tensor] = {}
            for i in range(todo):
                loss, stats = body(data, inputs(i))
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v.float()
                optimize(loss)
            sums = {k: float(v) / max(todo, 1) for k, v in totals.items()}
        self.steps += todo
        self.rounds += 1
        metrics = {"train_loss": sums.get("train_loss", 0.0), "step": self.steps, **self.validate(decoder, reduce)}
        if cfg.pairwise_weight > 0:
            metrics["train_pairwise"] = sums.get("train_pairwise", 0.0)
        stopped = cfg.patience is not None and self.bad_rounds >= cfg.patience
        self.done = self.steps >= self.total_steps or stopped
        metrics.update(best_val=self.best_val, best_step=self.best_step)
        return metrics

    def state_dict(self, data: bool = True) -> dict:
        """The fit's counters, best weights and (``data``) its train and validation pairs."""
        counters = {key: getattr(self, key) for key in self._counters}
        return {"train": self.train.to_dict(), "val": self.val.to_dict(), **counters} if data else counters

    _counters = ("steps", "rounds", "best_val", "best_step", "bad_rounds", "best_state", "done", "seed")

    def load_counters(self, state: dict) -> None:
        for key in self._counters:
            if key in state:  # "seed" is newer than some checkpoints; their fits drew with replacement
                setattr(self, key, state[key])

    @classmethod
    def from_state_dict(cls, cfg: RefinementConfig, state: dict) -> "DecoderFit":
        fit = cls(cfg, TensorDict(state["train"], batch_size=[]).auto_batch_size_(1), TensorDict(state["val"], batch_size=[]).auto_batch_size_(1))
        fit.load_counters(state)
        return fit


VAL_SEED = 12_345  # fixed noise for validation: every round scores the same draws


def _val_rows(data: TensorDict, limit: int | None) -> TensorDict:
    """At most ``limit`` rows, evenly spaced (deterministic)."""
    if limit is None or len(data) <= limit:
        return data
    return data[torch.linspace(0, len(data) - 1, limit).long()]


@torch.no_grad()
def validation_loss(decoder: DecoderModule, data: TensorDict, batch_size: int = 8192, limit: int | None = None,
                    pairwise_weight: float = 0.0) -> torch.Tensor:
    """The fit's objective on held-out pairs, with fixed noise (so rounds compare like for like, as
    the authors' ``interval_sampled`` validation does with its fixed key); includes the pairwise
    term when it is on, as theirs does."""
    decoder.eval()
    data = _val_rows(data, limit)
    total, count = torch.zeros((), device=decoder.device), 0
    with torch.random.fork_rng(devices=[decoder.device] if decoder.device.type == "cuda" else []):
        torch.manual_seed(VAL_SEED)
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size].to(decoder.device)
            loss = decoder.loss(batch["observation"], batch["action"]).float()
            if pairwise_weight > 0:
                loss = loss + pairwise_weight * pairwise_loss(decoder, batch["observation"], batch["latent"], batch["action"])
            total = total + loss * len(batch)
            count += len(batch)
    decoder.train()
    return total / max(count, 1)


@torch.no_grad()
def endpoint_mse(decoder: DecoderModule, data: TensorDict, batch_size: int = 8192, limit: int = 4096) -> torch.Tensor:
    """``mean |decode(s, z) - a|^2`` over held-out pairs and action dims, ``z ~ N(0, I)`` fixed (not
    the rollout latent): the authors' ``val_endpoint_mse`` (``make_endpoint_eval_step`` in
    ``src/gorl/algorithms/decoder_training.py``, 4,096 evenly spaced validation pairs)."""
    decoder.eval()
    data = _val_rows(data, limit)
    total, count = torch.zeros((), device=decoder.device), 0
    gen = torch.Generator().manual_seed(VAL_SEED)
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size].to(decoder.device)
        z = torch.randn(batch["action"].shape, generator=gen).to(decoder.device)
        err = (decoder.decode(batch["observation"], z).float() - batch["action"].float()).pow(2).mean(-1)
        total = total + err.sum()
        count += len(batch)
    decoder.train()
    return total / max(count, 1)


def _identity(batch: TensorDict) -> TensorDict:
    return batch


class DecoderDataModule(pl.LightningDataModule):
    """(observation, action) TensorDicts for fitting a :class:`DecoderModule` on its own.

    ``Trainer.fit(decoder, DecoderDataModule(train, val))``: the decoder picks its frozen
    observation statistics from :meth:`train_observations` at fit start.
    """

    def __init__(self, train: TensorDict, val: TensorDict | None = None, batch_size: int = 8192) -> None:
        super().__init__()
        for name, data in (("train", train), ("val", val)):
            if data is not None and not {"observation", "action"} <= set(data.keys()):
                raise ConfigError(f"{name} data needs 'observation' and 'action' entries, has {list(data.keys())}")
        self.train_data, self.val_data, self.batch_size = train, val, batch_size

    def train_observations(self) -> torch.Tensor:
        return self.train_data["observation"]

    def _loader(self, data: TensorDict, shuffle: bool) -> DataLoader:
        # TensorDicts index in bulk: the sampler yields index lists and data[indices] is the batch,
        # so no per-row stacking happens (batch_size=None turns off the default collation).
        data = data.select("observation", "action")
        base = RandomSampler(data) if shuffle else SequentialSampler(data)
        return DataLoader(data, batch_size=None, sampler=BatchSampler(base, self.batch_size, drop_last=False), collate_fn=_identity)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_data, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_data is None else self._loader(self.val_data, shuffle=False)
