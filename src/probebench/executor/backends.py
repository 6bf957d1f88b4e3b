"""The engines that place stages on workers: Ray (a laptop or a cluster) and SLURM (submitit).

Both take the plan (stages in `dvc repro` order with their upstream stages and resources) and a
`make_job(spec)`, call `board.update(...)` as stages finish, and return the outcomes by stage.
Ray schedules the DAG itself: each stage is a task whose arguments are its upstream stages'
result references, so a stage starts when its inputs are done, on a node that has its CPUs,
GPUs and memory, and Ray retries it when its worker dies (`max_retries`). SLURM has no such
references: the coordinator submits a stage once its upstream jobs have finished, one job per
stage, and resubmits a failed one up to `retries` times.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Callable
from urllib.parse import urlsplit

from probebench.executor.plan import ExecutorError, StageSpec
from probebench.executor.worker import Job, StageKilled, StageOutcome, run_job

MakeJob = Callable[[StageSpec], Job]
RAY_CONNECT_TIMEOUT_S = 3.0


def connect_ray(address: str | None, workers: int | None) -> None:
    """Join the cluster at `address` (or start one with `workers` CPUs here), before the run's
    board is shown: an address that is no Ray cluster is one line after a few seconds, not a
    traceback after Ray's 20 one-second retries (RAY_gcs_server_port_wait_time_s bounds them
    unless the user set it)."""
    import os

    import ray

    if ray.is_initialized():
        return
    if not address:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        return
    check_ray_address(address)
    key = "RAY_gcs_server_port_wait_time_s"
    preset = os.environ.get(key)
    os.environ.setdefault(key, str(int(RAY_CONNECT_TIMEOUT_S) + 2))
    # Ray's C++ client logs every failed try to fd 2: hold that back, and show it only if it joined
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExecutorError(f"--address {address}: no Ray cluster could be joined there ({first}); pass the "
                                "address `ray start --head` printed (its GCS port, 6379 by default), or leave "
                                "--address out to start a cluster on this machine") from None
        else:
            held.seek(0)
            os.write(saved, held.read())
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if preset is None:
                os.environ.pop(key, None)


def run_ray(plan: list[StageSpec], make_job: MakeJob, board, *, address: str | None, workers: int | None,
            retries: int) -> dict[str, StageOutcome]:
    import ray

    connect_ray(address, workers)
    try:
        cluster = ray.cluster_resources()
        remote = ray.remote(run_job)
        refs: dict = {}
        for spec in plan:   # dvc repro's order: every stage after its upstream stages
            request = ray_request(spec, cluster)
            refs[spec.name] = remote.options(name=spec.name, max_retries=retries, retry_exceptions=[StageKilled],
                                             **request).remote(make_job(spec), *(refs[u] for u in spec.upstream))
        names = {ref: name for name, ref in refs.items()}
        pending = list(refs.values())
        outcomes: dict[str, StageOutcome] = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                try:
                    outcomes[names[ref]] = ray.get(ref)
                    board.update(names[ref], "done", outcome=outcomes[names[ref]])
                except Exception as exc:   # the stage's own error, or an upstream stage's
                    board.update(names[ref], "failed", error=_ray_error(exc))
            board.poll()
        return outcomes
    finally:
        ray.shutdown()


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse an --address nothing answers at, within `timeout_s`: `ray.init` would otherwise
    retry for 20 s before it fails with a traceback. `auto` (the cluster `ray start`
    recorded on this machine) is left to Ray.

    >>> check_ray_address("ray-head")
    Traceback (most recent call last):
    ...
    probebench.executor.plan.ExecutorError: --address 'ray-head': expected HOST:PORT (the address `ray start --head` prints, e.g. 10.0.0.5:6379), ray://HOST:PORT or auto
    """
    if address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    try:
        parts = urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if scheme == "ray" and host and port is None:
        port = 10001   # the Ray Client server's default port
    if scheme not in ("", "ray") or not host or port is None:
        raise ExecutorError(f"--address {address!r}: expected HOST:PORT (the address `ray start --head` prints, e.g. "
                            "10.0.0.5:6379), ray://HOST:PORT or auto")
    # with RAY_USE_TLS (which a TLS cluster's clients need too) Ray speaks gRPC over TLS: only TCP is probed
    tls = os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true", "yes")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            speaks_grpc = tls or _answers_http2(conn)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        raise ExecutorError(f"--address {address}: no Ray cluster answers at {host}:{port} ({reason}, waited at most "
                            f"{timeout_s:g} s); start one there with `ray start --head` and pass the address it prints, "
                            "or leave --address out to start a cluster on this machine") from None
    if not speaks_grpc:
        # ray.init would retry such a port for minutes before it gives up
        raise ExecutorError(f"--address {address}: something listens at {host}:{port} but it is no Ray cluster (it "
                            "does not answer gRPC, which Ray's GCS and client server speak); pass the address "
                            "`ray start --head` printed (its GCS port, 6379 by default), or leave --address out to "
                            "start a cluster on this machine")


