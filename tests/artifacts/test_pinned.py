"""Pinned zoo snapshots: verified before use, refused when altered or trained with other params."""

import json

import pytest

from probebench.artifacts.environment import lock_differences, parse_lock
from probebench.artifacts.pinned import PinnedError, materialize, pin_dir, read_manifest, write_manifest
from probebench.artifacts.verify import numeric_diff


def _trained(tmp_path):
    src = tmp_path / "trained"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"\x00weights")
    (src / "config.json").write_text('{"d": 64}')
    return src


def test_pin_then_materialize_copies_verified_files(tmp_path):
    entry = pin_dir(_trained(tmp_path), tmp_path / "zoo" / "m", params={"steps": 700}, metrics={"accuracy": 0.9})
    write_manifest(tmp_path / "zoo", {"m": entry})
    entry = read_manifest(tmp_path / "zoo")["m"]
    materialize(tmp_path / "zoo" / "m", entry, tmp_path / "out", params={"steps": 700}, where="zoo@m")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"\x00weights"
    assert json.loads((tmp_path / "zoo" / "manifest.json").read_text())["m"]["metrics"] == {"accuracy": 0.9}


def test_altered_pinned_file_is_refused_and_nothing_written(tmp_path):
    entry = pin_dir(_trained(tmp_path), tmp_path / "zoo" / "m", params={"steps": 700}, metrics={})
    (tmp_path / "zoo" / "m" / "model.safetensors").write_bytes(b"\x00tampered")
    with pytest.raises(PinnedError, match=r"\['model.safetensors'\].*do not match"):
        materialize(tmp_path / "zoo" / "m", entry, tmp_path / "out", params={"steps": 700}, where="zoo@m")
    assert not (tmp_path / "out").exists()


def test_changed_training_params_are_refused_with_the_fix(tmp_path):
    entry = pin_dir(_trained(tmp_path), tmp_path / "zoo" / "m", params={"steps": 700, "seed": 1}, metrics={})
    with pytest.raises(PinnedError, match=r"params \['steps'\] differ.*zoo.source: train"):
        materialize(tmp_path / "zoo" / "m", entry, tmp_path / "out", params={"steps": 800, "seed": 1}, where="zoo@m")


def test_missing_snapshot_names_the_fix(tmp_path):
    with pytest.raises(PinnedError, match="no pinned snapshot.*zoo.source: train"):
        materialize(tmp_path / "zoo" / "m", None, tmp_path / "out", params={}, where="zoo@m")


def test_numeric_diff_tolerates_float_noise_but_not_real_changes():
    a = "task,rho\nsentiment,0.734512\nconsistency,0.1\n"
    assert numeric_diff(a, a.replace("0.734512", "0.734561"), tol=1e-4) == []
    assert numeric_diff(a, a.replace("0.734512", "0.735512"), tol=1e-4)
    assert numeric_diff(a, a.replace("sentiment", "sentimant"), tol=1e-4)[0].startswith("text differs")
    assert numeric_diff(a, a + "x,1\n", tol=1e-4)


def test_lock_differences_names_each_package(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==0.0.1\nscipy==99\n")
    assert parse_lock(lock.read_text()) == {"numpy": "0.0.1", "scipy": "99"}
    lines = lock_differences(lock, packages=("numpy", "scipy", "pandas"))
    assert len(lines) == 2 and lines[0].startswith("numpy ") and "(0.0.1)" in lines[0]
    assert lock_differences(tmp_path / "none.lock")[0].endswith("use the locked versions")
