"""Entropy-coded fronthaul (cfisac.entropy): lossless range coding of codeword indices with learned models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("constriction")

from cfisac.entropy import EntropyModel, split_messages  # noqa: E402
from cfisac.quantize import message_nbytes, pack_index_batch  # noqa: E402

NC, L = 16, 40
P = torch.tensor([0.4, 0.2, 0.1, 0.1] + [0.2 / 12] * 12)


def _iid(n: int, seed: int, p: torch.Tensor = P, length: int = L) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(p, n * length, replacement=True, generator=g).reshape(n, length)


def _markov(n: int, seed: int, stay: float = 0.9) -> torch.Tensor:
    """j_l = j_{l-1} + 1 mod Nc with probability ``stay``, else uniform: low entropy given the previous index only."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, L), dtype=np.int64)
    out[:, 0] = rng.integers(0, NC, n)
    for pos in range(1, L):
        jump = rng.random(n) > stay
        out[:, pos] = np.where(jump, rng.integers(0, NC, n), (out[:, pos - 1] + 1) % NC)
    return torch.from_numpy(out)


@pytest.mark.parametrize("context", ["none", "position", "previous"])
def test_decoding_is_bit_exact(context):
    train = [_iid(300, 0), _markov(300, 1)]
    em = EntropyModel.fit(train, num_codes=NC, context=context)
    test = torch.cat([_iid(30, 5), _markov(30, 6), torch.full((1, L), NC - 1), torch.arange(L)[None] % NC])
    for m in range(2):
        msgs = em.encode(m, test)
        assert len(msgs) == test.shape[0]
        assert torch.equal(em.decode(m, msgs), test)
        assert torch.equal(em.decode(m, b"".join(msgs), batch=test.shape[0]), test)  # concatenated on the wire


def test_order0_model_is_the_smoothed_frequency_table():
    idx = torch.tensor([[0, 0, 1, 3], [0, 2, 2, 0]])
    em = EntropyModel.fit([idx], num_codes=4, context="none", prior=0.5)
    # counts 4, 1, 2, 1 (+0.5 each) over 8 + 2
    np.testing.assert_allclose(em.probabilities(0)[0], [4.5 / 10, 1.5 / 10, 2.5 / 10, 1.5 / 10])
    bits = em.code_length_bits(0, torch.tensor([[0, 3, 3, 1]]))
    assert float(bits[0]) == pytest.approx(-math.log2(0.45) - 2 * math.log2(0.15) - math.log2(0.15))
    prev = EntropyModel.fit([idx], num_codes=4, context="previous", prior=0.5)
    # context "start" (index Nc) saw 0 twice; context 0 saw 0, 1, 2 (row 0 -> 0 0 1, row 1 -> 0 2)
    assert prev.counts[0, 4].tolist() == [2, 0, 0, 0]
    assert prev.counts[0, 0].tolist() == [1, 1, 1, 0]
    assert prev.counts[0, 2].tolist() == [1, 0, 1, 0]


def test_bits_follow_the_model_cross_entropy_and_beat_nb_l():
    n = 400  # indices per update
    train, test = _iid(200, 0, length=n), _iid(50, 1, length=n)
    em = EntropyModel.fit([train], num_codes=NC, context="none")
    msgs = em.encode(0, test)
    measured = 8 * np.array([len(m) for m in msgs])
    ideal = em.code_length_bits(0, test).numpy()
    h = float(-(P * P.log2()).sum())  # 2.84 bit per index against log2(Nc) = 4
    assert ideal.mean() / n == pytest.approx(h, rel=0.03)
    # range coder: whole 32-bit words + flush + a 2-byte varint above the ideal length, never below it
    assert np.all(measured >= ideal) and np.all(measured <= ideal + 80)
    assert measured.mean() < 0.75 * 4 * n  # Nb L = 1600 bit


def test_context_of_the_previous_index_captures_markov_structure():
    train, test = _markov(1000, 0), _markov(100, 1)
    bits = {}
    for context in ("none", "previous"):
        em = EntropyModel.fit([train], num_codes=NC, context=context)
        bits[context] = float(em.code_length_bits(0, test).mean())
    assert bits["none"] == pytest.approx(4 * L, rel=0.03)  # marginally uniform
    assert bits["previous"] < 0.5 * bits["none"]  # H = 0.9 log2(1/0.9) ... about 1 bit per index


def test_incompressible_updates_fall_back_to_the_packed_message():
    uniform = torch.ones(NC) / NC
    em = EntropyModel.fit([_iid(500, 0, p=P)], num_codes=NC, context="none")  # a model that does not fit
    test = _iid(20, 3, p=uniform)
    msgs = em.encode(0, test)
    packed = pack_index_batch(test, num_codes=NC)
    for m, p in zip(msgs, packed, strict=True):
        assert len(m) <= len(p) + 1
        mode, payload = split_messages(m)[0]
        if mode == 1:
            assert payload == p
    assert any(split_messages(m)[0][0] == 1 for m in msgs)
    assert torch.equal(em.decode(0, msgs), test)
    # long messages: a 2-byte varint (Nc = 1024, L = 300 -> 375-byte packed message)
    big = torch.randint(0, 1024, (2, 300), generator=torch.Generator().manual_seed(0))
    emb = EntropyModel.fit([big], num_codes=1024, context="none")
    msgs = emb.encode(0, big)
    assert all(len(m) <= message_nbytes(300, 1024) + 2 for m in msgs)
    assert torch.equal(emb.decode(0, msgs), big)


def test_bad_input_and_corrupted_messages_are_rejected(tmp_path):
    em = EntropyModel.fit([_iid(50, 0)], num_codes=NC, context="position")
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        em.encode(0, torch.full((1, L), NC))
    with pytest.raises(ValueError, match="L=40"):
        em.encode(0, torch.zeros(1, L + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="out of range"):
        em.probabilities(3)
    msgs = em.encode(0, _iid(2, 9))
    with pytest.raises(ValueError, match="truncated"):
        em.decode(0, msgs[0][:-1])
    with pytest.raises(ValueError, match="expected 3"):
        em.decode(0, msgs, batch=3)
    with pytest.raises(ValueError, match="context"):
        EntropyModel.fit([_iid(5, 0)], num_codes=NC, context="neighbours")
    path = em.save(tmp_path / "em.safetensors")
    back = EntropyModel.load(path)
    assert back.context == "position" and torch.equal(back.counts, em.counts)
    assert torch.equal(back.decode(0, msgs), em.decode(0, msgs))
    (tmp_path / "junk").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not an entropy model"):
        EntropyModel.load(tmp_path / "junk")
