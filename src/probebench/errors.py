"""One base for every error probebench raises on purpose, and the input checks they share.

A `ProbebenchError` is a problem with what the user gave (a file, a params key, a model): the
CLI and the stage shells print it as one line and exit 2. Anything else is a bug in probebench
or a library, and keeps its traceback. The base derives from `ValueError`, so code written
against the older classes (each a `ValueError`) still catches them.

    >>> from probebench.errors import ProbebenchError, require_finite
    >>> class DemoError(ProbebenchError): ...
    >>> require_finite("acts", np.array([1.0, np.nan]), DemoError)
    Traceback (most recent call last):
    ...
    probebench.errors.DemoError: acts contains 1 NaN value(s) (first at index (1,)); drop or recompute those rows
"""

from __future__ import annotations

import numpy as np


class ProbebenchError(ValueError):
    """A problem with the user's input, stated with the file or key and the fix."""


def require_finite(name: str, arr: np.ndarray, err: type[ProbebenchError]) -> None:
    """Raise `err` naming the array, the count of NaN/inf values and the first bad index."""
    if arr.dtype.kind not in "fc" or np.isfinite(arr).all():
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    kinds = ", ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if s)
    raise err(f"{name} contains {kinds} value(s) (first at index {first}); drop or recompute those rows")


class InputFileError(ProbebenchError):
    """A file the user or an earlier stage provides is missing or malformed."""
