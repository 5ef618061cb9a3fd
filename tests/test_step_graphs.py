"""``model.speed.step_graphs`` (gorl/step_graphs.py) on the CPU.

A CUDA graph cannot run here, so these tests check what makes a captured step right, each with a
test that fails without it:

- the graphed paths take exactly the eager paths' steps: the PPO update (both GAE modes, across a
  change of key and a restart of the optimiser's moments) and the decoder refit (both batch
  samplings, with the pairwise term), bit for bit;
- ``mode="emulate"`` records a step at "capture" and re-runs it on the static buffers at every
  "replay", as a graph would: a value that does not reach the static buffers (this update's data, this
  step's rows) gives other weights, so the comparison with eager fails;
- the step bodies read nothing on the host (a graph cannot: it would freeze the value read at capture);
- a failed capture falls back to eager steps, said once; a non-finite step stops the update with the
  deferred guard's one line.

tests/test_cuda.py runs the real capture on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gorl.decoders import DiffusionDecoder, FlowDecoder
from gorl.errors import NonFiniteError
from gorl.refinement import DecoderFit, RefinementConfig
from gorl.step_graphs import StepGraphs
from tests.test_encoder import _encoder, _fixed_rollout


class NoHostReads(TorchDispatchMode):
    """Fails on every operator that hands a tensor's value to Python (``.item()``, ``float(t)``,
    ``bool(t)``, ``.tolist()``) or whose output shape depends on values (``nonzero``, boolean masks):
    on a GPU each is a synchronisation, and inside a CUDA graph a value frozen at capture."""

    HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.overloadpacket.__name__ in self.HOST_READS:
            raise AssertionError(f"host read in a step body: aten.{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


def _plain_optimize(opt: torch.optim.Optimizer):
    """The eager step the system takes on the CPU (gorl.optimization.guarded_step, in 32-true)."""

    def optimize(loss: torch.Tensor, max_norm: float | None = None) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        opt.step()

    return optimize


def _ppo_run(gae: str, mode: str | None, updates: int = 4, restart_at: int = 2, device: str = "cpu"):
    """Four PPO updates (observation statistics empty in the first: two keys), with the optimiser's
    moments restarted before update ``restart_at`` as a new stage does; episodes end mid-segment."""
    torch.manual_seed(0)
    enc = _encoder(gae=gae, prior_reg="l2", prior_coef=[0.0, 1e-3], max_grad_norm=0.5)
    rollouts = [_fixed_rollout(enc, seed=u) for u in range(updates)]
    enc = enc.to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3, fused=True)
    graphs = None if mode is None else StepGraphs(opt, "PPO minibatch steps", mode=mode)
    enc.use_step_graphs(graphs)
    metrics = []
    for u, rollout in enumerate(rollouts):
        if u == restart_at:
            opt.state.clear()
        rollout["next", "done"][:, 5] = True
        torch.manual_seed(100 + u)
        metrics.append(enc.train_on(rollout.to(device), _plain_optimize(opt), stage=1))
    return enc, metrics, graphs


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.fixture(scope="module")
def eager_ppo():
    return {gae: _ppo_run(gae, None) for gae in ("rollout", "minibatch")}


@pytest.mark.parametrize("gae", ["rollout", "minibatch"])
@pytest.mark.parametrize("mode", ["eager", "emulate"])
def test_graphed_ppo_updates_take_the_eager_steps(eager_ppo, gae, mode):
    ref, ref_metrics, _ = eager_ppo[gae]
    enc, metrics, graphs = _ppo_run(gae, mode)
    _same_weights(ref, enc)
    assert metrics == ref_metrics  # every diagnostic, averaged the same way
    if mode == "emulate":
        # a key with empty observation statistics, one without, and the same one again after the
        # moments' restart dropped every graph
        assert graphs.captures == 3


def _refit_run(cls, sampling: str, mode: str | None, rounds: int = 3, device: str = "cpu"):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = 256
    obs, latent = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    data = {"observation": obs, "latent": latent, "action": torch.tanh(latent + obs[:, :2])}
    from tensordict import TensorDict

    data = TensorDict(data, batch_size=[n])
    cfg = RefinementConfig(transitions=n, steps=6 * rounds, val_every=6, batch_size=32, pairwise_weight=0.1,
                           batch_sampling=sampling)
    dec = cls(3, 2, hidden=[16, 16], **({"steps": 4} if cls is FlowDecoder else {}))
    dec.fit_obs_statistics(obs)
    dec = dec.to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2, fused=True)
    graphs = None if mode is None else StepGraphs(opt, "decoder refit steps", mode=mode)
    fit = DecoderFit(cfg, data[:224].to(device), data[224:].to(device), seed=3)
    metrics = [fit.step(dec, _plain_optimize(opt), graphs=graphs) for _ in range(rounds)]
    return dec, metrics, graphs


@pytest.mark.parametrize("sampling", ["with_replacement", "epoch_permutation"])
@pytest.mark.parametrize("cls", [FlowDecoder, DiffusionDecoder])
def test_graphed_refit_steps_take_the_eager_steps(cls, sampling):
    ref, ref_metrics, _ = _refit_run(cls, sampling, None)
    dec, metrics, graphs = _refit_run(cls, sampling, "emulate")
    _same_weights(ref, dec)
    assert metrics == ref_metrics
    assert "train_pairwise" in metrics[-1] and graphs.captures == 1


def test_step_bodies_read_nothing_on_the_host(monkeypatch):
    """Every step (the PPO update in both GAE modes, a refit with the pairwise term, both samplings)
    runs under :class:`NoHostReads`; a body that reads a value is caught."""
    take_step = StepGraphs._take_step

    def watched(self, *args):  # noqa: ANN001, ANN202
        with NoHostReads():
            return take_step(self, *args)

    monkeypatch.setattr(StepGraphs, "_take_step", watched)
    for gae in ("rollout", "minibatch"):
        _ppo_run(gae, "emulate", updates=2)
    for sampling in ("with_replacement", "epoch_permutation"):
        _refit_run(FlowDecoder, sampling, "emulate", rounds=1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], fused=True)
    graphs = StepGraphs(opt, "a test", mode="emulate")
    graphs.begin("k", {"x": torch.ones(2)})
    w = opt.param_groups[0]["params"][0]
    with pytest.raises(AssertionError, match="host read"):
        graphs.step(lambda d, i: ((w * d["x"]).sum() * float((w * d["x"]).sum()), {}), {}, None)


def test_a_failed_capture_falls_back_to_eager_steps_said_once(monkeypatch, eager_ppo):
    """``mode="cuda"`` on a machine without CUDA: the capture fails, the warning says so once, and
    the update goes on with the eager steps it would have taken."""
    monkeypatch.setattr(StepGraphs, "_on_side_stream", staticmethod(lambda fn: fn()))
    with pytest.warns(UserWarning, match="CUDA graphs for the PPO minibatch steps are off for this run") as seen:
        enc, metrics, graphs = _ppo_run("minibatch", "cuda")
    assert len([w for w in seen if "are off" in str(w.message)]) == 1
    assert not graphs.enabled and graphs.captures == 0
    _same_weights(eager_ppo["minibatch"][0], enc)


def test_a_non_finite_step_stops_the_update_in_one_line():
    enc = _encoder(gae="minibatch")
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3, fused=True)
    enc.use_step_graphs(StepGraphs(opt, "PPO minibatch steps", mode="emulate", where=lambda: "encoder phase, stage 0, frame 7"))
    rollout = _fixed_rollout(enc)
    rollout["next", "reward"][0, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^non-finite loss in the encoder phase, stage 0, frame 7 \(an optimiser step"):
        enc.train_on(rollout, _plain_optimize(opt), stage=0)


def test_step_graphs_and_compile_are_one_or_the_other():
    from gorl.acceleration import SpeedConfig
    from gorl.errors import ConfigError

    with pytest.raises(ConfigError, match="set one of them"):
        SpeedConfig(step_graphs=True, compile=True)
    with pytest.raises(ConfigError, match="loss_impl: fused"):
        _encoder(loss_impl="torchrl").use_step_graphs(StepGraphs(torch.optim.Adam([torch.nn.Parameter(torch.ones(1))]), "x", mode="eager"))


def test_each_updates_data_reaches_the_graph_even_when_python_reuses_ids():
    """A new update's tensors must be copied in even when one of them is a new object at a freed
    one's address (CPython hands out ids again): what a graph holds is tracked by weak references."""
    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([w], lr=0.0, fused=True)  # lr 0: the loss is a function of the data alone
    graphs = StepGraphs(opt, "a test", mode="emulate")
    for u in range(12):
        x = torch.full((4,), float(u))
        graphs.begin("k", {"x": x})
        for _ in range(StepGraphs.WARMUP + 1):
            graphs.step(lambda d, i: ((w * d["x"]).sum(), {}), {}, None)
        assert graphs.end()["loss"] == 4.0 * u, u
        del x
