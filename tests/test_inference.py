"""Using a trained policy: ``gorl.load_policy`` and the TorchScript export act exactly as the
framework's own acting path, on the same observations and noise, for stage 0 and for a refitted
stage, for the PPO and the SAC encoder; bad checkpoints are one clear error."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

import gorl
from gorl.decoders import DiffusionDecoder
from gorl.encoders import LatentSAC
from gorl.errors import CheckpointError
from tests.conftest import run_gorl
from tests.test_loop import smoke_system


def _trained(tmp_path, stop_stage: int | None, sac: bool = False, bounded: bool = False, first: bool = False):
    """(system, checkpoint) of the smoke plan trained in this process up to ``stop_stage`` (None: to
    its end), with the SAC encoder if ``sac``, the bounded action semantics if ``bounded``, a first
    decoder if ``first``; tests get it through tests/conftest.py's ``trained``."""
    system = smoke_system()
    if first:  # model.first_decoder: a diffusion decoder fitted on stage 0's data, acting in stage 1
        system = type(system)(env=system.env_cfg, encoder=partial(system.encoder.__class__, actor_hidden=[16, 16], critic_hidden=[32, 32],
                                                                  unroll=8, epochs=2, minibatch_size=64),
                              decoder=system._make_decoder, loop=system.loop_cfg, refinement=system.refine_cfg, seed=0,
                              first_decoder=partial(DiffusionDecoder, hidden=[16, 16]))
    if bounded:  # the authors' humanoid action semantics: tanh-normal latent, clipped decoder output
        system = type(system)(env=system.env_cfg, encoder=partial(system.encoder.__class__, actor_hidden=[16, 16], critic_hidden=[32, 32],
                                                                  unroll=8, epochs=2, minibatch_size=64, tanh_entropy=True),
                              decoder=system._make_decoder, loop=system.loop_cfg,
                              refinement=replace(system.refine_cfg, target_clip=1.0), seed=0, action_semantics="bounded")
    if sac:
        system = type(system)(env=system.env_cfg, encoder=partial(LatentSAC, actor_hidden=[16, 16], critic_hidden=[32, 32], batch_size=32,
                                                                  buffer_size=4096, learning_starts=64),
                              decoder=system._make_decoder, loop=replace(system.loop_cfg, stages=[256, 128, 128]),
                              refinement=system.refine_cfg, seed=0)

    class Stop(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            st = module.loop_state
            if stop_stage is not None and st.stage == stop_stage and st.phase == "encoder" and st.stage_frames > 0:
                trainer.should_stop = True

    pl.seed_everything(0)
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Stop()])
    trainer.fit(system)
    path = tmp_path / f"stage{stop_stage}{'-sac' if sac else ''}.ckpt"
    trainer.save_checkpoint(path)
    return system, path


def _framework_actions(system, obs: torch.Tensor, deterministic: bool, seed: int = 0) -> torch.Tensor:
    td = TensorDict({"observation": obs}, batch_size=[len(obs)])
    torch.manual_seed(seed)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM):
        return system.policy(td)["action"]


@pytest.mark.parametrize("stop_stage,sac,bounded,first", [(0, False, False, False), (None, False, False, False), (None, True, False, False),
                                                           (None, False, True, False), (1, False, False, True)],
                         ids=["ppo-stage0", "ppo-refitted", "sac-refitted", "bounded-ppo-refitted", "first-decoder-stage1"])
