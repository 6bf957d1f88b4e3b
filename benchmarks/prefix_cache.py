"""The shared framing prefix run once into a KV cache, against every prompt run whole (the old
path, PROBEBENCH_PREFIX_CACHE=0): extract and ablation (the prefix engine, projection at every
position but the special tokens) on the same framed prompts, in one run, on Gemma-3-270M (framed
with 4 solved examples, as in the default run) and on a zoo model given the same framing.

    python benchmarks/prefix_cache.py [--gemma data/models/gemma3-270m] [--zoo data/zoo/llama-s]
                                      [--n 128] [--dirs 4] [--threads 2]

Prints one line per model and path, then as the LAST line one JSON object per model: seconds of
both paths for extract and for ablation, their ratios, and the largest |difference| of every
output (they must agree to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings


def run(path: str, n: int, n_dirs: int, threads: int) -> dict:
    import numpy as np
    import torch

    from probebench.models.ablate import AblationSpec, ablation_effects
    from probebench.models.extract import extract
    from probebench.models.load import decoder_blocks, load_model, resolve_layer
    from probebench.prompts import SyntheticTaskSpec, build_synthetic, few_shot_prefix

    warnings.simplefilter("ignore", FutureWarning)
    torch.set_num_threads(threads)
    model, tok = load_model(path)
    layer = resolve_layer(0.5, len(decoder_blocks(model)))
    df = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=64, n_test=n))
    prefix = few_shot_prefix(df, (df.split == "train").to_numpy(), k=4)
    test = df[df.split == "test"].reset_index(drop=True)
    d = model.config.get_text_config().hidden_size
    dirs = np.random.default_rng(0).normal(size=(n_dirs, d))
    out, results = {}, {}
    for flag, name in (("0", "whole"), ("1", "cached")):
        os.environ["PROBEBENCH_PREFIX_CACHE"] = flag
        t0 = time.perf_counter()
        ext = extract(model, tok, test, layer=layer, batch_size=64, prefix=prefix)
        t1 = time.perf_counter()
        abl = ablation_effects(model, tok, test, layer=layer, dirs_KD=dirs, spec=AblationSpec(), batch_size=64,
                               prefix=prefix)
        t2 = time.perf_counter()
        results[name] = {**ext, **abl}
        out[f"{name}_extract_s"], out[f"{name}_ablate_s"] = round(t1 - t0, 2), round(t2 - t1, 2)
        print(f"{path}: {name:6s} extract {t1 - t0:6.1f} s, ablation of {n_dirs} directions {t2 - t1:6.1f} s "
              f"({n} prompts)", file=sys.stderr)
    out["extract_speedup"] = round(out["whole_extract_s"] / out["cached_extract_s"], 2)
    out["ablate_speedup"] = round(out["whole_ablate_s"] / out["cached_ablate_s"], 2)
    out["max_abs_diff"] = {k: float(np.abs(results["whole"][k].astype(np.float64) - results["cached"][k]).max())
                           for k in results["whole"]}
    out["prefix_chars"], out["n"], out["dirs"] = len(prefix), n, n_dirs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", default="data/models/gemma3-270m")
    ap.add_argument("--zoo", default="data/zoo/llama-s")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--dirs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    report = {}
    for name, path in (("gemma3-270m", args.gemma), ("zoo", args.zoo)):
        if not os.path.isdir(path):
            print(f"{path}: not found (run the pipeline first: probebench run); skipped", file=sys.stderr)
            continue
        report[name] = run(path, args.n, args.dirs, args.threads)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
