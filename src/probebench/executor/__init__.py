"""Run the pipeline's stages on many workers (Ray, SLURM) and join the results through DVC's
cache and run-cache: `probebench run --executor ray|slurm` (docs/cluster.md).

    >>> from probebench.executor import run_distributed                 # doctest: +SKIP
    >>> summary = run_distributed(".", executor="ray", workers=2)         # doctest: +SKIP
    >>> summary.final_ran                                                 # doctest: +SKIP
    []
"""

from probebench.executor.coordinator import RunSummary, run_distributed
from probebench.executor.plan import ExecutorError, StageSpec, stage_plan
from probebench.executor.worker import Job, StageOutcome, merge_lock, run_job

__all__ = ["ExecutorError", "Job", "RunSummary", "StageOutcome", "StageSpec", "merge_lock", "run_distributed",
           "run_job", "stage_plan"]
