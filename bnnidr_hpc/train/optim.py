"""Optimizers and learning-rate schedules: the lab's optimizer(s), learning_rate, weight_decay and
lr_schedule.

Used by: train/loop.py, benchmarks.

Each configured optimizer owns the parameters whose names match its glob (config/validation.py checks
that every parameter has exactly one owner) and has its own lr, weight_decay and schedule; config/loading.py
filled those from the top-level keys where the optimizer does not set them. The schedule is a
multiplier of the optimizer's initial lr, evaluated at the fractional epoch of every step.
"""

from __future__ import annotations

import fnmatch
import math
from typing import List

import torch

from bnnidr_hpc.config.schema import OptimizerConfig, ScheduleConfig


def lr_factor(s: ScheduleConfig, epoch: float, max_epochs: int) -> float:
    """Multiplier of the initial lr at a (fractional) epoch."""
    warm = min(1.0, epoch / s.warmup_epochs) if s.warmup_epochs > 0 else 1.0
    if s.name == "step":
        return warm * s.gamma ** math.floor(epoch / s.step_size)
    if s.name == "cosine":
        return warm * (s.min_factor + (1 - s.min_factor) * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs)))
    return warm


class _Rule:
    """One optimizer over a list of parameters: PyTorch's update rule (torch.optim.SGD, Adam,
    AdamW, same defaults and state layout per parameter) written with torch._foreach ops.
    Why not torch.optim: constructing any torch.optim optimizer imports torch._dynamo, 0.9 s of
    this 2-core machine's 2.5 s from process start to the first step (#17); its step does too.
    Where PyTorch has them (CPU, CUDA), the step is torch.optim's own fused kernel (one pass over
    every parameter: 0.09 instead of 0.27 ms for hps_00043's model); else _foreach ops.
    tests/test_train.py checks every rule against torch.optim step by step. One difference: the
    step count (Adam's bias correction, SGD's first step) is the optimizer's, not each parameter's,
    which is the same wherever every parameter gets a gradient at every step, as in the Reducer;
    a parameter without a gradient is skipped, as torch.optim skips it."""

    def __init__(self, params: list, lr: float, weight_decay: float):
        self.params = params
        self.param_groups = [{"params": params, "lr": lr, "weight_decay": weight_decay}]
        self.steps = 0
        self.fused = _fused(params)  # decided once: parameters keep their device and dtype

    def _grads(self):
        live = [(p, p.grad) for p in self.params if p.grad is not None]
        return [p for p, _ in live], [g for _, g in live]

    @torch.no_grad()
    def step(self) -> None:
        """One update of the parameters that have a gradient, with their state buffers."""
        params, grads = self._grads()
        if not params:
            return
        keep = None if len(params) == len(self.params) else [self.params.index(p) for p in params]
        buffers = {name: values if keep is None or not values else [values[i] for i in keep]
                   for name, values in self._buffers().items()}
        self._update(params, grads, buffers, self.param_groups[0])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"steps": self.steps, "buffers": {k: [b.clone() for b in v] for k, v in self._buffers().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for name, values in state["buffers"].items():
            for mine, saved in zip(self._buffers()[name], values):
                mine.copy_(saved)


class SGD(_Rule):
    def __init__(self, params, lr, weight_decay, momentum, nesterov):
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = [torch.zeros_like(p) for p in params] if momentum else []

    def _buffers(self) -> dict:
        return {"velocity": self.velocity}

    def _update(self, params, grads, buffers, group) -> None:
        velocity = buffers["velocity"]
        if self.fused:
            torch._fused_sgd_(params, grads, velocity if self.momentum else [], weight_decay=group["weight_decay"],
                              momentum=self.momentum, lr=group["lr"], dampening=0.0, nesterov=self.nesterov,
                              maximize=False, is_first_step=self.steps == 0)
            self.steps += 1
            return
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        if self.momentum:
            if self.steps == 0:  # PyTorch's first step: the buffer is the gradient itself
                torch._foreach_copy_(velocity, grads)
            else:
                torch._foreach_mul_(velocity, self.momentum)
                torch._foreach_add_(velocity, grads)
            grads = torch._foreach_add(grads, velocity, alpha=self.momentum) if self.nesterov else velocity
        torch._foreach_add_(params, grads, alpha=-group["lr"])
        self.steps += 1


class Adam(_Rule):
    """Adam with L2 weight decay (added to the gradient), as torch.optim.Adam."""

    decoupled = False

    def __init__(self, params, lr, weight_decay, betas, eps: float = 1e-8):
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps = tuple(betas), eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    def _buffers(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def _update(self, params, grads, buffers, group) -> None:
        exp_avg, exp_avg_sq = buffers["exp_avg"], buffers["exp_avg_sq"]
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], self.betas
        self.steps += 1
        if self.fused:
            steps = [torch.full((), float(self.steps), device=p.device) for p in params]
            kernel = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
            kernel(params, grads, exp_avg, exp_avg_sq, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,
                   eps=self.eps, amsgrad=False, maximize=False)
            return
        if wd and self.decoupled:
            torch._foreach_mul_(params, 1 - lr * wd)
        elif wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        bias1, bias2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
        denominator = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denominator, math.sqrt(bias2))
        torch._foreach_add_(denominator, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denominator, value=-lr / bias1)


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr wd before the update), as torch.optim.AdamW."""

    decoupled = True


def _fused(params: list) -> bool:
    """PyTorch's fused optimizer kernels take dense float32/bf16/fp16 parameters on a CPU or GPU."""
    return hasattr(torch, "_fused_adamw_") and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                                   and not p.is_sparse for p in params)


def _make(oc: OptimizerConfig, params: list) -> _Rule:
    if oc.name == "sgd":
        return SGD(params, oc.lr, oc.weight_decay, oc.momentum, oc.nesterov)
    return (Adam if oc.name == "adam" else AdamW)(params, oc.lr, oc.weight_decay, oc.betas)


class Optimizers:
    """The configured optimizers over one model, stepped and scheduled together."""

    def __init__(self, configs: List[OptimizerConfig], max_epochs: int, model: torch.nn.Module):
        named = list(model.named_parameters())
        self.configs, self.max_epochs = list(configs), max_epochs
        self.optimizers = [_make(oc, [p for n, p in named if fnmatch.fnmatchcase(n, oc.params)])
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
