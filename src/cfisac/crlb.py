"""Cramér-Rao lower bound for target locations and velocities (paper Section V-A, Eq. 22-28, Appendix A).

The bound
---------
The noiseless echo rho_{i,m}[t] of Eq. (22) is Eq. (6) without noise, exactly as :mod:`cfisac.sensing` simulates it
(absolute comb indices of :func:`cfisac.sensing.sensing_indices`, the realised transmit signals x):

    rho_{i,m}[t] = sum_n sum_q beta_{n,m,q} sqrt(PL(d_{n,m,q})) e^{j phi_{i,n,m,q}[t]}
                   * a_r(c_{m,q}) a_t^H(c_{n,q}) x_{i,n}[t]
    phi_{i,n,m,q}[t] = -2 pi i df d_{n,m,q} / c + 2 pi t dT (fc / c) v_q . (e_{n,q} + e_{m,q})

with e the unit vectors AP -> target, c_{n,q} = u_n . e_{n,q} the cosine of the angle to the array axis u_n, and
d_{n,m,q} = d_{n,q} + d_{m,q}. The Fisher information of Eq. (23) is taken over
eta = [psi, Re(beta), Im(beta)] (4Q + 2NMQ reals, psi = [g_1x, g_1y, ..., g_Qx, g_Qy, v_1x, v_1y, ..., v_Qy] as
:func:`cfisac.labels_from_scene`, beta flattened in its [N, M, Q] order), and the CRLB of psi is the Schur
complement of Eq. (24) (evaluated on the Jacobi-scaled FIM for numerical robustness).

Exact derivatives (Appendix A, corrected)
-----------------------------------------
With P_k = I - e_k e_k^T the projector orthogonal to e_k (k an AP, d_k its distance to the target):

- range:    d d_{n,m,q} / d g_q = e_{n,q} + e_{m,q}                                       (Eq. 34)
- pathloss: d log sqrt(PL) / d g_q = -zeta / (2 d_{n,m,q}) (e_{n,q} + e_{m,q})             (Eq. 33)
- angle:    d c_{k,q} / d g_q = P_k u_k / d_k = (u_k - c_{k,q} e_{k,q}) / d_k
- Doppler:  d (v_q . e_{k,q}) / d g_q = P_k v_q / d_k = (v_q - (v_q . e_{k,q}) e_{k,q}) / d_k
- phase:    d phi / d g_q = -2 pi i df / c (e_n + e_m) + 2 pi t dT fc / c (P_n v_q / d_n + P_m v_q / d_m)
            d phi / d v_q = 2 pi t dT fc / c (e_n + e_m)                                   (Eq. 39-40)
- steering: d a_r / d c = -j 2 pi (d_r / lambda) diag(0..Mr-1) a_r;
            d (a_t^H x) / d c = sum_k j 2 pi (d_t / lambda) k conj(a_t,k) x_k                 (Eq. 36, in cos)

Two slips of the paper are corrected. Eq. (35) keeps only the delay term of d phi / d g, dropping the dependence of
the Doppler on position through the directions e (the Doppler term above: at the end of the paper's 1.3 ms frame,
2 pi t dT fc |v| / (c d) is about 0.3 rad/m against 2 pi B / c = 1.3 rad/m for the delay term; dropping it moves
the root bound by a few per cent, up to ~10% for single scenes of the ``tiny`` preset). Eq. (37) is dimensionless
while d theta / d g_x has units 1/m: from cos(theta) = u . e the correct value is
d theta / d g = -(u - cos(theta) e) / (d sin(theta)), i.e. sin(theta) / d for g_x in the Fig. 2(a) layout. The
implementation differentiates with respect to cos(angle) directly, so the 1 / sin(theta) of Eq. (37) never
appears and a target on an array axis (cos = +-1, where the steering vector is stationary) gives a zero angle
derivative, not a division by zero.

Efficient evaluation
--------------------
Every derivative of rho_m is a sum of "atoms" h (x) f: an array vector h in {a_r(c_{m,q}), d a_r / d c (c_{m,q})}
times a scalar field f[i, t] from the basis {s, i s, t s, s'} per (n, q), where s_{n,m,q}[i,t] =
sqrt(PL) e^{j phi} a_t^H x and s' the same with d (a_t^H x) / d c; the coefficients (beta, kappa, the delay /
Doppler slopes, the angle derivatives) do not depend on (i, t). So the FIM is
F = 2 / xi^2 sum_m Re(C_m^H Gamma_m C_m) with Gamma_m = (array Gram) o (field Gram) over 5NQ atoms: the only
O(Ns Ts) work is the transmit beams a_t^H x and the field Gram, accumulated over chunks of subcarriers. At the
paper preset this is about 0.1 s and < 100 MB per scene (``benchmarks/bench_crlb.py``).

Clutter and clock offsets
-------------------------
``clutter="known"``: the scatterers of Eq. (29) are known interference. They add a known term to rho that depends
on no parameter of eta, so the FIM (and the bound) is exactly that of the clutter-free scene. ``clutter="nuisance"``:
each scatterer's position, its velocity (only when ``cfg.clutter_moving``; static clutter has known zero velocity)
and its coefficients beta~_{n,m,s} are unknown nuisance parameters appended to eta (after the paper's
4Q + 2NMQ entries, in the order [g~, v~ (if moving), Re beta~, Im beta~]) and eliminated by the Schur complement.

``clock="ignored"``: the bound of the synchronised system (Eq. 6), whatever offsets the scene holds.
``clock="known"``: the realised offsets of Eq. (30) (as :mod:`cfisac.sensing` applies them) are known phase factors.
Treating them as unknown nuisance is not offered: Eq. (30) draws an independent timing and frequency offset per
(n, m, t), which absorbs every delay slope and every symbol-to-symbol phase, so the velocities become unidentifiable
and the FIM is singular.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Literal

import torch

from .config import SPEED_OF_LIGHT, SystemConfig
from .geometry import bistatic_geometry, steering_vectors
from .scene import Scene
from .sensing import check_transmit_signals, sensing_indices

__all__ = [
    "SingularFisherError", "average_root_crlb", "crlb", "fisher_information", "parameter_names", "root_crlb",
]

DEFAULT_CHUNK_BYTES = 2**25  # bytes of the field tensor per chunk of subcarriers (32 MiB)
DEFAULT_RCOND = 1e-10  # smallest eigenvalue ratio accepted for the Jacobi-scaled FIM


class SingularFisherError(ValueError):
    """The FIM of scene ``scene`` is singular or ill-conditioned; ``reason`` says which parameters and why."""

    def __init__(self, scene: int, reason: str) -> None:
        super().__init__(f"scene {scene}: the Fisher information is singular or ill-conditioned: {reason}")
        self.scene = scene
        self.reason = reason


# ---------------------------------------------------------------------------------------------- parameter layout
def _layout(cfg: SystemConfig, n_clutter: int, clutter_velocity: bool) -> dict[str, torch.Tensor | int]:
    """Indices into eta of every reflector's position / velocity (-1: known) and of Re / Im beta [N, M, P]."""
    Q, S, N, M = cfg.n_targets, n_clutter, cfg.n_tx, cfg.n_rx
    P = Q + S
    g_idx = torch.empty(P, 2, dtype=torch.int64)
    v_idx = torch.full((P, 2), -1, dtype=torch.int64)
    re_idx = torch.empty(N, M, P, dtype=torch.int64)
    im_idx = torch.empty(N, M, P, dtype=torch.int64)
    g_idx[:Q] = torch.arange(2 * Q).reshape(Q, 2)
    v_idx[:Q] = 2 * Q + torch.arange(2 * Q).reshape(Q, 2)
    nb = N * M * Q
    re_idx[:, :, :Q] = 4 * Q + torch.arange(nb).reshape(N, M, Q)
    im_idx[:, :, :Q] = 4 * Q + nb + torch.arange(nb).reshape(N, M, Q)
    k = 4 * Q + 2 * nb
    if S:
        g_idx[Q:] = k + torch.arange(2 * S).reshape(S, 2)
        k += 2 * S
        if clutter_velocity:
            v_idx[Q:] = k + torch.arange(2 * S).reshape(S, 2)
            k += 2 * S
        nc = N * M * S
        re_idx[:, :, Q:] = k + torch.arange(nc).reshape(N, M, S)
        im_idx[:, :, Q:] = k + nc + torch.arange(nc).reshape(N, M, S)
        k += 2 * nc
    return {"g": g_idx, "v": v_idx, "re": re_idx, "im": im_idx, "size": k}


