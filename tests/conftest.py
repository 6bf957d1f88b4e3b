"""Shared, session-scoped, read-only fixtures: tiny random-init models of every zoo family, each
with its own trained tokenizer (seconds on CPU)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from probebench.prompts import SyntheticTaskSpec
from probebench.zoo.train import FAMILIES, ZooModelSpec, build_tokenizer, make_config

TASKS = [SyntheticTaskSpec("sentiment", "sentiment"), SyntheticTaskSpec("consistency", "consistency")]
VOCAB = {"llama": 140, "qwen2": 450, "qwen3": 360, "gemma2": 200, "gpt2": 320}


def tiny_model(family: str, *, d_model: int = 32, n_layers: int = 3, seed: int = 0):
    spec = ZooModelSpec(family=family, d_model=d_model, n_layers=n_layers, n_heads=4, vocab_size=VOCAB[family],
                        max_positions=128)
    tokenizer = build_tokenizer(spec, TASKS)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(spec, tokenizer))
    model.eval().requires_grad_(False)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_models():
    return {family: tiny_model(family) for family in FAMILIES}


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: tiny matmuls cost more in threads than they save on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The pipeline test's tiny project after one plain `dvc repro`, and the stages it ran
    (read-only: tests that edit it work on a copy)."""
    from tests.support.pipeline import new_project, repro

    project = new_project(tmp_path_factory.mktemp("reference") / "project")
    return project, repro(project, "repro")
