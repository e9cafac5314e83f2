import math

import torch

from cfisac import SystemConfig
from cfisac.geometry import bistatic_geometry, steering_vectors


def test_radial_velocities_match_eq_10_11_in_paper_layout():
    cfg = SystemConfig.preset("paper")
    g = torch.rand(64, 2, 2, dtype=torch.float64) * torch.tensor([100.0, 98.0]) + torch.tensor([0.0, 1.0])
    v = (torch.rand(64, 2, 2, dtype=torch.float64) - 0.5) * 40
    geo = bistatic_geometry(cfg, g, v)
    for n, (tx, ty) in enumerate(cfg.tx_positions):
        d = torch.hypot(g[..., 0] - tx, g[..., 1] - ty)
        theta = torch.arccos(-(g[..., 0] - tx) / d)  # AoD of Fig. 2(a): measured from the -x axis
        vn = -v[..., 0] * torch.cos(theta) + v[..., 1] * torch.sin(theta)  # Eq. (10)
        torch.testing.assert_close(geo.tx.radial_velocity[:, n], vn)
        torch.testing.assert_close(geo.tx.cos_angle[:, n], torch.cos(theta))
    for m, (rx, ry) in enumerate(cfg.rx_positions):
        d = torch.hypot(g[..., 0] - rx, g[..., 1] - ry)
        vartheta = torch.arccos((g[..., 0] - rx) / d)
        vm = v[..., 0] * torch.cos(vartheta) - v[..., 1] * torch.sin(vartheta)  # Eq. (11)
        torch.testing.assert_close(geo.rx.radial_velocity[:, m], vm)
    d_nm = geo.bistatic_range[0, 1, 0, 1]
    expect = math.dist(cfg.tx_positions[1], g[0, 1].tolist()) + math.dist(g[0, 1].tolist(), cfg.rx_positions[0])
    assert abs(float(d_nm) - expect) < 1e-9
    f = (geo.tx.radial_velocity[:, :, None] + geo.rx.radial_velocity[:, None]) * cfg.carrier_frequency / 299792458.0
    torch.testing.assert_close(geo.doppler, f)  # Eq. (9)


def test_steering_vector_is_eq_1():
    c = torch.tensor([0.3], dtype=torch.float64)
    a = steering_vectors(c, 5, 0.5, torch.complex128)[0]
    ref = torch.tensor([math.e ** 0 * complex(math.cos(-math.pi * k * 0.3), math.sin(-math.pi * k * 0.3))
                        for k in range(5)], dtype=torch.complex128) / math.sqrt(5)
    torch.testing.assert_close(a, ref)