def parameter_names(cfg: SystemConfig, *, n_clutter: int = 0, clutter_velocity: bool = False) -> list[str]:
    """Names of the entries of eta in the order of :func:`fisher_information` (targets 0-based, beta[n,m,q])."""
    lay = _layout(cfg, n_clutter, clutter_velocity)
    names = [""] * int(lay["size"])
    Q = cfg.n_targets
    for p in range(Q + n_clutter):
        who = f"{p}" if p < Q else f"~{p - Q}"  # clutter scatterers are ~s
        for k, ax in enumerate("xy"):
            names[int(lay["g"][p, k])] = f"g_{who}{ax}"
            if int(lay["v"][p, k]) >= 0:
                names[int(lay["v"][p, k])] = f"v_{who}{ax}"
        for n in range(cfg.n_tx):
            for m in range(cfg.n_rx):
                b = "beta" if p < Q else "beta~"
                q = p if p < Q else p - Q
                names[int(lay["re"][n, m, p])] = f"Re {b}[{n},{m},{q}]"
                names[int(lay["im"][n, m, p])] = f"Im {b}[{n},{m},{q}]"
    return names


# ---------------------------------------------------------------------------------------------- the FIM
def _check_options(clutter: str, clock: str, chunk_subcarriers: int | None) -> None:
    if clutter not in ("known", "nuisance"):
        raise ValueError(f"clutter must be 'known' or 'nuisance', got {clutter!r}")
    if clock == "nuisance":
        raise ValueError(
            "clock='nuisance' is not supported: Eq. (30) draws independent offsets per (n, m, t), which absorb every "
            "delay slope and symbol-to-symbol phase, so the velocities are unidentifiable (singular FIM); "
            "use clock='ignored' (synchronised bound) or clock='known'"
        )
    if clock not in ("ignored", "known"):
        raise ValueError(f"clock must be 'ignored' or 'known', got {clock!r}")
    if chunk_subcarriers is not None and (
        not isinstance(chunk_subcarriers, int) or isinstance(chunk_subcarriers, bool) or chunk_subcarriers <= 0
    ):
        raise ValueError(f"chunk_subcarriers must be a positive integer or None, got {chunk_subcarriers!r}")


