"""Run the smoke plan under Lightning DDP (gloo) and dump every rank's weights.

Usage: python tests/scripts/ddp_run.py OUT_DIR [cpu|shared-cuda]   (Lightning re-launches this script per rank)

``cpu`` (default): two CPU processes. ``shared-cuda``: two processes on the one GPU ``cuda:0`` (the
GPU check's machine has one): Lightning refuses a repeated GPU id in ``devices``, but takes the two
ranks' devices from the strategy as given, and gloo (unlike NCCL) lets two ranks share a device.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.test_loop import Recorder, smoke_system  # noqa: E402


class DumpEachPhase(pl.Callback):
    """Saves this rank's full state dict whenever the loop changes phase, and at the end."""

    def __init__(self, out: Path):
        self.out, self.last = out, None

    def _dump(self, trainer, module, tag):
        torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, self.out / f"rank{trainer.global_rank}_{tag}.pt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        st = module.loop_state
        key = (st.stage, st.phase)
        if key != self.last:
            self._dump(trainer, module, f"s{st.stage}_{st.phase}")
            self.last = key


if __name__ == "__main__":
    out = Path(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)
    rec = Recorder()
    if mode == "shared-cuda":
        from lightning.pytorch.strategies import DDPStrategy

        placement = dict(strategy=DDPStrategy(parallel_devices=[torch.device("cuda", 0)] * 2, process_group_backend="gloo"))
    else:
        placement = dict(accelerator="cpu", devices=2, strategy="ddp")
    trainer = pl.Trainer(
        max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[rec, DumpEachPhase(out)], **placement,
    )
    system = smoke_system()
    trainer.fit(system)
    (out / f"rank{trainer.global_rank}_trace.txt").write_text(repr(rec.trace))
