"""System configuration of the cell-free MIMO-OFDM ISAC system (paper Table I) and its named presets.

Every quantity is in SI units (Hz, s, m, m/s) except powers, which are in dBm/dB as in Table I and are converted to
watts by the properties below. A config is a frozen dataclass: derive variants with ``cfg.replace(field=value)``.

Sensing comb
------------
The paper processes all ``Ns = 256`` subcarriers and ``Ts = 256`` OFDM symbols of a frame. To keep the paper's
bandwidth and frame length (hence its range / Doppler resolution) at CPU scale, a config may sense only every
``subcarrier_stride``-th subcarrier and every ``symbol_stride``-th symbol of that frame: the processed subcarrier
indices are ``i = subcarrier_stride * i'`` (``i' = 0..n_subcarriers-1``) and the processed symbol indices are
``t = 1 + symbol_stride * t'`` (``t' = 0..n_symbols-1``); Eq. (6) is evaluated at those absolute indices. The
transmit power is spread over all ``n_subcarriers * subcarrier_stride`` subcarriers of the frame, so the per-cell SNR
is that of the full frame. Strides of 1 reproduce the paper exactly. The comb shrinks the unambiguous bistatic range
``c / (subcarrier_stride * df)`` and Doppler ``+-1 / (2 * symbol_stride * dT)``; ``check`` refuses a comb under which
a target in the area could alias (see :meth:`SystemConfig.resolution`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEED_OF_LIGHT = 299_792_458.0  # m/s

__all__ = ["SPEED_OF_LIGHT", "SystemConfig", "dbm_to_watt", "db_to_linear"]


def dbm_to_watt(p_dbm: float) -> float:
    """Convert a power in dBm to watts."""
    return 10.0 ** ((p_dbm - 30.0) / 10.0)


def db_to_linear(x_db: float) -> float:
    """Convert a power ratio in dB to linear scale."""
    return 10.0 ** (x_db / 10.0)


Point = tuple[float, float]

# Powers (dBm) and ratios (dB) are bounded so that their conversion to linear scale stays finite and meaningful
# (+-200 dB spans 1e-20 .. 1e20 in linear terms; 10 ** (1e6 / 10) would overflow).
DB_RANGE = (-200.0, 200.0)
_BOOL_FIELDS = ("allow_grating_lobes", "clutter_moving")


def _is_number(v: Any) -> bool:
    """A real number (int or float) that is not a bool (JSON ``true`` is not a power)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pairs(name: str, value: Any) -> tuple[tuple[float, ...], ...]:
    """``value`` as a tuple of tuples of floats (JSON lists compare equal to the presets' tuples), or a
    ``ValueError`` naming the field (strings, numbers or booleans are not coordinates)."""
    try:
        if isinstance(value, (str, bytes)) or any(isinstance(p, (str, bytes)) for p in value):
            raise TypeError
        if any(isinstance(c, (str, bytes, bool)) for p in value for c in p):  # "1" / true are not coordinates
            raise TypeError
        out = tuple(tuple(float(c) for c in p) for p in value)  # numbers, numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of (x, y) number pairs, got {value!r}") from None
    return out


