"""One PPO update at the authors' shape, outside Lightning, timed and profiled.

The update of the paper recipes (``gae: minibatch``): 983,040 frames as 32,768 segments of 30
steps, 16 epochs of 32 minibatches of 1,024 segments (30,720 frames), GAE per minibatch with the
current critic, the 4x32 actor and the 5x256 critic (hopper-stand sizes: 15 observations, 4
actions). Synthetic data; the optimiser step is the plain one (backward, one norm pass, clip, fused
Adam), so the time against ``gorl fit``'s update (``benchmarks/gpu_check.py``) shows what
Lightning's manual-optimisation plumbing adds.

    python benchmarks/ppo_update.py            # on a GPU: fp32 and TF32, and a profile of 32 minibatch steps
    python benchmarks/ppo_update.py --quick    # a CPU dry run at 1/32 of the size
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gorl.encoders import EncoderModule  # noqa: E402


def rollout(rows: int, device: str, enc: EncoderModule) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(rows, 30, 15, generator=g)
    done = torch.zeros(rows, 30, 1, dtype=torch.bool)
    done[::33, 7] = True  # a few episode ends inside segments
    td = TensorDict({"observation": obs, "next": {"observation": torch.randn(rows, 30, 15, generator=g), "reward": torch.rand(rows, 30, 1, generator=g),
                                                   "done": done, "terminated": torch.zeros_like(done), "truncated": done.clone()}}, [rows, 30]).to(device)
    with torch.no_grad():
        out = enc.act(td["observation"], False)
    td.update(out)
    return td


def plain_optimize(enc: EncoderModule) -> Callable[[torch.Tensor, float | None], None]:
    """The encoder's optimiser step without Lightning: backward, one norm pass, clip, fused Adam."""
    opt = enc.configure_optimizers()

    def optimize(loss: torch.Tensor, max_norm: float | None) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [q for q in enc.parameters() if q.grad is not None]
        norm = torch.nn.utils.get_total_norm([q.grad for q in params], foreach=True)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm or 1e9, norm, foreach=True)
        opt.step()

    optimize.optimizer = opt  # for model.speed.step_graphs, which steps it itself
    return optimize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, mb = (1024, 960) if args.quick else (32_768, 30_720)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for precision in ("highest", "high"):
        torch.set_float32_matmul_precision(precision)
        enc = EncoderModule(15, 4, gae="minibatch", minibatch_size=mb, epochs=16, unroll=30, prior_reg="l2").to(device)
        optimize = plain_optimize(enc)
        data = rollout(rows, device, enc)
        enc.train_on(data.clone(), optimize, 0)  # warm-up
        sync()
        t0 = time.perf_counter()
        enc.train_on(data.clone(), optimize, 0)
        sync()
        secs = time.perf_counter() - t0
        steps = 16 * (rows // (mb // 30))
        print(f"PPO update, {rows * 30:,} frames, {steps} minibatch steps of {mb:,}, matmul precision {precision}: "
              f"{secs:.2f} s ({secs / steps * 1e3:.2f} ms per minibatch step)", flush=True)
    if device == "cuda" and not args.quick:
        from torch.profiler import ProfilerActivity, profile

        enc.ppo = dataclasses.replace(enc.ppo, epochs=1)  # 32 minibatch steps
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            enc.train_on(data.clone(), optimize, 0)
            sync()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48), flush=True)
        launches = sum(e.count for e in prof.key_averages() if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
        # The table above ends with the self CPU and self CUDA totals (summing its rows would count
        # kernels twice: once as themselves, once under the operator that launched them).
        print(f"kernel launches in 32 minibatch steps: {launches}", flush=True)


if __name__ == "__main__":
    main()
