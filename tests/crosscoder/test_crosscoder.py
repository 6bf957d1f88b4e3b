"""Tests for probebench.crosscoder: BatchTopK rules, training, loaders, latent statistics.

Reference values are computed here from raw numpy arrays, never copied from the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probebench.crosscoder import (
    BatchTopKCrossCoder,
    CrossCoderError,
    CrossCoderLoadError,
    firing_frequency,
    latent_table,
    load_crosscoder,
    load_dictionary_learning_state,
    load_wdec_layout,
    select_shared_latents,
    train_crosscoder,
)
from probebench.crosscoder.training import _auxk_loss

D, F, M, K = 16, 64, 2, 4


# ---------------------------------------------------------------------- helpers
def raw_arrays(seed: int = 0, threshold: float = 0.7) -> dict[str, np.ndarray]:
    """Raw crosscoder weights as numpy arrays (the 'published' numbers)."""
    g = np.random.default_rng(seed)
    return {
        "W_enc": g.normal(size=(M, D, F)).astype(np.float32) / 4,
        "b_enc": g.normal(size=(F,)).astype(np.float32) / 10,
        # per-latent, per-model norms vary so the norm-weighted score matters
        "W_dec": (g.normal(size=(F, M, D)) * g.uniform(0.2, 2.0, size=(F, M, 1))).astype(np.float32) / 4,
        "b_dec": g.normal(size=(M, D)).astype(np.float32),
        "k": np.int64(K),
        "threshold": np.float32(threshold),
    }


def dl_state(a: dict[str, np.ndarray], prefix: str = "") -> dict[str, torch.Tensor]:
    """dictionary_learning layout: decoder.weight is [n_models, F, d]."""
    s = {
        "encoder.weight": torch.tensor(a["W_enc"]),
        "encoder.bias": torch.tensor(a["b_enc"]),
        "decoder.weight": torch.tensor(np.ascontiguousarray(a["W_dec"].transpose(1, 0, 2))),
        "decoder.bias": torch.tensor(a["b_dec"]),
        "k": torch.tensor(int(a["k"])),
        "threshold": torch.tensor(float(a["threshold"])),
    }
    return {prefix + key: v for key, v in s.items()}


def wdec_state(a: dict[str, np.ndarray], prefix: str = "") -> dict[str, torch.Tensor]:
    s = {key: torch.tensor(a[key]) for key in ("W_enc", "W_dec", "b_enc", "b_dec")}
    return {prefix + key: v for key, v in s.items()}


def numpy_encode(a: dict[str, np.ndarray], x_BMD: np.ndarray, scale_M: np.ndarray | None = None) -> np.ndarray:
    """Independent inference-rule encoder: keep pre * sum_m ||d_m|| > threshold."""
    x = x_BMD.astype(np.float64)
    if scale_M is not None:
        x = x / scale_M[None, :, None]
    pre = np.maximum(np.einsum("bmd,mdf->bf", x, a["W_enc"].astype(np.float64)) + a["b_enc"], 0.0)
    score = pre * np.linalg.norm(a["W_dec"].astype(np.float64), axis=-1).sum(-1)
    return pre * (score > float(a["threshold"]))


def numpy_decode(a: dict[str, np.ndarray], f_BF: np.ndarray, scale_M: np.ndarray | None = None) -> np.ndarray:
    out = np.einsum("bf,fmd->bmd", f_BF.astype(np.float64), a["W_dec"].astype(np.float64)) + a["b_dec"]
    return out if scale_M is None else out * scale_M[None, :, None]


def write_checkpoint(tmp: Path, state: dict[str, torch.Tensor], fmt: str, cfg: dict | None = None) -> Path:
    folder = tmp / f"ckpt_{fmt}"
    folder.mkdir(parents=True)
    if cfg is not None:
        (folder / "cfg.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        path = folder / "weights.safetensors"
        save_file({k_: v.contiguous() for k_, v in state.items()}, str(path))
    else:
        path = folder / f"weights.{fmt}"
        torch.save(state, str(path))
    return path


def planted_data(seed: int = 0, n: int = 4096, n_shared: int = 20, n_spec: int = 6, p: float = 0.08):
    """Sparse codes over a dictionary in 2 models: shared atoms (similar directions in both)
    plus base-only and IT-only atoms. Model 1 is 3x larger to exercise the input scale."""
    g = np.random.default_rng(seed)
    n_atoms = n_shared + 2 * n_spec
    dict0 = g.normal(size=(n_atoms, D))
    dict1 = g.normal(size=(n_atoms, D))
    dict1[:n_shared] = dict0[:n_shared] + 0.3 * g.normal(size=(n_shared, D))
    dict1[n_shared : n_shared + n_spec] = 0.0  # base-only atoms
    dict0[n_shared + n_spec :] = 0.0  # IT-only atoms
    codes = (g.random((n, n_atoms)) < p) * g.uniform(1.0, 3.0, size=(n, n_atoms))
    acts = np.stack([codes @ dict0, 3.0 * (codes @ dict1)], axis=1)
    return torch.tensor(acts, dtype=torch.float32)


def variance_explained(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    sse = ((x - x_hat) ** 2).sum(axis=(0, 2))
    sst = ((x - x.mean(0)) ** 2).sum(axis=(0, 2))
    return 1.0 - sse / sst


pytestmark = pytest.mark.usefixtures("single_thread")   # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def planted():
    return planted_data()


@pytest.fixture(scope="module")
def trained(planted):
    cc, metrics = train_crosscoder(
        planted, n_latents=F, k=K, steps=400, batch_size=256, lr=1e-2, seed=0, dead_after_steps=50
    )
    return cc, metrics


# ---------------------------------------------------------------------- loaders
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_both_layouts_load_to_same_representation(tmp_path, fmt, prefix):
    a = raw_arrays()
    cfg = {"k": int(a["k"]), "threshold": float(a["threshold"])}
    dl_path = write_checkpoint(tmp_path / "dl", dl_state(a, prefix), fmt)
    wd_path = write_checkpoint(tmp_path / "wd", wdec_state(a, prefix), fmt, cfg)
    cc_dl = load_crosscoder(dl_path, d_model=D)
    cc_wd = load_crosscoder(wd_path.parent, d_model=D)  # directory form for this one

    x = torch.randn(32, M, D, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        f_dl, f_wd = cc_dl.encode(x), cc_wd.encode(x)
        assert torch.equal(f_dl, f_wd)
        assert torch.equal(cc_dl.decode(f_dl), cc_wd.decode(f_wd))
    # and both agree with an independent numpy encoder/decoder on the raw arrays
    f_np = numpy_encode(a, x.numpy())
    assert (f_np != 0).sum() > 0 and (f_np == 0).sum() > 0  # the threshold actually bites
    np.testing.assert_array_equal(f_dl.numpy() != 0, f_np != 0)
    np.testing.assert_allclose(f_dl.numpy(), f_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cc_dl.decode(f_dl).detach().numpy(), numpy_decode(a, f_np), rtol=1e-4, atol=1e-4)

    d0, d1 = a["W_dec"][:, 0].astype(np.float64), a["W_dec"][:, 1].astype(np.float64)
    cos_np = (d0 * d1).sum(-1) / (np.linalg.norm(d0, axis=-1) * np.linalg.norm(d1, axis=-1))
    rel_np = np.linalg.norm(d1, axis=-1) / (np.linalg.norm(d0, axis=-1) + np.linalg.norm(d1, axis=-1))
    for cc in (cc_dl, cc_wd):
        np.testing.assert_allclose(cc.decoder_cosine().numpy(), cos_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cc.relative_norm().numpy(), rel_np, rtol=1e-5, atol=1e-6)
        assert int(cc.k) == K and float(cc.threshold) == pytest.approx(float(a["threshold"]))
        assert not cc.training


def test_state_loaders_strip_compile_prefix_directly():
    a = raw_arrays()
    plain = load_dictionary_learning_state(dl_state(a))
    compiled = load_dictionary_learning_state(dl_state(a, "_orig_mod."))
    for (n1, t1), (n2, t2) in zip(plain.state_dict().items(), compiled.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)


@pytest.mark.parametrize("key", ["scale_factors", "activation_scale_factors"])
def test_scale_factors_are_applied(key):
    a = raw_arrays()
    s = np.array([2.5, 0.4], dtype=np.float32)
    scaled = load_wdec_layout(wdec_state(a), {"k": K, "threshold": float(a["threshold"]), key: s.tolist()})
    unscaled = load_dictionary_learning_state(dl_state(a))
    assert torch.equal(scaled.input_scale_M, torch.tensor(s))
    x = torch.randn(64, M, D, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        f_scaled = scaled.encode(x)
        f_ref = unscaled.encode(x / torch.tensor(s)[:, None])
        np.testing.assert_allclose(f_scaled.numpy(), f_ref.numpy(), rtol=1e-5, atol=1e-6)
        assert (f_scaled != 0).any()
        np.testing.assert_allclose(
            scaled.decode(f_scaled).numpy(), (unscaled.decode(f_ref) * torch.tensor(s)[:, None]).numpy(), rtol=1e-5, atol=1e-5
        )
        # the scale matters: ignoring it gives a different code
        assert not torch.allclose(f_scaled, unscaled.encode(x))
    # raw decoder vectors carry the scale; the cosine does not depend on it
    np.testing.assert_allclose(scaled.decoder_vectors(raw=True).numpy(), a["W_dec"] * s[None, :, None], rtol=1e-6)
    np.testing.assert_allclose(scaled.decoder_cosine().numpy(), unscaled.decoder_cosine().numpy(), rtol=1e-6)


@pytest.mark.parametrize("convention", ["divide", "multiply"])
def test_wdec_round_trip_reproduces_raw_encode_decode(trained, planted, tmp_path, convention):
    cc, _ = trained
    assert not torch.allclose(cc.input_scale_M, torch.ones(M))  # a non-trivial scale to round-trip
    sd = cc.state_dict()
    scale = sd["input_scale_M"].double().numpy()
    factors = scale if convention == "divide" else 1.0 / scale
    cfg = {"k": int(sd["k"]), "threshold": float(sd["threshold"]), "scale_factors": factors.tolist(),
           "scale_factor_convention": convention}
    state = {"W_enc": sd["W_enc_MDF"], "W_dec": sd["W_dec_FMD"], "b_enc": sd["b_enc_F"], "b_dec": sd["b_dec_MD"]}
    path = write_checkpoint(tmp_path, state, "safetensors", cfg)
    back = load_crosscoder(path)  # cfg.json found next to the file
    x = planted[:300]
    with torch.no_grad():
        f0, f1 = cc.eval().encode(x), back.encode(x)
        np.testing.assert_allclose(f1.numpy(), f0.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(f1.numpy() != 0, f0.numpy() != 0)
        np.testing.assert_allclose(back.decode(f1).numpy(), cc.decode(f0).numpy(), rtol=1e-5, atol=1e-4)


def test_save_load_round_trip_is_exact_and_bytes_deterministic(trained, planted, tmp_path):
    cc, _ = trained
    p1, p2 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    cc.save(p1)
    cc.save(p2)
    assert p1.read_bytes() == p2.read_bytes()
    with safe_open(str(p1), framework="pt") as fh:
        assert fh.metadata() is None
        assert set(fh.keys()) == {"W_enc_MDF", "b_enc_F", "W_dec_FMD", "b_dec_MD", "k", "threshold", "input_scale_M"}
    back = load_crosscoder(p1)
    ref = cc.state_dict()
    assert set(back.state_dict()) == set(ref)
    for name, t in back.state_dict().items():
        assert t.dtype == ref[name].dtype and torch.equal(t, ref[name]), name
    with torch.no_grad():
        assert torch.equal(back.eval()(planted[:100]), cc.eval()(planted[:100]))
    back.save(tmp_path / "c.safetensors")
    assert (tmp_path / "c.safetensors").read_bytes() == p1.read_bytes()


# ---------------------------------------------------------------------- loader errors
def _message(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, f"error should be one line: {msg!r}"
    return msg


def test_missing_key_is_listed(tmp_path):
    state = dl_state(raw_arrays())
    del state["decoder.bias"], state["k"]
    path = write_checkpoint(tmp_path, state, "pt")
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path)
    msg = _message(err)
    assert "decoder.bias" in msg and "'k'" in msg and str(path) in msg and "fix" in msg


def test_d_model_mismatch_names_both_numbers(tmp_path):
    path = write_checkpoint(tmp_path, dl_state(raw_arrays()), "safetensors")
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path, d_model=2304)
    msg = _message(err)
    assert f"d_model={D}" in msg and "2304" in msg and "encoder.weight" in msg


def test_three_models_rejected(tmp_path):
    g = np.random.default_rng(3)
    state = {
        "W_enc": torch.tensor(g.normal(size=(3, D, F)), dtype=torch.float32),
        "W_dec": torch.tensor(g.normal(size=(F, 3, D)), dtype=torch.float32),
        "b_enc": torch.zeros(F),
        "b_dec": torch.zeros(3, D),
    }
    path = write_checkpoint(tmp_path, state, "pt", {"k": K})
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path)
    assert "n_models=3" in _message(err)
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path, n_models=3)
    assert "n_models=3" in _message(err)


def test_wrong_shape_names_the_key(tmp_path):
    state = wdec_state(raw_arrays())
    state["b_dec"] = torch.zeros(M, D + 1)
    path = write_checkpoint(tmp_path, state, "safetensors", {"k": K})
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path)
    msg = _message(err)
    assert "'b_dec'" in msg and str((M, D + 1)) in msg and str((M, D)) in msg


def test_wdec_without_cfg_and_bad_inputs(tmp_path):
    path = write_checkpoint(tmp_path, wdec_state(raw_arrays()), "pt")
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path)
    assert "cfg.json" in _message(err)
    with pytest.raises(CrossCoderLoadError) as err:
        load_wdec_layout(wdec_state(raw_arrays()), {"threshold": 0.1})
    assert "'k'" in _message(err)
    with pytest.raises(CrossCoderLoadError) as err:
        load_wdec_layout(wdec_state(raw_arrays()), {"k": K, "scale_factors": [1.0, 1.0], "activation_scale_factors": [1.0, 1.0]})
    assert "scale_factors" in _message(err)
    with pytest.raises(CrossCoderLoadError) as err:
        load_dictionary_learning_state({**dl_state(raw_arrays()), "activation_mean": torch.zeros(M, D)})
    assert "activation_mean" in _message(err)
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(tmp_path / "nope.safetensors")
    _message(err)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(tmp_path / "w.bin")
    assert ".bin" in _message(err)


# ---------------------------------------------------------------------- BatchTopK rules
def _positive_model(seed: int = 0) -> BatchTopKCrossCoder:
    g = torch.Generator().manual_seed(seed)
    cc = BatchTopKCrossCoder(d_model=D, n_latents=F, k=K)
    with torch.no_grad():
        cc.W_enc_MDF.copy_(torch.rand(M, D, F, generator=g))
        cc.b_enc_F.copy_(torch.rand(F, generator=g) + 0.1)
        cc.W_dec_FMD.copy_(torch.randn(F, M, D, generator=g) * torch.rand(F, M, 1, generator=g))
    return cc


def test_training_mode_keeps_exactly_k_times_batch_by_score():
    cc = _positive_model().train()
    x = torch.rand(8, M, D, generator=torch.Generator().manual_seed(1))
    f = cc.encode(x)
    assert int((f != 0).sum()) == K * 8
    # selection is by pre * sum_m ||d_m|| over the flattened batch, recomputed here
    pre = torch.relu(torch.einsum("bmd,mdf->bf", x, cc.W_enc_MDF) + cc.b_enc_F).detach()
    assert bool((pre > 0).all())
    score = pre * cc.W_dec_FMD.detach().norm(dim=-1).sum(-1)
    active = f != 0
    assert score[active].min() >= score[~active].max()
    assert torch.equal(f[active], pre[active])
    # ranking by pre alone would choose a different set (decoder norms vary per latent)
    by_pre = torch.zeros_like(active).flatten()
    by_pre[pre.flatten().topk(K * 8).indices] = True
    assert not torch.equal(by_pre.view_as(active), active)


def test_batch_topk_is_across_the_batch_not_per_row():
    cc = _positive_model().train()
    x = torch.rand(4, M, D, generator=torch.Generator().manual_seed(2))
    x[0] *= 100.0  # row 0 dominates every score
    per_row = (cc.encode(x) != 0).sum(1)
    assert int(per_row.sum()) == K * 4
    assert per_row.tolist() == [K * 4, 0, 0, 0]


def test_batch_topk_never_activates_zero_pre_activations():
    cc = _positive_model().train()
    with torch.no_grad():
        cc.b_enc_F.fill_(-1e3)
        cc.b_enc_F[:3] = 1.0  # only 3 latents can be positive, fewer than k*B = 4 * 8
    x = torch.rand(8, M, D, generator=torch.Generator().manual_seed(5))
    f = cc.encode(x)
    assert int((f != 0).sum()) == 3 * 8
    assert bool((f[:, 3:] == 0).all()) and bool((f[:, :3] > 0).all())
    # the selection mask itself (used for dead-latent counters and the threshold estimate)
    # must not count zero scores as selected
    _, score = cc._pre_and_score(x)
    assert int(cc._batch_topk_mask(score).sum()) == 3 * 8


def test_eval_mode_uses_threshold_rule_and_falls_back_when_unset():
    cc = _positive_model().eval()
    x = torch.rand(16, M, D, generator=torch.Generator().manual_seed(3))
    assert not cc.threshold_estimated
    assert int((cc.encode(x) != 0).sum()) == K * 16  # no threshold yet: BatchTopK
    with pytest.raises(CrossCoderError, match="not estimated"):
        cc.encode(x, use_threshold=True)
    pre = torch.relu(torch.einsum("bmd,mdf->bf", x, cc.W_enc_MDF) + cc.b_enc_F).detach()
    score = pre * cc.W_dec_FMD.detach().norm(dim=-1).sum(-1)
    thr = float(score.median())
    cc.threshold.fill_(thr)
    f = cc.encode(x)
    assert torch.equal(f != 0, score > thr)
    assert int((f != 0).sum()) != K * 16  # a different rule than BatchTopK here
    assert int((cc.encode(x, use_threshold=False) != 0).sum()) == K * 16
    cc.train()
    assert int((cc.encode(x) != 0).sum()) == K * 16  # training mode ignores the threshold


def test_auxk_loss_trains_only_dead_latents():
    cc = _positive_model().train()
    x = torch.rand(8, M, D, generator=torch.Generator().manual_seed(4))
    pre, score = cc._pre_and_score(x)
    f = pre * cc._batch_topk_mask(score)
    x_hat = cc._decode_normalized(f)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[[3, 10, 40]] = True
    loss = _auxk_loss(cc, x, x_hat, pre, dead, aux_k=2)
    assert float(loss.detach()) > 0
    loss.backward()
    grad_dec = cc.W_dec_FMD.grad.abs().sum(dim=(1, 2))
    grad_enc = cc.W_enc_MDF.grad.abs().sum(dim=(0, 1))
    assert bool((grad_dec[dead] > 0).any()) and bool((grad_enc[dead] > 0).any())
    assert float(grad_dec[~dead].abs().sum()) == 0.0 and float(grad_enc[~dead].abs().sum()) == 0.0
    assert cc.b_dec_MD.grad is None or float(cc.b_dec_MD.grad.abs().sum()) == 0.0
    assert float(_auxk_loss(cc, x, x_hat, pre, torch.zeros(F, dtype=torch.bool), aux_k=2)) == 0.0


# ---------------------------------------------------------------------- training
def test_training_reduces_error_and_explains_planted_data(trained, planted):
    cc, metrics = trained
    untrained, m0 = train_crosscoder(planted, n_latents=F, k=K, steps=0, batch_size=256, lr=1e-2, seed=0)
    assert m0["threshold"] == -1.0 and not untrained.threshold_estimated
    x = planted
    with torch.no_grad():
        err_before = float(((untrained.decode(untrained.encode(x, use_threshold=False)) - x) ** 2).sum(dim=(1, 2)).mean())
        err_after = float(((cc.decode(cc.encode(x, use_threshold=False)) - x) ** 2).sum(dim=(1, 2)).mean())
        x_hat = cc.eval()(x)  # threshold rule
        f = cc.encode(x)
    assert err_after < err_before / 10
    assert metrics["final_loss"] < metrics["initial_loss"] / 10
    assert cc.threshold_estimated and metrics["threshold"] == pytest.approx(float(cc.threshold))

    ve = variance_explained(x.numpy(), x_hat.numpy())
    assert (ve > 0.8).all(), ve
    np.testing.assert_allclose(metrics["variance_explained"], ve, rtol=1e-5)
    assert metrics["mean_l0"] == pytest.approx(float((f != 0).sum(1).float().mean()))
    # the estimated threshold reproduces BatchTopK's sparsity at inference
    assert 0.5 * K <= metrics["mean_l0"] <= 1.5 * K
    fires = (f != 0).any(0).numpy()
    assert metrics["dead_fraction"] == pytest.approx(float((~fires).mean()))

    # per-model normalization: mean squared norm of acts / scale is D
    scaled = x / cc.input_scale_M[:, None]
    np.testing.assert_allclose((scaled.double() ** 2).sum(-1).mean(0).numpy(), [D, D], rtol=1e-4)

    # planted base-only / IT-only atoms show up at the ends of the relative-norm axis
    freq = firing_frequency(cc, x, batch_size=1000)
    rel = cc.relative_norm().numpy()[freq > 0.01]
    assert (rel < 0.15).sum() >= 2 and (rel > 0.85).sum() >= 2
    assert ((rel > 0.3) & (rel < 0.7)).sum() >= 10


def test_initialization_and_threshold_estimate(planted):
    x = planted[:1000]
    init, _ = train_crosscoder(x, n_latents=F, k=K, steps=0, batch_size=1000, lr=1e-2, seed=3)
    # unit-norm decoder vectors per (latent, model), encoder = decoder^T, b_dec = data mean
    np.testing.assert_allclose(init.decoder_norms().numpy(), np.ones((F, M)), rtol=1e-5)
    assert torch.equal(init.W_enc_MDF, init.W_dec_FMD.permute(1, 2, 0))
    x_norm = x / init.input_scale_M[:, None]
    np.testing.assert_allclose(init.b_dec_MD.detach().numpy(), x_norm.double().mean(0).numpy(), atol=1e-5)

    # one full-batch step with beta=0: threshold = min positive score BatchTopK selected
    # at the (shared, seeded) initialization
    one, _ = train_crosscoder(x, n_latents=F, k=K, steps=1, batch_size=1000, lr=1e-2, seed=3, threshold_beta=0.0,
                              refit_decoder=False)
    with torch.no_grad():
        pre = torch.relu(torch.einsum("bmd,mdf->bf", x_norm, init.W_enc_MDF) + init.b_enc_F)
        score = pre * init.W_dec_FMD.norm(dim=-1).sum(-1)
    selected = torch.sort(score.flatten(), descending=True).values[: K * 1000]
    expected = float(selected[selected > 0].min())
    assert float(one.threshold) == pytest.approx(expected, rel=1e-5)


def test_excluded_massive_dimension_is_neither_read_nor_written(planted):
    """A planted massive dimension (mean ~4000, varying +-300 across rows, like Gemma-3-270M's) sets
    the input scale and, kept, claims latents; excluded, no decoder direction touches it, codes do
    not move when it changes, and the planted structure is learnt as without it."""
    x = planted[:2048].clone()
    wiggle = torch.linspace(-300.0, 300.0, len(x))[:, None]
    x[:, :, 0] = 4000.0 + wiggle
    kw = dict(n_latents=F, k=K, steps=200, batch_size=256, lr=1e-2, seed=0, dead_after_steps=50)
    kept, m_kept = train_crosscoder(x, **kw)
    cc, m = train_crosscoder(x, exclude_dims=[0], **kw)
    assert m["excluded_dims"] == [0] and m_kept["excluded_dims"] == []
    assert m_kept["input_scale"][0] > 10 * m["input_scale"][0]  # kept, dimension 0 sets the scale
    assert float(cc.W_dec_FMD[..., 0].abs().max()) == 0.0 and float(cc.W_enc_MDF[:, 0].abs().max()) == 0.0
    assert float(cc.b_dec_MD[:, 0].abs().max()) == 0.0
    assert float(kept.W_dec_FMD[..., 0].abs().max()) > 0.01
    moved = x.clone()
    moved[:, :, 0] = -moved[:, :, 0]
    with torch.no_grad():
        assert torch.equal(cc.encode(x), cc.encode(moved))
    # the rest of the data (where the planted atoms live) is explained as it is without the massive dim
    clean = x.clone()
    clean[:, :, 0] = 0.0
    _, m_clean = train_crosscoder(clean, **kw)
    assert min(m["variance_explained"]) > 0.8
    np.testing.assert_allclose(m["variance_explained"], m_clean["variance_explained"], atol=0.03)
    with pytest.raises(CrossCoderError, match="exclude_dims"):
        train_crosscoder(x, exclude_dims=[D], **kw)


def test_training_is_deterministic(planted):
    kw = dict(n_latents=F, k=K, steps=30, batch_size=128, lr=1e-2, seed=5, dead_after_steps=5)
    a, ma = train_crosscoder(planted[:1024], **kw)
    b, mb = train_crosscoder(planted[:1024].numpy(), **kw)
    c, _ = train_crosscoder(planted[:1024], **{**kw, "seed": 6})
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]), name
    assert ma == mb
    assert not torch.equal(a.W_dec_FMD, c.W_dec_FMD)


def test_progress_bar_runs(planted):
    cc, m = train_crosscoder(planted[:512], n_latents=F, k=K, steps=3, batch_size=128, lr=1e-3, seed=0, progress=True)
    assert m["steps"] == 3 and cc.threshold_estimated


# ---------------------------------------------------------------------- latent statistics
def test_firing_frequency_and_latent_table_match_numpy():
    a = raw_arrays(threshold=0.3)
    cc = load_dictionary_learning_state(dl_state(a))
    x = torch.randn(200, M, D, generator=torch.Generator().manual_seed(7)) * 2
    freq = firing_frequency(cc, x, batch_size=64)
    expected = (numpy_encode(a, x.numpy()) != 0).mean(0)
    assert 0 < expected.mean() < 1
    np.testing.assert_allclose(freq, expected, atol=1e-12)
    np.testing.assert_allclose(firing_frequency(cc, x.numpy(), batch_size=1000), freq, atol=1e-12)

    table = latent_table(cc, firing_frequency_F=freq)
    assert list(table.columns) == ["latent", "decoder_cosine", "relative_norm", "norm_0", "norm_1", "firing_frequency"]
    n = np.linalg.norm(a["W_dec"].astype(np.float64), axis=-1)
    np.testing.assert_allclose(table["norm_0"], n[:, 0], rtol=1e-5)
    np.testing.assert_allclose(table["norm_1"], n[:, 1], rtol=1e-5)
    np.testing.assert_allclose(table["relative_norm"], n[:, 1] / n.sum(1), rtol=1e-5)
    assert table["latent"].tolist() == list(range(F))
    assert latent_table(cc)["firing_frequency"].isna().all()


def test_select_shared_latents_by_band_and_frequency():
    table = pd.DataFrame(
        {
            "latent": [0, 1, 2, 3, 4, 5, 6, 7],
            "relative_norm": [0.50, 0.95, 0.30, 0.70, 0.10, 0.45, 0.55, np.nan],
            "firing_frequency": [0.10, 0.90, 0.20, 0.20, 0.80, 0.00, 0.05, 0.99],
        }
    )
    # in band [0.3, 0.7]: 0, 2, 3 (edges inclusive), 5, 6; 1 and 4 out; 7 NaN
    # by frequency desc, ties by index: 2 (0.2), 3 (0.2), 0 (0.1), 6 (0.05), 5 (0.0)
    assert select_shared_latents(table) == [2, 3, 0, 6, 5]
    assert select_shared_latents(table, top_k=2) == [2, 3]
    assert select_shared_latents(table, min_frequency=0.06) == [2, 3, 0]
    assert select_shared_latents(table, rel_norm_band=(0.4, 0.6)) == [0, 6, 5]
    # shuffled rows give the same answer
    assert select_shared_latents(table.sample(frac=1.0, random_state=0)) == [2, 3, 0, 6, 5]


def test_zoo_pin_crosscoder_key_round_trips_through_the_stage_check(tmp_path, monkeypatch, trained):
    """`probebench zoo pin --crosscoder KEY` pins data/crosscoder/KEY under zoo/crosscoder/KEY with
    the params crosscoder_train@KEY checks it against; an unknown key or an untrained audit is refused."""
    import yaml
    from typer.testing import CliRunner

    from probebench.artifacts.pinned import read_manifest, verify
    from probebench.cli import app
    from probebench.params.schema import load_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "tasks": {"sentiment": {"kind": "sentiment"}}, "models": {"a": {"path": "a"}, "b": {"path": "b"}},
        "crosscoders": {"pair": {"base": "a", "chat": "b", "audit_task": "sentiment"}}}))
    runner = CliRunner()
    result = runner.invoke(app, ["zoo", "pin", "--crosscoder", "nope"])
    assert result.exit_code == 2 and "--crosscoder 'nope' is not a key of crosscoders" in result.output
    result = runner.invoke(app, ["zoo", "pin", "--crosscoder", "pair"])
    assert result.exit_code == 2 and "crosscoders.pair.source=train crosscoder_train@pair" in result.output
    cc, metrics = trained
    cc.save(tmp_path / "data" / "crosscoder" / "pair" / "crosscoder.safetensors")
    cc.save(tmp_path / "data" / "crosscoder" / "pair" / "controls" / "control_identical.safetensors")
    (tmp_path / "metrics" / "crosscoder_train").mkdir(parents=True)
    (tmp_path / "metrics" / "crosscoder_train" / "pair.json").write_text(json.dumps({"source": "trained", "n_tokens": 7}))
    for m in ("a", "b"):
        (tmp_path / "data" / "extract" / m).mkdir(parents=True)
        (tmp_path / "data" / "extract" / m / "meta.json").write_text(json.dumps({"fingerprint": m * 64}))
    result = runner.invoke(app, ["zoo", "pin", "--crosscoder", "pair"])
    assert result.exit_code == 0, result.output
    entry = read_manifest("zoo")["crosscoder/pair"]
    assert sorted(entry["files"]) == ["controls/control_identical.safetensors", "crosscoder.safetensors"]
    params = load_params("params.yaml")
    fps = {"a": "a" * 64, "b": "b" * 64}
    verify("zoo/crosscoder/pair", entry, params=params.crosscoder_training("pair", fps), where="crosscoder_train@pair")
    assert entry["params"]["massive_factor"] == 20.0 and entry["metrics"] == {"source": "trained", "n_tokens": 7}
