"""Batched CPU fusion of the bistatic baselines' messages (:func:`cfisac.estimators.fusion.fuse_bistatic`) against
the literal scene-at-a-time reference (:func:`cfisac.estimators.reference.signal_processing.fuse_messages`)."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

import cfisac
from cfisac import SystemConfig
from cfisac.estimators.fusion import ROBUST_SCALE, BistaticMessages, fuse_bistatic, trf_box_lsq
from cfisac.estimators.reference.signal_processing import (
    ApMessages,
    Comb,
    Layout,
    _position_residuals,
    fuse_messages,
)
from cfisac.geometry import bistatic_geometry

CASES = Path(__file__).with_name("data") / "fusion_cases.json"  # tests/data/make_fusion_cases.py
POS_TOL = 1e-3  # m: batched vs reference positions
VEL_TOL = 1e-3  # m/s: batched vs reference velocities


def exact_messages(cfg, positions, velocities):
    """Noiseless messages of the true geometry (Eq. 7-11): aoa [B, M, Q], ranges / dopplers [B, M, Q, N]."""
    geo = bistatic_geometry(cfg, positions, velocities)
    return (geo.rx.cos_angle.clone(), geo.bistatic_range.permute(0, 2, 3, 1).clone(),
            geo.doppler.permute(0, 2, 3, 1).clone())


def permute_slots(aoa, ranges, dopplers, gen):
    """Every AP m > 0 lists its slots in a random order: the fusion has to associate them."""
    B, M, Q, N = ranges.shape
    for m in range(1, M):
        p = torch.stack([torch.randperm(Q, generator=gen) for _ in range(B)])
        aoa[:, m] = torch.gather(aoa[:, m], 1, p)
        ranges[:, m] = torch.gather(ranges[:, m], 1, p[..., None].expand(B, Q, N))
        dopplers[:, m] = torch.gather(dopplers[:, m], 1, p[..., None].expand(B, Q, N))


def noisy_messages(cfg, batch, seed, noise=0.3):
    """Messages of sampled scenes with Gaussian errors of ``noise`` resolution cells, permuted slots and one outlier
    range per scene (AP 0, slot 0, last transmit AP: 3 range cells off, a detection captured by another path)."""
    scenes = cfisac.sample_scenes(cfg, batch, seed)
    aoa, ranges, dopplers = exact_messages(cfg, scenes.positions, scenes.velocities)
    res = cfg.resolution()
    gen = torch.Generator().manual_seed(seed + 1000)
    u_res = 1.0 / (cfg.n_rx_antennas * cfg.antenna_spacing)
    kw = dict(generator=gen, dtype=torch.float64)
    aoa = (aoa + noise * u_res * torch.randn(aoa.shape, **kw)).clamp(-1.0, 1.0)
    ranges = ranges + noise * res["range_resolution_m"] * torch.randn(ranges.shape, **kw)
    dopplers = dopplers + noise * res["doppler_resolution_hz"] * torch.randn(dopplers.shape, **kw)
    permute_slots(aoa, ranges, dopplers, gen)
    ranges[:, 0, 0, -1] += 3.0 * res["range_resolution_m"]
    return scenes, BistaticMessages(aoa, ranges, dopplers)


def reference(cfg, msgs, velocity=True):
    return fuse_messages(cfg, ApMessages(msgs.aoa.numpy(), msgs.ranges.numpy(), msgs.dopplers.numpy()),
                         velocity=velocity)


def robust_cost(cfg, msgs, b, positions):
    """The fusion's robust objective of one scene's estimate ``positions`` [Q, 2] (numpy): per AP the Cauchy cost
    of its AoA and N ranges at the estimated positions, slots assigned to targets by the best permutation."""
    comb, lay = Comb.from_config(cfg), Layout(cfg)
    M, Q = msgs.aoa.shape[1:]
    total = 0.0
    for m in range(M):
        c = np.empty((Q, Q))
        for q, s in itertools.product(range(Q), range(Q)):
            r = _position_residuals(positions[q], lay, np.array([m]), msgs.aoa[b, m, s, None].numpy(),
                                    msgs.ranges[b, m, s, None].numpy(), comb)[0]
            c[q, s] = 0.5 * ROBUST_SCALE**2 * np.log1p((r / ROBUST_SCALE) ** 2).sum()
        total += min(sum(c[q, p[q]] for q in range(Q)) for p in itertools.permutations(range(Q)))
    return total


# ---------------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("preset,n_targets,batch", [("tiny", 2, 3), ("tiny", 3, 2), ("quick", 2, 3), ("quick", 3, 2)])
def test_batched_fusion_equals_the_reference_on_noisy_permuted_messages_with_an_outlier(preset, n_targets, batch):
    cfg = SystemConfig.preset(preset, n_targets=n_targets)
    scenes, msgs = noisy_messages(cfg, batch, seed=7 + n_targets)
    new, ref = fuse_bistatic(cfg, msgs), reference(cfg, msgs)
    dp = (new.positions - ref.positions).norm(dim=-1).amax(-1)
    dv = (new.velocities - ref.velocities).norm(dim=-1).amax(-1)
    same = (dp <= POS_TOL) & (dv <= VEL_TOL)
    assert int(same.sum()) >= batch - 1, f"positions off by {dp.tolist()} m, velocities by {dv.tolist()} m/s"
    for b in torch.nonzero(~same).flatten().tolist():  # where they differ, the batched fit is no worse
        c_new = robust_cost(cfg, msgs, b, new.positions[b].numpy())
        assert c_new <= robust_cost(cfg, msgs, b, ref.positions[b].numpy()) + 1e-9
    # and the reference is right on these scenes: the test compares two working estimators
    err = (ref.positions - scenes.positions).norm(dim=-1)
    assert float(err.median()) < cfg.resolution()["range_resolution_m"]


def test_batched_fusion_equals_the_reference_on_the_estimator_messages_where_they_once_differed():
    """Real MUSIC / CS messages (quick preset, 45-55 dBm) of the scenes where an LM solver with projection ended in
    other minima than scipy's trust-region-reflective fits: starts on the area's edge sliding along it, velocity
    box-edge minima, a target fitted onto a receive AP (tests/data/make_fusion_cases.py)."""
    cases = json.loads(CASES.read_text())["cases"]
    for power in sorted({c["power_dbm"] for c in cases}):
        sel = [c for c in cases if c["power_dbm"] == power]
        cfg = SystemConfig.preset("quick", power_dbm=power)
        msgs = BistaticMessages(*(torch.tensor([c[k] for c in sel], dtype=torch.float64)
                                  for k in ("aoa", "ranges", "dopplers")))
        new, ref = fuse_bistatic(cfg, msgs), reference(cfg, msgs)
        stored = torch.tensor([c["ref_positions"] for c in sel], dtype=torch.float64)
        torch.testing.assert_close(ref.positions, stored, atol=1e-6, rtol=0)  # the fixture is the reference's
        dp = (new.positions - ref.positions).norm(dim=-1).amax(-1)
        dv = (new.velocities - ref.velocities).norm(dim=-1)
        # a target fitted onto a receive AP (music50 scene 17: 1e-8 m away) has Doppler rows along the 1e-8 m vector
        # to it: 1e-7 m position differences move its velocity by ~1e-3 m/s
        on_ap = torch.cdist(ref.positions, torch.tensor(cfg.rx_positions, dtype=torch.float64)).amin(-1) < 1e-3
        dv = torch.where(on_ap, dv / 10, dv).amax(-1)
        names = [f"{c['set']} scene {c['scene']}" for c in sel]
        assert bool((dp <= POS_TOL).all()), f"positions off by {dict(zip(names, dp.tolist(), strict=True))} m"
        assert bool((dv <= VEL_TOL).all()), f"velocities off by {dict(zip(names, dv.tolist(), strict=True))} m/s"


def linear_residuals(v, a, b):
    return (a * v[..., None, :]).sum(-1) - b, a


def test_solver_matches_scipy_on_a_robust_bounded_linear_fit_with_an_active_bound():
    gen = np.random.default_rng(3)
    a = gen.standard_normal((12, 2))
    v_true = np.array([1.4, -0.3])  # outside the box [-1, 1] in x: the optimum lies on the bound
    b = a @ v_true + 0.05 * gen.standard_normal(12)
    b[[2, 7]] += np.array([6.0, -4.0])  # two gross outliers the Cauchy loss must reject
    ref = least_squares(lambda v: a @ v - b, np.zeros(2), jac=lambda v: a, bounds=(-1.0, 1.0), loss="cauchy",
                        f_scale=ROBUST_SCALE, xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100)
    lo, hi = np.full(2, -1.0), np.full(2, 1.0)
    x, cost = trf_box_lsq(linear_residuals, np.zeros((1, 2)), lo, hi, (a[None], b[None]), robust=True, max_nfev=100)
    np.testing.assert_allclose(x[0], ref.x, atol=1e-9)
    assert abs(float(x[0, 0]) - 1.0) < 1e-12  # on the bound
    assert float(cost[0]) == pytest.approx(ref.cost, abs=1e-12)


@pytest.mark.parametrize("robust", [True, False])
def test_solver_follows_scipys_trust_region_reflective_path_from_starts_on_the_box_edges(robust):
    """Random robust fits with gross outliers (several minima) started inside, near a face and near a corner of
    the box: the batched solver ends where scipy's ``least_squares`` does (an LM with projection often does not:
    from a start on an edge trf slides along it into another basin)."""
    gen = np.random.default_rng(11)
    P, R = 40, 8
    a = gen.standard_normal((P, R, 2))
    b = (a @ gen.uniform(-1.5, 1.5, (P, 2))[..., None])[..., 0] + 0.05 * gen.standard_normal((P, R))
    b[:, :3] += gen.uniform(-8.0, 8.0, (P, 3))
    lim = 1.0 - 1e-9
    starts = np.stack([gen.uniform(-lim, lim, (P, 2)), np.stack([np.full(P, lim), gen.uniform(-1, 1, P)], -1),
                       np.stack([np.full(P, -lim), np.full(P, lim)], -1)], 1)  # [P, 3, 2]
    x, cost = trf_box_lsq(linear_residuals, starts, np.full(2, -1.0), np.full(2, 1.0), (a[:, None], b[:, None]),
                          robust=robust, max_nfev=200)
    kw = dict(loss="cauchy", f_scale=ROBUST_SCALE) if robust else {}
    for p, s in itertools.product(range(P), range(3)):
        ref = least_squares(lambda v, p=p: a[p] @ v - b[p], starts[p, s], jac=lambda v, p=p: a[p], bounds=(-1, 1),
                            xtol=1e-12, ftol=1e-12, gtol=1e-12, **kw)
        np.testing.assert_allclose(x[p, s], ref.x, atol=1e-6, err_msg=f"problem {p}, start {s}")
        assert float(cost[p, s]) == pytest.approx(ref.cost, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("n_targets", [2, 3])
def test_noiseless_permuted_messages_give_the_true_positions_and_velocities(n_targets):
    cfg = SystemConfig.preset("quick", n_targets=n_targets)
    scenes = cfisac.sample_scenes(cfg, 4, 11)
    g, v = scenes.positions.clone(), scenes.velocities.clone()
    g[0, 0] = torch.tensor([70.0, 99.7], dtype=torch.float64)  # near endfire of both receive arrays (y = 100)
    aoa, ranges, dopplers = exact_messages(cfg, g, v)
    permute_slots(aoa, ranges, dopplers, torch.Generator().manual_seed(5))
    out = fuse_bistatic(cfg, BistaticMessages(aoa, ranges, dopplers))
    order = [torch.cdist(out.positions[b], g[b]).argmin(0) for b in range(4)]  # targets are unordered
    pos = torch.stack([out.positions[b, order[b]] for b in range(4)])
    vel = torch.stack([out.velocities[b, order[b]] for b in range(4)])
    torch.testing.assert_close(pos, g, atol=1e-6, rtol=0)
    torch.testing.assert_close(vel, v, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------- device, dtype
def test_result_is_float64_on_the_messages_device_and_velocity_false_allows_nan_dopplers():
    cfg = SystemConfig.preset("tiny", n_targets=2)
    _, msgs = noisy_messages(cfg, 3, seed=2)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    base = fuse_bistatic(cfg, msgs)
    for dev in devices:
        m32 = BistaticMessages(msgs.aoa.to(dev, torch.float32), msgs.ranges.to(dev, torch.float32),
                               msgs.dopplers.to(dev, torch.float32))
        out = fuse_bistatic(cfg, m32)
        assert out.positions.dtype == torch.float64 and out.velocities.dtype == torch.float64
        assert out.positions.device.type == dev and out.positions.shape == (3, 2, 2)
        m64 = BistaticMessages(msgs.aoa.to(dev), msgs.ranges.to(dev), msgs.dopplers.to(dev))
        torch.testing.assert_close(fuse_bistatic(cfg, m64).positions.cpu(), base.positions, atol=1e-6, rtol=0)
    nan_dopplers = BistaticMessages(msgs.aoa, msgs.ranges, torch.full_like(msgs.dopplers, float("nan")))
    out = fuse_bistatic(cfg, nan_dopplers, velocity=False)
    assert torch.isnan(out.velocities).all()
    torch.testing.assert_close(out.positions, base.positions, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_messages_raise_value_errors_naming_the_field():
    cfg = SystemConfig.preset("tiny", n_targets=2)
    _, msgs = noisy_messages(cfg, 2, seed=4)
    a, r, d = msgs.aoa, msgs.ranges, msgs.dopplers
    nan = float("nan")
    cases = [
        (BistaticMessages(a[:, :1], r, d), r"msgs\.aoa has shape"),
        (BistaticMessages(a, r[..., :1], d), r"msgs\.ranges has shape"),
        (BistaticMessages(a, r, d[:, :, :1]), r"msgs\.dopplers has shape"),
        (BistaticMessages(a[:0], r[:0], d[:0]), r"msgs\.aoa has shape .* B >= 1"),
        (BistaticMessages(a, r[:1], d[:1]), r"msgs\.ranges has batch 1"),
        (BistaticMessages(a.numpy(), r, d), r"msgs\.aoa must be a real floating torch\.Tensor"),
        (BistaticMessages(a, r.long(), d), r"msgs\.ranges must be a real floating"),
        (BistaticMessages(a.index_fill(2, torch.tensor([1]), nan), r, d), r"msgs\.aoa contains NaN"),
        (BistaticMessages(a, r.index_fill(3, torch.tensor([0]), float("inf")), d), r"msgs\.ranges contains NaN"),
        (BistaticMessages(a, r, d.index_fill(3, torch.tensor([0]), nan)), r"msgs\.dopplers contains NaN"),
    ]
    for m, match in cases:
        with pytest.raises(ValueError, match=match):
            fuse_bistatic(cfg, m)
    with pytest.raises(ValueError, match="msgs must be a BistaticMessages"):
        fuse_bistatic(cfg, (a, r, d))
