"""Time the paired-bootstrap Pearson CI for one cell (N = 256 prompts, B = 1000 resamples).

    python benchmarks/bootstrap.py [--repeats 7]

(a) ours: bootstrap_indices + pearson_rows + percentile_ci (one vectorized pass);
(b) scipy.stats.bootstrap with a per-resample pearsonr (vectorized=False);
(c) scipy.stats.bootstrap with pearsonr(axis=-1) as a vectorized statistic.

Prints a table, then as the LAST line one JSON object (ours_ms, scipy_ms,
scipy_vectorized_ms, speedup_vs_scipy, speedup_vs_scipy_vectorized).
(a) includes building the index matrix even though production builds it once and
shares it across cells, so its time is an upper bound per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import scipy
import scipy.stats

from probebench.stats import bootstrap_indices, pearson_rows, percentile_ci

N, B, LEVEL = 256, 1000, 0.95


def _time_ms(fn: Callable[[], tuple[float, float]]) -> tuple[float, tuple[float, float]]:
    t0 = time.perf_counter()
    ci = fn()
    return 1e3 * (time.perf_counter() - t0), ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x_N = rng.normal(size=N)
    y_N = 0.6 * x_N + 0.8 * rng.normal(size=N)

    def ours() -> tuple[float, float]:
        idx_SN = bootstrap_indices(N, n_resamples=B, seed=0)
        return percentile_ci(pearson_rows(x_N[idx_SN], y_N[idx_SN]), LEVEL)

    def scipy_loop() -> tuple[float, float]:
        res = scipy.stats.bootstrap(
            (x_N, y_N), statistic=lambda x, y: scipy.stats.pearsonr(x, y).statistic,
            paired=True, vectorized=False, n_resamples=B, method="percentile",
            confidence_level=LEVEL, rng=np.random.default_rng(0),
        )
        return res.confidence_interval.low, res.confidence_interval.high

    def scipy_vec() -> tuple[float, float]:
        res = scipy.stats.bootstrap(
            (x_N, y_N), statistic=lambda x, y, axis: scipy.stats.pearsonr(x, y, axis=axis).statistic,
            paired=True, vectorized=True, axis=-1, n_resamples=B, method="percentile",
            confidence_level=LEVEL, rng=np.random.default_rng(0),
        )
        return res.confidence_interval.low, res.confidence_interval.high

    methods = {"ours": ours, "scipy": scipy_loop, "scipy_vectorized": scipy_vec}
    # The per-resample loop is ~30-50x slower: time it in fewer rounds.
    loop_rounds = max(1, min(args.repeats, 3))
    times: dict[str, list[float]] = {k: [] for k in methods}
    cis: dict[str, tuple[float, float]] = {}
    for k, fn in methods.items():  # warm-up (imports, caches) outside the timed runs
        try:
            cis[k] = fn()
        except Exception as err:  # older scipy: pearsonr without axis=
            print(f"({k}) failed: {type(err).__name__}: {err}")
            cis[k] = (float("nan"), float("nan"))
    # Interleave the methods round by round so a noisy (shared) machine slows all alike.
    for rnd in range(args.repeats):
        for k, fn in methods.items():
            if np.isnan(cis[k][0]) or (k == "scipy" and rnd >= loop_rounds):
                continue
            ms, cis[k] = _time_ms(fn)
            times[k].append(ms)
    med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
    ours_ms, scipy_ms, vec_ms = med["ours"], med["scipy"], med["scipy_vectorized"]
    ours_ci, scipy_ci, vec_ci = cis["ours"], cis["scipy"], cis["scipy_vectorized"]

    print(f"paired bootstrap Pearson CI, one cell: N={N}, B={B}, level={LEVEL}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cpus; median of {args.repeats} interleaved runs "
          f"((b): {loop_rounds})")
    print(f"{'method':<42}{'ms/cell':>10}{'speedup':>10}   CI")
    for name, ms, ci in (
        ("(a) ours: indices+pearson_rows+percentile", ours_ms, ours_ci),
        ("(b) scipy.stats.bootstrap, loop pearsonr", scipy_ms, scipy_ci),
        ("(c) scipy.stats.bootstrap, vectorized", vec_ms, vec_ci),
    ):
        print(f"{name:<42}{ms:>10.2f}{ms / ours_ms:>9.1f}x   [{ci[0]:.4f}, {ci[1]:.4f}]")
    # Same seed => same index matrix as scipy draws, so the CIs should agree.
    for other, ci in (("b", scipy_ci), ("c", vec_ci)):
        print(f"max |CI(a) - CI({other})| = {np.max(np.abs(np.subtract(ours_ci, ci))):.2e}")

    def num(v: float, nd: int) -> float | None:  # strict JSON has no NaN: failed -> null
        return None if np.isnan(v) else round(v, nd)

    print(json.dumps({
        "ours_ms": num(ours_ms, 4),
        "scipy_ms": num(scipy_ms, 4),
        "scipy_vectorized_ms": num(vec_ms, 4),
        "speedup_vs_scipy": num(scipy_ms / ours_ms, 2),
        "speedup_vs_scipy_vectorized": num(vec_ms / ours_ms, 2),
    }))


if __name__ == "__main__":
    main()
