"""CRLB (paper Eq. 22-28, Appendix A): analytic FIM vs autograd on an independent rho, scaling laws, Monte Carlo."""

import math

import pytest
import torch
from torch.func import jacfwd

import cfisac
from cfisac import Scene, SystemConfig
from cfisac.cli import main as cli_main
from cfisac.crlb import (
    SingularFisherError,
    average_root_crlb,
    crlb,
    fisher_information,
    parameter_names,
    root_crlb,
)

C = 299792458.0


# --------------------------------------------------------------------------------------- independent reference
def unpack(cfg: SystemConfig, eta: torch.Tensor, S: int, clutter_moving: bool):
    """eta = [g (2Q), v (2Q), Re beta (N M Q), Im beta (N M Q), (g~ (2S), [v~ (2S)], Re beta~, Im beta~)]."""
    Q, N, M = cfg.n_targets, cfg.n_tx, cfg.n_rx
    k = 0

    def take(n):
        nonlocal k
        out = eta[k:k + n]
        k += n
        return out

    g = take(2 * Q).reshape(Q, 2)
    v = take(2 * Q).reshape(Q, 2)
    beta = torch.complex(take(N * M * Q), take(N * M * Q)).reshape(N, M, Q)
    if S:
        gc = take(2 * S).reshape(S, 2)
        vc = take(2 * S).reshape(S, 2) if clutter_moving else None
        bc = torch.complex(take(N * M * S), take(N * M * S)).reshape(N, M, S)
        return g, v, beta, gc, vc, bc
    return g, v, beta, None, None, None


def literal_rho(cfg: SystemConfig, g, v, beta, x, clock=None, factorised: bool = False) -> torch.Tensor:
    """Eq. (22): rho_{i,m}[t] = sum_n G_{i,n,m}[t] x_{i,n}[t] with G of Eq. (6) formed as full Mr x Nt matrices.

    g, v [P, 2] float64, beta [N, M, P] complex128, x [N, Nt, Ns, Ts]; clock [N, M, Ns, Ts] phases or None.
    Returns [M, Mr, Ns, Ts] complex128; differentiable in g, v, beta. ``factorised``: the same sum contracted
    beam first (a_t^H x), without forming G (cheaper, for the Monte Carlo test).
    """
    tx = torch.tensor(cfg.tx_positions, dtype=torch.float64)
    rx = torch.tensor(cfg.rx_positions, dtype=torch.float64)
    ut = torch.tensor(cfg.tx_axes, dtype=torch.float64)
    ur = torch.tensor(cfg.rx_axes, dtype=torch.float64)
    dn_vec = g[None] - tx[:, None]  # [N, P, 2]
    dm_vec = g[None] - rx[:, None]  # [M, P, 2]
    dn = torch.sqrt((dn_vec**2).sum(-1))
    dm = torch.sqrt((dm_vec**2).sum(-1))
    en, em = dn_vec / dn[..., None], dm_vec / dm[..., None]
    cos_t = (en * ut[:, None]).sum(-1)  # [N, P]
    cos_r = (em * ur[:, None]).sum(-1)  # [M, P]
    vn = (v[None] * en).sum(-1)  # Eq. (10)
    vm = (v[None] * em).sum(-1)  # Eq. (11)
    d = dn[:, None] + dm[None]  # [N, M, P], Eq. (7)
    tau = d / C  # Eq. (8)
    fd = (vn[:, None] + vm[None]) * cfg.carrier_frequency / C  # Eq. (9)
    pl = cfg.pathloss_ref * (d / cfg.reference_distance) ** (-cfg.pathloss_exponent)
    i = torch.arange(cfg.n_subcarriers, dtype=torch.float64) * cfg.subcarrier_stride
    t = 1.0 + torch.arange(cfg.n_symbols, dtype=torch.float64) * cfg.symbol_stride
    phi = 2 * math.pi * (i[:, None] * tau[..., None, None] * cfg.subcarrier_spacing
                         - t * fd[..., None, None] * cfg.symbol_duration)  # [N, M, P, Ns, Ts]
    ph = torch.exp(-1j * phi)
    kt = torch.arange(cfg.n_tx_antennas, dtype=torch.float64)
    kr = torch.arange(cfg.n_rx_antennas, dtype=torch.float64)
    a_t = torch.exp(-2j * math.pi * 0.5 * kt * cos_t[..., None]) / math.sqrt(cfg.n_tx_antennas)  # Eq. (1)
    a_r = torch.exp(-2j * math.pi * 0.5 * kr * cos_r[..., None]) / math.sqrt(cfg.n_rx_antennas)  # Eq. (2)
    amp = beta * torch.sqrt(pl)
    if factorised and clock is None:
        beams = torch.einsum("npk,nkit->npit", a_t.conj(), x.to(torch.complex128))
        return torch.einsum("mpr,nmp,nmpit,npit->mrit", a_r, amp, ph, beams)
    outer = a_r[None, :, :, :, None] * a_t.conj()[:, None, :, None, :]  # [N, M, P, Mr, Nt]
    G = torch.einsum("nmp,nmpit,nmprk->nmitrk", amp, ph, outer)  # G_{i,n,m}[t]
    if clock is not None:
        G = G * clock[..., None, None]
    return torch.einsum("nmitrk,nkit->mrit", G, x.to(torch.complex128))


