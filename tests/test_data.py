import h5py
import numpy as np
import pytest
import torch

import cfisac
from cfisac import SystemConfig
from cfisac.data import SensingDataset, open_hdf5, simulate_batch, write_hdf5

CFG = SystemConfig.preset("tiny").replace(n_targets=2, n_clutter=1, timing_offset_std=1e-9)


def test_sample_is_independent_of_batch_composition():
    a = simulate_batch(CFG, 7, [0, 1, 2, 3, 4, 5])
    b = simulate_batch(CFG, 7, [5, 2])
    for k in ("y", "x", "labels", "positions"):
        assert torch.equal(a[k][5], b[k][0]) and torch.equal(a[k][2], b[k][1])
    c = simulate_batch(CFG, 8, [5])
    assert not torch.equal(a["y"][5], c["y"][0])  # the seed matters


def test_dataloader_workers_give_identical_samples():
    ds = SensingDataset(CFG, seed=3, size=6, start=10)
    loaders = [torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=w) for bs, w in ((2, 0), (3, 2))]
    got = [torch.cat([b["y"] for b in dl]) for dl in loaders]
    assert torch.equal(got[0], got[1])
    assert torch.equal(got[0][1], simulate_batch(CFG, 3, [11])["y"][0])


def test_labels_are_psi_in_canonical_order():
    out = simulate_batch(SystemConfig.preset("tiny").replace(n_targets=3), 0, range(20))
    pos = out["positions"]
    assert bool((pos[:, 1:, 0] >= pos[:, :-1, 0]).all())  # ascending x
    lab = out["labels"].double()
    torch.testing.assert_close(lab[:, :6].reshape(20, 3, 2), pos, rtol=0, atol=1e-5)
    torch.testing.assert_close(lab[:, 6:].reshape(20, 3, 2), out["velocities"], rtol=0, atol=1e-5)


def test_hdf5_round_trip(tmp_path):
    path = write_hdf5(tmp_path / "d.h5", CFG, 10, seed=4, chunk=4)
    ds = open_hdf5(path)
    assert len(ds) == 10 and ds.cfg == CFG and ds.seed == 4
    ref = simulate_batch(CFG, 4, [7, 2])
    items = ds.__getitems__([7, 2])
    assert torch.equal(items[0]["y"], ref["y"][0]) and torch.equal(items[1]["labels"], ref["labels"][1])
    assert not list(tmp_path.glob(".*tmp*"))


def test_corrupted_and_truncated_files_are_detected(tmp_path):
    path = write_hdf5(tmp_path / "d.h5", CFG, 6, seed=4, chunk=3)
    with h5py.File(path, "r+") as f:
        y = f["y"][4]
        y[0, 0, 0, 0] += 1e-3
        f["y"][4] = y
    with pytest.raises(ValueError, match="checksum mismatch in 'y' rows 3..5"):
        open_hdf5(path)
    good = write_hdf5(tmp_path / "e.h5", CFG, 6, seed=4, chunk=3)
    raw = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        open_hdf5(cut)
    with pytest.raises(ValueError, match="does not exist"):
        open_hdf5(tmp_path / "missing.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["y"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a cfisac cache"):
        open_hdf5(foreign)


def test_interrupted_write_leaves_no_file(tmp_path):
    def boom(k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_hdf5(tmp_path / "d.h5", CFG, 8, seed=0, chunk=2, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_dataset_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        SensingDataset(CFG, 0, 0)
    with pytest.raises(IndexError):
        SensingDataset(CFG, 0, 3)[3]
    with pytest.raises(ValueError, match="non-negative"):
        simulate_batch(CFG, 0, [-1])
    with pytest.raises(ValueError, match="seed"):
        cfisac.sample_scenes(CFG, 2, seed=-1)
