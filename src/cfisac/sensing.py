"""Sensing echoes at the receive APs: Eq. (6) with clutter (Eq. 29), clock offsets (Eq. 30) and noise.

Eq. (6), literally (conventions in :mod:`cfisac.physics`), for subcarrier i, symbol t, receive AP m:

    y_{i,m}[t] = sum_n sum_q beta_{n,m,q} sqrt(PL(d_{n,m,q})) e^{-j 2 pi (i tau_{n,m,q} df - t f_D,n,m,q dT)}
                 a_r(vartheta_{m,q}) a_t^H(theta_{n,q}) x_{i,n}[t] + z_{i,m}[t]

evaluated at the absolute subcarrier / symbol indices of the sensing comb (``config`` module). Clutter scatterers
(Eq. 29) enter exactly like targets with their own coefficients (static unless ``clutter_moving``). Clock offsets
(Eq. 30) multiply the contribution of transmit AP n at receive AP m by ``e^{-j 2 pi i tau_o df} e^{j 2 pi f_o dT}``
with real Gaussian offsets ``tau_o ~ N(0, sigma_tau^2)``, ``f_o ~ N(0, sigma_f^2)`` per (n, m, t). Two deliberate
departures from the printed Eq. (30): the paper writes ``CN`` for real-valued offsets, and drops the subcarrier
index i from the timing term (a timing offset is a delay, i.e. a phase slope over subcarriers; without i it would
be a second common phase indistinguishable from the CFO term).

The computation is factorised: first the transmit beam outputs ``a_t^H(theta_{n,q}) x_{i,n}[t]`` per (n, q), then
the delay / Doppler phases and gains summed over n, then the receive steering vectors: O((N Nt + N M + M Mr) Q Ns Ts)
per scene instead of the O(N M Q Mr Nt Ns Ts) of forming G_{i,n,m}[t]. Batches are processed in chunks to bound
memory.
"""

from __future__ import annotations

import math

import torch

from .config import SystemConfig
from .geometry import bistatic_geometry, steering_vectors
from .scene import Scene
from .seeding import complex_normal, sample_generator

__all__ = ["check_transmit_signals", "noiseless_echoes", "sensing_echoes", "sensing_indices"]

DEFAULT_CHUNK_CELLS = 2**22  # complex cells of y per chunk (32 MB in complex64)


