"""The ReLU/L1 crosscoder layout (W_enc [2, d, F], W_dec [F, 2, d], b_enc, b_dec + cfg.json with
d_in, dict_size, dec_init_norm, ...; no k, no threshold), checked against plain numpy on the
same tensors; and the band-selection rule that refuses relative norms still at their init."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from probebench.crosscoder import (
    CrossCoderLoadError,
    ReLUCrossCoder,
    choose_latents,
    firing_frequency,
    latent_table,
    load_crosscoder,
    load_wdec_layout,
    rel_norm_spread,
)

D, F = 12, 40


def relu_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {
        "W_enc": (g.normal(size=(2, D, F)) / 4).astype(np.float32),
        "W_dec": (g.normal(size=(F, 2, D)) * g.uniform(0.1, 2.0, size=(F, 2, 1)) / 4).astype(np.float32),
        "b_enc": (g.normal(size=F) / 2 - 0.3).astype(np.float32),
        "b_dec": g.normal(size=(2, D)).astype(np.float32),
    }


def l1_cfg(**extra) -> dict:
    """The cfg.json an L1 crosscoder trainer saves (no k, no threshold)."""
    return {"d_in": D, "dict_size": F, "dec_init_norm": 0.08, "l1_coeff": 2.0, "lr": 5e-5, "seed": 49,
            "enc_dtype": "fp32", "hook_point": "blocks.13.hook_resid_post", "model_name": "gemma-2-2b", **extra}


def write(tmp_path, arrays: dict, cfg: dict, fmt: str = "safetensors"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    state = {k: torch.tensor(v) for k, v in arrays.items()}
    if fmt == "safetensors":
        save_file(state, str(tmp_path / "crosscoder.safetensors"))
    else:
        torch.save(state, str(tmp_path / "model_final.pt"))
    return tmp_path


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_l1_layout_loads_as_relu_and_matches_numpy_with_multiplied_scale(tmp_path, fmt):
    a = relu_arrays()
    s = np.array([0.37, 2.9])  # normalisation_factor: the trainer fed the crosscoder raw * s
    cc = load_crosscoder(write(tmp_path, a, l1_cfg(normalisation_factor=s.tolist()), fmt), d_model=D)
    assert isinstance(cc, ReLUCrossCoder) and cc.kind == "relu" and not cc.training

    x_BMD = np.random.default_rng(1).normal(size=(50, 2, D)) * np.array([3.0, 0.4])[None, :, None]
    # plain numpy, straight from the convention: encode raw * s, decode, divide by s
    pre = np.einsum("bmd,mdf->bf", x_BMD * s[None, :, None], a["W_enc"].astype(np.float64)) + a["b_enc"]
    f_ref = np.maximum(pre, 0.0)
    x_hat_ref = (np.einsum("bf,fmd->bmd", f_ref, a["W_dec"].astype(np.float64)) + a["b_dec"]) / s[None, :, None]
    assert 0.1 < (f_ref > 0).mean() < 0.9  # the ReLU bites
    with torch.no_grad():
        f = cc.encode(torch.tensor(x_BMD, dtype=torch.float32))
        np.testing.assert_allclose(f.numpy(), f_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(f.numpy() > 0, f_ref > 0)
        np.testing.assert_allclose(cc.decode(f).numpy(), x_hat_ref, rtol=1e-4, atol=1e-4)
    # what an ablation removes from the RAW residual per unit latent: W_dec / s
    np.testing.assert_allclose(cc.decoder_vectors(raw=True).numpy(), a["W_dec"] / s[None, :, None], rtol=1e-5)
    d0, d1 = a["W_dec"][:, 0].astype(np.float64), a["W_dec"][:, 1].astype(np.float64)
    n0, n1 = np.linalg.norm(d0, axis=1), np.linalg.norm(d1, axis=1)
    np.testing.assert_allclose(cc.decoder_cosine().numpy(), (d0 * d1).sum(1) / (n0 * n1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cc.relative_norm().numpy(), n1 / (n0 + n1), rtol=1e-5)
    freq = firing_frequency(cc, torch.tensor(x_BMD, dtype=torch.float32))
    np.testing.assert_allclose(freq, (f_ref > 0).mean(0), atol=1e-12)


def test_generic_scale_factors_follow_the_stated_convention():
    a = relu_arrays(2)
    s = [0.5, 4.0]
    state = {k: torch.tensor(v) for k, v in a.items()}
    divide = load_wdec_layout(state, l1_cfg(scale_factors=s))
    multiply = load_wdec_layout(state, l1_cfg(scale_factors=s, scale_factor_convention="multiply"))
    unscaled = load_wdec_layout(state, l1_cfg())
    np.testing.assert_allclose(divide.input_scale_M.numpy(), s)
    np.testing.assert_allclose(multiply.input_scale_M.numpy(), 1 / np.array(s), rtol=1e-6)
    np.testing.assert_allclose(unscaled.input_scale_M.numpy(), [1.0, 1.0])
    x = torch.randn(8, 2, D)
    with torch.no_grad():
        np.testing.assert_allclose(divide.encode(x).numpy(), unscaled.encode(x / torch.tensor(s)[:, None]).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_relu_round_trips_through_native_save_without_k(tmp_path):
    a = relu_arrays(3)
    cc = load_wdec_layout({k: torch.tensor(v) for k, v in a.items()}, l1_cfg(normalisation_factor=[2.0, 0.5]))
    cc.save(tmp_path / "a.safetensors")
    cc.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    back = load_crosscoder(tmp_path / "a.safetensors")
    assert isinstance(back, ReLUCrossCoder) and set(back.state_dict()) == set(cc.state_dict())
    assert "k" not in back.state_dict() and "threshold" not in back.state_dict()
    for name, t in cc.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name


@pytest.mark.parametrize("cfg, message", [
    (l1_cfg(d_in=D + 1), "'d_in'"),
    (l1_cfg(dict_size=F * 2), "'dict_size'"),
    (l1_cfg(threshold=0.1), "threshold' without a 'k'"),
    (l1_cfg(normalisation_factor=[1.0, -1.0]), "must be finite and > 0"),
    (l1_cfg(normalisation_factor=[1.0, 1.0], scale_factors=[1.0, 1.0]), "several scale-factor keys"),
    (l1_cfg(scale_factors=[1.0, 1.0], scale_factor_convention="times"), "scale_factor_convention"),
])
def test_bad_cfg_is_one_line_naming_the_key(cfg, message):
    state = {k: torch.tensor(v) for k, v in relu_arrays().items()}
    with pytest.raises(CrossCoderLoadError, match=message) as err:
        load_wdec_layout(state, cfg, source="ckpt/crosscoder.pt")
    assert "\n" not in str(err.value) and "fix" in str(err.value)


def test_with_k_the_same_layout_is_batchtopk(tmp_path):
    cc = load_crosscoder(write(tmp_path, relu_arrays(), l1_cfg(k=4, threshold=0.2)))
    assert cc.kind == "batchtopk" and int(cc.k) == 4


# ---------------------------------------------------------------------- band selection
def table_with(rel: np.ndarray) -> pd.DataFrame:
    n = len(rel)
    return pd.DataFrame({"latent": np.arange(n), "relative_norm": rel, "firing_frequency": np.linspace(0.9, 0.1, n)})


def test_band_is_refused_while_relative_norms_sit_at_their_init():
    g = np.random.default_rng(0)
    # under-trained: every firing latent within 0.43..0.56 of its 0.5 init (the numbers)
    narrow = table_with(g.uniform(0.43, 0.56, 100))
    latents, record = choose_latents(narrow, rel_norm_band=(0.3, 0.7), top_k=10, min_frequency=0.0,
                                     spread_init=0.0, min_spread_gain=0.15)
    assert not record["band_applied"] and "initialization" in record["band_refused_because"]
    assert latents == list(range(10))  # ranked by firing alone, and said so
    # trained: a tenth of the latents moved to each end; the band now selects
    rel = np.full(100, 0.5) + g.normal(0, 0.03, 100)
    rel[::10], rel[5::10] = 0.05, 0.95
    latents, record = choose_latents(table_with(rel), rel_norm_band=(0.3, 0.7), top_k=100, min_frequency=0.0,
                                     spread_init=0.0, min_spread_gain=0.15)
    assert record["band_applied"] and record["rel_norm_spread"] == pytest.approx(rel_norm_spread(rel))
    assert sorted(latents) == [i for i in range(100) if i % 10 not in (0, 5)]


def test_latent_table_of_relu_crosscoder_has_no_threshold_requirement():
    cc = load_wdec_layout({k: torch.tensor(v) for k, v in relu_arrays().items()}, l1_cfg())
    table = latent_table(cc, firing_frequency_F=firing_frequency(cc, torch.randn(30, 2, D)))
    assert table["firing_frequency"].between(0, 1).all() and len(table) == F
