"""The ML estimator object: options, the fronthaul message, the result type and the batched pipeline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...config import SystemConfig
from .. import Estimate, register_without_checkpoint
from ..base import BatchedEstimator, check_inputs, check_int_options
from .ap_stage import ApStageMixin
from .fusion import FusionMixin
from .joint import JointMixin
from .model import C128, F64, _Geometry
from .search import SearchMixin


@dataclass
class ApMessages:
    """What every receive AP sends in the distributed scheme (float32 on the wire, float64 here after decoding).

    ``theta`` [B, M, Q, 2 + N] float64: per target slot ``[g_x, g_y, f_0 .. f_{N-1}]`` (local position in m and
    the N bistatic Dopplers in Hz); ``gains`` [B, M, Q, N] complex128: the least-squares path gains. A path below
    the detection threshold is sent as NaN (Doppler, gain), a target slot without any detected path also has a NaN
    position: no extra bits. ``statistic`` [B, M, Q, N] (diagnostic, not sent): each path's GLRT statistic, the
    explained-energy drop when it alone is removed over ``xi^2`` (Exp(1) under noise). Target slots of different
    APs are unordered. With ``joint=True`` the centralized fronthaul also carries the raw ``echoes``
    [B, M, Mr, Ns, Ts], and ``search_maps`` holds the first coarse search's maps (T, F [B M, N, G]) for the CPU's
    own search (the same statistics the CPU would compute from the echoes).
    """

    theta: torch.Tensor
    gains: torch.Tensor
    statistic: torch.Tensor | None = None
    echoes: torch.Tensor | None = None
    search_maps: dict | None = None

    def quantized(self) -> ApMessages:
        """The message as the CPU decodes it: every real number rounded to float32."""
        th = self.theta.to(torch.float32).to(F64)
        g = torch.complex(self.gains.real.to(torch.float32), self.gains.imag.to(torch.float32)).to(C128)
        return ApMessages(th, g, self.statistic, self.echoes, self.search_maps)


@dataclass
class MLEstimate(Estimate):
    """:class:`Estimate` of the ML estimator plus what produced it.

    ``distributed_positions`` / ``distributed_velocities`` [B, Q, 2]: the CPU fusion of the AP messages (equal to
    positions / velocities when ``joint=False``); ``messages``: the decoded :class:`ApMessages` (theta, gains,
    statistic); ``energy`` [B]: the centralized explained energy of the returned psi over ``xi^2`` (only with
    ``joint=True``).
    """

    distributed_positions: torch.Tensor | None = None
    distributed_velocities: torch.Tensor | None = None
    messages: ApMessages | None = None
    energy: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @staticmethod
    def concat(parts: list[MLEstimate]) -> MLEstimate:
        """One estimate from the chunks' estimates (every tensor on the CPU)."""
        cpu = lambda ts: torch.cat([t.detach().cpu() for t in ts])  # noqa: E731
        msgs = ApMessages(cpu([p.messages.theta for p in parts]), cpu([p.messages.gains for p in parts]),
                          cpu([p.messages.statistic for p in parts]))
        energy = None if parts[0].energy is None else cpu([p.energy for p in parts])
        return MLEstimate(cpu([p.positions for p in parts]).double(), cpu([p.velocities for p in parts]).double(),
                          distributed_positions=cpu([p.distributed_positions for p in parts]).double(),
                          distributed_velocities=cpu([p.distributed_velocities for p in parts]).double(),
                          messages=msgs, energy=energy)


