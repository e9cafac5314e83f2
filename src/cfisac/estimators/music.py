"""MUSIC-based fully distributed sensing (paper Section V-A, extension of [11] to cell-free ISAC), batched in PyTorch.

The algorithm of the literal scene-at-a-time reference :mod:`cfisac.estimators.reference.music` (its docstring
explains every step and the documented choices; with ``refine_method="zoom", dtype=torch.complex128`` the messages
equal the reference's, the defaults refine by Newton steps in complex64), run on a batch of scenes, all receive APs,
all beams and all detection candidates in lockstep on any device; sequential steps (CLEAN detection, cyclic
refinement with early stopping) are batched with masks. Each receive AP m uses only its echoes Y_m [Mr, Ns, Ts] and
the known transmit signals X (assumed known at the receive AP for this scheme: README, "Physics conventions and the
paper's slips"):

1. AoA by MUSIC on the spatial covariance of the cells of Y_m (or, ``covariance="gated"``, of the range-Doppler
   compressed snapshots inside the feasible gates), forward-backward averaged; signal subspace dimension Q or
   MDL / AIC (:func:`estimate_model_order`); pseudo-spectrum peaks on a fine direction-cosine grid refined by zoom
   (:func:`music_doa`).
2. Least-squares receive beams onto the distinct MUSIC steering vectors, ``r = A^+ y`` per cell.
3. Per beam and target (CLEAN): the ``n_candidates`` best points of the AoA ray (and of its endfire alias ray) by the
   geometry-constrained delay-Doppler maps of all N transmit APs (:func:`cfisac.estimators.dsp.ray_delay_doppler_map`,
   Eq. 6 matched filter), each refined (:func:`cfisac.estimators.dsp.refine_delay_doppler`, AoD following the
   range) and polished with the targets already found (alternating projection with re-detection); the candidate
   leaving the smallest joint least-squares residual is kept; finally all paths are polished cyclically.
4. CPU fusion of the messages (AoA, N bistatic ranges and Dopplers per target): :func:`fuse_bistatic`.

Fronthaul: ``fronthaul_bits_per_ap = 96 Q`` (paper Section III-D); the message actually used has
``message_bits_per_ap = 32 (1 + 2N) Q`` bits. ``Q >= Mr`` raises ``ValueError`` (MUSIC needs a noise subspace).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..config import SPEED_OF_LIGHT, SystemConfig
from ..geometry import steering_vectors
from ..physics import ApLayout, SensingGrid, aoa_direction, direction_cosine, ray_distance, ray_exit
from . import Estimate, register_without_checkpoint
from .base import BatchedEstimator, check_int_options
from .dsp import (
    endfire_alias,
    find_peaks,
    joint_fit,
    music_null_spectrum,
    path_signatures,
    ray_delay_doppler_map,
    refine_delay_doppler,
    top_peaks,
    transmit_covariance,
    zoom_maximize,
)
from .fusion import BistaticMessages, bistatic_message_bits, fuse_bistatic

__all__ = ["MusicEstimator", "estimate_model_order", "music_doa"]

MODEL_ORDERS = ("given", "mdl", "aic")
COVARIANCES = ("raw", "gated")


def estimate_model_order(eigenvalues: torch.Tensor, n_snapshots: int | float, criterion: str) -> torch.Tensor:
    """Number of sources [P] (long) by MDL or AIC (Wax & Kailath 1985) from covariance eigenvalues [P, Mr].

    ``MDL(k) = -S (Mr - k) log(g_k / a_k) + k (2 Mr - k) log(S) / 2`` and
    ``AIC(k) = -2 S (Mr - k) log(g_k / a_k) + 2 k (2 Mr - k)``, with ``g_k`` / ``a_k`` the geometric / arithmetic
    means of the ``Mr - k`` smallest eigenvalues and S snapshots; the minimiser over ``k = 0 .. Mr - 1``.
    """
    if criterion not in ("mdl", "aic"):
        raise ValueError(f"criterion must be 'mdl' or 'aic', got {criterion!r}")
    lam = torch.sort(eigenvalues.real.to(torch.float64).clamp_min(1e-300), dim=-1, descending=True).values
    mr = lam.shape[-1]
    s = float(n_snapshots)
    scores = []
    for k in range(mr):
        tail = lam[..., k:]
        log_ratio = tail.log().mean(-1) - tail.mean(-1).log()
        penalty = k * (2 * mr - k)
        if criterion == "mdl":
            scores.append(-s * (mr - k) * log_ratio + 0.5 * penalty * math.log(s))
        else:
            scores.append(-2 * s * (mr - k) * log_ratio + 2 * penalty)
    return torch.stack(scores, -1).argmin(-1)


def music_doa(cov: torch.Tensor, n_sources: int, *, spacing: float, n_signal: torch.Tensor | None = None,
              grid_size: int | None = None) -> torch.Tensor:
    """MUSIC direction cosines [P, n_sources] float64 from spatial covariances ``cov`` [P, Mr, Mr] complex.

    The noise subspace of problem p is spanned by its ``Mr - n_signal[p]`` smallest eigenvectors (``n_signal``
    [P] long, default ``n_sources``, clipped to [1, Mr - 1]). The null spectrum ``||E_n^H a(u)||^2`` (Eq. 2
    steering vectors) is evaluated on ``grid_size`` direction cosines (default ``max(512, 64 Mr)``; circular grid for
    half-wavelength spacing, so endfire is handled), the ``n_sources`` highest local maxima of the pseudo-spectrum
    ``-log(null)`` are refined by zooming on the exact null spectrum, and missing peaks are filled by cycling
    through the found ones (the reference's ``np.resize``). Sorted by peak height.
    """
    P, mr, _ = cov.shape
    k = torch.full((P,), n_sources, dtype=torch.long, device=cov.device) if n_signal is None else n_signal
    k = k.clamp(1, mr - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    keep = torch.arange(mr, device=cov.device)[None, :] < (mr - k)[:, None]
    noise = vecs * keep[:, None, :]
    periodic = spacing >= 0.5 - 1e-12
    g = grid_size or max(512, 64 * mr)
    if periodic:
        u = torch.arange(g, dtype=torch.float64, device=cov.device) * (2.0 / g) - 1.0
    else:
        u = torch.linspace(-1.0, 1.0, g, dtype=torch.float64, device=cov.device)
    spec = -music_null_spectrum(noise, u.expand(P, g), spacing).clamp_min(1e-300).log()
    peaks = find_peaks(spec, circular=periodic)
    none = ~peaks.any(-1)
    peaks[none, spec[none].argmax(-1)] = True
    idx, _, exists = top_peaks(spec, peaks, n_sources)
    n_found = exists.sum(-1).clamp_min(1)
    sel = idx.gather(1, torch.arange(n_sources, device=cov.device)[None, :] % n_found[:, None])

    def objective(c: torch.Tensor) -> torch.Tensor:  # [P, S, G] -> [P, S, G]
        return -music_null_spectrum(noise, c.reshape(P, -1), spacing).reshape(c.shape)

    lo, hi = (None, None) if periodic else (-1.0, 1.0)
    ref, _ = zoom_maximize(objective, u[sel], float(u[1] - u[0]), lower=lo, upper=hi)
    if periodic:
        ref = torch.remainder(ref + 1.0, 2.0) - 1.0
    return ref


@dataclass
class _Rows:
    """Per-problem context of the beam stage (one row = one receive beam, or one beam x candidate)."""

    r: torch.Tensor  # [P, Ns, Ts] beam output
    xi: torch.Tensor  # [P] long: scene of the row in the chunk's x
    rx: torch.Tensor  # [P, 2] receive AP position
    rx_axis: torch.Tensor  # [P, 2]
    side: torch.Tensor  # [P]

    def take(self, idx: torch.Tensor) -> _Rows:
        return _Rows(*(getattr(self, f.name)[idx] for f in fields(self)))


@dataclass
class _Tx:
    """The chunk's transmit signals x [b, N, Nt, Ns, Ts] and their covariances ``sum x x^H`` [b, N, Nt, Nt]."""

    x: torch.Tensor
    cov: torch.Tensor


@dataclass
class _Paths:
    """Path state of every row: L = Q N slots, slot l belongs to target l // N and transmit AP l % N."""

    d: torch.Tensor  # [P, L] bistatic range (m)
    f: torch.Tensor  # [P, L] bistatic Doppler (Hz)
    utx: torch.Tensor  # [P, L] AoD cosine
    urx: torch.Tensor  # [P, L] AoA cosine of the ray the path lies on
    valid: torch.Tensor  # [P, L] bool
    sig: torch.Tensor  # [P, L, Ns, Ts] unit-amplitude signatures (zero where not valid)

    def take(self, idx: torch.Tensor) -> _Paths:
        return _Paths(*(getattr(self, f.name)[idx] for f in fields(self)))

    def put(self, idx: torch.Tensor, other: _Paths) -> None:
        for f in fields(self):
            getattr(self, f.name)[idx] = getattr(other, f.name)


class MusicEstimator(BatchedEstimator):
    """MUSIC-based fully distributed sensing, batched (module docstring). ``est(y, x) -> Estimate``.

    Options (keyword-only, as the reference): ``model_order`` ``"given"`` (Q) / ``"mdl"`` / ``"aic"``;
    ``oversample`` zero padding of the range / Doppler DFTs (4); ``refine_rounds`` maximum cyclic refinement rounds
    (8, stopped per beam once no path moves by 1e-5 cell); ``n_candidates`` target candidates tried per detection (3);
    ``angle_grid`` MUSIC grid size (``max(512, 64 Mr)``); ``forward_backward`` (True); ``covariance`` ``"raw"`` /
    ``"gated"``; ``refine_method`` ``"newton"`` (default: damped Newton steps to the local maximum itself, see
    :func:`cfisac.estimators.dsp.refine_delay_doppler`) / ``"zoom"`` (the reference's 5-point zoom, 14 halvings);
    ``map_dtype`` complex dtype of the ray delay-Doppler maps (``torch.complex64``: only their peaks are used); and
    the :class:`BatchedEstimator` keywords ``device``, ``dtype`` (default ``torch.complex64`` here), ``chunk_size``.

    The defaults (Newton, complex64) are 1.7-2.1x faster than the reference's numerics (``refine_method="zoom",
    dtype=torch.complex128``, which reproduce :mod:`cfisac.estimators.reference.music` to 1e-6) with the same RMSE
    within its confidence interval on 128 quick scenes at 30 / 48 / 60 dBm (``benchmarks/results/batched.md``,
    "MUSIC: Newton and complex64"). MUSIC's estimate of a scene is sensitive to rounding: complex64 alone moves 16-48
    % of the scenes by more than 1 mm (mostly the low-SNR scenes, whose estimates are noise) at an unchanged RMSE.
    """

    name = "music"

    def __init__(self, cfg: SystemConfig, *, model_order: str = "given", oversample: int = 4, refine_rounds: int = 8,
                 n_candidates: int = 3, angle_grid: int | None = None, forward_backward: bool = True,
                 covariance: str = "raw", refine_method: str = "newton", map_dtype: torch.dtype = torch.complex64,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.complex64, chunk_size: int | None = None) -> None:
        if cfg.n_targets >= cfg.n_rx_antennas:
            raise ValueError(
                f"MUSIC resolves at most Mr - 1 = {cfg.n_rx_antennas - 1} targets per receive AP, got n_targets="
                f"{cfg.n_targets}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be 'gated' or 'raw', got {covariance!r}")
        if refine_method not in ("newton", "zoom"):
            raise ValueError(f"refine_method must be 'newton' or 'zoom', got {refine_method!r}")
        if map_dtype not in (torch.complex64, torch.complex128):
            raise ValueError(f"map_dtype must be torch.complex64 or torch.complex128, got {map_dtype!r}")
        if model_order not in MODEL_ORDERS:
            raise ValueError(f"model_order must be one of {MODEL_ORDERS}, got {model_order!r}")
        check_int_options(oversample=(oversample, 1), refine_rounds=(refine_rounds, 0), n_candidates=(n_candidates, 1))
        if angle_grid is not None and (not isinstance(angle_grid, int) or isinstance(angle_grid, bool)
                                       or angle_grid < 3):
            raise ValueError(f"angle_grid must be an integer >= 3 or None, got {angle_grid!r}")
        if not isinstance(forward_backward, bool):
            raise ValueError(f"forward_backward must be True or False, got {forward_backward!r}")
        super().__init__(cfg, device=device, dtype=dtype, chunk_size=chunk_size)
        self.model_order = model_order
        self.oversample = oversample
        self.refine_rounds = refine_rounds
        self.n_candidates = n_candidates
        self.angle_grid = angle_grid
        self.forward_backward = forward_backward
        self.covariance = covariance
        self.refine_method = refine_method
        self.map_dtype = map_dtype
        self.fronthaul_bits_per_ap, self.message_bits_per_ap = bistatic_message_bits(cfg.n_tx, cfg.n_targets)
        res = cfg.resolution()
        self.f_max = min(res["max_doppler_hz"] + res["doppler_resolution_hz"], res["unambiguous_doppler_hz"])
        self._geo: dict[torch.device, tuple[SensingGrid, ApLayout]] = {}

    def default_chunk_size(self) -> int:
        """Scenes per chunk: about 2 GiB of beam-stage working set (M Q n_candidates rows of Nt Ns Ts cells, x64 B).

        At the ``paper`` preset this is 2 scenes: measured peak RSS 1.20 GiB for a 2-scene chunk (simulation
        included); the ray maps are computed in sub-batches of :data:`cfisac.estimators.dsp.MAP_CHUNK_CELLS`."""
        cfg = self.cfg
        per_scene = cfg.n_rx * cfg.n_targets * self.n_candidates * cfg.n_tx_antennas * cfg.n_subcarriers \
            * cfg.n_symbols * 64
        return max(1, 2**31 // per_scene)

    def _geometry(self, device: torch.device) -> tuple[SensingGrid, ApLayout]:
        if device not in self._geo:
            self._geo[device] = (SensingGrid.from_config(self.cfg, device), ApLayout.from_config(self.cfg, device))
        return self._geo[device]

    # ------------------------------------------------------------------ stages
    def fuse(self, messages: BistaticMessages, x: torch.Tensor) -> Estimate:
        """CPU fusion (:func:`cfisac.estimators.fusion.fuse_bistatic`)."""
        return fuse_bistatic(self.cfg, messages)

    def ap_messages(self, y: torch.Tensor, x: torch.Tensor) -> BistaticMessages:
        """Every receive AP's message for a chunk: y [b, M, Mr, Ns, Ts], x [b, N, Nt, Ns, Ts] (complex).

        Returns :class:`BistaticMessages` with aoa [b, M, Q], ranges / dopplers [b, M, Q, N] float64.
        """
        cfg, Q, N = self.cfg, self.cfg.n_targets, self.cfg.n_tx
        grid, lay = self._geometry(y.device)
        b, M, mr, ns, ts = y.shape
        snap = y.reshape(b, M, mr, ns * ts)
        if self.covariance == "gated":
            cov, n_snap = self._gated_covariance(y, x)
        else:
            cov, n_snap = snap @ snap.conj().transpose(-1, -2) / snap.shape[-1], snap.shape[-1]
        if self.forward_backward:  # J conj(R) J: the ULA's steering vectors are conjugate-centro-symmetric
            cov = 0.5 * (cov + cov.flip(-1, -2).conj())
        cov = cov.reshape(b * M, mr, mr)
        n_signal = None
        if self.model_order != "given":
            n_signal = estimate_model_order(torch.linalg.eigvalsh(cov), n_snap, self.model_order)
        us = music_doa(cov, Q, spacing=cfg.antenna_spacing, n_signal=n_signal, grid_size=self.angle_grid)  # [bM, Q]
        # Distinct AoAs (the reference's 1e-9 merge): first occurrences carry a beam serving `count` targets.
        first = torch.ones_like(us, dtype=torch.bool)
        owner = torch.arange(Q, device=y.device).expand(b * M, Q).clone()
        for i in range(1, Q):
            for j in reversed(range(i)):
                hit = first[:, j] & ((us[:, i] - us[:, j]).abs() < 1e-9)
                first[:, i] &= ~hit
                owner[:, i] = torch.where(hit, j, owner[:, i])
        count = (owner[:, :, None] == torch.arange(Q, device=y.device)).sum(1) * first  # [bM, Q]
        offset = torch.cumsum(count, 1) - count
        a = steering_vectors(us, mr, cfg.antenna_spacing, y.dtype).transpose(1, 2) * first[:, None, :]  # [bM, Mr, Q]
        beams = torch.linalg.pinv(a, rtol=1e-15) @ snap.reshape(b * M, mr, -1)  # LS spatial separation [bM, Q, S]
        row_pm, row_j = torch.nonzero(first, as_tuple=True)
        m_idx = row_pm % M
        rows = _Rows(r=beams[row_pm, row_j].reshape(-1, ns, ts), xi=row_pm // M, rx=lay.rx[m_idx],
                     rx_axis=lay.rx_axes[m_idx], side=lay.rx_side[m_idx])
        paths = self._beam_targets(rows, _Tx(x, transmit_covariance(x)), count[row_pm, row_j], us[row_pm, row_j])
        aoa = torch.zeros(b * M, Q, dtype=torch.float64, device=y.device)
        ranges = torch.zeros(b * M, Q, N, dtype=torch.float64, device=y.device)
        dopplers = torch.zeros_like(ranges)
        for k in range(paths.d.shape[1] // N):
            sel = torch.nonzero(count[row_pm, row_j] > k, as_tuple=True)[0]
            slot = offset[row_pm[sel], row_j[sel]] + k
            aoa[row_pm[sel], slot] = paths.urx[sel, k * N]
            ranges[row_pm[sel], slot] = paths.d[sel, k * N:(k + 1) * N]
            dopplers[row_pm[sel], slot] = paths.f[sel, k * N:(k + 1) * N]
        return BistaticMessages(aoa.reshape(b, M, Q), ranges.reshape(b, M, Q, N), dopplers.reshape(b, M, Q, N))

    def _gated_covariance(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Spatial covariances [b, M, Mr, Mr] of the range-Doppler-compressed snapshots inside the feasible gates.

        As the reference's ``gated_covariance``: per transmit AP n and antenna l, matched filter ``conj(x_{n,l})``,
        unpadded 2-D DFT onto the bistatic range / Doppler grid, only the bins a target in the area can produce kept
        (range between the Tx-Rx baseline minus a cell and the farthest corner plus a cell, |Doppler| up to the
        largest possible plus a cell). Returns (R, snapshots per AP; the same for every receive AP of the config:
        the largest count is returned for the model-order criteria when they differ).
        """
        cfg = self.cfg
        grid, lay = self._geometry(y.device)
        b, M, mr, ns, ts = y.shape
        d = torch.arange(ns, dtype=torch.float64, device=y.device) * (
            SPEED_OF_LIGHT / (ns * grid.subcarrier_stride * grid.df))
        f = torch.fft.fftfreq(ts, grid.symbol_stride * grid.dT, dtype=torch.float64, device=y.device)
        fk = f.abs() <= self.f_max + grid.doppler_res
        (x0, x1), (y0, y1) = cfg.area
        corners = torch.tensor([[x0, y0], [x0, y1], [x1, y0], [x1, y1]], dtype=torch.float64, device=y.device)
        cov = torch.zeros((b, M, mr, mr), dtype=y.dtype, device=y.device)
        counts = []
        for m in range(M):
            count = 0
            for n in range(cfg.n_tx):
                lo = float((lay.rx[m] - lay.tx[n]).norm()) - grid.range_res
                hi = float(((corners - lay.tx[n]).norm(dim=1) + (corners - lay.rx[m]).norm(dim=1)).max())
                dk = (d >= lo) & (d <= hi + grid.range_res)
                z = torch.fft.ifft(y[:, m, None] * x[:, n, :, None].conj(), dim=3)[:, :, :, dk]  # [b, Nt, Mr, K, Ts]
                z = torch.fft.fft(z, dim=4)[..., fk]
                z = z.transpose(1, 2).reshape(b, mr, -1)
                cov[:, m] += z @ z.conj().transpose(-1, -2)
                count += z.shape[-1]
            cov[:, m] /= max(count, 1)
            counts.append(count)
        return cov, max(counts)

    # ------------------------------------------------------------------ beam stage
    def _beam_targets(self, rows: _Rows, x: _Tx, count: torch.Tensor, u: torch.Tensor) -> _Paths:
        """``count[p]`` targets of every beam row (CLEAN with candidate trials, then the cyclic polish).

        As the reference's ``beam_targets``: per detection step k the rows with ``count > k`` compute their
        ``n_candidates`` target candidates on the residual, each candidate's N paths are refined in turn against the
        paths found so far, the trial is polished (2 rounds, 1 with re-detection) and the candidate with the
        smallest least-squares residual ``||r - S alpha||`` wins; then all paths get ``refine_rounds`` rounds (2 with
        re-detection).
        """
        N, top = self.cfg.n_tx, self.n_candidates
        P, ns, ts = rows.r.shape
        qm = int(count.max()) if P else 0
        L = qm * N
        z = torch.zeros((P, L), dtype=torch.float64, device=rows.r.device)
        paths = _Paths(d=z.clone(), f=z.clone(), utx=z.clone(), urx=z.clone(), valid=z.bool(),
                       sig=torch.zeros((P, L, ns, ts), dtype=rows.r.dtype, device=rows.r.device))
        resid = rows.r.clone()
        for k in range(qm):
            act = torch.nonzero(count > k, as_tuple=True)[0]
            ra, pa = rows.take(act), paths.take(act)
            cand = self._target_candidates(ra, x, resid[act], u[act], top)
            rep = torch.arange(act.numel(), device=act.device).repeat_interleave(top)
            rt, pt = ra.take(rep), pa.take(rep)
            for i in range(N):  # the candidate's paths, each refined against those before it
                s = k * N + i
                d, f, utx, _ = self._refine(rt, x, i, cand["d"][..., i].reshape(-1), cand["f"][..., i].reshape(-1),
                                            cand["urx"].reshape(-1), pt.sig)
                self._set_path(rt, x, pt, s, d, f, utx, cand["urx"].reshape(-1))
            pt = self._polish(rt, x, pt, rounds=2, redetect=1)
            err = (rt.r - joint_fit(rt.r, pt.sig)[1]).abs().pow(2).sum((1, 2)).sqrt().to(torch.float64)
            err = torch.where(cand["exists"].reshape(-1), err, math.inf).reshape(-1, top)
            pick = torch.arange(act.numel(), device=act.device) * top + err.argmin(1)
            paths.put(act, pt.take(pick))
            resid[act] = ra.r - joint_fit(ra.r, paths.sig[act])[1]
        return self._polish(rows, x, paths, rounds=self.refine_rounds, redetect=2)

    def _set_path(self, rows: _Rows, x: _Tx, paths: _Paths, s: int, d: torch.Tensor, f: torch.Tensor,
                  utx: torch.Tensor, urx: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Write slot ``s`` of the rows ``idx`` (all rows if None) and recompute its signature."""
        n = s % self.cfg.n_tx
        sub = rows if idx is None else rows.take(idx)
        sel = slice(None) if idx is None else idx
        grid, _ = self._geometry(d.device)
        sig = path_signatures(grid, x.x[:, n:n + 1], torch.zeros(1, dtype=torch.long, device=d.device),
                              utx[:, None], d[:, None], f[:, None], x_index=sub.xi)[:, 0]
        paths.d[sel, s], paths.f[sel, s], paths.utx[sel, s], paths.urx[sel, s] = d, f, utx, urx
        paths.valid[sel, s] = True
        paths.sig[sel, s] = sig

    def _ray(self, rows: _Rows, urx: torch.Tensor) -> torch.Tensor:
        return aoa_direction(urx, rows.rx_axis, rows.side)

    def _refine(self, rows: _Rows, x: _Tx, n: int, d0: torch.Tensor, f0: torch.Tensor, urx: torch.Tensor,
                others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continuous (d, f) refinement of one path of transmit AP n per row, the signatures ``others`` [P, K, Ns,
        Ts] projected out; the AoD of every candidate range follows from the AoA ray ``urx``. Zoom half-widths of one
        FFT bin. Returns (d, f, u_tx, explained energy) [P]."""
        grid, lay = self._geometry(d0.device)
        e = self._ray(rows, urx)
        tx, ax = lay.tx[n], lay.tx_axes[n]

        def aod(cd: torch.Tensor) -> torch.Tensor:  # [P, G] ranges -> [P, G] AoD cosines
            rho = ray_distance(cd, rows.rx[:, None], e[:, None], tx)
            return direction_cosine(rows.rx[:, None] + rho[..., None] * e[:, None], tx, ax)

        d, f, _, obj = refine_delay_doppler(rows.r, grid, d0, f0, x_n=x.x[:, n], aod=aod, others=others,
                                            x_index=rows.xi, x_cov=x.cov[:, n],
                                            step_d=grid.range_res / self.oversample,
                                            step_f=grid.doppler_res / self.oversample, method=self.refine_method)
        return d, f, aod(d[:, None])[:, 0], obj

    def _path_peak(self, rows: _Rows, x: _Tx, resid: torch.Tensor, n: int, urx: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid peak (d, f) [P] of the constrained map of transmit AP n on each row's ray ``urx``."""
        grid, lay = self._geometry(resid.device)
        e = self._ray(rows, urx)
        rho = ray_exit(rows.rx, e, lay.lower, lay.upper)
        d_lo = (rows.rx - lay.tx[n]).norm(dim=-1)
        d_hi = rho + (rows.rx + rho[:, None] * e - lay.tx[n]).norm(dim=-1)
        pmap, d, f, _, valid = ray_delay_doppler_map(resid, x.x[:, n], grid, rx=rows.rx, e=e, tx=lay.tx[n],
                                                     tx_axis=lay.tx_axes[n], d_max=d_hi + grid.range_res / 2,
                                                     oversample=self.oversample, x_index=rows.xi,
                                                     x_cov=x.cov[:, n], map_dtype=self.map_dtype)
        ok = valid[:, :, None] & (d[None, :] >= d_lo[:, None])[:, :, None] & (f.abs() <= self.f_max)[None, None, :]
        flat = torch.where(ok, pmap, -math.inf).reshape(pmap.shape[0], -1).argmax(1)
        return d[flat // f.numel()], f[flat % f.numel()]

    def _polish(self, rows: _Rows, x: _Tx, paths: _Paths, rounds: int, redetect: int) -> _Paths:
        """Cyclic alternating-projection refinement of every row's paths, each with the others projected out; in
        the first ``redetect`` rounds each path is also re-detected (map peak on the data with the other paths
        cancelled, refined, kept if it explains more energy). A row stops after a round in which no path moved by
        1e-5 cell (once the re-detection rounds are over), as the reference."""
        grid, _ = self._geometry(rows.r.device)
        N = self.cfg.n_tx
        P, L = paths.valid.shape
        done = paths.valid.sum(1) <= 1
        for rnd in range(rounds):
            if bool(done.all()):
                break
            act = ~done
            change = torch.zeros(P, dtype=torch.float64, device=rows.r.device)
            for j in range(L):
                idx = torch.nonzero(act & paths.valid[:, j], as_tuple=True)[0]
                if idx.numel() == 0:
                    continue
                sub = rows.take(idx)
                mask = torch.ones(L, dtype=rows.r.dtype, device=rows.r.device)
                mask[j] = 0
                others = paths.sig[idx] * mask[None, :, None, None]
                d0, f0, urx = paths.d[idx, j], paths.f[idx, j], paths.urx[idx, j]
                d, f, utx, obj = self._refine(sub, x, j % N, d0, f0, urx, others)
                if rnd < redetect:
                    resid = sub.r - joint_fit(sub.r, others)[1]
                    dc, fc = self._path_peak(sub, x, resid, j % N, urx)
                    d2, f2, utx2, obj2 = self._refine(sub, x, j % N, dc, fc, urx, others)
                    better = obj2 > obj * (1.0 + 1e-6)
                    d, f, utx = torch.where(better, d2, d), torch.where(better, f2, f), torch.where(better, utx2, utx)
                moved = torch.maximum((d - d0).abs() / grid.range_res, (f - f0).abs() / grid.doppler_res)
                change[idx] = torch.maximum(change[idx], moved)
                self._set_path(rows, x, paths, j, d, f, utx, urx, idx)
            done = done | (act & (change < 1e-5) & (rnd >= redetect - 1))
        return paths

    def _target_candidates(self, rows: _Rows, x: _Tx, resid: torch.Tensor, u: torch.Tensor, top: int,
                           ) -> dict[str, torch.Tensor]:
        """Target-level detection on each row's residual [P, Ns, Ts]: the ``top`` best points of the AoA ray.

        A point at distance rho on the ray implies the bistatic ranges d_n(rho) of all N paths; the statistic is
        ``T(rho) = sum_n max_f M_n(d_n(rho), f)`` with the constrained maps M_n (linear interpolation in range, the
        Dopplers free), its local maxima are the candidates; near endfire the alias ray too. Returns ``value``,
        ``exists``, ``urx`` [P, top] and per transmit AP ``d``, ``f``, ``utx`` [P, top, N], best first.
        """
        grid, lay = self._geometry(resid.device)
        N, P = self.cfg.n_tx, resid.shape[0]
        alias, has = endfire_alias(u, grid.spacing, grid.u_res / 2)
        ray_row = torch.cat([torch.arange(P, device=u.device), torch.nonzero(has, as_tuple=True)[0]])
        uc = torch.cat([u, alias[has]])
        rr = rows.take(ray_row)
        e = self._ray(rr, uc)
        rho_max = ray_exit(rr.rx, e, lay.lower, lay.upper) + grid.range_res / 2
        step = grid.range_res / (2 * self.oversample)
        n_rho = torch.ceil((rho_max + 1e-9) / step).long().clamp_min(1)
        rho = torch.arange(int(n_rho.max()), dtype=torch.float64, device=u.device) * step
        ok = torch.arange(rho.numel(), device=u.device)[None, :] < n_rho[:, None]  # [R, G]
        pts = rr.rx[:, None, :] + rho[None, :, None] * e[:, None, :]
        total = torch.zeros(ok.shape, dtype=torch.float64, device=u.device)
        d_n, f_n, u_n = [], [], []
        for n in range(N):
            dn = rho[None, :] + (pts - lay.tx[n]).norm(dim=-1)
            d_max = torch.where(ok, dn, -math.inf).amax(1) + grid.range_res
            pmap, d, f, _, _ = ray_delay_doppler_map(resid[ray_row], x.x[:, n], grid, rx=rr.rx, e=e, tx=lay.tx[n],
                                                     tx_axis=lay.tx_axes[n], d_max=d_max, oversample=self.oversample,
                                                     x_index=rr.xi, x_cov=x.cov[:, n], map_dtype=self.map_dtype)
            pmap = torch.where((f.abs() <= self.f_max)[None, None, :], pmap, 0.0)
            pos = ((dn - d[0]) / (d[1] - d[0])).clamp(0, d.numel() - 1 - 1e-9)
            k0 = pos.floor().long()
            k1 = (k0 + 1).clamp_max(d.numel() - 1)
            w = (pos - k0)[..., None]
            lt = pmap.shape[-1]
            prof = (1 - w) * pmap.gather(1, k0[..., None].expand(-1, -1, lt)) \
                + w * pmap.gather(1, k1[..., None].expand(-1, -1, lt))  # [R, G, Lt]
            best, jbest = prof.max(-1)
            total = total + best
            d_n.append(dn)
            f_n.append(f[jbest])
            u_n.append(direction_cosine(pts, lay.tx[n], lay.tx_axes[n]))
        idx, val, exists = top_peaks(total, find_peaks(total, ok), top)  # [R, top] per ray
        # Merge each row's own ray with its alias ray (if any): the `top` best of both, best first.
        val_all = torch.full((P, 2 * top), -math.inf, dtype=torch.float64, device=u.device)
        src_all = torch.zeros((P, 2 * top), dtype=torch.long, device=u.device)
        val_all[:, :top] = val[:P]
        src_all[:, :top] = torch.arange(P, device=u.device)[:, None]
        na = ray_row.numel() - P
        if na:
            owner = ray_row[P:]
            val_all[owner, top:] = val[P:]
            src_all[owner, top:] = torch.arange(P, P + na, device=u.device)[:, None]
        idx_all = torch.cat([idx[:P], torch.zeros_like(idx[:P])], 1)
        if na:
            idx_all[owner, top:] = idx[P:]
        vbest, order = torch.topk(val_all, top, dim=1)
        ray = src_all.gather(1, order)
        pt = idx_all.gather(1, order)
        out = {"value": vbest, "exists": vbest > -math.inf, "urx": uc[ray]}
        for key, arr in (("d", d_n), ("f", f_n), ("utx", u_n)):
            out[key] = torch.stack([a[ray, pt] for a in arr], -1)
        return out


register_without_checkpoint("music", MusicEstimator, "MUSIC baseline")
register_without_checkpoint("music-gated", MusicEstimator, "MUSIC baseline", covariance="gated")
