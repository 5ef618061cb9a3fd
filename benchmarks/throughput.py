"""Env steps per second of GoRL's layers against the raw simulator, measured in one run.

For each task, on the same machine and in the same process:
  (a) raw      a plain loop of ``dm_control`` ``env.step`` with random actions (one core);
  (a') raw     ``--workers`` such loops in separate processes at once: what the machine itself
               gives for that many cores (shared VMs often scale below linear), the yardstick
               for the multi-process rows;
  (b) env      our batched env (``DMControlBatchEnv``, N copies in one process) under random
               actions through ``step_and_maybe_reset``; and with ``--workers`` processes;
  (c) ppo      the full Gaussian-PPO training loop (``gorl fit`` machinery: TorchRL collector,
               GAE, clipped-PPO updates, Lightning manual optimisation), frames / wall second,
               in one process and with the batch split over ``--workers`` processes; each with
               the rate of its collection part alone (what is left is the PPO update's compute),
               and a ceiling: the loop's rate if the update cost nothing beyond its bare maths
               (same networks, minibatches, epochs and Adam in plain torch, timed here);
               The loss is ``EncoderModule.ppo_loss`` (the default); rows with TorchRL's
               ``ClipPPOLoss`` instead, with the preset's minibatches of 512 and with CleanRL's 64
               (its schedule: 320 optimiser steps per 2048 frames), show what that choice buys;
               the update alone (the loop's time less its collection's) and its bare maths alone
               bound the loop from above even if collection were free; a row with a 2x64 critic
               (CleanRL's width, instead of the preset's 2x256) shows what the critic's size costs,
               one under ``bf16-mixed`` what autocast buys on this CPU;
  (d) gorl     the same loop in a GoRL encoder phase, acting through a 10-step flow and a
               10-step diffusion decoder.
  (e) mjx      with ``--mjx``: the same batched-env measurement on the MJX backend (MuJoCo
               Playground on JAX, ``env.backend: mjx``) at each ``--mjx-envs`` batch size, with
               the seconds its first reset + step took (JAX compile; a warm persistent cache
               shortens it), for each pipeline in ``--mjx-impls``. On a GPU machine pass
               ``--mjx-device cuda`` (2048 envs is the paper's shape).
  (e') torchrl with ``--mjx-torchrl``: beside each (e) row, TorchRL's own
               ``MujocoPlaygroundWrapper`` around the very same Playground env object (same task,
               ``impl`` and model; its solver warning quieted as ours), batch size and loop,
               interleaved with (e) in every repeat. It has no time limit and no partial reset
               (``benchmarks/playground_env.py`` checks its conventions), which the loop's few
               hundred batch steps never reach, so both rows time the same physics.
Each rate is printed with its ratio to (a). Timing thresholds live here, never in unit tests.

    python benchmarks/throughput.py --tasks cheetah-run hopper-stand
    python benchmarks/throughput.py --tasks cheetah-run --env-only --mjx --mjx-envs 64 256   # backends only
    python benchmarks/throughput.py --tasks cheetah-run --env-only --mjx --mjx-impls jax --mjx-torchrl  # + TorchRL's env
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial

os.environ.setdefault("MUJOCO_GL", "egl")

import logging  # noqa: E402

import lightning.pytorch as pl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gorl.decoders import DiffusionDecoder, FlowDecoder, IdentityDecoder  # noqa: E402
from gorl.encoders import EncoderModule  # noqa: E402
from gorl.envs.factory import EnvConfig, env_dims, make_env  # noqa: E402
from gorl.loop import LoopConfig  # noqa: E402
from gorl.system import GoRLSystem  # noqa: E402

import gorl.cli  # noqa: E402,F401  (its filters of Lightning's per-run notices: pytree deprecation, cloud-logger advert)

# One Trainer per loop measurement: its "GPU available: ..." lines would bury the table.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

# The CPU PPO preset of conf/encoder/ppo_cpu.yaml.
PPO_CPU = dict(actor_hidden=[32, 32, 32, 32], critic_hidden=[256, 256], lr=3e-4, unroll=32, epochs=10, minibatch_size=512,
               gamma=0.99, clip_epsilon=0.2, max_grad_norm=0.5, entropy_coef=0.0, value_coef=0.5, reward_scale=1.0, prior_reg="none")


def raw_rate(task: str, seconds: float) -> float:
    from dm_control import suite

    from gorl.envs.dmc import _quiet_absl

    _quiet_absl()  # MuJoCo's per-load compiler deprecation notice
    domain, name = task.split("-", 1)
    env = suite.load(domain, name, task_kwargs={"random": 0})
    spec = env.action_spec()
    rng = np.random.default_rng(0)
    env.reset()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if env.step(rng.uniform(spec.minimum, spec.maximum)).last():
            env.reset()
        n += 1
    return n / (time.perf_counter() - t0)


def _raw_worker(task: str, seconds: float, out) -> None:
    out.put(raw_rate(task, seconds))


def raw_rate_parallel(task: str, workers: int, seconds: float) -> float:
    """Summed steps/s of ``workers`` raw loops running at the same time, one process each."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_raw_worker, args=(task, seconds, out)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    rates = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(rates)


