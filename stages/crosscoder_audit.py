"""DVC stage crosscoder_audit@<key> (one per key of `crosscoders`): per shared latent, ablate f_j(x) d_j^m at the readout token in both
models; CE_j under the published KL protocol and our token-margin protocol, each over all inputs
and over firing inputs only, with bootstrap CIs; the cosine-vs-CE summary, a table and a scatter.

A trained crosscoder is audited only if its controls pass: control (a) on the (base, base)
crosscoder, control (b) (base vs a copy that mean-ablates a known subspace downstream of the
layer, read through the same (base, base) crosscoder: only the latents reading that subspace may
lose CE) and the independent-vs-shared-init convergence recorded by crosscoder_train; else a
one-line error names the fix and nothing is written."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from _common import console, run

from probebench.crosscoder.audit import (
    AuditError,
    audit_inputs,
    audit_summary,
    audit_table,
    ce_statistics,
    latent_effects,
    load_pair,
    numeric_metrics,
    paired_activations,
    readout_activations,
    select_latents,
)
from probebench.crosscoder.controls import identical_pair_control, planted_change_control, sign_reversal_control
from probebench.crosscoder import load_crosscoder
from probebench.crosscoder.paths import audit_metrics_path, crosscoder_dir, report_dir, train_metrics_path
from probebench.crosscoder.stats import pair_drift
from probebench.artifacts.io import atomic_write_text, read_json, write_figure, write_json
from probebench.params.schema import Params, CrosscoderParams


@contextlib.contextmanager
def phase(key: str, what: str):
    """Say how long a part of the audit took (on stderr only: timings are no result)."""
    start = time.perf_counter()
    console.print(f"crosscoder_audit@{key}: {what} ...")
    yield
    console.print(f"crosscoder_audit@{key}: {what} took {time.perf_counter() - start:.0f} s")


def controls(params: Params, key: str, train: dict, models, tokenizer, prompts, layers) -> dict:
    """Run control (a) and read the convergence record; refuse (AuditError) when either fails."""
    p = params.crosscoders[key]
    if train.get("source") != "trained":
        reason = "a loaded checkpoint: its training recipe cannot be rerun on (base, base) or from another init"
        return {"identical_pair": {"run": 0, "reason": reason}, "planted_change": {"run": 0, "reason": reason},
                "sign_reversal": {"run": 0, "reason": reason}, "convergence": {"run": 0, "reason": reason}}
    fix = (f"fix: raise crosscoders.{key}.steps (now {p.steps}) or add prompt sets to crosscoders.{key}.train_tasks "
           f"(more tokens; now {train.get('n_tokens')})")
    conv = train["convergence"]
    if not conv["passed"]:
        raise AuditError(
            f"crosscoder has not converged: median decoder cosine of the selected latents is "
            f"{conv['median_cosine_independent_init']:.3f} from independent and {conv['median_cosine_shared_init']:.3f} "
            f"from shared decoder inits (|diff| {conv['abs_difference']:.3f} > crosscoders.{key}.convergence_tolerance "
            f"{p.convergence_tolerance}); the cosines reflect the initialization; {fix}")
    cc_id = load_crosscoder(crosscoder_dir(key) / "controls" / "control_identical.safetensors")
    with phase(key, f"control (a), {p.control_latents} latents of the ({p.base}, {p.base}) crosscoder"):
        record = identical_pair_control(cc_id, models[0], tokenizer, prompts, layer=layers[0], n_latents=p.control_latents,
                                        min_value=p.control_min, n_resamples=params.bootstrap.n_resamples,
                                        seed=params.bootstrap.seed, level=params.bootstrap.ci_level)
    if not record["passed"]:
        def show(key: str) -> str:
            return "undefined" if record.get(key) is None else f"{record[key]:.3f}"

        raise AuditError(
            f"crosscoder control (a) failed: trained on ({p.base}, {p.base}), its {record['n_latents']} most frequent "
            f"latents give min cosine {show('min_decoder_cosine')}, min CE (KL) {show('min_ce_kl')}, min CE (margin) "
            f"{show('min_ce_margin')}, need >= crosscoders.{key}.control_min {p.control_min}; the audit would measure its "
            f"own under-training; {fix}")
    b = params.bootstrap
    train_texts = pd.read_parquet(Path("data/prompts") / f"{p.audit_task}.parquet").query("split == 'train'")["text"]
    if p.planted_latents == 0:
        planted = {"run": 0, "reason": f"crosscoders.{key}.planted_latents is 0"}
        return {"identical_pair": {"run": 1, **record}, "planted_change": planted, "sign_reversal": planted,
                "convergence": {"run": 1, **conv}}
    with phase(key, "control (b), a planted change of mechanism"):
        planted = planted_change_control(cc_id, models[0], tokenizer, prompts, train_texts.tolist(), layer=layers[0],
                                         threshold=p.ce_threshold, n_planted=p.planted_latents,
                                         max_frequency=p.planted_max_frequency, n_resamples=b.n_resamples,
                                         seed=b.seed, level=b.ci_level)
    if not planted["passed"]:
        raise AuditError(f"crosscoder control (b) failed: {planted_failure(planted, p, key)}")
    with phase(key, "control (c), reversed signs"):
        reversal = sign_reversal_control(cc_id, models[0], tokenizer, prompts, layer=layers[0],
                                         threshold=p.ce_threshold, n_resamples=b.n_resamples, seed=b.seed,
                                         level=b.ci_level)
    if not reversal["passed"]:
        why = reversal.get("reason") or (
            f"ce_margin stayed >= 0 for {reversal['n_planted'] - reversal['n_caught_by_ce_margin']} of the "
            f"{reversal['n_planted']} latents made to act with the opposite sign")
        raise AuditError(f"crosscoder control (c) failed: {why}; the token-margin CE would not see a reversed "
                         f"mechanism; fix: more test prompts in crosscoders.{key}.audit_task ({p.audit_task}) or "
                         f"raise crosscoders.{key}.steps")
    return {"identical_pair": {"run": 1, **record}, "planted_change": planted, "sign_reversal": reversal,
            "convergence": {"run": 1, **conv}}


def planted_failure(rec: dict, p: CrosscoderParams, key: str) -> str:
    """One line: why control (b) failed, and the fix."""
    if "reason" in rec:
        return (f"{rec['reason']} (base {p.base}, (base, base) crosscoder); fix: more test prompts in "
                f"crosscoders.{key}.audit_task ({p.audit_task}) or a larger crosscoder (crosscoders.{key}.n_latents)")
    lost = [n for n in rec["readers"] if isinstance(rec["readers"][n], dict) and not rec["readers"][n]["passed"]]
    kept = [n for n in rec["avoiders"] if isinstance(rec["avoiders"][n], dict) and not rec["avoiders"][n]["passed"]]
    parts = []
    if lost:
        parts.append(f"the {rec['n_readers']} latents that read the planted subspace kept CE >= crosscoders.{key}.ce_threshold "
                     f"{p.ce_threshold} ({', '.join(lost)}): CE does not see a planted change of mechanism")
    if kept:
        med = ", ".join(f"{n} {rec['avoiders'][n]['median']}" for n in kept)
        parts.append(f"the {rec['n_avoiders']} latents that avoid it lost CE (median {med} < {p.ce_threshold}) after a "
                     f"clean-pass change of mean KL {rec['clean_pass']['kl_mean']:.4f}: CE moves with the context, not "
                     "the mechanism")
    return ("; ".join(parts) + "; the audit's CE would not separate changed from unchanged mechanisms; fix: more test "
            f"prompts in crosscoders.{key}.audit_task ({p.audit_task}) so CE rests on more inputs, or raise "
            f"crosscoders.{key}.steps")


def scatter(table: pd.DataFrame, p, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=120, sharey=True)
    for ax, subset in zip(axes, ("", "_firing")):
        ax.scatter(table["decoder_cosine"], table[f"ce_kl{subset}"], s=14, label="CE (KL)")
        ax.scatter(table["decoder_cosine"], table[f"ce_margin{subset}"], s=14, marker="x", label="CE (token margin)")
        ax.axhline(p.ce_threshold, color="grey", lw=0.8, ls="--")
        ax.axvline(p.cos_threshold, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("decoder cosine (base vs IT)")
        ax.set_title("all inputs (published)" if not subset else "firing inputs only", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("causal equivalence CE_j")
    fig.suptitle(f"{p.base} vs {p.chat}: {len(table)} latents", fontsize=10)
    fig.tight_layout()
    write_figure(path, fig)
    plt.close(fig)


def main(params: Params, argv: list[str]) -> None:
    (key,) = argv
    p = params.crosscoders[key]
    out = report_dir(key)
    layers = [read_json(Path("data/extract") / key / "meta.json")["layer"] for key in (p.base, p.chat)]
    models, tokenizer = load_pair([params.model(p.base), params.model(p.chat)], [p.base, p.chat])
    train = read_json(train_metrics_path(key))
    cc = load_crosscoder(crosscoder_dir(key) / "crosscoder.safetensors")
    prompts = audit_inputs(pd.read_parquet(Path("data/prompts") / f"{p.audit_task}.parquet").query("split == 'test'"),
                           p.audit_position)
    checks = controls(params, key, train, models, tokenizer, prompts, layers)

    with phase(key, "readout activations"):
        acts_NMD = readout_activations(models, tokenizer, prompts, layers=layers)
    stats, latents, selection = select_latents(
        cc, acts_NMD, rel_norm_band=tuple(p.rel_norm_band), top_k=p.top_k, min_frequency=p.min_frequency,
        # a checkpoint's init is unknown; public trainers start every decoder row at one norm, i.e. spread 0
        spread_init=train.get("rel_norm_spread_init", 0.0), min_spread_gain=p.min_rel_norm_spread)
    with phase(key, f"ablating {len(latents)} latents x {len(prompts)} inputs in both models"):
        effects = latent_effects(cc, models, tokenizer, prompts, layers=layers, latents=latents,
                                 readout_acts_NMD=acts_NMD)
    b = params.bootstrap
    ce = ce_statistics(effects, n_resamples=b.n_resamples, seed=b.seed, level=b.ci_level)
    table = audit_table(stats, effects, latents, ce=ce)
    summary = audit_summary(table, cos_threshold=p.cos_threshold, ce_threshold=p.ce_threshold, ce=ce, level=b.ci_level)
    # how far the chat model moved from its base at the audit layer, every token of the audit prompts
    with phase(key, "pair drift"):
        drift = pair_drift(paired_activations(models, tokenizer, prompts["text"].tolist(), layers=layers),
                           massive_dims=train.get("excluded_dims", []))
    summary.update(n_inputs=int(len(prompts)), layer=layers, crosscoder_kind=cc.kind, selection=selection,
                   controls=checks, pair_drift=drift)
    atomic_write_text(out / "latents.csv", table.to_csv(index=False, float_format="%.6g"))
    write_json(out / "summary.json", summary)
    # DVC metrics are numbers only; the named formulae and reasons stay in reports/crosscoder/<key>/summary.json.
    write_json(audit_metrics_path(key), numeric_metrics({k: v for k, v in summary.items() if k != "layer"}))
    scatter(table, p, out / "cosine_vs_ce.png")
    outside = (f"; outside its massive dims {drift['massive_dims']}: {drift['per_token_cosine_median_outside_massive']:.3f}"
               f" / {drift['identity_r2_outside_massive']:.3f}" if "massive_dims" in drift else "")
    console.print(f"crosscoder_audit@{key}: pair {p.base} -> {p.chat}: per-token cosine (median) "
                  f"{drift['per_token_cosine_median']:.3f}, identity R^2 {drift['identity_r2']:.3f} at the audit layer "
                  f"({drift['n_tokens']} tokens){outside}")
    sign = summary["sign"]
    if "median_ce_kl" in sign:
        console.print(f"crosscoder_audit@{key} headline: median CE {sign['median_ce_kl']:.3f} (ce_kl, published, sign-blind) vs "
                      f"{sign['median_ce_margin']:.3f} (ce_margin, sign-aware); "
                      f"{sign['n_ce_kl_equivalent_ce_margin_negative']}/{summary['n_latents']} latents ce_kl calls "
                      f"equivalent act with the opposite sign (ce_margin < 0)")
    for name in ("ce_kl", "ce_kl_firing", "ce_margin", "ce_margin_firing"):
        s = summary[name]
        if "median_rho" not in s:
            console.print(f"crosscoder_audit@{key} {name}: {s.get('note')}")
            continue
        ratio = s["one_minus_median_ratio"]
        lo, hi = s.get("median_rho_low"), s.get("median_rho_high")
        ci_text = "n/a" if lo is None else f"{lo:.3f}..{hi:.3f}"
        console.print(f"crosscoder_audit@{key} {name}: median cosine {s['median_cos']:.3f}, median CE {s['median_rho']:.3f} "
                      f"(CI {ci_text}), 1 - median(CE)/median(cos) = "
                      f"{'not meaningful' if ratio is None else f'{ratio:.1%}'}, share cos > {p.cos_threshold} and "
                      f"CE < {p.ce_threshold} = {s['share_high_cos_low_ce']:.1%}")


if __name__ == "__main__":
    run(main)
