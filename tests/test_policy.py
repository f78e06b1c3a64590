"""The Deep Sets extractor is a function of the peer *set*: slot order and empty slots do not matter."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from roadsense.env.observation import MAX_PEERS, PEER_FEATURES, observation_space
from roadsense.policy import DeepSetsExtractor

SPACE = observation_space(frame_stack=3)


def _extractor() -> DeepSetsExtractor:
    torch.manual_seed(0)
    return DeepSetsExtractor(SPACE, peer_hidden=32)


def _obs(peers: np.ndarray, n_real: int, ego: np.ndarray) -> dict[str, torch.Tensor]:
    mask = np.zeros(MAX_PEERS, np.float32)
    mask[:n_real] = 1.0
    return {
        "ego": torch.as_tensor(ego[None]),
        "peers": torch.as_tensor(peers[None]),
        "peer_mask": torch.as_tensor(mask[None]),
    }


@settings(max_examples=60, deadline=None)
@given(n_real=st.integers(1, MAX_PEERS), seed=st.integers(0, 2**31 - 1))
def test_permuting_real_peers_and_changing_empty_slots_changes_nothing(n_real: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    extractor = _extractor()
    ego = rng.normal(size=SPACE["ego"].shape).astype(np.float32)
    peers = rng.normal(size=(MAX_PEERS, PEER_FEATURES)).astype(np.float32)
    base = extractor(_obs(peers, n_real, ego))

    shuffled = peers.copy()
    shuffled[:n_real] = peers[rng.permutation(n_real)]
    shuffled[n_real:] = rng.normal(scale=100.0, size=(MAX_PEERS - n_real, PEER_FEATURES))  # garbage in empty slots
    torch.testing.assert_close(extractor(_obs(shuffled, n_real, ego)), base, rtol=0, atol=0)


def test_the_real_peers_do_matter() -> None:
    rng = np.random.default_rng(1)
    extractor = _extractor()
    ego = rng.normal(size=SPACE["ego"].shape).astype(np.float32)
    peers = rng.normal(size=(MAX_PEERS, PEER_FEATURES)).astype(np.float32)
    other = peers.copy()
    other[0] += 5.0
    assert not torch.equal(extractor(_obs(peers, 3, ego)), extractor(_obs(other, 3, ego)))


def test_zero_peers_pool_to_zeros_and_keep_the_ego() -> None:
    extractor = _extractor()
    ego = np.arange(SPACE["ego"].shape[0], dtype=np.float32)
    peers = np.full((MAX_PEERS, PEER_FEATURES), 7.0, np.float32)
    features = extractor(_obs(peers, 0, ego))
    assert features.shape == (1, ego.size + 32)
    torch.testing.assert_close(features[0, : ego.size], torch.as_tensor(ego))
    assert torch.count_nonzero(features[0, ego.size :]) == 0


def test_batches_mix_peer_counts() -> None:
    extractor = _extractor()
    rng = np.random.default_rng(2)
    obs = {
        "ego": torch.as_tensor(rng.normal(size=(4, SPACE["ego"].shape[0])).astype(np.float32)),
        "peers": torch.as_tensor(rng.normal(size=(4, MAX_PEERS, PEER_FEATURES)).astype(np.float32)),
        "peer_mask": torch.as_tensor(np.tril(np.ones((4, MAX_PEERS), np.float32), k=-1)[:, :MAX_PEERS]),
    }
    batch = extractor(obs)
    for i in range(4):
        single = extractor({k: v[i : i + 1] for k, v in obs.items()})
        torch.testing.assert_close(batch[i : i + 1], single)
