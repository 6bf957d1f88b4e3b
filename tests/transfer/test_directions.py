"""Known answers for the label-free transfer and its nulls (DESIGN §2, Q2)."""

import numpy as np
import pytest

from probebench.transfer.plan import ModelActs, PlanError, PlanInputs, plan_target


def planted(shared: bool, seed: int = 0, d_s: int = 8, d_t: int = 10, m: int = 600, n: int = 300):
    """Source and target whose unlabelled map rows are related by a linear map A. The concept
    (label) lives along w_s in the source; in the target along A^T w_s when `shared`, else along
    a direction orthogonal to it (the target uses the concept through a different direction
    than the map predicts)."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d_s, d_t))
    w_s = rng.normal(size=d_s)
    carried = A.T @ w_s
    other = rng.normal(size=d_t)
    other -= (other @ carried) / (carried @ carried) * carried
    u_t = carried if shared else other
    hs_map = rng.normal(size=(m, d_s))
    ht_map = hs_map @ A + 0.1 * rng.normal(size=(m, d_t))
    y = (rng.random(n) < 0.5).astype(int)
    hs = rng.normal(size=(n, d_s)) + 1.5 * np.outer(2 * y - 1, w_s / np.linalg.norm(w_s))
    base_t = rng.normal(size=(n, d_s)) @ A if not shared else hs @ A
    ht = base_t + 0.1 * rng.normal(size=(n, d_t))
    if not shared:
        ht = ht + 4.0 * np.outer(2 * y - 1, u_t / np.linalg.norm(u_t))
    key = np.arange(m)
    return PlanInputs(
        models=("s", "t"), directions={"s": w_s, "t": u_t},
        acts={"s": ModelActs(hs, hs_map, key), "t": ModelActs(ht, ht_map, key)},
        test_N=np.ones(n, dtype=bool), y_N=y, share_basis=lambda a, b: False, n_null=20, n_random=3, seed=1)


def test_planted_shared_direction_beats_its_null():
    plan = plan_target("t", "task", planted(shared=True))
    info = plan.transfers["s"]
    assert info["transfer_auroc"] > 0.9 and info["transfer_auroc_null_p"] < 0.05
    assert info["cosine_transfer"] > 0.95 and info["cosine_transfer_null_p"] < 0.05
    assert info["n_null"] == 40 and info["r2_test"] > 0.5


def test_target_using_a_different_direction_is_at_null():
    plan = plan_target("t", "task", planted(shared=False))
    info = plan.transfers["s"]
    assert info["native_auroc"] > 0.95  # the target does use the concept ...
    assert abs(info["transfer_auroc"] - 0.5) < 0.1 and info["transfer_auroc_null_p"] > 0.05  # ... elsewhere
    assert abs(info["cosine_transfer"]) < 0.2


def test_plan_lists_matched_transferred_and_random_directions():
    plan = plan_target("t", "task", planted(shared=True))
    assert [j.kind for j in plan.jobs] == ["matched", "transferred", "random", "random", "random"]
    assert [j.source for j in plan.jobs][:2] == ["t", "s"]
    for j in plan.jobs:
        assert abs(np.linalg.norm(j.unit_D) - 1) < 1e-12
    again = plan_target("t", "task", planted(shared=True))
    assert all(np.array_equal(a.unit_D, b.unit_D) for a, b in zip(plan.jobs, again.jobs))  # seeded


def test_unaligned_map_rows_are_refused():
    inp = planted(shared=True)
    s = inp.acts["s"]
    inp.acts["s"] = ModelActs(s.acts_ND, s.map_WD, s.map_key_W + 1)
    with pytest.raises(PlanError, match="not the same pieces of text"):
        plan_target("t", "task", inp)


def test_null_maps_equal_refitting_with_the_real_maps_strength():
    """The closed-form null carry is exactly what DirectionTransfer fits with that alpha."""
    from probebench.transfer.maps import DirectionTransfer, carry, null_directions

    rng = np.random.default_rng(3)
    hs, ht, w = rng.normal(size=(300, 6)), rng.normal(size=(300, 9)), rng.normal(size=6)
    for method in ("activation_ridge", "score_ridge"):
        ref = DirectionTransfer(method=method, alpha=2.5).fit(hs, ht, w).direction_
        np.testing.assert_allclose(carry(hs - hs.mean(0), ht - ht.mean(0), w, method=method, alpha=2.5), ref,
                                   rtol=1e-8, atol=1e-10)
        perm = np.random.default_rng(7).permutation(300)
        shuffled = DirectionTransfer(method=method, alpha=2.5).fit(hs[perm], ht, w).direction_
        nulls = null_directions(hs, ht, w, method=method, alpha=2.5, n_null=1, seed=0)
        assert nulls["shuffled"].shape == (1, 9) and np.isfinite(nulls["noise"]).all()
        assert abs(np.corrcoef(shuffled, ref)[0, 1]) < 0.99  # a shuffled pairing is a different map


def test_every_ablated_direction_avoids_the_targets_massive_dims():
    """A planted massive dimension (every prompt ~ 5000 there, as in Gemma-3-270M): the target's
    own probe, the transferred direction and the random nulls are all ablated with no component
    on it; the share removed is recorded; the fitted directions' AUROC and cosine are untouched;
    with massive_factor 0 every direction is ablated whole."""
    import dataclasses

    inp = planted(shared=True)
    t = inp.acts["t"]
    ht = t.acts_ND.copy()
    ht[:, 3] += 5000.0
    u_t = inp.directions["t"].copy()
    u_t[3] = 0.0
    u_t[3] = np.linalg.norm(u_t)  # half of the probe's squared norm on the massive dim
    inp = dataclasses.replace(inp, directions={**inp.directions, "t": u_t}, mean_rows_N=np.ones(len(ht), dtype=bool),
                              acts={**inp.acts, "t": ModelActs(ht, t.map_WD, t.map_key_W)})
    plan = plan_target("t", "task", inp)
    assert plan.massive_dims == [3]
    for j in plan.jobs:
        assert j.unit_D[3] == 0.0 and abs(np.linalg.norm(j.unit_D) - 1) < 1e-12
    kept = u_t.copy()
    kept[3] = 0.0
    np.testing.assert_allclose(plan.jobs[0].unit_D, kept / np.linalg.norm(kept), atol=1e-12)
    assert abs(plan.transfers["t"]["massive_share"] - 0.5) < 1e-12
    assert 0.0 < plan.transfers["s"]["massive_share"] < 1.0
    whole = plan_target("t", "task", dataclasses.replace(inp, massive_factor=0.0))
    assert whole.massive_dims == [] and whole.jobs[0].unit_D[3] != 0.0
    assert whole.transfers["t"]["massive_share"] == 0.0
    assert whole.transfers["s"]["transfer_auroc"] == plan.transfers["s"]["transfer_auroc"]  # measured unedited
    only = np.zeros_like(u_t)
    only[3] = 1.0
    with pytest.raises(PlanError, match="entirely in the massive dimensions .*massive_factor: 0"):
        plan_target("t", "task", dataclasses.replace(inp, directions={**inp.directions, "t": only}))
