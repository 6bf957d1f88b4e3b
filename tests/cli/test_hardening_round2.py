"""Hardening, round 2: hostile or careless input to verify, the leaderboard ids, the executor's
options, `run`'s targets and lock, `zoo spread`, `probe import --out`, unwritable stage outputs,
three messages, and `probebench exp`. Each test plants the input and checks the exit code, the
line and that nothing was written or removed."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from probebench.cli import main as cli
from probebench.cli import zoo as cli_zoo
from probebench.artifacts.verify import csv_diff, json_diff, numeric_diff
from probebench.crosscoder.loading import CrossCoderLoadError, load_crosscoder
from probebench.leaderboard.entries import check_probe_ids
from probebench.leaderboard.schema import LeaderboardError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
runner = CliRunner()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_mode) for p in root.rglob("*")}


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def project(tmp_path: Path) -> Path:
    """dvc.yaml and the project's params (without the crosscoder audits) in tmp_path, as a git checkout."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["crosscoders"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / ".git").mkdir()
    return tmp_path


# --- item 1: verify's tolerance is a number >= 0; integers match exactly --------------------------

@pytest.mark.parametrize("tol", ["nan", "-1", "inf"])
def test_verify_refuses_a_tolerance_that_is_no_number_and_integers_must_match(tol, monkeypatch):
    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: pytest.fail("git ran before --tol was checked"))
    result = runner.invoke(cli.app, ["verify", "--tol", tol])
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        f"error: --tol {float(tol)}: must be a finite number >= 0 (the absolute tolerance per number, e.g. --tol 1e-4)"]
    # integers (and integer-valued CSV columns and JSON keys) match exactly; a rounded float gets no extra unit
    assert csv_diff("task,n\nx,256\n", "task,n\nx,257\n", tol=1e-4) == [
        "row 1 column 'n': 256 vs 257 (integers must match exactly)"]
    assert json_diff({"t": {"count": 16}}, {"t": {"count": 16.1}}, tol=1e-4) == [
        "t.count: 16 vs 16.1 (integer-valued key: must match exactly)"]
    assert json_diff({"n_label_driven": 12.0}, {"n_label_driven": 12.00001}, tol=1e-4)
    assert numeric_diff("rho 0.612", "rho 0.613", tol=1e-4) == ["number 0: 0.612 vs 0.613 (|diff| 0.001 > 0.0001)"]
    assert csv_diff("a,rho\nx,1\ny,0.5\n", "a,rho\nx,0.99999\ny,0.5\n", tol=1e-4) == []  # a float column printing 1


# --- item 2: bundle ids follow the site's rules where they are written and read --------------------------

BAD_IDS = [("a\x00b", "control character U+0000"), ("a\nb", "control character U+000A"), ("a b", "whitespace"),
           ("-rf", "starts with '-'"), ("alice/../x", "path-like"), ("/etc/x", "path-like")]


@pytest.mark.parametrize("bad, problem", BAD_IDS)
def test_bad_bundle_ids_are_refused_naming_the_id(tmp_path, bad, problem):
    entries = tmp_path / "probebench.yaml"
    entries.write_text(yaml.safe_dump([{"probeId": bad, "sourceModel": "s", "targetModel": "t", "pearson_ce": 0.5}]))
    site = tmp_path / "probebench-data.ts"
    shutil.copy(FIXTURES / "leaderboard" / "probebench-data.ts", site)
    before = snapshot(tmp_path)
    result = runner.invoke(cli.app, ["leaderboard", "apply", str(entries), "--data", str(site)])
    assert result.exit_code == 2, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and f"entry 0: probeId {bad!r} " in lines[0] and problem in lines[0], result.output
    assert snapshot(tmp_path) == before
    # where emit writes them: an imported bundle's id names its params key
    ids = {("sentiment", "llama-s"): "probebench-sentiment-llama-s", ("sentiment", "mine"): bad}
    with pytest.raises(LeaderboardError, match=rf"^params\.yaml: probes\.mine: probeId .* {re.escape(problem)}"):
        check_probe_ids(ids, origin={("sentiment", "llama-s"): "emit.probe_id_prefix", ("sentiment", "mine"): "probes.mine"},
                        model={"llama-s": "zoo/llama-s", "mine": "zoo/llama-s"})


