"""Known-answer tests for probebench.probes.foreign and `probebench probe import`: ProbeBench bundles
written exactly as the site's tooling writes them (checked by the site's own client,
`openinterp.probebench.validate`), the pickle trust rules, and every bad input -> one line, exit 2,
nothing written."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
import safetensors.numpy
import yaml
from openinterp import probebench as site
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from probebench.cli.main import app
from probebench.probes.foreign import (
    ProbeImportError,
    TargetModel,
    import_probe,
    parse_sha256_pins,
    read_model_config,
)
from probebench.probes.fit import Probe, load_probe, save_probe
from probebench.stats import auroc
from tests.support.bundles import SITE_META, sha, site_bundle

D = 32
runner = CliRunner()


def planted(n: int, seed: int, *, noise: float = 1.0):
    """acts = noise + y * 3 u along a fixed unit u, with unequal feature means and scales so the
    scaler fold into raw space is not the identity; returns float64 acts, y."""
    u = np.random.default_rng(1234).normal(size=D)
    u /= np.linalg.norm(u)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    acts = noise * rng.normal(size=(n, D)) + 3.0 * y[:, None] * u
    fixed = np.random.default_rng(99)  # the same affine map for train and test
    return acts * fixed.uniform(0.5, 4.0, size=D) + fixed.normal(scale=5.0, size=D), y


def fit_sklearn(n_classes: int = 2):
    X, y = planted(400, seed=10)
    if n_classes == 3:
        y = y + (X[:, 0] > np.median(X[:, 0]))
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(C=0.5, max_iter=2000).fit(scaler.transform(X), y)
    Xt, yt = planted(600, seed=11)
    return scaler, clf, Xt, yt


# ------------------------------------------------------------------------------- the site's bundle


@pytest.fixture
def project(tmp_path):
    """params.yaml with three model entries over two model directories (config.json only):
    toy (d_model 32, 4 blocks, layer 2, hf_id org/toy-model), half (same directory, relative
    depth 0.5 -> block floor(0.5 * 4 + 0.5) - 1 = 1), wide (d_model 48)."""
    for name, width in (("toy", D), ("wide", 48)):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text(
            json.dumps({"model_type": "llama", "hidden_size": width, "num_hidden_layers": 4}))
    params = {"tasks": {"planted": {"kind": "sentiment"}},
              "models": {"toy": {"path": "models/toy", "layer": 2, "hf_id": "org/toy-model"},
                         "half": {"path": "models/toy", "layer": 0.5},
                         "wide": {"path": "models/wide", "layer": 2}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def cli_import(project, bundle, *args, model="toy", out=None):
    out = out or project / "imported" / "probe"
    argv = ["probe", "import", str(bundle), "--model", model, "--params", str(project / "params.yaml"),
            "--out", str(out), "--task", "planted", *args]
    return runner.invoke(app, argv), out


def test_site_bundle_validates_imports_and_keeps_heldout_auroc(project, monkeypatch):
    scaler, clf, Xt, yt = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf)
    report = site.validate(str(bundle))
    assert report["ok"] and report["errors"] == [] and report["warnings"] == [], report
    assert report["checks"]["probe_sha256"] == json.loads((bundle / "meta.json").read_text())["artifactSha256"]

    # Without --trust-pickle nothing is unpickled, and the refusal names the undeclared scaler.
    def boom(*a, **k):
        raise AssertionError("joblib.load called")

    monkeypatch.setattr(joblib, "load", boom)
    result, out = cli_import(project, bundle)
    assert result.exit_code == 2 and not out.exists()
    assert "scaler.joblib: no sha256 declared" in result.output and "--trust-pickle" in result.output
    monkeypatch.undo()

    result, out = cli_import(project, bundle, "--trust-pickle")
    assert result.exit_code == 0, result.output
    scaler_sha = sha(bundle / "scaler.joblib")
    assert f"--sha256 scaler.joblib={scaler_sha}" in result.output  # printed so the next import can pin it
    probe = load_probe(out)
    card = probe.card
    assert (card["id"], card["modelId"], card["layer"], card["position"]) == (
        "alice/planted-toy-l2", "org/toy-model", 2, "last_token")
    assert card["model"] == "toy" and card["task"] == "planted" and card["checkpoint"] == {"layer": 2, "site": "resid_post"}
    assert card["sha256"] == {"probe.joblib": sha(bundle / "probe.joblib"), "scaler.joblib": scaler_sha}
    assert card["sha256_verified_by"] == {"probe.joblib": ["meta.json:artifactSha256"], "scaler.joblib": []}

    # Held-out AUROC of the imported raw-space probe == the site client's predict_proba ranking.
    bundle_obj = site.ProbeBundle(metadata=site.ProbeMetadata.from_dict(json.loads((bundle / "meta.json").read_text())),
                                  probe=joblib.load(bundle / "probe.joblib"), scaler=joblib.load(bundle / "scaler.joblib"))
    proba = site.score(bundle_obj, Xt)
    assert auroc(probe.score(Xt), yt) == pytest.approx(roc_auc_score(yt, proba), abs=1e-12)
    assert auroc(probe.score(Xt), yt) > 0.95  # the planted signal is there: the equality is not 0.5 == 0.5
    assert spearmanr(probe.score(Xt), proba).statistic == pytest.approx(1.0, abs=1e-12)

    # The next import pins the scaler: both files are now verified, and a wrong pin is refused.
    result, out2 = cli_import(project, bundle, "--trust-pickle", "--sha256", f"scaler.joblib={scaler_sha}",
                              out=project / "imported" / "pinned")
    assert result.exit_code == 0, result.output
    assert "no sha256 declared" not in result.output
    assert load_probe(out2).card["sha256_verified_by"]["scaler.joblib"] == ["--sha256"]
    np.testing.assert_array_equal(load_probe(out2).direction, probe.direction)


def test_relative_depth_layer_resolves_like_the_pipeline(project):
    scaler, clf, _, _ = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf, layer=1)
    result, out = cli_import(project, bundle, "--trust-pickle", model="half")
    assert result.exit_code == 0, result.output
    assert load_probe(out).card["checkpoint"]["layer"] == 1


def test_force_replaces_only_a_previous_import(project):
    scaler, clf, _, _ = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf)
    result, out = cli_import(project, bundle, "--trust-pickle")
    assert result.exit_code == 0, result.output
    result, _ = cli_import(project, bundle, "--trust-pickle", "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "direction.safetensors"]


# One test per bad input: exit 2, exactly one line that names the problem, nothing written.

def _tamper_probe(bundle):
    scaler, clf, _, _ = fit_sklearn()
    clf.coef_ = clf.coef_ * 1.01  # a different probe under the old digest
    joblib.dump(clf, bundle / "probe.joblib")


BAD_INPUTS = {
    "digest_mismatch": (lambda b: _tamper_probe(b), {}, "toy", "probe.joblib: sha256 mismatch"),
    "missing_scaler": (lambda b: (b / "scaler.joblib").unlink(), {}, "toy", "missing scaler"),
    "meta_layer": (lambda b: None, {"layer": 3}, "toy", "layer 3 but"),
    "d_model": (lambda b: None, {}, "wide", "probe has D=32 but"),
    "model_not_in_params": (lambda b: None, {}, "nope", "models has no key 'nope'"),
    "model_id": (lambda b: None, {"modelId": "org/other-model"}, "toy", "modelId 'org/other-model' but"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_bundle_one_line_exit_2_nothing_written(project, case):
    edit, meta, model, message = BAD_INPUTS[case]
    scaler, clf, _, _ = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf, **meta)
    edit(bundle)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    result, out = cli_import(project, bundle, "--trust-pickle", model=model)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    assert not out.exists()


@pytest.mark.parametrize("existing", ["file", "non_empty_dir"])
def test_out_onto_existing_file_or_non_empty_dir(project, existing):
    scaler, clf, _, _ = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf)
    out = project / "taken"
    if existing == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    result, _ = cli_import(project, bundle, "--trust-pickle", out=out)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert ("existing file" if existing == "file" else "not empty") in lines[0] and str(out) in lines[0]
    # --force replaces only a probe directory, never arbitrary files.
    result, _ = cli_import(project, bundle, "--trust-pickle", "--force", out=out)
    assert result.exit_code == 2
    assert (out.read_text() if existing == "file" else (out / "notes.txt").read_text()) == "keep me"
    assert (existing == "file") or sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_empty_out_dir_is_used(project):
    scaler, clf, _, _ = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf)
    (project / "empty").mkdir()
    result, out = cli_import(project, bundle, "--trust-pickle", out=project / "empty")
    assert result.exit_code == 0, result.output and (out / "card.json").is_file()


@pytest.mark.parametrize("args,message", [
    (["--sha256", "nothere.joblib=" + "0" * 64], "nothere.joblib=...: "),
    (["--sha256", "0" * 64], "pin each file with --sha256 FILE=HEX"),
    (["--sha256", "scaler.joblib=abc"], "is not 64 hex digits"),
    (["--sha256", "scaler.joblib=" + "0" * 64], "scaler.joblib: sha256 mismatch"),
])
def test_bad_sha256_pins(project, args, message):
    scaler, clf, _, _ = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf)
    result, out = cli_import(project, bundle, "--trust-pickle", *args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


def test_d_model_without_params_model_is_unchecked_import(project):
    scaler, clf, _, _ = fit_sklearn()
    bundle = site_bundle(project / "bundle", scaler, clf, layer=17)
    out = project / "o"
    result = runner.invoke(app, ["probe", "import", str(bundle), "--d-model", str(D), "--out", str(out),
                                 "--trust-pickle", "--params", str(project / "missing.yaml")])
    assert result.exit_code == 0, result.output
    assert "checkpoint" not in load_probe(out).card  # nothing was checked, so nothing is claimed
    result = runner.invoke(app, ["probe", "import", str(bundle), "--out", str(project / "p"), "--trust-pickle",
                                 "--params", str(project / "params.yaml")])
    assert result.exit_code == 2 and "give --model KEY" in result.output
    # A params model named together with --d-model is still checked.
    result, _ = cli_import(project, bundle, "--trust-pickle", "--d-model", "48")
    assert result.exit_code == 2 and "--d-model 48 but" in result.output


# ------------------------------------------------------------------------------- library: bundles


def _two_file_bundle(tmp_path, scaler, clf, **meta_extra):
    d = tmp_path / "bundle2"
    d.mkdir(parents=True)
    joblib.dump(clf, d / "probe.joblib")
    joblib.dump(scaler, d / "scaler.joblib")
    meta = {
        "model": "toy-a",
        "layer": 3,
        "task": "planted",
        "sha256": {"probe.joblib": sha(d / "probe.joblib"), "scaler.joblib": sha(d / "scaler.joblib")},
        **meta_extra,
    }
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def _one_file_bundle(tmp_path, scaler, clf, *, declare=True):
    d = tmp_path / "bundle1"
    d.mkdir()
    joblib.dump({"probe": clf, "scaler": scaler}, d / "artifact.joblib")
    meta = {"model": "toy-b", "layer": 1, "task": "planted"}
    if declare:
        meta["sha256"] = "sha256:" + sha(d / "artifact.joblib").upper()
    (d / "meta.yaml").write_text(yaml.safe_dump(meta))
    return d


@pytest.mark.parametrize("layout", ["two_file_json", "one_file_yaml", "one_file_path"])
def test_bundle_import_matches_predict_proba(tmp_path, layout):
    scaler, clf, Xt, yt = fit_sklearn()
    if layout == "two_file_json":
        path = _two_file_bundle(tmp_path, scaler, clf)
    else:
        path = _one_file_bundle(tmp_path, scaler, clf)
        if layout == "one_file_path":
            path = path / "artifact.joblib"
    probe = import_probe(path, d_model=D, trust_pickle=True)
    scores = probe.score(Xt)
    proba = clf.predict_proba(scaler.transform(Xt))[:, 1]
    assert abs(roc_auc_score(yt, scores) - roc_auc_score(yt, proba)) < 1e-12
    assert spearmanr(scores, proba).statistic == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(scores, clf.decision_function(scaler.transform(Xt)), rtol=0, atol=1e-8)
    assert probe.method == "logreg"
    assert probe.card["task"] == "planted" and probe.card["layer"] in (1, 3)
    assert all(len(v) == 64 for v in probe.card["sha256"].values())


def test_combined_site_bundle_artifact_sha256_covers_the_one_joblib(tmp_path):
    scaler, clf, Xt, _ = fit_sklearn()
    d = tmp_path / "combined"
    d.mkdir()
    joblib.dump({"probe": clf, "scaler": scaler}, d / "probe.joblib")  # FabricationGuard's layout
    (d / "meta.json").write_text(json.dumps({**SITE_META, "artifactSha256": sha(d / "probe.joblib")}))
    assert site.validate(str(d))["ok"]
    probe = import_probe(d, target=TargetModel(d_model=D, layer=2, model_id="ORG/toy-model"), trust_pickle=True)
    assert probe.card["sha256_verified_by"] == {"probe.joblib": ["meta.json:artifactSha256"]}
    np.testing.assert_allclose(probe.score(Xt), clf.decision_function(scaler.transform(Xt)), rtol=0, atol=1e-8)


def test_bundle_without_trust_pickle_never_unpickles(tmp_path, monkeypatch):
    scaler, clf, _, _ = fit_sklearn()
    d2 = _two_file_bundle(tmp_path, scaler, clf)
    d1 = _one_file_bundle(tmp_path, scaler, clf)

    def boom(*a, **k):
        raise AssertionError("joblib.load called")

    monkeypatch.setattr(joblib, "load", boom)
    for d in (d2, d1):
        with pytest.raises(ProbeImportError, match="pass --trust-pickle after verifying the source"):
            import_probe(d, d_model=D)


def test_tampered_bundle_fails_sha256_before_loading(tmp_path, monkeypatch):
    scaler, clf, _, _ = fit_sklearn()
    d = _two_file_bundle(tmp_path, scaler, clf)
    expected = sha(d / "scaler.joblib")
    raw = bytearray((d / "scaler.joblib").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "scaler.joblib").write_bytes(bytes(raw))
    actual = sha(d / "scaler.joblib")

    def boom(*a, **k):
        raise AssertionError("joblib.load called")

    monkeypatch.setattr(joblib, "load", boom)
    with pytest.raises(ProbeImportError, match="sha256 mismatch") as ei:
        import_probe(d, d_model=D, trust_pickle=True)
    msg = str(ei.value)
    assert "scaler.joblib" in msg and expected in msg and actual in msg

    # expected_sha256 on a single file is checked the same way.
    d1 = _one_file_bundle(tmp_path, scaler, clf, declare=False)
    with pytest.raises(ProbeImportError, match="sha256 mismatch"):
        import_probe(d1 / "artifact.joblib", d_model=D, trust_pickle=True, expected_sha256="0" * 64)


def test_undeclared_pickle_loads_only_under_trust_and_records_its_digest(tmp_path, monkeypatch):
    scaler, clf, _, _ = fit_sklearn()
    d = _one_file_bundle(tmp_path, scaler, clf, declare=False)
    good = sha(d / "artifact.joblib")
    monkeypatch.setattr(joblib, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(ProbeImportError, match="artifact.joblib: no sha256 declared"):
        import_probe(d, d_model=D)
    monkeypatch.undo()
    probe = import_probe(d, d_model=D, trust_pickle=True)
    assert probe.card["sha256"] == {"artifact.joblib": good}
    assert probe.card["sha256_verified_by"] == {"artifact.joblib": []}
    # Pinned out of band (the old bare digest, or FILE=HEX), it is verified.
    for kwargs in ({"expected_sha256": good}, {"sha256_pins": {"artifact.joblib": good}}):
        probe = import_probe(d, d_model=D, trust_pickle=True, **kwargs)
        assert probe.card["sha256_verified_by"] == {"artifact.joblib": ["--sha256"]}


def test_bundle_wrong_d_model(tmp_path):
    scaler, clf, _, _ = fit_sklearn()
    d = _two_file_bundle(tmp_path, scaler, clf)
    with pytest.raises(ProbeImportError, match=f"probe has D={D} but the model has d_model 64"):
        import_probe(d, d_model=64, trust_pickle=True)
    with pytest.raises(ProbeImportError, match="declares d_model=31"):
        import_probe(_two_file_bundle(tmp_path / "x", scaler, clf, d_model=31), d_model=D, trust_pickle=True)


def test_bundle_multiclass_refused(tmp_path):
    scaler, clf, _, _ = fit_sklearn(n_classes=3)
    assert clf.coef_.shape[0] == 3
    d = _two_file_bundle(tmp_path, scaler, clf)
    with pytest.raises(ProbeImportError, match="multi-class"):
        import_probe(d, d_model=D, trust_pickle=True)


@pytest.mark.parametrize("layer,ok", [(2, True), ("L2", True), ("2", True), (True, False), (-1, False), ("mid", False)])
def test_meta_layer_forms(tmp_path, layer, ok):
    scaler, clf, _, _ = fit_sklearn()
    d = site_bundle(tmp_path / "b", scaler, clf, layer=layer)
    target = TargetModel(d_model=D, layer=2)
    if ok:
        assert import_probe(d, target=target, trust_pickle=True).card["layer"] == 2
    else:
        with pytest.raises(ProbeImportError, match="key 'layer' is"):
            import_probe(d, target=target, trust_pickle=True)


def test_read_model_config_and_pins(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 2304, "num_hidden_layers": 26}}))
    assert read_model_config(tmp_path) == (2304, 26)
    with pytest.raises(ProbeImportError, match="config.json: not found"):
        read_model_config(tmp_path / "nowhere")
    assert parse_sha256_pins(["A" * 64]) == ({}, "a" * 64)
    with pytest.raises(ProbeImportError, match="not both"):
        parse_sha256_pins(["a" * 64, "x.joblib=" + "a" * 64])


# ------------------------------------------------------------------------------- raw vectors


@pytest.mark.parametrize("shape", [(D,), (1, D)])
def test_npy_vector_import(tmp_path, shape):
    vec = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    f = tmp_path / "w.npy"
    np.save(f, vec)
    probe = import_probe(f, d_model=D, expected_sha256=sha(f))
    np.testing.assert_array_equal(probe.direction, vec.ravel().astype(np.float64))
    assert probe.bias == 0.0 and probe.method == "raw"
    with pytest.raises(ProbeImportError, match="the model has d_model 16"):
        import_probe(f, d_model=16)
    with pytest.raises(ProbeImportError, match="sha256 mismatch"):
        import_probe(f, d_model=D, sha256_pins={"w.npy": "0" * 64})


def test_safetensors_vector_import(tmp_path):
    rng = np.random.default_rng(1)
    vec = rng.normal(size=D).astype(np.float32)
    single = tmp_path / "single.safetensors"
    safetensors.numpy.save_file({"anything": vec}, single)
    np.testing.assert_array_equal(import_probe(single, d_model=D).direction, vec.astype(np.float64))

    keyed = tmp_path / "keyed.safetensors"
    safetensors.numpy.save_file(
        {"weight": vec[None], "bias": np.array([0.25], np.float32), "other": np.ones(3, np.float32)}, keyed
    )
    probe = import_probe(keyed, d_model=D)
    np.testing.assert_array_equal(probe.direction, vec.astype(np.float64))
    assert probe.bias == 0.25 and probe.card["source_key"] == "weight"

    ambiguous = tmp_path / "ambiguous.safetensors"
    safetensors.numpy.save_file({"a": vec, "b": vec}, ambiguous)
    with pytest.raises(ProbeImportError, match="none of the direction keys"):
        import_probe(ambiguous, d_model=D)
    with pytest.raises(ProbeImportError, match="d_model 8"):
        import_probe(single, d_model=8)


def test_saved_probe_directory_imports(tmp_path):
    probe = Probe(direction=np.arange(1.0, D + 1), bias=0.5, method="raw", card={"task": "t"})
    d = save_probe(probe, tmp_path / "saved")
    np.testing.assert_array_equal(import_probe(d, d_model=D).direction, probe.direction)
    with pytest.raises(ProbeImportError, match="sha256 mismatch"):
        import_probe(d, d_model=D, expected_sha256="0" * 64)
    with pytest.raises(ProbeImportError, match="exactly one of d_model or target"):
        import_probe(d)
