"""Input checks shared by the fitted estimators (probes, direction transfer)."""

from __future__ import annotations

import numpy as np


def require_finite(name: str, arr: np.ndarray, err: type[ValueError]) -> None:
    """Raise `err` naming the array, the count of NaN/inf values and the first bad index."""
    if arr.dtype.kind not in "fc" or np.isfinite(arr).all():
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    kinds = ", ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if s)
    raise err(f"{name} contains {kinds} value(s) (first at index {first}); drop or recompute those rows")