def clock_phases(cfg: SystemConfig, scenes: Scene, b: int) -> torch.Tensor:
    i = torch.arange(cfg.n_subcarriers, dtype=torch.float64) * cfg.subcarrier_stride
    to, fo = scenes.timing_offsets[b], scenes.frequency_offsets[b]  # [N, M, Ts]
    return torch.exp(-2j * math.pi * i[:, None] * to[:, :, None, :] * cfg.subcarrier_spacing
                     + 2j * math.pi * fo[:, :, None, :] * cfg.symbol_duration)


def eta_of(scenes: Scene, b: int, nuisance_clutter: bool, clutter_moving: bool) -> torch.Tensor:
    beta = scenes.reflection[b]
    parts = [scenes.positions[b].reshape(-1), scenes.velocities[b].reshape(-1), beta.real.reshape(-1),
             beta.imag.reshape(-1)]
    if nuisance_clutter:
        parts.append(scenes.clutter_positions[b].reshape(-1))
        if clutter_moving:
            parts.append(scenes.clutter_velocities[b].reshape(-1))
        bc = scenes.clutter_reflection[b]
        parts += [bc.real.reshape(-1), bc.imag.reshape(-1)]
    return torch.cat(parts).double()


def autograd_fim(cfg: SystemConfig, scenes: Scene, x: torch.Tensor, b: int, *, clutter: str = "known",
                 clock: str = "ignored") -> torch.Tensor:
    """FIM of Eq. (23) from the forward-mode Jacobian of ``literal_rho`` in real eta."""
    has_clutter = scenes.clutter_positions is not None
    nuis = clutter == "nuisance" and has_clutter
    S = scenes.clutter_positions.shape[1] if nuis else 0
    mov = cfg.clutter_moving
    clk = clock_phases(cfg, scenes, b) if clock == "known" else None

    def rho(eta):
        g, v, beta, gc, vc, bc = unpack(cfg, eta, S, mov)
        if has_clutter:  # clutter always in the echo; its parameters are differentiated only when nuisance
            if not nuis:
                gc, bc = scenes.clutter_positions[b], scenes.clutter_reflection[b]
            if vc is None:
                vc = scenes.clutter_velocities[b]
            g, v, beta = torch.cat([g, gc]), torch.cat([v, vc]), torch.cat([beta, bc], -1)
        return torch.view_as_real(literal_rho(cfg, g, v, beta, x[b], clk))

    J = jacfwd(rho)(eta_of(scenes, b, nuis, mov)).reshape(-1, eta_of(scenes, b, nuis, mov).numel())
    return 2.0 / cfg.noise_watt * J.T @ J


def scaled_error(F: torch.Tensor, R: torch.Tensor) -> float:
    """max |F - R| / sqrt(diag R diag R^T): relative to the scale of each entry's information."""
    d = torch.diagonal(R).sqrt()
    return float(((F - R).abs() / (d[:, None] * d[None, :])).max())


def setup(cfg: SystemConfig, B: int = 2, seed: int = 0):
    scenes = cfisac.sample_scenes(cfg, B, seed)
    x = cfisac.transmit_signals(cfg, scenes, seed, dtype=torch.complex128)
    return scenes, x


