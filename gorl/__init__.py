"""GoRL: online RL with generative policies, on PyTorch Lightning and TorchRL.

``gorl fit --config conf/quickstart.yaml`` trains; ``gorl.load_policy(checkpoint).act(obs)`` uses
what was trained (:mod:`gorl.inference`).

The names below load on first use, so that ``import gorl`` (and every ``gorl`` command, ``--help``
included) does not pay for torch before it needs it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Policy", "load_policy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gorl import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'gorl' has no attribute {name!r}")
