"""DVC stage emit: reports/probebench.yaml (CrossModelTransfer entries, schema-validated) and
reports/probebench.provenance.json (params hash, model fingerprints, code version, full cells)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from _common import console, run

import probebench
from probebench.cells.schema import read_cells
from probebench.leaderboard.entries import build_entries, check_probe_ids, probe_id
from probebench.artifacts.environment import versions
from probebench.artifacts.io import atomic_write_text, dumps_json, read_json
from probebench.params.schema import Params
from probebench.probes.fit import load_probe


def main(params: Params, argv: list[str]) -> None:
    cells = read_cells(Path("reports/cells.parquet"))
    metas = {m: read_json(Path("data/extract") / m / "meta.json") for m in params.models}
    names = {m: params.display_name(m) for m in params.models}
    ids = {(task, s): probe_id(params.emit.probe_id_prefix, task, s, metas[s]["layer"], params.probe.method,
                               params.transfer.method)
           for task in params.tasks for s in params.models}
    origin = {k: f"emit.probe_id_prefix {params.emit.probe_id_prefix!r} (models.{k[1]}, tasks.{k[0]})" for k in ids}
    # an imported probe keeps the id its bundle declared (the leaderboard key of the submission)
    ids.update({(pr.task, key): load_probe(pr.path).card.get("id") or key for key, pr in params.probes.items()})
    origin.update({(pr.task, key): f"probes.{key} (bundle id in {pr.path})" for key, pr in params.probes.items()})
    # invalid or colliding ids name their params key now, not as entry N of the emitted list
    check_probe_ids(ids, origin=origin, model={**names, **{key: names[pr.model] for key, pr in params.probes.items()}})
    entries, cells_provenance = build_entries(cells, names, ids)
    params_json = params.model_dump_json()
    provenance = {
        "code_version": probebench.__version__,
        "versions": versions(),
        "params_sha256": hashlib.sha256(params_json.encode()).hexdigest(),
        "models": {m: {"name": names[m], "fingerprint": metas[m]["fingerprint"], "layer": metas[m]["layer"],
                       "n_layers": metas[m]["n_layers"], "d_model": metas[m]["d_model"]} for m in params.models},
        "tasks": {t: read_json(Path("data/prompts") / f"{t}.json") for t in params.tasks},
        "ablation": params.ablate.model_dump(), "transfer": params.transfer.model_dump(),
        "bootstrap": params.bootstrap.model_dump(), "rules": params.matrix.model_dump(),
        "entries": cells_provenance,
    }
    header = ("# ProbeBench CrossModelTransfer entries written by probebench emit.\n"
              "# Apply to the site: probebench leaderboard apply reports/probebench.yaml --data lib/probebench-data.ts\n")
    atomic_write_text(Path("reports/probebench.yaml"),
                      header + yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=10_000))
    atomic_write_text(Path("reports/probebench.provenance.json"), dumps_json(provenance))
    n_scored = sum(bool(p["cell"]["scored"]) for p in cells_provenance)
    console.print(f"emit: {len(entries)} entries ({n_scored} scored) -> reports/probebench.yaml")


if __name__ == "__main__":
    run(main)
