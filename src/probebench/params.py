"""params.yaml, validated once at the edge into frozen pydantic models.

Unknown or mistyped keys are an error naming the key (`zoo.models.llama-s.famly: unknown key`),
never a silent default. The core never opens params.yaml; stage shells call `load_params`.

    >>> p = Params.model_validate({"tasks": {"t": {"kind": "sentiment"}}})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from probebench.tasks import GENERATORS, SyntheticTaskSpec
from probebench.zoo import FAMILIES, ZooModelSpec


class ParamsError(ValueError):
    """Invalid params.yaml: one line naming the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_slug(slug: str, where: str) -> str:
    # DVC splits param keys on dots, so a dotted slug would address the wrong key.
    if "." in slug or "/" in slug or not slug:
        raise ValueError(f"{where} key {slug!r} must be a slug without '.' or '/' (DVC splits param keys on dots); "
                         "put a hub id in the model's hf_id instead")
    return slug


class SplitParams(_Strict):
    """Train/test assignment by a salted hash of the normalized text (synthetic) or id (files)."""
    salt: str = "probebench-v1"
    test_fraction: float = Field(0.2, gt=0, lt=1)


class TaskParams(_Strict):
    """A prompt set: a synthetic `kind` or a user `file` (.jsonl/.csv/.parquet), not both."""
    kind: str | None = None
    file: str | None = None
    n_train: int = Field(768, ge=1)
    n_test: int = Field(256, ge=1)
    seed: int = 0
    positive: str = " yes"
    negative: str = " no"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.kind is None) == (self.file is None):
            raise ValueError("give exactly one of kind (a synthetic task) or file (your prompt file)")
        if self.kind is not None and self.kind not in GENERATORS:
            raise ValueError(f"kind {self.kind!r} unknown; use one of {sorted(GENERATORS)} or give a file")
        if self.positive == self.negative:
            raise ValueError("positive and negative class strings are identical")
        return self


