"""Full-size Gemma-2-2B rehearsal of the crosscoder audit on random weights (not in CI).

    python benchmarks/gemma_rehearsal.py --workdir /tmp/rehearsal [--latents 2] [--inputs 4]
    python benchmarks/gemma_rehearsal.py --tiny --workdir /tmp/rehearsal_tiny      # CI variant

Builds, in bfloat16 on CPU, a random-initialized base model from the exact Gemma-2-2B config
(transformers' Gemma2Config defaults: d_model 2304, 26 layers alternating sliding/global
attention, vocab 256000, attention and final logit soft-capping) and an "IT" copy with
perturbed MLP weights, saved with save_pretrained; a random crosscoder at the published shape
(73,728 latents, k = 100) written in each public layout (dictionary_learning BatchTopK `.pt`;
W_enc/W_dec safetensors + cfg.json without k, the ReLU/L1 layout). Then, in a scratch copy of
the project whose params.yaml is presets/gemma-2-2b-audit.yaml with only paths, device and
sizes changed (`--latents` latents x `--inputs` inputs), it runs the preset's crosscoder
stages unchanged through `dvc repro -s` one stage at a time, and prints peak RSS (GNU time's
maximum resident set size of the stage process tree's largest process) and wall time per
stage, and an extrapolation to 80 latents x 256 inputs. The tokenizer is trained here (the
real one cannot be downloaded); it only decides how many tokens an input has.

--tiny keeps the architecture (Gemma2, alternating attention, soft-capping, tied embeddings)
with small dims and a 64-latent crosscoder, so the same code path runs in seconds.
The LAST line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from probebench.prompts import SyntheticTaskSpec  # noqa: E402
from probebench.zoo.train import ZooModelSpec, build_tokenizer  # noqa: E402

PUBLISHED = {"n_latents": 73728, "k": 100, "n_selected": 80, "n_inputs": 256}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 2048, "sliding_window": 8, "query_pre_attn_scalar": 32}
STAGES = ("prompts@sentiment", "extract@gemma-2-2b", "extract@gemma-2-2b-it", "crosscoder_train@gemma-2-2b",
          "crosscoder_audit@gemma-2-2b")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_models(models_dir: Path, tiny: bool, seed: int) -> dict:
    """Random base + perturbed IT copy, both saved with the shared tokenizer; returns config facts."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = build_tokenizer(ZooModelSpec(family="gemma2", vocab_size=600),
                                [SyntheticTaskSpec("sentiment", "sentiment")])
    config = Gemma2Config(**(TINY if tiny else {}), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config._attn_implementation = "eager"  # soft-capping needs eager attention
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: an fp32 2.6B model would need 10 GB first
    try:
        model = Gemma2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(before)
    n_params = sum(p.numel() for p in model.parameters())
    for name, perturb in (("gemma-2-2b", 0.0), ("gemma-2-2b-it", 0.1)):
        with torch.no_grad():  # the "IT" copy: the same weights with 10%-of-std noise on every MLP matrix
            for pname, p in model.named_parameters():
                if perturb and ".mlp." in pname:
                    p.add_(perturb * p.float().std().to(p.dtype) * torch.randn_like(p))
        model.save_pretrained(models_dir / name)
        tokenizer.save_pretrained(models_dir / name)
    del model
    return {"d_model": config.hidden_size, "n_layers": config.num_hidden_layers, "vocab_size": config.vocab_size,
            "layer_types": sorted(set(config.layer_types)), "n_params": n_params,
            "final_logit_softcapping": config.final_logit_softcapping}


def write_crosscoders(out: Path, d_model: int, n_latents: int, k: int, seed: int) -> dict[str, Path]:
    """A random crosscoder at the given shape in both public layouts (bf16 tensors on disk)."""
    g = torch.Generator().manual_seed(seed)
    W_dec_FMD = torch.randn(n_latents, 2, d_model, generator=g, dtype=torch.float32)
    W_dec_FMD /= W_dec_FMD.norm(dim=-1, keepdim=True)
    W_dec_FMD = W_dec_FMD.to(torch.bfloat16)
    W_enc_MDF = W_dec_FMD.permute(1, 2, 0).contiguous()
    b_enc_F = torch.zeros(n_latents, dtype=torch.bfloat16)
    b_dec_MD = torch.zeros(2, d_model, dtype=torch.bfloat16)
    (out / "dictionary_learning").mkdir(parents=True, exist_ok=True)
    (out / "relu_l1").mkdir(parents=True, exist_ok=True)
    dl = out / "dictionary_learning" / "model_final.pt"
    # threshold 0: every positive pre-activation fires; cost does not depend on which latents do
    torch.save({"encoder.weight": W_enc_MDF, "encoder.bias": b_enc_F,
                "decoder.weight": W_dec_FMD.permute(1, 0, 2).contiguous(), "decoder.bias": b_dec_MD,
                "k": torch.tensor(k), "threshold": torch.tensor(0.0)}, dl)
    save_file({"W_enc": W_enc_MDF, "W_dec": W_dec_FMD, "b_enc": b_enc_F, "b_dec": b_dec_MD},
              str(out / "relu_l1" / "crosscoder.safetensors"))
    (out / "relu_l1" / "cfg.json").write_text(json.dumps(
        {"d_in": d_model, "dict_size": n_latents, "dec_init_norm": 0.08, "l1_coeff": 2.0, "enc_dtype": "bf16",
         "normalisation_factor": [1.0, 1.0]}))
    return {"dictionary_learning": dl, "relu_l1": out / "relu_l1"}


def make_project(project: Path, models_dir: Path, n_latents: int, k: int, latents: int, inputs: int,
                 tiny: bool) -> dict:
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    for item in ("dvc.yaml", "stages", "src", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / item)
    shutil.rmtree(project / "src" / "probebench.egg-info", ignore_errors=True)
    params = yaml.safe_load((ROOT / "presets" / "gemma-2-2b-audit.yaml").read_text())
    # only paths, device and sizes change; the stages and every other key are the preset's
    params["tasks"] = {"sentiment": {**params["tasks"]["sentiment"], "n_train": 4 * inputs, "n_test": inputs}}
    params["zoo"]["threads"] = os.cpu_count() or 1
    for key in ("gemma-2-2b", "gemma-2-2b-it"):
        params["models"][key].update(path=str(models_dir / key), device="cpu", dtype="bfloat16")
        if tiny:  # layer 13 of 26 is the middle; the tiny model has 4 blocks
            params["models"][key]["layer"] = 0.5
    params["crosscoders"]["gemma-2-2b"].update(top_k=latents, control_latents=1, n_latents=n_latents, k=k)
    params["bootstrap"]["n_resamples"] = 50
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=project, check=True)
    (project / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n    no_scm = True\n")
    return params


def run_stage(project: Path, stage: str) -> dict:
    """One `dvc repro -s` under GNU time: wall seconds, peak RSS (GB) of the largest process."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(project / "src")}
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB=%M", str(Path(sys.executable).parent / "dvc"), "repro", "-s", stage]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, env=env, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    rss = re.findall(r"MAXRSS_KB=(\d+)", proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"stage": stage, "wall_s": round(wall, 1), "peak_rss_gb": round(int(rss[-1]) / 2**20, 2) if rss else None}


def extrapolate(audit_s: float, latents: int, inputs: int, n_params: int, tokens_per_input: float) -> dict:
    """80 latents x 256 inputs: CPU by linear scaling of the audit stage (its cost is per latent x
    input edit pass), GPU from FLOPs: 2 * params * tokens per forward, both models, one clean +
    one edited suffix pass per (latent, input), at an assumed 100 TFLOP/s sustained bf16 (H100-class,
    small batches)."""
    scale = (PUBLISHED["n_selected"] * PUBLISHED["n_inputs"]) / (latents * inputs)
    flops = 2 * n_params * tokens_per_input * 2 * (PUBLISHED["n_selected"] + 1) * PUBLISHED["n_inputs"]
    return {"cpu_audit_s_linear": round(audit_s * scale, 0), "gpu_flops": flops, "gpu_s_at_100_tflops": round(flops / 1e14, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="scratch directory (models ~11 GB at full size)")
    ap.add_argument("--tiny", action="store_true", help="same architecture, small dims (CI)")
    ap.add_argument("--latents", type=int, default=2, help="latents audited")
    ap.add_argument("--inputs", type=int, default=4, help="audit inputs (test prompts)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_latents, k = (64, 8) if args.tiny else (PUBLISHED["n_latents"], PUBLISHED["k"])
    out: dict = {"tiny": args.tiny, "latents": args.latents, "inputs": args.inputs, "n_latents": n_latents, "k": k}
    t0 = time.perf_counter()
    models_dir = args.workdir / "models"
    out["model"] = build_models(models_dir, args.tiny, args.seed)
    out["build_models_s"] = round(time.perf_counter() - t0, 1)
    log(f"models built in {out['build_models_s']} s: {out['model']}")
    t0 = time.perf_counter()
    layouts = write_crosscoders(args.workdir / "crosscoders", out["model"]["d_model"], n_latents, k, args.seed)
    out["write_crosscoders_s"] = round(time.perf_counter() - t0, 1)
    out["runs"] = {}
    project = args.workdir / "project"
    params = make_project(project, models_dir, n_latents, k, args.latents, args.inputs, args.tiny)
    for layout, ckpt in layouts.items():
        # one project: the second layout reruns only the crosscoder stages (prompts, extract cached)
        params["crosscoders"]["gemma-2-2b"]["checkpoint"] = str(ckpt)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        rows = [run_stage(project, stage) for stage in STAGES]
        for row in rows:
            log(f"{layout:20s} {row['stage']:24s} wall {row['wall_s']:8.1f} s  peak RSS {row['peak_rss_gb']} GB")
        summary = json.loads((project / "reports" / "crosscoder" / "gemma-2-2b" / "summary.json").read_text())
        prompts = json.loads((project / "data" / "prompts" / "sentiment.json").read_text())
        out["runs"][layout] = {"stages": rows, "crosscoder_kind": summary["crosscoder_kind"],
                               "n_latents_audited": summary["n_latents"], "n_inputs": summary["n_inputs"],
                               "prompts": {k_: prompts[k_] for k_ in ("n_test",) if k_ in prompts}}
    audit_s = max(r["stages"][-1]["wall_s"] for r in out["runs"].values())
    out["extrapolation_80x256"] = extrapolate(audit_s, args.latents, args.inputs, out["model"]["n_params"],
                                              tokens_per_input=24)
    log(f"extrapolation to 80 latents x 256 inputs: {out['extrapolation_80x256']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
