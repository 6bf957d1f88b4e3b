"""Wall time of the whole pipeline: plain `dvc repro` vs `probebench run --executor ray` with 1
and with 2 workers, each from a fresh clone of this repository (empty DVC cache and cell store).

    python benchmarks/executor.py [--workers 1 2] [--cpus-per-stage 1] [--tiny] [--keep]

Each run is a `git clone` of HEAD (the pinned zoo, the committed params) into a temporary
directory; the Ray runs start a local Ray cluster with `--workers` CPUs. Prints one row per run
(wall seconds, ratio to the plain run, stages the final dvc repro had to run, whether dvc.lock
equals the plain run's) and, as the LAST line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from probebench.executor.plan import command_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def clone(dest: Path, tiny: bool) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    if tiny:
        sys.path.insert(0, str(ROOT))
        from tests.support.pipeline import tiny_params

        (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
        subprocess.run(["git", "commit", "-qam", "tiny params"], cwd=dest, check=True)
    return dest


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=command_env(cwd, str(BIN)), text=True, capture_output=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus-per-stage", type=float, default=1)
    ap.add_argument("--tiny", action="store_true", help="the pipeline test's tiny zoo instead of the default run")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="probebench-executor-"))
    rows = []
    plain = clone(tmp / "plain", args.tiny)
    wall, _ = timed([str(BIN / "dvc"), "repro"], plain)
    reference_lock = (plain / "dvc.lock").read_bytes()
    rows.append({"run": "dvc repro", "wall_s": round(wall, 1), "ratio": 1.0, "final_ran": None, "lock_equal": True})
    for n in args.workers:
        project = clone(tmp / f"ray{n}", args.tiny)
        w, out = timed([str(BIN / "probebench"), "run", "--executor", "ray", "--workers", str(n),
                        "--cpus-per-stage", str(args.cpus_per_stage)], project)
        restored = "every stage restored from the run-cache" in " ".join(out.split())   # rich wraps lines
        rows.append({"run": f"ray, {n} worker{'s' * (n > 1)}", "wall_s": round(w, 1), "ratio": round(w / wall, 2),
                     "final_ran": 0 if restored else None,
                     "lock_equal": (project / "dvc.lock").read_bytes() == reference_lock})
    print(f"{'run':<18}{'wall s':>9}{'x plain':>9}  final repro ran  dvc.lock = plain")
    for r in rows:
        print(f"{r['run']:<18}{r['wall_s']:>9}{r['ratio']:>9}  {str(r['final_ran']):<15}  {r['lock_equal']}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(tmp)])
    print(json.dumps({"cpus": os.cpu_count(), "tiny": args.tiny, "cpus_per_stage": args.cpus_per_stage, "runs": rows}))


if __name__ == "__main__":
    main()