def env_rate(task: str, num_envs: int, workers: int, seconds: float) -> float:
    env = make_env(EnvConfig(task=task, num_envs=num_envs, num_workers=workers), seed=0)
    td = env.reset()
    shape = env.action_spec.shape
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        td["action"] = torch.rand(shape) * 2 - 1
        _, td = env.step_and_maybe_reset(td)
        n += env.batch_size.numel()
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate


def mjx_rate(task: str, num_envs: int, impl: str, device: str, seconds: float) -> tuple[float, float]:
    """(steps/s, seconds of the first reset + step) of the MJX backend under random actions."""
    t0 = time.perf_counter()
    env = make_env(EnvConfig(task=task, num_envs=num_envs, backend="mjx", mjx_impl=impl, device=device), seed=0)
    return _batch_rate(env, t0, seconds)


def torchrl_mjx_rate(task: str, num_envs: int, impl: str, device: str, seconds: float) -> tuple[float, float]:
    """:func:`mjx_rate` of TorchRL's ``MujocoPlaygroundWrapper`` around the same Playground env
    object our backend steps (``gorl.envs.mjx._playground_env``: same model, ``impl`` and quieted
    Warp warning), so the rows differ only in the wrapper."""
    from torchrl.envs import MujocoPlaygroundWrapper

    from gorl.envs.mjx import _playground_env

    t0 = time.perf_counter()
    env = MujocoPlaygroundWrapper(_playground_env(task, impl), batch_size=[num_envs], device=device)
    env.set_seed(0)
    return _batch_rate(env, t0, seconds)


def _batch_rate(env, t0: float, seconds: float) -> tuple[float, float]:
    """(steps/s, seconds from ``t0`` through the first reset + 3 steps) of a batched JAX env under
    random actions through ``step_and_maybe_reset``."""
    td = env.reset()
    shape = env.action_spec.shape
    for _ in range(3):  # the step's compile, and the masked reset's on the first done-check
        td["action"] = torch.rand(shape, device=env.device) * 2 - 1
        _, td = env.step_and_maybe_reset(td)
    td["done"].any().item()  # JAX dispatches asynchronously: wait for the steps
    first = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        td["action"] = torch.rand(shape, device=env.device) * 2 - 1
        _, td = env.step_and_maybe_reset(td)
        n += env.batch_size.numel()
    td["done"].any().item()
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate, first


class _Clock(pl.Callback):
    """Wall time of the stage being measured (from its first iteration to the end of training), and
    the part of it spent collecting (the system logs each iteration's collection rate)."""

    def __init__(self, stage: int) -> None:
        self.stage, self.t0, self.f0, self.t1, self.f1 = stage, None, 0, None, 0
        self.collect_s = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.t0 is None and module.loop_state.stage == self.stage:
            self.t0, self.f0 = time.perf_counter(), module.loop_state.frames

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None and "perf/collect_fps" in module.latest:
            self.collect_s += module.env_cfg.num_envs * module.env_cfg.num_workers * module.encoder.rollout_steps / module.latest["perf/collect_fps"]

    def on_train_end(self, trainer, module) -> None:
        self.t1, self.f1 = time.perf_counter(), module.loop_state.frames


