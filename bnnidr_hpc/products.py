"""Float32 matrix products on the CPU: PyTorch's BLAS, or oneDNN where the BLAS is the slower.

Used by: model.py (the layers), metrics.py (distances and the loss's backward), evaluate.py (PCA),
intrinsic.py (TwoNN's distances).

PyTorch's x86 builds send float32 products on the CPU to MKL (run.cpu_matmul=blas), and MKL runs
its generic AVX2 kernels on AMD processors. oneDNN, also inside PyTorch, picks its kernels by
instruction set rather than by vendor: on an AMD EPYC (Zen 5) with AVX-512 it multiplies 1.8x as
fast in the same float32 arithmetic (benchmarks/bench_step.py prints both; docs/performance.md).
So on AMD CPUs run.cpu_matmul=auto sends the toolkit's own products and its layers to oneDNN; on
the others (Intel's, where MKL uses AVX-512 itself) the BLAS keeps them. bfloat16 (autocast goes
to oneDNN already), GPUs, and whatever torch.fx traces take PyTorch's usual path.

The choice is the process's, like torch.set_num_threads: use() sets it from the run's config;
until then it is auto's.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F


def _linear_op():
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


_LINEAR = _linear_op()


@functools.lru_cache(maxsize=None)
def cpu_vendor() -> str:
    """The CPU's vendor_id (AuthenticAMD, GenuineIntel...), '' where /proc/cpuinfo does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def resolve(choice: str) -> str:
    """run.cpu_matmul -> the library used: blas or onednn (onednn needs a build that has it)."""
    if choice == "auto":
        choice = "onednn" if cpu_vendor() == "AuthenticAMD" else "blas"
    return "onednn" if choice == "onednn" and _LINEAR is not None else "blas"


_onednn = resolve("auto") == "onednn"  # use() changes it: a run sets it from its config


def use(choice: str) -> str:
    """Send this process's float32 CPU products to the library run.cpu_matmul names; returns it."""
    global _onednn
    library = resolve(choice)
    _onednn = library == "onednn"
    return library


def library() -> str:
    return "onednn" if _onednn else "blas"


# Smaller products stay on the BLAS. oneDNN's fixed cost per call (about 14 us here, the BLAS's 6)
# and its slower transposed operands at small sizes outweigh its rate there: on oneDNN a 64^3
# product alone takes 2.2x the BLAS's time, 128^3 0.83x, 512^3 0.45x, and the built-in default's
# whole step (batch 100 through 256-wide layers: 6.5M multiply-adds) ran 5 % slower on it.
MIN_MULTIPLY_ADDS = 2**23


def _on_onednn(multiply_adds: int, *tensors: torch.Tensor) -> bool:
    return (_onednn and multiply_adds >= MIN_MULTIPLY_ADDS and not torch.is_autocast_enabled("cpu")
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 for t in tensors))


def _fx_tracing() -> bool:
    """torch.fx traces only what PyTorch knows (tensorboard_log's graph): it takes F.linear. Its
    proxies cannot answer _on_onednn's checks, so this one comes first."""
    fx = sys.modules.get("torch.fx._symbolic_trace")
    return fx is not None and fx._is_fx_tracing_flag


def _product(a: torch.Tensor, b_rows: torch.Tensor) -> torch.Tensor:
    """a @ b_rows^T by oneDNN; any strides."""
    return _LINEAR(a, b_rows, None, "none", [], "")


def _untracked(*tensors: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, on oneDNN when use() chose it and autograd does not follow the operands (distances,
    hand-written backwards)."""
    if _on_onednn(a.shape[0] * a.shape[1] * b.shape[-1], a, b) and _untracked(a, b):
        return _product(a, b.T)
    return a @ b


def addmm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """out += alpha a @ b in place (the BLAS folds it into the product; oneDNN's product is added)."""
    if _on_onednn(a.shape[0] * a.shape[1] * b.shape[-1], out, a, b) and _untracked(out, a, b):
        return out.add_(_product(a, b.T), alpha=alpha)
    return out.addmm_(a, b, alpha=alpha)


class _Linear(torch.autograd.Function):
    """F.linear through oneDNN, forward and backward: dx = dy W, dW = dy^T x, db = sum dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = _product(grad, weight.T) if ctx.needs_input_grad[0] else None
        grad_weight = _product(grad.T, x.T) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN when use() chose it."""
    if not _onednn or _fx_tracing():
        return F.linear(x, weight, bias)
    if _on_onednn(x.shape[0] * x.shape[-1] * weight.shape[0], x, weight, *(() if bias is None else (bias[None],))):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """nn.Linear (the same parameters and state dict) whose product is linear()'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
