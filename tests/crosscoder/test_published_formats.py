"""Every published dictionary_learning crosscoder save format loads, and gives the codes and
reconstructions of the published forward pass.

Key lists follow dictionary_learning's `dictionary.py` (saprmarks/dictionary_learning and the
science-of-finetuning fork): CrossCoderEncoder.weight [L, D, F] / .bias [F],
CrossCoderDecoder.weight [L, F, D] / .bias [L, D]; BatchTopKCrossCoder adds buffers k and
threshold; from May 2025 CrossCoder adds code_normalization_id (CodeNormalization enum,
auto(): CROSSCODER=1, SAE=2, MIXED=3, NONE=4, DECOUPLED=5); from June 2025 NormalizableMixin
adds target_rms, activation_mean [L, D], activation_std [L, D] (NaN when unused) and
activation_global_scale [L]. The reference forward below re-implements that published code
in float64; it does not use probebench's model classes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from probebench.crosscoder import BatchTopKCrossCoder, ReLUCrossCoder, load_crosscoder
from probebench.crosscoder.loading import CrossCoderLoadError, load_dictionary_learning_state

L, D, F, K, B = 2, 8, 24, 3, 64
ENC_TOL = 2e-6
DEC_TOL = 2e-6
RESULTS: dict[str, tuple[float, float]] = {}


# ---------------------------------------------------------------------- published state dicts
def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(L, D, F, generator=g) / math.sqrt(D),
        "encoder.bias": torch.randn(F, generator=g) * 0.1,
        "decoder.weight": torch.randn(L, F, D, generator=g) / math.sqrt(F),
        "decoder.bias": torch.randn(L, D, generator=g) * 0.1,
    }


def batchtopk(seed: int = 0, threshold: float = 0.05) -> dict[str, torch.Tensor]:
    return {**weights(seed), "k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold)}


def unused_normalizer(target_rms: float = 1.0) -> dict[str, torch.Tensor]:
    """NormalizableMixin buffers as saved when no normalizer was given."""
    return {"target_rms": torch.tensor(target_rms), "activation_mean": torch.full((L, D), float("nan")),
            "activation_std": torch.full((L, D), float("nan")), "activation_global_scale": torch.ones(L)}


def finite_normalizer(seed: int = 1, target_rms: float | None = None, with_scale: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(L, D, generator=g) * 0.5
    std = torch.rand(L, D, generator=g) + 0.5
    rms = float(std.pow(2).sum(-1).sqrt().mean()) if target_rms is None else target_rms
    out = {"target_rms": torch.tensor(rms), "activation_mean": mean, "activation_std": std}
    if with_scale:
        out["activation_global_scale"] = rms / torch.sqrt(std.pow(2).sum(-1) + 1e-8)
    return out


# ---------------------------------------------------------------------- published forward (float64)
def ref_normalizer(state):
    mean, std = state.get("activation_mean"), state.get("activation_std")
    if mean is None or std is None or torch.isnan(mean).any() or torch.isnan(std).any():
        return None
    if "activation_global_scale" in state:
        gs = state["activation_global_scale"].double()
    else:
        gs = float(state["target_rms"]) / torch.sqrt(std.double().pow(2).sum(-1) + 1e-8)
    return mean.double(), gs


def ref_encode(state, x, *, use_threshold=True):
    """CrossCoder.encode / BatchTopKCrossCoder.encode (CROSSCODER code normalization)."""
    x = x.double()
    norm = ref_normalizer(state)
    if norm is not None:  # NormalizableMixin.normalize_activations, keep_relative_variance=True
        mean, gs = norm
        x = (x - mean) * gs.unsqueeze(0).unsqueeze(-1)
    W, b = state["encoder.weight"].double(), state["encoder.bias"].double()
    f = torch.relu(torch.einsum("bld, ldf -> blf", x, W).sum(dim=1) + b)
    if "k" not in state:
        return f
    scaled = f * state["decoder.weight"].double().norm(dim=2).sum(dim=0, keepdim=True)
    if use_threshold:
        return f * (scaled > float(state["threshold"]))
    idx = scaled.flatten().topk(int(state["k"]) * x.shape[0], sorted=False).indices
    return torch.zeros_like(scaled.flatten()).scatter_(-1, idx, f.flatten()[idx]).reshape(f.shape)


def ref_decode(state, f):
    x = torch.einsum("bf, lfd -> bld", f.double(), state["decoder.weight"].double()) + state["decoder.bias"].double()
    norm = ref_normalizer(state)
    if norm is not None:  # denormalize_activations
        mean, gs = norm
        x = x / (gs.unsqueeze(0).unsqueeze(-1) + 1e-8) + mean
    return x


def acts(seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, D, generator=g) * 1.5 + 0.3


def compare(name, cc, state, *, use_threshold=True) -> tuple[float, float]:
    x = acts()
    with torch.no_grad():
        f = cc.encode(x, use_threshold=use_threshold) if isinstance(cc, BatchTopKCrossCoder) else cc.encode(x)
        ref_f = ref_encode(state, x, use_threshold=use_threshold)
        assert int((ref_f > 0).sum()) > 0, "the test must exercise active latents"
        enc_err = float((f.double() - ref_f).abs().max())
        dec_err = float((cc.decode(ref_f.float()).double() - ref_decode(state, ref_f)).abs().max())
    RESULTS[name] = (enc_err, dec_err)
    assert enc_err <= ENC_TOL and dec_err <= DEC_TOL, (name, enc_err, dec_err)
    return enc_err, dec_err


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "fix" in msg, msg
    return msg


# ---------------------------------------------------------------------- formats that load by default
def test_l1_crosscoder_loads_as_relu(tmp_path):
    """The L1 CrossCoder (README's Gemma-2-2B L13): four keys, no k, no threshold."""
    state = weights()
    path = tmp_path / "model.pt"
    torch.save(state, path)
    cc = load_crosscoder(path)
    assert isinstance(cc, ReLUCrossCoder)
    compare("L1 CrossCoder .pt (4 keys)", cc, state)


def test_l1_crosscoder_hub_folder(tmp_path):
    state = weights()
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"activation_dim": D, "dict_size": F, "num_layers": L, "dict_class": "CrossCoder"}))
    cc = load_crosscoder(tmp_path, d_model=D)
    assert isinstance(cc, ReLUCrossCoder)
    compare("L1 CrossCoder hub folder", cc, state)


