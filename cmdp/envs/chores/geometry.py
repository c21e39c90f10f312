"""Vectorised 2-D geometry on axis-aligned boxes and discs, batched over envs.

Boxes are ``[..., 5]`` arrays ``(x0, y0, x1, y1, height)``; only the first four matter here.
All functions broadcast over leading batch dimensions and never loop over envs.
"""

from __future__ import annotations

import numpy as np


def point_box_distance2(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Squared distance from points ``[N, P, 2]`` to boxes ``[N, B, >=4]``: ``[N, P, B]``
    (0 inside a box)."""
    px = points[:, :, None, 0]
    py = points[:, :, None, 1]
    dx = np.maximum(np.maximum(boxes[:, None, :, 0] - px, px - boxes[:, None, :, 2]), 0.0)
    dy = np.maximum(np.maximum(boxes[:, None, :, 1] - py, py - boxes[:, None, :, 3]), 0.0)
    return dx * dx + dy * dy


def ray_box_entry(origin: np.ndarray, direction: np.ndarray, boxes: np.ndarray, env: np.ndarray) -> np.ndarray:
    """Distance along rays to a list of boxes (slab test), in float32.

    ``origin`` ``[N, 2]`` (one origin per env), ``direction`` ``[N, R, 2]`` unit vectors, and
    ``K`` boxes ``[K, >=4]``, box ``k`` lying in env ``env[k]``. Returns ``[K, R]`` entry
    distances of env ``env[k]``'s rays into box ``k``: ``inf`` for a miss, 0 when the ray starts
    inside the box.
    """
    rel = (boxes[:, :4] - np.concatenate([origin, origin], axis=1)[env]).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (1.0 / direction).astype(np.float32)[env]  # [K, R, 2]
        tx0 = rel[:, None, 0] * inv[:, :, 0]
        tx1 = rel[:, None, 2] * inv[:, :, 0]
        ty0 = rel[:, None, 1] * inv[:, :, 1]
        ty1 = rel[:, None, 3] * inv[:, :, 1]
    # a zero direction component gives +-inf (nan exactly on a slab edge, read as inside)
    t_in = np.maximum(np.maximum(np.fmin(tx0, tx1), np.fmin(ty0, ty1)), 0.0)
    t_out = np.minimum(np.fmax(tx0, tx1), np.fmax(ty0, ty1))
    t_in[t_out < t_in] = np.inf
    return t_in


def segment_box_span(a: np.ndarray, b: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where segments ``a -> b`` (``[K, 2]`` each) cross boxes ``[K, B, >=4]``: the parameter
    interval ``[t_in, t_out]`` within [0, 1] as ``[K, B]`` arrays, ``t_in = inf`` where the
    segment misses the box."""
    d = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        tx0 = (boxes[..., 0] - a[:, None, 0]) * inv[:, None, 0]
        tx1 = (boxes[..., 2] - a[:, None, 0]) * inv[:, None, 0]
        ty0 = (boxes[..., 1] - a[:, None, 1]) * inv[:, None, 1]
        ty1 = (boxes[..., 3] - a[:, None, 1]) * inv[:, None, 1]
    t_in = np.maximum(np.maximum(np.fmin(tx0, tx1), np.fmin(ty0, ty1)), 0.0)
    t_out = np.minimum(np.minimum(np.fmax(tx0, tx1), np.fmax(ty0, ty1)), 1.0)
    hit = t_out >= t_in
    return np.where(hit, t_in, np.inf), np.where(hit, t_out, np.inf)


def rotate_to_frame(vec: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """World vectors ``[N, ..., 2]`` into the frame of a robot with heading ``yaw`` ``[N]``
    (x ahead, y to the left)."""
    c = np.cos(yaw).reshape((-1,) + (1,) * (vec.ndim - 2))
    s = np.sin(yaw).reshape((-1,) + (1,) * (vec.ndim - 2))
    x, y = vec[..., 0], vec[..., 1]
    return np.stack([c * x + s * y, -s * x + c * y], axis=-1)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi
