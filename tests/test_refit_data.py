"""The decoder's data: complete episodes from env reset, by the stage's best encoder, as many as
configured (the authors' ``collect_dataset``, src/gorl/algorithms/collection.py @8a0209c)."""

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

import gorl.stage_cycle
import gorl.system
from gorl.decoders import FlowDecoder
from gorl.encoders import EncoderModule
from gorl.envs.factory import EnvConfig
from gorl.errors import ConfigError
from gorl.loop import LoopConfig
from gorl.networks import ActionSquash
from gorl.policy import LatentPolicy
from gorl.refinement import RefinementConfig, collect_from_reset, decoder_pairs


class ClockEnv(EnvBase):
    """Observation = steps since reset; copy i's episode ends (terminates) after ``3 + i % 4`` steps,
    so a rollout that does not start at reset, or cuts an episode, shows in the observations."""

    def __init__(self, num_envs: int = 8) -> None:
        super().__init__(batch_size=torch.Size([num_envs]), device="cpu")
        n = num_envs
        self.observation_spec = Composite(observation=Unbounded((n, 1), dtype=torch.float32), shape=(n,))
        self.action_spec = Bounded(-1.0, 1.0, (n, 1), dtype=torch.float32)
        self.reward_spec = Unbounded((n, 1), dtype=torch.float32)
        self.done_spec = Composite(done=Categorical(2, (n, 1), dtype=torch.bool), terminated=Categorical(2, (n, 1), dtype=torch.bool),
                                   truncated=Categorical(2, (n, 1), dtype=torch.bool), shape=(n,))
        self.length = (3 + torch.arange(n) % 4).unsqueeze(-1)
        self._t = torch.zeros(n, 1)

    def _step(self, td: TensorDictBase) -> TensorDictBase:
        self._t = self._t + 1
        end = self._t >= self.length
        return TensorDict({"observation": self._t.clone(), "reward": torch.ones_like(self._t), "terminated": end,
                           "truncated": torch.zeros_like(end), "done": end.clone()}, batch_size=self.batch_size)

    def _reset(self, td: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if td is None else td.get("_reset", None)
        mask = torch.ones(*self.batch_size, 1, dtype=torch.bool) if mask is None else mask.reshape(-1, 1)
        self._t = torch.where(mask, torch.zeros_like(self._t), self._t)
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict({"observation": self._t.clone(), "terminated": done, "truncated": done.clone(), "done": done.clone()},
                          batch_size=self.batch_size)

    def _set_seed(self, seed: int | None) -> None:
        pass


def _policy(enc: EncoderModule) -> LatentPolicy:
    return LatentPolicy(enc.act, lambda obs, z: z, ActionSquash(-torch.ones(1), torch.ones(1)))


def test_collect_from_reset_keeps_complete_first_episodes_and_the_configured_count():
    torch.manual_seed(0)
    env = ClockEnv(8)
    enc = EncoderModule(1, 1, actor_hidden=[8], critic_hidden=[8])
    data, spent = collect_from_reset(env, _policy(enc), max_steps=50, episodes=20, keep_latent=True)
    assert set(data.keys()) == {"observation", "action", "episode", "reward", "latent"}
    ids = data["episode"]
    assert torch.equal(torch.unique(ids), torch.arange(20))
    for i in range(20):
        obs = data["observation"][ids == i].reshape(-1)
        # from reset (0, 1, 2, ...) to the episode's last step, nothing before or after
        assert torch.equal(obs, torch.arange(float(3 + (i % 8) % 4)))
    # 3 batches of 8 copies stepped to the end of their first episode (the last batch keeps 4)
    assert spent == 3 * int(env.length.sum()) and len(data) == sum(3 + (i % 8) % 4 for i in range(20))
    # stochastic latents through the (identity) decoder: action = latent, spread around the mean
    assert torch.equal(data["action"], data["latent"])
    loc, scale = enc.actor_net(data["observation"])
    z = (data["latent"] - loc) / scale
    assert abs(z.mean().item()) < 0.4 and 0.6 < z.std().item() < 1.4
    # the same fields as the training-env path, without the latent unless asked for
    plain, _ = collect_from_reset(env, _policy(enc), max_steps=50, frames=30)
    assert set(plain.keys()) == set(decoder_pairs(TensorDict({"observation": torch.zeros(1, 2, 1), "pre_tanh": torch.zeros(1, 2, 1),
                                                               "collector": {"traj_ids": torch.zeros(1, 2, dtype=torch.long)},
                                                               "next": {"reward": torch.zeros(1, 2, 1)}}, batch_size=[1, 2])).keys())
    assert len(plain) == int(env.length.sum())  # frames: whole batches until >= 30
    # an episode longer than max_steps is cut there
    short, spent = collect_from_reset(env, _policy(enc), max_steps=2, episodes=8)
    assert len(short) == 16 and spent == 16


def test_refinement_config_validates_collect_from():
    assert RefinementConfig().collect_from == "reset" and RefinementConfig().collect_envs == 64
    with pytest.raises(ConfigError):
        RefinementConfig(collect_from="replay")
    with pytest.raises(ConfigError):
        RefinementConfig(collect_envs=0)


def test_refit_data_is_collected_from_reset_by_the_best_encoder(monkeypatch):
    """The stage's best encoder (here the first evaluated one), not the last-trained one, rolls
    ``refinement.episodes`` complete episodes from reset; the frames count into collect_frames."""
    returns = iter([1.0] + [0.0] * 100)  # the first evaluation is the stage's best
    monkeypatch.setattr(gorl.system, "evaluate", lambda env, policy, max_steps, deterministic=True: torch.full((8,), next(returns)))
    captured = {}

    def spy(*args, **kwargs):
        captured["out"] = collect_from_reset(*args, **kwargs)
        return captured["out"]

    monkeypatch.setattr(gorl.stage_cycle, "collect_from_reset", spy)

    class Shift(pl.Callback):
        """After the first update (and its evaluation), move the policy's mean by +3: every later
        encoder is far from the best one."""

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if module.loop_state.iteration == 1:
                captured["best"] = module.best_encoder
                with torch.no_grad():
                    module.encoder.actor_net.net[-1].bias[:1] += 3.0

    system = gorl.system.GoRLSystem(
        env=EnvConfig(task="toy-bandit", num_envs=16, eval_envs=8),
        encoder=partial(EncoderModule, actor_hidden=[16, 16], critic_hidden=[32, 32], unroll=8, epochs=1, minibatch_size=64),
        decoder=partial(FlowDecoder, hidden=[16]),
        loop=LoopConfig(stages=[512, 128], eval_every=128, eval_max_steps=10),
        refinement=RefinementConfig(episodes=24, collect_envs=16, steps=2, val_every=1, batch_size=64),
    )
    pl.seed_everything(0)
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Shift()])
    trainer.fit(system)
    data, spent = captured["out"]
    ids = data["episode"]
    assert torch.equal(torch.unique(ids), torch.arange(24))
    assert all(int((ids == i).sum()) == 10 for i in range(24))  # the bandit's whole 10-step episodes
    assert spent == 2 * 16 * 10 and system.loop_state.collect_frames == spent
    best = EncoderModule(1, 1, actor_hidden=[16, 16], critic_hidden=[32, 32])
    best.load_state_dict(captured["best"])
    with torch.no_grad():
        loc_best, scale_best = best.actor_net(data["observation"])
    z = (data["action"] - loc_best) / scale_best  # stage 0: identity decoder, action = latent
    assert abs(z.mean().item()) < 0.3 and 0.7 < z.std().item() < 1.3
