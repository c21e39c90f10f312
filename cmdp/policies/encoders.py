"""Turn observations of any supported gymnasium space into flat feature vectors."""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from torch import nn

Tensor = torch.Tensor


def obs_to_tensor(obs: Any, space: gym.Space) -> Any:
    """Convert a batch of observations (array or dict of arrays) to tensors without copying."""
    if isinstance(space, gym.spaces.Dict):
        return {k: obs_to_tensor(obs[k], space[k]) for k in space.spaces}
    arr = np.asarray(obs)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and len(space.shape) == 3
        and space.dtype == np.uint8
        and min(space.shape[0], space.shape[1]) >= 16
    )


class _Flatten(nn.Module):
    def __init__(self, space: gym.spaces.Box) -> None:
        super().__init__()
        self.out_features = int(np.prod(space.shape))

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).float()


class _OneHot(nn.Module):
    def __init__(self, space: gym.spaces.Discrete) -> None:
        super().__init__()
        self.n = int(space.n)
        self.start = int(space.start)
        self.out_features = self.n

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.one_hot(x.long().reshape(-1) - self.start, self.n).float()


class _SmallCNN(nn.Module):
    """A Nature-DQN-sized CNN for ``[H, W, C]`` uint8 images, scaled to [0, 1]."""

    def __init__(self, space: gym.spaces.Box, out_features: int = 128) -> None:
        super().__init__()
        h, w, c = space.shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 16, 5, stride=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.conv(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x.permute(0, 3, 1, 2).float() / 255.0))


def _leaf_encoder(space: gym.Space) -> nn.Module:
    if isinstance(space, gym.spaces.Discrete):
        return _OneHot(space)
    if _is_image(space):
        return _SmallCNN(space)
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary, gym.spaces.MultiDiscrete)):
        return _Flatten(space)
    raise ValueError(
        f"observation space {space} is not supported (Box, Discrete, MultiBinary, MultiDiscrete, "
        "or a Dict of those)"
    )


class ObservationEncoder(nn.Module):
    """Flattens Box, one-hot encodes Discrete, runs a small CNN on uint8 images, and concatenates
    the keys of a Dict space in sorted order. ``out_features`` is the feature width."""

    def __init__(self, space: gym.Space) -> None:
        super().__init__()
        self.space = space
        if isinstance(space, gym.spaces.Dict):
            self.keys = sorted(space.spaces)
            self.parts = nn.ModuleDict({k: _leaf_encoder(space[k]) for k in self.keys})
            self.out_features = sum(p.out_features for p in self.parts.values())
        else:
            self.keys = None
            self.leaf = _leaf_encoder(space)
            self.out_features = self.leaf.out_features

    def forward(self, obs: Any) -> Tensor:
        if self.keys is None:
            return self.leaf(obs)
        assert isinstance(obs, Mapping)
        return torch.cat([self.parts[k](obs[k]) for k in self.keys], dim=-1)
