import json

import pytest

from cfisac import SystemConfig


def test_paper_preset_is_table_one():
    c = SystemConfig.preset("paper")
    assert (c.n_tx, c.n_rx, c.n_tx_antennas, c.n_rx_antennas, c.n_users, c.n_targets) == (2, 2, 16, 16, 4, 2)
    assert c.tx_positions == ((25.0, 0.0), (75.0, 0.0)) and c.rx_positions == ((25.0, 100.0), (75.0, 100.0))
    assert (c.carrier_frequency, c.subcarrier_spacing, c.n_subcarriers, c.n_symbols) == (30e9, 240e3, 256, 256)
    assert c.cyclic_prefix == 1.04e-6 and c.reference_distance == 1.0 and c.pathloss_ref_db == -60.0
    assert (c.pathloss_exponent, c.reflection_variance, c.noise_dbm, c.power_dbm) == (2.0, 1.0, -90.0, 30.0)
    assert (c.subcarrier_stride, c.symbol_stride, c.max_speed, c.antenna_spacing) == (1, 1, 20.0, 0.5)
    assert c.area == ((0.0, 100.0), (0.0, 100.0))
    assert c.power_watt == pytest.approx(1.0) and c.noise_watt == pytest.approx(1e-12)
    assert c.symbol_duration == pytest.approx(1 / 240e3 + 1.04e-6)


def test_quick_keeps_paper_resolution():
    p, q = SystemConfig.preset("paper").resolution(), SystemConfig.preset("quick").resolution()
    for k in ("bandwidth_hz", "range_resolution_m", "doppler_resolution_hz", "observation_time_s"):
        assert q[k] == pytest.approx(p[k])
    assert q["unambiguous_range_m"] > q["max_bistatic_range_m"]
    assert q["unambiguous_doppler_hz"] > q["max_doppler_hz"]


def test_replace_and_json_round_trip(tmp_path):
    c = SystemConfig.preset("quick").replace(power_dbm=10.0, n_clutter=3)
    assert c.power_dbm == 10.0 and c.n_clutter == 3
    assert SystemConfig.from_json(c.to_json()) == c
    f = tmp_path / "c.json"
    f.write_text(json.dumps(c.to_dict()))
    assert SystemConfig.from_json(f) == c


@pytest.mark.parametrize("change, field", [
    (dict(n_rx_antennas=0), "n_rx_antennas"),
    (dict(n_targets=-1), "n_targets"),
    (dict(n_subcarriers=2.5), "n_subcarriers"),
    (dict(antenna_spacing=0.7), "antenna_spacing"),
    (dict(reflection_variance=-1.0), "reflection_variance"),
    (dict(noise_dbm=float("nan")), "noise_dbm"),
    (dict(rx_axes=((1.0, 0.0),)), "rx_axes"),
    (dict(tx_axes=((1.0, 1.0), (1.0, 0.0))), "tx_axes"),
    (dict(area=((0.0, 0.0), (0.0, 100.0))), "area"),
    (dict(subcarrier_stride=8), "subcarrier_stride"),
    (dict(symbol_stride=32), "symbol_stride"),
    (dict(max_speed=-1.0), "max_speed"),
])
def test_invalid_configs_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        SystemConfig.preset("quick").replace(**change)


def test_grating_lobes_allowed_explicitly_and_unknown_names_rejected():
    assert SystemConfig.preset("tiny").replace(antenna_spacing=0.7, allow_grating_lobes=True).antenna_spacing == 0.7
    with pytest.raises(ValueError, match="unknown preset"):
        SystemConfig.preset("huge")
    with pytest.raises(ValueError, match="bogus"):
        SystemConfig.preset("tiny").replace(bogus=1)
    with pytest.raises(ValueError, match="bogus"):
        SystemConfig.from_json('{"bogus": 1}')


def test_non_finite_axes_and_too_many_targets_are_refused():
    import math

    import pytest

    import cfisac

    cfg = cfisac.SystemConfig.preset("tiny")
    for bad in ((math.nan, 0.0), (math.inf, 0.0)):
        with pytest.raises(ValueError, match="tx_axes entries must be unit vectors"):
            cfg.replace(tx_axes=(bad, (1.0, 0.0)))
        with pytest.raises(ValueError, match="rx_axes entries must be unit vectors"):
            cfg.replace(rx_axes=(bad, (-1.0, 0.0)))
    # tiny: 19.5 m range cells, a 100 m x 100 m area -> 6 x 6 cells
    assert cfg.replace(n_targets=36).n_targets == 36
    with pytest.raises(ValueError, match="n_targets 37 exceeds the 36 range-resolution cells"):
        cfg.replace(n_targets=37)
    with pytest.raises(ValueError, match="n_targets 10000"):
        cfisac.SystemConfig.preset("paper").replace(n_targets=10000)
