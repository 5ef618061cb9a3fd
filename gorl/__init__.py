"""GoRL: online RL with generative policies, on PyTorch Lightning and TorchRL.

``gorl fit --config conf/quickstart.yaml`` trains; ``gorl.load_policy(checkpoint).act(obs)`` uses
what was trained (:mod:`gorl.inference`).
"""

from gorl.inference import Policy, load_policy

__all__ = ["Policy", "load_policy"]
