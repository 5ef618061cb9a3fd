"""Whole optimiser steps replayed as CUDA graphs (``model.speed.step_graphs``).

Why: on a GPU, a PPO minibatch step of this project's small networks is launch-bound. The H200
profile (benchmarks/RESULTS.md, GPU section) counted 271 kernel launches per step with the GPU busy
for 1.8 of 6.4 ms, and the decoder's refit step is the same story. Compiling the loss
(``speed.compile``) fuses the forward and backward, but the gather of the minibatch, the gradient
norm, the clipping and the optimiser's update stay separate launches. Here the *whole* step is
captured once and replayed: gather, forward, backward, gradient norm and clipping, finiteness flags,
the optimiser's update and the running sums of the step's diagnostics. A step is then two launches:
copying the minibatch's indices in, and the replay.

How it stays the same maths as :func:`gorl.optimization.guarded_step`:

- A step's body is plain tensor code of two dicts: ``data`` (what one update or one fit round steps
  on: a rollout, a dataset) and ``inputs`` (what changes per step: the minibatch's rows). A graph
  records fixed addresses, so both are copied into static buffers that the graph reads; ``data``
  once per update (:meth:`StepGraphs.begin`), ``inputs`` before every replay.
- The first ``WARMUP`` steps of a new *key* run eagerly on a side stream (they are real steps, and
  they create the optimiser's state, which a graph must find in place); the next step is captured
  and replayed. Every step is taken exactly once.
- The key holds whatever Python decides while tracing: the caller's key (which networks, the stage's
  constants, whether each observation normaliser has seen data) plus, added here, the shapes of the
  inputs, every learning rate (fused Adam bakes a float ``lr`` into its kernel) and ``max_norm``.
- A graph captured the optimiser's state tensors. When the loop restarts the moments (a new stage, a
  new refit: ``optimizer.state.clear()``), every graph is dropped and re-captured after a warm-up.
  The captured state tensors are held here, so their memory can never be reused under a graph.
- Finiteness is recorded in a device buffer, with the sums, and read with them once per update
  (:meth:`StepGraphs.end`), which raises :class:`~gorl.errors.NonFiniteError` with the words of the
  deferred guard (``gorl/optimization.py`` says why nothing non-finite is then written).
- Random draws inside a body (a decoder's noise and times) come from CUDA's generator, which a graph
  advances on every replay as eager code would; the numbers differ from an eager run's.

Where it applies (the system checks, and says once why not): a CUDA device, one process (DDP's
gradient all-reduce is not captured), ``trainer.precision: 32-true`` (no GradScaler, no autocast
cache), an optimiser that can be captured (fused Adam, this project's default, or ``capturable``),
and ``speed.compile`` off (a compiled loss captures its own graphs). Everywhere else, and on the
CPU, :class:`StepGraphs` runs the same bodies eagerly. ``mode="emulate"`` replays a recorded step on
the static buffers without CUDA: the CPU tests use it to check that every value the body reads
reaches the static buffers.

If a capture fails, the steps run eagerly from then on and the reason is printed once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Hashable, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from gorl.errors import NonFiniteError

Tensors = dict[str, torch.Tensor]
#: (data, inputs) -> (the loss to step on, its diagnostics: fp32 scalars, the same names every step)
StepBody = Callable[[Tensors, Tensors], tuple[torch.Tensor, Tensors]]
Mode = Literal["cuda", "eager", "emulate"]


@dataclass
class _Entry:
    """One key's static buffers and, once captured, its graph."""

    data: Tensors | None = None  # static copies (after capture) or the live tensors (warm-up)
    inputs: Tensors | None = None  # static per-step inputs (after capture)
    # what the static data holds: a weak reference to the tensor copied in, and its version counter
    # (not its id: a freed tensor's id is soon another's)
    sources: dict[str, tuple[weakref.ref, int]] = field(default_factory=dict)
    sums: torch.Tensor | None = None  # [names..., bad_loss, bad_grad], summed over this update's steps
    names: tuple[str, ...] = ()
    warm: int = 0
    replay: Callable[[], None] | None = None
    graph: object | None = None  # keeps a CUDA graph (and its memory pool) alive
    state: list[torch.Tensor] = field(default_factory=list)  # optimiser state the graph captured