# --------------------------------------------------------------------------------------- FIM vs autograd
def test_literal_rho_is_the_simulator():
    cfg = SystemConfig.preset("tiny", n_targets=2, n_clutter=2, clutter_moving=True)
    scenes, x = setup(cfg, 1)
    ref = cfisac.noiseless_echoes(cfg, scenes, x)[0]
    g = torch.cat([scenes.positions[0], scenes.clutter_positions[0]])
    v = torch.cat([scenes.velocities[0], scenes.clutter_velocities[0]])
    beta = torch.cat([scenes.reflection[0], scenes.clutter_reflection[0]], -1)
    for factorised in (False, True):
        got = literal_rho(cfg, g, v, beta, x[0], factorised=factorised)
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-12


@pytest.mark.parametrize("Q", [1, 2, 3])
def test_fim_matches_autograd(Q):
    cfg = SystemConfig.preset("tiny", n_targets=Q)
    scenes, x = setup(cfg, 2, seed=Q)
    F = fisher_information(cfg, scenes, x)
    assert F.shape == (2, 4 * Q + 8 * Q, 4 * Q + 8 * Q) and F.dtype == torch.float64
    for b in range(2):
        assert scaled_error(F[b], autograd_fim(cfg, scenes, x, b)) < 1e-8


@pytest.mark.parametrize("moving", [False, True])
def test_fim_with_clutter_matches_autograd(moving):
    cfg = SystemConfig.preset("tiny", n_targets=2, n_clutter=2, clutter_moving=moving)
    scenes, x = setup(cfg, 1, seed=7)
    Fk = fisher_information(cfg, scenes, x, clutter="known")
    assert scaled_error(Fk[0], autograd_fim(cfg, scenes, x, 0, clutter="known")) < 1e-8
    Fn = fisher_information(cfg, scenes, x, clutter="nuisance")
    D = 4 * 2 + 8 * 2 + 2 * 2 + (2 * 2 if moving else 0) + 8 * 2
    assert Fn.shape == (1, D, D)
    assert scaled_error(Fn[0], autograd_fim(cfg, scenes, x, 0, clutter="nuisance")) < 1e-8
    assert len(parameter_names(cfg, n_clutter=2, clutter_velocity=moving)) == D


def test_known_clutter_leaves_the_bound_unchanged_and_nuisance_clutter_raises_it():
    cfg = SystemConfig.preset("tiny", n_targets=1, n_clutter=3)
    scenes, x = setup(cfg, 2, seed=3)
    clean = Scene(scenes.positions, scenes.velocities, scenes.reflection)
    known = crlb(cfg, scenes, x, clutter="known")
    torch.testing.assert_close(known, crlb(cfg, clean, x), rtol=1e-12, atol=0)
    nuis = crlb(cfg, scenes, x, clutter="nuisance")
    # more nuisance parameters can only lose information: CRLB_nuisance - CRLB_known is positive semi-definite
    assert float(torch.linalg.eigvalsh(nuis - known).min()) > -1e-9 * float(known.abs().max())


def test_known_clock_offsets_match_autograd():
    cfg = SystemConfig.preset("tiny", n_targets=2, timing_offset_std=2e-9, frequency_offset_std=300.0)
    scenes, x = setup(cfg, 1, seed=5)
    F = fisher_information(cfg, scenes, x, clock="known")
    assert scaled_error(F[0], autograd_fim(cfg, scenes, x, 0, clock="known")) < 1e-8
    F_sync = fisher_information(cfg, Scene(scenes.positions, scenes.velocities, scenes.reflection), x)
    torch.testing.assert_close(fisher_information(cfg, scenes, x, clock="ignored"), F_sync, rtol=1e-12, atol=0)
    assert scaled_error(F[0], F_sync[0]) > 1e-3  # the known offsets do change the FIM


def test_crlb_is_the_schur_complement_of_the_autograd_fim_and_chunking_is_exact():
    cfg = SystemConfig.preset("tiny", n_targets=2)
    scenes, x = setup(cfg, 2, seed=11)
    bound = crlb(cfg, scenes, x)
    assert bound.shape == (2, 8, 8) and bound.dtype == torch.float64
    for b in range(2):
        R = torch.linalg.inv(autograd_fim(cfg, scenes, x, b))[:8, :8]  # [F^-1]_psi,psi = Eq. (24)
        torch.testing.assert_close(bound[b], R, rtol=1e-6, atol=1e-9 * float(R.abs().max()))
    torch.testing.assert_close(crlb(cfg, scenes, x, chunk_subcarriers=3), bound, rtol=1e-10, atol=0)
    torch.testing.assert_close(crlb(cfg, scenes.select(slice(1, 2)), x[1:]), bound[1:], rtol=1e-10, atol=0)
    assert torch.equal(cfisac.crlb(cfg, scenes, x), bound)  # the package-level name, called twice
    assert torch.equal(cfisac.crlb(cfg, scenes, x.to(torch.complex128)), bound)


