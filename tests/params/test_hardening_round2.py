"""Hardening, round 2: every problem knowable from params is found by `probebench check` (exit 2,
one line naming the key and the fix, nothing written) before any compute; bundle import refuses
what it cannot honour; the logreg fit is the same probe on every machine. One test per item."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from probebench.cli import main as cli
from probebench.params.schema import parse_params
from probebench.probes.fit import CARD_FILE, Probe, fit_probe, save_probe
from probebench.transfer.plan import ModelActs, PlanError, PlanInputs, plan_target
from tests.support.bundles import site_bundle
from tests.support.check import check_fails, snapshot, write_params

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def project_params() -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["crosscoders"] = {}
    return raw




def check_passes(root: Path, raw: dict) -> None:
    result = runner.invoke(cli.app, ["check", str(write_params(root, raw))])
    assert result.exit_code == 0, result.output


# --- item 1: keys are slugs (they are interpolated into DVC stage commands) -------------------------

@pytest.mark.parametrize("section,key", [
    ("tasks", "s;touch PWNED;echo"),
    ("tasks", "two words"),                 # used to fail late with 'too many values to unpack'
    ("models", "m$(touch PWNED)"),
    ("models", "gemma-2.2b"),
    ("imports", "i`touch PWNED`"),
    ("adapters", "a;touch PWNED"),
    ("probes", "p|touch PWNED"),
    ("zoo.models", "z&&touch PWNED"),
])
def test_keys_must_be_slugs(tmp_path, section, key):
    raw = project_params()
    value = {"tasks": {"kind": "sentiment"}, "models": {"path": "data/zoo/llama-s"},
             "imports": {"hf_dir": "x"}, "adapters": {"base": "gemma3-270m"}, "probes": {"path": "data/imported/p", "model": "llama-s", "task": "sentiment"},
             "zoo.models": {"family": "llama"}}[section]
    (raw["zoo"]["models"] if section == "zoo.models" else raw[section]).update({key: value})
    check_fails(tmp_path, raw, f"{section.split('.')[-1]} key {key!r} must be a slug", "[A-Za-z0-9_-]+",
                "rename it")
    assert not list(tmp_path.rglob("PWNED"))


# --- item 2: null counts that nothing can beat --------------------------------------------------------

@pytest.mark.parametrize("edit,needles", [
    ({"transfer": {"n_null": 0}}, ["transfer.n_null=0", "transfer.null_alpha=0.05", "set transfer.n_null >= 10"]),
    ({"transfer": {"n_null": 1}}, ["transfer.n_null=1", "2 draws", "1/3 = 0.333 > transfer.null_alpha=0.05",
                                   "set transfer.n_null >= 10"]),
    ({"transfer": {"n_null": 9}}, ["transfer.n_null=9", "18 draws", "set transfer.n_null >= 10"]),
    # gemma2-it shares gemma2-base's basis: that geometry null draws n_null directions, not 2 n_null
    ({"transfer": {"n_null": 10}}, ["shared-basis cosine null", "10 draws", "set transfer.n_null >= 19"]),
    ({"transfer": {"n_null": 4, "null_alpha": 0.01}}, ["transfer.null_alpha=0.01", "set transfer.n_null >= 50"]),
    ({"ablate": {"n_random": 3}}, ["ablate.n_random=3", "each side of a cell's random-direction null",
                                   "needs at least 8", "set ablate.n_random >= 8"]),
])
def test_null_counts_that_cannot_reach_null_alpha_are_refused(tmp_path, edit, needles):
    raw = project_params()
    for section, values in edit.items():
        raw[section].update(values)
    check_fails(tmp_path, raw, *needles)
    models = {k: v for k, v in raw["models"].items() if "basis" not in v}
    if edit == {"transfer": {"n_null": 10}}:  # without a shared basis 2 x 10 draws reach p = 1/21 < 0.05
        check_passes(tmp_path, {**raw, "models": models})


# --- item 3: imported probes against their entry, their card and their model -------------------------

def imported_probe(root: Path, name: str, *, d: int = 64, **card) -> Path:
    """A probe directory as `probebench probe import --model qwen2-s --task sentiment` writes it
    (qwen2-s: zoo d_model 64, 2 blocks, layer 0.5 -> block 0)."""
    card = {"method": "logreg", "model": "qwen2-s", "task": "sentiment", "layer": 0, "id": f"alice/{name}",
            "checkpoint": {"layer": 0, "site": "resid_post"}, **card}
    direction = np.random.default_rng(len(name)).normal(size=d)
    return save_probe(Probe(direction=direction, bias=0.0, method="logreg", card=card), root / "data" / "imported" / name)


def edit_card(path: Path, edit) -> None:
    doc = json.loads((path / CARD_FILE).read_text())
    edit(doc)
    (path / CARD_FILE).write_text(json.dumps(doc))


ENTRY = {"path": "data/imported/alice", "model": "qwen2-s", "task": "sentiment"}
PROBE_CASES = {
    "other_model_and_task": (lambda r: imported_probe(r, "alice", model="gemma2-base", task="consistency"), {},
                             ["probes.alice", "model 'gemma2-base'", "task 'consistency'", "model 'qwen2-s', task 'sentiment'"]),
    "card_d_model_edited": (lambda r: edit_card(imported_probe(r, "alice"), lambda d: d.update(d_model=96)), {},
                            ["probes.alice", "key 'd_model' is 96", "width 64"]),
    "card_meta_d_model_edited": (lambda r: edit_card(imported_probe(r, "alice", d_model=64),
                                                     lambda d: d["card"].update(d_model=64.9)), {},
                                 ["probes.alice", "key 'card.d_model' is 64.9"]),
    "card_layer_edited": (lambda r: edit_card(imported_probe(r, "alice"), lambda d: d["card"].update(layer=1)), {},
                          ["probes.alice", "'card.layer' is 1 but 'card.checkpoint.layer' is 0"]),
    "card_layer_and_checkpoint_edited": (
        lambda r: edit_card(imported_probe(r, "alice"), lambda d: (d["card"].update(layer=1),
                                                                   d["card"]["checkpoint"].update(layer=1))), {},
        ["probes.alice", "its card says layer 1 but models.qwen2-s reads block 0"]),
    "card_model_edited": (lambda r: edit_card(imported_probe(r, "alice"), lambda d: d["card"].update(model="llama-s")),
                          {}, ["probes.alice", "model 'llama-s'"]),
    "card_method_edited": (lambda r: edit_card(imported_probe(r, "alice"), lambda d: d["card"].update(method="mean_diff")),
                           {}, ["probes.alice", "'card.method' is 'mean_diff' but key 'method' is 'logreg'"]),
    "wrong_width": (lambda r: imported_probe(r, "alice", d=32), {},
                    ["probes.alice", "has d_model 32 but models.qwen2-s has d_model 64 (zoo.models.qwen2-s)"]),
    "outside_data_imported": (lambda r: (r / "probes").mkdir(), {"path": "probes/alice"},
                              ["probes.alice.path 'probes/alice' is outside data/imported", "no DVC dependency",
                               "--out data/imported/alice"]),
    "escapes_data_imported": (lambda r: None, {"path": "data/imported/../alice"}, ["is outside data/imported"]),
    "missing": (lambda r: None, {}, ["probes.alice.path 'data/imported/alice' is not a directory",
                                      "probebench probe import"]),
}


@pytest.mark.parametrize("case", sorted(PROBE_CASES))
def test_imported_probes_are_checked_against_entry_card_and_model(tmp_path, case):
    make, entry, needles = PROBE_CASES[case]
    imported_probe(tmp_path, "good")
    raw = project_params()
    raw["probes"] = {"good": {**ENTRY, "path": "data/imported/good"}}
    check_passes(tmp_path, raw)  # the same entry with a sound probe passes
    make(tmp_path)
    raw["probes"]["alice"] = {**ENTRY, **entry}
    check_fails(tmp_path, raw, *needles)


def test_a_probe_path_listed_twice_is_refused(tmp_path):
    imported_probe(tmp_path, "alice")
    raw = project_params()
    raw["probes"] = {"a": ENTRY, "b": {**ENTRY, "path": "./data/imported/alice/"}}
    check_fails(tmp_path, raw, "probes.b.path './data/imported/alice/' is also probes.a.path")


# --- item 4: basis chains -----------------------------------------------------------------------------

@pytest.mark.parametrize("bases,needles", [
    ({"gemma2-base": "gemma2-it"}, ["models.gemma2-it.basis 'gemma2-base' closes the cycle",
                                    "gemma2-base -> gemma2-it -> gemma2-base"]),
    ({"llama-s": "gpt2-s", "gpt2-s": "qwen2-s", "qwen2-s": "llama-s"}, ["cycle llama-s -> gpt2-s -> qwen2-s -> llama-s"]),
    ({"qwen2-m": "qwen2-s"}, ["models.qwen2-m.basis 'qwen2-s'", "qwen2-m has d_model 96 (zoo.models.qwen2-m)",
                              "qwen2-s has d_model 64 (zoo.models.qwen2-s)", "remove the basis key"]),
    # two levels down the chain: qwen2-m -> gemma2-it -> gemma2-base
    ({"qwen2-m": "gemma2-it"}, ["models.qwen2-m.basis 'gemma2-it'", "gemma2-it has d_model 64"]),
])
def test_basis_chains_are_followed_and_cycles_and_widths_refused(tmp_path, bases, needles):
    raw = project_params()
    for slug, basis in bases.items():
        raw["models"][slug]["basis"] = basis
    check_fails(tmp_path, raw, *needles)


def test_basis_is_followed_down_the_chain_and_widths_refused_at_compute():
    raw = project_params()
    raw["models"]["gemma2-it2"] = {"path": "data/zoo/gemma2-it", "name": "it2", "basis": "gemma2-it"}
    p = parse_params(raw)
    assert p.share_basis("gemma2-it2", "gemma2-base") and not p.share_basis("gemma2-it2", "gpt2-s")
    # a width first known when the ablate stage holds both models' directions
    rng = np.random.default_rng(0)
    key = np.arange(20)
    acts = {"s": ModelActs(rng.normal(size=(20, 8)), rng.normal(size=(20, 8)), key),
            "t": ModelActs(rng.normal(size=(20, 6)), rng.normal(size=(20, 6)), key)}
    inputs = PlanInputs(models=("s", "t"), directions={"s": np.ones(8), "t": np.ones(6)}, acts=acts,
                        test_N=np.ones(20, dtype=bool), y_N=np.arange(20) % 2, share_basis=lambda a, b: True,
                        n_null=20, n_random=4)
    with pytest.raises(PlanError, match=r"share a residual basis .*models.s.basis / models.t.basis.* d_model 8 and 6"):
        plan_target("t", "task", inputs)


# --- item 5: map fractions that leave the probes or the map without rows ------------------------------

@pytest.mark.parametrize("fraction,needles", [
    (0.999, ["transfer.map_fraction=0.999 leaves tasks.sentiment", "probe row(s) of label 0",
             "set transfer.map_fraction: "]),
    (0.001, ["transfer.map_fraction=0.001 leaves tasks.sentiment", "for the label-free map, which needs at least 2",
             "set transfer.map_fraction: "]),
])
def test_map_fraction_must_leave_rows_for_probes_and_map(tmp_path, fraction, needles):
    raw = project_params()
    raw["transfer"]["map_fraction"] = fraction
    line = check_fails(tmp_path, raw, *needles)
    raw["transfer"]["map_fraction"] = float(re.search(r"set transfer.map_fraction: ([0-9.]+)", line).group(1))
    check_passes(tmp_path, raw)  # the value it names works


# --- item 6: names, bundle ids, preset directories, crosscoder checkpoints ----------------------------

def _preset() -> dict:
    return yaml.safe_load((ROOT / "presets" / "gemma-2-2b-audit.yaml").read_text())


def _same_ids(raw):
    # tasks.x x models.gpt2-s and tasks.x-gpt2 x models.s both make probebench-x-gpt2-s-resid_post.L...
    raw["tasks"] = {"x": {"kind": "sentiment"}, "x-gpt2": {"kind": "consistency"}}
    raw["models"]["s"] = {"path": "data/zoo/gpt2-s", "name": "gpt2-s again"}


def _same_bundle_id(raw, root):
    for name in ("a", "b"):
        imported_probe(root, name, id="alice/same")
    raw["probes"] = {k: {**ENTRY, "path": f"data/imported/{k}"} for k in ("a", "b")}


@pytest.mark.parametrize("case", ["names", "hf_ids", "fitted_ids", "imported_ids", "imported_id_invalid", "preset_dirs",
                                  "checkpoint", "checkpoint_garbage", "checkpoint_keys", "checkpoint_int_keys"])
def test_names_ids_and_paths_are_checked(tmp_path, case):
    raw = project_params()
    if case == "names":
        raw["models"]["gpt2-s"]["name"] = "zoo/llama-s"
        needles = ["models.llama-s and models.gpt2-s have the same leaderboard name 'zoo/llama-s'"]
    elif case == "hf_ids":  # the same hub model at two layers, no names: the same display string
        raw["models"]["gpt2-s"].update(name=None, hf_id="org/m")
        raw["models"]["llama-s"].update(name=None, hf_id="org/m")
        needles = ["models.llama-s and models.gpt2-s have the same leaderboard name 'org/m'"]
    elif case == "fitted_ids":
        _same_ids(raw)
        needles = ["tasks.x-gpt2 x models.s and tasks.x x models.gpt2-s make the same bundle id",
                   "probebench-x-gpt2-s-resid_post.L<block>-mean_diff-activation_ridge"]
    elif case == "imported_ids":
        _same_bundle_id(raw, tmp_path)
        needles = ["probes.a and probes.b both have bundle id 'alice/same'"]
    elif case == "imported_id_invalid":  # emit would refuse it only after every ablation ran
        imported_probe(tmp_path, "a", id="alice/../x")
        raw["probes"] = {"a": {**ENTRY, "path": "data/imported/a"}}
        needles = ["probes.a (the id in its card): probeId 'alice/../x' is path-like"]
    elif case == "preset_dirs":
        raw = _preset()
        needles = ["models.gemma-2-2b.path 'models/gemma-2-2b' does not exist and no stage builds it",
                   "hf download google/gemma-2-2b --local-dir models/gemma-2-2b"]
    elif case == "checkpoint":
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["crosscoders"]["zoo-gemma2"]["checkpoint"] = "models/crosscoder/model_final.pt"
        needles = ["crosscoders.zoo-gemma2.checkpoint 'models/crosscoder/model_final.pt' does not exist"]
    elif case == "checkpoint_garbage":  # found by check, not by crosscoder_train after both extracts
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / "cc.pt").write_bytes(b"PK\x03\x04 this is no checkpoint" * 10)
        raw["crosscoders"]["zoo-gemma2"]["checkpoint"] = "models/cc.pt"
        needles = ["crosscoders.zoo-gemma2.checkpoint: ", "models/cc.pt: not a torch checkpoint that loads with weights_only=True"]
    else:  # a real torch file whose keys are no crosscoder layout, or no names at all
        import torch

        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        (tmp_path / "models").mkdir()
        int_keys = case == "checkpoint_int_keys"
        torch.save({0: torch.zeros(2, 2)} if int_keys else {"linear.weight": torch.zeros(2, 2)}, tmp_path / "models" / "cc.pt")
        raw["crosscoders"]["zoo-gemma2"]["checkpoint"] = "models/cc.pt"
        needles = ["crosscoders.zoo-gemma2.checkpoint: ", "models/cc.pt: holds a dict keyed by int (0), not a state dict" if int_keys
                   else "models/cc.pt: unrecognised key layout ['linear.weight']"]
    check_fails(tmp_path, raw, *needles)


# --- item 7: emit.probe_id_prefix -----------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "-x", "a/b", "../x", "a..b", "a b", "a\x00b", "a\nb", "a\\b"])
def test_bad_probe_id_prefixes_are_refused_at_params_load(tmp_path, prefix):
    raw = project_params()
    raw["emit"]["probe_id_prefix"] = prefix
    check_fails(tmp_path, raw, "emit.probe_id_prefix", repr(prefix), "without '..'")


def test_dotted_prefix_is_allowed(tmp_path):
    raw = project_params()
    raw["emit"]["probe_id_prefix"] = "alice.lab_v2-run"
    check_passes(tmp_path, raw)


# --- item 8: bundle import refuses what it cannot honour -----------------------------------------------

D = 32


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "models" / "toy").mkdir(parents=True)
    (tmp_path / "models" / "toy" / "config.json").write_text(
        json.dumps({"model_type": "llama", "hidden_size": D, "num_hidden_layers": 4}))
    write_params(tmp_path, {"tasks": {"planted": {"kind": "sentiment"}},
                            "models": {"toy": {"path": "models/toy", "layer": 2, "hf_id": "org/toy-model"}}})
    return tmp_path


def _fit(kind: str = "logreg"):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    X = rng.normal(size=(200, D)) + 2.0 * y[:, None] * np.eye(D)[0]
    scaler = StandardScaler().fit(X)
    clf = (LogisticRegression() if kind == "logreg" else Ridge()).fit(scaler.transform(X), y)
    return scaler, clf


def _scaled(coef_value: float):
    scaler, clf = _fit()
    clf.coef_ = np.full_like(clf.coef_, coef_value)
    return scaler, clf


def _not_a_pickle(bundle: Path) -> None:
    (bundle / "probe.joblib").write_bytes(b"PK\x03\x04 a zip file, not a pickle")
    meta = json.loads((bundle / "meta.json").read_text())
    meta["artifactSha256"] = hashlib.sha256((bundle / "probe.joblib").read_bytes()).hexdigest()
    (bundle / "meta.json").write_text(json.dumps(meta))


BUNDLES = {
    "d_model_fraction": (_fit, {"d_model": 32.9}, None, "key 'd_model' is 32.9; it must be an integer"),
    "d_model_text": (_fit, {"d_model": "abc"}, None, "key 'd_model' is 'abc'; it must be an integer"),
    "position_mean": (_fit, {"position": "mean"}, None, "position 'mean' is not implemented"),
    "regressor": (lambda: _fit("ridge"), {}, None, "probe is a sklearn.linear_model._ridge.Ridge, not a classifier"),
    "empty_digest": (_fit, {"artifactSha256": ""}, None, "key 'artifactSha256' is ''; give the sha256 of probe.joblib"),
    "zero_direction": (lambda: _scaled(0.0), {}, None, "direction has norm 0"),
    "subnormal_direction": (lambda: _scaled(1e-320), {}, None, "direction has norm 0 (largest entry"),
    "not_a_pickle": (_fit, {}, _not_a_pickle, "probe.joblib: not a joblib/pickle file (it begins with b'PK"),
}


@pytest.mark.parametrize("case", sorted(BUNDLES))
def test_bundle_import_refuses_what_it_cannot_honour(toy, case):
    fit, meta, edit, needle = BUNDLES[case]
    scaler, clf = fit()
    bundle = site_bundle(toy / "bundle", scaler, clf, **meta)
    if edit is not None:
        edit(bundle)
    before = snapshot(toy)
    out = toy / "data" / "imported" / "p"
    result = runner.invoke(cli.app, ["probe", "import", str(bundle), "--model", "toy", "--params",
                                     str(toy / "params.yaml"), "--out", str(out), "--task", "planted", "--trust-pickle"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    if case in ("zero_direction", "subnormal_direction"):
        assert "alice/planted-toy-l2" in lines[0]  # the probe is named
    assert snapshot(toy) == before and not out.exists()


# --- item 9: the logreg probe is the optimum of its objective, on every machine ------------------------

def _newton_optimum(Z_ND: np.ndarray, y_N: np.ndarray, C: float) -> np.ndarray:
    """The L2 logistic regression optimum (C * sum of losses + |w|^2 / 2, intercept unpenalized)
    by plain Newton steps to machine precision: an independent reference for fit_probe."""
    A = np.hstack([Z_ND, np.ones((len(Z_ND), 1))])
    reg = np.eye(A.shape[1]) / C
    reg[-1, -1] = 0.0
    theta = np.zeros(A.shape[1])
    for _ in range(100):
        p_N = 1.0 / (1.0 + np.exp(-(A @ theta)))
        step = np.linalg.solve((A * (p_N * (1 - p_N))[:, None]).T @ A + reg, A.T @ (p_N - y_N) + reg @ theta)
        theta -= step
        if np.abs(step).max() < 1e-15:
            break
    return theta[:-1]


def test_logreg_is_the_objectives_optimum_and_recovers_the_planted_direction():
    rng = np.random.default_rng(7)
    d, n = 32, 5000  # enough rows that the estimate sits close to the planted axis
    u_D = rng.normal(size=d)
    u_D /= np.linalg.norm(u_D)
    y_N = rng.integers(0, 2, n)
    scale_D = rng.uniform(0.5, 4.0, d)  # unequal feature scales: standardization and its fold matter
    acts = ((rng.normal(size=(n, d)) + 2.0 * y_N[:, None] * u_D) * scale_D + rng.normal(scale=5.0, size=d))
    acts = acts.astype(np.float32)
    probe = fit_probe(acts, y_N, method="logreg", C=1.0)
    # the planted direction is recovered: in raw space the Bayes direction is Cov^-1 (mu1 - mu0) ~ u / scale
    planted_D = u_D / scale_D
    assert float(probe.unit() @ planted_D) / np.linalg.norm(planted_D) > 0.97
    # and it is the optimum of the objective (an independent Newton solve), not a point near it:
    # lbfgs at scikit-learn's default tol stops ~1e-3 away, where another machine's BLAS stops elsewhere
    scaler = StandardScaler().fit(acts.astype(np.float64))
    ref_D = _newton_optimum(scaler.transform(acts.astype(np.float64)), y_N, 1.0) / scaler.scale_
    np.testing.assert_allclose(probe.unit(), ref_D / np.linalg.norm(ref_D), rtol=0, atol=1e-10)
    # the same probe with another thread count, row order and input dtype
    perm = rng.permutation(n)
    with threadpool_limits(limits=2):
        again = fit_probe(acts[perm].astype(np.float64), y_N[perm], method="logreg", C=1.0)
    np.testing.assert_allclose(again.unit(), probe.unit(), rtol=0, atol=1e-10)
    assert probe.card["tol"] == 1e-10 and probe.card["n_iter"] < probe.card["max_iter"]