def loop_rate(task: str, num_envs: int, frames: int, decoder, workers: int = 1, precision: str = "32-true",
              **encoder_kw) -> tuple[float, float]:
    """(frames per wall second of a full training loop in an encoder phase acting through
    ``decoder``, frames per second of its collection part alone). ``precision`` is the Trainer's;
    ``encoder_kw`` overrides the CPU preset."""
    gorl = decoder is not IdentityDecoder
    system = GoRLSystem(
        env=EnvConfig(task=task, num_envs=num_envs // workers, num_workers=workers, eval_envs=1),
        encoder=partial(EncoderModule, **{**PPO_CPU, **encoder_kw}),
        decoder=decoder,
        # One cheap evaluation (1 env, 1 step) at the start; the measured stage is frames long.
        loop=LoopConfig(stages=[frames, frames] if gorl else [frames], eval_every=1e12, eval_max_steps=1),
    )
    if gorl:
        system.loop_state.stage = 1  # act through the (untrained, full-cost) decoder from the start
    clock = _Clock(stage=system.loop_state.stage)
    # limit_val_batches=0 as in `gorl fit` (no validation loop during fit; Lightning would otherwise
    # warn that the empty val dataloader has zero length).
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock])
    trainer.fit(system)
    done = clock.f1 - clock.f0
    return done / (clock.t1 - clock.t0), done / clock.collect_s


def update_maths_seconds(task: str, num_envs: int, repeats: int = 3) -> float:
    """Seconds per rollout of a PPO update reduced to its maths: the same networks, minibatches,
    epochs and fused Adam as the CPU preset, with a plain-tensor clipped-surrogate + value loss
    and nothing else (no TensorDict, no TorchRL loss, no Lightning, no NaN guard). With the
    measured collection rate it bounds what the (c) loop can reach on this machine."""
    obs_dim, act_dim, _, _ = env_dims(EnvConfig(task=task))
    enc = EncoderModule(obs_dim, act_dim, **PPO_CPU)
    opt = enc.configure_optimizers()
    n = num_envs * PPO_CPU["unroll"]
    mb, eps = min(n, PPO_CPU["minibatch_size"]), PPO_CPU["clip_epsilon"]
    obs, lat, old_lp = torch.randn(n, obs_dim), torch.randn(n, act_dim), torch.randn(n)
    adv, target = torch.randn(n), torch.randn(n, 1)

    def update() -> None:
        for _ in range(PPO_CPU["epochs"]):
            perm = torch.randperm(n)
            for start in range(0, n - mb + 1, mb):
                i = perm[start : start + mb]
                loc, scale = enc.actor_net(obs[i])
                ratio = (torch.distributions.Normal(loc, scale).log_prob(lat[i]).sum(-1) - old_lp[i]).exp()
                a = (adv[i] - adv[i].mean()) / (adv[i].std() + 1e-8)
                loss = -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a).mean()
                loss = loss + PPO_CPU["value_coef"] * (enc.critic_net(obs[i]) - target[i]).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(enc.parameters(), PPO_CPU["max_grad_norm"], foreach=True)
                opt.step()

    update()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        update()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_rates(fns: dict, repeats: int) -> dict:
    """Run the measurements round-robin ``repeats`` times and keep each one's median: on a shared,
    noisy machine, interleaving spreads slow spells over all of them instead of one."""
    got: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            got[key].append(fn())
    return {k: statistics.median(v) for k, v in got.items()}