def test_batchtopk_may_2025_code_normalization_id(tmp_path):
    state = {**batchtopk(), "code_normalization_id": torch.tensor(1)}
    path = tmp_path / "ae.pt"
    torch.save(state, path)
    cc = load_crosscoder(path)
    assert isinstance(cc, BatchTopKCrossCoder) and int(cc.k) == K
    compare("BatchTopK May 2025 (+code_normalization_id=1), threshold", cc, state)
    compare("BatchTopK May 2025, batch top-k", cc, state, use_threshold=False)


def test_batchtopk_june_2025_nan_normalizer_is_none():
    state = {**batchtopk(), "code_normalization_id": torch.tensor(1), **unused_normalizer()}
    cc = load_dictionary_learning_state(state)
    assert torch.equal(cc.input_scale_M, torch.ones(L))
    compare("BatchTopK June 2025, NaN normalizer", cc, state)


@pytest.mark.parametrize("with_scale", [True, False])
def test_batchtopk_june_2025_finite_normalizer_is_folded(with_scale):
    state = {**batchtopk(threshold=0.02), "code_normalization_id": torch.tensor(1), **finite_normalizer(with_scale=with_scale)}
    cc = load_dictionary_learning_state(state)
    assert not torch.allclose(cc.input_scale_M, torch.ones(L))
    compare(f"BatchTopK June 2025, finite normalizer{'' if with_scale else ' (no global_scale buffer)'}", cc, state)
    # strict=False gives the same model, not a silently different one
    loose = load_dictionary_learning_state(state, strict=False)
    for (n1, t1), (n2, t2) in zip(cc.state_dict().items(), loose.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)


def test_relu_crosscoder_with_finite_normalizer():
    state = {**weights(2), "code_normalization_id": torch.tensor(1), **finite_normalizer(3)}
    cc = load_dictionary_learning_state(state)
    assert isinstance(cc, ReLUCrossCoder)
    compare("CrossCoder (L1) June 2025, finite normalizer", cc, state)


