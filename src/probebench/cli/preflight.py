"""What `probebench check` knows before any compute: the rules a stage would otherwise enforce
minutes (or hours) into a run, after DVC has already deleted the outputs of the last good one.

Params alone are validated by probebench.params.schema; this module adds what needs the inputs too:
the scoring rule's N (synthetic n_test, or the test rows of a prompt file), model directories and
crosscoder checkpoints that no stage builds and that are missing, null counts that no result can
beat, map fractions that leave the probes or the map too few rows (prompts.splits.row_roles on
every task), basis chains across widths, imported probes (`probes:`) against their entry and
model, duplicate bundle ids, the device of each model on this machine, and, for model
directories that already exist, the layer against the model's config and the class strings
against its tokenizer. Widths are known from a model directory's config.json, or for a zoo model
from its zoo params, before anything is built.

    >>> from probebench.params.schema import parse_params
    >>> p = parse_params({"tasks": {"t": {"kind": "sentiment", "n_test": 150}}})
    >>> preflight(p, root=Path("."))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    probebench.params.schema.ParamsError: params.yaml: tasks.t has N=150 test prompts, fewer than matrix.min_n=200 ...
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

from probebench.params.devices import device_problem
from probebench.params.schema import Params, ParamsError
# Each side of a cell's random-direction null is one model's n_random draws; the fitted p needs at
# least MIN_FIT_DRAWS of them.
from probebench.stats import EMPIRICAL_DRAWS, MIN_FIT_DRAWS


def _under(root: Path, path: str) -> Path:
    # stages run from the project root (where params.yaml and dvc.yaml are)
    return Path(path) if Path(path).is_absolute() else root / path


def preflight(params: Params, *, root: Path, source: str = "params.yaml") -> list[str]:
    """Raise a ValueError (one line naming the key or file and the fix) for the first problem a
    run would hit; return one-line warnings for what a run tolerates."""
    from probebench.prompts import build_synthetic, read_user_prompts

    notes: list[str] = []
    _check_paths(params, root, source)
    _check_null_counts(params, source)
    for slug, m in params.models.items():
        if m.device_map is None and (problem := device_problem(m.device)) is not None:
            raise ParamsError(f"{source}: models.{slug}.device: {problem}")
    mx = params.matrix
    class_pairs: dict[str, set[tuple[str, str]]] = {}
    frames = {}  # task -> its prompt table (ids, split, labels)
    for name, task in params.tasks.items():
        if task.kind is not None:
            n_test, class_pairs[name] = task.n_test, {(task.positive, task.negative)}
            fix = f"raise tasks.{name}.n_test"
        else:
            df = frames[name] = read_user_prompts(_under(root, task.file), name=name, split_salt=params.split.salt,
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
        if task.kind is not None:  # the prompts stage's own table: the ids and labels row_roles sees
            frames[name] = build_synthetic(params.synthetic_spec(name))
    _check_map_fraction(params, frames, source)
    shapes = {slug: _model_shape(params, slug, root) for slug in params.models}
    _check_basis_widths(params, shapes, source)
    cards = _check_imported_probes(params, root, shapes, source)
    _check_bundle_ids(params, cards, source)
    if len(params.models) < mx.min_sources:
        notes.append(f"{source}: {len(params.models)} model(s) in models:, fewer than matrix.min_sources="
                     f"{mx.min_sources}; every entry will be reported unscored")
    for slug, m in params.models.items():
        notes += _check_model_dir(params, slug, _under(root, m.path), class_pairs, source)
    return notes


def _stage_output(params: Params, slug: str, root: Path) -> tuple[str, str] | None:
    """("zoo" | "finetune" | "imports" | "adapters", key) when a stage builds models.<slug>.path (zoo
    models go to data/zoo/<key>, imports and adapters to data/models/<key>); None for a directory the
    user provides."""
    target = _under(root, params.models[slug].path).resolve()
    for kind, keys, folder in (("zoo", params.zoo.models, "zoo"), ("finetune", params.zoo.finetunes, "zoo"),
                               ("imports", params.imports, "models"), ("adapters", params.adapters, "models")):
        for key in keys:
            if target == (root / "data" / folder / key).resolve():
                return kind, key
    return None


def _check_paths(params: Params, root: Path, source: str) -> None:
    """Model directories no stage builds, and a crosscoder checkpoint, must exist before the run
    (extract would find a missing one after every earlier stage ran)."""
    for slug, m in params.models.items():
        if not _under(root, m.path).exists() and _stage_output(params, slug, root) is None:
            get = f"download it there (e.g. `hf download {m.hf_id} --local-dir {m.path}`)" if m.hf_id else \
                "download the model to that directory"
            raise ParamsError(f"{source}: models.{slug}.path {m.path!r} does not exist and no stage builds it (zoo "
                              f"models are built in data/zoo/<zoo key>, imports and adapters in data/models/<key>); {get} "
                              "or fix the path")
    for key, cc in params.crosscoders.items():
        if cc.checkpoint is None:
            continue
        if not _under(root, cc.checkpoint).exists():
            raise ParamsError(f"{source}: crosscoders.{key}.checkpoint {cc.checkpoint!r} does not exist; put the "
                              "published crosscoder there (.pt/.safetensors or a directory with cfg.json) or set "
                              "checkpoint: null")
        from probebench.crosscoder.loading import CrossCoderLoadError, check_checkpoint

        try:
            check_checkpoint(_under(root, cc.checkpoint))
        except CrossCoderLoadError as exc:
            raise ParamsError(f"{source}: crosscoders.{key}.checkpoint: {exc}") from None


def _smallest(draws_of, alpha: float) -> int:
    """The smallest n whose null of draws_of(n) draws reaches p = 1 / (draws + 1) <= alpha."""
    hi = 1
    while 1.0 / (draws_of(hi) + 1) > alpha:
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if 1.0 / (draws_of(mid) + 1) <= alpha else (mid, hi)
    return hi


def _check_null_counts(params: Params, source: str) -> None:
    """An empirical p is (1 + #{null >= value}) / (1 + R) (transfer.maps.empirical_p), so with R
    null draws nothing gets below 1 / (R + 1). transfer.plan draws n_null noise-source and n_null
    shuffled-pairing maps for each transfer (R = 2 n_null), and n_null random directions for the
    geometry null of models sharing a basis (R = n_null)."""
    tr = params.transfer
    nulls = [("the transfer null (n_null noise-source + n_null shuffled-pairing maps)", lambda n: 2 * n)]
    if any(m.basis is not None for m in params.models.values()):
        nulls.append(("the shared-basis cosine null (n_null random directions)", lambda n: max(n, 1)))
    for what, draws_of in nulls:
        draws = draws_of(tr.n_null) if tr.n_null else 0
        if 1.0 / (draws + 1) > tr.null_alpha:
            need = _smallest(draws_of, tr.null_alpha)
            raise ParamsError(f"{source}: transfer.n_null={tr.n_null} gives {what} {draws} draws, so its smallest "
                              f"empirical p is 1/{draws + 1} = {1 / (draws + 1):.3g} > transfer.null_alpha="
                              f"{tr.null_alpha}: nothing can beat the null; set transfer.n_null >= {need} "
                              f"(the smallest that reaches null_alpha) or raise transfer.null_alpha")
    for slug, m in params.models.items():
        n = params.ablate.n_random if m.n_random is None else m.n_random
        key = "ablate.n_random" if m.n_random is None else f"models.{slug}.n_random"
        if n < MIN_FIT_DRAWS:
            raise ParamsError(f"{source}: {key}={n} random directions for {slug}: each side of a cell's "
                              f"random-direction null is one model's draws, and its p needs at least {MIN_FIT_DRAWS} "
                              f"(a fitted null; {EMPIRICAL_DRAWS} for an empirical p resolving 0.01); set {key} >= "
                              f"{MIN_FIT_DRAWS}")


def _map_fraction_problem(params: Params, frames: dict, fraction: float) -> tuple[str, str] | None:
    """(task, what is short) when `fraction` leaves a task's map or probes too few train rows."""
    from probebench.prompts import row_roles

    few_shot = max((m.framing.few_shot for m in params.models.values()), default=0)
    per_class = max(1, few_shot // 2)
    for name, df in frames.items():
        roles = row_roles(df, salt=params.split.salt, map_fraction=fraction)
        y_N = df["label"].to_numpy()
        n_train = int((df["split"] == "train").sum())
        n_map = int(roles.map_N.sum())
        counts = [int((roles.probe_N & (y_N == c)).sum()) for c in (0, 1)]
        if n_map < 2:
            return name, (f"{n_map} of its {n_train} train prompts for the label-free map, which needs at least 2 "
                          "paired rows")
        if min(counts) < per_class:
            why = f" (few_shot {few_shot} draws {per_class} of each)" if few_shot else " (a probe needs both classes)"
            return name, (f"{counts[0]} probe row(s) of label 0 and {counts[1]} of label 1 of its {n_train} train "
                          f"prompts, fewer than the {per_class} of each the probes need{why}")
    return None


def _check_map_fraction(params: Params, frames: dict, source: str) -> None:
    """The probe, extract and ablate stages split every task's train rows by prompts.splits.row_roles:
    map_fraction of them go to the map, the rest to the probes; both sides must be fittable."""
    f = params.transfer.map_fraction
    problem = _map_fraction_problem(params, frames, f)
    if problem is None:
        return
    name, what = problem
    candidates = sorted((round(x / 100, 2) for x in range(1, 100)), key=lambda c: (abs(c - f), c))
    good = next((c for c in candidates if _map_fraction_problem(params, frames, c) is None), None)
    fix = (f"set transfer.map_fraction: {good} (the nearest that works) or raise tasks.{name}.n_train" if good is not None
           else f"raise tasks.{name}.n_train")
    raise ParamsError(f"{source}: transfer.map_fraction={f} leaves tasks.{name} {what}; {fix}")


def _model_shape(params: Params, slug: str, root: Path) -> tuple[int, int, str] | None:
    """(d_model, n_layers, where that is read) of models.<slug> when knowable before compute: its
    directory's config.json, else the zoo params of the zoo model built there; None otherwise
    (a model that model_import or a download still has to bring)."""
    path = _under(root, params.models[slug].path)
    if (path / "config.json").is_file():
        from probebench.probes.foreign import ProbeImportError, read_model_config

        try:
            d_model, n_layers = read_model_config(path)
        except ProbeImportError:
            return None
        return d_model, n_layers, f"{path / 'config.json'}"
    built = _stage_output(params, slug, root)
    if built is not None and built[0] in ("zoo", "finetune"):
        spec = params.zoo_spec(built[1])
        return spec.d_model, spec.n_layers, f"zoo.{'models' if built[0] == 'zoo' else 'finetunes'}.{built[1]}"
    return None


def _check_basis_widths(params: Params, shapes: dict, source: str) -> None:
    """Models on one basis chain share a residual basis, hence a width. Where a width is not known
    before compute, transfer.plan refuses the pair when the ablate stage first sees both."""
    for slug, m in params.models.items():
        if m.basis is None or shapes[slug] is None:
            continue
        for other in params.basis_chain(slug)[1:]:
            if shapes[other] is not None and shapes[other][0] != shapes[slug][0]:
                raise ParamsError(f"{source}: models.{slug}.basis {m.basis!r}: {slug} has d_model {shapes[slug][0]} "
                                  f"({shapes[slug][2]}) but {other} has d_model {shapes[other][0]} ({shapes[other][2]}); "
                                  "models sharing a residual basis have one width: remove the basis key")


def _check_imported_probes(params: Params, root: Path, shapes: dict, source: str) -> dict[str, dict]:
    """Every `probes:` entry: a probe directory under data/imported (what the ablate and emit
    stages depend on), listed once, whose card agrees with the entry (model, task), with itself and
    its direction file (probes.fit.load_probe), and with the model (width, block, hub id), with a
    usable direction. Returns each entry's card."""
    if not params.probes:
        return {}
    from probebench.probes.fit import ProbeError, load_probe
    from probebench.probes.foreign import check_direction

    imported = (root / "data" / "imported").resolve()
    seen: dict[Path, str] = {}
    cards: dict[str, dict] = {}
    for key, pr in params.probes.items():
        where = f"{source}: probes.{key}"
        path = _under(root, pr.path)
        resolved = path.resolve()
        fix = f"probebench probe import <probe> --model {pr.model} --task {pr.task} --out data/imported/{key}"
        if imported not in resolved.parents:
            raise ParamsError(f"{where}.path {pr.path!r} is outside data/imported, so it is no DVC dependency (the ablate "
                              f"and emit stages depend on data/imported: editing it would rerun nothing); import it "
                              f"there: {fix}")
        if resolved in seen:
            raise ParamsError(f"{where}.path {pr.path!r} is also probes.{seen[resolved]}.path; one imported probe is one "
                              "source: remove one of the two entries")
        seen[resolved] = key
        if not path.is_dir():
            raise ParamsError(f"{where}.path {pr.path!r} is not a directory; import the probe there: {fix}")
        try:
            probe = load_probe(path)
            check_direction(probe.direction, f"{path}")
        except ProbeError as exc:
            raise ParamsError(f"{where}: {exc}") from None
        card = cards[key] = probe.card
        said = {f: card.get(f) for f in ("model", "task") if card.get(f) not in (None, "")}
        wanted = {"model": pr.model, "task": pr.task}
        if any(said[f] != wanted[f] for f in said):
            raise ParamsError(f"{where}: its card says {', '.join(f'{f} {v!r}' for f, v in said.items())} but the entry "
                              f"registers it as model {pr.model!r}, task {pr.task!r}; set probes.{key}.model/task to "
                              f"what it was imported for, or import a probe for {pr.model}/{pr.task}: {fix}")
        _check_probe_against_model(params, pr, probe, card, shapes[pr.model], where, source)
    return cards


def _check_probe_against_model(params: Params, pr, probe, card: dict, shape, where: str, source: str) -> None:
    mp = params.models[pr.model]
    model_id = card.get("modelId")
    if model_id is not None and mp.hf_id is not None and str(model_id).casefold() != mp.hf_id.casefold():
        raise ParamsError(f"{where}: its card says modelId {model_id!r} but models.{pr.model}.hf_id is {mp.hf_id!r}; "
                          "register the probe for the model it was trained on")
    if shape is None:
        return  # the ablate stage checks the width once the model is built
    d_model, n_layers, known = shape
    if probe.d_model != d_model:
        raise ParamsError(f"{where}: {pr.path} has d_model {probe.d_model} but models.{pr.model} has d_model {d_model} "
                          f"({known}); import a probe trained on {pr.model}'s residual stream")
    from probebench.models.load import resolve_layer

    block = resolve_layer(mp.layer, n_layers, where=f"{source}: models.{pr.model}.layer")
    checkpoint = card.get("checkpoint")
    for name, layer in (("layer", card.get("layer")),
                        ("checkpoint.layer", checkpoint.get("layer") if isinstance(checkpoint, dict) else None)):
        if layer is not None and layer != block:
            raise ParamsError(f"{where}: its card says {name} {layer!r} but models.{pr.model} reads block {block} "
                              f"(layer {mp.layer!r} of {n_layers}); set models.{pr.model}.layer to the probe's block or "
                              "import a probe for this block")


def _check_bundle_ids(params: Params, cards: dict[str, dict], source: str) -> None:
    """Bundle ids as emit forms them (leaderboard.entries.probe_id; an imported probe keeps its
    card's `id`, else its key) must be ids the site takes (leaderboard.schema.check_bundle_id) and
    name one probe each. A fitted probe's id holds its block, known only once its model is built,
    so ids are compared for every block."""
    from probebench.leaderboard.entries import probe_id
    from probebench.leaderboard.schema import check_bundle_id

    mark = 987654321  # stands for the block: where it lands splits an id into head and tail
    fitted: dict[str, tuple[str, str]] = {}
    for task in params.tasks:
        for slug in params.models:
            full = probe_id(params.emit.probe_id_prefix, task, slug, mark, params.probe.method, params.transfer.method)
            head, tail = full.split(str(mark))
            who = f"tasks.{task} x models.{slug}"
            check_bundle_id(full.replace(str(mark), "0"), where=f"{source}: emit.probe_id_prefix with {who}")
            if (head, tail) in fitted:
                raise ParamsError(f"{source}: {who} and {fitted[head, tail]} make the same bundle id {head}<block>{tail} "
                                  "(emit joins prefix, task and model with '-'); rename one of these keys")
            fitted[head, tail] = who
    ids: dict[str, str] = {}
    for key, card in cards.items():
        bundle_id = card.get("id") or key
        check_bundle_id(bundle_id, where=f"{source}: probes.{key} (the id in its card)")
        if bundle_id in ids:
            raise ParamsError(f"{source}: probes.{ids[bundle_id]} and probes.{key} both have bundle id {bundle_id!r}; "
                              "one id names one probe on the leaderboard: give one bundle another id and re-import it")
        ids[bundle_id] = key
        for (head, tail), who in fitted.items():
            if re.fullmatch(re.escape(head) + r"\d+" + re.escape(tail), bundle_id):
                raise ParamsError(f"{source}: probes.{key} has bundle id {bundle_id!r}, the id of the fitted probe of "
                                  f"{who}; give the bundle another id and re-import it")


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
