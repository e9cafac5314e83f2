"""AP input front ends: the transform a receive AP applies to its echoes Y_m before its encoder (Fig. 3).

Every front end maps the echoes of one receive AP, ``y_m`` [B, Mr, Ns, Ts] complex (Eq. 6), and, when it needs them,
the transmit signals ``x`` [B, N, Nt, Ns, Ts] complex (Eq. 3), to a real float32 tensor [B, C, D1, D2, D3] for the
3D-CNN encoder of Fig. 3. Its shape is fixed by the config and the options alone (``output_shape``), so the encoder
(and with it the fronthaul message length L = D1 D2 D3 / 8^L_cnn) is known before any data is seen. A front end is
an ``nn.Module`` built by ``make_front_end(name, cfg, norm=..., **options)`` (``create_front_end``: the same with
``norm="noise"`` by default) with

- ``transform(y_m, x)`` (= ``forward``) -> real float32 [B, C, D1, D2, D3];
- ``in_channels`` (C) and ``spatial_shape`` ((D1, D2, D3)), known from the config without running it;
- ``needs_x``: True when the receive AP must also receive the transmit signals X (a downlink the fronthaul table
  counts separately; the paper's receive AP knows only Y_m, Section III-C).

One module per concept:

- :mod:`~cfisac.models.front_ends.base`: the registry (``@register_front_end("name")`` on a factory
  ``(cfg, *, norm, **options)``, :func:`make_front_end`, :func:`model_front_end` for
  ``ModelConfig(front_end=..., front_end_options=...)``), the :class:`FrontEnd` base class and the shared helpers
  (:func:`complex_to_channels`, :func:`area_extent`, grids, checks);
- :mod:`~cfisac.models.front_ends.raw`: ``"raw"``, the paper's input (Section III-A): Re{Y_m} and Im{Y_m} as two
  channels of an [Mr, Ns, Ts] volume, normalised; and :class:`TxFrontEnd`, the decoder's X input;
- :mod:`~cfisac.models.front_ends.matched`: ``"matched"``, transmit-beam matched filter + angle-delay-Doppler
  transform (needs X at the receive AP);
- :mod:`~cfisac.models.front_ends.image`: ``"image"`` and ``"velocity-image"``, bistatic back-projection onto a
  position (and velocity) grid of the area (needs X);
- :mod:`~cfisac.models.front_ends.covariance`: ``"covariance"``, X-free receive-beamspace energies.

Normalisation of ``"raw"`` (the paper only says "normalized"): ``"rms"`` (default of :func:`make_front_end`) divides
each sample's Y_m by its root-mean-square magnitude (computable locally by the AP, independent of the transmit
power), times sqrt(2) so that Re and Im have unit variance; ``"noise"`` divides by the noise standard deviation
xi_z (keeps the absolute echo power); ``"none"`` leaves the values (in volts, ~1e-6) as they are.

Normalisation of the physics-aware front ends (``norm``; nothing label-dependent is used, only the AP's own inputs
and the known noise power xi^2 of the config):

- ``"noise"``: the map is divided by the standard deviation of its noise-only part. With the unitary scaling
  of the maps (F_{n,b} of ``"matched"``), the noise z ~ CN(0, xi^2 I) gives
  F_{n,b} ~ CN(0, xi^2 mean_{i,t} |s_{n,b}[i,t]|^2) in every bin, given x; dividing by that (computed from the
  AP's own x) makes noise-only bins unit-variance at every transmit power while a peak reads sqrt(integrated SNR)
  of its path. For ``"covariance"`` the energies are divided by xi^2 (noise-only mean 1).
- ``"rms"``: divided by the per-sample root-mean-square of the complex map (resp. the mean energy), over all
  channels and bins. Noise dominates the RMS of a sparse map, so this is close to ``"noise"`` without needing xi^2.
- ``"none"``: the values in the units of the echoes (V^2-like, ~1e-8 at 30 dBm).

``compress="log"`` optionally applies log1p to the (non-negative) magnitudes / energies, bounding the dynamic range
of peaks across transmit powers; ``"none"`` (default) keeps the linear matched-filter magnitude.

All computations are batched matmuls over chunks of scenes -- and, for the pixel front ends, of pixels -- whose
largest intermediate stays under ``chunk_cells`` complex cells (bounded memory); on a CPU the chunk is further capped
at the cache-sized ``FAST_CHUNK_CELLS``, which only changes the speed (at the quick preset: one scene per chunk for
``"matched"``, whose per-scene matmuls are already large, 8 scenes x 32 pixels for the pixel front ends). complex64
arithmetic (complex128 if y is complex128), float32 output, on the device of y. The constant matrices (beams, delay
and Doppler phases, the pixels' velocity phases when small) are non-persistent complex128 buffers built once (they
follow ``.to(device)`` and are not written to checkpoints); their casts to the working dtype / device are cached.
"""

from .base import (
    DEFAULT_CHUNK_CELLS,
    FAST_CHUNK_CELLS,
    FRONT_ENDS,
    NORMS,
    FrontEnd,
    area_extent,
    available_front_ends,
    complex_to_channels,
    create_front_end,
    front_end_output_shape,
    make_front_end,
    model_front_end,
    register_front_end,
)
from .covariance import CovarianceFrontEnd
from .image import VELOCITY_PHASE_CELLS, ImageFrontEnd, VelocityImageFrontEnd
from .matched import MatchedFrontEnd
from .raw import RawFrontEnd, TxFrontEnd

__all__ = [
    "DEFAULT_CHUNK_CELLS", "FAST_CHUNK_CELLS", "FRONT_ENDS", "NORMS", "VELOCITY_PHASE_CELLS", "CovarianceFrontEnd",
    "FrontEnd", "ImageFrontEnd", "MatchedFrontEnd", "RawFrontEnd", "TxFrontEnd", "VelocityImageFrontEnd",
    "area_extent", "available_front_ends", "complex_to_channels", "create_front_end", "front_end_output_shape",
    "make_front_end", "model_front_end", "register_front_end",
]