# The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4): a gRPC server answers with
# a SETTINGS frame of its own (frame type 0x4 in the 4th byte of its 9-byte header).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the peer answers the HTTP/2 preface with a SETTINGS frame (within the socket's
    timeout), or with a TLS record (Ray with RAY_USE_TLS=1 speaks gRPC over TLS). An HTTP/1
    server, a database or a silent port does neither."""
    conn.sendall(_HTTP2_PREFACE)
    head = b""
    try:
        while len(head) < 9 and head[:1] not in (b"\x15", b"\x16"):
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except (TimeoutError, socket.timeout):
        pass  # judged on what arrived
    if head[:1] in (b"\x15", b"\x16"):
        return True  # a TLS record (alert or handshake): a cluster started with RAY_USE_TLS=1 answers so
    return len(head) == 9 and head[3] == 0x04


def ray_request(spec: StageSpec, cluster: dict) -> dict:
    """Ray resources for a stage, fitted to the cluster: a request no node can meet would leave
    the task pending forever, so CPUs and memory are capped at the cluster's and a GPU stage on a
    cluster without GPUs is an error.

    >>> ray_request(StageSpec("extract@m", (), cpus=4, gpus=0, mem_gb=2), {"CPU": 2.0, "memory": 8 * 2**30})
    {'num_cpus': 2.0, 'num_gpus': 0, 'memory': 2147483648}
    """
    if spec.gpus > cluster.get("GPU", 0):
        raise ExecutorError(f"stage {spec.name} needs {spec.gpus:g} GPU (a model on cuda) but the Ray cluster has "
                            f"{cluster.get('GPU', 0):g}; start the workers with GPUs (ray start --num-gpus N) or set "
                            "the model's device: cpu")
    memory = min(int(spec.mem_gb * 2**30), int(cluster.get("memory", spec.mem_gb * 2**30)))
    return {"num_cpus": min(spec.cpus, cluster.get("CPU", 1.0)), "num_gpus": spec.gpus, "memory": memory}


def _ray_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause if cause is not None else exc).strip()


def run_slurm(plan: list[StageSpec], make_job: MakeJob, board, *, folder: str, cluster: str | None,
              retries: int, partition: str | None, timeout_min: int, max_running: int) -> dict[str, StageOutcome]:
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    outcomes: dict[str, StageOutcome] = {}
    failed: dict[str, str] = {}
    running: dict = {}
    tries: dict[str, int] = {}
    while len(outcomes) + len(failed) < len(plan):
        for spec in plan:
            name = spec.name
            if name in outcomes or name in failed or name in running:
                continue
            lost = [u for u in spec.upstream if u in failed]
            if lost:
                failed[name] = f"upstream stage {lost[0]} failed"
                board.update(name, "failed", error=failed[name])
            elif all(u in outcomes for u in spec.upstream) and len(running) < max_running:
                executor.update_parameters(
                    name=name, timeout_min=timeout_min, cpus_per_task=max(1, int(round(spec.cpus))),
                    gpus_per_node=int(spec.gpus), mem_gb=spec.mem_gb, nodes=1, tasks_per_node=1,
                    **({"slurm_partition": partition} if partition else {}))
                running[name] = executor.submit(run_job, make_job(spec), *(outcomes[u] for u in spec.upstream))
                tries[name] = tries.get(name, 0) + 1
        for name, job in list(running.items()):
            if not job.done():
                continue
            del running[name]
            try:
                outcomes[name] = job.result()
                board.update(name, "done", outcome=outcomes[name])
            except Exception as exc:   # FailedJobError (stage error), UncompletedJobError (killed, timed out)
                if tries[name] <= retries and not _is_stage_error(exc):
                    board.update(name, "pending", error=f"attempt {tries[name]} lost; resubmitted")
                    continue
                failed[name] = f"{exc}".strip()
                board.update(name, "failed", error=failed[name])
        board.poll()
        time.sleep(0.5)
    return outcomes


def _is_stage_error(exc: BaseException) -> bool:
    """A failing stage command fails again on a retry; a lost job (killed, preempted, timed out) may not."""
    return "StageFailed" in f"{type(exc).__name__}: {exc}"
