"""Time K-direction projection ablation at one layer: naive hooks vs nnsight vs probebench.

    python benchmarks/ablation.py [--d-model 256 --layers 6 --directions 16 --prompts 256 --batch-size 64 --repeats 3]

Defaults run in about 4-5 minutes on one core (--threads 1); --layers 8 about 6, --d-model 512 --layers 12 ~30.

A random-init Llama (probebench's zoo config: RMSNorm, rotary, SwiGLU MLP, SDPA attention) with
a probebench-trained tokenizer, K random unit directions ablated (projection, every position,
block L = n_layers // 2 - 1 only) on the N held-out prompts of the synthetic `consistency` task,
effect read as the token margin logit(" yes") - logit(" no") at the readout token.

Methods (each also computes the clean margins, and each is timed end to end, tokenization included):
  (a) naive     for each direction, for each prompt batch: register a forward hook on
                model.model.layers[L] that projects u out of the block output, run the model,
                read the margin, remove the hook; plus one clean forward per batch.
  (b) nnsight   the same with nnsight: one `trace` per direction and prompt batch that sets
                model.model.layers[L].output to the projected value and saves the logits.
  (c) prefix    probebench `ablation_effects(engine="prefix")`: blocks 0..L once per prompt
                batch, all K directions batched through blocks L+1.. only.
  (d) hooks     probebench `ablation_effects(engine="hooks")`: all K directions batched, full
                forward (no prefix reuse); reference.
  (c1) prefix_k1  (c) with memory_budget_bytes so small that each pass carries one direction:
                shows what the direction batching itself costs or saves on this machine.
(a) and (b) pass `logits_to_keep` so they unembed only the readout token, like (c) and (d): the
comparison is about the forward passes, not about unembedding every position.

FLOP model (2 * weights touched per token, plus the attention score/value terms 4 * P * d_attn
per token over the padded length P of each batch; the unembedding only at the readout token):
  full   = one clean forward over all prompts (all blocks + 1 unembedding per prompt)
  suffix = blocks L+1.. + 1 unembedding per prompt
  floor_flops = full + K * suffix          naive_flops = (K + 1) * full
  fraction_of_floor = t_clean * (floor_flops / full_flops) / t_prefix
where t_clean is the measured time of one clean forward over all prompts (the machine's
throughput on exactly this model), so 1.0 means (c) does only the unavoidable compute.

Rounds interleave the methods (their order rotates every round) and the reported times are
medians over rounds: expect noise on a shared machine. The LAST line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

from probebench.models.ablate import AblationSpec, ablation_effects, direction_batch_size
from probebench.models.extract import class_token_ids, encode_prompts
from probebench.prompts import SyntheticTaskSpec, build_synthetic
from probebench.zoo.train import ZooModelSpec, build_tokenizer, make_config


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256, help="residual width d_model")
    ap.add_argument("--layers", type=int, default=6, help="number of decoder blocks")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default: d_model // 64, head_dim 64)")
    ap.add_argument("--d-mlp", type=int, default=None, help="MLP intermediate width (default: 4 * d_model)")
    ap.add_argument("--vocab-size", type=int, default=32000,
                    help="unembedding width (Llama-2's 32000); the tokenizer only uses its first --tokenizer-vocab rows")
    ap.add_argument("--tokenizer-vocab", type=int, default=140,
                    help="BPE vocabulary trained on the synthetic corpus (140 gives ~20-30 token prompts)")
    ap.add_argument("--layer", type=int, default=None, help="ablated block L (default: layers // 2 - 1)")
    ap.add_argument("--directions", type=int, default=16, help="K random unit directions")
    ap.add_argument("--prompts", type=int, default=256, help="N held-out prompts of the consistency task")
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per forward batch (all methods)")
    ap.add_argument("--memory-budget", type=float, default=2e9,
                    help="probebench memory_budget_bytes (sets how many directions share one pass)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per method (medians are reported)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads; 0 keeps torch's default (one per core). 1 by default: on a 2-core "
                         "machine shared with other jobs, 2 intra-op threads stall 3x or more (measured)")
    ap.add_argument("--device", default="cpu", help="torch device for the model and inputs")
    ap.add_argument("--seed", type=int, default=0, help="seed for weights and directions")
    ap.add_argument("--skip-nnsight", action="store_true", help="do not run the nnsight method (reported as null)")
    ap.add_argument("--skip-prefix-k1", action="store_true",
                    help="do not time the extra reference row: engine=prefix with one direction per pass")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="max allowed abs difference of ablated margins between methods")
    return ap.parse_args()


# ---------------------------------------------------------------------------------------------
# Model, prompts, directions
# ---------------------------------------------------------------------------------------------

def build(args):
    task = SyntheticTaskSpec("consistency", "consistency", n_train=16, n_test=args.prompts)
    heads = args.heads or max(1, args.d_model // 64)
    d_mlp = args.d_mlp or 4 * args.d_model
    spec = ZooModelSpec(family="llama", d_model=args.d_model, n_layers=args.layers, n_heads=heads, d_mlp=d_mlp,
                        vocab_size=args.tokenizer_vocab, max_positions=128, seed=args.seed)
    # Trained on both synthetic tasks' corpus, as the zoo's tokenizers are (~20-30 tokens per prompt).
    tokenizer = build_tokenizer(spec, [task, SyntheticTaskSpec("sentiment", "sentiment")])
    config = make_config(spec, tokenizer)
    config.vocab_size = max(args.vocab_size, len(tokenizer))  # rows past the tokenizer are never looked up
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).to(args.device).eval().requires_grad_(False)
    prompts = build_synthetic(task).query("split == 'test'").reset_index(drop=True)
    rng = np.random.default_rng(args.seed + 1)
    dirs = rng.normal(size=(args.directions, args.d_model))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return model, tokenizer, prompts, dirs, spec


def encode_all(tokenizer, prompts, batch_size, device):
    texts, anchors, ids = prompts["text"].tolist(), prompts["anchor"].tolist(), prompts["id"].tolist()
    return [encode_prompts(tokenizer, texts[s: s + batch_size], anchors[s: s + batch_size],
                           ids=ids[s: s + batch_size]).to(device)
            for s in range(0, len(texts), batch_size)]


def forward_kwargs(batch) -> dict:
    return {"input_ids": batch.ids_BP, "attention_mask": batch.mask_BP, "position_ids": batch.position_ids_BP,
            "logits_to_keep": batch.readout_B[:, None], "use_cache": False}


# ---------------------------------------------------------------------------------------------
# Methods. Each returns (clean_N, ablated_KN) as float32 numpy arrays.
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def run_clean(model, tokenizer, prompts, pos, neg, args) -> np.ndarray:
    """One clean forward over all prompts (the throughput reference for the FLOP floor)."""
    out = []
    for batch in encode_all(tokenizer, prompts, args.batch_size, args.device):
        logits = model(**forward_kwargs(batch)).logits[:, 0]
        out.append((logits[:, pos] - logits[:, neg]).float().cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def run_naive(model, tokenizer, prompts, units, layer, pos, neg, args):
    """(a) A full forward per direction and prompt batch, with a forward hook at block L."""
    batches = encode_all(tokenizer, prompts, args.batch_size, args.device)
    block = model.model.layers[layer]

    def margin(batch):
        logits = model(**forward_kwargs(batch)).logits[:, 0]
        return (logits[:, pos] - logits[:, neg]).float().cpu().numpy()

    clean = np.concatenate([margin(b) for b in batches])
    ablated = []
    for u in units:
        def project_out(_module, _inputs, output, u=u):
            h = output[0] if isinstance(output, tuple) else output
            h = h - (h @ u)[..., None] * u
            return (h, *output[1:]) if isinstance(output, tuple) else h

        row = []
        for batch in batches:
            handle = block.register_forward_hook(project_out)
            try:
                row.append(margin(batch))
            finally:
                handle.remove()
        ablated.append(np.concatenate(row))
    return clean, np.stack(ablated)


def make_nnsight_runner(model, layer, as_tuple: bool):
    """(b) nnsight on its own copy of the model (so its wrapping cannot slow the other methods)."""
    from nnsight import NNsight

    wrapped = NNsight(copy.deepcopy(model))

    @torch.no_grad()
    def run(tokenizer, prompts, units, pos, neg, args):
        batches = encode_all(tokenizer, prompts, args.batch_size, args.device)
        clean = []
        for batch in batches:
            with wrapped.trace(**forward_kwargs(batch)):
                logits = wrapped.output.logits.save()
            logits = logits[:, 0]
            clean.append((logits[:, pos] - logits[:, neg]).float().cpu().numpy())
        ablated = []
        for u in units:
            row = []
            for batch in batches:
                with wrapped.trace(**forward_kwargs(batch)):
                    if as_tuple:
                        out = wrapped.model.layers[layer].output
                        h = out[0]
                        wrapped.model.layers[layer].output = (h - (h @ u)[..., None] * u, *out[1:])
                    else:
                        h = wrapped.model.layers[layer].output
                        wrapped.model.layers[layer].output = h - (h @ u)[..., None] * u
                    logits = wrapped.output.logits.save()
                logits = logits[:, 0]
                row.append((logits[:, pos] - logits[:, neg]).float().cpu().numpy())
            ablated.append(np.concatenate(row))
        return np.concatenate(clean), np.stack(ablated)

    return run


def run_probebench(model, tokenizer, prompts, dirs, layer, engine, args):
    out = ablation_effects(model, tokenizer, prompts, layer=layer, dirs_KD=dirs, spec=AblationSpec(),
                           engine=engine, batch_size=args.batch_size, memory_budget_bytes=args.memory_budget)
    return out["clean_margin_N"], out["ablated_margin_KN"]


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------

def flop_model(config, batches, layer: int) -> dict:
    """Forward FLOPs over all prompts: 2 * weights per token for every matmul, 4 * P * d_attn per token
    for attention scores and values (P = padded length; SDPA computes the masked entries too)."""
    d, n_layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    d_q = config.num_attention_heads * head_dim
    d_kv = config.num_key_value_heads * head_dim
    block_weights = d * d_q + 2 * d * d_kv + d_q * d + 3 * d * config.intermediate_size
    tokens = sum(b.ids_BP.numel() for b in batches)
    n_prompts = sum(b.ids_BP.shape[0] for b in batches)
    block_flops = sum(b.ids_BP.numel() * (2 * block_weights + 4 * b.ids_BP.shape[1] * d_q) for b in batches)
    unembed_flops = n_prompts * 2 * d * config.vocab_size
    full = n_layers * block_flops + unembed_flops
    suffix = (n_layers - layer - 1) * block_flops + unembed_flops
    return {"tokens_padded": tokens, "prompts": n_prompts, "block_weights": block_weights,
            "flops_per_block": block_flops, "flops_unembed": unembed_flops, "full_flops": full,
            "suffix_flops": suffix}


# ---------------------------------------------------------------------------------------------

def block_returns_tuple(model, batch, layer: int) -> bool:
    seen = {}

    def probe(_m, _i, output):
        seen["tuple"] = isinstance(output, tuple)

    handle = model.model.layers[layer].register_forward_hook(probe)
    try:
        with torch.no_grad():
            model(**forward_kwargs(batch))
    finally:
        handle.remove()
    return seen["tuple"]


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    layer = args.layers // 2 - 1 if args.layer is None else args.layer
    if not 0 <= layer < args.layers - 1:
        raise SystemExit(f"--layer {layer}: must be in 0..{args.layers - 2} (there must be blocks after it)")

    t0 = time.perf_counter()
    model, tokenizer, prompts, dirs, spec = build(args)
    config = model.config
    pos, neg = class_token_ids(tokenizer, prompts["positive"].iloc[0], prompts["negative"].iloc[0])
    units = torch.tensor(dirs, dtype=next(model.parameters()).dtype, device=args.device)
    batches = encode_all(tokenizer, prompts, args.batch_size, args.device)
    flops = flop_model(config, batches, layer)
    as_tuple = block_returns_tuple(model, batches[0], layer)
    n_params = sum(p.numel() for p in model.parameters())
    K, N = len(dirs), len(prompts)
    lengths = [int(x) for b in batches for x in b.mask_BP.sum(1)]
    k_step = direction_batch_size(model, batches[0], K, args.memory_budget)  # what ablation_effects will use
    log(f"built in {time.perf_counter() - t0:.1f}s")

    methods: dict[str, Callable[[], tuple[np.ndarray, np.ndarray] | np.ndarray]] = {
        "clean": lambda: run_clean(model, tokenizer, prompts, pos, neg, args),
        "naive": lambda: run_naive(model, tokenizer, prompts, units, layer, pos, neg, args),
        "prefix": lambda: run_probebench(model, tokenizer, prompts, dirs, layer, "prefix", args),
        "hooks": lambda: run_probebench(model, tokenizer, prompts, dirs, layer, "hooks", args),
    }
    if not args.skip_prefix_k1:
        args_k1 = argparse.Namespace(**{**vars(args), "memory_budget": 1.0})  # budget < one direction -> 1 per pass
        methods["prefix_k1"] = lambda: run_probebench(model, tokenizer, prompts, dirs, layer, "prefix", args_k1)
    nnsight_error = None
    nnsight_version = None
    if args.skip_nnsight:
        nnsight_error = "skipped (--skip-nnsight)"
    elif importlib.util.find_spec("nnsight") is None:
        # Not a failure of nnsight: the benchmark extra is not installed. Say so, once, plainly,
        # rather than a traceback or a bare null in the JSON.
        nnsight_error = "nnsight is not installed: install the benchmark extra with pip install -e '.[bench]'"
        log(f"warning: {nnsight_error}; method (b) is not timed and speedup_vs_nnsight is null")
    else:
        try:
            import nnsight
            nnsight_version = nnsight.__version__
            nn_run = make_nnsight_runner(model, layer, as_tuple)
            # Smoke test on one small batch before timing: a failure is reported, not fatal.
            small = prompts.iloc[: min(4, N)]
            nn_run(tokenizer, small, units[:1], pos, neg, args)
            methods["nnsight"] = lambda: nn_run(tokenizer, prompts, units, pos, neg, args)
        except Exception as exc:  # noqa: BLE001 - any failure of the third-party path is reported
            nnsight_error = f"{type(exc).__name__}: {exc}"
            log("nnsight unavailable: " + nnsight_error)
            log(traceback.format_exc(limit=3))

    # Warm-up (allocator, SDPA dispatch, nnsight's first-trace cost) outside the timings; a cheap
    # one-direction call per method on one batch.
    warm = prompts.iloc[: args.batch_size]
    run_clean(model, tokenizer, warm, pos, neg, args)
    run_probebench(model, tokenizer, warm, dirs[:2], layer, "prefix", args)

    names = list(methods)
    times: dict[str, list[float]] = {m: [] for m in names}
    results: dict[str, object] = {}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t = time.perf_counter()
            results[name] = methods[name]()
            times[name].append(time.perf_counter() - t)
            log(f"round {r + 1}/{args.repeats} {name:8s} {times[name][-1]:8.2f}s")

    med = {m: statistics.median(v) for m, v in times.items()}

    # --- agreement -------------------------------------------------------------------------
    ref_clean, ref_abl = results["naive"]
    clean_only = results["clean"]
    effect = float(np.abs(ref_abl - ref_clean[None]).max())
    diffs = {"clean(plain forward) vs naive clean": float(np.abs(clean_only - ref_clean).max())}
    for m in ("nnsight", "prefix", "hooks", "prefix_k1"):
        if m in results:
            c, a = results[m]
            diffs[f"{m} vs naive: clean"] = float(np.abs(c - ref_clean).max())
            diffs[f"{m} vs naive: ablated"] = float(np.abs(a - ref_abl).max())
    c, a = results["prefix"]
    diffs["prefix vs hooks: ablated"] = float(np.abs(a - results["hooks"][1]).max())
    max_diff = max(diffs.values())
    agree = max_diff <= args.tolerance

    # --- report ----------------------------------------------------------------------------
    floor_flops = flops["full_flops"] + K * flops["suffix_flops"]
    naive_flops = (K + 1) * flops["full_flops"]
    floor_time = med["clean"] * floor_flops / flops["full_flops"]
    fraction_of_floor = floor_time / med["prefix"]
    gflops_s = flops["full_flops"] / med["clean"] / 1e9

    print(f"probebench ablation benchmark  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"nnsight {nnsight_version}  python {platform.python_version()}  threads {torch.get_num_threads()}  "
          f"device {args.device}")
    print(f"model: random-init llama d_model={args.d_model} layers={args.layers} heads={spec.n_heads} "
          f"d_mlp={spec.d_mlp} vocab={config.vocab_size} (tokenizer {len(tokenizer)}) params={n_params / 1e6:.1f}M "
          f"attn={config._attn_implementation}; block outputs a {'tuple' if as_tuple else 'tensor'}")
    print(f"ablation: projection, all positions, single layer L={layer} (resid_post), K={K} random unit directions, "
          f"N={N} prompts (consistency test split), tokens/prompt {min(lengths)}-{max(lengths)} "
          f"(mean {np.mean(lengths):.1f}), batch {args.batch_size}, {args.repeats} rounds (median)")
    print("(a) and (b) pass logits_to_keep=readout, so no method unembeds more than the readout token")
    print(f"probebench engines: {k_step} direction(s) per pass (memory_budget_bytes={args.memory_budget:.3g}), "
          f"i.e. {k_step * args.batch_size} rows per ablated forward")
    print()
    print(f"{'method':<34}{'median s':>10}{'min s':>9}{'max s':>9}{'prompt*dir/s':>14}{'vs prefix':>11}")
    labels = {"clean": "clean forward only (1 pass)", "naive": "(a) naive hook, 1 dir/forward",
              "nnsight": "(b) nnsight trace, 1 dir/forward", "prefix": f"(c) probebench prefix, {k_step} dir/pass",
              "hooks": f"(d) probebench hooks, {k_step} dir/pass", "prefix_k1": "(c1) probebench prefix, 1 dir/pass"}
    for m in ("clean", "naive", "nnsight", "prefix", "hooks", "prefix_k1"):
        if m == "prefix_k1" and m not in med:
            continue
        if m not in med:
            print(f"{labels[m]:<34}{'n/a':>10}   ({nnsight_error})")
            continue
        rate = "" if m == "clean" else f"{N * K / med[m]:14.1f}"
        print(f"{labels[m]:<34}{med[m]:10.2f}{min(times[m]):9.2f}{max(times[m]):9.2f}{rate:>14}"
              f"{med[m] / med['prefix']:10.2f}x")
    print()
    print(f"agreement of margins (max abs diff; tolerance {args.tolerance:.0e}):")
    for k, v in diffs.items():
        print(f"  {k:<40}{v:.3e}")
    print(f"  largest ablation effect |ablated - clean| (naive): {effect:.3e}  -> {'OK' if agree else 'MISMATCH'}")
    print()
    print(f"FLOPs (2*weights/token + 4*P*d_attn/token attention; unembedding at the readout only; "
          f"{flops['tokens_padded']} padded tokens):")
    print(f"  full  (1 clean forward, all prompts)   = {flops['full_flops'] / 1e9:10.2f} GFLOP")
    suffix_label = f"suffix (blocks {layer + 1}..{args.layers - 1} + unembed)"
    print(f"  {suffix_label:<38} = {flops['suffix_flops'] / 1e9:10.2f} GFLOP")
    print(f"  floor_flops = full + K*suffix          = {floor_flops / 1e9:10.2f} GFLOP")
    print(f"  naive_flops = (K+1)*full               = {naive_flops / 1e9:10.2f} GFLOP  "
          f"(max possible speedup from prefix reuse: {naive_flops / floor_flops:.2f}x)")
    print(f"  measured clean throughput              = {gflops_s:10.1f} GFLOP/s")
    print(f"  fraction_of_floor = t_clean * floor_flops/full_flops / t_prefix "
          f"= {med['clean']:.2f} * {floor_flops / flops['full_flops']:.3f} / {med['prefix']:.2f} = {fraction_of_floor:.3f}")
    if "prefix_k1" in med:
        print(f"  same for (c1), one direction per pass: {floor_time:.2f} / {med['prefix_k1']:.2f} = "
              f"{floor_time / med['prefix_k1']:.3f}")
    print(f"speedup vs naive {med['naive'] / med['prefix']:.2f}x, vs nnsight "
          + (f"{med['nnsight'] / med['prefix']:.2f}x" if "nnsight" in med else "n/a")
          + f", vs engine=hooks {med['hooks'] / med['prefix']:.2f}x")
    if not agree:
        print(f"WARNING: methods disagree by {max_diff:.3e} > {args.tolerance:.0e}")
    if "nnsight" not in med:
        print(f"WARNING: no nnsight timing: {nnsight_error}")

    summary = {
        "speedup_vs_naive": med["naive"] / med["prefix"],
        "speedup_vs_nnsight": med["nnsight"] / med["prefix"] if "nnsight" in med else None,
        "speedup_vs_nnsight_missing_because": None if "nnsight" in med else nnsight_error,
        "speedup_vs_hooks_engine": med["hooks"] / med["prefix"],
        "fraction_of_floor": fraction_of_floor,
        "fraction_of_floor_prefix_k1": floor_time / med["prefix_k1"] if "prefix_k1" in med else None,
        "speedup_vs_naive_prefix_k1": med["naive"] / med["prefix_k1"] if "prefix_k1" in med else None,
        "floor_time_s": floor_time,
        "floor_speedup_bound": naive_flops / floor_flops,
        "times_s": {m: med[m] for m in med},
        "times_all_s": times,
        "prompt_dirs_per_s": {m: N * K / med[m] for m in med if m != "clean"},
        "max_abs_diff": max_diff,
        "max_abs_diffs": diffs,
        "max_ablation_effect": effect,
        "agree": agree,
        "flops": {**flops, "floor_flops": floor_flops, "naive_flops": naive_flops},
        "clean_gflops_per_s": gflops_s,
        "shape": {"family": "llama", "d_model": args.d_model, "layers": args.layers, "heads": spec.n_heads,
                  "d_mlp": spec.d_mlp, "vocab_size": config.vocab_size, "tokenizer_vocab": len(tokenizer),
                  "params": n_params, "layer": layer, "directions": K, "prompts": N, "batch_size": args.batch_size,
                  "directions_per_pass": k_step, "memory_budget_bytes": args.memory_budget,
                  "tokens_per_prompt_mean": float(np.mean(lengths)), "tokens_per_prompt_max": max(lengths)},
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "nnsight_error": nnsight_error,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "nnsight": nnsight_version},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
