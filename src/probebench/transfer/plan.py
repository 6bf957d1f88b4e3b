"""Which directions a target model ablates for one task, and the transfer diagnostics of each.

For target t and every source s (docs/design.md §2) the target ablates:

* ``matched``: t's own probe, fitted with the same recipe on the same train prompts (Q1,
  *mechanism*; the target side of rho_CE). Its row doubles as the source side of every cell
  whose source is t, so the diagonal is the same computation on both sides.
* ``transferred`` (s != t): s's probe carried into t by a map fitted without labels on rows no
  probe saw (Q2, *portability*; the target side of rho_transferred), next to the null
  distributions of its AUROC and cosine from maps fitted on a noise source and on shuffled
  pairings.
* ``random``: ``n_random`` random unit directions, the null of rho_CE, drawn orthogonal to the
  target's massive dimensions (see `massive_dimensions`): a real model's residual has a few
  dimensions thousands of times larger than the rest at every token (Gemma-3-270M block 8: one
  near 5800, median 17.5), and an isotropic direction's small component there moves the margin
  more than any probe does, which makes "the probe beats random directions" unfair to the probe.

Every direction a target ablates obeys that rule, not the nulls alone: the matched, imported and
transferred directions have their massive-dimension components removed (then renormalized)
before they are ablated, so probe and null are edits of the same kind. Left whole, a probe is
unfair the other way: Gemma-3-270M's sentiment ``mean_diff`` direction has 53% of its squared
norm in three massive dimensions (-0.68 on dim 163), its projection ablation removes about 2800
from every residual, and that part alone moves the margin by 1.18 clean-margin SDs against 0.31
without it. AUROC, cosines and geometry describe the fitted directions as they are;
``transfers[source]["massive_share"]`` records the share removed. ``massive_factor`` 0 turns
the rule off for every direction.
* ``imported``: an imported probe (``PlanInputs.imported``) ablated in its own model, the source
  side of its cells; in every other target it is carried like a fitted probe (``transferred``).

    >>> plan = plan_target("gemma2-it", "sentiment", inputs)  # doctest: +SKIP
    >>> [job.kind for job in plan.jobs][:2]                    # doctest: +SKIP
    ['matched', 'transferred']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from probebench.errors import ProbebenchError
from probebench.stats import auroc
from probebench.transfer.maps import DirectionTransfer, cosine, empirical_p, null_directions


class PlanError(ProbebenchError):
    """Inputs that cannot be planned (unaligned map rows, too few map rows)."""


@dataclass(frozen=True)
class ModelActs:
    """One model's activations for one task: readout ``acts_ND`` for every prompt, and the
    map rows (``map_WD``: word ends or readouts of the held-aside prompts, aligned across models
    by ``map_key_W``)."""

    acts_ND: np.ndarray
    map_WD: np.ndarray
    map_key_W: np.ndarray

    @classmethod
    def from_extract(cls, tensors: dict[str, np.ndarray], *, map_rows: str, map_N: np.ndarray) -> "ModelActs":
        """From an extract output: ``map_rows`` "word_ends" uses the residuals at the word ends of the
        held-aside prompts, keyed by (prompt row, character offset) so that models with different
        tokenizers align on the same piece of text; "readout" uses the readouts of the ``map_N`` rows."""
        if map_rows == "word_ends":
            key_W = tensors["wordend_row_W"] * 1_000_000 + tensors["wordend_char_W"]
            return cls(tensors["acts_ND"], tensors["wordend_acts_WD"], key_W)
        return cls(tensors["acts_ND"], tensors["acts_ND"][map_N], np.flatnonzero(map_N))


@dataclass(frozen=True)
class PlanInputs:
    """Everything a target's plan reads. ``directions[m]`` is model m's probe direction for
    the task; ``test_N`` marks the held-out prompts, ``y_N`` their labels (only test labels are
    read, for AUROC)."""

    models: tuple[str, ...]
    directions: dict[str, np.ndarray]
    acts: dict[str, ModelActs]
    test_N: np.ndarray
    y_N: np.ndarray
    share_basis: Callable[[str, str], bool]
    method: str = "activation_ridge"
    alpha: float | None = None
    n_null: int = 20
    n_random: int = 8
    seed: int = 0
    mean_rows_N: np.ndarray | None = None  # rows whose mean of h.u is mu for mean ablation
    massive_factor: float = 20.0  # ablated directions avoid dims whose mean |h| exceeds this x the median (0: off)
    imported: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # probe id -> (model, direction)

    def sources(self) -> list[tuple[str, str, np.ndarray]]:
        """(label, model, direction) of every source: each model's fitted probe, then imports."""
        return ([(m, m, self.directions[m]) for m in self.models]
                + [(p, m, d) for p, (m, d) in sorted(self.imported.items())])