def test_loaded_and_exported_policies_act_as_the_framework(tmp_path, trained, stop_stage, sac, bounded, first):
    system, path = trained(stop_stage, sac, bounded, first)
    expected_stage = system.loop_state.stage
    assert (expected_stage == 0) == (stop_stage == 0)
    policy = gorl.load_policy(path)
    assert policy.stage == expected_stage and policy.obs_dim == system.obs_dim and policy.act_dim == system.act_dim
    obs = torch.randn(64, system.obs_dim) * 2
    system.eval()
    want = _framework_actions(system, obs, deterministic=True)
    assert torch.allclose(policy.act(obs), want, atol=1e-6)
    # The same noise: the framework draws randn_like(loc) after seeding; hand the loaded policy that draw.
    torch.manual_seed(3)
    noise = torch.randn(64, system.act_dim)
    want_stochastic = _framework_actions(system, obs, deterministic=False, seed=3)
    assert torch.allclose(policy.act(obs, deterministic=False, noise=noise), want_stochastic, atol=1e-6)
    assert not torch.allclose(want_stochastic, want)
    # NumPy in, NumPy out, one observation or a batch.
    single = policy.act(obs[0].numpy())
    assert isinstance(single, np.ndarray) and single.shape == (system.act_dim,) and np.allclose(single, want[0].numpy(), atol=1e-6)

    exported = torch.jit.load(str(policy.export(tmp_path / "policy.pt")))
    assert torch.allclose(exported(obs, torch.zeros(64, system.act_dim)), want, atol=1e-6)
    assert torch.allclose(exported(obs, noise), want_stochastic, atol=1e-6)
    assert torch.allclose(exported(obs[:5], torch.zeros(5, system.act_dim)), want[:5], atol=1e-6)  # any batch size
    if first:  # stage 1 acts with the first refit's decoder type, and so does the loaded policy
        assert type(system.acting_decoder()).__name__ == "DiffusionDecoder" and type(policy.chain.decoder).__name__ == "DiffusionDecoder"
    if bounded:  # the chain itself: decoded from tanh(latent), clipped (not squashed) to the box
        td = TensorDict({"observation": obs}, batch_size=[len(obs)])
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            out = system.policy(td)
        torch.testing.assert_close(out["squashed_latent"], torch.tanh(out["latent"]))
        torch.testing.assert_close(out["pre_tanh"], system.acting_decoder().decode(obs, out["squashed_latent"]))
        torch.testing.assert_close(out["action"], out["pre_tanh"].clamp(-1, 1))  # toy-bandit's box is [-1, 1]


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        gorl.load_policy(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        gorl.load_policy(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a GoRL checkpoint"):
        gorl.load_policy(tmp_path / "other.ckpt")


def test_gorl_export_cli_writes_a_plain_torch_file(tmp_path, trained, gorl_in_process):
    _, ckpt = trained(None)  # the smoke plan to its end (test_cli.py checks the checkpoint `gorl fit` writes)
    res = run_gorl("export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "p.pt"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stage 2 policy of toy-bandit" in res.stdout
    module = torch.jit.load(str(tmp_path / "p.pt"))
    action = module(torch.zeros(3, gorl.load_policy(ckpt).obs_dim), torch.zeros(3, 1))
    assert action.shape == (3, 1) and torch.isfinite(action).all()
    res = gorl_in_process("export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "q.pt"))
    assert res.returncode == 2 and res.stderr.strip().startswith("gorl: error: checkpoint") and "does not exist" in res.stderr


def test_policy_api_takes_what_users_hold_and_refuses_what_it_cannot_act_on(tmp_path, trained):
    """NumPy or torch, float32 or float64, one observation or a batch, or a dm_control observation
    dict; detached outputs; a wrong shape or a NaN is one error naming what was expected."""
    from collections import OrderedDict

    system, path = trained(None, False)
    policy = gorl.load_policy(path)
    n, d, a = 3, policy.obs_dim, policy.act_dim
    obs = torch.randn(n, d)
    want = policy.act(obs)
    assert isinstance(want, torch.Tensor) and not want.requires_grad and want.shape == (n, a)
    # float64, NumPy, lists, int dtypes: computed in float32, same actions.
    assert torch.allclose(policy.act(obs.double()), want, atol=1e-6)
    got = policy.act(obs.numpy().astype(np.float64))
    assert isinstance(got, np.ndarray) and np.allclose(got, want.numpy(), atol=1e-6)
    assert np.allclose(policy.act(obs[0].tolist()), want[0].numpy(), atol=1e-6)
    assert policy.act(np.zeros(d, dtype=np.int64)).shape == (a,)
    # A dm_control observation dict, flattened in the dict's order, single or batched entries.
    split = OrderedDict(first=obs[0, :1].numpy().astype(np.float64), rest=obs[0, 1:].numpy().reshape(1, d - 1))
    assert np.allclose(policy.act(split), want[0].numpy(), atol=1e-6)
    batched = OrderedDict(first=obs[:, :1].numpy(), rest=obs[:, 1:].numpy())
    assert np.allclose(policy.act(batched), want.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=rf"entries \{{'x': \(2, {d + 1}\)\}} flattens to {2 * d + 2} values: this policy takes {d}"):
        policy.act({"x": np.zeros((2, d + 1))})
    # Wrong shapes name the received shape and the expected one.
    with pytest.raises(ValueError, match=rf"observation of shape \(3, {d + 1}\): this policy takes \[{d}\] or \[n, {d}\]"):
        policy.act(np.zeros((3, d + 1)))
    with pytest.raises(ValueError, match=rf"observation of shape \(2, 3, {d}\)"):
        policy.act(np.zeros((2, 3, d)))
    with pytest.raises(ValueError, match=rf"noise of shape \(5,\): observations of shape \(3, {d}\) take noise of shape \[3, {a}\]"):
        policy.act(obs, deterministic=False, noise=np.zeros(5))
    # Non-finite observations raise instead of acting.
    bad = obs.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values \(rows \[1\]\)"):
        policy.act(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        policy.act(np.full(d, np.inf))

    # The exported TorchScript: the same rules, in TorchScript, with outputs that .numpy() takes.
    module = torch.jit.load(str(policy.export(tmp_path / "policy.pt")))
    out = module(obs)
    assert not out.requires_grad and np.allclose(out.numpy(), want.numpy(), atol=1e-6)
    assert torch.allclose(module(obs.double()), want, atol=1e-6)
    assert torch.allclose(module(obs[0]), want[0], atol=1e-6)
    assert torch.allclose(module(obs, torch.zeros(n, a)), want, atol=1e-6)
    for call, message in [(lambda: module(torch.zeros(3, d + 1)), f"observation of shape [3, {d + 1}]: this policy takes [{d}] or [n, {d}]"),
                          (lambda: module(obs, torch.zeros(5)), f"noise of shape [5]: observations of shape [3, {d}] take noise of shape [3, {a}]"),
                          (lambda: module(bad), "observation has NaN or infinite values")]:
        with pytest.raises(Exception) as info:
            call()
        assert message in str(info.value)


def test_dm_control_observation_dicts_flatten_as_the_training_env_does():
    """``flatten_observation`` (what ``Policy.act`` does with a dict) gives the training env's vector
    for a real dm_control observation with several entries of different shapes."""
    from dm_control import suite

    from gorl.envs.factory import EnvConfig, make_env
    from gorl.inference import flatten_observation

    env = make_env(EnvConfig(task="walker-walk", num_envs=1), seed=7)  # orientations [14], height [], velocity [9]
    ours = env.reset()["observation"][0].numpy()
    raw = suite.load("walker", "walk", task_kwargs={"random": 7}).reset().observation
    assert len(raw) == 3 and np.ndim(raw["height"]) == 0
    assert np.allclose(flatten_observation(raw, len(ours)), ours, atol=1e-6)
    env.close()