def test_batchtopk_hub_folder_with_dict_class(tmp_path):
    state = {**batchtopk(), "code_normalization_id": torch.tensor(1), **unused_normalizer()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"activation_dim": D, "dict_size": F, "num_layers": L, "k": K, "norm_init_scale": 1.0,
         "code_normalization": "CROSSCODER", "dict_class": "BatchTopKCrossCoder"}))
    cc = load_crosscoder(tmp_path)
    assert isinstance(cc, BatchTopKCrossCoder)
    compare("BatchTopK hub folder (config.json + model.safetensors)", cc, state)


def test_training_folder_prefers_model_final(tmp_path):
    final = {**batchtopk(7), "code_normalization_id": torch.tensor(1), **unused_normalizer()}
    for step, seed in ((0, 8), (1000, 9)):
        torch.save({"_orig_mod." + k: v for k, v in batchtopk(seed).items()}, tmp_path / f"checkpoint_{step}.pt")
    torch.save({"_orig_mod." + k: v for k, v in final.items()}, tmp_path / "model_final.pt")
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"dict_class": "BatchTopKCrossCoder", "k": K}}))
    cc = load_crosscoder(tmp_path)
    assert torch.equal(cc.W_enc_MDF, final["encoder.weight"])
    compare("training folder: model_final.pt among checkpoint_*.pt (_orig_mod.)", cc, final)


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("value", [0, 9])
def test_unknown_code_normalization_id_is_refused(tmp_path, value):
    path = tmp_path / "ae.pt"
    torch.save({**batchtopk(), "code_normalization_id": torch.tensor(value)}, path)
    for strict in (True, False):
        with pytest.raises(CrossCoderLoadError) as err:
            load_crosscoder(path, strict=strict)
        msg = one_line(err)
        assert str(path) in msg and "'code_normalization_id'" in msg


@pytest.mark.parametrize("value,name", [(2, "SAE"), (3, "MIXED"), (4, "NONE"), (5, "DECOUPLED")])
def test_non_crosscoder_code_normalization_refused_for_batchtopk(tmp_path, value, name):
    path = tmp_path / "ae.pt"
    torch.save({**batchtopk(), "code_normalization_id": torch.tensor(value)}, path)
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path, strict=False)
    msg = one_line(err)
    assert name in msg and str(path) in msg


def test_partial_normalizer_refused():
    norm = finite_normalizer()
    norm["activation_std"][0, 0] = float("nan")
    with pytest.raises(CrossCoderLoadError) as err:
        load_dictionary_learning_state({**batchtopk(), **norm})
    assert "activation_std" in one_line(err)


def test_d_model_mismatch_is_one_line(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(weights(), path)
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path, d_model=D + 1)
    msg = one_line(err)
    assert str(path) in msg and "'encoder.weight'" in msg and f"d_model={D}" in msg


def test_hub_config_mismatch_and_unknown_dict_class(tmp_path):
    save_file(weights(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"activation_dim": D, "dict_size": F + 1, "num_layers": L}))
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(tmp_path)
    assert "'dict_size'" in one_line(err)
    (tmp_path / "config.json").write_text(json.dumps({"activation_dim": D, "dict_size": F, "dict_class": "MatryoshkaCrossCoder"}))
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(tmp_path)
    assert "MatryoshkaCrossCoder" in one_line(err)


def test_ambiguous_folder_without_final_is_refused(tmp_path):
    for step in (0, 1000):
        torch.save(batchtopk(step), tmp_path / f"checkpoint_{step}.pt")
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(tmp_path)
    assert "model_final.pt" in one_line(err)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_file_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "model_final.pt"
    path.write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    with pytest.raises(CrossCoderLoadError) as err:
        load_crosscoder(path)
    msg = one_line(err)
    assert str(path) in msg and "weights_only=False" not in msg


def test_report_errors():
    """Print the measured errors (run with -s); the asserts above enforce the tolerances."""
    for name, (enc_err, dec_err) in RESULTS.items():
        print(f"{name}: encode {enc_err:.2e}, decode {dec_err:.2e}")
