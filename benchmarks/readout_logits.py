"""Time and peak memory of the clean forward pass of extract: every position's logits (the old
extract: a 262k vocabulary times every position on Gemma-3-270M) against the readout position
only (`readout_only_logits`, what extract and ablate use), on Gemma-3-270M and a zoo model, in
one run. Each mode runs in a fresh subprocess so that its peak RSS is its own.

    python benchmarks/readout_logits.py [--gemma data/models/gemma3-270m] [--zoo data/zoo/llama-s] [--n 256]

Prints a table, then as the LAST line one JSON object per model: seconds and peak RSS of both
modes, their ratios, and the largest |difference| of the readout margins (they must agree).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_mode(path: str, mode: str, n: int, threads: int) -> dict:
    import numpy as np
    import torch

    from probebench.models.extract import class_token_ids, encode_prompts, readout_logits, readout_only_logits
    from probebench.models.load import load_model
    from probebench.prompts import SyntheticTaskSpec, build_synthetic, few_shot_prefix

    torch.set_num_threads(threads)
    model, tok = load_model(path)
    df = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=64, n_test=n))
    test = df[df.split == "test"]
    prefix = few_shot_prefix(df, (df.split == "train").to_numpy(), k=4) if "gemma3" in model.config.model_type else ""
    pos, neg = class_token_ids(tok, " yes", " no")
    margins, t0 = [], time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, 64):
            rows = test.iloc[start:start + 64]
            batch = encode_prompts(tok, rows.text.tolist(), rows.anchor.tolist(), prefix=prefix)
            if mode == "full":
                logits = model(input_ids=batch.ids_BP, attention_mask=batch.mask_BP,
                               position_ids=batch.position_ids_BP).logits
                readout_BV = readout_logits(logits, batch.readout_B)
            else:
                readout_BV = readout_only_logits(model, batch)
            margins.append((readout_BV[:, pos] - readout_BV[:, neg]).float().numpy())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "margins": np.concatenate(margins).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", default="data/models/gemma3-270m")
    ap.add_argument("--zoo", default="data/zoo/llama-s")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child[0], args.child[1], args.n, args.threads)))
        return
    import numpy as np

    results = {}
    for name, path in (("gemma3-270m", args.gemma), ("zoo", args.zoo)):
        modes = {}
        for mode in ("full", "readout"):
            out = subprocess.run([sys.executable, __file__, "--child", path, mode, "--n", str(args.n),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            modes[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        diff = float(np.abs(np.array(modes["full"]["margins"]) - np.array(modes["readout"]["margins"])).max())
        results[name] = {"n": args.n, **{f"{m}_{k}": round(v[k], 2) for m, v in modes.items()
                                          for k in ("seconds", "peak_rss_mb")},
                         "speedup": round(modes["full"]["seconds"] / modes["readout"]["seconds"], 2),
                         "memory_ratio": round(modes["full"]["peak_rss_mb"] / modes["readout"]["peak_rss_mb"], 2),
                         "max_abs_margin_diff": diff}
        r = results[name]
        print(f"{name:12s} full {r['full_seconds']:7.2f} s {r['full_peak_rss_mb']:7.0f} MB | readout "
              f"{r['readout_seconds']:7.2f} s {r['readout_peak_rss_mb']:7.0f} MB | x{r['speedup']} time, "
              f"x{r['memory_ratio']} memory, margins agree to {diff:.1e}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
