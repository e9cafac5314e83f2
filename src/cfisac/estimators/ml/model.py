"""The exact per-AP likelihood of Eq. (6): path geometry, variable-projection systems, Levenberg-Marquardt.

Every path p = (n, q) contributes ``alpha_p a_r(u_p) (x) s_p`` with
``s_p[i, t] = e^{-j 2 pi i df d_p / c} e^{+j 2 pi t dT f_p} a_t^H(w_p) x_{i,n}[t]`` (package docstring). Shapes:
``L`` independent single-AP problems, ``P`` paths each, ``K`` nonlinear parameters; float64 / complex128
throughout, on the device of the inputs (nothing is created on a fixed device).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...config import SPEED_OF_LIGHT, SystemConfig
from ...physics import ApLayout, SensingGrid, path_phase

TWO_PI = 2.0 * math.pi
F64, C128, C64 = torch.float64, torch.complex128, torch.complex64
AP_CLEARANCE = 1.0  # m: positions are kept this far from every AP (angles are undefined at an AP)
CHUNK_BYTES = 2**26  # working-set target of one chunk (64 MiB)


# ================================================================================================ geometry
class _Geometry:
    """AP positions / axes as float64 tensors and the constants of the comb (on ``device``)."""

    def __init__(self, cfg: SystemConfig, device: torch.device | str = "cpu") -> None:
        lay = ApLayout.from_config(cfg, device)
        grid = SensingGrid.from_config(cfg, device)
        self.cfg = cfg
        self.grid = grid
        self.device = torch.device(device)
        self.tx, self.rx = lay.tx, lay.rx  # [N, 2], [M, 2]
        self.tx_axes, self.rx_axes = lay.tx_axes, lay.rx_axes
        self.lower, self.upper = lay.lower, lay.upper
        self.i_abs, self.t_abs = grid.i_abs, grid.t_abs  # absolute comb indices [Ns], [Ts] float64
        self.df, self.dT = grid.df, grid.dT
        self.kf = cfg.carrier_frequency / SPEED_OF_LIGHT  # bistatic Doppler per m/s of v . (e_n + e_m)
        self.sp = grid.spacing
        self.range_res = grid.range_res
        self.doppler_res = grid.doppler_res
        self.f_amb = grid.unambiguous_doppler
        self.f_max = min(grid.max_doppler + self.doppler_res, self.f_amb)
        self.d_max = cfg.max_bistatic_range() + self.range_res
        self.aps = torch.cat([self.tx, self.rx])
        inward = self.lower + self.upper - 2 * self.aps  # away from each AP, into the area
        self.inward = inward / torch.linalg.vector_norm(inward, dim=-1, keepdim=True)
        self.k_rx = torch.arange(cfg.n_rx_antennas, dtype=F64, device=device)
        self.k_tx = torch.arange(cfg.n_tx_antennas, dtype=F64, device=device)

    def project_position(self, g: torch.Tensor) -> torch.Tensor:
        """Clamp positions [..., 2] to the area, then push them radially to at least ``AP_CLEARANCE`` from
        every AP (at an AP the angles and their derivatives are undefined)."""
        g = torch.maximum(torch.minimum(g, self.upper), self.lower)
        for a in range(self.aps.shape[0]):
            ap = self.aps[a]
            diff = g - ap
            dist = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
            safe = torch.where(dist > 1e-12, diff / dist.clamp_min(1e-12), self.inward[a])
            g = torch.where(dist < AP_CLEARANCE, ap + AP_CLEARANCE * safe, g)
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
    return path_phase(geo.grid, d, f)


def grouped_matmul(a: torch.Tensor, X: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``a[l] @ X[idx[l]]`` [L, r, n] for ``a`` [L, r, k], ``X`` [R, k, n] and ``idx`` [L] (long).

    Problems that share a row of X (the candidates of one scene / AP) are stacked into one GEMM (groups padded to
    the largest), so X is read once per row instead of being copied once per problem. When the groups are too
    uneven for padding to pay off (e.g. a few active problems left in a Levenberg-Marquardt loop), X is gathered
    per problem instead. Same result either way (up to rounding).
    """
    L, r, k = a.shape
    uniq, inv, counts = torch.unique(idx, return_inverse=True, return_counts=True)
    G = uniq.numel()
    C = int(counts.max())
    if G * C > 2 * L or C == 1:
        return a @ X[idx]
    order = torch.argsort(inv, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(inv)
    rank[order] = torch.arange(L, device=a.device) - starts[inv[order]]
    A = a.new_zeros(G, C, r, k)
    A[inv, rank] = a
    Xg = X if G == X.shape[0] and bool((uniq == torch.arange(G, device=uniq.device)).all()) else X[uniq]
    return (A.view(G, C * r, k) @ Xg).view(G, C, r, -1)[inv, rank]


def _beams(weights: torch.Tensor, x: torch.Tensor, x_idx: torch.Tensor, n_of_path: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[l, p, k] x[x_idx[l], n_p, k, i, t]`` [l, P, Ns, Ts] complex128 (transmit beams per path)
    for ``weights`` [l, P, Nt] and ``x`` [B, N, Nt, Ns, Ts] complex128."""
    B, N, Nt, Ns, Ts = x.shape
    out = torch.empty(*weights.shape[:2], Ns, Ts, dtype=C128, device=x.device)
    for n in range(N):
        sel = (n_of_path == n).nonzero().flatten()
        if sel.numel():
            out[:, sel] = grouped_matmul(weights[:, sel], x[:, n].reshape(B, Nt, Ns * Ts), x_idx).view(
                -1, sel.numel(), Ns, Ts)
    return out


def path_system(
    geo: _Geometry, x: torch.Tensor, x_idx: torch.Tensor, n_of_path: torch.Tensor,
    geom: tuple[torch.Tensor, ...], *, y: torch.Tensor | None = None, y_idx: torch.Tensor | None = None,
    jac: torch.Tensor | None = None, gains: torch.Tensor | None = None, path_mask: torch.Tensor | None = None,
) -> PathSystem:
    """Explained energy, gains and Gauss-Newton system of L single-AP path models (package docstring).

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
    per = P * (2 * nf + 6) * Ns * Ts * 16
    step = max(1, CHUNK_BYTES // per)
    out_e, out_a, out_j, out_g, out_p = [], [], [], [], []
    dev = geom[0].device
    i_abs, t_abs = geo.i_abs, geo.t_abs
    x = x.to(C128)
    yf = None if y is None else y.to(C128).reshape(-1, Mr, Ns * Ts)
    tx_d = 1j * TWO_PI * geo.sp * geo.k_tx  # d a_t^H / dw = a_t^H * (j 2 pi sp k)
    rx_d = -1j * TWO_PI * geo.sp * geo.k_rx  # d a_r / du = a_r * (-j 2 pi sp k)
    eye = torch.eye(P, dtype=C128, device=dev)
    for s0 in range(0, L, step):
        sl = slice(s0, min(L, s0 + step))
        nl = sl.stop - sl.start
        u_rx, d, f, w = (g[sl] for g in geom)
        ar = geo.steer(u_rx, Mr)  # [nl, P, Mr]
        at_h = geo.steer(w, Nt).conj()  # [nl, P, Nt]
        ph = _phases(geo, d, f)
        if path_mask is not None:
            ph = ph * path_mask[sl].to(F64)[..., None, None]
        if deriv:  # transmit beams and their AoD derivatives in one product: [nl, 2P, Ns, Ts]
            bb = _beams(torch.cat([at_h, at_h * tx_d], 1), x, x_idx[sl], torch.cat([n_of_path, n_of_path]))
            F = torch.empty(nl, P, 4, Ns, Ts, dtype=C128, device=dev)  # [s, i s, t s, ds/dw], written in place
            s = torch.mul(ph, bb[:, :P], out=F[:, :, 0])
            torch.mul(s, i_abs[:, None], out=F[:, :, 1])
            torch.mul(s, t_abs, out=F[:, :, 2])
            torch.mul(ph, bb[:, P:], out=F[:, :, 3])
            del bb, s
        else:
            s = ph * _beams(at_h, x, x_idx[sl], n_of_path)
            F = s[:, :, None]
        del ph
        Fm = F.reshape(nl, P * nf, Ns * Ts)
        FG = (Fm @ Fm.mH).conj().resolve_conj()  # [nl, P nf, P nf]: sum conj(F_a) F_b
        hg00 = ar.conj() @ ar.mT  # [nl, P, P]
        A0 = P * nf
        if deriv:
            ard = ar * rx_d
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
            # beam outputs a_r^H y (and (d a_r / du)^H y): [nl, P or 2P, Ns Ts], y read once per AP
            wr = torch.cat([ar, ard], 1) if deriv else ar
            zz = grouped_matmul(wr.conj(), yf, y_idx[sl]).conj()  # conj(a_r^H y)
            Fp = F.reshape(nl, P, nf, Ns * Ts)
            c = (Fp @ zz[:, :P, :, None]).conj().reshape(nl, A0)  # F^H z per path
            if deriv:
                c = torch.cat([c, (Fp[:, :, 0, None] @ zz[:, P:, :, None]).conj().reshape(nl, P)], 1)
            del zz
            sy = c[:, e_idx]
            alpha = _solve_psd(G, sy)
            out_e.append((sy.conj() * alpha).sum(-1).real)
        else:
            alpha = gains[sl].to(C128)
        out_a.append(alpha)
        Ginv = _solve_psd(G, eye.expand(nl, P, P).contiguous())
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
    step = max(1, CHUNK_BYTES // (P * (Nt + 2) * Ns * Ts * 16 + Mr * Ns * Ts * 16))
    for s0 in range(0, L, step):
        sl = slice(s0, min(L, s0 + step))
        u_rx, d, f, w = (g[sl] for g in geom)
        b = _beams(geo.steer(w, Nt).conj(), x.to(C128), x_idx[sl], n_of_path)
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
    ``project(theta, rows)`` maps a trial point into the feasible set. Returns theta [L, K] and the
    :class:`PathSystem` at it (energy, gains, jtj, grad, path_energy). A problem stops when the predicted or the
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
    path_energy = None if fit.path_energy is None else fit.path_energy.clone()  # None: evaluate gives none
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
        if path_energy is not None:
            path_energy[acc] = new.path_energy[ok]
        lam[acc] = (lam[acc] / 3).clamp_min(1e-9)
        lam[idx[~ok]] = lam[idx[~ok]] * 4
        done = (ok & (gain < tol)) | (pred.abs() < tol) | (lam[idx] > 1e8)
        active[idx[done]] = False
    return theta, PathSystem(energy, gains, jtj, grad, path_energy)