def _reflectors(cfg: SystemConfig, scenes: Scene, clutter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Positions, velocities [B, P, 2] and beta [B, N, M, P] of the reflectors carrying parameters; S clutter."""
    has_clutter = scenes.clutter_positions is not None and scenes.clutter_positions.shape[1] > 0
    if clutter == "known" or not has_clutter:
        return scenes.positions, scenes.velocities, scenes.reflection, 0
    return (
        torch.cat([scenes.positions, scenes.clutter_positions], 1),
        torch.cat([scenes.velocities, scenes.clutter_velocities], 1),
        torch.cat([scenes.reflection, scenes.clutter_reflection], 3),
        scenes.clutter_positions.shape[1],
    )


def fisher_information(
    cfg: SystemConfig, scenes: Scene, x: torch.Tensor, *, clutter: Literal["known", "nuisance"] = "known",
    clock: Literal["ignored", "known"] = "ignored", chunk_subcarriers: int | None = None,
    allow_outside_area: bool = False,
) -> torch.Tensor:
    """The FIM of Eq. (23) over eta = [psi, Re(beta), Im(beta)] (+ clutter nuisance): [B, D, D] float64.

    ``x`` [B, N, Nt, Ns, Ts] complex (64 or 128; computed in complex128 on x's device). ``D = 4Q + 2NMQ`` and, with
    ``clutter="nuisance"``, ``+ 2S (+ 2S if cfg.clutter_moving) + 2NMS`` in the order of :func:`parameter_names`.
    The sums over (i, t) are accumulated over chunks of ``chunk_subcarriers`` subcarriers (default: chunks whose
    field tensor stays under 32 MiB).
    """
    _check_options(clutter, clock, chunk_subcarriers)
    scenes.check(cfg, allow_outside_area=allow_outside_area)
    check_transmit_signals(cfg, x, scenes.batch_size)
    dev = x.device
    f64, c128 = torch.float64, torch.complex128
    pos, vel, beta, S = _reflectors(cfg, scenes, clutter)
    pos, vel, beta = pos.to(dev, f64), vel.to(dev, f64), beta.to(dev, c128)
    lay = _layout(cfg, S, cfg.clutter_moving)
    B, P = pos.shape[:2]
    N, M, Nt, Mr = cfg.n_tx, cfg.n_rx, cfg.n_tx_antennas, cfg.n_rx_antennas
    Ns, Ts = cfg.n_subcarriers, cfg.n_symbols
    c0, fc, df, dT = SPEED_OF_LIGHT, cfg.carrier_frequency, cfg.subcarrier_spacing, cfg.symbol_duration
    sp, zeta = cfg.antenna_spacing, cfg.pathloss_exponent

    # ---- geometry and its derivatives (exact; see the module docstring)
    geo = bistatic_geometry(cfg, pos, vel)
    tx_axes = torch.tensor(cfg.tx_axes, dtype=f64, device=dev)[None, :, None, :]
    rx_axes = torch.tensor(cfg.rx_axes, dtype=f64, device=dev)[None, :, None, :]
    e_n, e_m = geo.tx.direction, geo.rx.direction  # [B, N, P, 2], [B, M, P, 2]
    d_n, d_m = geo.tx.distance[..., None], geo.rx.distance[..., None]
    dc_n = (tx_axes - geo.tx.cos_angle[..., None] * e_n) / d_n  # d cos / d g: [B, N, P, 2]
    dc_m = (rx_axes - geo.rx.cos_angle[..., None] * e_m) / d_m  # [B, M, P, 2]
    dvr_n = (vel[:, None] - geo.tx.radial_velocity[..., None] * e_n) / d_n  # d (v.e) / d g
    dvr_m = (vel[:, None] - geo.rx.radial_velocity[..., None] * e_m) / d_m
    e_sum = e_n[:, :, None] + e_m[:, None]  # d d_{n,m} / d g: [B, N, M, P, 2]
    kappa = -zeta / (2 * geo.bistatic_range[..., None]) * e_sum  # d log sqrt(PL) / d g
    slope_i = (-2 * math.pi * df / c0) * e_sum  # d phi / d g, coefficient of i
    slope_t = (2 * math.pi * dT * fc / c0) * (dvr_n[:, :, None] + dvr_m[:, None])  # coefficient of t
    slope_v = (2 * math.pi * dT * fc / c0) * e_sum  # d phi / d v, coefficient of t

    # ---- coefficients C [B, M, A, D] of every d rho_m / d eta_a on the atoms:
    # atoms (p, n, k) with k = 0: a_r s, 1: a_r i s, 2: a_r t s, 3: a_r s'  (4NP of them), then (p, n): a_r' s (NP)
    D = int(lay["size"])
    A0 = 4 * N * P
    C = torch.zeros(B, M, A0 + N * P, D, dtype=c128, device=dev)
    C0 = C[:, :, :A0].view(B, M, P, N, 4, D)
    C1 = C[:, :, A0:].view(B, M, P, N, D)
    bt = beta.permute(0, 2, 3, 1)  # [B, M, P, N]
    g_idx, v_idx, re_idx, im_idx = lay["g"], lay["v"], lay["re"], lay["im"]
    for p in range(P):
        b_p = bt[:, :, p]  # [B, M, N]
        for k in range(2):
            gi = int(g_idx[p, k])
            C0[:, :, p, :, 0, gi] = b_p * kappa[:, :, :, p, k].transpose(1, 2)
            C0[:, :, p, :, 1, gi] = 1j * b_p * slope_i[:, :, :, p, k].transpose(1, 2)
            C0[:, :, p, :, 2, gi] = 1j * b_p * slope_t[:, :, :, p, k].transpose(1, 2)
            C0[:, :, p, :, 3, gi] = b_p * dc_n[:, None, :, p, k]
            C1[:, :, p, :, gi] = b_p * dc_m[:, :, p, k, None]
            vi = int(v_idx[p, k])
            if vi >= 0:
                C0[:, :, p, :, 2, vi] = 1j * b_p * slope_v[:, :, :, p, k].transpose(1, 2)
        for n in range(N):
            for m in range(M):
                C0[:, m, p, n, 0, int(re_idx[n, m, p])] = 1.0
                C0[:, m, p, n, 0, int(im_idx[n, m, p])] = 1j

    # ---- field Gram sum_{i,t} conj(f_a) f_b over the basis {s, i s, t s, s'} per (m; p, n), chunked over i
    i_all, t_idx = sensing_indices(cfg, dev)
    sqrt_pl = math.sqrt(cfg.pathloss_ref) * (geo.bistatic_range / cfg.reference_distance) ** (-zeta / 2)
    a_t = steering_vectors(geo.tx.cos_angle, Nt, sp, c128)  # [B, N, P, Nt]
    kk_t = (2j * math.pi * sp) * torch.arange(Nt, dtype=f64, device=dev)
    beam_w = torch.stack([a_t.conj(), a_t.conj() * kk_t], 3).reshape(B, N, 2 * P, Nt)  # a_t^H and d/dc
    dop = torch.polar(torch.ones((), dtype=f64, device=dev), 2 * math.pi * dT * geo.doppler[..., None] * t_idx)
    clock_phase = None
    if clock == "known" and (scenes.timing_offsets is not None or scenes.frequency_offsets is not None):
        zeros = torch.zeros(B, N, M, Ts, dtype=f64, device=dev)
        to = zeros if scenes.timing_offsets is None else scenes.timing_offsets.to(dev, f64)
        fo = zeros if scenes.frequency_offsets is None else scenes.frequency_offsets.to(dev, f64)
    per_subcarrier = B * N * M * P * 4 * Ts * 16
    step = chunk_subcarriers or max(1, DEFAULT_CHUNK_BYTES // per_subcarrier)
    gram = torch.zeros(B, M, A0, A0, dtype=c128, device=dev)
    for i0 in range(0, Ns, step):
        i1 = min(Ns, i0 + step)
        ic = i_all[i0:i1]
        xc = x[:, :, :, i0:i1, :].to(c128).reshape(B, N, Nt, (i1 - i0) * Ts)
        beams = (beam_w @ xc).view(B, N, P, 2, i1 - i0, Ts)  # a_t^H x and its cos-derivative
        delay = torch.polar(torch.ones((), dtype=f64, device=dev), -2 * math.pi * df * geo.delay[..., None] * ic)
        ph = sqrt_pl[..., None, None] * delay[..., :, None] * dop[..., None, :]  # [B, N, M, P, Ic, Ts]
        if clock == "known" and (scenes.timing_offsets is not None or scenes.frequency_offsets is not None):
            clock_phase = torch.polar(
                torch.ones((), dtype=f64, device=dev),
                -2 * math.pi * df * to[:, :, :, None, :] * ic[:, None] + 2 * math.pi * dT * fo[:, :, :, None, :],
            )  # [B, N, M, Ic, Ts]
            ph = ph * clock_phase[:, :, :, None]
        s = ph * beams[:, :, None, :, 0]
        fields = torch.stack([s, s * ic[:, None], s * t_idx, ph * beams[:, :, None, :, 1]], 4)  # [B,N,M,P,4,Ic,Ts]
        fields = fields.permute(0, 2, 3, 1, 4, 5, 6).reshape(B, M, A0, (i1 - i0) * Ts)
        gram += fields.conj() @ fields.mT
        del beams, delay, ph, s, fields, xc

    # ---- atom Gram: array Gram (a_r, a_r') o field Gram
    a_r = steering_vectors(geo.rx.cos_angle, Mr, sp, c128)  # [B, M, P, Mr]
    kk_r = (-2j * math.pi * sp) * torch.arange(Mr, dtype=f64, device=dev)
    h = torch.stack([a_r, a_r * kk_r], 3)  # [B, M, P, 2, Mr]
    hg = torch.einsum("bmphr,bmqgr->bmphqg", h.conj(), h)  # [B, M, P, 2, P, 2]
    g8 = gram.view(B, M, P, N, 4, P, N, 4)
    g0 = g8[..., 0].reshape(B, M, A0, P, N)  # rows: all atoms, columns: the s field of (p', n')
    A = A0 + N * P
    Gam = torch.empty(B, M, A, A, dtype=c128, device=dev)
    Gam[:, :, :A0, :A0] = (hg[:, :, :, 0, None, None, :, 0, None, None] * g8).reshape(B, M, A0, A0)
    top_right = hg[:, :, :, 0, None, None, :, 1, None] * g0.view(B, M, P, N, 4, P, N)
    Gam[:, :, :A0, A0:] = top_right.reshape(B, M, A0, N * P)
    Gam[:, :, A0:, :A0] = Gam[:, :, :A0, A0:].mH
    g00 = g8[:, :, :, :, 0, :, :, 0]  # [B, M, P, N, P, N]
    Gam[:, :, A0:, A0:] = (hg[:, :, :, 1, None, :, 1, None] * g00).reshape(B, M, N * P, N * P)

    F = (C.mH @ Gam @ C).real.sum(1) * (2.0 / cfg.noise_watt)
    return 0.5 * (F + F.mT)


# ---------------------------------------------------------------------------------------------- the CRLB
def _diagnose(cfg: SystemConfig, scenes: Scene, b: int, names: list[str], null: torch.Tensor, why: str) -> str:
    """A human-readable reason: the parameters spanning the (near) null space and the geometric causes found."""
    w = null.abs()
    top = [names[j] for j in torch.argsort(w, descending=True).tolist() if w[j] > 0.25 * w.max()][:6]
    parts = [f"{why}; no information on the combination of {', '.join(top)}"]
    pos = scenes.positions[b].double().cpu()
    vel = scenes.velocities[b].double().cpu()
    Q = pos.shape[0]
    for q in range(Q):
        for r in range(q + 1, Q):
            if float(torch.linalg.vector_norm(pos[q] - pos[r])) < 1e-3:
                parts.append(f"targets {q} and {r} coincide (distance < 1 mm): their echoes are indistinguishable")
    geo = bistatic_geometry(cfg, pos[None], vel[None])
    for kind, ap in (("transmit", geo.tx), ("receive", geo.rx)):
        on_axis = (ap.cos_angle[0].abs() > 1 - 1e-6).nonzero().tolist()
        for a, q in on_axis:
            parts.append(
                f"target {q} lies on the array axis of {kind} AP {a} (cos = +-1, where the steering vector is "
                "stationary in angle: that AP gives no angle information)"
            )
    if cfg.n_tx * cfg.n_rx == 1:
        parts.append("a single transmit/receive AP pair observes only one component of each velocity")
    return "; ".join(parts)


def crlb(
    cfg: SystemConfig, scenes: Scene, x: torch.Tensor, *, clutter: Literal["known", "nuisance"] = "known",
    clock: Literal["ignored", "known"] = "ignored", chunk_subcarriers: int | None = None,
    rcond: float = DEFAULT_RCOND, singular: Literal["raise", "nan"] = "raise", allow_outside_area: bool = False,
) -> torch.Tensor:
    """CRLB of psi = [g; v] per scene, Eq. (24): [B, 4Q, 4Q] float64 (m^2, m^2/s, m^2/s^2 blocks).

    ``scenes`` a :class:`cfisac.Scene` batch, ``x`` [B, N, Nt, Ns, Ts] complex the realised transmit signals of
    Eq. (3). Diagonal entries are the bounds of Eq. (25)-(28) (psi ordered as :func:`cfisac.labels_from_scene`).
    ``clutter`` / ``clock``: see the module docstring. Raises :class:`SingularFisherError` (a ``ValueError``) naming
    the scene and the unidentifiable parameters when the Jacobi-scaled FIM has an eigenvalue ratio below
    ``rcond`` (e.g. coincident targets, a single AP pair, every AP seeing a target on its array axis); with
    ``singular="nan"`` such scenes get a NaN bound instead (for experiments over many scenes).
    """
    if not (isinstance(rcond, (int, float)) and 0 < rcond < 1):
        raise ValueError(f"rcond must be in (0, 1), got {rcond!r}")
    if singular not in ("raise", "nan"):
        raise ValueError(f"singular must be 'raise' or 'nan', got {singular!r}")
    F = fisher_information(cfg, scenes, x, clutter=clutter, clock=clock, chunk_subcarriers=chunk_subcarriers,
                           allow_outside_area=allow_outside_area)
    B, D = F.shape[:2]
    k = 4 * cfg.n_targets
    diag = torch.diagonal(F, dim1=-2, dim2=-1)
    n_clutter = 0 if clutter == "known" or scenes.clutter_positions is None else scenes.clutter_positions.shape[1]
    names = None
    scale = diag.clamp_min(torch.finfo(F.dtype).tiny).sqrt()
    Fs = F / (scale[:, :, None] * scale[:, None, :])  # Jacobi scaling: unit diagonal
    evals, evecs = torch.linalg.eigh(Fs)
    bad = (diag <= 0).any(1) | (evals[:, 0] < rcond * evals[:, -1])
    if singular == "nan" and bool(bad.any()):
        Fs = torch.where(bad[:, None, None], torch.eye(D, dtype=F.dtype, device=F.device), Fs)
    for b in (bad.nonzero().flatten().tolist() if singular == "raise" else []):
        names = names or parameter_names(cfg, n_clutter=n_clutter, clutter_velocity=cfg.clutter_moving)
        zero = (diag[b] <= 0).nonzero().flatten().tolist()
        if zero:
            null = torch.zeros(D, dtype=F.dtype)
            null[zero] = 1.0
            why = "zero information on " + ", ".join(names[j] for j in zero)
        else:
            null = evecs[b, :, 0].cpu()
            why = f"smallest/largest eigenvalue of the scaled FIM {float(evals[b, 0] / evals[b, -1]):.1e}"
        raise SingularFisherError(b, _diagnose(cfg, scenes, b, names, null, why))
    # Eq. (24) on the scaled FIM: (F_pp - F_pn F_nn^-1 F_np)^-1, then undo the scaling.
    Fpp, Fpn, Fnn = Fs[:, :k, :k], Fs[:, :k, k:], Fs[:, k:, k:]
    if D > k:
        L = torch.linalg.cholesky(Fnn)
        W = torch.cholesky_solve(Fpn.mT, L)
        J = Fpp - Fpn @ W
    else:
        J = Fpp
    J = 0.5 * (J + J.mT)
    Lj, info = torch.linalg.cholesky_ex(J)
    if bool((info != 0).any()):
        b = int((info != 0).nonzero()[0])
        raise SingularFisherError(b, "the Schur complement of Eq. (24) is not positive definite")
    eye = torch.eye(k, dtype=F.dtype, device=F.device).expand(B, k, k)
    bound = torch.cholesky_solve(eye, Lj) / (scale[:, :k, None] * scale[:, None, :k])
    bound = 0.5 * (bound + bound.mT)
    return torch.where(bad[:, None, None], torch.nan, bound) if singular == "nan" else bound


def _check_bound(bound: torch.Tensor) -> int:
    if not isinstance(bound, torch.Tensor) or bound.dim() != 3 or bound.shape[1] != bound.shape[2] \
            or bound.shape[1] % 4 != 0 or bound.shape[1] == 0:
        raise ValueError(f"bound must be a [B, 4Q, 4Q] tensor, got {getattr(bound, 'shape', type(bound))}")
    return bound.shape[1] // 4


def root_crlb(bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root-CRLB per scene in the units of the RMSE: position (m) and velocity (m/s), each [B] float64.

    position = sqrt(mean_q (CRLB[g_qx, g_qx] + CRLB[g_qy, g_qy])) (Eq. 25 + 26), velocity likewise (Eq. 27 + 28):
    the bound on the RMSE of :func:`cfisac.metrics.accuracy` for that scene.
    """
    Q = _check_bound(bound)
    d = torch.diagonal(bound, dim1=-2, dim2=-1)
    pos = d[:, : 2 * Q].reshape(-1, Q, 2).sum(-1).mean(-1).sqrt()
    vel = d[:, 2 * Q:].reshape(-1, Q, 2).sum(-1).mean(-1).sqrt()
    return pos, vel


def average_root_crlb(bound: torch.Tensor) -> tuple[float, float]:
    """Root-CRLB over a batch averaged like the RMSE: sqrt(mean over scenes and targets of CRLB_xx + CRLB_yy).

    Returns (position m, velocity m/s): the bound on ``AccuracyReport.position_rmse`` / ``velocity_rmse`` of an
    unbiased estimator over the same scenes.
    """
    pos, vel = root_crlb(bound)
    return float(pos.pow(2).mean().sqrt()), float(vel.pow(2).mean().sqrt())


class _CallableModule(types.ModuleType):
    """``cfisac.crlb`` is this module once imported (the import system binds it on the package, shadowing the
    lazy ``cfisac.crlb`` -> :func:`crlb` export): calling the module calls :func:`crlb`, so ``cfisac.crlb(cfg,
    scenes, x)`` and ``cfisac.crlb.root_crlb`` both work whichever import happened first."""

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return crlb(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
