"""DVC stage report: reports/index.html and its figures (reports/figures/<name>.svg, shown by the
page, and reports/figures/png/<name>.png, shown by `dvc plots`). The page is built by
probebench.report.page from the stage outputs; this shell reads them and writes the result atomically."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd
from _common import console, run

from probebench.artifacts.io import atomic_dir, atomic_write_bytes, atomic_write_text, read_json
from probebench.cells.schema import read_cells
from probebench.errors import InputFileError
from probebench.crosscoder.paths import audit_metrics_path, report_dir, train_metrics_path
from probebench.params.schema import Params
from probebench.report.page import ReportInputs, build_report

OUT = Path("reports")
VERSIONS = ("probebench", "numpy", "pandas", "matplotlib", "torch", "transformers", "dvc")


def read_optional_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc}); rerun the stage that writes it") from exc


def zoo_table(params: Params) -> pd.DataFrame:
    """One row per model of the matrix: architecture (family for zoo models), width, depth and size,
    the zoo model's verdict accuracy and the held-out AUROC of the ablated probe method, per task."""
    prov = read_optional_json(OUT / "probebench.provenance.json") or {}
    rows = []
    for model, spec in params.models.items():
        zoo_spec = params.zoo.models.get(model)
        finetune = params.zoo.finetunes.get(model)
        if finetune is not None:
            zoo_spec = params.zoo.models.get(finetune.base)
        meta = (prov.get("models") or {}).get(model, {})
        row = {"model": model,
               "architecture": (zoo_spec.family + (f" (fine-tune of {finetune.base})" if finetune else "")
                                if zoo_spec else (spec.hf_id or spec.path)),
               "d_model": meta.get("d_model", getattr(zoo_spec, "d_model", None)),
               "layers": meta.get("n_layers", getattr(zoo_spec, "n_layers", None)),
               "probed layer": meta.get("layer"),
               # a shared residual basis is what makes a raw cosine between two models' probes meaningful
               "shares basis with": spec.basis or ""}
        zoo_metrics = read_optional_json(Path("metrics/zoo") / f"{model}.json") or {}
        row["parameters"] = zoo_metrics.get("n_params")
        probe_metrics = read_optional_json(Path("metrics/probe") / f"{model}.json") or {}
        for task in params.tasks:
            row[f"accuracy {task}"] = (zoo_metrics.get("accuracy") or {}).get(task)
        for task in params.tasks:
            row[f"probe AUROC {task} ({params.probe.method})"] = \
                ((probe_metrics.get("auroc_test") or {}).get(task) or {}).get(params.probe.method)
        rows.append(row)
    return pd.DataFrame(rows)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def main(params: Params, argv: list[str]) -> None:
    effects_path = Path("data/effects.parquet")
    inputs = ReportInputs(
        cells=read_cells(OUT / "cells.parquet"),
        effects=pd.read_parquet(effects_path) if effects_path.exists() else None,
        zoo=zoo_table(params),
        crosscoder_metrics={str(p): m for key in params.crosscoders for p in (audit_metrics_path(key), train_metrics_path(key))
                            if (m := read_optional_json(p)) is not None} or None,
        crosscoder_latents={key: pd.read_csv(report_dir(key) / "latents.csv") for key in params.crosscoders
                            if (report_dir(key) / "latents.csv").exists()} or None,
        cosine_summary=read_optional_json(OUT / "cosine_vs_rho.json"),
        provenance=read_optional_json(OUT / "probebench.provenance.json"),
        thresholds={**{k: v for k, v in params.matrix.model_dump().items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)},
                    "null_alpha": params.transfer.null_alpha},
        versions=versions(),
        tasks=tuple(params.tasks),
    )
    report = build_report(inputs)
    # The whole figure directory is replaced in one rename, so figures of a previous run's tasks
    # do not linger; the page is written last and only refers to figures that now exist.
    with atomic_dir(OUT / "figures") as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the published folder is readable like its files
        for fig in report.figures.values():
            atomic_write_bytes(tmp / f"{fig.name}.svg", fig.svg)
            atomic_write_bytes(tmp / "png" / f"{fig.name}.png", fig.png)
    atomic_write_text(OUT / "index.html", report.html)
    console.print(f"report: {OUT / 'index.html'} ({len(report.figures)} figures, SVG + PNG)")


if __name__ == "__main__":
    run(main)
