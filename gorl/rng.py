"""The process's random number generators as one state: what a checkpoint stores so that a resumed
run draws what an uninterrupted one would, and what a refit's data collection starts from so that
its data can be collected again instead of stored (``checkpoint.refit_data: recollect``)."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """torch (CPU and, where present, every CUDA device) / numpy / python RNG states, in types that
    ``torch.load(weights_only=True)`` accepts; all CPU tensors, so the checkpoint loads anywhere."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)  # on a CPU-only machine (or another GPU count) CUDA's streams are not restored
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
