"""The authors' current GoRL recipe, copied by hand from bennidict23/GoRL at commit
8a0209c5c3e54786f5ee889ffb7852f296d2c392 (the ICML 2026 release), dm_control and humanoid profiles:

- ``configs/methods/gorl_fm.toml`` and ``configs/methods/gorl_diffusion.toml``: ``[ppo]``,
  ``[ppo.stage0]``, ``[ppo.later_stages]``, ``[profile_overrides.dm_control.*]``, ``[collection]``,
  ``[decoder]``, ``[evaluation]``;
- ``configs/tasks/{CheetahRun,FingerSpin,FingerTurnHard,FishSwim,HopperStand,WalkerWalk}.toml``:
  task-level sections and ``[method_overrides.<method>.*]``;
- ``configs/tasks/{HumanoidStand,HumanoidRun}.toml`` with the methods' ``[profile_overrides.humanoid.*]``
  (the ``HUMANOID_*`` tables; how their humanoid pipeline runs: ``docs/humanoid_recipes.md``).

Their precedence (``src/gorl/config.py``, ``load_run_config`` / ``resolve_stage_settings``): the
method file, then the task's top-level sections, then the method's dm_control profile overrides,
then the task's ``method_overrides``; per stage, base keys < ``stage0`` / ``later_stages`` <
``stage{K}`` (by level, whichever file set it). :func:`authors_ppo` implements exactly that on the
tables below, so the test compares our resolved configs with their resolution, cell by cell.

Their names are kept here (``learning_rate``, ``z_regularization``, ...); ``tests/test_recipes.py``
maps them onto ours. Facts only: no code of theirs.
"""

from __future__ import annotations

# --- configs/methods/*.toml, with [profile_overrides.dm_control] merged as their loader does ------
METHOD_PPO = {
    "gorl_fm": {
        "base": {"discounting": 0.995, "entropy_cost": 0.01, "gae_lambda": 0.95, "reward_scaling": 10.0, "unroll_length": 30,
                 "num_updates_per_batch": 16, "fresh_encoder_each_stage": True,
                 "observation_stats_accumulation": "cumulative", "observation_stats_timing": "rollout_consistent"},
        "stage0": {"learning_rate": 0.001, "clip_epsilon": 0.15, "z_regularization": 0.0005, "max_grad_norm": 0.5, "policy_scale_cap": 10.0},
        "later_stages": {"learning_rate": 0.001, "clip_epsilon": 0.3, "z_regularization": 0.001, "max_grad_norm": 0.5, "policy_scale_cap": 10.0},
    },
    "gorl_diffusion": {
        "base": {"discounting": 0.995, "entropy_cost": 0.01, "gae_lambda": 0.95, "reward_scaling": 10.0, "unroll_length": 30,
                 "num_updates_per_batch": 16, "fresh_encoder_each_stage": False,
                 "observation_stats_accumulation": "cumulative", "observation_stats_timing": "rollout_consistent"},
        "stage0": {"learning_rate": 0.001, "clip_epsilon": 0.15, "z_regularization": 0.0005, "max_grad_norm": 0.5, "policy_scale_cap": 10.0},
        # [ppo.later_stages] learning_rate 0.001 is overridden by the profile's 0.0001.
        "later_stages": {"learning_rate": 0.0001, "clip_epsilon": 0.15, "z_regularization": 0.001, "max_grad_norm": 0.5, "policy_scale_cap": 10.0},
        "stage1": {"learning_rate": 0.0003},
    },
}

METHOD_DECODER = {
    "gorl_fm": {"type": "fm", "hidden_sizes": [128, 128, 128, 128], "train_steps": 50000, "batch_size": 8192, "learning_rate": 0.0003,
                "samples_per_action": 8, "target_clip": 3.0, "checkpoint_metric": "val_loss", "initialization": "fresh",
                "split_unit": "episode", "batch_sampling": "with_replacement", "pairwise_loss_weight": 0.0},
    "gorl_diffusion": {"type": "diffusion", "hidden_sizes": [64, 64, 64, 64], "epochs": 50, "batch_size": 8192, "learning_rate": 0.0003,
                       "diffusion_steps": 10, "target_clip": 3.0, "checkpoint_metric": "val_loss", "initialization": "fresh",
                       "split_unit": "episode", "batch_sampling": "with_replacement", "pairwise_loss_weight": 0.001,
                       # decoders.py defaults of the dm_control diffusion decoder
                       "schedule": "linear_alpha_bar", "output_scale": 0.25, "samples_per_action": 8},
}

COLLECTION = {"episodes": 4096, "stochastic": True, "num_envs": 64, "episode_length": 1000, "from_reset": True}  # collection.py collect_dataset
EVALUATION = {"episodes": 128, "deterministic": True, "num_evals": 10}
STAGE_STEPS = [60_000_000, 60_000_000, 30_000_000, 30_000_000]

