"""GoRLSystem: the LightningModule that owns encoder, decoders, envs and collector, and runs the
stage cycle.

Lightning drives it like any module (``Trainer.fit``), but one ``training_step`` is one *iteration*
of the GoRL stage cycle (:mod:`gorl.stage_cycle`, which holds the algorithm: encoder phases,
decoder refits, install, reset, evaluation, the stage's best encoder). This module is the cycle's
:class:`~gorl.stage_cycle.StageHost`: it builds the envs and the TorchRL collector, moves data to
the networks' device, steps the optimisers (manual optimisation: one iteration takes many steps of
one of two optimisers), evaluates, writes metric rows and checkpoints. The "batches" Lightning feeds
it are just ticks; the data comes from the collector, built in :meth:`on_fit_start`, once Lightning
has moved the module to its device (``setup`` runs before that move, so a collector built there
would act with a CPU policy beside CUDA weights).

The policy the env sees is ``observation -> encoder latent -> decoder -> tanh``
(:class:`~gorl.policy.LatentPolicy`), whose decoder slot dispatches to the identity in stage 0 and
to the fitted decoder afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from gorl.acceleration import CompiledFn, GraphedChain, SpeedConfig
from gorl.decoders import DecoderModule, FlowDecoder, IdentityDecoder
from gorl.encoders import EncoderModule, LatentEncoder
from gorl.envs.factory import EnvConfig, env_dims, make_env
from gorl.errors import CheckpointError, ConfigError, EnvWorkerError
from gorl.eval_lanes import LaneEvaluations
from gorl.evaluation import episode_returns, evaluate
from gorl.inference import META_KEY, policy_meta
from gorl.loop import LoopConfig
from gorl.networks import ActionSemantics, ActionSquash, RunningNorm
from gorl.optimization import FiniteGuard, guarded_step
from gorl.policy import LatentPolicy
from gorl.refinement import DecoderFit, RefinementConfig
from gorl.rng import rng_state, set_rng_state
from gorl.stage_cycle import DecoderSlot, LoopState, StageCycle, Which, check_observations, summary_table
from gorl.step_graphs import StepGraphs

EncoderFactory = Callable[[int, int], LatentEncoder]
DecoderFactory = Callable[[int, int], DecoderModule]


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


_OPTIMIZERS = {"encoder": 0, "decoder": 1}  # positions in configure_optimizers' list


class _Ticks(IterableDataset):
    """An endless stream of iteration numbers: the loop stops itself via ``trainer.should_stop``."""

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1


class GoRLSystem(pl.LightningModule):
    """GoRL (or, with one stage, Gaussian PPO) on one env config.

    Args:
        env: which env and how many copies (:class:`~gorl.envs.factory.EnvConfig`).
        encoder: the latent-policy optimiser, ``class_path`` + ``init_args`` (default:
            :class:`~gorl.encoders.EncoderModule`, latent PPO; any
            :class:`~gorl.encoders.LatentEncoder`); built with (obs_dim, act_dim).
        decoder: the generative decoder used from stage 1 on (default:
            :class:`~gorl.decoders.FlowDecoder`); stage 0 always uses the exact identity.
        loop: stage plan and evaluation cadence (:class:`~gorl.loop.LoopConfig`).
        refinement: decoder refinement settings (:class:`~gorl.refinement.RefinementConfig`).
        seed: base seed; env copy ``i`` of rank ``r`` gets ``seed + 10_000 r + i`` (linked to the
            CLI's ``seed_everything``).
        speed: GPU speed settings that change no maths (:class:`~gorl.acceleration.SpeedConfig`).
        first_decoder: another decoder class for the first refit only, the one on stage 0's data
            (it acts in stage 1); later refits fit ``decoder``. The authors' diffusion
            HumanoidStand recipe fits an FM decoder first (:class:`~gorl.stage_cycle.StageCycle`'s
            ``first``). ``null`` (default): ``decoder`` throughout.
        action_semantics: how latents and decoded actions are bounded. ``squashed`` (default, the
            authors' dm_control pipeline): a Gaussian latent, and ``tanh`` after the decoder, whose
            targets are pre-tanh actions. ``bounded`` (their humanoid profile,
            ``action_semantics = "bounded"`` with ``bounded_latent = true``): a tanh-normal latent in
            (-1, 1) (:attr:`~gorl.encoders.LatentEncoder.bounded_latent`), and the decoded action
            clipped to the box, not squashed, so the decoder's targets are env actions (set
            ``refinement.target_clip: 1.0``, their ``target_clip``). Stage 0 is then Brax's
            ``tanh_normal`` Gaussian policy: ``clip(tanh(u)) = tanh(u)``.
    """

    def __init__(
        self,
        env: EnvConfig | None = None,
        encoder: EncoderFactory | None = None,
        decoder: DecoderFactory | None = None,
        loop: LoopConfig | None = None,
        refinement: RefinementConfig | None = None,
        seed: int = 0,
        speed: SpeedConfig | None = None,
        action_semantics: ActionSemantics = "squashed",
        first_decoder: DecoderFactory | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.env_cfg = env or EnvConfig()
        self.loop_cfg = loop or LoopConfig()
        self.refine_cfg = refinement or RefinementConfig()
        self.seed = int(seed)
        self.speed_cfg = speed or SpeedConfig()
        if self.loop_cfg.eval_lanes and self.env_cfg.backend != "mjx":
            raise ConfigError("loop.eval_lanes runs evaluations in spare lanes of the MJX training batch: it needs env.backend: mjx")
        obs_dim, act_dim, low, high = env_dims(self.env_cfg)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self._make_decoder: DecoderFactory = decoder or FlowDecoder
        self._encoder_factory: EncoderFactory = encoder or EncoderModule
        self.encoder = self._encoder_factory(obs_dim, act_dim)
        self.identity = IdentityDecoder(obs_dim, act_dim)
        self.decoder = self._make_decoder(obs_dim, act_dim)  # acts from stage 1 on
        self.trainee = self._make_decoder(obs_dim, act_dim)  # being fitted during a refinement
        # The acting decoder is frozen (encoders like SAC backpropagate *through* it, never into it).
        self.decoder.requires_grad_(False)
        first = None
        if first_decoder is not None:  # the first refit's own type (acts in stage 1)
            self.first_decoder, self.first_trainee = first_decoder(obs_dim, act_dim), first_decoder(obs_dim, act_dim)
            self.first_decoder.requires_grad_(False)
            first = DecoderSlot(self.first_decoder, self.first_trainee, partial(first_decoder, obs_dim, act_dim))
            if len(self.loop_cfg.stages) > 2 and self.refine_cfg.for_refit(1).warm_start and type(self.first_decoder) is not type(self.decoder):
                raise ConfigError(f"the refit after stage 1 cannot warm-start a {type(self.decoder).__name__} from the first refit's "
                                  f"{type(self.first_decoder).__name__} (model.first_decoder): make its refinement.warm_start false")
        else:
            self.first_decoder = self.first_trainee = None
        if self.encoder.latent_dim != act_dim and len(self.loop_cfg.stages) >= 1:
            # Stage 0 decodes with the identity, which needs latent size == action size.
            raise ConfigError(f"encoder latent_dim ({self.encoder.latent_dim}) must equal the action dim ({act_dim}) for stage 0")
        if action_semantics not in ("squashed", "bounded"):
            raise ConfigError(f"model.action_semantics must be squashed or bounded, got {action_semantics!r}")
        if action_semantics == "bounded" and not self.encoder.supports_bounded_latent:
            raise ConfigError(f"model.action_semantics: bounded needs a latent policy that can be tanh-bounded "
                              f"(the PPO encoder); {type(self.encoder).__name__} cannot")
        self.action_semantics = action_semantics
        self.encoder.bounded_latent = action_semantics == "bounded"
        self.squash = ActionSquash(low, high, action_semantics)
        self._ep_return: torch.Tensor | None = None
        self._finished = {"sum": None, "count": None}  # training episodes ended since the last row
        self._guard: FiniteGuard | None = None
        self.collector: Collector | None = None
        self.last_rollout: TensorDictBase | None = None
        self._envs: dict[str, EnvBase] = {}
        self._row: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self.encoder.bind(self._decode, self.squash)
        self.policy = LatentPolicy(self.encoder.act, self._decode, self.squash)
        # The algorithm: stage plan, encoder phases, refits, install and reset (a plain object, not a
        # submodule: the modules it drives are registered here, once).
        self.cycle = StageCycle(self, self.encoder, self.decoder, self.trainee, partial(self._make_decoder, obs_dim, act_dim),
                                self.policy, self.loop_cfg, self.refine_cfg, self.seed, first=first)

    # --- the cycle's state, as callbacks and tools read it ---------------------------------------
    @property
    def loop_state(self) -> LoopState:
        return self.cycle.state

    @property
    def fit_state(self) -> DecoderFit | None:
        """The decoder refit in progress (``None`` outside a refit, and while collecting its data)."""
        return self.cycle.fit

    @property
    def best_encoder(self) -> dict[str, torch.Tensor] | None:
        return self.cycle.best_encoder

    @best_encoder.setter
    def best_encoder(self, snapshot: dict[str, torch.Tensor] | None) -> None:
        self.cycle.best_encoder = snapshot

    @property
    def last_eval_return(self) -> float | None:
        return self.cycle.last_eval_return

    # --- envs: TorchRL envs are nn.Modules, but not part of the model. Kept in a plain dict so they
    # stay out of state_dict (checkpoints), .to(device) and DDP's parameter broadcast.
    @property
    def train_env(self) -> EnvBase | None:
        return self._envs.get("train")

    @property
    def eval_env(self) -> EnvBase | None:
        return self._envs.get("eval")

    # --- the policy -----------------------------------------------------------------------------
    def acting_decoder(self) -> DecoderModule:
        fitted = self.cycle.acting_decoder()
        return self.identity if fitted is None else fitted

    def _decode(self, obs: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.acting_decoder().decode(obs, latent)

    # --- Lightning plumbing -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Process-wide in torch: set for the run, put back at teardown (an in-process caller, a
        # notebook or a test, keeps its own).
        self._matmul_before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.speed_cfg.matmul_precision)
        if stage == "validate":
            self._setup_validate()
        if stage != "fit":
            return
        rank = self.trainer.global_rank if self._trainer is not None else 0
        seed = self.seed + 10_000 * rank
        side = self.loop_cfg.eval_lanes * self.env_cfg.eval_envs  # loop.eval_lanes (gorl/eval_lanes.py)
        self._envs["train"] = make_env(self.env_cfg, seed=seed, side_envs=side, side_seed=seed + 2_000_000)
        self._envs["eval"] = make_env(self.env_cfg, seed=seed + 1_000_000, num_envs=self.env_cfg.eval_envs, num_workers=1)

    def on_fit_start(self) -> None:
        """Build the collector now that the module is on its final device (see the module docstring);
        a resumed run has also loaded its weights by now."""
        self.collector = self._build_collector()
        self._batches = iter(self.collector)
        # On a GPU every host read of a device value stalls the launch queue: finiteness checks of
        # the optimiser steps are then read once per update (gorl/optimization.py says why it is safe).
        self._guard = FiniteGuard() if self.device.type == "cuda" else None
        self._use_graphs()
        if self.speed_cfg.compile:
            self._compile_losses()
        self._use_step_graphs()
        self._use_eval_lanes()

    def _use_graphs(self) -> None:
        """Replay the acting chain from CUDA graphs (gorl/acceleration.py) where it is safe to."""
        decoders_safe = all(d.graph_safe for d in (self.identity, self.decoder, self.first_decoder) if d is not None)
        if self.device.type == "cuda" and self.speed_cfg.cuda_graphs and self.encoder.graph_safe_act and decoders_safe:
            self._norms = [m for m in self.modules() if isinstance(m, RunningNorm)]
            self.policy.graphed = GraphedChain(self.policy.chain, self._acting_state)
        elif self.speed_cfg.compile:
            # model.speed.compile, where no CUDA graph replays the chain (the CPU, or cuda_graphs
            # false): the chain under torch.compile, recompiled per batch shape and acting decoder.
            self.policy.graphed = CompiledFn(self.policy.chain, "the acting chain", backend=self.speed_cfg.compile_backend)
        else:
            self.policy.graphed = None

    def _step_graphs_mode(self) -> tuple[str | None, str]:
        """(``StepGraphs`` mode, or ``None`` with why not) for this run's ``speed.step_graphs``."""
        if self.device.type != "cuda":
            return None, "the networks are not on a GPU"
        if self.trainer.world_size > 1:
            return None, "it runs one process only (DDP's gradient all-reduce is not captured)"
        if str(self.trainer.precision) not in ("32-true", "32"):
            return None, f"it needs trainer.precision: 32-true, not {self.trainer.precision}"
        return "cuda", ""

    def _use_step_graphs(self) -> None:
        """``model.speed.step_graphs``: every optimiser step one replayed CUDA graph (gorl/step_graphs.py)."""
        self._graphs: dict[str, StepGraphs] = {}
        uses = getattr(self.encoder, "use_step_graphs", None)
        if not self.speed_cfg.step_graphs:
            if uses is not None:
                uses(None)
            return
        mode, why = self._step_graphs_mode()
        if mode is None:
            rank_zero_warn(f"[gorl] model.speed.step_graphs is off for this run: {why}; the steps run eagerly")
            return
        for which in ("encoder", "decoder"):
            opt = self.optimizer(which)
            if not all(group.get("fused") or group.get("capturable") for group in opt.param_groups):
                rank_zero_warn(f"[gorl] model.speed.step_graphs: the {which} optimiser is neither fused nor capturable; its steps run eagerly")
                continue
            what = "PPO minibatch steps" if which == "encoder" else "decoder refit steps"
            self._graphs[which] = StepGraphs(opt, what, mode=mode, on_step=self._count_optimizer_step, where=self.cycle.where)
        if "encoder" in self._graphs:
            if uses is None:
                rank_zero_warn(f"[gorl] model.speed.step_graphs: {type(self.encoder).__name__} has no graphed update; its updates run eagerly")
            else:
                uses(self._graphs["encoder"])

    def _count_optimizer_step(self) -> None:
        """A graphed step bypasses Lightning's optimiser wrapper: count it as that wrapper would
        (``trainer.global_step``)."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def step_graphs(self, which: Which) -> StepGraphs | None:
        return getattr(self, "_graphs", {}).get(which)

    def _use_eval_lanes(self) -> None:
        """``loop.eval_lanes``: evaluations in side lanes of the training batch (gorl/eval_lanes.py)."""
        self._lanes: LaneEvaluations | None = None
        self._shadows: dict[int, tuple[LatentEncoder, Callable]] = {}
        if not self.loop_cfg.eval_lanes:
            return
        if self.trainer.world_size > 1:
            raise ConfigError("loop.eval_lanes runs in one process: set it to 0 under DDP")
        self._lanes = LaneEvaluations(self.loop_cfg.eval_lanes, self.env_cfg.eval_envs, self.loop_cfg.eval_max_steps, self._lane_chain,
                                      device=self.train_env.device)
        self.train_env.lanes = self._lanes

    def _lane_chain(self, group: int, snapshot: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The acting chain of ``snapshot`` for lane group ``group``: its own copy of the encoder
        (loaded in place, so a captured CUDA graph of it stays valid), the stage's decoder, tanh."""
        if group not in self._shadows:
            shadow = self._encoder_factory(self.obs_dim, self.act_dim).to(self.device).eval()
            shadow.bounded_latent = self.encoder.bounded_latent
            policy = LatentPolicy(shadow.act, self._decode, self.squash)
            chain = policy.chain
            if self.policy.graphed is not None:  # the CUDA-graph path of the training policy (gorl/acceleration.py)
                chain = GraphedChain(policy.chain, lambda s=shadow: (id(self.acting_decoder()), tuple(m.empty for m in s.modules() if isinstance(m, RunningNorm))))
            self._shadows[group] = (shadow, chain)
        shadow, chain = self._shadows[group]
        shadow.load_state_dict(snapshot)
        deterministic = self.loop_cfg.eval_deterministic

        @torch.no_grad()
        def act(obs: torch.Tensor) -> torch.Tensor:
            return chain(obs.to(self.device), deterministic)["action"]

        return act

    def eval_lanes(self) -> LaneEvaluations | None:
        return getattr(self, "_lanes", None)

    def finish_eval_lanes(self) -> None:
        while self._lanes is not None and self._lanes.pending():
            self.train_env.step_side()

    def new_row(self) -> None:
        self._flush_metrics()

    def _compile_losses(self) -> None:
        """``model.speed.compile``: the encoder's minibatch loss and every decoder trainee's loss."""
        compile_encoder = getattr(self.encoder, "compile_loss", None)
        if compile_encoder is None:
            rank_zero_warn(f"[gorl] model.speed.compile: {type(self.encoder).__name__} has no compiled loss; its updates run eagerly")
        else:
            compile_encoder(backend=self.speed_cfg.compile_backend)
        for trainee in (self.trainee, self.first_trainee):
            if trainee is not None and trainee.trainable:
                trainee.compile_loss(backend=self.speed_cfg.compile_backend)

    def _acting_state(self) -> tuple:
        """What decides the acting chain's Python path besides its input: which decoder acts (the
        identity, ``model.first_decoder`` in stage 1, the decoder), and which observation
        normalisers have seen data."""
        return (id(self.acting_decoder()), tuple(n.empty for n in self._norms))

    def _build_collector(self) -> Collector:
        frames = self.train_env.batch_size.numel() * self.encoder.rollout_steps
        # The collector runs the live policy object (same process, same device): weights updated by
        # the optimiser are used at the next step with no copy.
        # The acting policy is memoryless (no recurrent state, no primers), so it needs none of the
        # env transforms TorchRL 0.14 would otherwise warn about (InitTracker) on every run.
        # Devices are given explicitly (policy: the module's, storage: the env's): left unset,
        # TorchRL 0.14 copies every step's tensordict onto the env's device even when nothing
        # moves (a measurable share of a CPU env step: benchmarks/RESULTS.md, timings moved out of comments).
        # Trajectory ids cost a host read of every step's done flags (TorchRL's _update_traj_ids):
        # kept only where a refit reads them, collecting from the training envs (decoder_pairs).
        traj_ids = len(self.loop_cfg.stages) > 1 and self.refine_cfg.collect_from == "training_envs"
        env_device = self.train_env.device
        return Collector(self.train_env, self.policy, frames_per_batch=frames, total_frames=-1, trust_policy=True,
                         auto_register_policy_transforms=False, policy_device=self.device,
                         env_device=env_device, storing_device=env_device, track_traj_ids=traj_ids)

    def teardown(self, stage: str) -> None:
        if getattr(self, "_matmul_before", None) is not None:
            torch.set_float32_matmul_precision(self._matmul_before)
            self._matmul_before = None
        if getattr(self, "collector", None) is not None:
            self.collector.shutdown()
            self.collector = None
        for env in self._envs.values():
            if not env.is_closed:
                env.close()
        self._envs = {}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(), batch_size=None)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        enc = self.encoder.configure_optimizers()
        trainees = [t for t in (self.trainee, self.first_trainee) if t is not None and t.trainable]
        if not trainees:
            dec = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        elif len(trainees) == 1:
            dec = trainees[0].configure_optimizers()
        else:  # one optimiser, a group per decoder type; a fit steps only its trainee's (the other has no gradients)
            dec = torch.optim.Adam([{"params": list(t.parameters()), "lr": t.lr} for t in trainees], fused=True)
        return [enc, dec]

    def on_train_start(self) -> None:
        self._t_start = time.perf_counter()
        self.cycle.on_train_start()  # weights were loaded after on_load_checkpoint
        if getattr(self, "_rng_at_resume", None) is not None:
            set_rng_state(self._rng_at_resume)
            self._rng_at_resume = None

    def on_train_end(self) -> None:
        st = self.loop_state
        last = float("nan") if self.last_eval_return is None else self.last_eval_return
        stopped = getattr(self, "stopped_by", None)  # a signal (gorl.callbacks.FrameCheckpoint)
        rank_zero_info(
            f"[gorl] {f'stopped by {stopped} in' if stopped else 'finished'} stage {st.stage} ({st.phase}) after {st.frames:,} env frames "
            f"(+{st.collect_frames:,} for decoder data) in {time.perf_counter() - self._t_start:.0f} s; "
            f"final eval/return {last:.1f}"
        )
        if st.history:
            rank_zero_info(f"[gorl] per stage ({self.env_cfg.eval_envs} {'deterministic' if self.loop_cfg.eval_deterministic else 'stochastic'} "
                           "eval episodes per evaluation):\n"
                           + summary_table(st.history))

    # --- one iteration ---------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        done = self.cycle.iteration()
        self._flush_metrics()
        if done:
            self.trainer.should_stop = True

    # --- metrics -------------------------------------------------------------------------------
    # Why not ``self.log``: Lightning keeps on-step values in a result collection that is only
    # reset at epoch end, and this loop never ends an epoch, so every metric ever logged would be
    # re-written on every row (an evaluation at frame 0 would show up at every later frame). One
    # row per loop iteration goes straight to the loggers instead (rank 0 only, as Lightning's
    # loggers are), with the step = loop iteration; ``latest`` keeps the newest value of each
    # metric for the progress bar and callbacks.
    def record_metrics(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            value = float(value)
            self._row[key] = value
            self.latest[key] = value

    def _flush_metrics(self) -> None:
        if self._row and self._trainer is not None:
            for logger in self.loggers:
                logger.log_metrics(dict(self._row), step=self.loop_state.iteration)
        self._row = {}

    # --- the cycle's host (gorl.stage_cycle.StageHost) ------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.trainer.world_size

    def optimizer(self, which: Which) -> torch.optim.Optimizer:
        return self.optimizers()[_OPTIMIZERS[which]].optimizer

    def optimize(self, which: Which, loss: torch.Tensor, max_norm: float | None = None) -> None:
        guarded_step(self, self.optimizers()[_OPTIMIZERS[which]], loss, max_norm, self.cycle.where(), self._guard)

    def check_finite(self) -> None:
        """Read the deferred finiteness flags of the steps just taken (CUDA runs; a no-op on CPU,
        where each step checks itself)."""
        if self._guard is not None:
            self._guard.raise_if_bad(self.cycle.where())

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over processes. On the module's device: a value computed beside CPU
        envs (dm_control) is a CPU tensor, which NCCL cannot reduce (multi-GPU DDP)."""
        return self.trainer.strategy.reduce(value.to(self.device), reduce_op="mean")

    def evaluate_returns(self) -> tuple[float, float]:
        returns = evaluate(self.eval_env, self.policy, self.loop_cfg.eval_max_steps, self.loop_cfg.eval_deterministic)
        mean = float(self.trainer.strategy.reduce(returns.mean().to(self.device), reduce_op="mean"))
        return mean, float(returns.std()) if returns.numel() > 1 else 0.0

    def encoder_rollout(self) -> TensorDictBase:
        rollouts = []
        for _ in range(self.encoder.rollouts_per_update):  # same weights for all of them (Brax's PPO)
            rollouts.append(self._next_rollout())
            self._track_returns(rollouts[-1])  # per env copy, so per rollout
        rollout = rollouts[0] if len(rollouts) == 1 else torch.cat(rollouts, 0)
        # One host read per update: the observation check covers all its rollouts at once.
        check_observations(rollout, self.cycle.where())
        rollout = self._to_module_device(rollout)
        self.last_rollout = rollout  # for callbacks (e.g. probe states of the distribution logger)
        self._record_train_return()
        return rollout

    def training_env_batch(self) -> TensorDictBase:
        rollout = self._next_rollout()
        check_observations(rollout, self.cycle.where())
        return rollout

    def refit_env(self, stage: int) -> EnvBase:
        """The env the decoder's data is collected on (``refinement.collect_from: reset``): its own
        ``refinement.collect_envs`` copies, built at the first refit, seeded anew per stage (so a
        resumed run collects what an uninterrupted one would)."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        seed = self.seed + 10_000 * rank + 2_000_000
        if "refit" not in self._envs:
            self._envs["refit"] = make_env(self.env_cfg, seed=seed, num_envs=self.refine_cfg.collect_envs, num_workers=1)
        self._envs["refit"].set_seed(seed + 1_000 * stage)
        return self._envs["refit"]

    def _next_rollout(self) -> TensorDictBase:
        # Collection runs torch on one thread: the acting networks' matrices are too small to gain
        # from a second one, and its OpenMP wake-ups and spin-waits take the core an env worker
        # process steps physics on (on 2 cores with 2 env processes, collection ran at about half
        # the speed with 2 torch threads: benchmarks/RESULTS.md). Updates get them back.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            rollout = next(self._batches)
        except RuntimeError as err:
            if "process failed" in str(err):
                raise EnvWorkerError(f"an env worker process died ({err}); its own error is printed above") from None
            raise
        finally:
            torch.set_num_threads(threads)
        return rollout

    def _to_module_device(self, data: TensorDictBase) -> TensorDictBase:
        """The rollout's one host-to-device crossing: envs (dm_control) fill CPU tensors, the
        update runs where the networks are. Pinned first so the copy is a single DMA transfer; on an
        all-CPU run (or MJX on the GPU, whose outputs are already there) nothing moves."""
        if data.device == self.device:
            return data
        if self.device.type == "cuda" and data.device is not None and data.device.type == "cpu":
            data = data.pin_memory()
        return data.to(self.device, non_blocking=True)

    # --- training-episode returns (train/return) ---------------------------------------------------
    def _track_returns(self, rollout: TensorDictBase) -> None:
        """Accumulate the (unscaled) returns of training episodes that end in a rollout ``[*batch, T]``.

        Vectorised over time and kept on the rollout's device: no host read per step (a GPU run's
        rollouts never leave the GPU). ``train/return`` is then the mean over the episodes that
        ended since the last logged row, and absent from rows where none ended (no stale value).
        """
        data = rollout.reshape(-1, rollout.shape[-1])
        reward = data["next", "reward"].reshape(data.shape).float()
        done = data["next", "done"].reshape(data.shape)
        n = data.shape[0]
        if self._ep_return is None or self._ep_return.shape[0] != n or self._ep_return.device != reward.device:
            self._ep_return = torch.zeros(n, device=reward.device)
        ended, self._ep_return = episode_returns(reward, done, self._ep_return)
        total = (ended * done).sum()
        count = done.sum()
        f = self._finished
        f["sum"] = total if f["sum"] is None else f["sum"] + total
        f["count"] = count if f["count"] is None else f["count"] + count

    def _record_train_return(self) -> None:
        f = self._finished
        if f["count"] is None:
            return
        total, count = torch.stack([f["sum"].float(), f["count"].float()]).tolist()  # one host read per update
        self._finished = {"sum": None, "count": None}
        if count > 0:
            self.record_metrics({"train/return": total / count})

    # --- checkpoints: the loop's state travels with the weights -----------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lane evaluations still running end now (side lanes alone), so the checkpoint holds their
        # results and its best encoder has seen them (gorl/eval_lanes.py).
        self.cycle.finish_lane_evaluations_for_checkpoint()
        # Metric rows up to the checkpoint go to disk with it (CSV buffers 100 rows), so a killed run
        # leaves its curve up to where a resume picks it up again.
        for logger in self.loggers:
            logger.save()
        # Everything the loop adds is stored as CPU tensors, so a checkpoint written on a GPU loads
        # on a CPU-only machine (Lightning's own state_dict is mapped to the CPU when loaded).
        checkpoint["gorl_loop"] = to_cpu({
            **self.cycle.state_dict(),  # "state", "best_encoder", "fit"
            "rng": rng_state(),
            "encoder": self.encoder.checkpoint_state(),  # e.g. SAC's replay buffer
        })
        checkpoint[META_KEY] = policy_meta(self)  # what gorl.load_policy rebuilds the acting chain from

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("gorl_loop")
        if saved is None:
            raise CheckpointError("not a GoRL checkpoint (no 'gorl_loop' entry)")
        mine = self.state_dict()
        for key, value in checkpoint.get("state_dict", {}).items():
            if key not in mine or mine[key].shape != value.shape:
                found = "missing here" if key not in mine else f"shape {tuple(value.shape)} vs {tuple(mine[key].shape)} here"
                raise CheckpointError(f"checkpoint does not match this config: {key} ({found})")
        self.cycle.load_state_dict(saved)
        # Put back at train start, once the envs and the collector are built (their construction and
        # first resets draw from the process's generators), so a resumed run draws what an
        # uninterrupted one would from there on (a refit resumed mid-fit takes the same batches).
        self._rng_at_resume = saved.get("rng")
        if saved.get("encoder") is not None:
            self.encoder.load_checkpoint_state(saved["encoder"])
            if getattr(self.encoder, "buffer_size", 0):
                rank_zero_info(f"[gorl] restored {self.encoder.buffer_size:,} replay transitions from the checkpoint")

    # --- gorl validate ----------------------------------------------------------------------------
    # ``gorl validate --config X --ckpt_path C`` is LightningCLI's validate subcommand: one
    # "validation batch" = one deterministic episode on each of ``env.eval_envs`` env copies (per
    # rank), with the seeds of the evaluations during fit, so a checkpoint's score is reproducible.
    # The policy is the checkpoint's: its loop state picks the decoder (identity in stage 0) and its
    # weights are the encoder as saved. Fit never enters this loop (it evaluates inside its own
    # iterations): there the val dataloader is empty and Lightning skips validation.

    def _setup_validate(self) -> None:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        seed = self.seed + 10_000 * rank + 1_000_000
        self._envs["eval"] = make_env(self.env_cfg, seed=seed, num_envs=self.env_cfg.eval_envs, num_workers=1)

    def val_dataloader(self) -> DataLoader | list:
        if self.trainer.state.fn != "validate":
            return []
        return DataLoader(range(1), batch_size=None)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        returns = evaluate(self.eval_env, self.policy, self.loop_cfg.eval_max_steps, self.loop_cfg.eval_deterministic).to(self.device)
        returns = self.all_gather(returns).reshape(-1)  # every rank's episodes
        mean = float(returns.mean())
        std = float(returns.std()) if returns.numel() > 1 else 0.0
        self.log_dict({"eval/return": mean, "eval/return_std": std, "eval/episodes": float(returns.numel())}, sync_dist=True, batch_size=1)
        st = self.loop_state
        self.print(
            f"eval/return {mean:.4g} ± {std:.3g} over {returns.numel()} {'deterministic' if self.loop_cfg.eval_deterministic else 'stochastic'} episodes "
            f"(stage {st.stage}, {st.frames:,} env frames, {self.env_cfg.task if self.env_cfg.factory is None else self.env_cfg.factory})"
        )
