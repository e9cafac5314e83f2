"""The batched CS (OMP) baseline, ``cfisac.estimators.cs``, against its literal scene-at-a-time reference.

Tiny presets only (the 50-scene ``quick`` comparison and the timings are benchmarks, not tests). The batched path
reproduces the reference's algorithm step by step, so on the same scenes both send the same fronthaul messages up to
floating-point rounding (different summation orders): :data:`MSG_ATOL` below, far under the 1e-5-cell convergence
threshold of the polish and under any resolution cell.
"""

import numpy as np
import pytest
import torch

import cfisac
from cfisac import SystemConfig
from cfisac.estimators import create
from cfisac.estimators.cs import CsEstimator
from cfisac.estimators.reference.cs import CsEstimator as ReferenceCs
from cfisac.estimators.reference.signal_processing import validate_inputs
from cfisac.geometry import bistatic_geometry

TINY = SystemConfig.preset("tiny")
# direction cosine, m, Hz (cells: 0.5, 39 m, 3.8 kHz): 1e-4 of a cell. The reference zooms 14 halvings (resolution
# ~1.5e-5 of its first step), the product path zooms 4 and then takes parabolic/Newton steps to the continuous optimum
# (dsp.zoom_newton_maximize*), so they agree to the reference's zoom resolution, not to rounding (was 1e-8/1e-6/1e-4)
MSG_ATOL = {"aoa": 5e-5, "ranges": 4e-3, "dopplers": 0.4}


def simulate(cfg, n, seed, noise=True):
    scenes = cfisac.sample_scenes(cfg, n, seed)
    x = cfisac.transmit_signals(cfg, scenes, seed, dtype=torch.complex128)
    return scenes, x, cfisac.sensing_echoes(cfg, scenes, x, noise=noise, seed=seed)


def assert_same_messages(cfg, y, x, new):
    ref = ReferenceCs(cfg).messages(*validate_inputs(cfg, y, x))
    for key, tol in MSG_ATOL.items():
        np.testing.assert_allclose(getattr(new, key).numpy(), getattr(ref, key), atol=tol, rtol=0, err_msg=key)


@pytest.mark.parametrize(("power", "n_targets", "seed"), [(48.0, 2, 3), (54.0, 1, 4), (60.0, 2, 5)])
def test_messages_equal_the_reference_on_noisy_scenes(power, n_targets, seed):
    cfg = TINY.replace(power_dbm=power, n_targets=n_targets)
    _, x, y = simulate(cfg, 2, seed)
    msgs = CsEstimator(cfg).ap_messages(y, x)
    assert msgs.ranges.shape == (2, cfg.n_rx, n_targets, cfg.n_tx) and msgs.ranges.dtype == torch.float64
    assert_same_messages(cfg, y, x, msgs)


def test_estimates_equal_the_reference_through_the_registry():
    cfg = TINY.replace(power_dbm=52.0, n_targets=2)
    _, x, y = simulate(cfg, 2, 6)
    new = create("cs", cfg, device="cpu")
    assert isinstance(new, CsEstimator) and new.name == "cs"
    out, ref = new(y, x), create("cs-reference", cfg)(y, x)
    # the messages agree to the reference's zoom resolution (MSG_ATOL), which the fusion's least squares carries
    # to ~2e-4 m and ~2e-3 m/s here (1e-5 while both paths zoomed alike); far below a range cell (39 m) and the
    # velocity a Doppler cell (3.8 kHz) implies
    torch.testing.assert_close(out.positions, ref.positions, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.velocities, ref.velocities, atol=1e-2, rtol=0)


def _rows_and_random_atoms(*, n_scenes: int, seed: int, atom_seed: int, n_atoms: int, u_span: float):
    """CS rows of noisy two-target tiny scenes and seeded random atoms (transmit AP, range 80-140 m, AoA cosine in
    +-u_span) per row: (cfg, estimator, context, rows, (n, d, u) [R, n_atoms])."""
    cfg = TINY.replace(power_dbm=54.0, n_targets=2)
    _, x, y = simulate(cfg, n_scenes, seed)
    est = CsEstimator(cfg)
    ctx = est._context(y.device)
    rows = est._rows(ctx, y, x)
    R = rows.y.shape[0]
    g = torch.Generator().manual_seed(atom_seed)
    n = torch.randint(0, cfg.n_tx, (R, n_atoms), generator=g)
    d = 80.0 + 60.0 * torch.rand(R, n_atoms, generator=g, dtype=torch.float64)
    u = 2.0 * u_span * torch.rand(R, n_atoms, generator=g, dtype=torch.float64) - u_span
    return cfg, est, ctx, rows, (n, d, u)


