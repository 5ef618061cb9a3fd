"""Host reads per collector step: how often the training loop's collection waits for the device.

On a GPU every read of a device value on the host (``.item()``, ``bool(t)``, ``t.any()`` in an
``if``) waits for all queued work, so the host cannot run ahead of the GPU. This counts them with a
dispatch mode (``aten._local_scalar_dense``, ``aten.is_nonzero``: where every such read of a tensor
ends, on any device), for one collector batch through the loop's own collector settings
(``GoRLSystem._build_collector``) on the MJX env, and for the acting chain alone. The count is the
same on a CPU as on a GPU (the code path does not depend on the device), so this runs anywhere;
what a read costs is the GPU's business (benchmarks/gpu_check.py times the loop there).

    python benchmarks/host_reads.py                  # MJX cheetah-run, 4 envs, 20 steps
    python benchmarks/host_reads.py --task hopper-stand --steps 40
"""

from __future__ import annotations

import argparse
import collections
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = {"_local_scalar_dense", "is_nonzero"}


class CountReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name in READS:
            self.count[name] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cheetah-run")
    p.add_argument("--envs", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()

    from gorl.decoders import FlowDecoder
    from gorl.encoders import EncoderModule
    from gorl.envs.factory import EnvConfig
    from gorl.loop import LoopConfig
    from gorl.refinement import RefinementConfig
    from gorl.system import GoRLSystem

    print(f"# host reads, MJX {args.task}, {args.envs} envs, one collector batch of {args.steps} steps (torch {torch.__version__})")
    for collect_from in ("reset", "training_envs"):
        system = GoRLSystem(env=EnvConfig(task=args.task, backend="mjx", num_envs=args.envs, eval_envs=2),
                            encoder=partial(EncoderModule, unroll=args.steps), decoder=partial(FlowDecoder, hidden=[16, 16]),
                            loop=LoopConfig(stages=[1e6, 1e6]), refinement=RefinementConfig(collect_from=collect_from, transitions=100))
        system.setup("fit")
        collector = system._build_collector()
        batches = iter(collector)
        next(batches)  # compiles; the reset
        with CountReads() as counter:
            next(batches)
        total = sum(counter.count.values())
        print(f"collector (refit data from {collect_from}: trajectory ids {'on' if collector.track_traj_ids else 'off'}): "
              f"{total} reads, {total / args.steps:.2f} per step {dict(counter.count)}")
        with torch.no_grad(), CountReads() as counter:
            system.policy.chain(torch.randn(args.envs, system.obs_dim), False)
        print(f"acting chain alone: {sum(counter.count.values())} reads")
        collector.shutdown()
        system.teardown("fit")


if __name__ == "__main__":
    main()
