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
from gorl.encoders import LatentSAC
from gorl.errors import CheckpointError
from tests.conftest import CONF, run_gorl
from tests.test_loop import smoke_system


def _trained(tmp_path, stop_stage: int | None, sac: bool = False):
    system = smoke_system()
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


@pytest.mark.parametrize("stop_stage,sac", [(0, False), (None, False), (None, True)], ids=["ppo-stage0", "ppo-refitted", "sac-refitted"])
def test_loaded_and_exported_policies_act_as_the_framework(tmp_path, stop_stage, sac):
    system, path = _trained(tmp_path, stop_stage, sac)
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


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        gorl.load_policy(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        gorl.load_policy(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a GoRL checkpoint"):
        gorl.load_policy(tmp_path / "other.ckpt")


def test_gorl_export_cli_writes_a_plain_torch_file(tmp_path):
    assert run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--curves", "false", cwd=tmp_path).returncode == 0
    ckpt = tmp_path / "runs" / "gorl" / "version_0" / "checkpoints" / "last.ckpt"
    res = run_gorl("export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "p.pt"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stage 2 policy of toy-bandit" in res.stdout
    module = torch.jit.load(str(tmp_path / "p.pt"))
    action = module(torch.zeros(3, gorl.load_policy(ckpt).obs_dim), torch.zeros(3, 1))
    assert action.shape == (3, 1) and torch.isfinite(action).all()
    res = run_gorl("export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "q.pt"), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().startswith("gorl: error: checkpoint") and "does not exist" in res.stderr
