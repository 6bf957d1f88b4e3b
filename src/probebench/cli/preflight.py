"""What `probebench check` knows before any compute: the rules a stage would otherwise enforce
minutes (or hours) into a run, after DVC has already deleted the outputs of the last good one.

Params alone are validated by probebench.params.schema; this module adds what needs the inputs too:
the scoring rule's N (synthetic n_test, or the test rows of a prompt file), the device of each
model on this machine, and, for model directories that already exist, the layer against the
model's config and the class strings against its tokenizer.

    >>> from probebench.params.schema import parse_params
    >>> p = parse_params({"tasks": {"t": {"kind": "sentiment", "n_test": 150}}})
    >>> preflight(p, root=Path("."))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    probebench.params.schema.ParamsError: params.yaml: tasks.t has N=150 test prompts, fewer than matrix.min_n=200 ...
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from probebench.params.devices import device_problem
from probebench.params.schema import Params, ParamsError


def _under(root: Path, path: str) -> Path:
    # stages run from the project root (where params.yaml and dvc.yaml are)
    return Path(path) if Path(path).is_absolute() else root / path


def preflight(params: Params, *, root: Path, source: str = "params.yaml") -> list[str]:
    """Raise a ValueError (one line naming the key or file and the fix) for the first problem a
    run would hit; return one-line warnings for what a run tolerates."""
    from probebench.prompts import read_user_prompts

    notes: list[str] = []
    for slug, m in params.models.items():
        if m.device_map is None and (problem := device_problem(m.device)) is not None:
            raise ParamsError(f"{source}: models.{slug}.device: {problem}")
    mx = params.matrix
    class_pairs: dict[str, set[tuple[str, str]]] = {}
    for name, task in params.tasks.items():
        if task.kind is not None:
            n_test, class_pairs[name] = task.n_test, {(task.positive, task.negative)}
            fix = f"raise tasks.{name}.n_test"
        else:
            df = read_user_prompts(_under(root, task.file), name=name, split_salt=params.split.salt,
                                   test_fraction=params.split.test_fraction)
            n_test = int((df["split"] == "test").sum())
            class_pairs[name] = set(zip(df["positive"], df["negative"]))
            if len(class_pairs[name]) > 1:
                raise ParamsError(f"{task.file}: {len(class_pairs[name])} different positive/negative class-string "
                                  f"pairs (tasks.{name}); one prompt set must use one pair: split it into tasks")
            fix = f"add test prompts to {task.file}"
        if mx.scored_run and n_test < mx.min_n:
            raise ParamsError(f"{source}: tasks.{name} has N={n_test} test prompts, fewer than matrix.min_n={mx.min_n} "
                              f"for a scored run; {fix} or set matrix.scored_run: false to report it unscored")
    if len(params.models) < mx.min_sources:
        notes.append(f"{source}: {len(params.models)} model(s) in models:, fewer than matrix.min_sources="
                     f"{mx.min_sources}; every entry will be reported unscored")
    for slug, m in params.models.items():
        notes += _check_model_dir(params, slug, _under(root, m.path), class_pairs, source)
    return notes


def _check_model_dir(params: Params, slug: str, path: Path, class_pairs: dict[str, set[tuple[str, str]]],
                     source: str) -> list[str]:
    """Layer and class strings against a model directory that exists (zoo models appear only once
    their stage ran; hub ids are checked when they load)."""
    from probebench.models.extract import class_token_ids
    from probebench.models.load import resolve_layer

    if not (path / "config.json").is_file():
        return []
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    n_blocks = config.get("num_hidden_layers", config.get("n_layer"))
    if isinstance(n_blocks, int):
        resolve_layer(params.models[slug].layer, n_blocks, where=f"{source}: models.{slug}.layer ({path})")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        return []
    from transformers import AutoTokenizer

    from probebench.models.load import ModelError

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load its tokenizer ({str(exc).strip().splitlines()[0]}) "
                         f"(models.{slug}.path); save a fast tokenizer there (tokenizer.json)") from None
    notes = []
    for task, pairs in class_pairs.items():
        for positive, negative in sorted(pairs):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                class_token_ids(tokenizer, positive, negative, where=f"tasks.{task} in models.{slug} ({path})")
            notes += [str(w.message) for w in caught]
    return notes
