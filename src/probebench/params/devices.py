"""Which torch devices this machine can run on: one rule for `probebench check` and the model
loaders (a CUDA device without a visible GPU makes torch raise a bare AssertionError deep inside
`model.to`)."""

from __future__ import annotations


_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_type(device: str) -> str | None:
    """The torch device type of `device` if it is one probebench can run on, else None."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        return None
    return kind if kind in _DEVICE_TYPES else None


def device_problem(device: str) -> str | None:
    """Why `device` cannot be used on this machine (None when it can): a CUDA device without a
    visible GPU makes torch raise a bare AssertionError deep inside `model.to`.

    >>> device_problem("cpu") is None
    True
    """
    import torch

    kind = device_type(device)
    if kind is None:
        return f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps"
    index = torch.device(device).index or 0
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            return (f"device {device!r} but torch sees no CUDA GPU here (torch {torch.__version__}); "
                    "use device: cpu, or run on a machine with a visible GPU")
        if index >= n:
            return f"device {device!r} but only {n} CUDA device(s) are visible; use cuda:0..cuda:{n - 1}"
    if kind == "mps" and not torch.backends.mps.is_available():
        return f"device {device!r} but MPS is not available here; use device: cpu"
    if kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return f"device {device!r} but no XPU is available here; use device: cpu"
    return None