def sensing_indices(cfg: SystemConfig, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute subcarrier indices i [Ns] and symbol indices t [Ts] (float64) of the sensing comb."""
    i = torch.arange(cfg.n_subcarriers, dtype=torch.float64, device=device) * cfg.subcarrier_stride
    t = 1.0 + torch.arange(cfg.n_symbols, dtype=torch.float64, device=device) * cfg.symbol_stride
    return i, t


def check_transmit_signals(cfg: SystemConfig, x: torch.Tensor, batch_size: int | None = None) -> None:
    """Raise ``ValueError`` unless x is a finite complex [B, N, Nt, Ns, Ts] tensor for ``cfg``."""
    if not isinstance(x, torch.Tensor) or not x.is_complex():
        raise ValueError("x must be a complex torch.Tensor [B, N, Nt, Ns, Ts]")
    expect = (cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)
    if x.dim() != 5 or tuple(x.shape[1:]) != expect or (batch_size is not None and x.shape[0] != batch_size):
        raise ValueError(f"x has shape {tuple(x.shape)}, expected {(batch_size or 'B', *expect)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")


def _reflectors(scenes: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets and clutter scatterers together: positions, velocities [B, P, 2] and coefficients [B, N, M, P]."""
    if scenes.clutter_positions is None or scenes.clutter_positions.shape[1] == 0:
        return scenes.positions, scenes.velocities, scenes.reflection
    return (
        torch.cat([scenes.positions, scenes.clutter_positions], 1),
        torch.cat([scenes.velocities, scenes.clutter_velocities], 1),
        torch.cat([scenes.reflection, scenes.clutter_reflection], 3),
    )


def _echo_chunk(cfg: SystemConfig, scenes: Scene, x: torch.Tensor) -> torch.Tensor:
    """Noiseless Eq. (6) (+ Eq. 29, 30) for one chunk: [B, M, Mr, Ns, Ts] in the dtype / device of x."""
    dev, cdt = x.device, x.dtype
    pos, vel, beta = _reflectors(scenes)
    pos, vel, beta = pos.to(dev, torch.float64), vel.to(dev, torch.float64), beta.to(dev, torch.complex128)
    geo = bistatic_geometry(cfg, pos, vel)
    a_t = steering_vectors(geo.tx.cos_angle, cfg.n_tx_antennas, cfg.antenna_spacing, cdt)  # [B, N, P, Nt]
    a_r = steering_vectors(geo.rx.cos_angle, cfg.n_rx_antennas, cfg.antenna_spacing, cdt)  # [B, M, P, Mr]
    pathloss = cfg.pathloss_ref * (geo.bistatic_range / cfg.reference_distance) ** (-cfg.pathloss_exponent)
    gain = (beta * pathloss.sqrt()).to(cdt)  # [B, N, M, P]
    i_idx, t_idx = sensing_indices(cfg, dev)
    df, dT = cfg.subcarrier_spacing, cfg.symbol_duration
    delay_phase = torch.polar(torch.ones((), dtype=torch.float64, device=dev),
                              -2 * math.pi * df * geo.delay[..., None] * i_idx).to(cdt)  # [B, N, M, P, Ns]
    doppler_phase = torch.polar(torch.ones((), dtype=torch.float64, device=dev),
                                2 * math.pi * dT * geo.doppler[..., None] * t_idx).to(cdt)  # [B, N, M, P, Ts]
    beams = torch.einsum("bnpk,bnkit->bnpit", a_t.conj(), x)  # a_t^H x: [B, N, P, Ns, Ts]
    clock = None
    if scenes.timing_offsets is not None or scenes.frequency_offsets is not None:
        zeros = torch.zeros(pos.shape[0], cfg.n_tx, cfg.n_rx, cfg.n_symbols, dtype=torch.float64, device=dev)
        to = zeros if scenes.timing_offsets is None else scenes.timing_offsets.to(dev, torch.float64)
        fo = zeros if scenes.frequency_offsets is None else scenes.frequency_offsets.to(dev, torch.float64)
        phase = -2 * math.pi * df * to[:, :, :, None, :] * i_idx[:, None] + 2 * math.pi * dT * fo[:, :, :, None, :]
        clock = torch.polar(torch.ones((), dtype=torch.float64, device=dev), phase).to(cdt)  # [B, N, M, Ns, Ts]
    gain_delay = gain[..., None] * delay_phase  # [B, N, M, P, Ns]
    B, P = pos.shape[:2]
    u = torch.zeros(B, cfg.n_rx, P, cfg.n_subcarriers, cfg.n_symbols, dtype=cdt, device=dev)  # sum over n
    for n in range(cfg.n_tx):
        term = doppler_phase[:, n, :, :, None, :] * beams[:, n, None]  # [B, M, P, Ns, Ts]
        if clock is not None:
            term.mul_(clock[:, n, :, None])
        u.addcmul_(term, gain_delay[:, n, :, :, :, None])
    return torch.einsum("bmpr,bmpit->bmrit", a_r, u)


def noiseless_echoes(
    cfg: SystemConfig, scenes: Scene, x: torch.Tensor, *, chunk_size: int | None = None,
    allow_outside_area: bool = False,
) -> torch.Tensor:
    """rho_{i,m}[t] of Eq. (22) (with clutter and clock offsets when the scene has them): [B, M, Mr, Ns, Ts]."""
    scenes.check(cfg, allow_outside_area=allow_outside_area)
    check_transmit_signals(cfg, x, scenes.batch_size)
    B = scenes.batch_size
    if chunk_size is None:
        cells = cfg.n_rx * cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols
        chunk_size = max(1, DEFAULT_CHUNK_CELLS // cells)
    out = torch.empty(B, cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols, dtype=x.dtype,
                      device=x.device)
    for start in range(0, B, chunk_size):
        rows = slice(start, min(B, start + chunk_size))
        out[rows] = _echo_chunk(cfg, scenes.select(rows), x[rows])
    return out


def sensing_noise(cfg: SystemConfig, indices: torch.Tensor, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """z ~ CN(0, xi^2 I) per antenna, subcarrier and symbol, from each sample's ``noise`` stream (CPU tensor)."""
    shape = (cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
    z = torch.empty((len(indices), *shape), dtype=dtype)
    for b, d in enumerate(indices.tolist()):
        z[b] = complex_normal(shape, sample_generator(seed, d, "noise"), dtype)
    return z.mul_(math.sqrt(cfg.noise_watt))


def sensing_echoes(
    cfg: SystemConfig, scenes: Scene, x: torch.Tensor, *, noise: bool = True, seed: int = 0,
    chunk_size: int | None = None, allow_outside_area: bool = False,
) -> torch.Tensor:
    """Received sensing signals Y_m of every receive AP, Eq. (6): [B, M, Mr, Ns, Ts] in the dtype of x.

    ``x`` [B, N, Nt, Ns, Ts] complex64 or complex128 (its device is used). With ``noise`` the noise of sample d
    comes from its ``noise`` stream of ``seed``.
    """
    y = noiseless_echoes(cfg, scenes, x, chunk_size=chunk_size, allow_outside_area=allow_outside_area)
    if noise:
        y += sensing_noise(cfg, scenes.indices, seed, x.dtype).to(y.device)
    return y
