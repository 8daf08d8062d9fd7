"""Float32 matrix products on the CPU: PyTorch's BLAS, or oneDNN where the BLAS is the slower.

Used by: model/reducer.py (the layers), model/objectives.py (distances and the loss's backward),
train/evaluate.py (PCA), train/intrinsic.py (TwoNN's distances); train/ and reduce/ choose the
library (use()).

PyTorch's x86 builds send float32 products on the CPU to MKL (run.cpu_matmul=blas), and MKL runs
its generic AVX2 kernels on AMD processors. oneDNN, also inside PyTorch, picks its kernels by
instruction set rather than by vendor: on an AMD EPYC (Zen 5) with AVX-512 it multiplies 1.8x as
fast in the same float32 arithmetic (benchmarks/bench_step.py prints both; docs/performance.md).
So on AMD CPUs with AVX-512 run.cpu_matmul=auto sends the toolkit's own products and its layers
to oneDNN; on the others (Intel's, where MKL uses AVX-512 itself) the BLAS keeps them. bfloat16
(autocast goes to oneDNN already), a float32 precision below "highest", GPUs, and whatever
torch.fx, torch.jit.trace or ONNX export traces take PyTorch's usual path.

The choice is the process's, like torch.set_num_threads: use() sets it from the run's config;
until then it is auto's.
"""

from __future__ import annotations

import functools
import sys
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _linear_op():
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


_LINEAR = _linear_op()


@functools.lru_cache(maxsize=None)
def cpu_info() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (vendor_id, model name, flags...); {} where
    there is no such file."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():  # the end of the first processor's block
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def resolve(choice: str) -> str:
    """run.cpu_matmul -> the library used: blas or onednn (onednn needs a build that has it).
    auto: oneDNN on AMD CPUs with AVX-512 (Zen 4 and later), where MKL's AVX2 kernels run at half
    its rate; AMD CPUs without it (Zen 2/3) run AVX2 in both libraries, so the BLAS keeps them."""
    if choice == "auto":
        cpu = cpu_info()
        amd_avx512 = cpu.get("vendor_id") == "AuthenticAMD" and "avx512f" in cpu.get("flags", "").split()
        choice = "onednn" if amd_avx512 else "blas"
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
# whole step (batch 100 through 256-wide layers: 6.5M multiply-adds) ran 5 % slower with its layers
# on it. A layer also pays for an autograd Function's call, and its weight gradient's inner size
# is the batch; a bare product (mm, addmm_: distances, hand-written backwards) is 1.5x faster on
# oneDNN from 4M multiply-adds on 2 threads, 1.8x on one (250 x 64 x 500 is a 2-rank step's
# pair block at batch 500: 83 against 47 us on 2 threads, 152 against 76 on one).
MIN_MULTIPLY_ADDS = 2**23          # a layer (linear)
MIN_PRODUCT_MULTIPLY_ADDS = 2**22  # a bare product (mm, addmm_)


def _on_onednn(*tensors: torch.Tensor) -> bool:
    """use() chose oneDNN and these operands are what it takes: 2-D, dense float32 on the CPU."""
    return _onednn and all(t.dim() == 2 and t.layout == torch.strided and t.device.type == "cpu"
                           and t.dtype == torch.float32 for t in tensors)


def _worth_it(rows: int, inner: int, cols: int, least: int) -> bool:
    return rows * inner * cols >= least and _float32_exact()


def _float32_exact() -> bool:
    """PyTorch's float32 precision is exact: with torch.set_float32_matmul_precision("medium") or
    mkldnn's fp32_precision "bf16", oneDNN would multiply in bfloat16 where the BLAS does not;
    autocast has the layers in bfloat16 already (PyTorch sends those to oneDNN itself)."""
    if torch.get_float32_matmul_precision() != "highest" or torch.is_autocast_enabled("cpu"):
        return False
    precision = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
    return precision in ("none", "ieee")


def _tracing() -> bool:
    """torch.fx (tensorboard_log's graph), torch.jit.trace and ONNX export record only what
    PyTorch knows: they get F.linear. fx's proxies cannot answer _on_onednn's checks, so this
    comes first."""
    fx, onnx = sys.modules.get("torch.fx._symbolic_trace"), sys.modules.get("torch.onnx")  # not imported: not tracing
    return ((fx is not None and fx._is_fx_tracing_flag) or torch.jit.is_tracing()
            or (onnx is not None and onnx.is_in_onnx_export()))


def _product(a: torch.Tensor, b_rows: torch.Tensor) -> torch.Tensor:
    """a @ b_rows^T by oneDNN: b_rows is read with its own strides (a transposed view costs
    nothing), a is copied first when it is not contiguous."""
    return _LINEAR(a, b_rows, None, "none", [], "")


def _untracked(*tensors: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, on oneDNN when use() chose it and autograd does not follow the operands (distances,
    hand-written backwards)."""
    if _on_onednn(a, b) and _worth_it(*a.shape, b.shape[1], MIN_PRODUCT_MULTIPLY_ADDS) and _untracked(a, b):
        return _product(a, b.T)
    return a @ b


def addmm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """out += alpha a @ b in place (the BLAS folds it into the product; oneDNN's product is added)."""
    if (_on_onednn(out, a, b) and _worth_it(*a.shape, b.shape[1], MIN_PRODUCT_MULTIPLY_ADDS)
            and _untracked(out, a, b)):
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
    @once_differentiable  # the op has no derivative of its own: a double backward raises
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = _product(grad, weight.T) if ctx.needs_input_grad[0] else None
        grad_weight = _product(grad.T, x.T) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN when use() chose it."""
    if (_onednn and not _tracing() and _on_onednn(x, weight, *(() if bias is None else (bias[None],)))
            and _worth_it(*x.shape, weight.shape[0], MIN_MULTIPLY_ADDS)):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """nn.Linear (the same parameters and state dict) whose product is linear()'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