@dataclass(frozen=True)
class SystemConfig:
    """Cell-free MIMO-OFDM ISAC system parameters (paper Section II and Table I).

    The defaults are the ``paper`` preset. AP positions are (x, y) in metres; each AP has a uniform linear array
    whose axis is a unit vector: the angle of an AP towards a point with unit direction ``e`` satisfies
    ``cos(angle) = axis . e`` (paper Fig. 2(a): transmit axis (-1, 0), receive axis (+1, 0), which gives
    Eq. (10)-(11) exactly).
    """

    # OFDM waveform (Table I)
    carrier_frequency: float = 30e9
    subcarrier_spacing: float = 240e3
    n_subcarriers: int = 256
    n_symbols: int = 256
    cyclic_prefix: float = 1.04e-6
    subcarrier_stride: int = 1
    symbol_stride: int = 1
    # Access points
    tx_positions: tuple[Point, ...] = ((25.0, 0.0), (75.0, 0.0))
    rx_positions: tuple[Point, ...] = ((25.0, 100.0), (75.0, 100.0))
    tx_axes: tuple[Point, ...] = ((-1.0, 0.0), (-1.0, 0.0))
    rx_axes: tuple[Point, ...] = ((1.0, 0.0), (1.0, 0.0))
    n_tx_antennas: int = 16
    n_rx_antennas: int = 16
    antenna_spacing: float = 0.5  # in wavelengths (d_t = d_r = lambda/2)
    allow_grating_lobes: bool = False
    # Users and targets
    n_users: int = 4
    n_targets: int = 2
    area: tuple[Point, Point] = ((0.0, 100.0), (0.0, 100.0))  # ((x_min, x_max), (y_min, y_max))
    max_speed: float = 20.0  # velocities uniform in [-max_speed, max_speed] per axis
    # Powers and channels (Table I)
    power_dbm: float = 30.0  # P, per transmit AP, summed over the frame's subcarriers
    noise_dbm: float = -90.0  # xi_z^2, per antenna, subcarrier and symbol
    user_noise_dbm: float = -90.0  # sigma_c^2, per user and subcarrier (not given in the paper)
    reference_distance: float = 1.0  # d_0
    pathloss_ref_db: float = -60.0  # alpha_0
    pathloss_exponent: float = 2.0  # zeta
    reflection_variance: float = 1.0  # chi^2
    user_rician_factor_db: float = 10.0  # K-factor of the users' channels (not given in the paper)
    user_n_paths: int = 4  # non-LoS paths of each user channel
    # Clutter (Eq. 29) and clock offsets (Eq. 30); off in Table I
    n_clutter: int = 0
    clutter_variance: float = 1.0  # chi~^2
    clutter_moving: bool = False
    timing_offset_std: float = 0.0  # sigma_tau, s
    frequency_offset_std: float = 0.0  # sigma_f, Hz

    def __post_init__(self) -> None:
        # Normalise sequences so that JSON round trips (lists) compare equal to the tuples of the presets.
        for name in ("tx_positions", "rx_positions", "tx_axes", "rx_axes", "area"):
            object.__setattr__(self, name, _pairs(name, getattr(self, name)))
        self.check()

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SystemConfig:
        """Named presets: ``paper`` (Table I), ``quick`` (2-core CPU demo), ``tiny`` (unit tests), ``monostatic``.

        ``quick`` keeps the paper's bandwidth (61.4 MHz) and frame length (256 symbols, 1.33 ms) through a sensing
        comb (every 4th subcarrier, every 16th symbol): same range / Doppler resolution as ``paper``, 64 x 16 cells.
        ``tiny`` is a 4 x 4 antenna, 16 x 8 cell system for unit tests (sub-second simulation).
        ``monostatic`` is the paper's monostatic baseline [13]: one full-duplex BS at (50, 0) (co-located transmit
        and receive arrays) with the ``paper`` waveform.
        """
        presets: dict[str, dict[str, Any]] = {
            "paper": {},
            "quick": dict(n_subcarriers=64, subcarrier_stride=4, n_symbols=16, symbol_stride=16),
            "tiny": dict(
                n_subcarriers=16, subcarrier_stride=4, n_symbols=8, symbol_stride=16, n_tx_antennas=4,
                n_rx_antennas=4, n_users=2, n_targets=1, user_n_paths=2,
            ),
            "monostatic": dict(
                tx_positions=((50.0, 0.0),), rx_positions=((50.0, 0.0),), tx_axes=((-1.0, 0.0),),
                rx_axes=((1.0, 0.0),),
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def replace(self, **changes: Any) -> SystemConfig:
        """Return a copy with some fields changed (validated like a new config)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown SystemConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SystemConfig:
        if not isinstance(d, dict):
            raise ValueError(f"SystemConfig JSON must be an object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown SystemConfig field(s) in JSON: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str | Path) -> SystemConfig:
        """Parse a JSON string, or read a ``.json`` file when given a path."""
        where = "SystemConfig JSON"
        if isinstance(text, Path):
            where = f"config file {text}"
            if text.is_dir():
                raise ValueError(f"{where} is a directory, not a JSON file")
            try:
                text = text.read_text()
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"cannot read {where}: {getattr(err, 'strerror', None) or err}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON: {err}") from None
        return cls.from_dict(d)

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_tx(self) -> int:
        """N, the number of transmit APs."""
        return len(self.tx_positions)

    @property
    def n_rx(self) -> int:
        """M, the number of receive APs."""
        return len(self.rx_positions)

    @property
    def wavelength(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_frequency

    @property
    def symbol_duration(self) -> float:
        """Delta T = 1 / Delta f + T_p."""
        return 1.0 / self.subcarrier_spacing + self.cyclic_prefix

    @property
    def n_frame_subcarriers(self) -> int:
        """Subcarriers of the whole frame, over which the transmit power is spread."""
        return self.n_subcarriers * self.subcarrier_stride

    @property
    def power_watt(self) -> float:
        return dbm_to_watt(self.power_dbm)

    @property
    def noise_watt(self) -> float:
        return dbm_to_watt(self.noise_dbm)

    @property
    def user_noise_watt(self) -> float:
        return dbm_to_watt(self.user_noise_dbm)

    @property
    def pathloss_ref(self) -> float:
        return db_to_linear(self.pathloss_ref_db)

    def max_bistatic_range(self) -> float:
        """Largest d_n + d_m over every AP pair and every point of the area (attained at a corner)."""
        (x0, x1), (y0, y1) = self.area
        corners = [(x0, y0), (x0, y1), (x1, y0), (x1, y1)]
        best = 0.0
        for c in corners:
            for t in self.tx_positions:
                for r in self.rx_positions:
                    best = max(best, math.dist(t, c) + math.dist(c, r))
        return best

    def resolution(self) -> dict[str, float]:
        """Resolution and ambiguity figures of the sensing grid.

        Returns bistatic range resolution ``c / (Ns * stride * df)`` and unambiguous bistatic range
        ``c / (stride * df)``; Doppler resolution ``1 / (Ts * stride * dT)`` and unambiguous Doppler half-width
        ``1 / (2 * stride * dT)``, with their velocity equivalents (sum of the two radial velocities,
        ``fD * c / fc``); the largest bistatic range and bistatic Doppler a target in the area can produce.
        """
        c, fc = SPEED_OF_LIGHT, self.carrier_frequency
        span_f = self.n_subcarriers * self.subcarrier_stride * self.subcarrier_spacing
        span_t = self.n_symbols * self.symbol_stride * self.symbol_duration
        dop_res = 1.0 / span_t
        dop_amb = 1.0 / (2.0 * self.symbol_stride * self.symbol_duration)
        max_speed = self.max_speed * math.sqrt(2.0)
        return {
            "bandwidth_hz": span_f,
            "range_resolution_m": c / span_f,
            "unambiguous_range_m": c / (self.subcarrier_stride * self.subcarrier_spacing),
            "max_bistatic_range_m": self.max_bistatic_range(),
            "doppler_resolution_hz": dop_res,
            "velocity_resolution_mps": dop_res * c / fc,
            "unambiguous_doppler_hz": dop_amb,
            "max_doppler_hz": 2.0 * max_speed * fc / c,
            "observation_time_s": span_t,
            "angle_resolution_rad": 2.0 / (self.n_rx_antennas * 2.0 * self.antenna_spacing),
        }

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raise ``ValueError`` naming the offending field when the configuration is invalid."""
        positive_ints = (
            "n_subcarriers", "n_symbols", "subcarrier_stride", "symbol_stride", "n_tx_antennas", "n_rx_antennas",
            "n_users", "n_targets",
        )
        for name in _BOOL_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, bool):  # "false" (a non-empty string) would be truthy
                raise ValueError(f"{name} must be a boolean (JSON true / false), got {v!r}")
        for name in positive_ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("n_clutter", "user_n_paths"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        positive_floats = (
            "carrier_frequency", "subcarrier_spacing", "reference_distance", "pathloss_exponent",
            "antenna_spacing", "reflection_variance", "clutter_variance",
        )
        for name in positive_floats:
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        for name in ("cyclic_prefix", "max_speed", "timing_offset_std", "frequency_offset_std"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative finite number, got {v!r}")
        for name in ("power_dbm", "noise_dbm", "user_noise_dbm", "pathloss_ref_db", "user_rician_factor_db"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if not DB_RANGE[0] <= v <= DB_RANGE[1]:
                raise ValueError(f"{name} must lie in [{DB_RANGE[0]:g}, {DB_RANGE[1]:g}] dB(m), got {v!r}")
        if self.antenna_spacing > 0.5 and not self.allow_grating_lobes:
            raise ValueError(
                f"antenna_spacing {self.antenna_spacing} wavelengths exceeds lambda/2 (grating lobes); "
                "set allow_grating_lobes=True to allow it"
            )
        if len(self.area) != 2 or any(len(a) != 2 for a in self.area):
            raise ValueError(f"area must be ((x_min, x_max), (y_min, y_max)), got {self.area}")
        (x0, x1), (y0, y1) = self.area
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"area must be ((x_min, x_max), (y_min, y_max)) with min < max, got {self.area}")
        for pos, axes, name in (
            (self.tx_positions, self.tx_axes, "tx"),
            (self.rx_positions, self.rx_axes, "rx"),
        ):
            if len(pos) == 0:
                raise ValueError(f"{name}_positions must list at least one AP")
            if len(axes) != len(pos):
                raise ValueError(f"{name}_axes has {len(axes)} entries but {name}_positions has {len(pos)}")
            for p in pos:
                if len(p) != 2 or not all(math.isfinite(c) for c in p):
                    raise ValueError(f"{name}_positions entries must be finite (x, y) pairs, got {p}")
            for a in axes:
                if len(a) != 2 or not all(math.isfinite(c) for c in a) or abs(math.hypot(*a) - 1.0) > 1e-6:
                    raise ValueError(f"{name}_axes entries must be unit vectors (x, y), got {a}")
        res = self.resolution()
        (x0, x1), (y0, y1) = self.area
        cell = res["range_resolution_m"]
        max_targets = max(1, math.ceil((x1 - x0) / cell) * math.ceil((y1 - y0) / cell))
        if self.n_targets > max_targets:
            raise ValueError(
                f"n_targets {self.n_targets} exceeds the {max_targets} range-resolution cells ({cell:.2f} m) of the "
                f"area: no receiver can separate that many targets"
            )
        if res["max_bistatic_range_m"] >= res["unambiguous_range_m"]:
            raise ValueError(
                f"subcarrier_stride {self.subcarrier_stride} makes the bistatic range ambiguous: unambiguous range "
                f"{res['unambiguous_range_m']:.1f} m < largest bistatic range {res['max_bistatic_range_m']:.1f} m"
            )
        if res["max_doppler_hz"] >= res["unambiguous_doppler_hz"]:
            raise ValueError(
                f"symbol_stride {self.symbol_stride} makes the Doppler ambiguous: unambiguous Doppler "
                f"+-{res['unambiguous_doppler_hz']:.0f} Hz < largest Doppler {res['max_doppler_hz']:.0f} Hz"
            )