@pytest.mark.parametrize("n_atoms", [1, 2])
def test_pick_statistic_updated_from_the_data_equals_the_statistic_of_the_residual(n_atoms):
    """The OMP statistic of ``r = y - Phi C`` from the data's cached lags plus the rank-2J update equals the one
    computed from r itself (the lags of r's own range transform), to rounding; and it is not the data's."""
    cfg, est, ctx, rows, (n, d, u) = _rows_and_random_atoms(n_scenes=2, seed=7, atom_seed=1, n_atoms=n_atoms,
                                                            u_span=1.0)
    phi, coef = est._solve(ctx, rows, n, d, u)
    resid = rows.y - (phi @ coef).permute(0, 3, 2, 1)
    for k in range(cfg.n_tx):
        x_k, ie_k = rows.x[:, k], rows.inv_e[:, k]
        rho_y = est._data_lags(ctx, rows.y, x_k)
        updated = est._correlation(ctx, rho_y, rows.y, x_k, ie_k, (phi, coef))
        direct = est._correlation(ctx, est._data_lags(ctx, resid, x_k), resid, x_k, ie_k, None)
        data = est._correlation(ctx, rho_y, rows.y, x_k, ie_k, None)
        torch.testing.assert_close(updated, direct, rtol=1e-10, atol=1e-12 * float(direct.abs().max()))
        assert float((data - direct).abs().max()) > 1e-3 * float(direct.abs().max())


def test_noiseless_messages_are_the_true_geometry_and_the_reference():
    cfg = TINY.replace(n_subcarriers=32, n_targets=1)  # 9.8 m range cells
    scenes, x, y = simulate(cfg, 3, 0, noise=False)
    msgs = CsEstimator(cfg).ap_messages(y, x)
    geo = bistatic_geometry(cfg, scenes.positions, scenes.velocities)
    np.testing.assert_allclose(msgs.ranges.numpy(), geo.bistatic_range.permute(0, 2, 3, 1).numpy(), atol=1e-3)
    np.testing.assert_allclose(msgs.dopplers.numpy(), geo.doppler.permute(0, 2, 3, 1).numpy(), atol=0.5)
    np.testing.assert_allclose(msgs.aoa.numpy(), geo.rx.cos_angle.numpy(), atol=1e-5)
    assert_same_messages(cfg, y, x, msgs)


def test_chunking_and_complex64_do_not_change_the_estimates():
    cfg = TINY.replace(power_dbm=56.0)
    _, x, y = simulate(cfg, 3, 8)
    whole = CsEstimator(cfg)(y, x)
    one = CsEstimator(cfg, chunk_size=1)(y, x)
    torch.testing.assert_close(one.positions, whole.positions, atol=1e-9, rtol=0)
    torch.testing.assert_close(one.velocities, whole.velocities, atol=1e-9, rtol=0)
    # complex64 inputs are promoted to the estimator's complex128 (the base moves them): same numbers
    low = CsEstimator(cfg)(y.to(torch.complex64), x.to(torch.complex64))
    assert float((low.positions - whole.positions).abs().max()) < 1e-2
    # computing in complex64 runs and stays within a few mm (1e-4 of a 39 m range cell) at this SNR
    single = CsEstimator(cfg, dtype=torch.complex64)(y, x)
    assert float((single.positions - whole.positions).abs().max()) < 0.05


