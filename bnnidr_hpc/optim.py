"""Optimizers and learning-rate schedules: the lab's optimizer(s), learning_rate, weight_decay and
lr_schedule.

Used by: train.py, benchmarks.

Each configured optimizer owns the parameters whose names match its glob (validation.py checks
that every parameter has exactly one owner) and has its own lr, weight_decay and schedule; loading.py
filled those from the top-level keys where the optimizer does not set them. The schedule is a
multiplier of the optimizer's initial lr, evaluated at the fractional epoch of every step.
"""

from __future__ import annotations

import fnmatch
import math
from typing import List

import torch

from .config import OptimizerConfig, ScheduleConfig


def lr_factor(s: ScheduleConfig, epoch: float, max_epochs: int) -> float:
    """Multiplier of the initial lr at a (fractional) epoch."""
    warm = min(1.0, epoch / s.warmup_epochs) if s.warmup_epochs > 0 else 1.0
    if s.name == "step":
        return warm * s.gamma ** math.floor(epoch / s.step_size)
    if s.name == "cosine":
        return warm * (s.min_factor + (1 - s.min_factor) * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs)))
    return warm


def _make(oc: OptimizerConfig, params: list, fused: bool) -> torch.optim.Optimizer:
    if oc.name == "sgd":
        return torch.optim.SGD(params, lr=oc.lr, momentum=oc.momentum, nesterov=oc.nesterov,
                               weight_decay=oc.weight_decay, fused=fused)
    adam = torch.optim.Adam if oc.name == "adam" else torch.optim.AdamW
    return adam(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay, fused=fused)


class Optimizers:
    """The configured optimizers over one model, stepped and scheduled together."""

    def __init__(self, configs: List[OptimizerConfig], max_epochs: int, model: torch.nn.Module):
        named = list(model.named_parameters())
        # One fused kernel per optimizer instead of several per parameter.
        fused = next(model.parameters()).device.type in ("cpu", "cuda")
        self.configs, self.max_epochs = list(configs), max_epochs
        self.optimizers = [_make(oc, [p for n, p in named if fnmatch.fnmatchcase(n, oc.params)], fused)
                           for oc in self.configs]

    def set_lr(self, epoch: float) -> List[float]:
        """Every optimizer's lr at a fractional epoch; returns them."""
        lrs = []
        for opt, oc in zip(self.optimizers, self.configs):
            lr_now = oc.lr * lr_factor(oc.schedule, epoch, self.max_epochs)
            for group in opt.param_groups:
                group["lr"] = lr_now
            lrs.append(lr_now)
        return lrs

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list) -> None:
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)