# --- item 3: the executor's options are checked before any stage runs ---------------------------------------

@pytest.mark.parametrize("option, value, needle", [
    ("--workers", "0", "--workers 0: must be a whole number >= 1"),
    ("--workers", "-1", "--workers -1: must be a whole number >= 1"),
    ("--retries", "-5", "--retries -5: must be a whole number >= 0"),
    ("--cpus-per-stage", "nan", "--cpus-per-stage nan: must be a finite number > 0"),
    ("--cpus-per-stage", "0", "--cpus-per-stage 0.0: must be a finite number > 0"),
    ("--time-min", "0", "--time-min 0: must be >= 1"),
    ("--address", "127.0.0.1:{port}", "--address 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}"),
])
def test_executor_options_are_refused_before_anything_runs(tmp_path, monkeypatch, option, value, needle):
    with socket.socket() as s:   # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "check", lambda *a, **k: pytest.fail("params were checked: the option passed"))
    monkeypatch.setattr("probebench.executor.coordinator.stage_plan", lambda *a, **k: pytest.fail("a stage was planned"))
    result = runner.invoke(cli.app, ["run", "--executor", "ray", option, value.format(port=port)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle.format(port=port) in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_an_address_that_answers_but_is_no_ray_cluster_is_one_line(monkeypatch, capfd):
    import types

    from probebench.executor import backends
    from probebench.executor.plan import ExecutorError

    def init(**kwargs):   # what Ray does after its retries (bounded by the env var) at a non-Ray port
        assert os.environ["RAY_gcs_server_port_wait_time_s"] == "5"
        os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server\n")
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False, init=init))
    monkeypatch.setattr(backends, "check_ray_address", lambda address: None)
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    with pytest.raises(ExecutorError, match=r"^--address 10\.0\.0\.9:6379: no Ray cluster could be joined there "
                                            r"\(Failed to connect to Ray cluster at 10\.0\.0\.9:6379\); pass the address"):
        backends.connect_ray("10.0.0.9:6379", None)
    assert "gcs_client" not in capfd.readouterr().err   # Ray's retry log is held back
    assert "RAY_gcs_server_port_wait_time_s" not in os.environ


