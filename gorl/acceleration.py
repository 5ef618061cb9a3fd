"""GPU speed settings that change no maths: CUDA graphs for the acting policy, compiled training
losses (:class:`CompiledFn`, ``speed.compile``), whole training steps as CUDA graphs
(``speed.step_graphs``, :mod:`gorl.step_graphs`), and matmul precision.

Why CUDA graphs for acting: the policy runs once per batched env step, and on a GPU a step of the
small encoder (4x32) and a 10-step decoder chain is a few hundred tiny kernels. Launched one by one
from Python, their launch cost, not their arithmetic, sets the pace; captured once as a CUDA graph
and replayed, the whole chain is one launch. A graph records fixed tensor addresses, so:

- the observation is copied into a static input and the outputs are cloned out of static ones;
- weights change in place (optimiser steps, ``load_state_dict``), which a graph sees, since the
  addresses stay;
- whatever Python decides while tracing is frozen into the graph, so a graph is kept per *key*: the
  batch shape, deterministic or not, and the caller's state key (which decoder acts, and whether each
  observation normaliser has seen data yet, since :class:`~gorl.networks.RunningNorm` branches on
  that in Python). A new key captures a new graph; a stage change drops the old ones;
- random draws (the latent's noise) use CUDA's default generator, which graphs advance on every
  replay as eager code would, though the numbers differ from an eager run's.

If a capture fails (an encoder or decoder that reads a device value on the host, say), the chain
runs eagerly from then on and the reason is printed once. On the CPU nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

MatmulPrecision = Literal["highest", "high", "medium"]
ChainFn = Callable[[torch.Tensor, bool], dict[str, torch.Tensor]]


@dataclass
class SpeedConfig:
    """Attributes:
        cuda_graphs: replay the acting policy as CUDA graphs on a GPU (module docstring); ``false``
            = eager, as on the CPU.
        matmul_precision: ``torch.set_float32_matmul_precision`` for the run (process-wide in
            torch; put back when the run ends). ``highest`` (default) keeps float32 matmuls exact;
            ``high`` lets every float32 matmul of the run use TF32 on tensor cores (a 10-bit mantissa
            for the products, float32 accumulation): the encoder's actor and critic and the
            decoder's network, forward and backward, in collection, updates, refits and
            evaluations alike. The element-wise maths (log-probs, ratios, GAE, the losses, Adam) is
            unaffected. Differences are about 1e-3 relative in network outputs. No recipe turns it
            on: on an H200 it bought no refit speed (benchmarks/logs/gpu_check_2026-12-04/). Mixed
            precision (``trainer.precision``) is a separate switch.
        compile: ``torch.compile`` the training losses: latent PPO's fused minibatch loss and the
            decoder's generative loss (forward and backward); and the acting chain (encoder ->
            decoder's sampler -> tanh) where no CUDA graph replays it (the CPU, or
            ``cuda_graphs: false``). On a GPU with ``mode="reduce-overhead"``,
            so each step replays CUDA graphs, one launch where the eager step makes hundreds; on a CPU
            with inductor's C++ kernels. The first step of each compiles (tens of seconds), and random
            draws inside a compiled loss (the decoders' noise) come from another generator than
            eager code's. A failed compile falls back to eager, said once. ``false`` (default): eager.
        compile_backend: ``torch.compile``'s backend (``inductor``; ``aot_eager`` traces the same
            graphs without generating kernels: a quick check that a loss compiles).
        step_graphs: take every PPO minibatch step and every decoder refit step as one replayed CUDA
            graph: the minibatch's gather, forward, backward, clipping and the optimiser's update
            (:mod:`gorl.step_graphs`). Same maths as the eager steps (tested on the CPU through an
            emulated graph); the diagnostics and the finiteness checks are read once per update.
            Needs a GPU, one process and ``trainer.precision: 32-true``; elsewhere the run says so
            once and steps eagerly. Not with ``compile``. ``false`` (default): eager steps.
    """

    cuda_graphs: bool = True
    matmul_precision: MatmulPrecision = "highest"
    compile: bool = False
    compile_backend: str = "inductor"
    step_graphs: bool = False

    def __post_init__(self) -> None:
        if self.step_graphs and self.compile:
            from gorl.errors import ConfigError

            raise ConfigError("speed.step_graphs and speed.compile both capture the training steps: set one of them")
        if self.matmul_precision not in ("highest", "high", "medium"):
            from gorl.errors import ConfigError

            raise ConfigError(f"speed.matmul_precision must be highest, high or medium, got {self.matmul_precision!r}")


class CompiledFn:
    """``torch.compile(fn)``, or ``fn`` itself once compiling it has failed (said once, with why):
    a missing compiler or an operation the compiler cannot take must not stop a run that eager code
    can make. An error that eager code raises too is raised by the eager call.

    Args:
        fn: a function of tensors (and Python constants that stay fixed within a run).
        what: how the warning names it.
        backend, mode: ``torch.compile``'s; ``mode=None`` picks ``reduce-overhead`` (CUDA graphs)
            when the first call's tensors are on a GPU, inductor's default otherwise.
    """

    def __init__(self, fn: Callable, what: str, backend: str | Callable = "inductor", mode: str | None = None) -> None:
        self.fn, self.what, self.backend, self.mode = fn, what, backend, mode
        self.compiled: Callable | None = None
        self.enabled = True

    def __call__(self, *args):  # noqa: ANN002, ANN204
        if not self.enabled:
            return self.fn(*args)
        if self.compiled is None:
            cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
            mode = self.mode or ("reduce-overhead" if cuda and self.backend == "inductor" else None)
            self.compiled = torch.compile(self.fn, backend=self.backend, mode=mode, dynamic=False)
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001  (any compile failure: run eagerly, say why once)
            self.enabled = False
            rank_zero_warn(f"[gorl] torch.compile of {self.what} is off for this run: {type(err).__name__}: {str(err)[:300]}")
            return self.fn(*args)


class GraphedChain:
    """``fn(obs, deterministic) -> dict of tensors``, replayed from CUDA graphs where it can be.

    Args:
        fn: the eager chain (pure tensor code, no host reads).
        state_key: returns what, besides the input's shape, decides the Python path through ``fn``.
    """

    WARMUP = 3  # eager calls on a side stream before capture (cuBLAS workspaces, lazy inits)

    def __init__(self, fn: ChainFn, state_key: Callable[[], tuple]) -> None:
        self.fn, self.state_key = fn, state_key
        self.enabled = True
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._state: tuple | None = None
        self.captures = 0

    def __call__(self, obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        # Eager where a graph cannot stand in: gradients (a graph records none), the CPU, and autocast,
        # whose cache of cast weights would be freed under a captured graph's feet.
        if not (self.enabled and obs.is_cuda) or torch.is_grad_enabled() or torch.is_autocast_enabled("cuda"):
            return self.fn(obs, deterministic)
        state = self.state_key()
        if state != self._state:
            self._graphs.clear()  # e.g. a new stage: the old decoder's graphs are dead weight
            self._state = state
        key = (tuple(obs.shape), obs.dtype, deterministic)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(obs, deterministic)
            except Exception as err:  # noqa: BLE001  (any capture failure: run eagerly, say why once)
                self.enabled = False
                rank_zero_warn(f"[gorl] CUDA graphs for the acting policy are off for this run: the capture failed ({err})")
                return self.fn(obs, deterministic)
            self._graphs[key] = entry
        graph, static_obs, static_out = entry
        static_obs.copy_(obs)
        graph.replay()
        return {k: v.clone() for k, v in static_out.items()}

    @torch.no_grad()
    def _capture(self, obs: torch.Tensor, deterministic: bool):
        static_obs = obs.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self.fn(static_obs, deterministic)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: JAX (MJX) may touch CUDA from its own threads meanwhile; only this thread's
        # calls must be capture-safe.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.fn(static_obs, deterministic)
        self.captures += 1
        return graph, static_obs, static_out