class MLEstimator(BatchedEstimator, ApStageMixin, SearchMixin, FusionMixin, JointMixin):
    """Per-AP maximum likelihood plus Fisher-weighted fusion, optionally a centralized ML refinement (module doc).

    Options (keyword-only): ``joint`` (False: distributed, ``32 (2 + 3N) Q`` bits per AP; True: centralized
    refinement on the raw echoes, ``64 Mr Ns Ts`` bits); ``n_candidates`` coarse peaks refined per detection (3);
    ``relax_rounds`` re-detection rounds for Q > 1 (1); ``angle_oversample`` receive beams per ``Mr / 2`` (2: a
    ``2 Mr``-beam grid); ``oversample`` zero padding of the range / Doppler DFTs and position-grid density (2: half a
    range cell); ``grid_refinement`` density of the adaptive grid near the APs (1.0; 0.5 measurably misses
    targets close to a transmit AP); ``max_iter`` LM iterations (40); ``detection_threshold`` GLRT
    threshold of a target slot's strongest path (default ``log(cells / false_alarm)`` with ``false_alarm`` 1e-3);
    ``path_threshold`` of its further paths (default ``log(Doppler cells / false_alarm)``, at most the former);
    ``second_search_level``: the strongest-path-cancelled second search of a detection (package docstring, step 2)
    runs only on the problems whose weakest path's GLRT statistic at the first search's winner is below it (default
    the detection threshold; ``inf``: on every problem, the behaviour before this option; measured equivalence in
    ``benchmarks/results/ml.md``); ``doppler_retry_level`` likewise for the Doppler retry of each refined candidate
    (step 2: only candidates with a path explained below this level are re-searched in Doppler; default ``inf``,
    every candidate: with both gates at the detection threshold a tiny scene moved by 0.3 m, see ml.md);
    ``second_search_floor``: the second search also needs the winner's strongest path at or above it (default the
    detection threshold: a winner below it fits noise, its strongest path is no forward-scatter path to cancel; 0:
    the behaviour before this option; it applies only on problems with no detected slot yet; measured in ml.md,
    "low-power gate");
    ``doppler_retry_floor`` likewise for the Doppler retry (opt-in, default 0: at the detection threshold a quick
    scene at 30 dBm moved by 48 m); ``relax_floor``: the RELAX rounds run only on the problems where some slot's
    strongest path reaches it after successive cancellation (opt-in, default 0: every problem);
    ``doppler_retry_same``: no LM after a Doppler re-search whose Dopplers all lie within this many steps of its
    (4x oversampled) grid of the refined ones (default 0.5: the LM would return to the same maximum; 0: always,
    the behaviour before this option; measured in ml.md, "low-power gate");
    ``threads`` torch intra-op threads during a call (1: the work is many small tensor operations, which
    multi-threading slows down on a shared machine; restored afterwards; None leaves the global setting);
    ``device`` where every tensor lives (None: that of y), ``dtype`` the complex dtype y and x are cast to before
    the stages (the likelihood itself is always evaluated in complex128, the coarse maps in complex64),
    ``chunk_size`` scenes per stage call (:class:`~cfisac.estimators.base.BatchedEstimator`).

    Attributes: ``fronthaul_bits_per_ap`` (of the chosen variant), ``message_bits_per_ap`` (distributed message),
    ``centralized_bits_per_ap``, ``threshold``, ``path_threshold``.
    """

    def __init__(self, cfg: SystemConfig, *, joint: bool = False, n_candidates: int = 3, relax_rounds: int = 1,
                 angle_oversample: int = 2, oversample: int = 2, max_iter: int = 40,
                 detection_threshold: float | None = None, path_threshold: float | None = None,
                 false_alarm: float = 1e-3, grid_refinement: float = 1.0,
                 second_search_level: float | None = None, doppler_retry_level: float | None = None,
                 second_search_floor: float | None = None, doppler_retry_floor: float = 0.0, relax_floor: float = 0.0,
                 doppler_retry_same: float = 0.5,
                 threads: int | None = 1, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.complex128, chunk_size: int | None = None) -> None:
        if cfg.n_tx * cfg.n_rx < 2:
            raise ValueError("the ML estimator needs at least two transmit/receive AP pairs: a single pair observes "
                             "only one component of each velocity (N M = 1)")
        check_int_options(n_candidates=(n_candidates, 1), relax_rounds=(relax_rounds, 0),
                          angle_oversample=(angle_oversample, 1), oversample=(oversample, 1), max_iter=(max_iter, 1))
        if not isinstance(joint, bool):
            raise ValueError(f"joint must be True or False, got {joint!r}")
        super().__init__(cfg, device=device, dtype=dtype, chunk_size=chunk_size)
        self.joint = joint
        self.name = "ml-joint" if joint else "ml"
        self.n_candidates = n_candidates
        self.relax_rounds = relax_rounds
        self.angle_oversample = angle_oversample
        self.oversample = oversample
        self.max_iter = max_iter
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
        for name, level, default in (("second_search_level", second_search_level, self.threshold),
                                     ("doppler_retry_level", doppler_retry_level, math.inf)):
            level = default if level is None else level
            if not (isinstance(level, (int, float)) and not isinstance(level, bool) and level >= 0):
                raise ValueError(f"{name} must be a number >= 0 (inf: always), got {level!r}")
            setattr(self, name, float(level))
        second_search_floor = self.threshold if second_search_floor is None else second_search_floor
        for name, level in (("second_search_floor", second_search_floor), ("doppler_retry_floor", doppler_retry_floor),
                            ("relax_floor", relax_floor), ("doppler_retry_same", doppler_retry_same)):
            if not (isinstance(level, (int, float)) and not isinstance(level, bool) and level >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {level!r}")
            setattr(self, name, float(level))
        N, Q = cfg.n_tx, cfg.n_targets
        self.message_bits_per_ap = 32 * (2 + 3 * N) * Q
        self.centralized_bits_per_ap = 64 * cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols
        self.fronthaul_bits_per_ap = self.centralized_bits_per_ap if joint else self.message_bits_per_ap
        self._geo: dict[str, _Geometry] = {}
        self._grid_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._ctx = None

    # ------------------------------------------------------------------------------------------ pipeline
    def default_chunk_size(self) -> int:
        """About 2^23 complex cells of y per chunk (the per-AP stage keeps a few residual copies of y; the
        paper preset then runs 4 scenes per chunk)."""
        cfg = self.cfg
        return max(1, 2**23 // (cfg.n_rx * cfg.n_rx_antennas * cfg.n_subcarriers * cfg.n_symbols))

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> MLEstimate:
        """:class:`MLEstimate` (positions / velocities [B, Q, 2] float64 on the CPU, plus the distributed
        estimate, the messages and the energy) from y [B, M, Mr, Ns, Ts] and x [B, N, Nt, Ns, Ts].

        Overrides the base's ``__call__`` only to concatenate the extra fields of :class:`MLEstimate` over the
        chunks and to run under ``threads`` intra-op threads; the checks, device / dtype handling and chunking
        are the base's."""
        check_inputs(self.cfg, y, x)
        dev = self.device if self.device is not None else y.device
        step = self.chunk_size or self.default_chunk_size()
        old = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            parts = []
            for lo in range(0, y.shape[0], step):
                yc = y[lo:lo + step].to(dev, self.dtype)
                xc = x[lo:lo + step].to(dev, self.dtype)
                parts.append(self.fuse(self.ap_messages(yc, xc), xc))
        finally:
            torch.set_num_threads(old)
        return MLEstimate.concat(parts)

    def ap_messages(self, y: torch.Tensor, x: torch.Tensor) -> ApMessages:
        """The per-AP stage (package docstring, steps 1-5) for y [B, M, Mr, Ns, Ts], x [B, N, Nt, Ns, Ts] on one
        device: every receive AP's message in float64 (before float32 rounding)."""
        # contiguous x: the transmit beams read x[:, n] as [B, Nt, Ns Ts] (a view only when x is contiguous)
        theta, gains, stat, maps = self.local_messages(y.to(C128), x.to(C128).contiguous())
        return ApMessages(theta, gains, stat, echoes=y if self.joint else None, search_maps=maps)

    def fuse(self, messages: ApMessages, x: torch.Tensor) -> MLEstimate:
        """The CPU: decode the float32 messages, fuse them (and with ``joint``, refine on the echoes)."""
        x = x.to(C128).contiguous()
        msgs = messages.quantized()
        psi_d, starts = self.fuse_messages(msgs, x)
        out = MLEstimate(psi_d[..., :2], psi_d[..., 2:], distributed_positions=psi_d[..., :2],
                         distributed_velocities=psi_d[..., 2:], messages=ApMessages(msgs.theta, msgs.gains,
                                                                                     msgs.statistic))
        if self.joint:
            central = self._central_starts(msgs.search_maps, psi_d)
            psi, energy = self.joint_refine(msgs.echoes.to(C128), x, torch.cat([psi_d[:, None], starts, central], 1))
            out.positions, out.velocities = psi[..., :2], psi[..., 2:]
            out.energy = energy / self.cfg.noise_watt
        return out

    def _geometry(self, device: torch.device) -> _Geometry:
        key = str(device)
        if key not in self._geo:
            self._geo[key] = _Geometry(self.cfg, device)
        return self._geo[key]


register_without_checkpoint("ml", MLEstimator, "ML estimator")
register_without_checkpoint("ml-joint", MLEstimator, "ML estimator", joint=True)
