"""Exponential moving average of a model's weights: the copy that is evaluated and sampled.  [DDPM, EDM]"""
import copy

import torch


class EMA:
    """ema ← d·ema + (1 − d)·θ after every optimiser step, d = min(decay, (1 + n)/(10 + n)) at update n.

    The warm-up term keeps short runs from averaging in their random initial weights: with d = 0.999 throughout,
    10 % of a 2,300-step run's EMA would still be the initialisation (0.999^2300). It stays below `decay` until
    n = 9/(1 − decay) − 10 (8,990 for 0.999): a shorter run is averaged by the warm-up alone, which weighs roughly its
    last ninth, and its `decay` has no effect. Buffers are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self):
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
