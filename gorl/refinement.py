"""Decoder refinement: fit a decoder, from the fixed prior, onto the best encoder's behaviour.

At the end of an encoder phase (the system drives these steps, one per ``training_step``):

1. **collect** — with the stage's best encoder restored and frozen, roll out *stochastic* latents
   through the current decoder and keep ``(observation, pre-tanh action)`` pairs with their episode
   id and reward. The latent that produced an action is deliberately dropped here: the decoder is
   fitted from fresh prior noise, never from the rollout latent (:func:`decoder_pairs`).
2. **split** by episode: ``val_fraction`` of the episodes validate, the rest train (optionally only
   the top-q episodes by return are kept, off by default as in the authors' code).
3. **fit** a fresh (or warm-started) decoder with Adam for up to ``epochs`` epochs, early stopping
   on validation loss with ``patience``, and keep the best-validation weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import lightning.pytorch as pl
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from gorl.decoders.base import DecoderModule
from gorl.distributed import min_over_ranks
from gorl.errors import ConfigError

# (loss) -> None: backward + step with the system's decoder optimiser.
StepFn = Callable[[torch.Tensor], None]
ReduceFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RefinementConfig:
    """How each decoder refinement collects data and fits.

    Attributes:
        transitions: env frames of data collected per refinement (the authors: ~4,096 episodes of
            1000 steps, about 4.1M frames).
        episodes: if set, collect until this many episodes have *finished* instead (the frames it
            took are still counted); ``transitions`` is then ignored.
        val_fraction: fraction of *episodes* held out for validation / early stopping.
        epochs: maximum passes over the training set.
        patience: epochs without a validation improvement before stopping.
        batch_size: minibatch size.
        top_q: keep only this fraction of episodes, ranked by return (``null`` = keep all).
        warm_start: start from the current decoder instead of a fresh one.
    """

    transitions: int = 4_096_000
    episodes: int | None = None
    val_fraction: float = 0.1
    epochs: int = 50
    patience: int = 20
    batch_size: int = 8192
    top_q: float | None = None
    warm_start: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"refinement.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.top_q is not None and not 0.0 < self.top_q <= 1.0:
            raise ConfigError(f"refinement.top_q must be in (0, 1] or null, got {self.top_q}")
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"refinement.episodes must be >= 1 or null, got {self.episodes}")
        if self.transitions < 2 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("refinement.transitions, epochs and batch_size must be positive")


def decoder_pairs(rollout: TensorDictBase) -> TensorDict:
    """The only view of a rollout a decoder is trained on: observation and pre-tanh action.

    The rollout's ``latent`` is not carried over, by construction.
    """
    flat = rollout.reshape(-1)
    return TensorDict(
        {
            "observation": flat["observation"],
            "action": flat["pre_tanh"],
            "episode": flat["collector", "traj_ids"].reshape(-1),
            "reward": flat["next", "reward"].reshape(-1),
        },
        batch_size=flat.shape,
    )


def collect(batches: Iterator[TensorDictBase], frames: int, episodes: int | None = None) -> tuple[TensorDict, int]:
    """Pairs from collector batches until ``frames`` env frames are gathered (or, with
    ``episodes``, until that many episodes have finished); returns (data, frames)."""
    parts, got, finished = [], 0, 0
    while (got < frames) if episodes is None else (finished < episodes):
        batch = next(batches)
        parts.append(decoder_pairs(batch))
        got += batch.numel()
        finished += int(batch["next", "done"].sum())
    return torch.cat(parts), got


def top_q_episodes(data: TensorDict, q: float) -> TensorDict:
    """Keep the transitions of the best ``q`` fraction of episodes by (collected) return."""
    ids, inverse = torch.unique(data["episode"], return_inverse=True)
    returns = torch.zeros(len(ids)).index_add_(0, inverse, data["reward"].float())
    keep_n = max(1, int(round(q * len(ids))))
    keep = torch.zeros(len(ids), dtype=torch.bool)
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
    is_val[torch.randperm(len(ids), generator=generator)[:n_val]] = True
    mask = is_val[inverse]
    return data[~mask], data[mask]


class DecoderFit:
    """Epoch-by-epoch fitting with early stopping; its state survives checkpoints."""

    def __init__(self, cfg: RefinementConfig, train: TensorDict, val: TensorDict) -> None:
        self.cfg = cfg
        self.train = train.select("observation", "action")
        self.val = val.select("observation", "action")
        self.epoch = 0
        self.best_val = float("inf")
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.done = False

    def step(self, decoder: DecoderModule, optimize: StepFn, reduce: ReduceFn = lambda x: x) -> dict[str, float]:
        """One training epoch and one validation pass; updates the early-stopping state."""
        decoder.train()
        n, bs = len(self.train), self.cfg.batch_size
        perm = torch.randperm(n)
        # Every rank must take the same number of optimiser steps (each one all-reduces gradients).
        n_batches = min_over_ranks(math.ceil(n / bs))
        total, count = 0.0, 0
        for b in range(n_batches):
            batch = self.train[perm[b * bs : (b + 1) * bs]].to(decoder.device)
            loss = decoder.loss(batch["observation"], batch["action"])
            optimize(loss)
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        val_loss = float(reduce(validation_loss(decoder, self.val, bs)))
        self.epoch += 1
        if val_loss < self.best_val:
            self.best_val, self.bad_epochs = val_loss, 0
            self.best_state = copy.deepcopy(decoder.state_dict())
        else:
            self.bad_epochs += 1
        self.done = self.epoch >= self.cfg.epochs or self.bad_epochs >= self.cfg.patience
        return {"train_loss": total / max(count, 1), "val_loss": val_loss, "best_val_loss": self.best_val, "epoch": self.epoch}

    def state_dict(self) -> dict:
        return {
            "train": self.train.to_dict(),
            "val": self.val.to_dict(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
            "done": self.done,
        }

    @classmethod
    def from_state_dict(cls, cfg: RefinementConfig, state: dict) -> "DecoderFit":
        fit = cls(cfg, TensorDict(state["train"], batch_size=[]).auto_batch_size_(1), TensorDict(state["val"], batch_size=[]).auto_batch_size_(1))
        for key in ("epoch", "best_val", "bad_epochs", "best_state", "done"):
            setattr(fit, key, state[key])
        return fit


@torch.no_grad()
def validation_loss(decoder: DecoderModule, data: TensorDict, batch_size: int = 8192) -> torch.Tensor:
    decoder.eval()
    total, count = torch.zeros((), device=decoder.device), 0
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size].to(decoder.device)
        total = total + decoder.loss(batch["observation"], batch["action"]).float() * len(batch)
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