@pytest.mark.parametrize("reply, refused", [(b"HTTP/1.1 400 Bad Request\r\n\r\n", True), (None, True),
                                           (b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", False),
                                           (b"\x15\x03\x03\x00\x02\x02\x46", False)])  # TLS alert: RAY_USE_TLS
def test_a_port_that_answers_but_speaks_no_grpc_is_refused_in_seconds(reply, refused):
    """A real listener (not a mock of Ray): an HTTP/1 server or a silent port is refused within the
    probe's timeout, before ray.init could retry it for minutes; a peer that answers the HTTP/2
    preface with a SETTINGS frame, as Ray's gRPC GCS does, or with a TLS record (a cluster
    started with RAY_USE_TLS=1) passes the probe."""
    import socket
    import threading
    import time

    from probebench.executor import backends
    from probebench.executor.plan import ExecutorError

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            time.sleep(2)

    threading.Thread(target=serve, daemon=True).start()
    t0 = time.perf_counter()
    try:
        if refused:
            with pytest.raises(ExecutorError, match=rf"^--address 127\.0\.0\.1:{port}: something listens at "
                                                    rf"127\.0\.0\.1:{port} but it is no Ray cluster"):
                backends.check_ray_address(f"127.0.0.1:{port}", timeout_s=1.0)
        else:
            backends.check_ray_address(f"127.0.0.1:{port}", timeout_s=1.0)
    finally:
        server.close()
    assert time.perf_counter() - t0 < 5


def test_with_ray_use_tls_only_tcp_is_probed(monkeypatch):
    """A TLS Ray cluster may close a plaintext HTTP/2 preface without a reply; its clients set
    RAY_USE_TLS=1, and then the probe stops at TCP (an HTTP/1 listener passes it too)."""
    import socket
    import threading

    from probebench.executor import backends

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    monkeypatch.setenv("RAY_USE_TLS", "1")
    try:
        backends.check_ray_address(f"127.0.0.1:{port}", timeout_s=1.0)
    finally:
        server.close()


# --- item 4: the restore advice only when a stage failed; unknown stages and the lock said as such ----------

def test_run_names_unknown_stages_and_the_lock_and_advises_restore_only_after_a_removal(tmp_path, monkeypatch):
    monkeypatch.chdir(project(tmp_path))
    monkeypatch.setattr(cli.shutil, "which", lambda *a, **k: "dvc")
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("dvc repro ran"))
    result = runner.invoke(cli.app, ["run", "nosuchstage"])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        "error: 'nosuchstage' is not a stage of dvc.yaml; stages: prompts, zoo, finetune, model_import, adapter, extract, probe, "
        "ablate, normalize, bootstrap, matrix, emit, crosscoder_train, crosscoder_audit, report (a foreach stage runs "
        "all its items, or one as NAME@KEY, e.g. prompts@sentiment)"]
    assert "dvc checkout" not in result.output
    lock = tmp_path / ".dvc" / "tmp" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("4242")
    with open(lock, "rb") as held:   # what a running `dvc repro` holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = runner.invoke(cli.app, ["run", "extract@llama-s"])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        "error: another run holds DVC's lock on this checkout (.dvc/tmp/lock, pid 4242); wait for it to finish "
        "(`probebench run` again then resumes from its results), or run in a separate clone"]
    # dvc repro fails before touching an output: nothing to restore
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "cells.csv").write_text("x\n")
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: 1)
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 2 and "before any stage removed its outputs" in result.output
    assert "dvc checkout" not in result.output

    def stage_failed(*a, **k):   # DVC removed the stage's outputs, then the stage failed
        (tmp_path / "reports" / "cells.csv").unlink()
        return 1

    monkeypatch.setattr(cli.subprocess, "call", stage_failed)
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 1 and "1 output(s) removed, e.g. reports/cells.csv" in result.output
    assert "`dvc checkout`" in result.output


# --- item 5: `zoo spread` never replaces a spread with one of fewer runs ------------------------------------

def test_zoo_spread_refuses_one_run_and_replacing_a_wider_spread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reports" / "seed_spread"
    out.mkdir(parents=True)
    shutil.copy(ROOT / "reports" / "seed_spread" / "headline.csv", out / "headline.csv")
    monkeypatch.setattr(cli_zoo, "_exp_cells", lambda name: pytest.fail("a run was read"))
    before = snapshot(tmp_path)
    result = runner.invoke(cli.app, ["zoo", "spread", "."])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == ["error: zoo spread: got 1 distinct run(s) (.); a spread needs at least 2, "
                                          "e.g. probebench zoo spread . seed1 seed2 seed3 (see --help)"]
    result = runner.invoke(cli.app, ["zoo", "spread", ".", "seed1", "."])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        "error: reports/seed_spread/headline.csv: holds a spread of 4 runs (. seed1 seed2 seed3); these 2 runs leave out "
        "seed2 seed3, so it would be replaced by less; pass every run, choose another --out, or --force to replace it"]
    assert snapshot(tmp_path) == before


# --- item 6: `probe import --out` inside a DVC stage output is refused --------------------------------------

@pytest.mark.parametrize("out, stage, inside", [("reports/matrix/x", "matrix", "reports/matrix"),
                                                ("data/extract/llama-s/p", "extract@llama-s", "data/extract/llama-s")])
