"""DVC stage crosscoder_audit: per shared latent, ablate f_j(x) d_j^m at the readout token in both
models; CE_j under the published KL protocol and our token-margin protocol, with bootstrap CIs;
the cosine-vs-CE summary, a table and a scatter figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
from _common import console, run
from crosscoder_train import load_pair

from probebench.audit import audit_summary, audit_table, latent_effects, readout_activations
from probebench.crosscoder import BatchTopKCrossCoder, firing_frequency, latent_table, select_shared_latents
from probebench.io import atomic_write_text, write_figure, write_json
from probebench.params import Params


def main(params: Params, argv: list[str]) -> None:
    p = params.crosscoder
    models, tokenizer, layers = load_pair(params)
    cc = BatchTopKCrossCoder.from_pretrained("data/crosscoder/crosscoder.safetensors").eval()
    prompts = pd.read_parquet(Path("data/prompts") / f"{p.audit_task}.parquet").query("split == 'test'")
    prompts = prompts.reset_index(drop=True)
    # Firing frequency at the ablation site (the readout token): a latent that never fires there
    # has no effect to correlate.
    acts_NMD = readout_activations(models, tokenizer, prompts, layers=layers)
    stats = latent_table(cc, firing_frequency_F=firing_frequency(cc, torch.from_numpy(acts_NMD)))
    # A latent that never fires at the readout token has no effect there and no defined CE.
    fires = stats[stats["firing_frequency"] > 0]
    latents = select_shared_latents(fires, rel_norm_band=tuple(p.rel_norm_band), top_k=p.top_k,
                                    min_frequency=p.min_frequency)
    if not latents:
        raise ValueError("crosscoder: no latent both fires at the readout token and has a relative decoder norm "
                         "inside crosscoder.rel_norm_band; widen the band or train the crosscoder longer")
    effects = latent_effects(cc, models, tokenizer, prompts, layers=layers, latents=latents, readout_acts_NMD=acts_NMD)
    if (effects["kl_MLN"] < 0).any():
        raise ValueError("crosscoder audit: negative KL; this is a bug, please report it")
    table = audit_table(stats, effects, latents, n_resamples=params.bootstrap.n_resamples, seed=params.bootstrap.seed,
                        level=params.bootstrap.ci_level)
    summary = audit_summary(table, cos_threshold=p.cos_threshold, ce_threshold=p.ce_threshold)
    summary["n_inputs"] = int(len(prompts))
    summary["layer"] = layers
    atomic_write_text(Path("reports/crosscoder/latents.csv"), table.to_csv(index=False, float_format="%.6g"))
    write_json(Path("reports/crosscoder/summary.json"), summary)
    # DVC metrics are numbers only; the named formulae stay in reports/crosscoder/summary.json.
    write_json(Path("metrics/crosscoder.json"),
               {k: ({kk: vv for kk, vv in v.items() if isinstance(vv, (int, float))} if isinstance(v, dict) else v)
                for k, v in summary.items() if k != "layer"})
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(table["decoder_cosine"], table["ce_kl"], s=14, label="CE (KL, published protocol)")
    ax.scatter(table["decoder_cosine"], table["ce_margin"], s=14, marker="x", label="CE (token margin)")
    ax.axhline(p.ce_threshold, color="grey", lw=0.8, ls="--")
    ax.axvline(p.cos_threshold, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("decoder cosine (base vs IT)")
    ax.set_ylabel("causal equivalence CE_j")
    ax.set_title(f"{p.base} vs {p.chat}: {len(table)} shared latents")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(Path("reports/crosscoder/cosine_vs_ce.png"), fig)
    plt.close(fig)
    for protocol in ("ce_kl", "ce_margin"):
        s = summary[protocol]
        console.print(f"crosscoder {protocol}: median cosine {s['median_cos']:.3f}, median CE {s['median_rho']:.3f}, "
                      f"1 - median(CE)/median(cos) = {s['one_minus_median_ratio']:.1%}, "
                      f"share cos > {p.cos_threshold} and CE < {p.ce_threshold} = {s['share_high_cos_low_ce']:.1%}")


if __name__ == "__main__":
    run(main)
