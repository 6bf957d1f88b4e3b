"""The last-token engine against the prefix engine, where only the readout token is edited: the
crosscoder audit's per-prompt edits (margins and KL) and `ablate.positions: readout` directions,
on the same prompts, in one run, on Gemma-3-270M (float64 and 4 solved examples, as in the
default run) and on the zoo's gemma2-base (the audit's pair; sliding window shorter than the
prompts).

    python benchmarks/last_token.py [--gemma data/models/gemma3-270m] [--zoo zoo/gemma2-base]
                                    [--n 128] [--edits 16] [--threads 2]

The prefix engine runs blocks L+1.. over every token of every prompt for each edit; the
last-token engine runs the readout token alone over the clean pass's KV cache. Prints one line
per model and engine, then as the LAST line one JSON object per model: seconds of both engines
for the audit's edits and for readout ablation, their ratios, and the largest |difference| of
every output (they must agree to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings


def run(path: str, dtype: str, n: int, n_edits: int, threads: int, shots: int) -> dict:
    import numpy as np
    import torch

    from probebench.models.ablate import AblationSpec, ablation_effects, readout_edit_effects
    from probebench.models.extract import extract
    from probebench.models.load import decoder_blocks, load_model, resolve_layer
    from probebench.prompts import SyntheticTaskSpec, build_synthetic, few_shot_prefix

    warnings.simplefilter("ignore", FutureWarning)
    torch.set_num_threads(threads)
    model, tok = load_model(path, dtype=dtype)
    layer = resolve_layer(0.5, len(decoder_blocks(model)))
    df = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=64, n_test=n))
    prefix = few_shot_prefix(df, (df.split == "train").to_numpy(), k=shots) if shots else ""
    test = df[df.split == "test"].reset_index(drop=True)
    d = model.config.get_text_config().hidden_size
    rng = np.random.default_rng(0)
    acts_ND = extract(model, tok, test, layer=layer, batch_size=64, prefix=prefix)["acts_ND"].astype(np.float64)
    # audit-like edits: a sparse code times a decoder vector, about a tenth of the residual's norm
    scale_N = 0.1 * np.linalg.norm(acts_ND, axis=1)
    dec_KD = rng.normal(size=(n_edits, d))
    dec_KD /= np.linalg.norm(dec_KD, axis=1, keepdims=True)
    fires_KN = rng.random((n_edits, n)) < 0.5
    edits_KND = (fires_KN * scale_N[None])[..., None] * dec_KD[:, None, :]
    dirs_KD = rng.normal(size=(n_edits, d))
    out, results = {}, {}
    for engine in ("prefix", "last_token"):
        t0 = time.perf_counter()
        audit = readout_edit_effects(model, tok, test, layer=layer, edits_KND=edits_KND, batch_size=64,
                                     engine=engine, prefix=prefix)
        t1 = time.perf_counter()
        readout = ablation_effects(model, tok, test, layer=layer, dirs_KD=dirs_KD, batch_size=64, prefix=prefix,
                                   spec=AblationSpec(positions="readout"), engine=engine)
        t2 = time.perf_counter()
        results[engine] = {**{f"audit_{k}": v for k, v in audit.items()},
                           **{f"readout_{k}": v for k, v in readout.items()}}
        out[f"{engine}_audit_s"], out[f"{engine}_readout_s"] = round(t1 - t0, 2), round(t2 - t1, 2)
        print(f"{path} ({dtype}): {engine:10s} audit edits {t1 - t0:6.1f} s, readout ablation {t2 - t1:6.1f} s "
              f"({n_edits} edits x {n} prompts)", file=sys.stderr)
    out["audit_speedup"] = round(out["prefix_audit_s"] / out["last_token_audit_s"], 2)
    out["readout_speedup"] = round(out["prefix_readout_s"] / out["last_token_readout_s"], 2)
    out["max_abs_diff"] = {k: float(np.abs(results["prefix"][k].astype(np.float64) - results["last_token"][k]).max())
                           for k in results["prefix"]}
    out["max_abs_effect"] = float(np.abs(results["prefix"]["audit_ablated_margin_KN"]
                                         - results["prefix"]["audit_clean_margin_N"][None]).max())
    out.update(n=n, edits=n_edits, dtype=dtype, layer=layer, shots=shots,
               tokens_per_prompt=float(np.mean([len(tok(prefix + t)["input_ids"]) for t in test.text])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", default="data/models/gemma3-270m")
    ap.add_argument("--zoo", default="zoo/gemma2-base")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--edits", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    report = {}
    for name, path, dtype, shots in (("gemma3-270m", args.gemma, "float64", 4), ("zoo", args.zoo, "float32", 0)):
        if not os.path.isdir(path):
            print(f"{path}: not found (run the pipeline first: probebench run); skipped", file=sys.stderr)
            continue
        report[name] = run(path, dtype, args.n, args.edits, args.threads, shots)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