def test_probe_import_refuses_an_out_inside_a_stage_output(tmp_path, monkeypatch, out, stage, inside):
    monkeypatch.chdir(project(tmp_path))
    np_file = tmp_path / "p.npy"
    np_file.write_bytes(b"not read")
    before = snapshot(tmp_path)
    result = runner.invoke(cli.app, ["probe", "import", str(np_file), "--out", out, "--d-model", "4"])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        f"error: --out {out}: inside {inside}, an output of DVC stage {stage} (dvc.yaml), which the next dvc repro "
        f"deletes; import to data/imported/{Path(out).name} instead (the stages read imported probes from there; point "
        "probes.<key>.path at it)"]
    assert snapshot(tmp_path) == before


# --- item 7: an unwritable output is found before anything is removed ---------------------------------------

def test_read_only_output_stops_the_stage_and_run_before_anything_is_removed(tmp_path, monkeypatch):
    project(tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "cells.parquet").write_bytes(b"last good table")
    (reports / "cells.csv").write_text("last,good\n")
    (reports / "cells.csv").chmod(0o444)
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "matrix.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DVC_STAGE": "matrix"})
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    expected = ("error: reports/cells.csv: output of stage matrix (dvc.yaml) is read-only (mode 444); fix: chmod u+w "
                "reports/cells.csv (or move it away), then rerun; nothing was removed")
    assert proc.returncode == 2 and lines == [expected], proc.stdout + proc.stderr
    assert snapshot(tmp_path) == before
    # `probebench run` says it before dvc repro deletes the stage's outputs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.shutil, "which", lambda *a, **k: "dvc")
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("dvc repro ran"))
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 2 and error_lines(result.output) == [expected], result.output
    assert snapshot(tmp_path) == before


# --- item 8: messages --------------------------------------------------------------------------------------

def test_garbage_crosscoder_checkpoint_never_advises_weights_only_false(tmp_path):
    bad = tmp_path / "cc.pt"
    bad.write_bytes(b"garbage, not a pickle")
    with pytest.raises(CrossCoderLoadError) as info:
        load_crosscoder(bad)
    text = str(info.value)
    assert text.startswith(f"{bad}: not a torch checkpoint that loads with weights_only=True (")
    assert "weights_only=False" not in text and "`False`" not in text and "\n" not in text


def test_pinned_crosscoder_refusal_names_crosscoder_source(tmp_path, monkeypatch):
    from probebench.params.schema import load_params

    monkeypatch.syspath_prepend(str(ROOT / "stages"))
    import crosscoder_train

    params = load_params(ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)
    cc = params.crosscoders["gemma3-270m"]
    for m in {cc.base, cc.chat}:
        (tmp_path / "data" / "extract" / m).mkdir(parents=True)
        (tmp_path / "data" / "extract" / m / "meta.json").write_text(json.dumps({"fingerprint": "f", "layer": 1}))
    from probebench.artifacts.pinned import PinnedError

    with pytest.raises(PinnedError) as info:
        crosscoder_train.materialize_pinned(params, "gemma3-270m")
    text = str(info.value)
    assert "crosscoder_train@gemma3-270m" in text
    assert "set crosscoders.gemma3-270m.source: train" in text
    assert "`probebench zoo pin --crosscoder gemma3-270m`" in text
    assert "zoo.source" not in text
    assert not (tmp_path / "data" / "crosscoder").exists()


def test_pinned_crosscoder_with_other_model_weights_says_fingerprints_not_params():
    """The pinned crosscoder's record holds the models' fingerprints under `models`: a mismatch is
    said as what it is, not as params.yaml's `models:` section."""
    from probebench.artifacts.pinned import PinnedError, read_manifest, verify

    entry = read_manifest(ROOT / "zoo")["crosscoder/zoo-gemma2"]
    changed = {**entry["params"], "models": {k: "0" * 64 for k in entry["params"]["models"]}}
    with pytest.raises(PinnedError) as info:
        verify(ROOT / "zoo" / "crosscoder" / "zoo-gemma2", entry, params=changed, where="crosscoder_train@zoo-gemma2",
               retrain=("crosscoders.zoo-gemma2.source: train", "probebench zoo pin --crosscoder zoo-gemma2"))
    text = str(info.value)
    assert "the fingerprints (weights' sha256) of the models it was trained on differ" in text, text
    assert "['models']" not in text and "set crosscoders.zoo-gemma2.source: train" in text