def test_refinement_blocks_of_rows_do_not_change_the_results(monkeypatch):
    """``_refine`` on blocks of one row (views of the rows) returns what one pass over all rows returns: every row's
    searches are independent (a mixed-up block offset or a row taken twice fails it)."""
    import cfisac.estimators.cs as cs_module

    cfg, est, ctx, rows, (n, d, u) = _rows_and_random_atoms(n_scenes=3, seed=9, atom_seed=2, n_atoms=3, u_span=0.9)
    args = (ctx, rows, n[:, 0], d[:, 0], u[:, 0], (n[:, 1:], d[:, 1:], u[:, 1:]))
    monkeypatch.setattr(cs_module, "REFINE_BLOCK", 2**40)
    whole = est._refine(*args, first=True)
    monkeypatch.setattr(cs_module, "REFINE_BLOCK", 1)
    blocked = est._refine(*args, first=True)
    assert rows.y.shape[0] > 1 and not torch.equal(whole[0], whole[0].flip(0))
    for a, b in zip(whole, blocked, strict=True):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def test_lag_sums_give_the_quadratic_form_of_steering_vectors():
    """``a^H R a`` of a ULA steering vector from the weighted lag sums of R (Hermitian) equals the direct form."""
    from cfisac.estimators.cs import _lag_sums
    from cfisac.geometry import steering_vectors

    g = torch.Generator().manual_seed(3)
    nt = 6
    h = torch.randn(4, nt, 2 * nt, dtype=torch.complex128, generator=g)
    r = h @ h.conj().transpose(-1, -2)  # [4, Nt, Nt] Hermitian PSD
    u = torch.tensor([-0.9, -0.2, 0.35, 0.8], dtype=torch.float64)
    a = steering_vectors(u, nt, 0.5, torch.complex128)  # [4, Nt]
    direct = torch.einsum("bl,blk,bk->b", a.conj(), r, a).real
    lags = (a.conj() * _lag_sums(r)).sum(-1).real / nt**0.5
    torch.testing.assert_close(lags, direct, atol=1e-12, rtol=1e-12)
    assert float((direct - r.diagonal(dim1=-2, dim2=-1).real.sum(-1) / nt).abs().min()) > 1e-3  # not just the trace


@pytest.mark.parametrize(("options", "word"), [
    (dict(delay_oversample=0), "delay_oversample"), (dict(aod_oversample=1.5), "aod_oversample"),
    (dict(oversample=-2), "oversample"), (dict(symbol_chunk=0), "symbol_chunk"),
    (dict(n_candidates=0), "n_candidates"), (dict(refine_rounds=-1), "refine_rounds"),
    (dict(refine_rounds=True), "refine_rounds"), (dict(chunk_size=0), "chunk_size"),
    (dict(dtype=torch.float64), "dtype"), (dict(device="nonsense"), "device"),
    (dict(checkpoint="run/x"), "checkpoint"),
])
def test_bad_options_raise_value_errors_naming_them(options, word):
    with pytest.raises(ValueError, match=word):
        create("cs", TINY, **options)


