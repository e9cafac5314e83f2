"""A near-CRLB estimator: per-AP maximum likelihood plus Fisher-weighted fusion at the CPU (beyond the paper).

Registered as ``"ml"`` (``create("ml", cfg)``: the distributed scheme, ``joint=False``) and ``"ml-joint"``
(``joint=True``: the same plus a centralized maximum-likelihood refinement on the raw echoes of every AP).

What each receive AP knows
--------------------------
Like the classical baselines (:mod:`.signal_processing`), the receive AP is assumed to know the transmit signals
X (data symbols and precoders); the paper's own D-VQVAE receive APs do not (DESIGN.md, "Known slips").

The exact likelihood (Eq. 6)
----------------------------
White Gaussian noise makes the ML estimate the least-squares fit of Eq. (6). At receive AP m every path
p = (n, q) (transmit AP n, target q) contributes

    alpha_p a_r(u_p) (x) s_p,      s_p[i, t] = e^{-j 2 pi i df d_p / c} e^{+j 2 pi t dT f_p} a_t^H(w_p) x_{i,n}[t]

with ``u_p`` the AoA cosine, ``d_p = c tau_p`` the bistatic range, ``f_p`` the bistatic Doppler (Hz), ``w_p`` the
AoD cosine and ``alpha_p = beta sqrt(PL)`` a free complex gain, at the absolute comb indices ``i``, ``t`` of
:func:`cfisac.sensing.sensing_indices`. The pathloss is absorbed into the free gain (a one-to-one
reparametrisation of beta). Gains enter linearly and are eliminated by variable projection: the estimator
maximises the explained energy ``y^H S (S^H S)^-1 S^H y`` over the nonlinear parameters by Levenberg-Marquardt
with the Kaufman Jacobian, in float64, with steps limited to half a resolution cell (a trust region: refinement
stays local). At the true parameters ``2 / xi^2`` times the Gauss-Newton matrix is exactly the Fisher information
with the gains eliminated by the Schur complement, i.e. Eq. (24) (checked against :func:`cfisac.crlb` in the
tests). Every path signature and its derivatives are "atoms" ``h (x) F`` (``h`` in {a_r, d a_r / du}, ``F`` in
{s, i s, t s, ds/dw}), so Gram matrices are Hadamard products of small array and field Grams (the factorisation
of :mod:`cfisac.crlb`): one iteration costs O(P (Mr + Nt) Ns Ts + (4P)^2 Ns Ts) per AP for P paths.

Per-AP parametrisation (identifiability)
----------------------------------------
Both transmit APs' echoes overlap at every receive AP, so the per-AP model contains all N Q paths. Per target q the
AP estimates ``theta_q = [g_x, g_y, f_0 .. f_{N-1}]``: a local position and the N bistatic Dopplers (2 + N reals),
plus N complex gains. The AoA, the N bistatic delays and the N AoDs are the exact functions of g of Eq. (7)-(11),
so this is Eq. (6) restricted to AP m without relaxation, identifiable for any N >= 1 (AoA and one delay fix g;
each path adds a Doppler) except where every detected path of the target is forward scatter (target on a
transmit-receive baseline: delay, AoD, AoA and Doppler are constant along it); there the AP's position is
unreliable and the CPU's mixture fusion (below) treats it as an outlier when another AP disagrees.
The per-AP bistatic parameters the issue names (AoA, delay per transmit AP) follow from g. A relaxed form with a
free delay per path and the AoD tied to the ray-ellipse intersection was tried first and abandoned: near a
bistatic baseline the ray grazes the thin ellipse, the map (AoA, delay) -> point is ill-conditioned and the tied
AoD sweeps the transmit pattern's nulls on a metre scale, leaving the likelihood full of spurious maxima.

Because theta_m is a smooth function ``h_m(psi)`` and the AP's model depends on psi only through it, the Fisher
information of psi is ``sum_m H_m^T J_m H_m`` with ``J_m`` the per-AP FIM (gains eliminated): fusing with ``J_m``
as the weight is asymptotically efficient (two-step / invariance argument).

Per-AP algorithm (vectorised over scenes and APs)
--------------------------------------------------
1. Coarse search on an adaptive position grid (spacing half a range cell, refined near the APs where angles vary
   fast with position, see ``_grid``): for every point g and transmit AP n, the receive beam towards g, the
   symbols removed by the matched filter of the transmit beam towards g, a zero-padded DFT over subcarriers read
   at the range bin of d_n(g), a zero-padded DFT over symbols, the best Doppler, GLRT-normalised by the transmit
   beam energy. Peaks are taken from two statistics: the sum over n (non-coherent over a target's N paths) and
   the max over n. Both transmit APs send the same user symbols (cell-free joint transmission), so a strong path
   of one transmit AP also excites the other's matched filter wherever the delays match: the sum can count one
   path twice and peak metres away from the target, the max cannot.
2. Likelihood check and retries: the ``n_candidates`` best peaks of each statistic (non-maximum suppression over a
   range cell, at least 30 % of the list's best) are refined as single targets on the residual by LM; each is
   refined a second time after a global re-search of its N Dopplers at the refined position (coordinate ascent
   on the exact N-path likelihood, cross terms included: a candidate found through one strong path may carry a
   noise Doppler for the others, and LM steps cannot cross Doppler sidelobes); the most likely result is kept.
   Then a second coarse search with the winner's strongest path cancelled, whose candidates compete again on the
   same residual with all paths: a target on a transmit-receive baseline has a dominant forward-scatter path that
   ranks the whole baseline alike (and leaks into the other transmit AP's matched filter), so every first-stage
   candidate may sit metres away on the baseline, a local maximum LM cannot leave (``_search``).
3. Successive cancellation: target by target on the residual, then a joint LM over all targets found so far.
4. RELAX rounds (Q > 1): each target is searched again (grid + candidates, its current value competing) with the
   others cancelled; a round is kept only where the joint likelihood increased.
5. Model-order selection (two-level GLRT): a target slot is detected when its strongest path's GLRT statistic
   (drop of the explained energy when it alone is removed, over xi^2; Exp(1) under noise) reaches
   ``detection_threshold`` (default ``log(cells / false_alarm)``, the level a noise peak maximised over the
   search's resolution cells exceeds with probability ``false_alarm``); a further path of a detected slot only
   needs ``path_threshold`` (default ``log(Doppler cells / false_alarm)``: its delay, AoA and AoD follow from the
   target's position, only its Doppler is searched). Paths below leave the model and the rest is refined again.
   With a single search-wide threshold, real paths at 10-13 dB were dropped and the re-refinement then rested on
   fewer paths (a forward-scatter path alone does not fix the position): the main source of the distributed
   variant's gross errors at quick Q = 2 (benchmarks/results/ml.md). Undetected paths are sent as NaN (no extra
   bits).

Message (float32): per target ``g_x, g_y, f_{0..N-1}, Re/Im alpha_{0..N-1}``: ``32 (2 + 3N) Q`` bits per AP and
update (256 Q for N = 2; the paper's fully distributed count is 96 Q). The CPU knows X, so it recomputes
``J_m`` from the message (no y needed).

CPU fusion
----------
Target slots are associated across APs (Hungarian on the local positions), then each target's psi maximises a
Gaussian / uniform mixture likelihood of its messages (an AP's message is either an inlier with covariance
``J^-1`` or an outlier uniform over the area and the Doppler span), solved exactly by bounded weighted least
squares on every inlier subset of APs; the association is redone on whitened distances and the fusion repeated.
Positions are bounded to the area and velocities to the prior box, as for the classical baselines.

``joint=True`` adds the centralized ML: LM on psi over the raw echoes of all APs (gains per (n, m, q)
eliminated), started from the fused psi, from every AP's local estimate and from the peaks of the CPU's own coarse
search (the per-AP statistics summed over APs on the common grid: all N M paths non-coherently); the start
reaching the highest likelihood wins (the CPU's likelihood check). Its fronthaul is the centralized one,
``64 Mr Ns Ts`` bits per AP.

Targets close in every domain
-----------------------------
When two targets share an AoA beam, a range cell and a Doppler cell at every AP, the grid shows one peak; the
second detection then locks on the residual of the pair or on noise, the joint LM pulls the two estimates into the
pair's cell, and the gains' Gram matrix becomes nearly singular (it is regularised, never NaN). Both estimates end
up near the pair (within the area and the speed box), or one of them elsewhere on noise; the CRLB there is itself
huge or singular. Targets separated in any one domain (angle, range or Doppler at some AP) are resolved.

Limits: the threshold effect. The CRLB is a small-error bound; when a target's paths are too weak to be detected
(per-path SNR below ~12 dB), errors are outliers over the area and the RMSE leaves the bound by orders of magnitude
(on the ``quick`` preset this is the regime up to about 40 dBm; see ``benchmarks/results/ml.md``). Clutter (Eq. 29)
and clock offsets (Eq. 30) are not in the likelihood (model mismatch when the scenes carry them). A single
transmit/receive AP pair cannot identify the velocity vector: ``N M = 1`` is refused.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import least_squares, linear_sum_assignment

from ..config import SPEED_OF_LIGHT, SystemConfig
from ..sensing import check_transmit_signals, sensing_indices
from . import Estimate, register

__all__ = ["ApMessages", "MLEstimate", "MLEstimator", "PathSystem", "path_system"]

TWO_PI = 2.0 * math.pi
F64, C128, C64 = torch.float64, torch.complex128, torch.complex64
_CANDIDATE_RATIO = 0.3  # coarse peaks below this fraction of the best are not refined (straddle loss < 5 dB)
_AP_CLEARANCE = 1.0  # m: positions are kept this far from every AP (angles are undefined at an AP)
_CHUNK_BYTES = 2**26  # working-set target of one chunk (64 MiB)


# ================================================================================================ geometry
class _Geometry:
    """AP positions / axes as float64 tensors and the constants of the comb (on ``device``)."""

    def __init__(self, cfg: SystemConfig, device: torch.device | str = "cpu") -> None:
        kw = dict(dtype=F64, device=device)
        self.cfg = cfg
        self.device = torch.device(device)
        self.tx = torch.tensor(cfg.tx_positions, **kw)  # [N, 2]
        self.rx = torch.tensor(cfg.rx_positions, **kw)  # [M, 2]
        self.tx_axes = torch.tensor(cfg.tx_axes, **kw)
        self.rx_axes = torch.tensor(cfg.rx_axes, **kw)
        (x0, x1), (y0, y1) = cfg.area
        self.lower = torch.tensor([x0, y0], **kw)
        self.upper = torch.tensor([x1, y1], **kw)
        self.i_abs, self.t_abs = (v.to(device) for v in sensing_indices(cfg))
        self.df, self.dT = cfg.subcarrier_spacing, cfg.symbol_duration
        self.kf = cfg.carrier_frequency / SPEED_OF_LIGHT  # bistatic Doppler per m/s of v . (e_n + e_m)
        self.sp = cfg.antenna_spacing
        res = cfg.resolution()
        self.range_res = res["range_resolution_m"]
        self.doppler_res = res["doppler_resolution_hz"]
        self.f_amb = res["unambiguous_doppler_hz"]
        self.f_max = min(res["max_doppler_hz"] + self.doppler_res, self.f_amb)
        self.d_max = cfg.max_bistatic_range() + self.range_res

    def project_position(self, g: torch.Tensor) -> torch.Tensor:
        """Clamp positions [..., 2] to the area, then push them radially to at least ``_AP_CLEARANCE`` from
        every AP (at an AP the angles and their derivatives are undefined)."""
        g = torch.maximum(torch.minimum(g, self.upper), self.lower)
        for ap in torch.cat([self.tx, self.rx]):
            diff = g - ap
            dist = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
            inward = self.lower + self.upper - 2 * ap  # away from the AP, into the area
            safe = torch.where(dist > 1e-12, diff / dist.clamp_min(1e-12), inward / torch.linalg.vector_norm(inward))
            g = torch.where(dist < _AP_CLEARANCE, ap + _AP_CLEARANCE * safe, g)
        return torch.maximum(torch.minimum(g, self.upper), self.lower)

    def steer(self, u: torch.Tensor, n: int, dtype: torch.dtype = C128) -> torch.Tensor:
        """Eq. (1)-(2) steering vectors [..., n] for cosines ``u`` [...] (float64)."""
        k = torch.arange(n, dtype=F64, device=u.device)
        return (torch.polar(torch.ones((), dtype=F64, device=u.device), -TWO_PI * self.sp * u[..., None] * k)
                / math.sqrt(n)).to(dtype)

    def local_paths(self, m: torch.Tensor, theta: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Per-AP parametrisation: ``theta`` [L, Q, 2 + N] (local position g_x, g_y and the N bistatic Dopplers of
        each target, seen from receive AP ``m`` [L]) -> path geometry (u_rx, d, f, w) each [L, Q N] (path
        p = q N + n) and its Jacobian [L, Q N, 4, Q (2 + N)] (rows: u_rx, d, f, w). Eq. (7)-(11) exactly."""
        L, Q, K1 = theta.shape
        N = K1 - 2
        g = theta[..., :2]
        dm_vec = g - self.rx[m][:, None, :]  # [L, Q, 2]
        dm = torch.linalg.vector_norm(dm_vec, dim=-1).clamp_min(1e-9)
        em = dm_vec / dm[..., None]
        dn_vec = g[:, :, None, :] - self.tx  # [L, Q, N, 2]
        dn = torch.linalg.vector_norm(dn_vec, dim=-1).clamp_min(1e-9)
        en = dn_vec / dn[..., None]
        ax_m = self.rx_axes[m][:, None, :]
        u = (em * ax_m).sum(-1)  # [L, Q]
        w = (en * self.tx_axes).sum(-1)  # [L, Q, N]
        du = (ax_m - u[..., None] * em) / dm[..., None]  # [L, Q, 2]
        dw = (self.tx_axes - w[..., None] * en) / dn[..., None]  # [L, Q, N, 2]
        dd = en + em[:, :, None]  # [L, Q, N, 2]
        P = Q * N
        geom = (u[..., None].expand(L, Q, N).reshape(L, P), (dn + dm[..., None]).reshape(L, P),
                theta[..., 2:].reshape(L, P), w.reshape(L, P))
        jac = torch.zeros(L, Q, N, 4, Q, K1, dtype=F64, device=theta.device)
        for q in range(Q):
            jac[:, q, :, 0, q, :2] = du[:, q, None, :]
            jac[:, q, :, 1, q, :2] = dd[:, q]
            jac[:, q, :, 3, q, :2] = dw[:, q]
            for n in range(N):
                jac[:, q, n, 2, q, 2 + n] = 1.0
        return geom, jac.reshape(L, P, 4, Q * K1)

    def joint_paths(self, psi: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Centralized parametrisation: ``psi`` [B, Q, 4] (g_x, g_y, v_x, v_y per target) -> path geometry of every
        (b, m) problem (u_rx, d, f, w) each [B M, Q N] and the Jacobian [B M, Q N, 4, 4 Q] (Eq. 7-11 exactly)."""
        B, Q, _ = psi.shape
        N, M = self.tx.shape[0], self.rx.shape[0]
        g, v = psi[..., :2], psi[..., 2:]
        dm_vec = g[:, None] - self.rx[None, :, None]  # [B, M, Q, 2]
        dm = torch.linalg.vector_norm(dm_vec, dim=-1).clamp_min(1e-9)
        em = dm_vec / dm[..., None]
        dn_vec = g[:, None] - self.tx[None, :, None]  # [B, N, Q, 2]
        dn = torch.linalg.vector_norm(dn_vec, dim=-1).clamp_min(1e-9)
        en = dn_vec / dn[..., None]
        u_rx = (em * self.rx_axes[None, :, None]).sum(-1)  # [B, M, Q]
        w_tx = (en * self.tx_axes[None, :, None]).sum(-1)  # [B, N, Q]
        du = (self.rx_axes[None, :, None] - u_rx[..., None] * em) / dm[..., None]  # [B, M, Q, 2]
        dw = (self.tx_axes[None, :, None] - w_tx[..., None] * en) / dn[..., None]  # [B, N, Q, 2]
        vr_m = (em * v[:, None]).sum(-1)
        vr_n = (en * v[:, None]).sum(-1)
        dvm = (v[:, None] - vr_m[..., None] * em) / dm[..., None]
        dvn = (v[:, None] - vr_n[..., None] * en) / dn[..., None]
        # to [B, M, Q, N]
        d = dm[..., None] + dn.permute(0, 2, 1)[:, None]
        f = self.kf * (vr_m[..., None] + vr_n.permute(0, 2, 1)[:, None])
        esum = em[:, :, :, None] + en.permute(0, 2, 1, 3)[:, None]  # [B, M, Q, N, 2]
        P = Q * N
        geom = (
            u_rx[..., None].expand(B, M, Q, N).reshape(B * M, P), d.reshape(B * M, P), f.reshape(B * M, P),
            w_tx.permute(0, 2, 1)[:, None].expand(B, M, Q, N).reshape(B * M, P),
        )
        dfg = self.kf * (dvm[:, :, :, None] + dvn.permute(0, 2, 1, 3)[:, None])  # [B, M, Q, N, 2]
        jac = torch.zeros(B, M, Q, N, 4, Q, 4, dtype=F64, device=psi.device)
        for q in range(Q):
            jac[:, :, q, :, 0, q, :2] = du[:, :, q, None, :]
            jac[:, :, q, :, 1, q, :2] = esum[:, :, q]
            jac[:, :, q, :, 2, q, :2] = dfg[:, :, q]
            jac[:, :, q, :, 2, q, 2:] = self.kf * esum[:, :, q]
            jac[:, :, q, :, 3, q, :2] = dw[:, :, q][:, None]
        return geom, jac.reshape(B * M, P, 4, 4 * Q)


# ================================================================================================ path model
@dataclass
class PathSystem:
    """Variable-projection quantities of one batch of path models (leading dimension L problems).

    ``energy`` [L]: explained energy ``y^H S (S^H S)^-1 S^H y`` (needs y); ``gains`` [L, P] complex128: the
    least-squares gains; ``jtj`` [L, K, K] float64: the Kaufman Gauss-Newton matrix (``2 / xi^2 jtj`` is the Fisher
    information of the K nonlinear parameters with the gains eliminated); ``grad`` [L, K]: half the gradient of the
    explained energy (needs y); ``path_energy`` [L, P]: the drop of the explained energy when path p alone is
    removed, ``|alpha_p|^2 / [(S^H S)^-1]_pp`` (a per-path GLRT statistic times xi^2; needs only the gains).
    """

    energy: torch.Tensor | None
    gains: torch.Tensor
    jtj: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    path_energy: torch.Tensor | None = None


def _solve_psd(A: torch.Tensor, b: torch.Tensor, rel: float = 1e-12) -> torch.Tensor:
    """Solve Hermitian PSD systems A z = b with a relative ridge (never NaN on a singular A)."""
    n = A.shape[-1]
    tr = torch.diagonal(A, dim1=-2, dim2=-1).real.sum(-1).clamp_min(1e-300)
    ridge = (rel * tr / n)[..., None, None] * torch.eye(n, dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(A + ridge)
    if bool((info != 0).any()):
        return torch.linalg.lstsq(A + ridge, b[..., None]).solution[..., 0] if b.dim() == A.dim() - 1 else \
            torch.linalg.lstsq(A + ridge, b).solution
    if b.dim() == A.dim() - 1:
        return torch.cholesky_solve(b[..., None], L)[..., 0]
    return torch.cholesky_solve(b, L)


def _phases(geo: _Geometry, d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Delay and Doppler phases of Eq. (6), ``e^{-j 2 pi i df d / c} e^{+j 2 pi t dT f}``: [..., Ns, Ts] complex128
    for bistatic ranges ``d`` and Dopplers ``f`` [...] at the comb's absolute indices."""
    one = torch.ones((), dtype=F64, device=d.device)
    i_abs, t_abs = geo.i_abs.to(d.device), geo.t_abs.to(d.device)
    return (torch.polar(one, -TWO_PI * geo.df / SPEED_OF_LIGHT * d[..., None] * i_abs)[..., :, None]
            * torch.polar(one, TWO_PI * geo.dT * f[..., None] * t_abs)[..., None, :])


def _beams(weights: torch.Tensor, xs: torch.Tensor, n_of_path: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[l, p, k] x[l, n_p, k, i, t]`` [l, P, Ns, Ts] complex128 (transmit beams per path)."""
    xs = xs.to(C128)
    out = torch.empty(*weights.shape[:2], *xs.shape[-2:], dtype=C128, device=xs.device)
    for n in range(xs.shape[1]):
        sel = (n_of_path == n).nonzero().flatten()
        if sel.numel():
            out[:, sel] = torch.einsum("lpk,lkit->lpit", weights[:, sel], xs[:, n])
    return out


def path_system(
    geo: _Geometry, x: torch.Tensor, x_idx: torch.Tensor, n_of_path: torch.Tensor,
    geom: tuple[torch.Tensor, ...], *, y: torch.Tensor | None = None, y_idx: torch.Tensor | None = None,
    jac: torch.Tensor | None = None, gains: torch.Tensor | None = None, path_mask: torch.Tensor | None = None,
) -> PathSystem:
    """Explained energy, gains and Gauss-Newton system of L single-AP path models (module docstring).

    ``x`` [B, N, Nt, Ns, Ts] complex, ``x_idx`` [L] the scene of each problem; ``n_of_path`` [P] the transmit AP of
    each path; ``geom`` = (u_rx, d, f, w) each [L, P] float64 (AoA cosine, bistatic range m, bistatic Doppler Hz,
    AoD cosine); ``y`` [*, Mr, Ns, Ts] with ``y_idx`` [L] (None: no data, e.g. the CPU computing a Fisher weight
    from a message, then ``gains`` [L, P] must be given); ``jac`` [L, P, 4, K] the derivative of the path geometry
    w.r.t. the K nonlinear parameters (None: energy and gains only); ``path_mask`` [L, P] bool: paths switched off
    (their signatures are zero: gain 0, no information, no energy). Chunked over problems; float64 throughout.
    """
    L, P = geom[0].shape
    cfg = geo.cfg
    Mr, Nt, Ns, Ts = cfg.n_rx_antennas, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols
    deriv = jac is not None
    nf = 4 if deriv else 1
    per = P * (Nt + 2 * nf + 4) * Ns * Ts * 16 + (2 * Mr * Ns * Ts * 16 if y is not None else 0)
    step = max(1, _CHUNK_BYTES // per)
    out_e, out_a, out_j, out_g, out_p = [], [], [], [], []
    dev = geom[0].device
    i_abs, t_abs = geo.i_abs.to(dev), geo.t_abs.to(dev)
    kr = torch.arange(Mr, dtype=F64, device=dev)
    kt = torch.arange(Nt, dtype=F64, device=dev)
    for s0 in range(0, L, step):
        sl = slice(s0, min(L, s0 + step))
        nl = sl.stop - sl.start
        u_rx, d, f, w = (g[sl] for g in geom)
        ar = geo.steer(u_rx, Mr)  # [nl, P, Mr]
        at = geo.steer(w, Nt)  # [nl, P, Nt]
        xs = x[x_idx[sl]]  # [nl, N, Nt, Ns, Ts]
        ph = _phases(geo, d, f)
        if path_mask is not None:
            ph = ph * path_mask[sl].to(F64)[..., None, None]
        b = _beams(at.conj(), xs, n_of_path)
        s = ph * b
        if deriv:
            bd = _beams(at.conj() * (1j * TWO_PI * geo.sp * kt), xs, n_of_path)
            F = torch.stack([s, s * i_abs[:, None], s * t_abs, ph * bd], 2)  # [nl, P, 4, Ns, Ts]
        else:
            F = s[:, :, None]
        del xs, b
        Fm = F.reshape(nl, P * nf, Ns * Ts)
        FG = Fm.conj() @ Fm.mT  # [nl, P nf, P nf]
        hg00 = ar.conj() @ ar.mT  # [nl, P, P]
        A0 = P * nf
        if deriv:
            ard = ar * (-1j * TWO_PI * geo.sp * kr)
            hg01 = ar.conj() @ ard.mT
            hg11 = ard.conj() @ ard.mT
            A = A0 + P
            G5 = FG.view(nl, P, nf, P, nf)
            Gam = torch.empty(nl, A, A, dtype=C128, device=dev)
            Gam[:, :A0, :A0] = (hg00[:, :, None, :, None] * G5).reshape(nl, A0, A0)
            tr = hg01[:, :, None, :] * G5[:, :, :, :, 0]  # [nl, P, nf, P]
            Gam[:, :A0, A0:] = tr.reshape(nl, A0, P)
            Gam[:, A0:, :A0] = Gam[:, :A0, A0:].mH
            Gam[:, A0:, A0:] = hg11 * G5[:, :, 0, :, 0]
            e_idx = torch.arange(P, device=dev) * nf
        else:
            Gam = hg00 * FG
            e_idx = torch.arange(P, device=dev)
        G = Gam[:, e_idx][:, :, e_idx]
        if y is not None:
            ys = y[y_idx[sl]].to(C128)
            yf = ys.reshape(nl, Mr, Ns * Ts)
            z = ar.conj() @ yf  # beam outputs a_r^H y: [nl, P, Ns Ts]
            Fp = F.reshape(nl, P, nf, Ns * Ts)
            c = (Fp.conj() @ z[..., None]).reshape(nl, A0)  # F^H z per path
            if deriv:
                zd = ard.conj() @ yf
                c = torch.cat([c, (Fp[:, :, 0, None].conj() @ zd[..., None]).reshape(nl, P)], 1)
            del ys, z
            sy = c[:, e_idx]
            alpha = _solve_psd(G, sy)
            out_e.append((sy.conj() * alpha).sum(-1).real)
        else:
            alpha = gains[sl].to(C128)
        out_a.append(alpha)
        Ginv = _solve_psd(G, torch.eye(P, dtype=C128, device=dev).expand(nl, P, P).contiguous())
        out_p.append(alpha.abs() ** 2 / torch.diagonal(Ginv, dim1=-2, dim2=-1).real.clamp_min(1e-300))
        if deriv:
            jl = jac[sl]
            K = jl.shape[-1]
            C = torch.zeros(nl, A, K, dtype=C128, device=dev)
            Cv = C[:, :A0].view(nl, P, nf, K)
            Cv[:, :, 1] = alpha[..., None] * (-1j * TWO_PI * geo.df / SPEED_OF_LIGHT) * jl[:, :, 1]
            Cv[:, :, 2] = alpha[..., None] * (1j * TWO_PI * geo.dT) * jl[:, :, 2]
            Cv[:, :, 3] = alpha[..., None] * jl[:, :, 3]
            C[:, A0:] = alpha[..., None] * jl[:, :, 0]
            GC = Gam @ C  # [nl, A, K]
            GE = GC[:, e_idx]  # (E^T Gam C)
            jtj = C.mH @ GC - GE.mH @ _solve_psd(G, GE)
            out_j.append(0.5 * (jtj.real + jtj.real.mT))
            if y is not None:
                out_g.append((C.mH @ c[..., None])[..., 0].real - (GE.mH @ alpha[..., None])[..., 0].real)
        del F, Fm, FG, Gam
    cat = lambda v: torch.cat(v) if v else None  # noqa: E731
    return PathSystem(cat(out_e), torch.cat(out_a), cat(out_j), cat(out_g), torch.cat(out_p))


def path_signals(geo: _Geometry, x: torch.Tensor, x_idx: torch.Tensor, n_of_path: torch.Tensor,
                 geom: tuple[torch.Tensor, ...], gains: torch.Tensor) -> torch.Tensor:
    """Noiseless Eq. (6) of the paths: ``sum_p alpha_p a_r(u_p) (x) s_p`` [L, Mr, Ns, Ts] complex128."""
    L, P = geom[0].shape
    cfg = geo.cfg
    Mr, Nt, Ns, Ts = cfg.n_rx_antennas, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols
    dev = geom[0].device
    out = torch.empty(L, Mr, Ns, Ts, dtype=C128, device=dev)
    step = max(1, _CHUNK_BYTES // (P * (Nt + 2) * Ns * Ts * 16 + Mr * Ns * Ts * 16))
    for s0 in range(0, L, step):
        sl = slice(s0, min(L, s0 + step))
        u_rx, d, f, w = (g[sl] for g in geom)
        b = _beams(geo.steer(w, Nt).conj(), x[x_idx[sl]], n_of_path)
        ph = _phases(geo, d, f)
        out[sl] = torch.einsum("lp,lpr,lpit->lrit", gains[sl], geo.steer(u_rx, Mr), ph * b)
    return out


# ================================================================================================ LM driver
def _levenberg_marquardt(
    evaluate: Callable[[torch.Tensor, torch.Tensor], PathSystem], theta0: torch.Tensor,
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, tol: float, max_iter: int,
    max_step: torch.Tensor,
) -> tuple[torch.Tensor, PathSystem]:
    """Maximise the explained energy over theta [L, K] by Levenberg-Marquardt (Marquardt scaling).

    ``evaluate(theta, rows)`` returns the :class:`PathSystem` (energy, jtj, grad) of problems ``rows``;
    ``project(theta, rows)`` maps a trial point into the feasible set. A problem stops when the predicted or the
    actual gain of a step falls below ``tol`` (energy units) or after ``max_iter`` iterations. Steps are scaled
    down so that no parameter moves by more than ``max_step`` [K] per iteration (a trust region of about half a
    resolution cell: the refinement stays local, a weakly informed parameter cannot jump to a far noise peak).
    """
    L, K = theta0.shape
    dev = theta0.device
    theta = theta0.clone()
    rows = torch.arange(L, device=dev)
    fit = evaluate(theta, rows)
    energy, jtj, grad, gains = fit.energy.clone(), fit.jtj.clone(), fit.grad.clone(), fit.gains.clone()
    lam = torch.full((L,), 1e-3, dtype=F64, device=dev)
    active = torch.ones(L, dtype=torch.bool, device=dev)
    eye = torch.eye(K, dtype=F64, device=dev)
    for _ in range(max_iter):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        H = jtj[idx]
        dg = torch.diagonal(H, dim1=-2, dim2=-1).clamp_min(1e-300)
        A = H + (lam[idx, None] * dg)[..., None] * eye + 1e-14 * dg.max(-1).values[:, None, None] * eye
        step = torch.linalg.solve(A, grad[idx])
        over = (step.abs() / max_step).amax(-1, keepdim=True).clamp_min(1.0)
        step = step / over
        pred = (step * grad[idx]).sum(-1)
        trial = project(theta[idx] + step, idx)
        new = evaluate(trial, idx)
        gain = new.energy - energy[idx]
        ok = gain > 0
        acc = idx[ok]
        theta[acc] = trial[ok]
        energy[acc], jtj[acc], grad[acc], gains[acc] = new.energy[ok], new.jtj[ok], new.grad[ok], new.gains[ok]
        lam[acc] = (lam[acc] / 3).clamp_min(1e-9)
        lam[idx[~ok]] = lam[idx[~ok]] * 4
        done = (ok & (gain < tol)) | (pred.abs() < tol) | (lam[idx] > 1e8)
        active[idx[done]] = False
    return theta, PathSystem(energy, gains, jtj, grad)


# ================================================================================================ results
@dataclass
class ApMessages:
    """What every receive AP sends in the distributed scheme (float32 on the wire, float64 here after decoding).

    ``theta`` [B, M, Q, 1 + 2N]: per target slot ``[u, d_0 .. d_{N-1}, f_0 .. f_{N-1}]`` (AoA cosine, bistatic
    ranges ``c tau`` in m, bistatic Dopplers in Hz); ``gains`` [B, M, Q, N] complex: the least-squares path gains.
    A path below the detection threshold is sent as NaN (range, Doppler, gain), a target slot without any
    detected path also has a NaN AoA: no extra bits. ``statistic`` [B, M, Q, N] (diagnostic, not sent): each
    path's GLRT statistic, the explained-energy drop when it alone is removed over ``xi^2`` (Exp(1) under noise).
    Target slots of different APs are unordered.
    """

    theta: torch.Tensor
    gains: torch.Tensor
    statistic: torch.Tensor | None = None

    def quantized(self) -> ApMessages:
        """The message as the CPU decodes it: every real number rounded to float32."""
        th = self.theta.to(torch.float32).to(F64)
        g = torch.complex(self.gains.real.to(torch.float32), self.gains.imag.to(torch.float32)).to(C128)
        return ApMessages(th, g, self.statistic)


@dataclass
class MLEstimate(Estimate):
    """:class:`Estimate` of the ML estimator plus what produced it.

    ``distributed_positions`` / ``distributed_velocities`` [B, Q, 2]: the CPU fusion of the AP messages (equal to
    positions / velocities when ``joint=False``); ``messages``: the decoded :class:`ApMessages`; ``energy`` [B]:
    the centralized explained energy of the returned psi over ``xi^2`` (only with ``joint=True``).
    """

    distributed_positions: torch.Tensor | None = None
    distributed_velocities: torch.Tensor | None = None
    messages: ApMessages | None = None
    energy: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


# ================================================================================================ estimator
class MLEstimator:
    """Per-AP maximum likelihood plus Fisher-weighted fusion, optionally a centralized ML refinement (module doc).

    Options (keyword-only): ``joint`` (False: distributed, ``32 (2 + 3N) Q`` bits per AP; True: centralized
    refinement on the raw echoes, ``64 Mr Ns Ts`` bits); ``n_candidates`` coarse peaks refined per detection (3);
    ``relax_rounds`` re-detection rounds for Q > 1 (1); ``angle_oversample`` receive beams per ``Mr / 2`` (2: a
    ``2 Mr``-beam grid); ``oversample`` zero padding of the range / Doppler DFTs and position-grid density (2: half a
    range cell); ``grid_refinement`` density of the adaptive grid near the APs (1.0; 0.5 measurably misses
    targets close to a transmit AP); ``max_iter`` LM iterations (40); ``detection_threshold`` GLRT
    threshold of a target slot's strongest path (default ``log(cells / false_alarm)`` with ``false_alarm`` 1e-3);
    ``path_threshold`` of its further paths (default ``log(Doppler cells / false_alarm)``, at most the former);
    ``threads`` torch intra-op threads during a call (1: the work is many small tensor operations, which
    multi-threading slows down on a shared machine; restored afterwards; None leaves the global setting);
    ``device`` where the heavy tensors live (default: that of y).

    Attributes: ``fronthaul_bits_per_ap`` (of the chosen variant), ``message_bits_per_ap`` (distributed message),
    ``centralized_bits_per_ap``, ``threshold``, ``path_threshold``.
    """

    def __init__(self, cfg: SystemConfig, *, joint: bool = False, n_candidates: int = 3, relax_rounds: int = 1,
                 angle_oversample: int = 2, oversample: int = 2, max_iter: int = 40,
                 detection_threshold: float | None = None, path_threshold: float | None = None,
                 false_alarm: float = 1e-3, grid_refinement: float = 1.0,
                 threads: int | None = 1, device: str | torch.device | None = None) -> None:
        if cfg.n_tx * cfg.n_rx < 2:
            raise ValueError("the ML estimator needs at least two transmit/receive AP pairs: a single pair observes "
                             "only one component of each velocity (N M = 1)")
        for name, v, lo in (("n_candidates", n_candidates, 1), ("relax_rounds", relax_rounds, 0),
                            ("angle_oversample", angle_oversample, 1), ("oversample", oversample, 1),
                            ("max_iter", max_iter, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not isinstance(joint, bool):
            raise ValueError(f"joint must be True or False, got {joint!r}")
        self.cfg = cfg
        self.joint = joint
        self.name = "ml-joint" if joint else "ml"
        self.n_candidates = n_candidates
        self.relax_rounds = relax_rounds
        self.angle_oversample = angle_oversample
        self.oversample = oversample
        self.max_iter = max_iter
        self.device = device
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        if not (isinstance(grid_refinement, (int, float)) and grid_refinement > 0):
            raise ValueError(f"grid_refinement must be a positive number, got {grid_refinement!r}")
        self.grid_refinement = float(grid_refinement)
        if not (0 < false_alarm < 1):
            raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm!r}")
        if detection_threshold is None:
            # a noise peak maximised over the grid's independent cells exceeds log(cells / false_alarm) with
            # probability about false_alarm (the statistic of one cell is Exp(1) under noise)
            res = cfg.resolution()
            cells = (2 * cfg.n_rx_antennas * cfg.antenna_spacing
                     * max(1.0, res["max_bistatic_range_m"] / res["range_resolution_m"])
                     * max(1.0, 2 * res["max_doppler_hz"] / res["doppler_resolution_hz"]))
            detection_threshold = math.log(cells / false_alarm)
        if not (isinstance(detection_threshold, (int, float)) and math.isfinite(detection_threshold)
                and detection_threshold >= 0):
            raise ValueError(f"detection_threshold must be a finite number >= 0, got {detection_threshold!r}")
        self.threshold = float(detection_threshold)
        if path_threshold is None:
            # a further path of a detected target: its delay / angles follow from the target's position, only its
            # Doppler is searched (2 f_max / Doppler cell independent cells)
            res = cfg.resolution()
            path_threshold = math.log(max(1.0, 2 * res["max_doppler_hz"] / res["doppler_resolution_hz"])
                                      / false_alarm)
        if not (isinstance(path_threshold, (int, float)) and math.isfinite(path_threshold) and path_threshold >= 0):
            raise ValueError(f"path_threshold must be a finite number >= 0, got {path_threshold!r}")
        self.path_threshold = min(float(path_threshold), self.threshold)
        N, Q = cfg.n_tx, cfg.n_targets
        self.message_bits_per_ap = 32 * (2 + 3 * N) * Q
        self.centralized_bits_per_ap = 64 * cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols
        self.fronthaul_bits_per_ap = self.centralized_bits_per_ap if joint else self.message_bits_per_ap
        self._geo: dict[str, _Geometry] = {}
        self._grid_cache: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------ public
    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> MLEstimate:
        """Positions / velocities [B, Q, 2] float64 from y [B, M, Mr, Ns, Ts] and x [B, N, Nt, Ns, Ts]."""
        y, x = self._check(y, x)
        old = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._estimate(y, x)
        finally:
            torch.set_num_threads(old)

    def _estimate(self, y: torch.Tensor, x: torch.Tensor) -> MLEstimate:
        x = x.to(C128)
        msgs = self.ap_messages(y, x).quantized()
        psi_d, starts = self.fuse(msgs, x)
        out = MLEstimate(psi_d[..., :2].cpu().clone(), psi_d[..., 2:].cpu().clone(),
                         distributed_positions=psi_d[..., :2].cpu(), distributed_velocities=psi_d[..., 2:].cpu(),
                         messages=msgs)
        if self.joint:
            central = self._central_starts(self._maps, psi_d)
            self._maps = None
            psi, energy = self.joint_refine(y, x, torch.cat([psi_d[:, None], starts, central], 1))
            out.positions, out.velocities = psi[..., :2].cpu(), psi[..., 2:].cpu()
            out.energy = (energy / self.cfg.noise_watt).cpu()
        return out

    # ------------------------------------------------------------------------------------------ checks
    def _check(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if not isinstance(y, torch.Tensor) or not y.is_complex():
            raise ValueError("y must be a complex torch.Tensor [B, M, Mr, Ns, Ts]")
        expect = (cfg.n_rx, cfg.n_rx_antennas, cfg.n_subcarriers, cfg.n_symbols)
        if y.dim() != 5 or tuple(y.shape[1:]) != expect or y.shape[0] == 0:
            raise ValueError(f"y has shape {tuple(y.shape)}, expected (B, {', '.join(map(str, expect))}) with B > 0")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or inf")
        check_transmit_signals(cfg, x, y.shape[0])
        dev = torch.device(self.device) if self.device is not None else y.device
        return y.to(dev), x.to(dev)

    def _geometry(self, device: torch.device) -> _Geometry:
        key = str(device)
        if key not in self._geo:
            self._geo[key] = _Geometry(self.cfg, device)
        return self._geo[key]

    # ------------------------------------------------------------------------------------------ per-AP stage
    def ap_messages(self, y: torch.Tensor, x: torch.Tensor) -> ApMessages:
        """Every receive AP's estimate (float64, before float32 rounding): see the module docstring, steps 1-4."""
        cfg = self.cfg
        B, M, Q, N = y.shape[0], cfg.n_rx, cfg.n_targets, cfg.n_tx
        dev = y.device
        L = B * M
        yl = y.reshape(L, *y.shape[2:])
        x_idx = torch.arange(B, device=dev).repeat_interleave(M)
        m_idx = torch.arange(M, device=dev).repeat(B)
        rows = torch.arange(L, device=dev)
        tol = 1e-3 * cfg.noise_watt  # energy units: 1e-3 of a log-likelihood unit
        K1 = 2 + N
        theta = torch.zeros(L, 0, K1, dtype=F64, device=dev)
        resid = yl.to(C128)
        self._maps = [] if self.joint else None  # the first detection's maps feed the CPU's coarse search
        for q in range(Q):
            best = self._search(resid, rows, x, x_idx, m_idx, tol, maps=self._maps if q == 0 else None)  # [L, K1]
            theta = torch.cat([theta, best[:, None]], 1)
            theta, fit = self._refine_local(yl, theta, x, x_idx, m_idx, tol)
            resid = yl.to(C128) - self._signals(theta, fit.gains, x, x_idx, m_idx)
        energy = fit.energy
        if Q > 1:
            for _ in range(self.relax_rounds):
                new = theta.clone()
                for q in range(Q):
                    others = [k for k in range(Q) if k != q]
                    sub, sfit = self._fit_local(yl, new[:, others], x, x_idx, m_idx)
                    r_q = yl.to(C128) - self._signals(sub, sfit.gains, x, x_idx, m_idx)
                    new[:, q] = self._search(r_q, rows, x, x_idx, m_idx, tol, current=new[:, q])
                    new, nfit = self._refine_local(yl, new, x, x_idx, m_idx, tol)
                better = nfit.energy > energy
                theta = torch.where(better[:, None, None], new, theta)
                energy = torch.where(better, nfit.energy, energy)
        # model-order selection (two-level GLRT): a target slot is detected when its strongest path passes the
        # search-wide threshold; a further path of a detected target only needs the Doppler-search threshold (its
        # delay, AoA and AoD are fixed by the target's position). Paths below it leave the model, the rest is
        # refined again.
        theta, fit = self._fit_local(yl, theta, x, x_idx, m_idx)
        use, _ = self._detect((fit.path_energy / cfg.noise_watt).view(L, Q, N))
        if not bool(use.all()):
            theta, _ = self._refine_local(yl, theta, x, x_idx, m_idx, tol, mask=use.view(L, Q * N))
        theta, fit = self._fit_local(yl, theta, x, x_idx, m_idx, mask=use.view(L, Q * N))
        stat = (fit.path_energy / cfg.noise_watt).view(L, Q, N)
        _, det = self._detect(stat, use)
        theta = theta.clone()
        nan = torch.tensor(float("nan"), dtype=F64, device=dev)
        theta[..., 2:] = torch.where(det, theta[..., 2:], nan)
        theta[..., :2] = torch.where(det.any(-1, keepdim=True), theta[..., :2], nan)
        gains = torch.where(det, fit.gains.view(L, Q, N), torch.complex(nan, nan))
        return ApMessages(theta.reshape(B, M, Q, K1), gains.reshape(B, M, Q, N), stat.reshape(B, M, Q, N))

    def _detect(self, stat: torch.Tensor, use: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-level detection from the per-path GLRT statistics ``stat`` [L, Q, N] of the paths in ``use``
        (default all): a slot is detected when its largest statistic reaches ``threshold`` (search-wide), a path
        of a detected slot when its own reaches ``path_threshold`` (Doppler search only). Returns the paths to keep
        in the model (those of undetected slots too, their values are sent as NaN) and the detected paths, both
        [L, Q, N] bool."""
        if use is None:
            use = torch.ones_like(stat, dtype=torch.bool)
        stat = torch.where(use, stat, torch.zeros_like(stat))
        slot = stat.amax(-1, keepdim=True) >= self.threshold
        det = use & slot & (stat >= self.path_threshold)
        return det | (use & ~slot), det

    def _paths(self, Q: int, dev: torch.device) -> torch.Tensor:
        return torch.arange(self.cfg.n_tx, device=dev).repeat(Q)

    def _project_local(self, theta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Keep local positions in the area and Dopplers inside the ambiguity (``m`` unused: same for every AP)."""
        geo = self._geometry(theta.device)
        out = theta.clone()
        out[..., :2] = geo.project_position(theta[..., :2])
        out[..., 2:] = theta[..., 2:].clamp(-geo.f_amb, geo.f_amb)
        return out

    def _fit_local(self, yl, theta, x, x_idx, m_idx, rows=None, jac=False, mask=None
                   ) -> tuple[torch.Tensor, PathSystem]:
        geo = self._geometry(theta.device)
        L, Q = theta.shape[:2]
        if rows is None:
            rows = torch.arange(L, device=theta.device)
        if Q == 0:
            z = torch.zeros(L, dtype=F64, device=theta.device)
            return theta, PathSystem(z, torch.zeros(L, 0, dtype=C128, device=theta.device))
        geom, J = geo.local_paths(m_idx[rows], theta)
        fit = path_system(geo, x, x_idx[rows], self._paths(Q, theta.device), geom, y=yl, y_idx=rows,
                          jac=J if jac else None, path_mask=mask)
        return theta, fit

    def _refine_local(self, yl, theta, x, x_idx, m_idx, tol, rows=None, mask=None) -> tuple[torch.Tensor, PathSystem]:
        """Joint LM over all targets' per-AP parameters of problems ``rows`` (data ``yl[rows]``; ``mask`` [L, Q N]
        paths switched off)."""
        L, Q, K1 = theta.shape
        if rows is None:
            rows = torch.arange(L, device=theta.device)

        def evaluate(th: torch.Tensor, idx: torch.Tensor) -> PathSystem:
            return self._fit_local(yl, th.view(-1, Q, K1), x, x_idx, m_idx, rows=rows[idx], jac=True,
                                   mask=None if mask is None else mask[idx])[1]

        def project(th: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return self._project_local(th.view(-1, Q, K1), m_idx[rows[idx]]).reshape(th.shape)

        geo = self._geometry(theta.device)
        N = self.cfg.n_tx
        per_target = torch.tensor([geo.range_res / 2] * 2 + [geo.doppler_res / 2] * N, dtype=F64,
                                  device=theta.device)
        th, fit = _levenberg_marquardt(evaluate, self._project_local(theta, m_idx[rows]).reshape(L, Q * K1),
                                       project, tol=tol, max_iter=self.max_iter, max_step=per_target.repeat(Q))
        return th.view(L, Q, K1), fit

    def _search(self, resid, rows, x, x_idx, m_idx, tol, current=None, maps=None) -> torch.Tensor:
        """One target [L, 2 + N] on ``resid`` [L, ...]: coarse candidates refined by LM, the most likely kept
        (``current`` [L, 2 + N] competes too); then a second coarse search with the best result's strongest path
        cancelled, whose candidates compete again on ``resid`` with all paths.

        The second search handles a dominant path that does not fix the position: a target on a transmit-receive
        baseline scatters forward on it, and that path's delay, AoA, AoD and Doppler (0) are the same at every point
        of the baseline, so its coarse statistic ranks the whole baseline alike (up to a ~20 % straddle-loss ripple
        that hides the weaker paths) and its leakage into the other transmit AP's matched filter (same user
        streams) fills that map along the baseline too: every first-stage candidate may sit on the baseline metres
        away from the target, where LM stays on a local maximum. Cancelling the strongest path (exactly, wherever
        on the baseline it was fitted) leaves the other paths' own peaks at the target."""
        def refine(cand: torch.Tensor, keep: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
            if extra is not None:  # competes too
                cand = torch.cat([cand, extra[:, None]], 1)
                keep = torch.cat([keep, torch.ones_like(keep[:, :1])], 1)
            return self._best_single(resid, cand, keep, x, x_idx, m_idx, tol)

        best = refine(*self._candidates(resid, rows, x, x_idx, m_idx, maps=maps), current)
        if self.cfg.n_tx < 2:
            return best
        _, fit = self._fit_local(resid, best[:, None], x, x_idx, m_idx)
        strongest = fit.path_energy.argmax(-1, keepdim=True)  # [L, 1]
        only = torch.zeros_like(fit.gains).scatter(-1, strongest, fit.gains.gather(-1, strongest))
        r2 = resid - self._signals(best[:, None], only, x, x_idx, m_idx)
        return refine(*self._candidates(r2, rows, x, x_idx, m_idx), best)

    def _best_single(self, resid, cand, keep, x, x_idx, m_idx, tol) -> torch.Tensor:
        """Refine the candidates [L, C, K1] flagged in ``keep`` [L, C] as single targets on ``resid`` [L, ...];
        keep the most likely (exact likelihood)."""
        L, C, K1 = cand.shape
        dev = cand.device
        keep = keep.clone()
        keep[:, 0] |= ~keep.any(1)
        rows, cols = keep.nonzero(as_tuple=True)
        th, fit = self._refine_local(resid, cand[rows, cols][:, None], x, x_idx, m_idx, tol, rows=rows)
        # Doppler retry: a candidate found through one strong path may carry a noise Doppler for the others (LM
        # steps cannot cross Doppler sidelobes); search every path's Doppler again at the refined geometry
        th2, fit2 = self._refine_local(resid, self._doppler_search(resid, th, x, x_idx, m_idx, rows), x, x_idx,
                                       m_idx, tol, rows=rows)
        better = fit2.energy > fit.energy
        th = torch.where(better[:, None, None], th2, th)
        fit.energy = torch.where(better, fit2.energy, fit.energy)
        energy = torch.full((L, C), -float("inf"), dtype=F64, device=dev)
        energy[rows, cols] = fit.energy
        best = cand.clone()
        best[rows, cols] = th[:, 0]
        return best[torch.arange(L, device=dev), energy.argmax(1)]

    def _doppler_search(self, yl, theta, x, x_idx, m_idx, rows, sweeps: int = 2) -> torch.Tensor:
        """Single targets ``theta`` [L, 1, 2 + N] with the N Dopplers re-searched globally at the target's position
        (data ``yl[rows]``): coordinate ascent over the paths, each path's Doppler over a 4x oversampled grid
        (|f| <= the largest physical Doppler) maximising the exact N-path explained energy ``Sy^H G^-1 Sy`` with
        the other paths' Dopplers fixed. The cross terms ``G_nk`` matter: both transmit APs send the same user
        symbols, so two paths of one target at close delays are strongly correlated and a per-path periodogram
        would lock onto the stronger path's Doppler.

        With ``s_n[i, t] = e^{-j 2 pi i df d_n / c} e^{j 2 pi t f_n dT} b_n[i, t]`` and ``z = a_r^H y``:
        ``Sy_n(f) = sum_t r_n[t] e^{-j 2 pi t f dT}`` with ``r_n[t] = sum_i conj(b_n) e^{j 2 pi i df d_n / c} z``,
        ``G_nk(f_n, f_k) = sum_t c_nk[t] e^{-j 2 pi t (f_n - f_k) dT}`` with
        ``c_nk[t] = sum_i conj(b_n) b_k e^{j 2 pi i df (d_n - d_k) / c}`` (a_r^H a_r = 1: one AoA per target).
        """
        cfg = self.cfg
        geo = self._geometry(theta.device)
        dev = theta.device
        L, N, Mr = theta.shape[0], cfg.n_tx, cfg.n_rx_antennas
        Ns, Ts = cfg.n_subcarriers, cfg.n_symbols
        geom, _ = geo.local_paths(m_idx[rows], theta)
        u, d, _, w = geom  # [L, N]
        lt = 4 * Ts
        fg = torch.fft.fftfreq(lt, cfg.symbol_stride * cfg.symbol_duration, dtype=F64, device=dev)
        fg = fg[fg.abs() <= geo.f_max]  # [J]
        t_abs = geo.t_abs.to(dev)
        E = torch.polar(torch.ones((), dtype=F64, device=dev), -TWO_PI * geo.dT * t_abs[:, None] * fg)  # [Ts, J]
        out = theta.clone()
        eye = torch.eye(N, dtype=C128, device=dev)
        step = max(1, _CHUNK_BYTES // (N * (cfg.n_tx_antennas + 4) * Ns * Ts * 16 + Mr * Ns * Ts * 16))
        for s0 in range(0, L, step):
            sl = slice(s0, min(L, s0 + step))
            nl = sl.stop - sl.start
            z = (geo.steer(u[sl, :1], Mr).conj() @ yl[rows[sl]].to(C128).reshape(nl, Mr, Ns * Ts)).view(nl, Ns, Ts)
            b = _beams(geo.steer(w[sl], cfg.n_tx_antennas).conj(), x[x_idx[rows[sl]]], self._paths(1, dev))
            bd = b * _phases(geo, d[sl], torch.zeros_like(d[sl]))[..., 0][..., None]  # s_n at f = 0: [nl, N, Ns, Ts]
            r = (bd.conj() * z[:, None]).sum(-2)  # [nl, N, Ts]
            c = torch.einsum("lnit,lkit->lnkt", bd.conj(), bd)  # [nl, N, N, Ts]
            f = out[sl, 0, 2:].clone()  # [nl, N]
            for _ in range(sweeps):
                for n in range(N):
                    ph = torch.polar(torch.ones((), dtype=F64, device=dev), TWO_PI * geo.dT * f[..., None] * t_abs)
                    sy = (r * ph.conj()).sum(-1)  # Sy_k at the current Dopplers [nl, N]
                    G = torch.einsum("lnkt,lnt,lkt->lnk", c, ph.conj(), ph)  # [nl, N, N] at current Dopplers
                    Sy = sy[:, None, :].expand(nl, fg.numel(), N).clone()
                    Sy[:, :, n] = r[:, n] @ E  # Sy_n over the grid
                    Gj = G[:, None].expand(nl, fg.numel(), N, N).clone()
                    row = (c[:, n] * ph) @ E  # G_nk(f_grid, f_k): sum_t c_nk e^{-j f_grid t} e^{+j f_k t}
                    Gj[:, :, n, :] = row.transpose(1, 2)
                    Gj[:, :, :, n] = row.transpose(1, 2).conj()
                    Gj[:, :, n, n] = c[:, n, n].sum(-1)[:, None]
                    tr = torch.diagonal(Gj, dim1=-2, dim2=-1).real.sum(-1).clamp_min(1e-300)
                    alpha = torch.linalg.solve(Gj + (1e-10 * tr / N)[..., None, None] * eye, Sy[..., None])[..., 0]
                    energy = (Sy.conj() * alpha).sum(-1).real  # [nl, J]
                    f[:, n] = fg[energy.argmax(-1)]
            out[sl, 0, 2:] = f
        return out

    def _signals(self, theta, gains, x, x_idx, m_idx) -> torch.Tensor:
        geo = self._geometry(theta.device)
        geom, _ = geo.local_paths(m_idx, theta)
        return path_signals(geo, x, x_idx, self._paths(theta.shape[1], theta.device), geom, gains)

    # ------------------------------------------------------------------------------------------ coarse grid
    def _grid(self, dev: torch.device) -> dict[str, torch.Tensor]:
        """Coarse-search geometry (cached): an adaptive position grid over the area and, per receive AP m, grid
        point g and transmit AP n, the nearest receive beam of the AoA-cosine grid, the nearest bin of the
        zero-padded range DFT and the AoD steering vector of g.

        The grid starts at spacing ``range_res / oversample`` and cells are halved (down to 0.25 m) wherever the
        likelihood can vary faster: close to an AP the angle seen by its array changes quickly with position, and
        the likelihood ripples on the scale ``ell = min(min_n d_n / Nt, min_m d_m / Mr) / grid_refinement`` (half a
        beamwidth in direction cosine, times the distance to the array).
        """
        key = str(dev)
        if key in self._grid_cache:
            return self._grid_cache[key]
        cfg, geo = self.cfg, self._geometry(dev)
        M, N = cfg.n_rx, cfg.n_tx
        U = self.angle_oversample * cfg.n_rx_antennas
        u = -1 + (torch.arange(U, dtype=F64, device=dev) + 0.5) * (2.0 / U)
        lf = self.oversample * cfg.n_subcarriers
        dd = SPEED_OF_LIGHT / (lf * cfg.subcarrier_stride * cfg.subcarrier_spacing)
        K = min(lf, int(math.floor(geo.d_max / dd)) + 2)
        pts = _adaptive_grid(cfg, geo.range_res / self.oversample, self.grid_refinement).to(dev)  # [G, 2]
        G = pts.shape[0]
        th = torch.cat([pts.repeat(M, 1), torch.zeros(M * G, N, dtype=F64, device=dev)], -1)[:, None]
        geom, _ = geo.local_paths(torch.arange(M, device=dev).repeat_interleave(G), th)  # each [M G, N]
        u_g = geom[0].view(M, G, N)[..., 0]
        d_g = geom[1].view(M, G, N)
        w_g = geom[3].view(M, G, N)
        iu = torch.round((u_g + 1) * U / 2 - 0.5).long().clamp(0, U - 1)  # nearest AoA beam [M, G]
        idn = torch.round(d_g / dd).long()  # [M, G, N]
        ok = ((idn >= 0) & (idn < K)).all(-1)
        lt = self.oversample * cfg.n_symbols
        f = torch.fft.fftfreq(lt, cfg.symbol_stride * cfg.symbol_duration, dtype=F64, device=dev)
        out = dict(u=u, pts=pts, iu=iu, idn=idn.clamp(0, K - 1),
                   ok=ok, a_r=geo.steer(u, cfg.n_rx_antennas, C64),
                   a_t=geo.steer(w_g, cfg.n_tx_antennas, C64),  # [M, G, N, Nt]
                   f=f, f_ok=(f.abs() <= geo.f_max), lf=torch.tensor(lf), lt=torch.tensor(lt), K=torch.tensor(K))
        self._grid_cache[key] = out
        return out

    def _candidates(self, r: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, x_idx: torch.Tensor,
                    m_idx: torch.Tensor, maps: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates per problem: [L, 2C, 2 + N] (local position and the N Dopplers) and which of them to refine
        [L, 2C] bool (statistic at least ``_CANDIDATE_RATIO`` of its list's best), with C = ``n_candidates``.

        For every grid point g and transmit AP n: the receive beam towards g, symbols removed by the matched filter
        of the transmit beam towards g (``conj(a_t^H x)``), a zero-padded DFT over subcarriers read at the range
        bin of d_n(g), a zero-padded DFT over symbols, the best Doppler, GLRT-normalised by the transmit beam
        energy ``a_t^H R_x a_t``. Two lists of C peaks: of the sum over n (non-coherent over a target's paths) and of
        the max over n. Both transmit APs send the same user symbols, so a strong path of transmit AP k also
        excites transmit AP n's matched filter wherever d_n(g) matches its delay; the sum then counts it twice and
        can outrank the true position, the max cannot (the exact likelihood arbitrates between the lists).
        With ``maps`` (a list), every problem's per-path statistics [N, G] and best Doppler bins [N, G] are appended.
        """
        cfg = self.cfg
        dev = r.device
        grid = self._grid(dev)
        N, Nt, Ns, Ts = cfg.n_tx, cfg.n_tx_antennas, cfg.n_subcarriers, cfg.n_symbols
        U = grid["u"].numel()
        K, lf, lt = int(grid["K"]), int(grid["lf"]), int(grid["lt"])
        G = grid["pts"].shape[0]
        L = rows.numel()
        radius = self._geometry(dev).range_res
        Cn = self.n_candidates
        out = torch.empty(L, 2 * Cn, 2 + N, dtype=F64, device=dev)
        keep = torch.empty(L, 2 * Cn, dtype=torch.bool, device=dev)
        step_u = max(1, min(U, _CHUNK_BYTES // (Nt * lf * Ts * 8 * 3)))
        step_g = max(1, _CHUNK_BYTES // (Nt * Ts * 8 * 4))
        zero = torch.zeros((), device=dev)
        for l0 in range(L):  # one problem at a time: the work per problem is already vectorised
            b = int(x_idx[rows[l0]])
            m = int(m_idx[rows[l0]])
            xb = x[b].to(C64)  # [N, Nt, Ns, Ts]
            Rx = xb.reshape(N, Nt, Ns * Ts) @ xb.reshape(N, Nt, Ns * Ts).mH
            zb = torch.einsum("ur,rit->uit", grid["a_r"].conj(), r[l0].to(C64))  # [U, Ns, Ts]
            iu = grid["iu"][m]
            Tn = torch.zeros(N, G, dtype=torch.float32, device=dev)
            Fi = torch.empty(N, G, dtype=torch.long, device=dev)
            for n in range(N):
                at = grid["a_t"][m, :, n]  # [G, Nt]
                E = torch.einsum("gp,pq,gq->g", at.conj(), Rx[n], at).real.clamp_min(1e-30)
                z2 = torch.empty(G, Ts, dtype=C64, device=dev)
                for u0 in range(0, U, step_u):
                    sel = ((iu >= u0) & (iu < u0 + step_u)).nonzero().flatten()
                    if sel.numel() == 0:
                        continue
                    prod = zb[u0:u0 + step_u, None] * xb[n].conj()[None]  # [u, Nt, Ns, Ts]
                    F1 = torch.fft.ifft(prod, n=lf, dim=2)[:, :, :K] * lf  # [u, Nt, K, Ts]
                    del prod
                    for g0 in range(0, sel.numel(), step_g):  # gather [g, Nt, Ts] in bounded chunks
                        sg = sel[g0:g0 + step_g]
                        z2[sg] = torch.einsum("gp,gpt->gt", at[sg], F1[iu[sg] - u0, :, grid["idn"][m, sg, n]])
                    del F1
                S = torch.fft.fft(z2, n=lt, dim=-1)
                pw = torch.where(grid["f_ok"], (S.real**2 + S.imag**2) / E[:, None], zero)
                Tn[n], Fi[n] = pw.max(-1)
            Tn = torch.where(grid["ok"][m], Tn, zero)
            if maps is not None:
                maps.append((Tn, Fi))
            tops = []
            for T in (Tn.sum(0), Tn.max(0).values):
                T = torch.where(grid["ok"][m], T, torch.full_like(T, -1.0))
                top = _peaks(T, grid["pts"], Cn, radius)
                tops.append(top)
                k = slice(Cn * (len(tops) - 1), Cn * len(tops))
                keep[l0, k] = T[top] >= _CANDIDATE_RATIO * T[top].max()
            top = torch.cat(tops)
            out[l0, :, :2] = grid["pts"][top]
            for n in range(N):
                out[l0, :, 2 + n] = grid["f"][Fi[n, top]]
        return out, keep

    # ------------------------------------------------------------------------------------------ CPU fusion
    def fisher_weights(self, msgs: ApMessages, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the CPU computes from the messages and X: the per-AP Fisher information of theta (gains
        eliminated) [B, M, Q K1, Q K1] and every path's detection statistic ``path_energy / xi^2`` [B, M, Q, N]."""
        cfg = self.cfg
        B, M, Q, K1 = msgs.theta.shape
        dev = x.device
        geo = self._geometry(dev)
        m_idx = torch.arange(M, device=dev).repeat(B)
        x_idx = torch.arange(B, device=dev).repeat_interleave(M)
        th, gains, det = _placeholders(msgs, geo, dev)
        geom, J = geo.local_paths(m_idx, th.reshape(B * M, Q, K1))
        fit = path_system(geo, x, x_idx, self._paths(Q, dev), geom, jac=J, gains=gains.reshape(B * M, -1),
                          path_mask=det.reshape(B * M, -1))
        return ((2.0 / cfg.noise_watt * fit.jtj).reshape(B, M, Q * K1, Q * K1),
                (fit.path_energy / cfg.noise_watt).reshape(B, M, Q, cfg.n_tx))

    def fuse(self, msgs: ApMessages, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CPU fusion (module docstring): psi [B, Q, 4] (g, v per target) and every AP's local estimate
        [B, M, Q, 4] associated with the fused targets (starts for the joint refinement).

        Each AP's target slot is one message ``theta_{m,s}`` with the Fisher weight ``J_{m,s}`` (the AP's FIM
        with the other slots' parameters and the undetected entries eliminated by the Schur complement). Messages
        are inliers (Gaussian, covariance ``J^-1``) or outliers (uniform over the area and the Doppler range):
        per target psi minimises ``sum_m min(r_m^T J_m r_m / 2 - log det(J_m) / 2, log|area| + n_f log(2 f_max))``,
        solved exactly by weighted least squares on every non-empty inlier subset of its messages (multi-started
        from each inlier's local estimate) and keeping the lowest cost. When two APs conflict, the more precise one
        wins. A target that no AP detected gets the prior mean (area centre, zero velocity).
        """
        cfg = self.cfg
        B, M, Q, K1 = msgs.theta.shape
        Jw_t, _ = self.fisher_weights(msgs, x)
        Jw = Jw_t.cpu().numpy()
        th_t, _, det_t = _placeholders(msgs, self._geometry(x.device), x.device)
        det = det_t.cpu().numpy()  # [B, M, Q, N]: the paths the APs detected
        theta = th_t.cpu().numpy()
        lay = _NumpyLayout(cfg)
        psi = np.empty((B, Q, 4))
        starts = np.empty((B, M, Q, 4))
        for b in range(B):
            valid = det[b].any(-1)  # [M, Q] slots with a detected target
            keep = np.zeros((M, Q, K1), dtype=bool)
            keep[..., :2] = valid[..., None]
            keep[..., 2:] = det[b]
            W, logdet = np.zeros((M, Q, K1, K1)), np.zeros((M, Q))
            for m in range(M):
                for sl in range(Q):
                    if valid[m, sl]:
                        W[m, sl], logdet[m, sl] = _slot_whitener(Jw[b, m], keep[m].reshape(-1), sl, K1)
            c_out = lay.log_area + det[b].sum(-1) * lay.log_doppler_span  # [M, Q]
            local = np.stack([[lay.local_estimate(m, theta[b, m, sl], det[b, m, sl]) for sl in range(Q)]
                              for m in range(M)])  # [M, Q, 4]
            perm = _associate(local[..., :2], valid)  # [M, Q]: AP m's slot for target q
            for it in range(2 if Q > 1 else 1):
                for q in range(Q):
                    msgs_q = [(m, perm[m, q]) for m in range(M) if valid[m, perm[m, q]]]
                    psi[b, q] = lay.fuse_target(msgs_q, theta[b], W, logdet, c_out, local)
                if it == 0 and Q > 1:  # re-associate on the whitened distances to the fused targets
                    perm = lay.reassociate(theta[b], W, valid, psi[b], perm)
            for m in range(M):
                starts[b, m] = local[m, perm[m]]
        return torch.from_numpy(psi).to(x.device), torch.from_numpy(starts).to(x.device)

    # ------------------------------------------------------------------------------------------ centralized ML
    def _central_starts(self, maps: list, psi_d: torch.Tensor) -> torch.Tensor:
        """Starts [B, C Q, Q, 4] from the CPU's coarse search: the per-path statistics of every AP summed on the
        common position grid (all N M paths non-coherently), its ``n_candidates`` best peaks, each with the
        velocity fitted to the paths' best Dopplers (least squares weighted by their statistics) and put in place
        of each fused target in turn."""
        cfg = self.cfg
        B, Q = psi_d.shape[:2]
        M, N = cfg.n_rx, cfg.n_tx
        dev = psi_d.device
        grid = self._grid(dev)
        geo = self._geometry(dev)
        Tn = torch.stack([t for t, _ in maps]).view(B, M, N, -1)
        Fi = torch.stack([f for _, f in maps]).view(B, M, N, -1)
        C = self.n_candidates
        out = psi_d[:, None].expand(B, C * Q, Q, 4).clone()
        for b in range(B):
            top = _peaks(Tn[b].sum((0, 1)), grid["pts"], C, geo.range_res)
            for c, gi in enumerate(top.tolist()):
                g = grid["pts"][gi]
                em = g - geo.rx
                em = em / torch.linalg.vector_norm(em, dim=-1, keepdim=True).clamp_min(1e-9)
                en = g - geo.tx
                en = en / torch.linalg.vector_norm(en, dim=-1, keepdim=True).clamp_min(1e-9)
                A = (geo.kf * (em[:, None] + en[None])).reshape(M * N, 2)
                f = grid["f"][Fi[b, :, :, gi]].reshape(M * N)
                w = Tn[b, :, :, gi].reshape(M * N).to(F64).clamp_min(0).sqrt()[:, None]
                v = torch.linalg.lstsq(w * A, w[:, 0:1] * f[:, None]).solution[:, 0]
                v = v.clamp(-cfg.max_speed, cfg.max_speed)
                for q in range(Q):
                    out[b, c * Q + q, q] = torch.cat([g, v])
        return out

    def joint_refine(self, y: torch.Tensor, x: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centralized ML over psi from every start [B, S, Q, 4]; returns the most likely psi [B, Q, 4] and its
        explained energy [B] (the CPU's likelihood check)."""
        cfg = self.cfg
        B, S, Q, _ = starts.shape
        M, N = cfg.n_rx, cfg.n_tx
        dev = y.device
        geo = self._geometry(dev)
        yl = y.reshape(B * M, *y.shape[2:])
        scene = torch.arange(B, device=dev).repeat_interleave(S)  # problem -> scene
        lo = torch.cat([geo.lower, torch.full((2,), -cfg.max_speed, dtype=F64, device=dev)])
        hi = torch.cat([geo.upper, torch.full((2,), cfg.max_speed, dtype=F64, device=dev)])
        paths = self._paths(Q, dev)

        def evaluate(th: torch.Tensor, idx: torch.Tensor) -> PathSystem:
            P_ = th.shape[0]
            geom, J = geo.joint_paths(th.view(P_, Q, 4))
            sc = scene[idx]
            y_idx = (sc[:, None] * M + torch.arange(M, device=dev)).reshape(-1)
            fit = path_system(geo, x, sc.repeat_interleave(M), paths, geom, y=yl, y_idx=y_idx, jac=J)
            return PathSystem(fit.energy.view(P_, M).sum(1), fit.gains.view(P_, M * Q * N),
                              fit.jtj.view(P_, M, 4 * Q, 4 * Q).sum(1), fit.grad.view(P_, M, 4 * Q).sum(1))

        def project(th: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            v = torch.maximum(torch.minimum(th.view(-1, Q, 4), hi), lo)
            return torch.cat([geo.project_position(v[..., :2]), v[..., 2:]], -1).reshape(th.shape)

        th0 = project(starts.reshape(B * S, Q * 4).to(dev, F64), scene)
        vstep = geo.doppler_res / geo.kf / 2
        max_step = torch.tensor([geo.range_res / 2] * 2 + [vstep] * 2, dtype=F64, device=dev).repeat(Q)
        th, fit = _levenberg_marquardt(evaluate, th0, project, tol=1e-4 * cfg.noise_watt, max_iter=self.max_iter,
                                       max_step=max_step)
        e = fit.energy.view(B, S)
        k = e.argmax(1)
        ar = torch.arange(B, device=dev)
        return th.view(B, S, Q, 4)[ar, k], e[ar, k]


def _adaptive_grid(cfg: SystemConfig, h0: float, refinement: float, h_min: float = 0.25) -> torch.Tensor:
    """Cell centres [G, 2] float64 of a quadtree over the area: start at spacing ``h0``, halve a cell while its size
    exceeds the local ripple length ``min(min_n d_n / Nt, min_m d_m / Mr) / refinement`` and ``h_min``."""
    tx = torch.tensor(cfg.tx_positions, dtype=F64)
    rx = torch.tensor(cfg.rx_positions, dtype=F64)
    (x0, x1), (y0, y1) = cfg.area
    gx = torch.arange(x0 + h0 / 2, x1, h0, dtype=F64)
    gy = torch.arange(y0 + h0 / 2, y1, h0, dtype=F64)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    h, out = h0, []
    aps = torch.cat([tx, rx])
    while pts.shape[0]:
        dt = torch.cdist(pts, tx).min(1).values
        dr = torch.cdist(pts, rx).min(1).values
        ell = torch.minimum(dt / cfg.n_tx_antennas, dr / cfg.n_rx_antennas) / refinement
        split = (h > ell) & (h / 2 >= h_min)
        far = torch.cdist(pts, aps).min(1).values >= _AP_CLEARANCE
        out.append(pts[~split & far])
        q = h / 4
        pts = torch.cat([pts[split] + torch.tensor([dx, dy], dtype=F64) for dx in (-q, q) for dy in (-q, q)])
        h /= 2
    return torch.cat(out)


def _peaks(T: torch.Tensor, pts: torch.Tensor, count: int, radius: float) -> torch.Tensor:
    """Indices of the ``count`` highest values of T [G] at points [G, 2], greedily at least ``radius`` apart
    (non-maximum suppression; the best is repeated when fewer exist)."""
    order = torch.argsort(T, descending=True)[: max(64 * count, 256)]
    keep: list[int] = []
    for i in order.tolist():
        if T[i] <= 0 and keep:
            break
        if all(float(torch.linalg.vector_norm(pts[i] - pts[j])) >= radius for j in keep):
            keep.append(i)
            if len(keep) == count:
                break
    keep += keep[:1] * (count - len(keep))
    return torch.tensor(keep, dtype=torch.long, device=T.device)


# ================================================================================================ CPU helpers (numpy)
def _placeholders(msgs: ApMessages, geo: _Geometry, dev: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoded messages with finite placeholders for the NaN (undetected) entries: theta (area centre, Doppler 0),
    gains (0) and the detection mask [B, M, Q, N]."""
    th = msgs.theta.to(dev, F64)
    det = torch.isfinite(th[..., 2:]) & torch.isfinite(msgs.gains.to(dev))
    th = th.clone()
    centre = (geo.lower + geo.upper) / 2
    th[..., :2] = torch.where(torch.isfinite(th[..., :2]), th[..., :2], centre)
    th[..., 2:] = torch.where(det, th[..., 2:], torch.zeros((), dtype=F64, device=dev))
    gains = torch.where(det, msgs.gains.to(dev, C128), torch.zeros((), dtype=C128, device=dev))
    return th, gains, det


def _slot_whitener(J: np.ndarray, keep: np.ndarray, slot: int, k1: int) -> tuple[np.ndarray, float]:
    """Whitener W [k1, k1] (``||W r||^2 = r^T J_s r``, zero rows / columns on dropped entries) and log det J_s of
    the Fisher information J_s of one target slot's kept entries, the other slots' parameters and the dropped
    entries eliminated as nuisance (Schur complement). Eigen-clipped when not positive definite."""
    D = J.shape[0]
    J = 0.5 * (J + J.T)
    mine = np.zeros(D, dtype=bool)
    mine[slot * k1:(slot + 1) * k1] = True
    k = mine & keep
    W = np.zeros((k1, k1))
    Jk = J[np.ix_(k, k)]
    rest = ~k
    if rest.any():
        Jc = J[np.ix_(k, rest)]
        Jk = Jk - Jc @ np.linalg.pinv(J[np.ix_(rest, rest)], rcond=1e-12, hermitian=True) @ Jc.T
        Jk = 0.5 * (Jk + Jk.T)
    w, V = np.linalg.eigh(Jk)
    w = np.maximum(w, 1e-12 * max(float(w.max()), 1e-300))
    nk = w.size
    W[:nk, k[slot * k1:(slot + 1) * k1]] = (V * np.sqrt(w)).T
    return W, float(np.sum(np.log(w)))


def _associate(points: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """perm [M, Q]: AP m's slot matched to the reference AP's slot q (Hungarian on squared distances of locations
    [M, Q, 2]); the reference is the AP with the most detected slots (``valid`` [M, Q])."""
    M, Q, _ = points.shape
    ref = 0 if valid is None else int(np.argmax(valid.sum(-1)))
    perm = np.tile(np.arange(Q), (M, 1))
    for m in range(M):
        if m == ref:
            continue
        cost = ((points[ref][:, None, :] - points[m][None, :, :]) ** 2).sum(-1)
        r, c = linear_sum_assignment(cost)
        perm[m, r] = c
    return perm


class _NumpyLayout:
    """The CPU side in numpy: model h_m(psi) of the per-AP parameters, local estimates, the robust WLS."""

    def __init__(self, cfg: SystemConfig) -> None:
        self.cfg = cfg
        self.tx = np.array(cfg.tx_positions, dtype=np.float64)
        self.rx = np.array(cfg.rx_positions, dtype=np.float64)
        self.tx_axes = np.array(cfg.tx_axes, dtype=np.float64)
        self.rx_axes = np.array(cfg.rx_axes, dtype=np.float64)
        geo = _Geometry(cfg)
        self.lower, self.upper = geo.lower.numpy(), geo.upper.numpy()
        self.kf = geo.kf
        self.N, self.M = len(self.tx), len(self.rx)
        vmax = cfg.max_speed
        self.lo = np.concatenate([self.lower, [-vmax, -vmax]])
        self.hi = np.concatenate([self.upper, [vmax, vmax]])
        self.log_area = float(np.log(np.prod(self.upper - self.lower)))
        self.log_doppler_span = float(np.log(2 * geo.f_max))

    def model(self, m: int, g: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """theta_m of one target at (g, v): [g_x, g_y, f_0 .. f_{N-1}] [2 + N] and its Jacobian [2 + N, 4]."""
        N = self.N
        dm_vec = g - self.rx[m]
        dm = max(np.linalg.norm(dm_vec), 1e-9)
        em = dm_vec / dm
        dn_vec = g - self.tx
        dn = np.maximum(np.linalg.norm(dn_vec, axis=-1), 1e-9)
        en = dn_vec / dn[:, None]
        h = np.concatenate([g, self.kf * (en @ v + em @ v)])
        jac = np.zeros((2 + N, 4))
        jac[0, 0] = jac[1, 1] = 1.0
        pv_m = (v - (em @ v) * em) / dm
        pv_n = (v[None] - (en @ v)[:, None] * en) / dn[:, None]
        jac[2:, :2] = self.kf * (pv_n + pv_m)
        jac[2:, 2:] = self.kf * (en + em)
        return h, jac

    def local_estimate(self, m: int, th: np.ndarray, det: np.ndarray | None = None) -> np.ndarray:
        """One AP's (g, v) [4] of one target: its local position and the velocity from its detected Dopplers
        (least squares; minimum norm with a single detected path)."""
        N = self.N
        use = np.ones(N, dtype=bool) if det is None or not det.any() else det
        g = np.clip(th[:2], self.lower + 1e-6, self.upper - 1e-6)
        em = (g - self.rx[m]) / max(np.linalg.norm(g - self.rx[m]), 1e-9)
        en = (g - self.tx) / np.maximum(np.linalg.norm(g - self.tx, axis=-1), 1e-9)[:, None]
        A = self.kf * (en + em)
        v = np.linalg.lstsq(A[use], th[2:][use], rcond=None)[0]
        vmax = self.cfg.max_speed
        return np.concatenate([g, np.clip(v, -vmax + 1e-9, vmax - 1e-9)])

    def _wls(self, msgs_q: list[tuple[int, int]], theta: np.ndarray, W: np.ndarray, x0: np.ndarray
             ) -> np.ndarray:
        """Bounded weighted least squares of one target's psi [4] from its inlier messages."""

        def fun(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            res, jac = [], []
            for m, sl in msgs_q:
                h, jh = self.model(m, p[:2], p[2:])
                res.append(W[m, sl] @ (theta[m, sl] - h))
                jac.append(-W[m, sl] @ jh)
            return np.concatenate(res), np.concatenate(jac)

        p0 = np.clip(x0, self.lo + 1e-9, self.hi - 1e-9)
        sol = least_squares(lambda p: fun(p)[0], p0, jac=lambda p: fun(p)[1], bounds=(self.lo, self.hi),
                            xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100)
        return sol.x

    def _mixture_cost(self, p: np.ndarray, msgs_q: list[tuple[int, int]], theta: np.ndarray, W: np.ndarray,
                      logdet: np.ndarray, c_out: np.ndarray) -> float:
        cost = 0.0
        for m, sl in msgs_q:
            h, _ = self.model(m, p[:2], p[2:])
            r = W[m, sl] @ (theta[m, sl] - h)
            cost += min(0.5 * float(r @ r) - 0.5 * logdet[m, sl], float(c_out[m, sl]))
        return cost

    def fuse_target(self, msgs_q: list[tuple[int, int]], theta: np.ndarray, W: np.ndarray, logdet: np.ndarray,
                    c_out: np.ndarray, local: np.ndarray) -> np.ndarray:
        """psi [4] of one target from its messages (AP m, slot s): the inlier subset of lowest mixture cost."""
        if not msgs_q:
            return np.concatenate([(self.lower + self.upper) / 2, [0.0, 0.0]])
        best, best_cost = None, np.inf
        for r in range(len(msgs_q), 0, -1):
            for subset in itertools.combinations(msgs_q, r):
                for m, sl in subset:
                    p = self._wls(list(subset), theta, W, local[m, sl])
                    c = self._mixture_cost(p, msgs_q, theta, W, logdet, c_out)
                    if c < best_cost - 1e-12:
                        best, best_cost = p, c
        return best

    def reassociate(self, theta: np.ndarray, W: np.ndarray, valid: np.ndarray, psi: np.ndarray,
                    perm: np.ndarray) -> np.ndarray:
        """perm [M, Q] minimising the whitened distances between each AP's slots and the fused targets."""
        M, Q, _ = theta.shape
        out = perm.copy()
        for m in range(M):
            cost = np.zeros((Q, Q))
            for q in range(Q):
                h, _ = self.model(m, psi[q, :2], psi[q, 2:])
                for sl in range(Q):
                    if valid[m, sl]:
                        r = W[m, sl] @ (theta[m, sl] - h)
                        cost[q, sl] = np.log1p(float(r @ r))
            r_, c_ = linear_sum_assignment(cost)
            out[m, r_] = c_
        return out


@register("ml")
def _create(cfg: SystemConfig, checkpoint: str | None = None, **options) -> MLEstimator:
    if checkpoint is not None:
        raise ValueError("the ML estimator has no checkpoint")
    return MLEstimator(cfg, **options)


@register("ml-joint")
def _create_joint(cfg: SystemConfig, checkpoint: str | None = None, **options) -> MLEstimator:
    if checkpoint is not None:
        raise ValueError("the ML estimator has no checkpoint")
    return MLEstimator(cfg, joint=True, **options)