def _median_pairs(fns: dict, repeats: int) -> dict:
    """:func:`_median_rates` for measurements that return (rate, collection rate)."""
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            got[key].append(fn())
    return {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in got.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["cheetah-run", "hopper-stand"])
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="processes for the multi-process rows (this one included)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per env-rate measurement")
    p.add_argument("--frames", type=int, default=32768, help="frames per training-loop measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--env-only", action="store_true", help="only the env rows (a), (b) and (e), no training loops")
    p.add_argument("--mjx", action="store_true", help="add the MJX backend rows (e); needs the mjx extra")
    p.add_argument("--mjx-envs", type=int, nargs="+", default=[64, 256], help="MJX batch sizes")
    p.add_argument("--mjx-impls", nargs="+", default=["jax", "warp"], help="MJX pipelines (jax, warp)")
    p.add_argument("--mjx-device", default="cpu", help="cpu or cuda[:k]")
    p.add_argument("--mjx-torchrl", action="store_true", help="with --mjx: add TorchRL's MujocoPlaygroundWrapper rows (e')")
    args = p.parse_args()
    if args.mjx_torchrl and not args.mjx:
        p.error("--mjx-torchrl adds rows beside the --mjx rows: pass --mjx too")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"# {args.num_envs} envs per batch; {args.frames} frames per loop measurement; median of {args.repeats} interleaved repeats")
    print(f"{'task':<14} {'measurement':<44} {'steps/s':>9} {'ratio':>6} {'per core':>9}", flush=True)
    n, w = args.num_envs, args.workers
    for task in args.tasks:
        env = _median_rates({
            "raw": lambda: raw_rate(task, args.seconds),
            "raww": lambda: raw_rate_parallel(task, w, args.seconds),
            "env1": lambda: env_rate(task, n, 1, args.seconds),
            "envw": lambda: env_rate(task, n, w, args.seconds),
        }, args.repeats)
        raw = env["raw"]
        env_rows = [
            ("(a) raw dm_control env.step, 1 core", raw, 1),
            (f"(a') raw, {w} processes at once", env["raww"], w),
            (f"(b) batched env, 1 process x {n}", env["env1"], 1),
            (f"(b) batched env, {w} processes x {n}", env["envw"], w),
            (f"    the same vs (a'): machine's {w}-core scaling removed", env["envw"] / env["raww"], None),
        ]
        if args.mjx:
            for impl in args.mjx_impls:
                for m in args.mjx_envs:
                    # Median of the rates; the first-call time of the first repeat (later ones hit
                    # this process's compiled functions). With --mjx-torchrl, TorchRL's env runs
                    # right after ours in every repeat, so slow spells of a shared machine hit both.
                    makers = {"ours": mjx_rate, **({"torchrl": torchrl_mjx_rate} if args.mjx_torchrl else {})}
                    pairs: dict[str, list[tuple[float, float]]] = {k: [] for k in makers}
                    for _ in range(args.repeats):
                        for key, fn in makers.items():
                            pairs[key].append(fn(task, m, impl, args.mjx_device, args.seconds))
                    rate = statistics.median(r for r, _ in pairs["ours"])
                    env_rows.append((f"(e) MJX ({impl}, {args.mjx_device}), 1 process x {m}", rate, 1))
                    env_rows.append((f"    first reset + 3 steps: {pairs['ours'][0][1]:.1f} s; vs (b) 1 process", rate / env["env1"], None))
                    if args.mjx_torchrl:
                        theirs = statistics.median(r for r, _ in pairs["torchrl"])
                        env_rows.append((f"    {_spread(pairs['ours'])}", None, None))
                        env_rows.append((f"(e') TorchRL's Playground env ({impl}) x {m}", theirs, 1))
                        env_rows.append((f"    first reset + 3 steps: {pairs['torchrl'][0][1]:.1f} s; vs (e)", theirs / rate, None))
                        env_rows.append((f"    {_spread(pairs['torchrl'])}", None, None))
        if args.env_only:
            _print(task, env_rows, raw)
            continue
        loops = _median_pairs({
            "ppo": lambda: loop_rate(task, n, args.frames, IdentityDecoder),
            "ppo_w": lambda: loop_rate(task, n, args.frames, IdentityDecoder, workers=w),
            "ppo_torchrl": lambda: loop_rate(task, n, args.frames, IdentityDecoder, loss_impl="torchrl"),
            "bf16": lambda: loop_rate(task, n, args.frames, IdentityDecoder, precision="bf16-mixed"),
            "c64_w": lambda: loop_rate(task, n, args.frames, IdentityDecoder, workers=w, critic_hidden=[64, 64]),
            "mb64": lambda: loop_rate(task, n, args.frames // 4, IdentityDecoder, minibatch_size=64),
            "mb64_torchrl": lambda: loop_rate(task, n, args.frames // 4, IdentityDecoder, minibatch_size=64, loss_impl="torchrl"),
            "flow": lambda: loop_rate(task, n, args.frames, FlowDecoder),
            "diffusion": lambda: loop_rate(task, n, args.frames, DiffusionDecoder),
        }, args.repeats)
        frames_per_rollout = n * PPO_CPU["unroll"]
        maths_s = update_maths_seconds(task, n)
        ceiling = frames_per_rollout / (frames_per_rollout / loops["ppo"][1] + maths_s)
        # What the update alone could absorb, with collection free: the loop's time per frame less
        # its collection's. If this is below a target, no env-side work (nor overlapping collection
        # with the update) can reach it.
        update_alone = 1.0 / (1.0 / loops["ppo"][0] - 1.0 / loops["ppo"][1])
        rows = [
            *env_rows,
            (f"(c) PPO training loop, {n} envs (collect + update)", loops["ppo"][0], 1),
            ("    its collection alone (policy + env + collector)", loops["ppo"][1], 1),
            ("    ceiling: that collection + the update's bare maths", ceiling, 1),
            ("    its update alone (loop time less collection)", update_alone, 1),
            ("    the update's bare maths alone", frames_per_rollout / maths_s, 1),
            (f"(c) PPO training loop, {n} envs over {w} processes", loops["ppo_w"][0], w),
            ("    its collection alone", loops["ppo_w"][1], w),
            ("    1 process, TorchRL's ClipPPOLoss instead", loops["ppo_torchrl"][0], 1),
            ("    1 process, bf16-mixed autocast", loops["bf16"][0], 1),
            (f"    {w} processes, a 2x64 critic (CleanRL's width)", loops["c64_w"][0], w),
            ("(c) PPO loop, CleanRL's minibatches of 64", loops["mb64"][0], 1),
            ("    the same with TorchRL's ClipPPOLoss", loops["mb64_torchrl"][0], 1),
        ]
        for name in ("flow", "diffusion"):
            rows.append((f"(d) GoRL loop, 10-step {name} decoder", loops[name][0], 1))
            rows.append(("    its collection alone", loops[name][1], 1))
            rows.append((f"    wall time per step vs PPO ({name})", loops["ppo"][0] / loops[name][0], None))
        _print(task, rows, raw)


def _spread(pairs: list[tuple[float, float]]) -> str:
    """The repeats' rates and first-call seconds, for the noise: a later repeat's first call shows
    whether a new env object of the same shape compiles again."""
    rates = "/".join(f"{r:.0f}" for r, _ in pairs)
    firsts = "/".join(f"{f:.1f}" for _, f in pairs)
    return f"repeats: {rates} steps/s; first calls {firsts} s"


def _print(task: str, rows: list[tuple[str, float | None, int | None]], raw: float) -> None:
    """One line per row: rate, ratio to the raw loop (a), per core; ``cores=None`` rows are ratios,
    ``rate=None`` rows a note."""
    for label, rate, cores in rows:
        if rate is None:
            print(f"{task:<14} {label}")
        elif cores is None:
            print(f"{task:<14} {label:<44} {'':>9} {rate:>5.2f}x")
        else:
            print(f"{task:<14} {label:<44} {rate:>9.0f} {rate / raw:>6.2f} {rate / raw / cores:>9.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