def test_bad_inputs_and_configs_raise_value_errors():
    with pytest.raises(ValueError, match="N Q <= Ns / 2"):
        CsEstimator(TINY.replace(n_targets=5))
    _, x, y = simulate(TINY, 1, 0)
    est = CsEstimator(TINY)
    with pytest.raises(ValueError, match="y has shape"):
        est(y[:, :1], x)
    with pytest.raises(ValueError, match="x has shape"):
        est(y, x[:, :1])
    bad = y.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="y contains NaN"):
        est(bad, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    cfg = TINY.replace(power_dbm=55.0, n_targets=2)
    _, x, y = simulate(cfg, 3, 9)
    cpu = create("cs", cfg)(y, x)
    gpu = create("cs", cfg, device="cuda")(y, x)
    torch.testing.assert_close(gpu.positions, cpu.positions, atol=1e-6, rtol=0)


def test_zoom_maximize_reuses_the_previous_grid_and_finds_the_same_maxima():
    """The 5-point zoom evaluates 5 + 3 (n_iter - 1) candidates per problem instead of 5 n_iter, same iterates."""
    from cfisac.estimators.dsp import zoom_maximize

    g = torch.Generator().manual_seed(3)
    centre = torch.rand(64, generator=g, dtype=torch.float64) * 4 - 2
    x0 = centre + (torch.rand(64, generator=g, dtype=torch.float64) - 0.5)  # within half a step of the lobe
    objective = lambda c: torch.cos(3.0 * (c - centre[:, None])) + 0.1 * torch.sin(17.0 * c)  # noqa: E731
    counts = []

    def counted(c):
        counts.append(c.shape[-1])
        return objective(c)

    x, best = zoom_maximize(counted, x0, 1.0, n_iter=14, reuse=True)
    # the plain algorithm: all 5 candidates every iteration
    xr, h = x0.clone(), torch.ones_like(x0)
    offs = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    for _ in range(14):
        cand = xr[:, None] + h[:, None] * offs
        val = objective(cand)
        k = val.argmax(-1, keepdim=True)
        xr, vr = cand.gather(-1, k)[:, 0], val.gather(-1, k)[:, 0]
        h = h * 0.5
    assert counts == [5] + [3] * 13
    torch.testing.assert_close(x, xr, rtol=0, atol=1e-12)
    torch.testing.assert_close(best, vr, rtol=0, atol=1e-12)
    assert float((x - x0).abs().max()) > 0.1  # it moved
    xb, _ = zoom_maximize(counted, x0, 1.0, lower=-1.5, upper=1.5, n_iter=3, reuse=True)  # bounds: 5 each
    assert counts[-3:] == [5, 5, 5] and float(xb.abs().max()) <= 1.5


def test_zoom_newton_maximize_finds_known_maxima_with_fewer_evaluations():
    """1-D: f(x) = cos(x - c) + 0.1 sin(2 (x - c)) has its maximum where its derivative vanishes (found by
    bisection here); the zoom + Newton search reaches it to step / 2^14 with fewer than the 44 evaluations of
    zoom_maximize, respects bounds, and 2-D: the 5 x 5 zoom's 14-halving maximum of a coupled bilinear form (a
    Newton step with a wrong cross term or sign would stop elsewhere)."""
    from cfisac.estimators.dsp import zoom_maximize_2d, zoom_newton_maximize, zoom_newton_maximize_2d

    c = torch.tensor([0.3, -0.7, 1.1, 0.05], dtype=torch.float64)
    f = lambda t: torch.cos(t - c[:, None]) + 0.1 * torch.sin(2 * (t - c[:, None]))  # noqa: E731
    lo, hi = c - 0.5, c + 0.5  # f' = -sin(u) + 0.2 cos(2u) = 0: bisection on u in [-0.5, 0.5]
    for _ in range(60):
        mid = (lo + hi) / 2
        right = -torch.sin(mid - c) + 0.2 * torch.cos(2 * (mid - c)) > 0
        lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
    truth = (lo + hi) / 2
    n_eval = []

    def counted(t):
        n_eval.append(t.shape[-1])
        return f(t)

    x, best = zoom_newton_maximize(counted, c + 0.2, 0.5)
    assert float((x - truth).abs().max()) < 0.5 / 2**14
    torch.testing.assert_close(best, f(truth[:, None])[:, 0], atol=1e-9, rtol=0)
    assert sum(n_eval) < 44
    xb, _ = zoom_newton_maximize(f, c + 0.2, 0.5, lower=-10.0, upper=float(truth.min()) - 0.01)
    assert bool((xb <= float(truth.min()) - 0.01 + 1e-12).all())

    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 6, 7, dtype=torch.complex128, generator=g)
    ka = lambda t: torch.polar(torch.ones_like(t)[..., None], t[..., None] * torch.arange(6.0))  # noqa: E731
    kb = lambda t: torch.polar(torch.ones_like(t)[..., None], -t[..., None] * torch.arange(7.0))  # noqa: E731
    start = torch.zeros(5, dtype=torch.float64)
    a0, b0, v0 = zoom_maximize_2d(z, ka, kb, start, start, 1.0, 1.0)
    a1, b1, v1 = zoom_newton_maximize_2d(z, ka, kb, start, start, 1.0, 1.0)
    torch.testing.assert_close(a1, a0, atol=1e-4, rtol=0)
    torch.testing.assert_close(b1, b0, atol=1e-4, rtol=0)
    assert bool((v1.abs() >= v0.abs() - 1e-9).all())