# --- configs/tasks/*.toml ---------------------------------------------------------------------------
TASK_PPO = {  # task-level [ppo] (all methods)
    "FingerSpin": {"base": {"discounting": 0.95}},
}
METHOD_OVERRIDES_PPO = {  # [method_overrides.<method>.ppo(.stageK|.later_stages)]
    ("FingerTurnHard", "gorl_fm"): {"later_stages": {"max_grad_norm": 1.0}, "stage3": {"z_regularization": 0.01}},
    ("FishSwim", "gorl_fm"): {"base": {"observation_stats_accumulation": "legacy_batch_only", "observation_stats_timing": "legacy_pre_update"}},
    ("FishSwim", "gorl_diffusion"): {"stage3": {"entropy_cost": 0.005}},
    ("HopperStand", "gorl_diffusion"): {"stage0": {"observation_stats_accumulation": "legacy_batch_only", "observation_stats_timing": "legacy_pre_update"},
                                        "stage1": {"encoder_initialization": "fresh"}},
    ("WalkerWalk", "gorl_fm"): {"later_stages": {"encoder_initialization": "gaussian_warm_value", "z_regularization": 0.003, "max_grad_norm": 1.0},
                                "stage3": {"learning_rate": 0.0003}},
}
METHOD_OVERRIDES_DECODER = {
    ("FingerSpin", "gorl_fm"): {"checkpoint_metric": "val_endpoint_mse"},
    ("FishSwim", "gorl_fm"): {"checkpoint_metric": "val_endpoint_mse"},
    ("HopperStand", "gorl_fm"): {"hidden_sizes": [64, 64, 64, 64], "target_clip": 0.0},
}

TASKS = {"CheetahRun": "cheetah-run", "FingerSpin": "finger-spin", "FingerTurnHard": "finger-turn_hard",
         "FishSwim": "fish-swim", "HopperStand": "hopper-stand", "WalkerWalk": "walker-walk"}


def authors_ppo(task: str, method: str, stage: int) -> dict:
    """Their resolved PPO settings of ``stage`` (their precedence, see the module docstring)."""
    layers = [METHOD_PPO[method], TASK_PPO.get(task, {}), METHOD_OVERRIDES_PPO.get((task, method), {})]
    values: dict = {}
    for level in ("base", "stage0" if stage == 0 else "later_stages", f"stage{stage}"):
        for layer in layers:
            values.update(layer.get(level, {}))
    if stage == 0:
        values["encoder_initialization"] = "fresh"  # stage 0 always starts fresh
    elif "encoder_initialization" not in values:
        values["encoder_initialization"] = "fresh" if values["fresh_encoder_each_stage"] else "warm_start"
    return values


def authors_decoder(task: str, method: str) -> dict:
    return {**METHOD_DECODER[method], **METHOD_OVERRIDES_DECODER.get((task, method), {})}


# --- Humanoid profile: configs/tasks/Humanoid{Stand,Run}.toml and [profile_overrides.humanoid.*] ------
# Under ``profile = "humanoid"`` their dm_control profile tables do not apply (``load_run_config``
# merges only the task's declared profile): no z_regularization, no max_grad_norm unless a task sets
# one. Their teacher (a Brax PPO run on their stage-0 PPO values) comes before the latent stages.
HUMANOID_TASKS = {"HumanoidStand": "humanoid-stand", "HumanoidRun": "humanoid-run"}
HUMANOID_STAGE_STEPS = {"HumanoidStand": [60_000_000, 60_000_000, 30_000_000, 30_000_000],
                        "HumanoidRun": [60_000_000, 60_000_000]}