def test_target_on_a_transmit_array_axis_is_exact_and_finite():
    """cos = +-1 for both transmit APs (target on y = 0): the angle derivative vanishes, nothing blows up."""
    cfg = SystemConfig.preset("tiny", n_targets=1)
    scenes, x = setup(cfg, 1, seed=2)
    scenes.positions[0, 0] = torch.tensor([50.0, 0.0], dtype=torch.float64)
    F = fisher_information(cfg, scenes, x)
    assert scaled_error(F[0], autograd_fim(cfg, scenes, x, 0)) < 1e-8
    assert bool(torch.isfinite(crlb(cfg, scenes, x)).all())


# --------------------------------------------------------------------------------------- scaling laws
def test_crlb_scales_exactly_as_one_over_snr():
    cfg = SystemConfig.preset("tiny", n_targets=2)
    scenes, x = setup(cfg, 2, seed=1)
    base = crlb(cfg, scenes, x)
    torch.testing.assert_close(crlb(cfg, scenes, x * math.sqrt(10.0)), base / 10, rtol=1e-9, atol=0)
    torch.testing.assert_close(crlb(cfg.replace(noise_dbm=cfg.noise_dbm - 10), scenes, x), base / 10,
                               rtol=1e-9, atol=0)
    p0, v0 = root_crlb(base)
    p1, v1 = root_crlb(crlb(cfg, scenes, x * math.sqrt(10.0)))
    torch.testing.assert_close(p1, p0 / math.sqrt(10), rtol=1e-9, atol=0)
    torch.testing.assert_close(v1, v0 / math.sqrt(10), rtol=1e-9, atol=0)


def test_velocity_bound_shrinks_with_observation_time():
    short = SystemConfig.preset("tiny", n_targets=1)
    long = short.replace(n_symbols=16)  # same symbol spacing, twice the frame
    scenes = cfisac.sample_scenes(short, 4, 0)
    v_short = root_crlb(crlb(short, scenes, cfisac.transmit_signals(short, scenes, 0)))[1]
    v_long = root_crlb(crlb(long, scenes, cfisac.transmit_signals(long, scenes, 0)))[1]
    # the Doppler slope's information grows ~ Ts^3: the root bound falls ~ 2^-1.5 = 0.35
    assert bool((v_long < 0.6 * v_short).all())


# --------------------------------------------------------------------------------------- Monte Carlo
def test_gauss_newton_ml_attains_the_bound():
    """Local ML (Gauss-Newton from the truth over psi and beta) at high SNR: empirical covariance ~ CRLB."""
    cfg = SystemConfig.preset("tiny", n_targets=1, noise_dbm=-130.0)
    scenes, x = setup(cfg, 1, seed=4)
    bound = crlb(cfg, scenes, x)[0]
    eta0 = eta_of(scenes, 0, False, False)

    def rho(eta):
        g, v, beta, *_ = unpack(cfg, eta, 0, False)
        return torch.view_as_real(literal_rho(cfg, g, v, beta, x[0], factorised=True)).reshape(-1)

    jac = jacfwd(rho)
    mean0 = rho(eta0)
    trials = 400
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(trials, mean0.numel(), generator=gen, dtype=torch.float64) * math.sqrt(cfg.noise_watt / 2)
    eta = eta0.expand(trials, -1).clone()
    J0 = jac(eta0)
    for it in range(2):  # first step with the Jacobian at the truth (shared), then a re-linearised step
        Js = J0.expand(trials, -1, -1) if it == 0 else torch.func.vmap(jac)(eta)
        r = mean0 + noise - torch.func.vmap(rho)(eta)
        d = torch.diagonal(Js.mT @ Js, dim1=-2, dim2=-1).sqrt()
        step = torch.linalg.lstsq(Js / d[:, None], r[..., None]).solution[..., 0] / d
        eta = eta + step
    err = eta[:, :4] - eta0[:4]
    assert float(err.mean(0).abs().max() / torch.diagonal(bound).sqrt().max()) < 0.3  # unbiased
    cov = err.T @ err / trials
    ratio = torch.diagonal(cov) / torch.diagonal(bound)
    assert bool(((ratio > 0.8) & (ratio < 1.2)).all()), ratio


