import hashlib
import json

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from probebench.cli.main import app

runner = CliRunner()


def bundle(tmp_path, d=8):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, d)), rng.integers(0, 2, 100)
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression().fit(scaler.transform(X), y)
    path = tmp_path / "bundle"
    path.mkdir()
    joblib.dump(clf, path / "probe.joblib")
    joblib.dump(scaler, path / "scaler.joblib")
    digests = {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in ("probe.joblib", "scaler.joblib")}
    (path / "meta.json").write_text(json.dumps({"sha256": digests, "task": "t"}))
    return path


def test_probe_import_bundle_with_opt_in(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["probe", "import", str(bundle(tmp_path)), "--d-model", "8", "--out", str(out),
                                 "--trust-pickle", "--model", "m"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["card"]["model"] == "m" and (out / "direction.safetensors").exists()


@pytest.mark.parametrize("args,match", [(["--d-model", "8"], "trust-pickle"), (["--d-model", "9", "--trust-pickle"], "d_model")])
def test_probe_import_refusals_exit_nonzero_and_write_nothing(tmp_path, args, match):
    out = tmp_path / "out"
    result = runner.invoke(app, ["probe", "import", str(bundle(tmp_path)), "--out", str(out), *args])
    assert result.exit_code == 2 and match in result.output
    assert not out.exists()


def test_probe_import_sha_mismatch(tmp_path):
    path = bundle(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"]["probe.joblib"] = "0" * 64
    (path / "meta.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["probe", "import", str(path), "--d-model", "8", "--out", str(tmp_path / "o"),
                                 "--trust-pickle"])
    assert result.exit_code == 2 and "sha256" in result.output and not (tmp_path / "o").exists()


def test_check_reports_bad_params(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("tasks: {t: {kind: sentiment, n_tset: 3}}\n")
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 2 and "tasks.t.n_tset: unknown key" in result.output
    assert runner.invoke(app, ["check", "params.yaml"]).exit_code == 0
