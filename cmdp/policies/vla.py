"""A small vision-language-action policy in the SPOC / FLaRe style, sized for a CPU.

Per step, the observation (the Safety-CHORES ``obs_mode="rgb"`` dict) becomes one token:

* **Instruction**: the project's word-level token ids (:mod:`cmdp.envs.chores.text`, shipped
  with the code, no download) are embedded, mixed by one bidirectional self-attention block
  and mean-pooled over the non-padding words.
* **Cameras**: one CNN, shared by the navigation and the manipulation camera, FiLM-conditioned
  on the instruction (as RT-1 conditions its image encoder on language), with one FiLM
  generator per camera. Sharing the convolutions halves their parameters and lets the
  hand camera profit from every object the mast camera learned to see (both cameras look at
  the same houses); the per-camera FiLM keeps their different viewpoints apart. The final
  ``8 x 8`` feature map is flattened rather than pooled, so *where* the named object is in
  the picture (left, right, near the gripper) survives.
* **Fusion**: a linear map of ``[nav, manip, instruction]`` plus embeddings of the last
  action and of the object-in-hand flag, plus sinusoidal features of the episode step.
* **Detection** (when the env has ``detection=True``, SPOC's ground-truth box sensors): an MLP
  of the target's box in each camera, added to the token. The policy reads the boxes exactly
  when the observation space it was built for has them (``io["detection"]``).

A causal transformer decoder then runs over the episode's tokens. Each token attends to
itself and the ``context - 1`` tokens before it in the same episode (a sliding window, as
SPOC limits its context; the default of 64 steps covers the median successful Fetch
expert episode of about 70 steps almost entirely, and the receptive field grows by the
window with each layer). While acting, the keys and values of those previous tokens sit in
a fixed-size KV cache, so one step costs the same at step 400 as at step 10: the attention
always spans ``context`` slots, unused slots are masked.

Recurrent state (``state``): a dict of tensors with the batch dimension first, so the
engine's ``state_map`` can index it:

``kv``       ``[N, layers, 2, context - 1, d_model]`` keys and values of the previous tokens,
             oldest first (``kv_critic`` likewise for a separate critic network);
``valid``    ``[N, context - 1]`` which cache slots hold tokens of the current episode.

``episode_start[i]`` invalidates env i's cache before its step. :meth:`VLAPolicy.evaluate`
processes trajectory segments ``[B, L]`` in one pass: its attention mask joins the cached
context (``batch["state"]``, taken at the rollout start) with the segment, applies the same
window, and never lets a step see past an ``episode_start`` inside the segment. Its
log-probabilities therefore equal the ones computed while acting. After the first update
pass the cached keys and values are those of the slightly older network (the Transformer-XL
memory approximation); they only matter for the first segment of each env in a rollout, and
carry no gradient.

Critics: a reward critic and one cost critic per channel (one head with ``1 + K`` outputs).
With ``separate_critic=False`` (default, half the compute) they read the actor's transformer
output *detached*: the critic loss trains the value head only, so the engine's two
optimisers never touch a shared weight and value regression cannot distort the features the
policy acts on. With ``separate_critic=True`` the critics get their own encoder and
transformer, as FLaRe uses; :meth:`VLAPolicy.from_pretrained` then starts that network as a
copy of the pretrained actor network when the checkpoint has none. ``step_cost_model=True`` adds
one more critic head on the same features: for every action, the cost each channel charges on
this step if that action is taken (``PolicyOutput.step_cost``, ``[B, L, A, K]``), fitted to the
taken actions' costs and used by the engine's ``step_cost_coef`` term and its cost shield
(``shield_threshold``); :meth:`VLAPolicy.act` returns it for the acting step (``[N, A, K]``).

Checkpoints (:meth:`VLAPolicy.save_pretrained`, :meth:`VLAPolicy.from_pretrained`): one
file with the config, the observation/action dimensions and the weights, read with
``torch.load(weights_only=True)`` and checked key by key.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cmdp.algorithms.config import Config, option
from cmdp.envs.chores.env import BOX_KEYS
from cmdp.errors import CheckpointError, ConfigError
from cmdp.policies.base import ActorCritic, PolicyOutput
from cmdp.policies.distributions import ActionDistribution, ActionHead

Tensor = torch.Tensor

PRETRAINED_FORMAT = "cmdp-vla"
PRETRAINED_VERSION = 1
DEFAULT_FILENAME = "vla.pt"
IMAGE_KEYS = ("rgb_nav", "rgb_manip")  # the camera images among OBS_KEYS
OBS_KEYS = (*IMAGE_KEYS, "instruction", "holding", "last_action", "time_step")
# with detection (SPOC's ground-truth box sensors) the policy also reads BOX_KEYS


@dataclass(frozen=True, kw_only=True)
class VLAConfig(Config):
    """Sizes of :class:`VLAPolicy`. The defaults train on a CPU."""

    d_model: int = option(128, "Width of the per-step tokens and of the transformer.", ge=8)
    num_layers: int = option(2, "Causal transformer layers over the episode.", ge=1)
    num_heads: int = option(4, "Attention heads; must divide d_model.", ge=1)
    ff_dim: int = option(256, "Hidden width of each transformer layer's feed-forward block.", ge=1)
    context: int = option(
        64,
        "Sliding attention window in steps, the current step included: each step attends to at "
        "most context - 1 earlier steps of its episode (the KV cache holds that many).",
        ge=1,
    )
    cnn_channels: tuple[int, ...] = option((16, 32, 32), "Channels of the camera encoder's convolutions.", ge=1)
    cnn_strides: tuple[int, ...] = option(
        (4, 2, 1),
        "Stride of each convolution (one per cnn_channels entry). A stride-s layer has an s x s "
        "kernel without padding when s >= 3 (a patch embedding, as ViTs start), else a padded 3 x 3 "
        "kernel. The default maps 64 x 64 images to 8 x 8 x 32 features.",
        ge=1,
    )
    text_dim: int = option(64, "Width of the instruction encoder.", ge=4)
    text_heads: int = option(2, "Attention heads of the instruction encoder; must divide text_dim.", ge=1)
    critic_hidden: int = option(128, "Hidden width of the reward/cost value head.", ge=1)
    separate_critic: bool = option(
        False,
        "Give the critics their own encoder and transformer (FLaRe). False: the value head reads "
        "the actor's transformer output with the gradient stopped.",
    )
    step_cost_model: bool = option(
        False,
        "Add a one-step cost model: a linear head on the critic's features that predicts, for every "
        "action, the cost each channel charges on this step if that action is taken. It is a critic "
        "(trained on the taken actions' costs, gradient stopped at the features) and feeds the "
        "engine's step_cost_coef term and its cost shield (shield_threshold).",
    )
    max_time: int = option(
        1024, "Largest episode step the sinusoidal time features distinguish (longer ones are clipped).", ge=1
    )

    def validate(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(f"VLAConfig.d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})")
        if self.text_dim % self.text_heads:
            raise ConfigError(
                f"VLAConfig.text_dim ({self.text_dim}) must be a multiple of text_heads ({self.text_heads})"
            )
        if not self.cnn_channels:
            raise ConfigError("VLAConfig.cnn_channels needs at least one convolution")
        if len(self.cnn_strides) != len(self.cnn_channels):
            raise ConfigError(
                f"VLAConfig.cnn_strides ({list(self.cnn_strides)}) needs one stride per entry of "
                f"cnn_channels ({list(self.cnn_channels)})"
            )


# ---- building blocks ------------------------------------------------------------------------


class _AttentionBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block that returns its keys and values, so the
    caller can cache them and attend over cached context (``past_k``, ``past_v``)."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(
        self, x: Tensor, allowed: Tensor, past_k: Tensor | None = None, past_v: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``[B, L, d]``; ``allowed`` ``[B, L, P + L]`` (True: query may attend to key);
        ``past_k``/``past_v`` ``[B, P, d]``. Returns the output and this layer's new k, v."""
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        keys = k if past_k is None else torch.cat([past_k, k], dim=1)
        values = v if past_v is None else torch.cat([past_v, v], dim=1)
        h, dh = self.heads, d // self.heads

        def split(t: Tensor) -> Tensor:
            return t.reshape(b, t.shape[1], h, dh).transpose(1, 2)

        # Written out rather than F.scaled_dot_product_attention: the fused CPU kernels have no
        # second derivative, which CPO's Fisher-vector products need.
        scores = split(q) @ split(keys).transpose(-1, -2) * (1.0 / math.sqrt(dh))
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        att = torch.softmax(scores, dim=-1) @ split(values)
        x = x + self.out(att.transpose(1, 2).reshape(b, length, d))
        x = x + self.ff(self.norm2(x))
        return x, k, v