def test_duplicate_bundle_ids_name_their_params_keys():
    ids = {("sentiment", "llama-s"): "probebench-sentiment-llama-s", ("sentiment", "a"): "alice/x",
           ("consistency", "b"): "alice/x"}
    origin = {k: f"probes.{k[1]}" if k[1] in "ab" else "emit.probe_id_prefix" for k in ids}
    with pytest.raises(LeaderboardError) as info:
        check_probe_ids(ids, origin=origin, model={"llama-s": "zoo/llama-s", "a": "zoo/llama-s", "b": "zoo/llama-s"})
    assert str(info.value).startswith("params.yaml: probes.a and probes.b both give probeId 'alice/x' for source "
                                      "model 'zoo/llama-s'")


# --- item 9: `probebench exp`, the compact experiment view ---------------------------------------------------

@pytest.mark.parametrize("width", ["80", "120"])
def test_exp_shows_the_changed_params_and_headline_in_the_width(width):
    result = runner.invoke(cli.app, ["exp", "--from-json", str(FIXTURES / "cli" / "dvc_exp_show.json"), "--width", width])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= int(width), result.output
    assert "seed_offset" in result.output and "params that differ: zoo.source, zoo.seed_offset" in result.output
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0].startswith("seed")}
    assert [rows[f"seed{k}"][1:3] for k in (1, 2, 3)] == [["train", str(k)] for k in (1, 2, 3)]
    assert rows["seed4"][1:4] == ["(queued)", "train", "4"]
    assert "0.737" in result.output and "metrics/headline.json" in result.output   # the workspace's sentiment rho
    assert "variance" not in result.output and "accuracy" not in result.output       # no other metrics file


def test_exp_has_a_short_name_for_every_headline_number():
    """A headline number without an abbreviation would widen every row past the terminal."""
    from probebench.cells.spread import headline
    from probebench.cli.exp import STAT_ABBREV
    from probebench.cells.schema import read_cells

    stats = {key.split("/", 1)[1] for key in headline(read_cells(Path(cli.__file__).parents[3] / "reports" / "cells.csv"))}
    assert stats and stats <= set(STAT_ABBREV), stats - set(STAT_ABBREV)


def test_imported_probes_rows_stay_out_of_the_headline():
    """Imported probes' rows (scored or not) and unscored rows change no headline number: six rows of
    rho -0.9 planted into the committed cells leave every figure as it was; the same rows as default
    sources' scored cells do move it (so the comparison could fail)."""
    from probebench.cells.schema import read_cells
    from probebench.cells.spread import headline

    cells = read_cells(ROOT / "reports" / "cells.csv")
    base = headline(cells)
    sample = cells[(cells.task == "sentiment") & ~cells.diagonal & cells.scored.astype(bool)].head(6).copy()
    sample["pearson"] = -0.9
    planted = sample.assign(source=[f"alice-{i}" for i in range(6)], imported=True,
                            scored=[True, False] * 3)
    assert headline(pd.concat([cells, planted], ignore_index=True)) == base
    unscored = sample.assign(source=[f"zz-{i}" for i in range(6)], target="zz", scored=False)
    assert headline(pd.concat([cells, unscored], ignore_index=True)) == base
    as_default = sample.assign(source="aa", target=[f"zz-{i}" for i in range(6)])
    assert headline(pd.concat([cells, as_default], ignore_index=True))["sentiment/mean_rho"] < base["sentiment/mean_rho"]
