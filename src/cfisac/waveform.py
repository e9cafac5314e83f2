"""Communication side: 16-QAM symbols, the users' channels, centralized MMSE precoding (paper Eq. 3-5).

User channel model (the paper does not give one): a Rician geometric multipath channel per transmit AP and user,
in the spirit of the LoS clustered models of 3GPP TR 38.901 (simplified to one ray per cluster):

    h_{i,n,k} = sqrt(PL(d_{n,k})) sqrt(Nt) [ sqrt(K/(K+1)) e^{-j 2 pi (fc + i df) d_{n,k}/c} a_t(theta_{n,k})
                 + sqrt(1/((K+1) P)) sum_p g_p e^{-j 2 pi (fc + i df)(d_{n,k}/c + tau_p)} a_t(theta_p) ]

with the one-way pathloss PL(d) = alpha_0 (d/d_0)^-zeta of Table I, Rician factor K (``user_rician_factor_db``),
``P = user_n_paths`` non-LoS paths with g_p ~ CN(0, 1), cos(theta_p) ~ U(-1, 1) and excess delays tau_p ~ U(0, T_p).

MMSE precoding (Section II-B) across all N*Nt transmit antennas per subcarrier, in the regularised zero-forcing
form of Sionna's ``rzf_precoding_matrix``: ``W_i = H_i^H (H_i H_i^H + alpha I)^-1`` with ``H_i`` the K x N*Nt matrix
of rows ``h_{i,k}^H`` and ``alpha = K sigma_c^2 / P_sub`` (``P_sub = N P / Ns_frame`` the power per subcarrier).
``W`` is then scaled by one common factor so that the most loaded transmit AP meets its power constraint
``sum_i ||W_{i,n}||_F^2 <= P`` with equality (Section II-A); the sum runs over all ``Ns_frame`` subcarriers of the
frame, estimated from the sensed comb as ``subcarrier_stride * sum over the comb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import SPEED_OF_LIGHT, SystemConfig
from .geometry import ap_geometry, steering_vectors
from .scene import Scene
from .seeding import complex_normal, sample_generator

__all__ = ["CommunicationLinks", "communication_links", "qam16", "transmit_signals"]

_QAM_LEVELS = torch.tensor([-3.0, -1.0, 1.0, 3.0]) / math.sqrt(10.0)


def qam16(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform i.i.d. Gray-free 16-QAM symbols with unit average power, complex128 of ``shape``."""
    idx = torch.randint(0, 4, (*shape, 2), generator=generator)
    lv = _QAM_LEVELS.to(torch.float64)[idx]
    return torch.complex(lv[..., 0], lv[..., 1])


@dataclass
class CommunicationLinks:
    """Channels, precoders and the resulting users' SINR per subcarrier (Eq. 4-5).

    ``channels`` [B, Ns, K, N*Nt] complex128 (row k is h_{i,k}), ``precoders`` [B, Ns, N*Nt, K] complex128,
    ``sinr`` [B, Ns, K] float64 (linear), ``sum_rate`` [B] float64 (bit/s/Hz, averaged over the sensed subcarriers),
    ``tx_power`` [B, N] float64 (W, per transmit AP over the frame).
    """

    channels: torch.Tensor
    precoders: torch.Tensor
    sinr: torch.Tensor
    sum_rate: torch.Tensor
    tx_power: torch.Tensor


def subcarrier_frequencies(cfg: SystemConfig) -> torch.Tensor:
    """Baseband frequencies i * df of the sensed subcarriers, [Ns] float64."""
    return torch.arange(cfg.n_subcarriers, dtype=torch.float64) * cfg.subcarrier_stride * cfg.subcarrier_spacing


