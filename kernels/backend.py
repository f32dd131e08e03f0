"""Which implementation the public functions use, and whether the fused backward recomputes its factors.

Backend: ``auto`` runs the Triton kernels on CUDA tensors of a supported dtype (``TRITON_DTYPES``) and the
torch reference elsewhere; ``triton`` forces the kernels (through Triton's interpreter on CPU tensors) and
refuses other dtypes; ``torch`` forces the reference. The initial value comes from ``TNT_KERNEL_BACKEND``
(default ``auto``).

Recompute: by default ``fused_up_product`` saves its [M, k·h] factors for backward (the forward GEMM's
epilogue writes them), so backward costs the same two GEMMs as a plain linear layer. With recompute on it
saves only its inputs and backward repeats the up-projection GEMM: less activation memory, one GEMM more.
The initial value comes from ``TNT_KERNEL_RECOMPUTE`` (``1``/``0``, default ``0``).
"""

import contextlib
import os
from collections.abc import Iterator

import torch

BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
ENV_VAR = "TNT_KERNEL_BACKEND"
RECOMPUTE_ENV_VAR = "TNT_KERNEL_RECOMPUTE"
# fp64 is refused: the kernels compute in fp32, and Triton's fp64 dot does not compile for these targets.
TRITON_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


def _validated(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    return name


def _flag(name: str) -> bool:
    value = os.environ.get(name, "0").strip().lower()
    if value not in ("0", "1", "false", "true", "off", "on", ""):
        raise ValueError(f"environment variable {name}={value!r}: expected 0 or 1")
    return value in ("1", "true", "on")


_backend: str = _validated(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")
_recompute: bool = _flag(RECOMPUTE_ENV_VAR)


def set_backend(name: str) -> None:
    """Select the backend for all later calls (process-wide)."""
    global _backend
    _backend = _validated(name)


def get_backend() -> str:
    """The current backend name."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend: ``with kernels.use_backend("torch"): ...``."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def set_recompute(on: bool) -> None:
    """Process-wide default of ``fused_up_product(..., recompute=None)``: recompute the factors in backward."""
    global _recompute
    if not isinstance(on, bool):
        raise TypeError(f"set_recompute takes a bool, got {on!r}")
    _recompute = on


def get_recompute() -> bool:
    """Whether the fused up-projection recomputes its factors in backward by default (False: it saves them)."""
    return _recompute


def check_triton_dtype(t: torch.Tensor, name: str = "input") -> None:
    """Raise TypeError naming ``name`` and its dtype unless it is one of ``TRITON_DTYPES``."""
    if t.dtype not in TRITON_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in TRITON_DTYPES)
        raise TypeError(
            f"{name}: the Triton kernels take {names} tensors, got {str(t.dtype).removeprefix('torch.')}; "
            "use kernels.set_backend('torch') (or 'auto') for other dtypes"
        )


def use_triton(t: torch.Tensor, name: str = "input") -> bool:
    """Whether a call on tensor ``t`` goes to the Triton kernels under the current backend.

    Raises TypeError (naming ``name``) when the backend is ``triton`` and ``t``'s dtype is not supported.
    """
    if _backend == "torch":
        return False
    if _backend == "auto":
        return t.is_cuda and t.dtype in TRITON_DTYPES
    check_triton_dtype(t, name)
    return True


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def prepare_triton(t: torch.Tensor, name: str = "input") -> None:
    """Make sure a Triton kernel can run on ``t`` (device, dtype), before the kernel modules are first imported.

    Without CUDA the interpreter is switched on here: triton reads ``TRITON_INTERPRET`` when a kernel is
    decorated, and the kernel modules are imported lazily, after this call.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if not t.is_cuda and not interpreting():
        raise RuntimeError(
            f"the Triton backend got a {t.device.type} tensor; Triton runs on CUDA tensors, or on CPU "
            "tensors only in interpreter mode (set TRITON_INTERPRET=1 before importing triton or "
            "torch._dynamo)"
        )
    check_triton_dtype(t, name)