class _InstructionEncoder(nn.Module):
    """Token embedding, one bidirectional attention block, mean over the non-padding words."""

    def __init__(self, vocab_size: int, max_tokens: int, dim: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        self.block = _AttentionBlock(dim, heads, 2 * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids.long()
        words = ids != 0
        words = words.clone()
        words[:, 0] = True  # an all-padding instruction still attends to something (no NaN)
        x = self.embed(ids) + self.position[: ids.shape[1]]
        allowed = words[:, None, :].expand(-1, ids.shape[1], -1)
        x, _, _ = self.block(x, allowed)
        w = words.to(x.dtype)[..., None]
        return self.norm((x * w).sum(1) / w.sum(1))


class _FiLMCameraEncoder(nn.Module):
    """Convolutions shared by every camera; each camera has its own FiLM generator mapping the
    instruction to a per-channel scale and shift after every convolution."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: tuple[int, ...],
        strides: tuple[int, ...],
        cond_dim: int,
        out: int,
        cameras: int,
    ):
        super().__init__()
        h, w, c = image_shape
        convs = []
        for ch, stride in zip(channels, strides):
            if stride >= 3:
                convs.append(nn.Conv2d(c, ch, stride, stride=stride))
            else:
                convs.append(nn.Conv2d(c, ch, 3, stride=stride, padding=1))
            c = ch
        self.convs = nn.ModuleList(convs)
        self.film = nn.ModuleList(nn.Linear(cond_dim, 2 * sum(channels)) for _ in range(cameras))
        for f in self.film:  # start as the identity modulation
            nn.init.zeros_(f.weight)
            nn.init.zeros_(f.bias)
        with torch.no_grad():
            x = torch.zeros(1, image_shape[2], h, w)
            for conv in self.convs:
                if min(x.shape[-2:]) < conv.kernel_size[0]:
                    raise ConfigError(
                        f"VLAConfig.cnn_strides {list(strides)} shrink {h} x {w} images below a kernel; "
                        "use fewer or smaller strides"
                    )
                x = conv(x)
        self.proj = nn.Linear(x.numel(), out)
        self.channels = channels

    def forward(self, images: Tensor, cond: Tensor, camera: int) -> Tensor:
        # [N, H, W, 3] uint8 viewed as channels-last NCHW: no copy besides the float conversion.
        # The input scaling (x / 255 - 0.5) is folded into the first convolution's weights, which
        # is exact (that layer has no padding when its stride is >= 3) and saves two passes over
        # the largest tensor of the network.
        x = images.permute(0, 3, 1, 2).float()
        first = self.convs[0]
        weight = first.weight * (1.0 / 255.0)
        bias = first.bias - 0.5 * first.weight.sum(dim=(1, 2, 3))
        scale_shift = self.film[camera](cond).split([2 * c for c in self.channels], dim=-1)
        for i, (conv, ss) in enumerate(zip(self.convs, scale_shift)):
            x = F.conv2d(x, weight, bias, first.stride, first.padding) if i == 0 else conv(x)
            gamma, beta = ss.chunk(2, dim=-1)
            x = F.relu(torch.addcmul(beta[:, :, None, None], x, 1.0 + gamma[:, :, None, None]), inplace=True)
        return F.relu(self.proj(x.flatten(1)))


def _time_features(t: Tensor, dim: int, max_time: int) -> Tensor:
    """Sinusoidal features of the episode step (periods from 2 to about 2 * max_time steps)."""
    t = t.float().clamp(0, max_time)
    half = dim // 2
    freqs = torch.exp(-math.log(max_time) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1)) * math.pi
    angles = t[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _StepEncoder(nn.Module):
    """One observation -> one token ``[M, d_model]``."""

    def __init__(self, io: Mapping[str, Any], cfg: VLAConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.image_shape = tuple(io["image_shape"])
        self.text = _InstructionEncoder(io["vocab_size"], io["max_tokens"], cfg.text_dim, cfg.text_heads)
        self.cameras = _FiLMCameraEncoder(
            self.image_shape, cfg.cnn_channels, cfg.cnn_strides, cfg.text_dim, d, cameras=2
        )
        self.fuse = nn.Linear(2 * d + cfg.text_dim, d)
        self.boxes = (
            nn.Sequential(nn.Linear(5 * len(BOX_KEYS), d), nn.GELU(), nn.Linear(d, d)) if io.get("detection") else None
        )
        self.last_action = nn.Embedding(io["last_actions"], d)
        self.holding = nn.Embedding(2, d)
        self.time = nn.Linear(2 * (d // 2), d)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        # a batch holds few distinct instructions (one per episode): encode each once. index_select,
        # not text[which]: the backward of advanced indexing accumulates the repeated rows in an
        # order that varies between runs with two or more torch threads; index_select's does not
        instructions, which = torch.unique(obs["instruction"], dim=0, return_inverse=True)
        text = self.text(instructions).index_select(0, which.reshape(-1))
        nav = self.cameras(obs["rgb_nav"], text, 0)
        manip = self.cameras(obs["rgb_manip"], text, 1)
        t = obs["time_step"].reshape(-1)
        token = (
            self.fuse(torch.cat([nav, manip, text], dim=-1))
            + self.last_action(obs["last_action"].long().reshape(-1))
            + self.holding(obs["holding"].long().reshape(-1).clamp(0, 1))
            + self.time(_time_features(t, self.cfg.d_model, self.cfg.max_time))
        )
        if self.boxes is not None:
            token = token + self.boxes(torch.cat([obs[k].float() for k in BOX_KEYS], dim=-1))
        return token


class _EpisodeTransformer(nn.Module):
    """Step encoder + causal sliding-window transformer; the unit duplicated for a separate critic."""

    def __init__(self, io: Mapping[str, Any], cfg: VLAConfig) -> None:
        super().__init__()
        self.encoder = _StepEncoder(io, cfg)
        self.layers = nn.ModuleList(
            _AttentionBlock(cfg.d_model, cfg.num_heads, cfg.ff_dim) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, tokens: Tensor, kv: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens`` ``[B, L, d]``, cached ``kv`` ``[B, layers, 2, C, d]``. Returns the output
        ``[B, L, d]`` and the keys/values of the new tokens ``[B, layers, 2, L, d]``."""
        x = tokens
        new = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, allowed, kv[:, i, 0], kv[:, i, 1])
            new.append(torch.stack([k, v], dim=1))
        return self.norm(x), torch.stack(new, dim=1)


def _attention_mask(valid: Tensor, episode_start: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """Which keys each query may see, for queries ``[B, L]`` after a cache of ``C`` slots.

    Key ``j`` of the joined sequence (cache slots first, then the segment) sits at position
    ``j - C``; query ``i`` at ``i``. Allowed: inside the window (``i - context < j - C <= i``),
    a valid key, and the same episode (an ``episode_start`` at segment step s starts a new
    episode there; cache slots belong to the episode running before the segment).
    Returns the mask ``[B, L, C + L]`` and each key's episode index ``[B, C + L]``.
    """
    b, length = episode_start.shape
    c = valid.shape[1]
    episode = torch.cumsum(episode_start.long(), dim=1)
    key_episode = torch.cat([torch.zeros(b, c, dtype=torch.long), episode], dim=1)
    key_valid = torch.cat([valid, torch.ones(b, length, dtype=torch.bool)], dim=1)
    q_pos = torch.arange(length)[:, None]
    k_pos = torch.arange(c + length)[None, :] - c
    window = (k_pos <= q_pos) & (k_pos > q_pos - context)
    allowed = window[None] & key_valid[:, None, :] & (key_episode[:, None, :] == episode[:, :, None])
    return allowed, key_episode


# ---- the policy -----------------------------------------------------------------------------


def io_signature(observation_space: gym.Space, action_space: gym.Space, num_costs: int) -> dict[str, Any]:
    """The dimensions a :class:`VLAPolicy` is built for, checked against the rgb Safety-CHORES
    observation dict; stored in pretrained files so the policy can be rebuilt without an env."""
    if not isinstance(observation_space, gym.spaces.Dict) or any(k not in observation_space.spaces for k in OBS_KEYS):
        have = sorted(observation_space.spaces) if isinstance(observation_space, gym.spaces.Dict) else observation_space
        raise ConfigError(
            f"VLAPolicy needs the rgb Safety-CHORES observation dict with keys {list(OBS_KEYS)} "
            f"(cmdp.make(..., obs_mode='rgb')); got {have}"
        )
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"VLAPolicy acts in a Discrete action space (the SPOC actions), got {action_space}")
    spaces = observation_space.spaces
    nav, manip = spaces["rgb_nav"].shape, spaces["rgb_manip"].shape
    if nav != manip or len(nav) != 3 or spaces["rgb_nav"].dtype != np.uint8:
        raise ConfigError(f"VLAPolicy needs two uint8 [H, W, 3] cameras of one size; got {nav} and {manip}")
    instr = spaces["instruction"]
    return {
        "image_shape": [int(v) for v in nav],
        "detection": all(k in spaces for k in BOX_KEYS),
        "vocab_size": int(np.max(instr.high)) + 1,
        "max_tokens": int(instr.shape[0]),
        "last_actions": int(spaces["last_action"].n),
        "num_actions": int(action_space.n),
        "num_costs": int(num_costs),
    }


def spaces_from_signature(io: Mapping[str, Any]) -> tuple[gym.spaces.Dict, gym.spaces.Discrete]:
    h, w, c = io["image_shape"]
    obs = gym.spaces.Dict(
        {
            "rgb_nav": gym.spaces.Box(0, 255, (h, w, c), np.uint8),
            "rgb_manip": gym.spaces.Box(0, 255, (h, w, c), np.uint8),
            "instruction": gym.spaces.Box(0, io["vocab_size"] - 1, (io["max_tokens"],), np.int64),
            "holding": gym.spaces.Discrete(2),
            "last_action": gym.spaces.Discrete(io["last_actions"]),
            "time_step": gym.spaces.Box(0, np.iinfo(np.int64).max, (1,), np.int64),
        }
        | ({k: gym.spaces.Box(0.0, 1.0, (5,), np.float32) for k in BOX_KEYS} if io.get("detection") else {})
    )
    return obs, gym.spaces.Discrete(io["num_actions"])


class VLAPolicy(ActorCritic):
    """Vision-language-action actor-critic over the SPOC action set. See the module docstring.

    Args:
        observation_space: the rgb Safety-CHORES observation dict (one env).
        action_space: ``Discrete`` SPOC actions.
        num_costs: cost channels (one cost critic output each).
        config: sizes; default :class:`VLAConfig()`.
    """

    is_sequence = True

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_costs: int,
        config: VLAConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else VLAConfig()
        if not isinstance(self.config, VLAConfig):
            raise ConfigError(f"config must be a VLAConfig, got {type(self.config).__name__}")
        self.io = io_signature(observation_space, action_space, num_costs)
        self.num_costs = int(num_costs)
        cfg = self.config
        self.trunk = _EpisodeTransformer(self.io, cfg)
        self.action_head = ActionHead(cfg.d_model, action_space)
        self.critic_trunk = _EpisodeTransformer(self.io, cfg) if cfg.separate_critic else None
        self.value_head = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.critic_hidden), nn.Tanh(), nn.Linear(cfg.critic_hidden, 1 + self.num_costs)
        )
        self.num_actions = int(self.io["num_actions"])
        self.step_cost_head = None
        if cfg.step_cost_model:
            self.step_cost_head = nn.Linear(cfg.d_model, self.num_actions * self.num_costs)
            # an action's row learns only from the steps that took it: starting at zero, an action
            # the policy rarely takes predicts no cost instead of a random one that would pull
            # the step-cost term towards it
            nn.init.zeros_(self.step_cost_head.weight)
            nn.init.zeros_(self.step_cost_head.bias)

    @property
    def has_step_cost_model(self) -> bool:
        return self.step_cost_head is not None

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """The observation keys this policy reads."""
        return OBS_KEYS + BOX_KEYS if self.io.get("detection") else OBS_KEYS

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """The Safety-CHORES env options whose observations this policy reads."""
        return {"obs_mode": "rgb", "image_size": tuple(self.io["image_shape"][:2]), "detection": bool(self.io.get("detection"))}

    # ---- state ------------------------------------------------------------------------------

    @property
    def cache_slots(self) -> int:
        return self.config.context - 1

    def initial_state(self, batch_size: int) -> dict[str, Tensor]:
        cfg = self.config
        shape = (batch_size, cfg.num_layers, 2, self.cache_slots, cfg.d_model)
        state = {"kv": torch.zeros(shape), "valid": torch.zeros(batch_size, self.cache_slots, dtype=torch.bool)}
        if self.critic_trunk is not None:
            state["kv_critic"] = torch.zeros(shape)
        return state

    # ---- forward ----------------------------------------------------------------------------

    def _check_obs(self, obs: Any) -> None:
        keys = self.obs_keys
        if not isinstance(obs, Mapping) or any(k not in obs for k in keys):
            got = sorted(obs) if isinstance(obs, Mapping) else type(obs).__name__
            hint = " (the policy reads target boxes: make the env with detection=True)" if keys != OBS_KEYS else ""
            raise ConfigError(f"VLAPolicy expects observation keys {list(keys)}, got {got}{hint}")
        shape = tuple(obs["rgb_nav"].shape[-3:])
        if shape != tuple(self.io["image_shape"]):
            raise ConfigError(
                f"VLAPolicy was built for {tuple(self.io['image_shape'])} images, got {shape}; make the env "
                f"with image_size={tuple(self.io['image_shape'][:2])}"
            )

    def _run(
        self,
        obs: Mapping[str, Tensor],
        state: Mapping[str, Tensor],
        episode_start: Tensor,
        critic_only: bool = False,
        actor_only: bool = False,
    ):
        """Encode ``[B, L]`` steps and run the transformer(s) over them after the cached context.
        Returns the actor's output (None when only the critic network ran), the critic's
        features (None when only the actor network ran), the new keys/values per network and
        each key's episode index."""
        self._check_obs(obs)
        b, length = episode_start.shape
        flat = {k: obs[k].reshape(b * length, *obs[k].shape[2:]) for k in self.obs_keys}
        allowed, key_episode = _attention_mask(state["valid"], episode_start, self.config.context)
        new_kv: dict[str, Tensor] = {}
        actor_out = None
        if not critic_only or self.critic_trunk is None:
            tokens = self.trunk.encoder(flat).reshape(b, length, -1)
            actor_out, new_kv["kv"] = self.trunk(tokens, state["kv"], allowed)
        if self.critic_trunk is None:
            critic_feat = actor_out.detach()
        elif actor_only:
            critic_feat = None
        else:
            tokens_c = self.critic_trunk.encoder(flat).reshape(b, length, -1)
            critic_feat, new_kv["kv_critic"] = self.critic_trunk(tokens_c, state["kv_critic"], allowed)
        return actor_out, critic_feat, new_kv, key_episode

    def _values(self, critic_feat: Tensor) -> tuple[Tensor, Tensor]:
        v = self.value_head(critic_feat)
        return v[..., 0], v[..., 1:]

    def _step_cost(self, critic_feat: Tensor) -> Tensor | None:
        if self.step_cost_head is None:
            return None
        return self.step_cost_head(critic_feat).unflatten(-1, (self.num_actions, self.num_costs))

    def _as_state(self, state: Any, n: int) -> Mapping[str, Tensor]:
        return self.initial_state(n) if state is None else state

    def _next_state(
        self, state: Mapping[str, Tensor], new_kv: Mapping[str, Tensor], key_episode: Tensor
    ) -> dict[str, Tensor]:
        c = self.cache_slots
        joined_valid = key_episode == key_episode[:, -1:]  # keys of the episode the last step is in
        joined_valid[:, : state["valid"].shape[1]] &= state["valid"]
        out = {"valid": joined_valid[:, joined_valid.shape[1] - c :]}
        for key, kv_new in new_kv.items():
            joined = torch.cat([state[key], kv_new], dim=3)
            out[key] = joined[:, :, :, joined.shape[3] - c :]
        return out

    def act(self, obs: Any, state: Any = None, episode_start: Tensor | None = None) -> PolicyOutput:
        n = obs["rgb_nav"].shape[0]
        state = self._as_state(state, n)
        start = torch.zeros(n, dtype=torch.bool) if episode_start is None else episode_start.bool().reshape(n)
        seq_obs = {k: obs[k][:, None] for k in self.obs_keys if k in obs}  # _run names any missing key
        actor_out, critic_feat, new_kv, key_episode = self._run(seq_obs, state, start[:, None])
        value, cost_value = self._values(critic_feat[:, 0])
        return PolicyOutput(
            self.action_head(actor_out[:, 0]),
            value,
            cost_value,
            self._next_state(state, new_kv, key_episode),
            self._step_cost(critic_feat[:, 0]),
        )

    def values(self, obs: Any, state: Any = None) -> tuple[Tensor, Tensor]:
        n = obs["rgb_nav"].shape[0]
        seq_obs = {k: obs[k][:, None] for k in self.obs_keys if k in obs}  # _run names any missing key
        _, critic_feat, _, _ = self._run(
            seq_obs, self._as_state(state, n), torch.zeros(n, 1, dtype=torch.bool), critic_only=True
        )
        return self._values(critic_feat[:, 0])

    def evaluate(self, batch: Mapping[str, Any]) -> PolicyOutput:
        """Logits and values of trajectory segments ``[B, L]``, after ``batch["state"]``."""
        starts = batch["episode_start"].bool()
        state = batch.get("state")
        state = self._as_state(state, starts.shape[0])
        actor_out, critic_feat, _, _ = self._run(batch["obs"], state, starts)
        value, cost_value = self._values(critic_feat)
        return PolicyOutput(self.action_head(actor_out), value, cost_value, None, self._step_cost(critic_feat))

    def action_distribution(self, batch: Mapping[str, Any]) -> ActionDistribution:
        """As :meth:`evaluate`'s distribution, without the critic network and heads."""
        starts = batch["episode_start"].bool()
        state = self._as_state(batch.get("state"), starts.shape[0])
        actor_out, _, _, _ = self._run(batch["obs"], state, starts, actor_only=True)
        return self.action_head(actor_out)

    # ---- parameters -------------------------------------------------------------------------

    def actor_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.trunk.parameters()
        yield from self.action_head.parameters()

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        if self.critic_trunk is not None:
            yield from self.critic_trunk.parameters()
        yield from self.value_head.parameters()
        if self.step_cost_head is not None:
            yield from self.step_cost_head.parameters()

    def to_env_action(self, actions: Tensor) -> np.ndarray:
        return self.action_head.to_env_action(actions)

    # ---- pretrained files -------------------------------------------------------------------

    def architecture(self) -> dict[str, Any]:
        return {"kind": "vla", "config": self.config.to_dict(), "io": dict(self.io)}

    @classmethod
    def from_architecture(cls, architecture: Mapping[str, Any], **overrides: Any) -> "VLAPolicy":
        """An untrained policy with the config and dimensions :meth:`architecture` recorded (a
        solver checkpoint, a pretrained file); ``overrides`` change config fields."""
        cfg = _stored_config(architecture["config"], "the recorded VLA architecture")
        try:
            cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        except TypeError as e:
            names = sorted(VLAConfig.__dataclass_fields__)
            raise ConfigError(f"unknown VLAConfig override in {sorted(overrides)}; allowed: {names}") from e
        obs_space, act_space = spaces_from_signature(architecture["io"])
        return cls(obs_space, act_space, architecture["io"]["num_costs"], cfg)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config, dimensions and weights to ``path`` (a ``.pt`` file, or a directory that
        gets ``vla.pt``), atomically. Returns the file written."""
        from cmdp.algorithms.checkpoint import atomic_save

        path = _pretrained_file(path, for_writing=True)
        data = {
            "format": PRETRAINED_FORMAT,
            "version": PRETRAINED_VERSION,
            "config": self.config.to_dict(),
            "io": dict(self.io),
            "state_dict": {k: v.detach().clone() for k, v in self.state_dict().items()},
        }
        return atomic_save(data, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "VLAPolicy":
        """Rebuild a policy saved by :meth:`save_pretrained`; ``overrides`` change config fields.

        Every saved weight must match the network exactly (names and shapes): otherwise
        :class:`~cmdp.errors.CheckpointError` lists the missing and unexpected keys. Overriding
        ``separate_critic=True`` on a checkpoint without a critic network starts the critic
        network as a copy of the actor network (FLaRe's initialisation); ``False`` on one with
        a critic network drops it. ``step_cost_model=True`` on a checkpoint without that head
        starts it freshly initialised; ``False`` drops a saved one. ``context`` may change freely
        (it sizes no weight).
        """
        path = _pretrained_file(path, for_writing=False)
        data = _read_pretrained(path)
        saved_cfg = _stored_config(data["config"], path)
        policy = cls.from_architecture(data, **overrides)
        cfg = policy.config
        weights = dict(data["state_dict"])
        if cfg.separate_critic and not saved_cfg.separate_critic:
            actor = {k[len("trunk.") :]: v for k, v in weights.items() if k.startswith("trunk.")}
            weights |= {f"critic_trunk.{k}": v.clone() for k, v in actor.items()}
        elif saved_cfg.separate_critic and not cfg.separate_critic:
            weights = {k: v for k, v in weights.items() if not k.startswith("critic_trunk.")}
        if cfg.step_cost_model and not saved_cfg.step_cost_model:
            weights |= {f"step_cost_head.{k}": v for k, v in policy.step_cost_head.state_dict().items()}
        elif saved_cfg.step_cost_model and not cfg.step_cost_model:
            weights = {k: v for k, v in weights.items() if not k.startswith("step_cost_head.")}
        load_strict(policy, weights, path)
        return policy


def _stored_config(stored: Mapping[str, Any], source: Any) -> VLAConfig:
    """The VLAConfig of a file (lists read back as the tuples they were)."""
    try:
        return VLAConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{source}: the stored VLA config is not valid here: {e}") from e


def load_strict(module: nn.Module, weights: Mapping[str, Tensor], source: Any) -> None:
    """Load ``weights`` into ``module`` only if names and shapes match exactly; otherwise raise
    :class:`CheckpointError` listing the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(
        f"{k}: saved {tuple(weights[k].shape)}, network {tuple(own[k].shape)}"
        for k in set(own) & set(weights)
        if tuple(own[k].shape) != tuple(weights[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches {shapes}")
        raise CheckpointError(f"{source}: the saved weights do not fit this network: " + "; ".join(parts))
    module.load_state_dict(weights, strict=True)


def _pretrained_file(path: str | Path, for_writing: bool) -> Path:
    path = Path(path)
    if path.is_dir() or (for_writing and not path.suffix):
        return path / DEFAULT_FILENAME
    return path


def read_weights_file(path: Path, fmt: str, version: int, what: str) -> dict:
    """Read a file written with ``torch.save`` safely (``weights_only=True``) and check its
    ``format``/``version`` header; missing, truncated, corrupted or foreign files raise
    :class:`CheckpointError` naming ``what`` was expected."""
    if not path.exists():
        raise CheckpointError(f"no {what} at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path} is truncated or corrupted and cannot be read ({type(e).__name__}: {first})"
        ) from e
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise CheckpointError(f"{path} is not a {what} file (no '{fmt}' header)")
    if data.get("version") != version:
        raise CheckpointError(f"{path} has {what} format version {data.get('version')}, this cmdp reads {version}")
    return data


def _read_pretrained(path: Path) -> dict:
    data = read_weights_file(path, PRETRAINED_FORMAT, PRETRAINED_VERSION, "pretrained VLA")
    for key in ("config", "io", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path} has no '{key}' entry")
    return data
