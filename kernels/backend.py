"""Which implementation the public functions use: ``auto``, ``triton`` or ``torch``.

``auto`` runs the Triton kernels on CUDA tensors and the torch reference elsewhere; ``triton`` forces the
kernels (through Triton's interpreter on CPU tensors); ``torch`` forces the reference. The initial value comes
from the environment variable ``TNT_KERNEL_BACKEND`` (default ``auto``).
"""

import contextlib
import os
from collections.abc import Iterator

import torch

BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
ENV_VAR = "TNT_KERNEL_BACKEND"


def _validated(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    return name


_backend: str = _validated(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")


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


def use_triton(t: torch.Tensor) -> bool:
    """Whether a call on tensor ``t`` goes to the Triton kernels under the current backend."""
    if _backend == "auto":
        return t.is_cuda
    return _backend == "triton"


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def prepare_triton(t: torch.Tensor) -> None:
    """Make sure a Triton kernel can run on ``t``'s device, before the kernel modules are first imported.

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
