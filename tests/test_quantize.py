"""Vector quantizer (Eq. 14-15, 18-21) and index messages (Section III-D, Algorithm 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cfisac.quantize import (
    VectorQuantizer,
    bits_per_index,
    message_nbytes,
    pack_index_batch,
    pack_indices,
    unpack_index_batch,
    unpack_indices,
)


def _vq(codebook: list[list[float]], **kw) -> VectorQuantizer:
    vq = VectorQuantizer(len(codebook), len(codebook[0]), **kw)
    vq.codebook.copy_(torch.tensor(codebook))
    return vq


def test_straight_through_gradient_equals_upstream_gradient_exactly():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8)
    z = torch.randn(3, 5, 8, requires_grad=True)
    codebook = vq.codebook.clone()  # the EMA step of this training-mode forward moves the codebook afterwards
    out = vq(z)
    upstream = torch.randn(3, 5, 8)
    (out.quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)
    # forward value is the selected codeword exactly (Eq. 14), not z + (c - z) up to rounding
    assert torch.equal(out.quantized.detach(), codebook[out.indices])


def test_commitment_gradient_pulls_z_towards_codeword():
    vq = _vq([[0.0, 0.0], [10.0, 10.0]], commitment=0.5)
    vq.eval()
    z = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = vq(z)
    assert out.indices.tolist() == [0]
    assert out.commitment.item() == pytest.approx(0.5 * (1.0 + 4.0) / 2)  # omega * mean over the D = 2 elements
    out.commitment.backward()
    assert torch.allclose(z.grad, 0.5 * 2 * torch.tensor([[1.0, 2.0]]) / 2)
    assert vq.codebook.grad is None  # stop-gradient: the codebook is a buffer, updated only by EMA


def test_nearest_codeword_matches_brute_force():
    torch.manual_seed(1)
    vq = VectorQuantizer(32, 6)
    vq.codebook.copy_(torch.randn(32, 6))
    z = torch.randn(200, 6)
    idx = vq.nearest(z)
    assert idx.dtype == torch.int64 and int(idx.min()) >= 0 and int(idx.max()) < 32
    for k in range(200):
        d = [float(((z[k] - vq.codebook[j]) ** 2).sum()) for j in range(32)]
        assert idx[k].item() == int(np.argmin(d))


def test_one_and_two_ema_steps_equal_hand_computed_values():
    gamma, eps = 0.9, 1e-3
    init = [[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [50.0, 50.0]]
    vq = _vq(init, decay=gamma, eps=eps)
    vq.train()
    z1 = [[0.5, 0.0], [-0.5, 1.0], [3.0, 1.0], [0.0, 3.0], [1.0, 5.0]]  # -> codewords 0, 0, 1, 2, 2
    out = vq(torch.tensor(z1))
    assert out.indices.tolist() == [0, 0, 1, 2, 2]
    # Eq. (18)-(19) from L = 0, c~ = 0; Laplace-smoothed Eq. (20); codeword 3 never used: keeps its initial value
    counts = [2, 1, 2, 0]
    sums = [[0.0, 1.0], [3.0, 1.0], [1.0, 8.0], [0.0, 0.0]]
    L = [(1 - gamma) * c for c in counts]
    S = [[(1 - gamma) * s for s in row] for row in sums]
    n = sum(L)
    sm = [(v + eps) / (n + 4 * eps) * n for v in L]
    expect = [[S[j][d] / sm[j] for d in range(2)] if L[j] > 0 else init[j] for j in range(4)]
    assert torch.allclose(vq.codebook, torch.tensor(expect), rtol=1e-6, atol=1e-7)
    assert torch.allclose(vq.ema_count, torch.tensor(L))
    # a second step accumulates with decay gamma
    z2 = [[0.0, 0.5], [5.0, 1.0]]
    out = vq(torch.tensor(z2))
    idx = out.indices.tolist()
    cb = torch.tensor(expect)
    assert idx == [int(((torch.tensor(v) - cb) ** 2).sum(1).argmin()) for v in z2]
    counts2 = [idx.count(j) for j in range(4)]
    sums2 = [[sum(z2[k][d] for k in range(2) if idx[k] == j) for d in range(2)] for j in range(4)]
    L2 = [gamma * L[j] + (1 - gamma) * counts2[j] for j in range(4)]
    S2 = [[gamma * S[j][d] + (1 - gamma) * sums2[j][d] for d in range(2)] for j in range(4)]
    n2 = sum(L2)
    sm2 = [(v + eps) / (n2 + 4 * eps) * n2 for v in L2]
    expect2 = [[S2[j][d] / sm2[j] for d in range(2)] if L2[j] > 0 else init[j] for j in range(4)]
    assert torch.allclose(vq.codebook, torch.tensor(expect2), rtol=1e-6, atol=1e-7)


def test_eval_mode_leaves_codebook_unchanged_and_stats_reported():
    torch.manual_seed(2)
    vq = VectorQuantizer(8, 4)
    vq.eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    out = vq(torch.randn(64, 4))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert 1.0 <= out.perplexity <= 8.0 + 1e-6 and 0.0 < out.usage <= 1.0
    vq.train()
    vq(torch.randn(64, 4))
    assert not torch.equal(vq.codebook, before["codebook"])


def test_perplexity_and_usage_are_the_code_histograms():
    vq = _vq([[0.0], [10.0], [20.0], [30.0]])
    vq.eval()
    out = vq(torch.tensor([[0.0], [0.1], [10.0], [9.9]]))  # two codes, equally often
    assert out.usage == pytest.approx(0.5)
    assert out.perplexity == pytest.approx(2.0)


def test_float32_under_autocast():
    torch.manual_seed(3)
    vq = VectorQuantizer(16, 8)
    vq.eval()
    z = torch.randn(10, 8).bfloat16()
    ref = vq(z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert out.quantized.dtype == torch.float32 and out.commitment.dtype == torch.float32
    assert torch.equal(out.indices, ref.indices)
    assert torch.equal(out.quantized, ref.quantized)


def test_kmeans_init_and_dead_code_restart():
    torch.manual_seed(4)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    z = (centres[:, None, :] + 0.1 * torch.randn(4, 50, 2)).reshape(-1, 2)
    vq = VectorQuantizer(4, 2, kmeans_init=True, kmeans_iters=20)
    assert not bool(vq.initialised)
    vq.train()
    out = vq(z)
    assert bool(vq.initialised) and out.usage == 1.0
    # codebook after the EMA step: each codeword the mean of its cluster
    d = torch.cdist(vq.codebook, centres).min(1).values
    assert bool((d < 0.2).all())
    # dead-code restart: a codeword far from every input is replaced by an input vector
    vq2 = VectorQuantizer(4, 2, dead_code_threshold=0.5)
    vq2.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]))
    vq2.train()
    vq2(z)
    rows = [r for r in vq2.codebook.tolist()]
    assert all(min(((torch.tensor(r) - z) ** 2).sum(1)).item() < 1e-12 or r == rows[0] for r in rows[1:])


def test_stats_hook_sees_counts_and_sums():
    seen = {}

    def hook(counts, sums):
        seen["counts"], seen["sums"] = counts.clone(), sums.clone()
        return counts * 2, sums * 2  # e.g. an all-reduce over two identical replicas

    vq = _vq([[0.0], [10.0]], decay=0.5)
    vq.stats_hook = hook
    vq.train()
    vq(torch.tensor([[1.0], [2.0], [9.0]]))
    assert seen["counts"].tolist() == [2.0, 1.0] and seen["sums"].flatten().tolist() == [3.0, 9.0]
    assert vq.ema_count.tolist() == [2.0, 1.0]  # (1 - 0.5) * 2 * counts


@pytest.mark.parametrize("nc", [2**k for k in range(1, 11)])
def test_bit_pack_round_trip_every_codebook_size(nc):
    nb = bits_per_index(nc)
    assert nb == int(math.log2(nc))
    g = torch.Generator().manual_seed(nc)
    for L in (1, 3, 7, 8, 13, 64):
        idx = torch.randint(0, nc, (5, L), generator=g)
        idx[0, 0], idx[1, -1] = nc - 1, 0
        msgs = pack_index_batch(idx, num_codes=nc)
        assert all(len(m) == math.ceil(L * nb / 8) == message_nbytes(L, nc) for m in msgs)
        assert torch.equal(unpack_index_batch(msgs, length=L, num_codes=nc), idx)
        # literal reference: the bit string, MSB first, zero-padded to whole bytes
        bits = "".join(format(int(v), f"0{nb}b") for v in idx[2].tolist())
        bits += "0" * (-len(bits) % 8)
        assert msgs[2] == bytes(int(bits[k: k + 8], 2) for k in range(0, len(bits), 8))
        assert pack_indices(idx[2], num_codes=nc) == msgs[2]
        assert torch.equal(unpack_indices(msgs[2], length=L, num_codes=nc), idx[2])


def test_bad_messages_and_indices_are_rejected():
    msg = pack_indices([1, 2, 3], num_codes=32)  # 15 bits -> 2 bytes
    assert len(msg) == 2
    with pytest.raises(ValueError, match="expected exactly 2"):
        unpack_indices(msg + b"\x00", length=3, num_codes=32)
    with pytest.raises(ValueError, match="expected exactly 2"):
        unpack_indices(msg[:1], length=3, num_codes=32)
    with pytest.raises(ValueError, match="padding"):
        unpack_indices(bytes([msg[0], msg[1] | 1]), length=3, num_codes=32)
    with pytest.raises(ValueError, match="must be bytes"):
        unpack_index_batch(["ab"], length=3, num_codes=32)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        pack_indices([0, 32], num_codes=32)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        pack_indices([-1], num_codes=32)
    with pytest.raises(ValueError, match="integers"):
        pack_indices(np.array([0.5]), num_codes=32)
    for bad in (1, 3, 48, 2048):
        with pytest.raises(ValueError, match="power of two"):
            bits_per_index(bad)
    vq = VectorQuantizer(8, 2)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vq.dequantize(torch.tensor([8]))
    with pytest.raises(ValueError, match="last dimension"):
        vq.nearest(torch.zeros(3, 5))