def _user_channel(cfg: SystemConfig, user_positions: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Channels [Ns, K, N*Nt] of one scene's users [K, 2]."""
    K, N, Nt, P = cfg.n_users, cfg.n_tx, cfg.n_tx_antennas, cfg.user_n_paths
    tx_pos = torch.tensor(cfg.tx_positions, dtype=torch.float64)
    tx_axes = torch.tensor(cfg.tx_axes, dtype=torch.float64)
    geo = ap_geometry(user_positions[None], torch.zeros_like(user_positions)[None], tx_pos, tx_axes)
    d = geo.distance[0].clamp_min(cfg.reference_distance)  # [N, K]
    freq = cfg.carrier_frequency + subcarrier_frequencies(cfg)  # [Ns]
    kf = 10 ** (cfg.user_rician_factor_db / 10)
    los = steering_vectors(geo.cos_angle[0], Nt, cfg.antenna_spacing, torch.complex128)  # [N, K, Nt]
    delay = d / SPEED_OF_LIGHT
    h = math.sqrt(kf / (kf + 1)) * torch.exp(-2j * math.pi * freq[:, None, None, None] * delay[None, :, :, None]) * los
    if P > 0:
        gains = complex_normal((N, K, P), g, torch.complex128) / math.sqrt(P)
        cos_p = 2 * torch.rand((N, K, P), generator=g, dtype=torch.float64) - 1
        excess = torch.rand((N, K, P), generator=g, dtype=torch.float64) * cfg.cyclic_prefix
        a_p = steering_vectors(cos_p, Nt, cfg.antenna_spacing, torch.complex128)  # [N, K, P, Nt]
        ph = torch.exp(-2j * math.pi * freq[:, None, None, None] * (delay[..., None] + excess)[None])  # [Ns,N,K,P]
        h = h + math.sqrt(1 / (kf + 1)) * torch.einsum("snkp,nkpa->snka", ph * gains, a_p)
    pl = cfg.pathloss_ref * (d / cfg.reference_distance) ** (-cfg.pathloss_exponent)  # [N, K]
    h = h * (pl.sqrt() * math.sqrt(Nt))[None, :, :, None]  # [Ns, N, K, Nt]
    return h.permute(0, 2, 1, 3).reshape(cfg.n_subcarriers, K, N * Nt)


def communication_links(cfg: SystemConfig, scenes: Scene, seed: int) -> CommunicationLinks:
    """Draw the users' channels (stream ``users`` of each sample) and compute the MMSE precoders and SINRs."""
    if scenes.user_positions is None:
        raise ValueError("Scene.user_positions is None: the users' channels cannot be drawn")
    scenes.check(cfg, allow_outside_area=True)
    H = torch.stack([
        _user_channel(cfg, scenes.user_positions[b].cpu().double(), sample_generator(seed, d, "users"))
        for b, d in enumerate(scenes.indices.tolist())
    ])  # [B, Ns, K, NNt]
    K, N, Nt = cfg.n_users, cfg.n_tx, cfg.n_tx_antennas
    Hh = H.conj()  # rows h^H: y_k = h_k^H x
    p_sub = N * cfg.power_watt / cfg.n_frame_subcarriers
    alpha = K * cfg.user_noise_watt / p_sub
    gram = Hh @ Hh.mT.conj() + alpha * torch.eye(K, dtype=H.dtype)
    W = Hh.mT.conj() @ torch.linalg.inv(gram)  # [B, Ns, NNt, K]
    per_ap = (W.abs() ** 2).reshape(W.shape[0], cfg.n_subcarriers, N, Nt, K).sum(dim=(1, 3, 4))
    per_ap = per_ap * cfg.subcarrier_stride  # comb -> whole frame
    scale = (cfg.power_watt / per_ap.max(dim=1).values).sqrt()
    W = W * scale[:, None, None, None]
    eff = Hh @ W  # [B, Ns, K, K]: h_k^H w_l
    gain = eff.abs() ** 2
    desired = torch.diagonal(gain, dim1=-2, dim2=-1)
    interference = gain.sum(-1) - desired
    sinr = desired / (interference + cfg.user_noise_watt)
    return CommunicationLinks(
        channels=H, precoders=W, sinr=sinr, sum_rate=torch.log2(1 + sinr).sum(-1).mean(-1),
        tx_power=per_ap * scale[:, None] ** 2,
    )


def transmit_signals(
    cfg: SystemConfig, scenes: Scene, seed: int, *, dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None, links: CommunicationLinks | None = None,
) -> torch.Tensor:
    """Precoded transmit signals x_{i,n}[t] = W_{i,n} s_i[t], Eq. (3): [B, N, Nt, Ns, Ts] of complex ``dtype``.

    The 16-QAM symbols s_i[t] of sample d come from its ``symbols`` stream; pass ``links`` to reuse precoders.
    """
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
    links = communication_links(cfg, scenes, seed) if links is None else links
    s = torch.stack([
        qam16((cfg.n_subcarriers, cfg.n_symbols, cfg.n_users), sample_generator(seed, d, "symbols"))
        for d in scenes.indices.tolist()
    ])  # [B, Ns, Ts, K]
    x = torch.einsum("bipk,bitk->bpit", links.precoders.to(dtype), s.to(dtype))  # [B, NNt, Ns, Ts]
    B = x.shape[0]
    x = x.reshape(B, cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols)
    return x if device is None else x.to(device)