class StepGraphs:
    """Training steps of one optimiser, each replayed from a CUDA graph (module docstring).

    Args:
        optimizer: the plain torch optimiser the steps update.
        what: how messages name these steps ("PPO minibatch steps").
        mode: ``cuda`` (capture and replay), ``eager`` (the same bodies, no graphs) or ``emulate``
            (the CPU stand-in for a graph: the step recorded at capture is re-run on the static
            buffers at each replay).
        on_step: called once per step on the host (the system counts Lightning's optimiser steps).
        where: names the place in the run for a non-finite step's error (the stage cycle's ``where``).
    """

    WARMUP = 3

    def __init__(self, optimizer: torch.optim.Optimizer, what: str, mode: Mode = "cuda",
                 on_step: Callable[[], None] | None = None, where: Callable[[], str] = lambda: "training step") -> None:
        if mode not in ("cuda", "eager", "emulate"):
            raise ValueError(f"mode must be cuda, eager or emulate, got {mode!r}")
        self.optimizer, self.what, self.mode, self.on_step, self.where = optimizer, what, mode, on_step, where
        self.enabled = mode != "eager"
        self.captures = 0
        self._entries: dict[Hashable, _Entry] = {}
        self._key: Hashable = None
        self._data: Tensors = {}
        self._used: list[_Entry] = []
        self._steps = 0

    # --- one update ---------------------------------------------------------------------------------
    def begin(self, key: Hashable, data: Tensors) -> None:
        """Start an update (or a fit round) of steps on ``data`` under the caller's ``key``."""
        if self._stale():
            self._entries.clear()  # the optimiser's moments were restarted: the graphs point at freed state
        self._key = (key, self._shapes(data), tuple(g["lr"] for g in self.optimizer.param_groups))
        self._data = data
        self._steps = 0
        self._used = []

    def step(self, body: StepBody, inputs: Tensors, max_norm: float | None) -> None:
        """One optimiser step on ``body``'s loss at ``inputs`` (the minibatch's rows)."""
        entry = self._entries.setdefault((self._key, self._shapes(inputs), max_norm), _Entry())
        if not any(e is entry for e in self._used):
            if entry.sums is not None:
                entry.sums.zero_()
            self._used.append(entry)
        self._steps += 1
        if self.on_step is not None:
            self.on_step()
        if entry.replay is None:
            captured = self.enabled and entry.warm >= self.WARMUP and self._capture(entry, body, inputs, max_norm)
            if not captured:
                if self.enabled and self.mode == "cuda":
                    self._on_side_stream(lambda: self._take_step(entry, body, self._data, inputs, max_norm))
                else:
                    self._take_step(entry, body, self._data, inputs, max_norm)
                entry.warm += 1
                return
        self._load(entry, self._data)
        for name, value in inputs.items():
            entry.inputs[name].copy_(value)
        entry.replay()

    def end(self) -> dict[str, float]:
        """The mean diagnostics of the steps since :meth:`begin` (one host read per key used, one in
        a steady update); raises :class:`NonFiniteError` on a non-finite loss or gradient in any."""
        sums: dict[str, float] = {}
        for entry in self._used:
            for name, value in zip((*entry.names, "_bad_loss", "_bad_grad"), entry.sums.tolist()):
                sums[name] = sums.get(name, 0.0) + value
        self._used = []
        where = self.where()
        if sums.pop("_bad_loss", 0.0):
            raise NonFiniteError(f"non-finite loss in the {where} (an optimiser step of this update); the last checkpoint is kept")
        if sums.pop("_bad_grad", 0.0):
            raise NonFiniteError(f"non-finite gradient in the {where} (an optimiser step of this update); the last checkpoint is kept")
        return {name: value / max(self._steps, 1) for name, value in sums.items()}

    # --- the step itself ----------------------------------------------------------------------------
    def _take_step(self, entry: _Entry, body: StepBody, data: Tensors, inputs: Tensors, max_norm: float | None) -> None:
        """Backward, gradient norm and clipping, the finiteness flags, the optimiser's update, the
        sums: :func:`gorl.optimization.guarded_step`'s maths with no host read."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        loss, stats = body(data, inputs)
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        bad_grad = torch.zeros((), device=loss.device)
        if params:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
            bad_grad = (~torch.isfinite(norm)).float()
            if max_norm:
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        opt.step()
        values = torch.stack([loss.detach().float(), *(v.detach().float() for v in stats.values()),
                              (~torch.isfinite(loss.detach())).float(), bad_grad])
        if entry.sums is None:  # the first (eager) step of a key: the buffer every later step adds into
            entry.names = ("loss", *stats)
            entry.sums = torch.zeros_like(values)
        entry.sums.add_(values)

    def _capture(self, entry: _Entry, body: StepBody, inputs: Tensors, max_norm: float | None) -> bool:
        """Record the step on static buffers (it runs at the replay that follows); ``False``, and
        eager steps from now on, if that fails."""
        try:
            entry.data = {k: v.clone() for k, v in self._data.items()}
            entry.sources = {k: (weakref.ref(v), v._version) for k, v in self._data.items()}
            entry.inputs = {k: v.clone() for k, v in inputs.items()}
            if self.mode == "emulate":
                entry.replay = lambda: self._take_step(entry, body, entry.data, entry.inputs, max_norm)
            else:
                graph = torch.cuda.CUDAGraph()
                torch.cuda.synchronize()
                capturable = [g.get("capturable", False) for g in self.optimizer.param_groups]
                for group in self.optimizer.param_groups:
                    group["capturable"] = True  # fused Adam's kernels are the same; torch only checks the flag
                try:
                    # thread_local: JAX (MJX) may use CUDA from its own threads meanwhile.
                    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                        self._take_step(entry, body, entry.data, entry.inputs, max_norm)
                finally:
                    for group, flag in zip(self.optimizer.param_groups, capturable):
                        group["capturable"] = flag
                entry.graph, entry.replay = graph, graph.replay
            entry.state = [t for state in self.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
            self.captures += 1
            return True
        except Exception as err:  # noqa: BLE001  (any capture failure: run eagerly, say why once)
            self.enabled = False
            entry.replay = entry.graph = None
            rank_zero_warn(f"[gorl] CUDA graphs for the {self.what} are off for this run: the capture failed ({type(err).__name__}: {str(err)[:300]})")
            return False

    # --- helpers ------------------------------------------------------------------------------------
    def _load(self, entry: _Entry, data: Tensors) -> None:
        """Copy this update's data into the graph's buffers, unless they hold it already."""
        for name, value in data.items():
            ref, version = entry.sources.get(name, (None, None))
            if ref is None or ref() is not value or value._version != version:
                entry.data[name].copy_(value)
                entry.sources[name] = (weakref.ref(value), value._version)

    def _stale(self) -> bool:
        """Has the optimiser's state been replaced since a graph captured it?"""
        live = {id(t) for state in self.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)}
        return any(entry.state and any(id(t) not in live for t in entry.state) for entry in self._entries.values())

    @staticmethod
    def _shapes(tensors: Tensors) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in tensors.items())

    @staticmethod
    def _on_side_stream(fn: Callable[[], None]) -> None:
        """Warm-up steps run on a side stream, as CUDA graph capture wants (lazy inits off the
        capture stream)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
