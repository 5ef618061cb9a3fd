"""The GoRL stage cycle, top-down: encoder phase -> decoder refit -> install -> reset -> evaluate.

GoRL trains on two timescales (the paper's Algorithm 1; the authors' current release drives it
from ``_run_dm_control_gorl`` in ``src/gorl/pipeline.py`` at bennidict23/GoRL@8a0209c). For a plan
``loop.stages = [F0, F1, ...]`` of encoder-phase env frames per stage::

    stage 0: encoder phase through the identity decoder for F0 frames
    stage k >= 1: refine the decoder on the stage k-1's best encoder (collect -> fit)
                  -> install it -> reset the encoder -> evaluate (the "initial" return)
                  -> encoder phase for Fk frames
    done

Everything in that cycle lives in this file, in the order it runs (:class:`StageCycle`):

1. **Encoder phase** (:meth:`StageCycle.encoder_iteration`): rollouts through the frozen acting
   decoder and one update of the latent encoder per iteration; evaluations (deterministic unless
   ``loop.eval_deterministic: false``) on the schedule of :class:`~gorl.loop.LoopConfig`. With
   ``loop.eval_lanes`` those after updates run in side lanes of the training batch
   (:meth:`StageCycle.start_lane_evaluation`, :mod:`gorl.eval_lanes`) and are recorded when they end
   (:meth:`StageCycle.take_lane_results`), all of them before the phase's last evaluation.
2. **The stage's best encoder** (:meth:`StageCycle.evaluate`): every evaluation whose mean return
   beats all earlier ones of the stage, the stage-start one included, snapshots the encoder, as the
   authors' ``train_stage`` keeps its ``best_agent`` (``src/gorl/algorithms/dm_control_training.py``
   at 8a0209c). The phase's last evaluation is the stage's *final* return. When the phase ends
   (:meth:`StageCycle.end_encoder_phase`) the encoder becomes the stage's **handoff** agent, which
   collects the decoder's data and seeds a warm reset: the best one, restored (their dm_control
   ``collect_dataset(agent=previous_output.best_agent, ...)``), or with ``refinement.handoff:
   final`` the encoder as it ended (their humanoid teacher, ``src/gorl/humanoid/pipeline.py``).
3. **Decoder refit** (:meth:`StageCycle.decoder_iteration`): collect ``(observation, pre-tanh
   action)`` pairs with the handoff encoder, check the data's mean return against the quality gate
   (optional), keep the top-q episodes (optional), clip the targets, split by episode (or
   transition), start a fresh (or warm) decoder and fit it in rounds, one round per iteration, so a
   run checkpoints inside a long fit. Each refit may have settings of its own
   (:meth:`~gorl.refinement.RefinementConfig.for_refit`). The pieces are :mod:`gorl.refinement`'s.
4. **Install and reset** (:meth:`StageCycle.begin_stage`): the fit's best-validation weights become
   the acting decoder, the encoder is reset as configured (fresh, warm or warm value, from the
   handoff agent: their ``initialize_agent``), and the new stage is **evaluated before any encoder
   update**. The drop from the previous stage's best and final returns is logged
   (``stage/drop_from_best``, ``stage/drop_from_final``; theirs: ``_stage_stability``'s
   ``transition_drop_from_previous_final`` in ``src/gorl/pipeline.py``).

Every stage keeps a :class:`StageRecord` in ``LoopState.history`` (checkpointed with the loop), and
:func:`summary_table` turns them into the per-stage table that ends every run.

The cycle reaches the Lightning module that runs it only through :class:`StageHost` (rollouts,
optimiser steps, evaluation returns, metric rows), so it reads, and tests, without Lightning.
Frames counted in :class:`LoopState` are encoder-phase frames (the paper's budget); frames spent
collecting the decoder's dataset are counted separately in ``collect_frames``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Literal, Protocol

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase

from gorl.decoders import DecoderModule
from gorl.distributed import broadcast_module_
from gorl.encoders import LatentEncoder
from gorl.errors import CheckpointError, ConfigError, DataQualityError, NonFiniteError
from gorl.eval_lanes import LaneEvaluations
from gorl.loop import LoopConfig, authors_eval_updates
from gorl.refinement import DecoderFit, RefinementConfig, clip_targets, collect, collect_from_reset, data_return_mean, split, top_q_episodes
from gorl.rng import rng_state, set_rng_state
from gorl.step_graphs import StepGraphs

Phase = Literal["encoder", "decoder", "done"]
Which = Literal["encoder", "decoder"]


# --- the record of one stage -------------------------------------------------------------------
@dataclass
class StageRecord:
    """What one stage did. Returns are evaluation returns (deterministic unless
    ``loop.eval_deterministic: false``); ``None`` = not measured.

    ``initial`` is the return before the stage's first encoder update (stage >= 1, and stage 0 under
    the authors' evaluation schedule). ``drop_from_best`` / ``drop_from_final`` are the previous
    stage's best / final return minus this stage's initial one: a positive drop is return lost at
    the boundary. ``fit_steps``, ``best_val_loss``, ``decoder_data`` (env frames collected),
    ``data_return`` (the data's mean episode return) and ``fit_seconds`` describe the refit that
    *ends* this stage (the decoder the next stage acts with).
    """

    stage: int
    initial: float | None = None
    best: float | None = None
    final: float | None = None
    frames: int = 0
    fit_steps: int = 0
    best_val_loss: float | None = None
    decoder_data: int = 0
    data_return: float | None = None
    fit_seconds: float = 0.0
    drop_from_best: float | None = None
    drop_from_final: float | None = None

    @classmethod
    def from_dict(cls, saved: dict) -> StageRecord:
        """A record as checkpoints store it (a plain dict, so they load with ``weights_only``)."""
        unknown = set(saved) - {f.name for f in fields(cls)}
        if unknown:
            raise CheckpointError(f"checkpoint's stage record has fields this version does not know: {sorted(unknown)}")
        return cls(**saved)


# --- where the run is ----------------------------------------------------------------------------
@dataclass
class LoopState:
    """Where the run is. Plain numbers (and :class:`StageRecord`\\ s, stored as dicts), so it
    serialises into any checkpoint; everything a resumed run needs to carry on mid-stage."""

    stage: int = 0
    phase: Phase = "encoder"
    frames: int = 0  # encoder-phase frames, all stages
    stage_frames: int = 0  # encoder-phase frames in the current stage
    stage_updates: int = 0  # encoder updates in the current stage
    collect_frames: int = 0  # frames spent collecting decoder datasets
    last_eval_frames: int = -1
    best_return: float = float("-inf")  # best eval return of this stage
    iteration: int = 0
    history: list[StageRecord] = field(default_factory=list)  # one record per stage

    def state_dict(self) -> dict:
        return asdict(self)  # the records become plain dicts too

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if key == "history":
                value = [StageRecord.from_dict(r) for r in value]
            setattr(self, key, value)

    def record(self, stage: int | None = None) -> StageRecord:
        """The record of ``stage`` (default: the current one), created on demand."""
        stage = self.stage if stage is None else stage
        while len(self.history) <= stage:
            self.history.append(StageRecord(stage=len(self.history)))
        return self.history[stage]

    # --- transitions ---------------------------------------------------------------------------
    def encoder_phase_over(self, cfg: LoopConfig) -> bool:
        return self.stage_frames >= int(cfg.stages[self.stage])

    def eval_before_update(self, cfg: LoopConfig) -> bool:
        """Whether stage 0 is to be evaluated now, before its first update (the authors' schedule;
        later stages get that evaluation at the boundary, :meth:`StageCycle.begin_stage`)."""
        return cfg.authors_schedule and self.stage == 0 and self.stage_updates == 0 and self.last_eval_frames < 0

    def stage_update_count(self, cfg: LoopConfig) -> int:
        """Updates the current stage will make: its frame budget over the frames of one update,
        rounded up (the phase runs until the budget is reached); known after the first update."""
        per_update = self.stage_frames / max(self.stage_updates, 1)
        return max(1, math.ceil(int(cfg.stages[self.stage]) / per_update))

    def eval_due(self, cfg: LoopConfig) -> bool:
        """Whether to evaluate after the update just made (the end of a phase is always evaluated)."""
        if cfg.authors_schedule:
            if self.stage_updates == 0:
                return False
            return self.stage_updates in authors_eval_updates(self.stage_update_count(cfg), cfg.evals_per_stage)
        return self.last_eval_frames < 0 or self.frames - self.last_eval_frames >= cfg.eval_interval(self.stage)

    def end_encoder_phase(self, cfg: LoopConfig) -> Phase:
        self.phase = "done" if self.stage + 1 >= len(cfg.stages) else "decoder"
        return self.phase

    def start_next_stage(self) -> None:
        self.stage += 1
        self.phase = "encoder"
        self.stage_frames = 0
        self.stage_updates = 0
        self.best_return = float("-inf")


# --- the decoders ------------------------------------------------------------------------------------
@dataclass
class DecoderSlot:
    """One decoder type of the cycle: the copy that acts (frozen), the copy being fitted, and a
    factory of freshly initialised ones (a fit's starting point)."""

    acting: DecoderModule
    trainee: DecoderModule
    new: Callable[[], DecoderModule]


# --- what the cycle needs from the module that runs it -------------------------------------------
class StageHost(Protocol):
    """The cycle's view of the Lightning module that runs it (:class:`gorl.system.GoRLSystem`):
    where rollouts come from, how an optimiser steps, what an evaluation returns, where metrics go.
    Environments, devices, precision, DDP and loggers stay on the other side."""

    @property
    def world_size(self) -> int:
        """Processes training together (frames are counted over all of them)."""
        ...

    def encoder_rollout(self) -> TensorDictBase:
        """The data of one encoder update, ``[*batch, T]``: ``encoder.rollouts_per_update`` rollouts
        of the training envs with the current weights side by side, observations checked, on the
        networks' device (the training-episode returns in them are logged by the host)."""
        ...

    def training_env_batch(self) -> TensorDictBase:
        """One more rollout of the training envs, observations checked (``collect_from:
        training_envs``)."""
        ...

    def refit_env(self, stage: int) -> EnvBase:
        """The env the decoder data of ``stage`` is collected on from reset, seeded for that stage."""
        ...

    def optimizer(self, which: Which) -> torch.optim.Optimizer:
        """The encoder's or the decoder's optimiser (per-stage schedules set it; a new stage or a new
        fit clears its moments)."""
        ...

    def optimize(self, which: Which, loss: torch.Tensor, max_norm: float | None = None) -> None:
        """Backward, gradient sync, clip and one step of ``which``'s optimiser (NaN-guarded)."""
        ...

    def eval_lanes(self) -> LaneEvaluations | None:
        """Evaluations run in side lanes of the training batch (``loop.eval_lanes``), or ``None``."""
        ...

    def finish_eval_lanes(self) -> None:
        """Step the side lanes alone until every queued lane evaluation has ended."""
        ...

    def new_row(self) -> None:
        """Write the metrics recorded so far as a row of their own (two results in one iteration)."""
        ...

    def step_graphs(self, which: Which) -> StepGraphs | None:
        """What takes ``which``'s optimiser steps as CUDA graphs (``model.speed.step_graphs``,
        :mod:`gorl.step_graphs`), or ``None``: every step through :meth:`optimize`."""
        ...

    def check_finite(self) -> None:
        """Raise if a step since the last call saw a non-finite loss or gradient (steps on a GPU
        defer that check to here)."""
        ...

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over processes."""
        ...

    def evaluate_returns(self) -> tuple[float, float]:
        """One evaluation of the acting policy (``loop.eval_deterministic`` says how): (mean return
        over every process's episodes, std of this process's)."""
        ...

    def record_metrics(self, metrics: dict[str, float]) -> None:
        """Add ``metrics`` to this iteration's row."""
        ...


def check_observations(data: TensorDictBase, where: str) -> None:
    """One clear error for a non-finite observation from an env (one host read per call)."""
    if not bool(torch.isfinite(data.get("observation")).all()):
        raise NonFiniteError(f"non-finite observation from the env in the {where}")


# --- the cycle -------------------------------------------------------------------------------------
class StageCycle:
    """The stage loop's state and its transitions; one :meth:`iteration` per ``training_step``.

    Args:
        host: the module that runs the cycle (:class:`StageHost`).
        encoder: the latent encoder (trained in every encoder phase, reset at every boundary).
        decoder: the acting decoder from stage 1 on (frozen; overwritten by each install).
        trainee: the decoder being fitted during a refit.
        new_decoder: a freshly initialised decoder, for a fit's starting point.
        policy: the acting chain ``observation -> latent -> decoder -> squash`` (collects the data
            of a refit from reset).
        loop: the stage plan and evaluation cadence.
        refinement: how each refit collects and fits.
        seed: base seed (the train/validation split of stage ``k`` draws from ``seed + k``).
        first: another decoder type for the *first* refit only (on stage 0's data; it then acts in
            stage 1): the authors' diffusion HumanoidStand fits an FM decoder on its teacher's data
            and diffusion decoders after (``[method_overrides.gorl_diffusion.decoder.stage0] type =
            "fm"``, ``configs/tasks/HumanoidStand.toml`` at bennidict23/GoRL@8a0209c). ``None``: one
            type throughout.
    """

    def __init__(self, host: StageHost, encoder: LatentEncoder, decoder: DecoderModule, trainee: DecoderModule,
                 new_decoder: Callable[[], DecoderModule], policy: TensorDictModuleBase, loop: LoopConfig,
                 refinement: RefinementConfig, seed: int, first: DecoderSlot | None = None) -> None:
        self.host, self.encoder, self.policy = host, encoder, policy
        self.main = DecoderSlot(decoder, trainee, new_decoder)  # every refit's decoder type ...
        self.first = first  # ... but the first's, if it has one of its own
        self.loop_cfg, self.refine_cfg, self.seed = loop, refinement, seed
        self.state = LoopState()
        self._eval_in_row = False  # this iteration's metrics row holds an evaluation (eval_row)
        self.best_encoder: dict[str, torch.Tensor] | None = None  # snapshot of the stage's best so far
        self.fit: DecoderFit | None = None  # the refit in progress
        # Re-collecting the refit's data instead of storing it (checkpoint.refit_data: recollect):
        # the RNG state its collection started from and a fingerprint of what it collected; and,
        # after a resume, the saved fit waiting for its data.
        self.refit_data_in_checkpoints = True
        self._collected: dict | None = None
        self._fit_to_rebuild: dict | None = None
        self.last_eval_return: float | None = None
        self._restore_best_at_start = False

    @property
    def decoder(self) -> DecoderModule:
        """The main decoder type's acting copy."""
        return self.main.acting

    @property
    def trainee(self) -> DecoderModule:
        """The main decoder type's copy being fitted."""
        return self.main.trainee

    def where(self) -> str:
        st = self.state
        return f"{st.phase} phase, stage {st.stage}, frame {st.frames}"

    def record(self, stage: int | None = None) -> StageRecord:
        return self.state.record(stage)

    def iteration(self) -> bool:
        """One iteration of the loop: an encoder update, or a step of the decoder refit. Returns
        whether the plan is done."""
        st = self.state
        self._eval_in_row = False
        if st.phase == "encoder":
            self.encoder_iteration()
        elif st.phase == "decoder":
            self.decoder_iteration()
        st.iteration += 1
        self.record_loop_metrics()
        return st.phase == "done"

    def record_loop_metrics(self) -> None:
        st = self.state
        self.host.record_metrics({"loop/stage": st.stage, "loop/phase": float(st.phase != "encoder"), "loop/frames": st.frames,
                                  "loop/collect_frames": st.collect_frames})

    def eval_row(self) -> None:
        """Make room for an evaluation's metrics: a row holds one (an iteration may finish lane
        evaluations and then make its own; the earlier ones go out in rows of their own)."""
        if self._eval_in_row:
            self.record_loop_metrics()
            self.host.new_row()
        self._eval_in_row = True

    # --- 1. the encoder phase ----------------------------------------------------------------------
    def encoder_iteration(self) -> None:
        """One update of the encoder on fresh rollouts through the frozen acting decoder; the
        evaluations the schedule asks for; the end of the phase once its frames are spent."""
        st, cfg, host = self.state, self.loop_cfg, self.host
        if st.eval_before_update(cfg):  # the authors evaluate stage 0's untrained policy too
            self.evaluate()
            self.record().initial = self.last_eval_return
        t0 = time.perf_counter()
        rollout = host.encoder_rollout()
        t1 = time.perf_counter()
        self.encoder.set_stage(st.stage, host.optimizer("encoder"))
        metrics = self.encoder.train_on(rollout, lambda loss, norm: host.optimize("encoder", loss, norm), st.stage)
        host.check_finite()
        t2 = time.perf_counter()
        frames = rollout.numel() * host.world_size
        st.frames += frames
        st.stage_frames += frames
        st.stage_updates += 1
        host.record_metrics({f"encoder/{k}": v for k, v in metrics.items()})
        host.record_metrics({"perf/fps": frames / (t2 - t0), "perf/collect_fps": frames / (t1 - t0)})
        self.take_lane_results()  # evaluations in the training batch's side lanes that ended during this rollout
        phase_over = st.encoder_phase_over(cfg)
        if phase_over:
            self.finish_lane_evaluations()  # every evaluation of the phase counts, in order, before its last
            self.evaluate()
            self.end_encoder_phase()
        elif st.eval_due(cfg):
            lanes = host.eval_lanes()
            if lanes is None:
                self.evaluate()
            else:
                self.start_lane_evaluation(lanes)

    # --- 2. evaluation and the stage's best encoder ---------------------------------------------------
    def evaluate(self) -> None:
        """Evaluate the acting policy and offer the encoder as the stage's best."""
        st = self.state
        t0 = time.perf_counter()
        mean, std = self.host.evaluate_returns()
        self.eval_row()
        self.host.record_metrics({"perf/eval_seconds": time.perf_counter() - t0})
        st.last_eval_frames = st.frames
        self.offer_best(mean)
        self.host.record_metrics({"eval/return": mean, "eval/return_std": std, "eval/frames": st.frames})
        self.last_eval_return = mean
        rank_zero_info(f"[gorl] stage {st.stage} | frames {st.frames:,}/{self.loop_cfg.total_frames:,} | eval/return {mean:.1f}")

    def start_lane_evaluation(self, lanes: LaneEvaluations) -> None:
        """``loop.eval_lanes``: queue an evaluation of the encoder as it is now, to run in side
        lanes of the training batch while training goes on (:mod:`gorl.eval_lanes`)."""
        st = self.state
        snapshot = self.encoder.snapshot()
        lanes.start({"stage": st.stage, "frames": st.frames, "snapshot": snapshot}, snapshot)
        st.last_eval_frames = st.frames

    def take_lane_results(self) -> None:
        """Record the lane evaluations that have ended, in the order they were due, each in its
        own metrics row, and offer each frozen agent as the stage's best."""
        lanes = self.host.eval_lanes()
        if lanes is None:
            return
        for tag, returns in lanes.take_results():
            self.eval_row()
            mean = float(returns.mean())
            std = float(returns.std()) if returns.numel() > 1 else 0.0
            self.offer_best(mean, tag["snapshot"])
            self.host.record_metrics({"eval/return": mean, "eval/return_std": std, "eval/frames": tag["frames"]})
            self.last_eval_return = mean
            rank_zero_info(f"[gorl] stage {tag['stage']} | frames {tag['frames']:,}/{self.loop_cfg.total_frames:,} | eval/return {mean:.1f} "
                           f"(in the training batch's side lanes, ended at frame {self.state.frames:,})")

    def finish_lane_evaluations(self) -> None:
        """Run the lane evaluations still going to their end (side lanes alone) and record them."""
        lanes = self.host.eval_lanes()
        if lanes is not None and lanes.pending():
            t0 = time.perf_counter()
            self.host.finish_eval_lanes()
            self.host.record_metrics({"perf/eval_lanes_drain_seconds": time.perf_counter() - t0})
            self.take_lane_results()

    def finish_lane_evaluations_for_checkpoint(self) -> None:
        """Before a checkpoint (between iterations, the iteration's row written): finish the lane
        evaluations still running and write their results in rows of their own, so the
        checkpoint's best encoder and the metrics on disk include them."""
        lanes = self.host.eval_lanes()
        if lanes is None or not lanes.pending():
            return
        self._eval_in_row = False
        self.finish_lane_evaluations()
        self.record_loop_metrics()
        self.host.new_row()
        self._eval_in_row = False

    def offer_best(self, mean_return: float, snapshot: dict[str, torch.Tensor] | None = None) -> bool:
        """The best-encoder rule: an evaluation whose mean return is strictly above every earlier
        one of the stage makes the evaluated encoder the stage's best (a tie keeps the earlier one),
        as ``record.return_mean > best_return`` in the authors' ``train_stage``
        (``src/gorl/algorithms/dm_control_training.py`` at bennidict23/GoRL@8a0209c). Returns
        whether it did."""
        if mean_return > self.state.best_return:
            self.state.best_return = mean_return
            self.best_encoder = self.encoder.snapshot() if snapshot is None else snapshot
            return True
        return False

    def end_encoder_phase(self) -> None:
        """Close the encoder phase that has just had its last evaluation. If a refit follows, the
        encoder becomes the stage's *handoff* agent, which collects the decoder's data and seeds a
        warm reset: its best one, restored (``refinement.handoff: best``), or the final one it
        already is (``final``)."""
        st = self.state
        rec = self.record()
        rec.best, rec.final, rec.frames = st.best_return, self.last_eval_return, st.stage_frames
        nxt = st.end_encoder_phase(self.loop_cfg)
        if nxt == "decoder" and self.best_encoder is not None and self.refit_cfg().handoff == "best":
            self.encoder.restore(self.best_encoder)
        rank_zero_info(
            f"[gorl] stage {st.stage} encoder phase done at {st.frames:,} frames: final eval return {rec.final:.1f}, "
            f"best {rec.best:.1f}" + ("" if rec.initial is None else f", initial {rec.initial:.1f}")
        )

    # --- 3. the decoder refit ------------------------------------------------------------------------
    def refit_cfg(self, stage: int | None = None) -> RefinementConfig:
        """The settings of the refit that ends ``stage`` (default: the current one)."""
        return self.refine_cfg.for_refit(self.state.stage if stage is None else stage)

    def slot(self, stage: int | None = None) -> DecoderSlot:
        """The decoder type fitted by the refit that ends ``stage`` (default: the current one), and
        so acting in ``stage + 1``."""
        stage = self.state.stage if stage is None else stage
        return self.first if (stage == 0 and self.first is not None) else self.main

    def acting_decoder(self, stage: int | None = None) -> DecoderModule | None:
        """The fitted decoder acting in ``stage`` (default: the current one); ``None`` in stage 0,
        where the host acts through the identity."""
        stage = self.state.stage if stage is None else stage
        return None if stage == 0 else self.slot(stage - 1).acting

    def decoder_iteration(self) -> None:
        """The refit's first iteration collects and prepares the data; every later one is one
        round of the fit; the round that finishes it starts the next stage."""
        t0 = time.perf_counter()
        rec = self.record()
        if self.fit is None and self._fit_to_rebuild is not None:
            self.fit = self.rebuild_fit(self._fit_to_rebuild)
            self._fit_to_rebuild = None
            rec.fit_seconds += time.perf_counter() - t0
            return
        if self.fit is None:
            self.fit = self.start_fit(self.collect_decoder_data())
            rec.fit_seconds += time.perf_counter() - t0
            return
        fit, rc = self.fit, self.fit.cfg
        metrics = fit.step(self.slot().trainee, lambda loss: self.host.optimize("decoder", loss), reduce=self.host.reduce_mean,
                           graphs=self.host.step_graphs("decoder"))
        self.host.check_finite()
        rec.fit_seconds += time.perf_counter() - t0
        self.host.record_metrics({f"decoder/{k}": v for k, v in metrics.items()})
        stop = "" if rc.patience is None else f", {fit.bad_rounds}/{rc.patience} without improvement"
        rank_zero_info(
            f"[gorl] stage {self.state.stage} decoder step {fit.steps:,}/{fit.total_steps:,}: train loss {metrics['train_loss']:.4f}, "
            f"val loss {metrics['val_loss']:.4f} (best {rc.checkpoint_metric} {fit.best_val:.4f}{stop})"
        )
        if fit.done:
            self.fit = None
            self.begin_stage(fit)

    def collect_decoder_data(self, again: bool = False) -> TensorDict:
        """Pairs from the stage's handoff encoder (frozen), checked against the quality gate, top-q
        filtered and clipped.

        ``collect_from: reset``: complete episodes from env reset on an env of their own, the
        authors' ``collect_dataset`` (``src/gorl/algorithms/collection.py`` at 8a0209c);
        ``training_envs``: keep stepping the training envs. Each process collects its share.
        ``again``: the same collection once more, for a resumed fit (:meth:`rebuild_fit`): nothing
        is counted, logged or gated a second time."""
        st, rc, host = self.state, self.refit_cfg(), self.host
        per_rank = lambda n: None if n is None else math.ceil(n / host.world_size)  # noqa: E731
        # From reset the collection is a function of the RNG state it starts from (the env is seeded
        # anew per stage: GoRLSystem.refit_env), so that state can stand in for the data in a
        # checkpoint (checkpoint.refit_data: recollect; kept only then).
        start = rng_state() if rc.collect_from == "reset" and not self.refit_data_in_checkpoints else None
        if rc.collect_from == "reset":
            data, frames = collect_from_reset(host.refit_env(st.stage), self.policy, rc.max_episode_steps, per_rank(rc.episodes),
                                              None if rc.episodes is not None else per_rank(rc.transitions), rc.keeps_latent)
            check_observations(data, self.where())
        else:
            data, frames = collect(iter(host.training_env_batch, None), per_rank(rc.transitions), per_rank(rc.episodes), rc.keeps_latent)
        if again:
            return self._filtered(data, rc)
        st.collect_frames += frames * host.world_size
        rec = self.record()
        rec.decoder_data = frames * host.world_size
        if rc.collect_from == "reset":  # whole episodes: their mean return is the data's quality
            rec.data_return = float(host.reduce_mean(torch.tensor(data_return_mean(data), device=data.device)))
            host.record_metrics({"decoder/data_return_mean": rec.data_return})
            rank_zero_info(f"[gorl] stage {st.stage}: refit data from its {rc.handoff} encoder, mean episode return {rec.data_return:.1f}")
            self.check_data_quality(rec.data_return, rc)
        data = self._filtered(data, rc)
        self._collected = None if start is None else {"rng": start, "fingerprint": data_fingerprint(data)}
        return data

    @staticmethod
    def _filtered(data: TensorDict, rc: RefinementConfig) -> TensorDict:
        if rc.top_q is not None:
            data = top_q_episodes(data, rc.top_q)
        return clip_targets(data, rc.target_clip)

    def rebuild_fit(self, saved: dict) -> DecoderFit:
        """A refit resumed from a checkpoint that holds no data (``checkpoint.refit_data:
        recollect``): collect it again from the RNG state its collection started from, split it as
        :meth:`start_fit` did, and go on with the saved counters. The trainee's weights and its
        optimiser's moments are the checkpoint's (Lightning restored them). The process's RNG state
        is put back afterwards, so the fit's own draws go on as they would have."""
        st, rc = self.state, self.refit_cfg()
        rank_zero_info(f"[gorl] stage {st.stage}: collecting the refit's data again (the checkpoint holds its RNG state, not the data)")
        now = rng_state()
        set_rng_state(saved["collected"]["rng"])
        try:
            data = self.collect_decoder_data(again=True)
        finally:
            set_rng_state(now)
        got, want = data_fingerprint(data), saved["collected"]["fingerprint"]
        if got != want:
            # Bit-for-bit re-collection needs a simulator and networks that compute the same numbers
            # again; on a GPU some reductions may not. The data is then another draw of the same
            # collection, which the fit goes on with; say so rather than pass it off as the same.
            rank_zero_warn(f"[gorl] stage {st.stage}: the re-collected refit data differs from the original ({got} vs {want}); "
                           "the fit goes on with it")
        train, val = split(data, rc, torch.Generator().manual_seed(self.seed + st.stage))
        fit = DecoderFit(rc, train, val, seed=self.seed + st.stage)
        fit.load_counters(saved)
        self._collected = saved["collected"]
        return fit

    def check_data_quality(self, data_return: float, rc: RefinementConfig) -> None:
        """The quality gate (``refinement.min_data_return``): refuse to fit a decoder on data whose
        mean episode return is below the threshold, as the authors' humanoid pipeline refuses a
        weak teacher (``teacher_dataset_min_return_mean``, ``src/gorl/humanoid/pipeline.py``). The
        encoder phase that made the data is already checkpointed (a phase change writes one)."""
        if rc.min_data_return is not None and not data_return >= rc.min_data_return:
            raise DataQualityError(
                f"stage {self.state.stage}'s refit data has mean episode return {data_return:.1f}, below "
                f"refinement.min_data_return {rc.min_data_return:g}: the run stops before fitting. The run's "
                f"checkpoints/last.ckpt holds the finished stage: pass it to --ckpt_path with a lower (or null) "
                f"refinement.min_data_return to go on")

    def start_fit(self, data: TensorDict) -> DecoderFit:
        """Split ``data`` and start the trainee from a fresh decoder (or, with ``warm_start``, the
        acting one, whose observation statistics ``decoder_obs_stats`` may carry over), with fresh
        optimiser moments."""
        st, rc, slot = self.state, self.refit_cfg(), self.slot()
        gen = torch.Generator().manual_seed(self.seed + st.stage)
        train, val = split(data, rc, gen)
        warm = rc.warm_start and st.stage > 0  # the first refit's acting decoder is the identity
        source = self.acting_decoder() if warm else slot.new()
        if type(source) is not type(slot.trainee):
            raise ConfigError(f"stage {st.stage}'s refit cannot warm-start a {type(slot.trainee).__name__} from the acting "
                              f"{type(source).__name__}: set refinement.warm_start false for it")
        slot.trainee.load_state_dict(source.state_dict())
        broadcast_module_(slot.trainee)  # a fresh init draws rank-local random numbers
        self.set_decoder_obs_statistics(train["observation"].to(slot.trainee.device), rc.decoder_obs_stats if warm else "refit")
        self.host.optimizer("decoder").state.clear()
        fit = DecoderFit(rc, train, val, seed=self.seed + st.stage)
        self.host.record_metrics({"decoder/dataset_size": len(data)})
        rank_zero_info(f"[gorl] stage {st.stage}: refining {'a warm' if warm else 'a fresh'} {type(slot.trainee).__name__} on {len(train):,} train / "
                       f"{len(val):,} val pairs for {fit.total_steps:,} steps")
        return fit

    def set_decoder_obs_statistics(self, obs: torch.Tensor, mode: str) -> None:
        """The trainee's observation statistics for the fit (``refinement.decoder_obs_stats``):
        ``refit`` from ``obs`` alone; on a warm start ``cumulative`` merges ``obs`` into the acting
        decoder's, ``frozen`` keeps them, ``legacy_new_batch`` merges the mean but keeps only
        ``obs``'s squared deviations (:meth:`gorl.networks.RunningNorm.update`'s ``batch_only_var``
        is that update)."""
        trainee = self.slot().trainee
        norm = trainee.obs_norm
        if mode == "refit":
            trainee.fit_obs_statistics(obs)
        elif mode == "cumulative":
            norm.update(obs)
        elif mode == "legacy_new_batch":
            norm.update(obs, batch_only_var=True)
        elif mode != "frozen":
            raise ValueError(f"unknown decoder_obs_stats mode {mode!r}")

    # --- 4. install, reset, and the new stage's initial evaluation -----------------------------------
    def begin_stage(self, fit: DecoderFit) -> None:
        """Install the fitted decoder, reset the encoder, start the next stage and evaluate it."""
        st = self.state
        prev = self.record()
        prev.fit_steps, prev.best_val_loss = fit.steps, fit.best_val
        self.install_decoder(fit)
        self.reset_encoder()
        st.start_next_stage()
        # The new stage, before any update: what the refit and the reset kept of the previous stage.
        self.evaluate()
        rec = self.record()
        rec.initial = self.last_eval_return
        rec.drop_from_best = prev.best - rec.initial
        rec.drop_from_final = prev.final - rec.initial
        self.host.record_metrics({"stage/initial_return": rec.initial, "stage/drop_from_best": rec.drop_from_best,
                                  "stage/drop_from_final": rec.drop_from_final, "stage/fit_steps": prev.fit_steps,
                                  "stage/best_val_loss": prev.best_val_loss,
                                  # a wall time: under perf/ with the other timings, which runs of one seed need not share
                                  "perf/fit_seconds": prev.fit_seconds})
        rank_zero_info(
            f"[gorl] stage {st.stage} starts at eval return {rec.initial:.1f} "
            f"(stage {st.stage - 1}: best {prev.best:.1f}, final {prev.final:.1f}; "
            f"drop {rec.drop_from_best:+.1f} from best, {rec.drop_from_final:+.1f} from final)"
        )

    def install_decoder(self, fit: DecoderFit) -> None:
        """The fit's best-validation weights become the acting decoder (and the trainee's)."""
        slot = self.slot()
        slot.trainee.load_state_dict(fit.best_state)
        slot.acting.load_state_dict(fit.best_state)
        rank_zero_info(f"[gorl] stage {self.state.stage} decoder fitted: {fit.steps:,} steps, best {self.refine_cfg.checkpoint_metric} "
                       f"{fit.best_val:.4f} at step {fit.best_step:,}")

    def reset_encoder(self) -> None:
        """Reset the encoder for the next stage as its config says (a warm start from the finished
        stage's handoff agent: its best snapshot, or with ``handoff: final`` the encoder as the
        stage ended, which it still is), tell it a latent now means something else, and drop the
        stale Adam moments."""
        handoff = self.best_encoder if self.refit_cfg().handoff == "best" else self.encoder.snapshot()
        self.encoder.reset(handoff, self.state.stage + 1)
        self.encoder.on_decoder_change()
        broadcast_module_(self.encoder)
        self.host.optimizer("encoder").state.clear()
        self.best_encoder = None

    # --- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The cycle's part of a checkpoint's ``gorl_loop`` entry. A refit in progress is stored with
        its data, or, with ``refit_data_in_checkpoints`` off and data collected from reset, with the
        RNG state that collects it again (:meth:`rebuild_fit`): at the paper's 4,096 episodes the
        data is ~310 MB a checkpoint, the RNG state a few kB."""
        if self.fit is None:
            fit = self._fit_to_rebuild  # resumed, its data not collected again yet: saved as it came
        elif self.refit_data_in_checkpoints or self._collected is None:
            fit = self.fit.state_dict()
        else:
            fit = {**self.fit.state_dict(data=False), "collected": self._collected}
        return {"state": self.state.state_dict(), "best_encoder": self.best_encoder, "fit": fit}

    def load_state_dict(self, saved: dict) -> None:
        self.state.load_state_dict(saved["state"])
        st = self.state
        if st.phase == "done" and st.stage + 1 < len(self.loop_cfg.stages):
            # A finished run resumed with a longer plan: refine the decoder and go on, from the best
            # encoder (restored at train start, after Lightning has loaded the weights).
            st.phase = "decoder"
            self._restore_best_at_start = True
        self.best_encoder = saved["best_encoder"]
        fit = saved["fit"]
        self.fit, self._fit_to_rebuild = None, None
        if fit is not None and "train" not in fit:
            if "collected" not in fit:
                raise CheckpointError("the checkpoint's refit holds neither its data nor the RNG state to collect it again")
            self._fit_to_rebuild = fit  # collected again at the next decoder iteration, where the envs exist
        elif fit is not None:
            self.fit = DecoderFit.from_state_dict(self.refit_cfg(), fit)

    def on_train_start(self) -> None:
        if self._restore_best_at_start and self.best_encoder is not None and self.refit_cfg().handoff == "best":
            self.encoder.restore(self.best_encoder)
            self._restore_best_at_start = False


def data_fingerprint(data: TensorDict) -> list[float]:
    """Rows and float64 sums of a refit dataset's fields: whether a re-collection gave the same data."""
    return [float(len(data))] + [float(data[k].double().sum()) for k in sorted(data.keys()) if data[k].is_floating_point()]


# --- the table that ends a run -------------------------------------------------------------------
def _cell(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def summary_table(history: list[StageRecord]) -> str:
    """The per-stage table printed at the end of a run (markdown, so it pastes into RESULTS)."""
    lines = ["| stage | initial | best | final | frames | decoder fit steps | best val loss | fit time |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in history:
        # A stage's decoder fit is recorded on the stage *before* it (the refit ends that stage).
        fitted = history[rec.stage - 1] if rec.stage > 0 else None
        steps = _cell(float(fitted.fit_steps), ",.0f") if fitted else "-"
        val = _cell(fitted.best_val_loss, ".4f") if fitted else "-"
        secs = f"{fitted.fit_seconds:.0f} s" if fitted else "-"
        lines.append(f"| {rec.stage} | {_cell(rec.initial)} | {_cell(rec.best)} | {_cell(rec.final)} | "
                     f"{rec.frames:,} | {steps} | {val} | {secs} |")
    return "\n".join(lines)