class ZooModelParams(_Strict):
    """One embedded model (see probebench.zoo.ZooModelSpec for every field)."""
    family: str
    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int | None = None
    d_mlp: int | None = None
    vocab_size: int = Field(600, ge=64)
    max_positions: int = 128
    steps: int = Field(800, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    lm_weight: float = Field(0.2, ge=0)
    seed: int = 0

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown architecture family {v!r}; use one of {list(FAMILIES)}")
        return v

    def spec(self) -> ZooModelSpec:
        return ZooModelSpec(**self.model_dump())


class FinetuneParams(_Strict):
    """An "IT" variant: `base` (a zoo model) fine-tuned on an instruction-format mix."""
    base: str
    steps: int = Field(250, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    lm_weight: float = Field(0.2, ge=0)
    seed: int = 0
    it_fraction: float = Field(0.5, ge=0, le=1)


class ZooParams(_Strict):
    threads: int = Field(2, ge=1)
    corpus: tuple[str, ...] = ("sentiment", "consistency")
    positive: str = " yes"
    negative: str = " no"
    models: dict[str, ZooModelParams] = {}
    finetunes: dict[str, FinetuneParams] = {}

    @model_validator(mode="after")
    def _check(self):
        for slug in self.models:
            _check_slug(slug, "zoo.models")
        for slug, ft in self.finetunes.items():
            _check_slug(slug, "zoo.finetunes")
            if slug in self.models:
                raise ValueError(f"finetunes.{slug} also names a zoo model; use a different slug")
            if ft.base not in self.models:
                raise ValueError(f"finetunes.{slug}.base {ft.base!r} is not a zoo model; use one of {sorted(self.models)}")
        for kind in self.corpus:
            if kind not in GENERATORS:
                raise ValueError(f"corpus kind {kind!r} unknown; use {sorted(GENERATORS)}")
        return self


class ModelParams(_Strict):
    """A model in the transfer matrix. `path` is a local directory DVC can hash (a zoo output or
    a downloaded snapshot); `hf_id` is the name written on the leaderboard (default: path)."""
    path: str
    hf_id: str | None = None
    layer: int | float = 0.5
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    device_map: str | None = None

    @property
    def name(self) -> str:
        return self.hf_id or self.path


class ExtractParams(_Strict):
    batch_size: int = Field(64, ge=1)


class ProbeParams(_Strict):
    method: Literal["logreg", "mean_diff"] = "logreg"
    C: float = Field(1.0, gt=0)


class TransferParams(_Strict):
    method: Literal["score_ridge", "activation_ridge", "identity"] = "score_ridge"
    alpha: float | None = None


class AblateParams(_Strict):
    mode: Literal["projection", "mean"] = "projection"
    positions: Literal["all", "readout"] = "all"
    layers: Literal["single", "from_layer"] = "single"
    batch_size: int = Field(64, ge=1)


class BootstrapParams(_Strict):
    n_resamples: int = Field(1000, ge=10)
    seed: int = 0
    ci_level: float = Field(0.95, gt=0, lt=1)
    ci_method: Literal["percentile", "bca"] = "percentile"


class NormalizeParams(_Strict):
    """Which per-prompt effect feeds rho: the token margin (required for a scored entry), or the
    naive diagnostics delta logit(pos) / delta log p(pos)."""
    effect: Literal["token_margin", "logit_pos", "logprob_pos"] = "token_margin"


class MatrixParams(_Strict):
    """Flags and the scoring rule. scored_run: a task with fewer than min_n test prompts is an
    error (set false to report such a run unscored). min_effect_sd: below this mean |effect| (in
    clean-margin SDs) on either side a cell is flagged inert_direction (diagnostic only)."""
    not_same_threshold: float = 0.4
    cosine_confound_threshold: float = 0.7
    min_n: int = Field(200, ge=2)
    min_sources: int = Field(3, ge=1)
    scored_run: bool = True
    min_effect_sd: float = Field(0.05, ge=0)


class CrosscoderParams(_Strict):
    """Crosscoder audit of a base/IT pair (keys of `models`, sharing a tokenizer).

    checkpoint: a published crosscoder to load instead of training one (.pt/.safetensors or a
    directory with cfg.json). n_latents/k/steps/batch_size/lr: BatchTopK training. train_tasks:
    prompt sets whose train texts (every token) are the training data. audit_task: prompt set
    whose test prompts are the M inputs. rel_norm_band/top_k: shared latents = relative decoder
    norm inside the band, top_k by firing frequency."""
    base: str
    chat: str
    checkpoint: str | None = None
    n_latents: int = Field(512, ge=2)
    k: int = Field(16, ge=1)
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    train_tasks: tuple[str, ...] = ()
    audit_task: str
    rel_norm_band: tuple[float, float] = (0.3, 0.7)
    top_k: int = Field(80, ge=1)
    min_frequency: float = Field(0.0, ge=0, le=1)
    cos_threshold: float = 0.7
    ce_threshold: float = 0.5


class EmitParams(_Strict):
    probe_id_prefix: str = "probebench"


class Params(_Strict):
    seed: int = 0
    split: SplitParams = SplitParams()
    tasks: dict[str, TaskParams]
    zoo: ZooParams = ZooParams()
    models: dict[str, ModelParams] = {}
    extract: ExtractParams = ExtractParams()
    probe: ProbeParams = ProbeParams()
    transfer: TransferParams = TransferParams()
    ablate: AblateParams = AblateParams()
    normalize: NormalizeParams = NormalizeParams()
    bootstrap: BootstrapParams = BootstrapParams()
    matrix: MatrixParams = MatrixParams()
    emit: EmitParams = EmitParams()
    crosscoder: CrosscoderParams | None = None

    @model_validator(mode="after")
    def _check(self):
        for slug in self.tasks:
            _check_slug(slug, "tasks")
        for slug in self.models:
            _check_slug(slug, "models")
        if self.crosscoder is not None:
            cc = self.crosscoder
            for key in ("base", "chat"):
                if getattr(cc, key) not in self.models:
                    raise ValueError(f"crosscoder.{key} {getattr(cc, key)!r} is not a key of models: {sorted(self.models)}")
            for task in (*cc.train_tasks, cc.audit_task):
                if task not in self.tasks:
                    raise ValueError(f"crosscoder task {task!r} is not a key of tasks: {sorted(self.tasks)}")
        return self

    def synthetic_spec(self, name: str) -> SyntheticTaskSpec:
        t = self.tasks[name]
        return SyntheticTaskSpec(name=name, kind=t.kind, n_train=t.n_train, n_test=t.n_test, positive=t.positive,
                                 negative=t.negative, seed=t.seed, split_salt=self.split.salt,
                                 test_fraction=self.split.test_fraction)

    def zoo_corpus(self) -> list[SyntheticTaskSpec]:
        return [SyntheticTaskSpec(name=k, kind=k, positive=self.zoo.positive, negative=self.zoo.negative,
                                  split_salt=self.split.salt, test_fraction=self.split.test_fraction)
                for k in self.zoo.corpus]

    def zoo_spec(self, slug: str) -> ZooModelSpec:
        """The spec of a zoo model or fine-tune (a fine-tune inherits its base's architecture)."""
        if slug in self.zoo.models:
            return self.zoo.models[slug].spec()
        if slug in self.zoo.finetunes:
            ft = self.zoo.finetunes[slug]
            return dataclasses.replace(self.zoo.models[ft.base].spec(), **ft.model_dump())
        raise ParamsError(f"params.yaml: zoo has no model {slug!r}; known: "
                          f"{sorted([*self.zoo.models, *self.zoo.finetunes])}")

    def model(self, slug: str) -> ModelParams:
        if slug not in self.models:
            raise ParamsError(f"unknown model key {slug!r}; params.yaml models has {sorted(self.models)}")
        return self.models[slug]


def _format_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    if err["type"] == "extra_forbidden":
        return f"{source}: {loc}: unknown key; remove it or fix its spelling"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: {loc or '(top level)'}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "value_error" and not isinstance(err.get("input"), dict) else "")


def parse_params(raw: dict, *, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(exc, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root (where dvc.yaml is)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw, source=str(path))
