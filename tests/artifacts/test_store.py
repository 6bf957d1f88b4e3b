import numpy as np

from probebench.artifacts.store import CellStore, cell_key


def test_key_depends_on_every_part_and_direction_bytes():
    u = np.array([0.6, 0.8])
    k = cell_key(direction=u, target="m", prompt_set="h", ablation={"mode": "projection"})
    assert k == cell_key(direction=u.copy(), target="m", prompt_set="h", ablation={"mode": "projection"})
    assert k != cell_key(direction=u + 1e-12, target="m", prompt_set="h", ablation={"mode": "projection"})
    assert k != cell_key(direction=u, target="m2", prompt_set="h", ablation={"mode": "projection"})
    assert k != cell_key(direction=u, target="m", prompt_set="h", ablation={"mode": "mean"})


def test_roundtrip_corruption_is_detected_and_valid_entries_are_not_overwritten(tmp_path):
    store = CellStore(tmp_path)
    entry = {"clean_margin": np.arange(4, dtype=np.float32), "ablated_margin": np.ones(4, dtype=np.float32)}
    assert store.get("k") is None
    store.put("k", entry)
    got = store.get("k")
    np.testing.assert_array_equal(got["clean_margin"], entry["clean_margin"])
    before = (tmp_path / "k.safetensors").read_bytes()
    store.put("k", {"clean_margin": np.zeros(4, dtype=np.float32), "ablated_margin": np.zeros(4, dtype=np.float32)})
    assert (tmp_path / "k.safetensors").read_bytes() == before  # a valid entry is never overwritten
    data = bytearray(before)
    data[-1] ^= 0xFF
    (tmp_path / "k.safetensors").write_bytes(bytes(data))
    fresh = CellStore(tmp_path)
    assert fresh.get("k") is None and fresh.corrupt == ["k"]
    fresh.put("k", entry)  # recomputed entry replaces the corrupt one
    np.testing.assert_array_equal(CellStore(tmp_path).get("k")["ablated_margin"], entry["ablated_margin"])