# --------------------------------------------------------------------------------------- singular FIM
def test_coincident_targets_raise_naming_the_scene():
    cfg = SystemConfig.preset("tiny", n_targets=2)
    scenes, x = setup(cfg, 2, seed=0)
    scenes.positions[1, 1] = scenes.positions[1, 0]
    scenes.velocities[1, 1] = scenes.velocities[1, 0]
    with pytest.raises(SingularFisherError, match=r"scene 1: .*targets 0 and 1 coincide") as info:
        crlb(cfg, scenes, x)
    assert info.value.scene == 1 and isinstance(info.value, ValueError)
    soft = crlb(cfg, scenes, x, singular="nan")
    assert bool(torch.isnan(soft[1]).all()) and torch.equal(soft[0], crlb(cfg, scenes.select(slice(0, 1)), x[:1])[0])


def test_single_ap_pair_cannot_see_both_velocity_components():
    cfg = SystemConfig.preset("tiny", tx_positions=((30.0, 0.0),), tx_axes=((-1.0, 0.0),),
                              rx_positions=((70.0, 100.0),), rx_axes=((1.0, 0.0),))
    scenes, x = setup(cfg, 1, seed=0)
    with pytest.raises(ValueError, match=r"scene 0: .*v_0.*single transmit/receive AP pair"):
        crlb(cfg, scenes, x)


def test_target_on_every_array_axis_raises():
    """All APs and the target on the x axis, arrays along it: no angle information anywhere, v_y unobservable."""
    cfg = SystemConfig.preset("tiny", tx_positions=((0.0, 0.0), (100.0, 0.0)),
                              rx_positions=((20.0, 0.0), (80.0, 0.0)))
    scenes, x = setup(cfg, 1, seed=0)
    scenes.positions[0, 0] = torch.tensor([50.0, 0.0], dtype=torch.float64)
    with pytest.raises(SingularFisherError, match=r"scene 0: .*v_0y.*array axis of transmit AP 0"):
        crlb(cfg, scenes, x)


def test_bad_inputs():
    cfg = SystemConfig.preset("tiny")
    scenes, x = setup(cfg, 1)
    with pytest.raises(ValueError, match="clutter must be"):
        crlb(cfg, scenes, x, clutter="ignore")
    with pytest.raises(ValueError, match="clock='nuisance' is not supported"):
        crlb(cfg, scenes, x, clock="nuisance")
    with pytest.raises(ValueError, match="chunk_subcarriers"):
        crlb(cfg, scenes, x, chunk_subcarriers=0)
    with pytest.raises(ValueError, match="x has shape"):
        crlb(cfg, scenes, x[..., :-1])
    with pytest.raises(ValueError, match="bound must be"):
        root_crlb(torch.zeros(2, 5, 5))


# --------------------------------------------------------------------------------------- summaries and CLI
def test_root_crlb_hand_computed():
    # Q = 2: diag = [gx0, gy0, gx1, gy1, vx0, vy0, vx1, vy1]
    bound = torch.diag_embed(torch.tensor([[1.0, 3.0, 4.0, 8.0, 2.0, 2.0, 0.5, 1.5],
                                           [0.0, 2.0, 2.0, 0.0, 8.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    pos, vel = root_crlb(bound)
    torch.testing.assert_close(pos, torch.tensor([math.sqrt(8.0), math.sqrt(2.0)], dtype=torch.float64))
    torch.testing.assert_close(vel, torch.tensor([math.sqrt(3.0), 2.0], dtype=torch.float64))
    p, v = average_root_crlb(bound)  # sqrt of the mean over scenes of the mean over targets, like the RMSE
    assert p == pytest.approx(math.sqrt(5.0)) and v == pytest.approx(math.sqrt(3.5))


def test_cli_prints_a_table(capsys):
    assert cli_main(["crlb", "--preset", "tiny", "--power-dbm", "20", "30", "--n-scenes", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("20", "30"))]
    assert len(lines) == 2
    cfg = SystemConfig.preset("tiny", power_dbm=30.0)
    scenes = cfisac.sample_scenes(cfg, 2, 1)
    p, v = average_root_crlb(crlb(cfg, scenes, cfisac.transmit_signals(cfg, scenes, 1)))
    assert f"{p:.4g}" in lines[1] and f"{v:.4g}" in lines[1]