HUMANOID_TEACHER_REQUESTED_STEPS = 180_000_000
HUMANOID_TEACHER_ACTUAL_STEPS = 185_794_560  # their teacher_actual_env_steps
HUMANOID_PPO = {  # method [ppo.stage0] / [ppo.later_stages] learning rates, then [profile_overrides.humanoid.ppo.*]
    "stage0": {"learning_rate": 0.001, "clip_epsilon": 0.3},
    "later_stages": {"learning_rate": 0.001, "clip_epsilon": 0.3},
}
HUMANOID_METHOD_OVERRIDES_PPO = {
    ("HumanoidStand", "gorl_fm"): {"later_stages": {"learning_rate": 0.0003}},
    ("HumanoidStand", "gorl_diffusion"): {"stage1": {"learning_rate": 0.0003},
                                          "stage2": {"learning_rate": 0.0001, "max_grad_norm": 0.5},
                                          "stage3": {"learning_rate": 0.0001, "max_grad_norm": 0.5}},
    ("HumanoidRun", "gorl_fm"): {"later_stages": {"learning_rate": 0.001}},
    ("HumanoidRun", "gorl_diffusion"): {"stage1": {"learning_rate": 0.001}},
}
HUMANOID_TRAINING = {  # [method_overrides.<method>.training]
    ("HumanoidStand", "gorl_fm"): {"encoder_handoff": "best", "stage0_encoder_initialization": "fresh"},
    ("HumanoidStand", "gorl_diffusion"): {"encoder_handoff": "best", "stage0_encoder_initialization": "fresh"},
    ("HumanoidRun", "gorl_fm"): {"encoder_handoff": "best", "stage0_encoder_initialization": "teacher_warm_start"},
    ("HumanoidRun", "gorl_diffusion"): {"encoder_handoff": "final", "stage0_encoder_initialization": "teacher_warm_start"},
}
HUMANOID_DECODER_PROFILE = {  # every humanoid fit: gorl_fm.toml fm:114-117, HumanoidStand.toml Stand:97-98, 107, 125, HumanoidRun.toml Run:71-73
    "zero_final_layer": False, "split_unit": "transition", "batch_sampling": "epoch_permutation",
}
HUMANOID_DECODER = {  # resolved per decoder stage K (K = 0: the fit on the teacher's data)
    ("HumanoidStand", "gorl_fm"): {
        "base": {"type": "fm", "hidden_sizes": [128] * 4, "early_stopping_patience": 20, **HUMANOID_DECODER_PROFILE},
        "stage0": {"epochs": 100, "initialization": "fresh", "pairwise_loss_weight": 0.0},
        "later_stages": {"epochs": 20, "initialization": "warm"},
        "stage1": {"pairwise_loss_weight": 0.1, "warm_observation_stats_mode": "cumulative"},
        "stage2": {"pairwise_loss_weight": 100.0, "warm_observation_stats_mode": "frozen"},
        "stage3": {"pairwise_loss_weight": 100.0, "warm_observation_stats_mode": "frozen"}},
    ("HumanoidStand", "gorl_diffusion"): {
        "base": {"type": "diffusion", "hidden_sizes": [128] * 4, "early_stopping_patience": 20, **HUMANOID_DECODER_PROFILE},
        "stage0": {"type": "fm", "epochs": 100, "initialization": "fresh", "pairwise_loss_weight": 0.0},
        "later_stages": {"type": "diffusion", "epochs": 50, "initialization": "warm", "pairwise_loss_weight": 0.1,
                         "diffusion_schedule": "cosine_alpha_bar", "diffusion_parameterization": "epsilon", "output_scale": 1.0},
        "stage1": {"type": "diffusion", "epochs": 50, "initialization": "fresh", "pairwise_loss_weight": 0.1},
        "stage2": {"warm_observation_stats_mode": "legacy_new_batch"},
        "stage3": {"warm_observation_stats_mode": "legacy_new_batch"}},
    ("HumanoidRun", "gorl_fm"): {
        "base": {"type": "fm", "hidden_sizes": [128] * 4, "early_stopping_patience": 20, "epochs": 100,
                 "initialization": "fresh", "pairwise_loss_weight": 0.0, **HUMANOID_DECODER_PROFILE}},
    ("HumanoidRun", "gorl_diffusion"): {
        "base": {"type": "diffusion", "hidden_sizes": [128] * 4, "early_stopping_patience": 20, "epochs": 50,
                 "initialization": "fresh", "pairwise_loss_weight": 0.0, "diffusion_schedule": "cosine_alpha_bar",
                 "diffusion_parameterization": "epsilon", "output_scale": 1.0, **HUMANOID_DECODER_PROFILE}},
}
HUMANOID_EPISODES = {  # (teacher_episodes, episodes of the later refits)
    "HumanoidStand": (1024, 128), "HumanoidRun": (1024, 1024),
}
HUMANOID_TEACHER_MIN_RETURN = {"HumanoidStand": 60.0, "HumanoidRun": 15.0}  # teacher_dataset_min_return_mean
HUMANOID_TEACHER_DATA = "final"  # pipeline.py: the teacher's data come from its final state (decoder_data_selection)
HUMANOID_TARGET_CLIP = 1.0  # [profile_overrides.humanoid.decoder] target = "action_bounded", target_clip (fm:112-113)
HUMANOID_EVAL_DETERMINISTIC = False  # [profile_overrides.humanoid.evaluation] deterministic (fm:122-123, diff:121-122)


def brax_actual_steps(requested: int, update_frames: int = 983_040, eval_intervals: int = 9) -> int:
    """Frames a Brax PPO run of ``requested`` frames takes: whole updates in each of the 9 intervals
    between its 10 evaluations (their ``_resolved_actual_steps``, src/gorl/humanoid/pipeline.py)."""
    per_interval = -(-requested // (eval_intervals * update_frames))
    return eval_intervals * per_interval * update_frames


def _resolve_staged(layers: list[dict], stage: int) -> dict:
    values: dict = {}
    for level in ("base", "stage0" if stage == 0 else "later_stages", f"stage{stage}"):
        for layer in layers:
            values.update(layer.get(level, {}))
    return values


def authors_humanoid_ppo(task: str, method: str, stage: int) -> dict:
    """Their resolved PPO settings of latent stage ``stage`` (their teacher uses stage 0's);
    ``max_grad_norm`` is ``None`` where nothing sets it (Brax's default)."""
    values = {"max_grad_norm": None}
    values.update(_resolve_staged([HUMANOID_PPO, HUMANOID_METHOD_OVERRIDES_PPO[(task, method)]], stage))
    return values


def authors_humanoid_decoder(task: str, method: str, stage: int) -> dict:
    return _resolve_staged([HUMANOID_DECODER[(task, method)]], stage)