@dataclass(frozen=True)
class DirectionJob:
    kind: str  # matched | transferred | random
    source: str  # whose probe (the target itself for matched; "random<j>" for random)
    unit_D: np.ndarray
    mu: float


@dataclass
class TargetPlan:
    jobs: list[DirectionJob] = field(default_factory=list)
    transfers: dict[str, dict] = field(default_factory=dict)
    massive_dims: list[int] = field(default_factory=list)  # what every ablated direction is orthogonal to


def _unit(v_D: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v_D))
    if norm == 0.0 or not np.isfinite(norm):
        raise PlanError("a direction has zero or non-finite norm; check the probe")
    return np.asarray(v_D, dtype=np.float64) / norm


def stable_seed(*parts: object) -> int:
    """A seed from names, the same on every machine and Python (``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "big")


def random_directions(d: int, n: int, seed: int, exclude: list[int] | tuple[int, ...] = ()) -> np.ndarray:
    """[n, d] random unit directions, isotropic in the subspace orthogonal to the coordinate axes
    `exclude` (with none excluded, the same draws as an isotropic null).

    >>> r = random_directions(16, 4, 0, exclude=[3]); r.shape, bool(np.allclose(np.linalg.norm(r, axis=1), 1))
    ((4, 16), True)
    >>> float(np.abs(r[:, 3]).max())
    0.0
    """
    g = np.random.default_rng(seed).standard_normal((n, d))
    g[:, list(exclude)] = 0.0
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def massive_dimensions(acts_ND: np.ndarray, factor: float) -> list[int]:
    """Residual dimensions whose mean |h_d| over prompts exceeds `factor` times the median over
    dimensions (massive activations); none when factor is 0.

    >>> h = np.ones((10, 8)); h[:, 5] = 900.0
    >>> massive_dimensions(h, 20.0), massive_dimensions(np.ones((10, 8)), 20.0)
    ([5], [])
    """
    if factor <= 0:
        return []
    size_D = np.abs(np.asarray(acts_ND, dtype=np.float64)).mean(axis=0)
    return [int(i) for i in np.flatnonzero(size_D > factor * np.median(size_D))]


def outside_massive(unit_D: np.ndarray, massive_dims: list[int], what: str) -> tuple[np.ndarray, float]:
    """`unit_D` with its components on `massive_dims` removed, renormalized, and the share of its
    squared norm that was removed.

    >>> v, share = outside_massive(np.array([0.6, 0.8, 0.0]), [1], "probe"); v.tolist(), round(share, 2)
    ([1.0, 0.0, 0.0], 0.64)
    """
    kept_D = np.array(unit_D, dtype=np.float64)
    share = float((kept_D[massive_dims] ** 2).sum() / (kept_D ** 2).sum()) if massive_dims else 0.0
    if share == 0.0:
        return unit_D, 0.0  # untouched, to the bit (the random nulls, every model without massive dims)
    kept_D[massive_dims] = 0.0
    if share > 1.0 - 1e-12:
        raise PlanError(f"{what} lies entirely in the massive dimensions {massive_dims}, which no ablated "
                        "direction may touch; set ablate.massive_factor: 0 in params.yaml to ablate directions whole")
    return _unit(kept_D), share


def _aligned_map_rows(src: ModelActs, tgt: ModelActs, source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    if not np.array_equal(src.map_key_W, tgt.map_key_W):
        raise PlanError(f"map rows of {source} and {target} are not the same pieces of text; rerun extract for both")
    if src.map_WD.shape[0] < 2:
        raise PlanError(f"only {src.map_WD.shape[0]} map row(s) for {source}->{target}; raise transfer.map_fraction")
    return src.map_WD.astype(np.float64), tgt.map_WD.astype(np.float64)


def plan_target(target: str, task: str, inp: PlanInputs) -> TargetPlan:
    """The directions target `target` ablates for `task`, and per-source transfer diagnostics."""
    tgt = inp.acts[target]
    test_ND = tgt.acts_ND[inp.test_N].astype(np.float64)
    y_test = inp.y_N[inp.test_N]
    mean_rows = inp.mean_rows_N if inp.mean_rows_N is not None else ~inp.test_N
    native_D = _unit(inp.directions[target])
    plan = TargetPlan(massive_dims=massive_dimensions(tgt.acts_ND[mean_rows], inp.massive_factor))

    def job(kind: str, source: str, unit_D: np.ndarray) -> float:
        """Queue an ablation of `unit_D` outside the massive dims; returns the share removed."""
        unit_D, share = outside_massive(unit_D, plan.massive_dims, f"the {kind} direction of {source} in {target}")
        # mu is read only by mean ablation; no mean rows (a test-only fixture) -> 0
        mu = float((tgt.acts_ND[mean_rows].astype(np.float64) @ unit_D).mean()) if mean_rows.any() else 0.0
        plan.jobs.append(DirectionJob(kind, source, unit_D, mu))
        return share

    native_share = job("matched", target, native_D)
    native_auroc = auroc(test_ND @ native_D, y_test)
    for source, src_model, src_dir in inp.sources():
        src_dir = np.asarray(src_dir, dtype=np.float64)
        info: dict = {"native_auroc": native_auroc, "source_model": src_model,
                      "shared_basis": bool(src_model != target and inp.share_basis(src_model, target))}
        if info["shared_basis"] and src_dir.shape != native_D.shape:
            # `probebench check` refuses this where both widths are known before compute (config.json,
            # zoo params); a downloaded or imported model's width is first known here.
            raise PlanError(f"models {src_model} and {target} share a residual basis by their basis keys "
                            f"(models.{src_model}.basis / models.{target}.basis in params.yaml) but have d_model "
                            f"{src_dir.size} and {native_D.size}; models sharing a basis have one width: remove the "
                            "basis key that joins them")
        if info["shared_basis"]:
            # Same residual basis: the raw cosine of the two native probes is geometry.
            info["cosine_native"] = cosine(src_dir, native_D)
            null = random_directions(native_D.size, max(inp.n_null, 1), stable_seed(inp.seed, task, target, "cos"))
            info["cosine_native_null_p"] = empirical_p(info["cosine_native"], null @ native_D)
        if source == target:
            info.update(method="native", transfer_auroc=native_auroc, cosine_transfer=1.0, massive_share=native_share)
            plan.transfers[source] = info
            continue
        if src_model == target:  # an imported probe in its own model: the source side of its cells
            unit_D = _unit(src_dir)
            info.update(method="imported", transfer_auroc=auroc(test_ND @ unit_D, y_test),
                        cosine_transfer=cosine(unit_D, native_D))
            info["massive_share"] = job("imported", source, unit_D)
            plan.transfers[source] = info
            continue
        src_WD, tgt_WD = _aligned_map_rows(inp.acts[src_model], tgt, src_model, target)
        fit = DirectionTransfer(method=inp.method, alpha=inp.alpha).fit(src_WD, tgt_WD, src_dir)
        unit_D = _unit(fit.direction_)
        src_test = inp.acts[src_model].acts_ND[inp.test_N].astype(np.float64)
        info.update(method=inp.method, alpha=fit.alpha_, n_map_rows=int(src_WD.shape[0]),
                    r2_test=fit.score(src_test, test_ND, src_dir),
                    transfer_auroc=auroc(test_ND @ unit_D, y_test), cosine_transfer=cosine(unit_D, native_D))
        if inp.n_null:
            nulls = null_directions(src_WD, tgt_WD, src_dir, method=inp.method, alpha=fit.alpha_,
                                    n_null=inp.n_null, seed=stable_seed(inp.seed, task, source, target, "null"))
            null_R = np.concatenate([nulls["noise"], nulls["shuffled"]])
            null_R = null_R / np.linalg.norm(null_R, axis=1, keepdims=True)
            auc_R = np.array([auroc(test_ND @ v, y_test) for v in null_R])
            cos_R = null_R @ native_D
            info.update(n_null=int(len(null_R)),
                        transfer_auroc_null_p=empirical_p(info["transfer_auroc"], auc_R),
                        transfer_auroc_null_low=float(np.quantile(auc_R, 0.025)),
                        transfer_auroc_null_high=float(np.quantile(auc_R, 0.975)),
                        transfer_auroc_null_median=float(np.median(auc_R)),
                        cosine_transfer_null_p=empirical_p(info["cosine_transfer"], cos_R),
                        cosine_transfer_null_low=float(np.quantile(cos_R, 0.025)),
                        cosine_transfer_null_high=float(np.quantile(cos_R, 0.975)))
        info["massive_share"] = job("transferred", source, unit_D)
        plan.transfers[source] = info
    rand = random_directions(native_D.size, inp.n_random, stable_seed(inp.seed, task, target, "random"),
                             exclude=plan.massive_dims)
    for j, r_D in enumerate(rand):
        job("random", f"random{j}", r_D)
    return plan
