"""ProbeBench bundles laid out exactly as the site's openinterp tooling writes them (shared by
tests/probes/test_probe_import.py and the pipeline test)."""

from __future__ import annotations

import hashlib
import json

import joblib


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SITE_META = {
    "id": "alice/planted-toy-l2", "name": "Planted toy probe", "shortName": "PlantedToy", "author": "Alice",
    "org": "Alice Lab", "category": "deception", "probeType": "linear", "modelId": "org/toy-model", "layer": 2,
    "position": "last_token", "license": "MIT", "tasks": ["planted"], "release": "2026-11-29",
}


def site_bundle(d, scaler, clf, **meta):
    """A bundle exactly as the openinterp tooling lays it out: probe.joblib (the classifier),
    scaler.joblib beside it, meta.json whose artifactSha256 covers probe.joblib only."""
    d.mkdir(parents=True)
    joblib.dump(clf, d / "probe.joblib")
    if scaler is not None:
        joblib.dump(scaler, d / "scaler.joblib")
    doc = {**SITE_META, "artifactSha256": sha(d / "probe.joblib"), **meta}
    (d / "meta.json").write_text(json.dumps(doc, indent=2))
    return d
