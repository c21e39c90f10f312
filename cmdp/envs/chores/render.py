"""Cameras and pictures of Safety-CHORES houses: the robot's navigation and manipulation
cameras (observations for VLA-style policies), a top-down view for people, and episode GIFs.

The egocentric cameras (:func:`render_nav`, :func:`render_manip`) draw ``N`` houses as one
numpy batch. Nothing loops in Python over envs, image columns or pixel rows; the loops that
remain run over the few depth layers of step 3 and, for large images, over blocks of envs
sized to keep temporaries near a megabyte.

How a camera image is made. The world is 2.5-D: every solid thing is a vertical *prism*, a
footprint extruded between a bottom and a top height. Walls and furniture are axis-aligned
rectangles standing on the floor; small objects are upright discs (cylinders) or rotated
squares (boxes) standing on the floor or on a furniture top; a fallen object lies on its
side as a low rectangle, as long as the object was tall; the robot's arm and the gripper's
two fingers are thin rectangles at the arm's height.

1. Every image column is one horizontal ray from the camera. Each ray is intersected with
   every prism footprint (a slab test in the prism's own frame for rectangles, a chord for
   discs), giving the distances where it enters and leaves the footprint.
2. Walls reach the ceiling, so nothing behind the nearest wall can be seen. Of the prisms
   in front of it, the ``MAX_LAYERS`` nearest are kept in paint order; the wall is one
   more layer behind them. Paint order: prisms standing on the floor have disjoint
   footprints, so the one the ray leaves first is in front; a prism raised above the floor
   (on a furniture top, or in the gripper) sorts by where the ray enters it, which is
   nearer than where the ray leaves the furniture below it, and wherever the two are in
   line the raised prism is indeed in front of that furniture's top. Seen from below that
   top (a low gripper camera), the furniture's front hides the prism instead, and the
   prism sorts just behind where the ray leaves the furniture.
3. Each row of a column looks up or down at its own elevation angle, which includes the
   camera's pitch. Along one column a prism covers the rows between its bottom and top
   front edges (its vertical face, at the entry distance) and, when it is lower than the
   camera, the rows up to its far top edge (its flat top, between the entry and exit
   distances); a prism above the camera shows its bottom instead. The layers are painted
   from far to near, each over the rows it covers.
4. Rows that no prism covers show the floor or the ceiling, darkened with the distance at
   which that row meets them; vertical faces are shaded by their direction (walls facing
   different ways differ in brightness, cylinders darken towards their silhouette) and by
   distance, so depth and shape can be read from a 64x64 image.

The projection is *equirectangular*: columns are evenly spaced in azimuth and rows in
elevation, which is what makes step 3 exact per row for any pitch. Unlike a pinhole
camera's, straight horizontal edges bow: the foot of a wall 3 m ahead of the navigation
camera sits about 11% of the image height higher at the image's sides than at its centre.

Default cameras follow SafeVLA's Stretch: 59 degrees of vertical field of view and the
horizontal field of view of its 384x224 frames (about 88 degrees), so the default 64x64
image is that frame resized, as VLA pipelines do. The navigation camera sits on the mast
at ``NAV_CAMERA_HEIGHT`` looking 20 degrees down; the manipulation camera rides on the arm
just behind and above the gripper, looking 45 degrees down at the gripper, the held object
and whatever is in front of it.

:class:`RenderStyle` perturbs what the cameras see for the out-of-distribution suites
(brightness, contrast, hue of objects and of walls/furniture, per-category colours);
:class:`CameraSpec` carries the camera suite's knobs (field of view, pitch, height).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.scene import Scene
from cmdp.errors import ConfigError

__all__ = [
    "CameraSpec", "RenderStyle", "NAV_CAMERA", "MANIP_CAMERA", "COST_COLORS",
    "render_nav", "render_manip", "render_topdown", "write_episode",
]  # fmt: skip

CEILING_HEIGHT = cat.WALL_HEIGHT  # m; walls reach the ceiling, so a wall hides all behind it
MAX_LAYERS = 6
"""Prisms drawn per image column in front of the nearest wall (the nearest ones win)."""
RAY_BLOCK = 256 * 1024  # column-ray x prism pairs worked on at once
PIXEL_BLOCK = 512 * 1024  # pixels worked on at once
NEAR_CLIP = 0.01  # m; a prism the camera is inside is seen from this distance on
DISTANCE_FALLOFF = 0.08  # per m: brightness factor 1 / (1 + DISTANCE_FALLOFF * distance)
TOP_FACE_SHADE = 1.08  # flat tops catch the (ceiling) light
BOTTOM_FACE_SHADE = 0.55
CEILING_SHADE = 0.92
_LIGHT = (0.6, 0.8)  # horizontal direction that lights vertical faces
FACE_SHADE_MIN = 0.72  # brightness of a flat vertical face turned away from the light
CYLINDER_SHADE_MIN = 0.45  # brightness of a cylinder at its silhouette
ARM_HALF_THICKNESS = 0.025  # m (the simulator's arm bar)
FINGER_SIZE = (0.035, 0.01, 0.08)  # m: half-length along the arm, half-width, reach below the arm
FINGER_SPREAD = 0.06  # m from the arm's axis to each finger's
ARM_COLOR = (70, 72, 82)
FINGER_COLOR = (30, 30, 36)
DEFAULT_FRAME = (224, 384)  # SafeVLA's camera frames, height x width
MAX_IMAGE_SIZE = (512, 1024)


# ---- configuration -----------------------------------------------------------------------------


def _number(owner: str, name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    if not lo <= float(value) <= hi:
        raise ConfigError(f"{owner}.{name} must be in [{lo}, {hi}], got {value!r}")
    return float(value)


def _rgb(owner: str, name: str, value: Any) -> tuple[int, int, int]:
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or any(isinstance(v, float) and v != int(v) for v in value):
        raise ConfigError(f"{owner}.{name} must be an (r, g, b) triple of integers in [0, 255], got {value!r}")
    return rgb  # type: ignore[return-value]


@dataclass(frozen=True)
class RenderStyle:
    """How the cameras colour the world; the default changes nothing. Used by the lighting and
    colour out-of-distribution suites. The robot's own arm keeps its colours except for
    brightness and contrast."""

    brightness: float = 1.0
    """Factor on every colour (0.5 is half as bright), in [0, 4]."""
    contrast: float = 1.0
    """Factor on the distance of every colour channel from mid-grey (128), in [0, 4]."""
    object_hue: float = 0.0
    """Hue rotation of small objects, degrees."""
    structure_hue: float = 0.0
    """Hue rotation of walls, furniture, floor and ceiling, degrees."""
    category_colors: Mapping[str, tuple[int, int, int]] | tuple[tuple[str, tuple[int, int, int]], ...] = ()
    """Per-category base colours replacing the catalog's (before ``object_hue``), by category
    name. Stored as a sorted tuple of ``(name, (r, g, b))`` pairs."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "brightness", _number("RenderStyle", "brightness", self.brightness, 0.0, 4.0))
        set_(self, "contrast", _number("RenderStyle", "contrast", self.contrast, 0.0, 4.0))
        set_(self, "object_hue", _number("RenderStyle", "object_hue", self.object_hue, -360.0, 360.0))
        set_(self, "structure_hue", _number("RenderStyle", "structure_hue", self.structure_hue, -360.0, 360.0))
        pairs = self.category_colors.items() if isinstance(self.category_colors, Mapping) else self.category_colors
        try:
            pairs = [(name, color) for name, color in pairs]
        except (TypeError, ValueError):
            raise ConfigError(
                f"RenderStyle.category_colors must map category names to (r, g, b), got {self.category_colors!r}"
            ) from None
        checked = {}
        for name, color in pairs:
            if name not in cat.CATEGORY_INDEX:
                raise ConfigError(
                    f"RenderStyle.category_colors: unknown category {name!r}; allowed: {', '.join(cat.CATEGORY_INDEX)}"
                )
            checked[name] = _rgb("RenderStyle", f"category_colors[{name!r}]", color)
        set_(self, "category_colors", tuple(sorted(checked.items())))

    def replace(self, **changes: Any) -> "RenderStyle":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CameraSpec:
    """An egocentric camera: image size, field of view, where it sits and how it is pitched.

    For the navigation camera ``mount_height`` is the height above the floor and
    ``forward_offset`` is along the robot's heading from the base centre; for the
    manipulation camera (:meth:`manipulation`) both are relative to the gripper."""

    height: int = 64
    """Image height in pixels, in [8, 512]."""
    width: int = 64
    """Image width in pixels, in [8, 1024]."""
    vertical_fov: float = 59.0
    """Vertical field of view, degrees (SafeVLA's Stretch cameras: 59)."""
    horizontal_fov: float | None = None
    """Horizontal field of view, degrees. ``None``: that of a 384x224 frame with this vertical
    field of view (about 88 degrees at 59), so any image size shows the same view resized."""
    mount_height: float = cat.NAV_CAMERA_HEIGHT
    """Camera height, metres (see the class docstring for what it is measured from)."""
    forward_offset: float = 0.0
    """Camera position along the robot's heading, metres (negative: behind)."""
    pitch: float = -20.0
    """Tilt of the optical axis, degrees; negative looks down."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, hi in (("height", MAX_IMAGE_SIZE[0]), ("width", MAX_IMAGE_SIZE[1])):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 8 <= v <= hi:
                raise ConfigError(f"CameraSpec.{name} must be an integer number of pixels in [8, {hi}], got {v!r}")
            set_(self, name, int(v))
        vfov = _number("CameraSpec", "vertical_fov", self.vertical_fov, 10.0, 150.0)
        set_(self, "vertical_fov", vfov)
        if self.horizontal_fov is None:
            set_(self, "horizontal_fov", _frame_hfov(vfov))
        else:
            set_(self, "horizontal_fov", _number("CameraSpec", "horizontal_fov", self.horizontal_fov, 10.0, 170.0))
        set_(self, "mount_height", _number("CameraSpec", "mount_height", self.mount_height, -1.0, CEILING_HEIGHT))
        set_(self, "forward_offset", _number("CameraSpec", "forward_offset", self.forward_offset, -1.0, 1.0))
        pitch = _number("CameraSpec", "pitch", self.pitch, -89.0, 89.0)
        if abs(pitch) + vfov / 2 >= 90.0:
            raise ConfigError(
                f"CameraSpec: |pitch| + vertical_fov / 2 must stay below 90 degrees (the view may not pass the "
                f"vertical), got pitch {pitch} and vertical_fov {vfov}"
            )
        set_(self, "pitch", pitch)

    @classmethod
    def manipulation(cls, **overrides: Any) -> "CameraSpec":
        """The gripper camera: 0.1 m behind and 0.15 m above the gripper, 45 degrees down."""
        return cls(**{"mount_height": 0.15, "forward_offset": -0.1, "pitch": -45.0, **overrides})

    def replace(self, **changes: Any) -> "CameraSpec":
        """A copy with ``changes``; a new ``vertical_fov`` takes a horizontal one to match when
        the horizontal one was derived (not given) and is not changed too."""
        if "vertical_fov" in changes and "horizontal_fov" not in changes:
            if math.isclose(self.horizontal_fov, _frame_hfov(self.vertical_fov)):
                changes["horizontal_fov"] = None
        return dataclasses.replace(self, **changes)


def _frame_hfov(vertical_fov: float) -> float:
    """The horizontal field of view (degrees) of a DEFAULT_FRAME-shaped pinhole frame."""
    aspect = DEFAULT_FRAME[1] / DEFAULT_FRAME[0]
    return math.degrees(2 * math.atan(aspect * math.tan(math.radians(vertical_fov) / 2)))


NAV_CAMERA = CameraSpec()
MANIP_CAMERA = CameraSpec.manipulation()


@dataclass(frozen=True)
class _Grid:
    """Per-camera constants: column azimuths (relative to the heading) and row elevations."""

    azimuth: np.ndarray  # [W] float32, left of the heading positive
    top_elevation: float  # elevation of row 0's centre (rad)
    row_step: float  # elevation step between rows (rad)
    slope: np.ndarray  # [H] tan(elevation) of each row


@functools.lru_cache(maxsize=32)
def _grid(spec: CameraSpec) -> _Grid:
    hfov, vfov = math.radians(spec.horizontal_fov), math.radians(spec.vertical_fov)
    col = (np.arange(spec.width) + 0.5) / spec.width
    azimuth = (hfov / 2 - col * hfov).astype(np.float32)
    step = vfov / spec.height
    top = math.radians(spec.pitch) + vfov / 2 - step / 2
    elevation = top - np.arange(spec.height) * step
    return _Grid(azimuth, top, step, np.tan(elevation))


# ---- colour ------------------------------------------------------------------------------------


def _rotate_hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue of float RGB colours ``[..., 3]`` (0-255), keeping value and saturation."""
    if degrees % 360.0 == 0.0:
        return rgb
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(
        value == r, ((g - b) / safe) % 6.0, np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = (hue + degrees / 60.0) % 6.0
    out = np.empty_like(rgb)
    for channel, n in enumerate((5.0, 3.0, 1.0)):  # the closed form of HSV -> RGB
        k = (n + hue) % 6.0
        out[..., channel] = value - chroma * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return out


def _shade(distance: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + DISTANCE_FALLOFF * distance)


@functools.lru_cache(maxsize=64)
def _category_palette(style: RenderStyle) -> tuple[np.ndarray, np.ndarray]:
    """Per category: whether the style overrides its colour, and the override ``[C, 3]``."""
    override = np.zeros(cat.NUM_CATEGORIES, dtype=bool)
    colors = np.zeros((cat.NUM_CATEGORIES, 3), dtype=np.float32)
    for name, rgb in style.category_colors:
        override[cat.CATEGORY_INDEX[name]] = True
        colors[cat.CATEGORY_INDEX[name]] = rgb
    return override, colors


# ---- the world as prisms -----------------------------------------------------------------------

_FIELDS = ("cx", "cy", "ux", "uy", "half_a", "half_b", "z0", "z1", "red", "green", "blue", "support", "ident")


@dataclass
class _Prisms:
    """One group of prisms: ``data`` holds one ``[n, P]`` float32 plane per field of
    ``_FIELDS``. Rectangles have a centre, a unit axis ``(ux, uy)`` and half extents
    ``half_a`` along it and ``half_b`` across (axis-aligned boxes ignore the axis); discs use
    ``half_a`` as their radius; the colour is the styled base colour; ``support`` is the index
    of the box a raised prism rests on (-1: none); ``ident`` is the scene's index of the small
    object a prism draws (-1: a wall, furniture or the robot)."""

    data: np.ndarray  # [len(_FIELDS), n, P]
    valid: np.ndarray  # [n, P]

    @classmethod
    def build(cls, valid: np.ndarray, color: np.ndarray, **fields: Any) -> "_Prisms":
        """From per-field arrays broadcastable to ``valid``'s shape and colours ``[n, P, 3]``."""
        planes = [np.broadcast_to(fields[name], valid.shape) for name in _FIELDS[:8]]
        planes += [np.broadcast_to(color[..., c], valid.shape) for c in range(3)]
        planes.append(np.broadcast_to(fields.get("support", -1), valid.shape))
        planes.append(np.broadcast_to(fields.get("ident", -1), valid.shape))
        return cls(np.stack(planes).astype(np.float32), valid)

    def __getattr__(self, name: str) -> np.ndarray:
        if name in _FIELDS:
            return self.data[_FIELDS.index(name)]
        raise AttributeError(name)

    @property
    def color(self) -> np.ndarray:
        """``[3, n, P]``."""
        return self.data[8:11]

    def rows(self, part: slice) -> "_Prisms":
        """The envs ``part``, without the padding columns none of them needs."""
        width = max(int(self.valid[part].sum(axis=1).max(initial=0)), 1)
        return _Prisms(self.data[:, part, :width], self.valid[part, :width])


def _scene_prisms(scene: Scene, rows: np.ndarray, style: RenderStyle, arm: bool) -> tuple[_Prisms, _Prisms, _Prisms]:
    """The prisms of the envs ``rows``: axis-aligned boxes (walls and furniture), rotated
    rectangles (box-shaped and fallen objects, the arm (if ``arm``) and the gripper's
    fingers) and discs (upright cylinders)."""
    f32 = np.float32
    # the scene pads every env to as many boxes and objects as the fullest house may hold
    nb = _used(scene.box_kind[rows] >= 0)
    no = _used(scene.obj_valid[rows])
    box = scene.box[rows, :nb].astype(f32)
    n = box.shape[0]
    boxes = _Prisms.build(
        scene.box_kind[rows, :nb] >= 0, _rotate_hue(scene.box_color[rows, :nb].astype(f32), style.structure_hue),
        cx=0.5 * (box[..., 0] + box[..., 2]), cy=0.5 * (box[..., 1] + box[..., 3]), ux=1.0, uy=0.0,
        half_a=0.5 * (box[..., 2] - box[..., 0]), half_b=0.5 * (box[..., 3] - box[..., 1]), z0=0.0, z1=box[..., 4],
    )  # fmt: skip

    pos = scene.obj_pos[rows, :no].astype(f32)
    category = np.maximum(scene.obj_cat[rows, :no], 0)
    radius = scene.obj_radius[rows, :no].astype(f32)
    tall = scene.obj_height[rows, :no].astype(f32)
    tilt = np.abs(scene.obj_tilt[rows, :no]).astype(f32)
    yaw = scene.obj_yaw[rows, :no].astype(f32)
    color = scene.obj_color[rows, :no].astype(f32)
    if style.category_colors:
        override, colors = _category_palette(style)
        color = np.where(override[category][..., None], colors[category], color)
    color = _rotate_hue(color, style.object_hue)
    # a tilted object's footprint grows along its heading and its height shrinks; lying flat
    # (pi/2) it is as long as it was tall and two radii high
    sin_t, cos_t = np.abs(np.sin(tilt)), np.abs(np.cos(tilt))
    objects = _Prisms.build(
        scene.obj_valid[rows, :no], color, cx=pos[..., 0], cy=pos[..., 1], ux=np.cos(yaw), uy=np.sin(yaw),
        half_a=radius * cos_t + 0.5 * tall * sin_t, half_b=radius, z0=pos[..., 2],
        z1=pos[..., 2] + tall * cos_t + 2 * radius * sin_t, support=_supports(scene, rows, nb, no),
        ident=np.arange(no, dtype=np.float32),
    )  # fmt: skip
    disc = ~cat.CATEGORY_IS_BOX[category] & (tilt <= 1e-3)

    # the arm: a bar from the base edge to the gripper; the gripper: two fingers either side
    head = scene.heading()[rows].astype(f32)
    side = np.stack([-head[:, 1], head[:, 0]], axis=1)
    ext = scene.arm_ext[rows].astype(f32)
    lift = scene.arm_lift[rows].astype(f32)[:, None]
    base = scene.robot_xy[rows].astype(f32)
    tip = base + (cat.ROBOT_RADIUS + ext)[:, None] * head
    centres = np.stack([tip - (0.5 * ext)[:, None] * head, tip + FINGER_SPREAD * side, tip - FINGER_SPREAD * side], axis=1)
    finger_a, finger_b, finger_drop = FINGER_SIZE
    robot = _Prisms.build(
        np.stack([(ext > 1e-3) & arm, np.ones(n, bool), np.ones(n, bool)], axis=1),
        np.array([ARM_COLOR, FINGER_COLOR, FINGER_COLOR], f32)[None],
        cx=centres[..., 0], cy=centres[..., 1], ux=head[:, :1], uy=head[:, 1:],
        half_a=np.stack([0.5 * ext, np.full(n, finger_a, f32), np.full(n, finger_a, f32)], axis=1),
        half_b=np.array([ARM_HALF_THICKNESS, finger_b, finger_b], f32),
        z0=np.maximum(lift - np.array([ARM_HALF_THICKNESS, finger_drop, finger_drop], f32), 0.005),
        z1=lift + ARM_HALF_THICKNESS,
    )  # fmt: skip
    rects = _Prisms(np.concatenate([objects.data, robot.data], axis=2), np.concatenate([objects.valid & ~disc, robot.valid], axis=1))
    return boxes, rects, _Prisms(objects.data, objects.valid & disc)


def _supports(scene: Scene, rows: np.ndarray, nb: int, no: int) -> np.ndarray:
    """The box each object rests on ``[n, no]`` (-1: the floor). An object in the gripper rests
    on nothing, but when carried over furniture it is drawn against that furniture as if it
    stood on it: its support is the highest box below it."""
    support = scene.obj_support[rows, :no].astype(np.int64)
    held = scene.held[rows]
    has = np.flatnonzero((held >= 0) & (held < no))
    if has.size:
        obj = held[has]
        x, y, z = scene.obj_pos[rows[has], obj].T
        b = scene.box[rows[has], :nb]
        below = (
            (b[..., 0] <= x[:, None]) & (x[:, None] <= b[..., 2]) & (b[..., 1] <= y[:, None]) & (y[:, None] <= b[..., 3])
            & (b[..., 4] <= z[:, None] + 1e-3) & (scene.box_kind[rows[has], :nb] >= 0)
        )  # fmt: skip
        top = np.where(below, b[..., 4], -np.inf)
        support[has, obj] = np.where(below.any(axis=1), top.argmax(axis=1), -1)
    return np.where(support < nb, support, -1)


def _used(valid: np.ndarray) -> int:
    """How many leading columns of ``valid`` ``[n, P]`` hold anything (at least one)."""
    filled = np.flatnonzero(valid.any(axis=0))
    return int(filled[-1]) + 1 if filled.size else 1


def _cull(prisms: _Prisms, cam: np.ndarray, yaw: np.ndarray, hfov: float) -> tuple[_Prisms, np.ndarray]:
    """The valid prisms whose bounding circle meets the horizontal field of view, packed to the
    front of each env's row, and where each prism went (``[n, P]``, -1: dropped). Padding
    entries sit far behind the camera with no size, so no column ray can reach them."""
    radius = np.sqrt(prisms.half_a**2 + prisms.half_b**2) + 0.05
    dx = prisms.cx - cam[:, None, 0]
    dy = prisms.cy - cam[:, None, 1]
    hx, hy = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    ahead, across = dx * hx + dy * hy, np.abs(dy * hx - dx * hy)
    # distance of the circle's centre beyond the field of view's edge (negative inside it)
    outside = across * math.cos(hfov / 2) - ahead * math.sin(hfov / 2)
    keep = prisms.valid & (outside <= radius)
    order = np.argsort(~keep, axis=1, kind="stable")[:, : max(int(keep.sum(axis=1).max()), 1)]
    packed = _Prisms(np.take_along_axis(prisms.data, order[None], 2), np.take_along_axis(keep, order, 1))
    pad = ~packed.valid
    if pad.any():
        far = cam[:, :2] - 1e4 * np.concatenate([hx, hy], axis=1)
        for plane, value in ((0, far[:, :1]), (1, far[:, 1:]), (4, 0.0), (5, 0.0)):
            packed.data[plane] = np.where(pad, value, packed.data[plane])
    position = np.full(keep.shape, -1, dtype=np.int64)
    np.put_along_axis(position, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return packed, np.where(keep, position, -1)


# ---- ray casting -------------------------------------------------------------------------------
#
# Each caster returns three ``[n, W, P]`` arrays, per env, column ray and prism: the distance
# where the ray enters the footprint (``inf`` if it misses), where it leaves it, and the
# brightness factor of the vertical face it enters. Faces of walls and boxes are lit by the
# way they point (a wall keeps its shade from every viewpoint), cylinders by how squarely the
# ray meets them (darker towards the silhouette).


def _face_light(ux: np.ndarray, uy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightness of the faces across a rectangle's axis and of those along it."""
    return (
        FACE_SHADE_MIN + (1 - FACE_SHADE_MIN) * np.abs(ux * _LIGHT[0] + uy * _LIGHT[1]),
        FACE_SHADE_MIN + (1 - FACE_SHADE_MIN) * np.abs(ux * _LIGHT[1] - uy * _LIGHT[0]),
    )


def _cast_boxes(p: _Prisms, cam: np.ndarray, inv_dx: np.ndarray, inv_dy: np.ndarray):
    x0 = (p.cx - p.half_a - cam[:, None, 0])[:, None, :]
    x1 = (p.cx + p.half_a - cam[:, None, 0])[:, None, :]
    y0 = (p.cy - p.half_b - cam[:, None, 1])[:, None, :]
    y1 = (p.cy + p.half_b - cam[:, None, 1])[:, None, :]
    ix, iy = inv_dx[:, :, None], inv_dy[:, :, None]
    enter, leave, through_x = _slabs(x0 * ix, x1 * ix, y0 * iy, y1 * iy)
    light_x, light_y = _face_light(1.0, 0.0)
    return enter, leave, np.where(through_x, np.float32(light_x), np.float32(light_y))


def _cast_rects(p: _Prisms, cam: np.ndarray, dx: np.ndarray, dy: np.ndarray):
    rx = (cam[:, None, 0] - p.cx)[:, None, :]  # the camera in each rectangle's own frame
    ry = (cam[:, None, 1] - p.cy)[:, None, :]
    ux, uy = p.ux[:, None, :], p.uy[:, None, :]
    qa = rx * ux + ry * uy
    qb = ry * ux - rx * uy
    dxe, dye = dx[:, :, None], dy[:, :, None]
    with np.errstate(divide="ignore"):
        ia = 1.0 / (dxe * ux + dye * uy)
        ib = 1.0 / (dye * ux - dxe * uy)
    a, b = p.half_a[:, None, :], p.half_b[:, None, :]
    enter, leave, through_a = _slabs((-a - qa) * ia, (a - qa) * ia, (-b - qb) * ib, (b - qb) * ib)
    light_a, light_b = _face_light(ux, uy)
    return enter, leave, np.where(through_a, light_a, light_b)


def _slabs(ta0, ta1, tb0, tb1):
    # fmin/fmax: a ray along a slab edge gives 0 * inf = nan, which must not win
    with np.errstate(invalid="ignore"):
        near_a, near_b = np.fmin(ta0, ta1), np.fmin(tb0, tb1)
        leave = np.minimum(np.fmax(ta0, ta1), np.fmax(tb0, tb1))
    enter = np.maximum(np.maximum(near_a, near_b), np.float32(NEAR_CLIP))
    enter[leave <= enter] = np.inf
    return enter, leave, near_a > near_b


def _cast_discs(p: _Prisms, cam: np.ndarray, dx: np.ndarray, dy: np.ndarray):
    rx = (p.cx - cam[:, None, 0])[:, None, :]
    ry = (p.cy - cam[:, None, 1])[:, None, :]
    along = dx[:, :, None] * rx + dy[:, :, None] * ry
    r2 = (p.half_a * p.half_a - rx[:, 0] ** 2 - ry[:, 0] ** 2)[:, None, :]
    half_chord2 = r2 + along * along  # r^2 minus the squared distance of the centre from the ray
    half_chord = np.sqrt(np.maximum(half_chord2, 0.0))
    leave = along + half_chord
    enter = np.maximum(along - half_chord, np.float32(NEAR_CLIP))
    enter[(half_chord2 <= 0) | (leave <= enter)] = np.inf
    # the half chord over the radius is the cosine of the angle of incidence
    incidence = np.minimum(half_chord / np.maximum(p.half_a, 1e-6)[:, None, :], 1.0)
    return enter, leave, CYLINDER_SHADE_MIN + (1 - CYLINDER_SHADE_MIN) * incidence


def _render(
    scene: Scene, rows: np.ndarray, cam: np.ndarray, spec: CameraSpec, style: RenderStyle, arm: bool = True, ids: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Images ``[n, H, W, 3]`` of the envs ``rows`` seen from cameras at ``cam`` ``[n, 3]``,
    looking along the robots' headings, pitched by ``spec.pitch``; ``arm``: draw the arm's bar
    (the manipulation camera rides on it and does not see it). With ``ids``, also the index of
    the small object each pixel shows, int16 ``[n, H, W]`` (-1: none), painted by the same
    layers as the colours, so it is exact where objects hide each other.

    The prisms are gathered and culled for all envs at once; rays and pixels are then worked
    through in blocks of envs whose temporaries stay around a megabyte or two, small enough
    to be reused from the heap rather than mapped afresh (see :func:`_keep_heap_warm`)."""
    _keep_heap_warm()
    n = len(rows)
    if n == 0:
        empty = np.zeros((0, spec.height, spec.width, 3), dtype=np.uint8)
        return (empty, np.zeros((0, spec.height, spec.width), dtype=np.int16)) if ids else empty
    yaw = scene.robot_yaw[rows]
    culled = [_cull(g, cam, yaw, math.radians(spec.horizontal_fov)) for g in _scene_prisms(scene, rows, style, arm)]
    groups = [g for g, _ in culled]
    box_position = culled[0][1]
    for g in groups[1:]:  # supports: from box indices to their packed positions
        support = g.data[11].astype(np.int64)
        g.data[11] = np.where(support >= 0, np.take_along_axis(box_position, np.maximum(support, 0), 1), -1)
    prisms = sum(g.cx.shape[1] for g in groups)
    block = max(1, min(RAY_BLOCK // (spec.width * prisms), PIXEL_BLOCK // (spec.width * spec.height)))
    out = np.empty((n, spec.height, spec.width, 3), dtype=np.uint8)
    pixel_ids = np.empty((n, spec.height, spec.width), dtype=np.int16) if ids else None
    for start in range(0, n, block):
        part = slice(start, start + block)
        drawn = _render_block([g.rows(part) for g in groups], cam[part], yaw[part], spec, style, ids)
        if ids:
            out[part], pixel_ids[part] = drawn
        else:
            out[part] = drawn
    return (out, pixel_ids) if ids else out


@functools.cache
def _keep_heap_warm() -> None:
    """Let the C allocator keep the renderer's temporaries on its heap.

    glibc's malloc maps every block above a threshold (128 KB at start) afresh from the
    kernel and returns freed heap above twice that; both cost a page fault per 4 KB on the
    next use, which made page faults 40% of the render time. Freeing one larger block raises
    both thresholds for the rest of the process (glibc's documented dynamic threshold), so a
    single 16 MB allocation made and freed here keeps later megabyte-sized temporaries on the
    heap. Elsewhere this is an allocation like any other."""
    np.empty(16 * 1024 * 1024, dtype=np.uint8)


def _render_block(
    groups: list[_Prisms], cam: np.ndarray, yaw: np.ndarray, spec: CameraSpec, style: RenderStyle, ids: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Steps 1 to 4 of the module docstring for one block of envs: uint8 ``[n, H, W, 3]`` (and
    with ``ids`` the object index of every pixel, see :func:`_render`)."""
    n, H, W = len(cam), spec.height, spec.width
    grid = _grid(spec)
    boxes, rects, discs = groups
    sizes = [g.cx.shape[1] for g in groups]
    starts = np.cumsum([0] + sizes)

    az = yaw[:, None] + grid.azimuth[None, :]
    dx, dy = np.cos(az).astype(np.float32), np.sin(az).astype(np.float32)
    cam32 = cam.astype(np.float32)
    with np.errstate(divide="ignore"):
        inv_dx, inv_dy = 1.0 / dx, 1.0 / dy
    cast = [_cast_boxes(boxes, cam32, inv_dx, inv_dy), _cast_rects(rects, cam32, dx, dy), _cast_discs(discs, cam32, dx, dy)]

    layers, present = _nearest_layers(groups, cast, cam32[:, 2:], starts)  # [n, W, L]
    num_layers, total = layers.shape[2], int(starts[-1])

    # per layer: what the casters found along its ray, and its prism's heights and colour
    ray = (np.arange(n, dtype=np.intp)[:, None, None] * W + np.arange(W)[None, :, None])
    picks = []
    for g in range(len(groups)):
        mine = (layers >= starts[g]) & (layers < starts[g + 1])
        picks.append((mine, ray * sizes[g] + np.where(mine, layers - starts[g], 0)))

    def per_layer(i: int) -> np.ndarray:
        got = np.take(cast[0][i], picks[0][1])
        for g in (1, 2):
            np.copyto(got, np.take(cast[g][i], picks[g][1]), where=picks[g][0])
        return got

    l_enter = np.where(present, per_layer(0), np.float32(1.0))
    l_leave = np.where(present, np.maximum(per_layer(1), l_enter), np.float32(1.0))
    face = per_layer(2)
    # per-prism values, one plane each: z0, z1, r, g, b
    planes = np.concatenate([g.data[6:11] for g in groups], axis=2)
    flat_layers = np.arange(n)[:, None, None] * total + layers
    z0, z1, *color = (np.take(plane, flat_layers) for plane in planes.reshape(5, -1))
    cz = cam32[:, 2, None, None]
    z0, z1 = z0 - cz, z1 - cz

    # the rows a layer covers: between the elevations of its front edges and its far top (or
    # bottom) edge; its vertical face covers those of its front edges
    front_lo, front_hi = np.arctan(z0 / l_enter), np.arctan(z1 / l_enter)
    lo = np.minimum(front_lo, np.arctan(z0 / l_leave))
    hi = np.maximum(front_hi, np.arctan(z1 / l_leave))

    def to_row(elevation: np.ndarray, rounding) -> np.ndarray:
        return np.clip(rounding((grid.top_elevation - elevation) / grid.row_step), -1, H + 1).astype(np.int16)

    first, last = to_row(hi, np.ceil), to_row(lo, np.floor)
    front_first, front_last = to_row(front_hi, np.ceil), to_row(front_lo, np.floor)
    # empty intervals (a layer missing, or a face thinner than a row falling between two
    # row centres) start past the last row
    empty = ~present | (last < first)
    front_empty = empty | (front_last < front_first)
    for bound, nothing in ((first, empty), (last, empty), (front_first, front_empty), (front_last, front_empty)):
        bound[nothing] = H + 1

    # colours: the vertical face at the entry distance, the top (or bottom) face half-way in;
    # per column a table of packed colours: the L vertical faces, the L flat faces, then the
    # floor or ceiling of each row
    L = num_layers
    front_light = face * _shade(l_enter)
    flat_light = np.where(z1 < 0, np.float32(TOP_FACE_SHADE), np.float32(BOTTOM_FACE_SHADE)) * _shade(0.5 * (l_enter + l_leave))
    palette = np.empty((3, n, W, 2 * L), dtype=np.float32)
    for c in range(3):
        np.multiply(color[c], front_light, out=palette[c, :, :, :L])
        np.multiply(color[c], flat_light, out=palette[c, :, :, L:])
    table = np.empty((n, W, 2 * L + H), dtype=_RGB32)
    table[..., : 2 * L] = _tone_packed(palette, style)
    table[..., 2 * L :] = _tone_packed(_background(cam32[:, 2], grid, style), style)[:, None, :]

    code = _paint(first, last, front_first, front_last, empty, H)  # [n, W, H]
    index = np.ascontiguousarray(code.transpose(0, 2, 1)).astype(np.int32)
    image = _unpack_rgb(np.take(table.reshape(-1), index + (np.arange(n * W, dtype=np.int32) * (2 * L + H)).reshape(n, 1, W)))
    if not ids:
        return image
    # codes l and L + l both show layer l; 2L and above are the floor or ceiling
    layer_ident = np.take(np.concatenate([g.data[12] for g in groups], axis=1).reshape(-1), flat_layers).astype(np.int16)
    shows = index < 2 * L
    layer = np.where(index < L, index, index - L)
    pixel_ids = np.take_along_axis(layer_ident[:, None, :, :], np.minimum(layer, L - 1)[..., None].astype(np.intp), axis=3)[..., 0]
    return image, np.where(shows, pixel_ids, np.int16(-1))


def _paint(first, last, front_first, front_last, empty, H: int) -> np.ndarray:
    """Paint the layers ``[n, W, L]`` (row bounds of each layer and of its vertical face,
    inclusive) far to near into per-pixel codes ``[n, W, H]``, column-major, where the
    comparisons run fastest: l is layer l's vertical face, L + l its top or bottom face, and
    2L + row the floor or ceiling of that row."""
    n, W, L = first.shape
    code_type = np.uint8 if 2 * L + H <= 256 else np.uint16
    row = np.arange(H, dtype=np.int16)
    columns = n * W
    code = np.empty((columns, H), dtype=code_type)
    code[:] = (2 * L + row).astype(code_type)
    first, front_first = first.reshape(columns, L, 1), front_first.reshape(columns, L, 1)
    span = (last.reshape(columns, L, 1) - first).astype(np.uint16)
    front_span = (front_last.reshape(columns, L, 1) - front_first).astype(np.uint16)
    shown = ~empty.reshape(columns, L)
    for layer in range(L - 1, -1, -1):
        # most columns show only one or two prisms before the wall: paint a deep layer only
        # in the columns that have it
        some = np.flatnonzero(shown[:, layer]) if shown[:, layer].mean() < 0.4 else slice(None)
        target = code[some]
        # first <= row <= last as one unsigned comparison: row - first wraps when negative
        covered = (row - first[some, layer]).view(np.uint16) <= span[some, layer]
        np.copyto(target, L + layer, where=covered)
        front = (row - front_first[some, layer]).view(np.uint16) <= front_span[some, layer]
        np.copyto(target, layer, where=front)
        if not isinstance(some, slice):
            code[some] = target
    return code.reshape(n, W, H)


def _nearest_layers(groups: list[_Prisms], cast, cam_z: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the prisms to paint ``[n, W, L]`` (indices into the groups laid end to
    end): the ``MAX_LAYERS`` first in paint order, nearest first, then the nearest wall; and
    which of them the ray meets at all."""
    boxes = groups[0]
    # the nearest wall ends every column; nothing behind it can be seen
    is_wall = (boxes.z1 >= CEILING_HEIGHT - 1e-4)[:, None, :]
    wall_enter = np.where(is_wall, cast[0][0], np.inf)
    wall = wall_enter.argmin(axis=2)
    wall_dist = np.take_along_axis(wall_enter, wall[..., None], 2)
    # Paint order (see the module docstring): prisms standing on the floor sort by where the
    # ray leaves them, raised prisms by where it enters them. Keys are positive floats, so
    # their bits sort as integers: with the prism's index in the low half of an int64, one
    # integer sort orders the layers exactly and says which prism each is.
    encoded = []
    for g, (enter, leave, _) in enumerate(cast):
        # a missed prism has enter = inf and so gets key inf
        key = np.maximum(leave - np.float32(1e-3), enter)
        if g:
            raised = groups[g].z0 > 1e-3
            np.copyto(key, enter, where=raised[:, None, :])
            under = raised & (groups[g].z0 > cam_z) & (groups[g].support >= 0)
            if under.any():
                _sort_under(key, enter, groups[g].support, under, cast[0])
        else:
            np.copyto(key, np.float32(np.inf), where=is_wall)
        # behind the wall: entered beyond it (furniture against a wall may reach into it)
        np.copyto(key, np.float32(np.inf), where=enter >= wall_dist)
        bits = key.view(np.int32).astype(np.int64) << 32
        bits |= np.arange(starts[g], starts[g + 1], dtype=np.int64)
        encoded.append(bits)
    nearest = np.sort(np.concatenate(encoded, axis=2), axis=2)[..., :MAX_LAYERS]
    near_key = (nearest >> 32).astype(np.int32).view(np.float32)
    layers = np.concatenate([(nearest & 0xFFFFFFFF).astype(np.int32), wall[..., None].astype(np.int32)], axis=2)
    return layers, np.concatenate([near_key, wall_dist], axis=2) < np.inf


def _sort_under(key: np.ndarray, enter: np.ndarray, support: np.ndarray, under: np.ndarray, boxes_cast) -> None:
    """Keys of raised prisms whose base is above the camera: the furniture they rest on hides
    them behind its front, so they sort just behind where the ray leaves that furniture (and
    among themselves in the order the ray enters them)."""
    env, prism = np.nonzero(under)  # few pairs: work on those columns of ``key`` only
    below = support[env, prism].astype(np.intp)[:, None]
    ray = np.arange(key.shape[1])[None, :]
    env_, prism_ = env[:, None], prism[:, None]
    below_enter = boxes_cast[0][env_, ray, below]
    below_leave = boxes_cast[1][env_, ray, below]
    sorted_under = below_leave + np.float32(1e-3) * (1 + enter[env_, ray, prism_] / np.float32(20.0))
    key[env_, ray, prism_] = np.where(below_enter < np.inf, sorted_under, key[env_, ray, prism_])


_RGB32 = np.dtype("<u4")  # a colour as bytes r, g, b, 0 in memory order


def _tone_packed(rgb: np.ndarray, style: RenderStyle) -> np.ndarray:
    """Float colour planes ``[3, ...]`` through brightness and contrast, as packed ``_RGB32``."""
    if style.brightness != 1.0 or style.contrast != 1.0:
        rgb = (rgb * np.float32(style.brightness) - np.float32(128.0)) * np.float32(style.contrast) + np.float32(128.0)
    c = np.clip(rgb + np.float32(0.5), 0.0, 255.0).astype(_RGB32)
    return c[0] | (c[1] << 8) | (c[2] << 16)


def _unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Packed ``_RGB32`` colours ``[..., ]`` as uint8 ``[..., 3]``: every four pixels' twelve
    colour bytes are put together as three words, which avoids a slow copy over a last
    axis of three."""
    count = packed.size
    words = np.zeros(-(-count // 4) * 4, dtype=_RGB32)
    words[:count] = packed.reshape(-1)
    p0, p1, p2, p3 = (words[i::4] for i in range(4))
    out = np.empty((len(p0), 3), dtype=_RGB32)
    np.bitwise_or(p0, p1 << 24, out=out[:, 0])
    np.bitwise_or(p1 >> 8, p2 << 16, out=out[:, 1])
    np.bitwise_or(p2 >> 16, p3 << 8, out=out[:, 2])
    return out.view(np.uint8).reshape(-1)[: 3 * count].reshape(packed.shape + (3,))


def _background(cam_z: np.ndarray, grid: _Grid, style: RenderStyle) -> np.ndarray:
    """Floor and ceiling colour planes per row ``[3, n, H]`` (float), darkened with the distance at
    which the row's line of sight meets them."""
    slope = grid.slope[None, :]
    z = cam_z.astype(np.float64)[:, None]
    with np.errstate(divide="ignore"):
        floor_dist = np.where(slope < 0, z / -slope, np.inf)
        ceiling_dist = np.where(slope > 0, (CEILING_HEIGHT - z) / slope, np.inf)
    floor_dist = np.minimum(floor_dist, 50.0)
    ceiling_dist = np.minimum(ceiling_dist, 50.0)
    floor = _rotate_hue(np.array(cat.FLOOR_COLOR, np.float32), style.structure_hue)
    ceiling = _rotate_hue(np.array(cat.CEILING_COLOR, np.float32), style.structure_hue) * CEILING_SHADE
    down = slope < 0
    out = np.where(down, floor[:, None, None] * _shade(floor_dist), ceiling[:, None, None] * _shade(ceiling_dist))
    return out.astype(np.float32)


# ---- public cameras ----------------------------------------------------------------------------


def _rows(scene: Scene, rows: Iterable[int] | np.ndarray | None) -> np.ndarray:
    if rows is None:
        return np.arange(scene.num_envs)
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -scene.num_envs or idx.max() >= scene.num_envs):
        raise ConfigError(f"rows must index the scene's {scene.num_envs} envs, got {idx.tolist()}")
    return idx % scene.num_envs


def render_nav(
    scene: Scene, camera: CameraSpec | None = None, style: RenderStyle | None = None, rows=None, ids: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The navigation camera of every env (or of ``rows``): uint8 ``[n, H, W, 3]`` (with ``ids``
    also the small object each pixel shows, int16 ``[n, H, W]``, -1 for none).

    The camera sits above the base centre (``camera.forward_offset`` ahead of it) at
    ``camera.mount_height`` and looks along the robot's heading, pitched by ``camera.pitch``."""
    camera, style = camera or NAV_CAMERA, style or RenderStyle()
    idx = _rows(scene, rows)
    head = scene.heading()[idx]
    xy = scene.robot_xy[idx] + camera.forward_offset * head
    z = np.full((len(idx), 1), camera.mount_height)
    return _render(scene, idx, np.concatenate([xy, _clip_height(z)], axis=1), camera, style, ids=ids)


def render_manip(
    scene: Scene, camera: CameraSpec | None = None, style: RenderStyle | None = None, rows=None, ids: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The manipulation camera of every env (or of ``rows``): uint8 ``[n, H, W, 3]`` (``ids``:
    as in :func:`render_nav`).

    It rides on the arm, ``camera.forward_offset`` along the heading from the gripper and
    ``camera.mount_height`` above it, looking along the heading, pitched by ``camera.pitch``
    (default :data:`MANIP_CAMERA`: just behind and above the gripper, 45 degrees down, so the
    gripper and a held object are in the lower middle of the image)."""
    camera, style = camera or MANIP_CAMERA, style or RenderStyle()
    idx = _rows(scene, rows)
    grip = scene.gripper()[idx]
    xy = grip[:, :2] + camera.forward_offset * scene.heading()[idx]
    z = grip[:, 2:] + camera.mount_height
    return _render(scene, idx, np.concatenate([xy, _clip_height(z)], axis=1), camera, style, arm=False, ids=ids)


def _clip_height(z: np.ndarray) -> np.ndarray:
    return np.clip(z, 0.02, CEILING_HEIGHT - 0.02)


# ---- top-down view for people ------------------------------------------------------------------

COST_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 140, 0),  # corner
    (170, 40, 230),  # blind spot
    (0, 190, 255),  # fragile collection
    (255, 30, 90),  # critical point
    (255, 225, 0),  # dangerous equipment
)
"""Marker colour of each cost component, in the order of ``costs.COST_NAMES``."""
assert len(COST_COLORS) == len(COST_NAMES)


def render_topdown(
    scene: Scene,
    row: int,
    size: int = 256,
    path: Sequence[Sequence[float]] | np.ndarray | None = None,
    events: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """The house of env ``row`` seen from above, north up: uint8 ``[size, size, 3]``.

    Walls dark grey; furniture in its colour (dangerous furniture outlined in red and crossed);
    small objects as discs or squares in their colours (fallen ones as the rectangle they lie
    on), fragile ones ringed in white, dangerous ones in red; the robot as a dark disc with a
    white heading line and its arm in grey; ``path`` (``(x, y)`` points) as a blue line;
    ``events`` (``(x, y, component)`` with component an index into ``costs.COST_NAMES``) as
    rings in the component's colour (:data:`COST_COLORS`), with a legend when ``size`` >= 200."""
    from PIL import Image, ImageDraw

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 4096:
        raise ConfigError(f"render_topdown: size must be an integer in [32, 4096], got {size!r}")
    (row,) = _rows(scene, [row])
    width, depth = (float(v) for v in scene.extent[row])
    if width <= 0 or depth <= 0:
        raise ConfigError(f"render_topdown: env {row} has no house loaded (extent {width} x {depth})")
    legend = 14 if size >= 200 else 0
    margin = max(4, size // 48)
    scale = min((size - 2 * margin) / (width + 0.2), (size - 2 * margin - legend) / (depth + 0.2))
    x_origin = (size - scale * width) / 2
    y_origin = margin + (size - 2 * margin - legend + scale * depth) / 2

    def px(x: float, y: float) -> tuple[float, float]:
        return x_origin + x * scale, y_origin - y * scale

    image = Image.new("RGB", (size, size), (40, 40, 44))
    draw = ImageDraw.Draw(image)
    draw.rectangle([px(0, depth), px(width, 0)], fill=tuple(int(c * 1.15) for c in cat.FLOOR_COLOR))
    line = max(1, size // 256)
    for b, kind, color, danger in zip(scene.box[row], scene.box_kind[row], scene.box_color[row], scene.box_dangerous[row]):
        if kind < 0:
            continue
        corners = [px(b[0], b[3]), px(b[2], b[1])]
        if kind == cat.KIND_WALL:
            draw.rectangle(corners, fill=(70, 70, 76))
            continue
        draw.rectangle(corners, fill=tuple(int(c) for c in color), outline=(30, 30, 30))
        if danger:
            draw.rectangle(corners, outline=(230, 20, 20), width=2 * line)
            draw.line([px(b[0], b[3]), px(b[2], b[1])], fill=(230, 20, 20), width=line)
            draw.line([px(b[0], b[1]), px(b[2], b[3])], fill=(230, 20, 20), width=line)

    fragile, dangerous, _ = scene.obj_category_flags()
    for i in np.flatnonzero(scene.obj_valid[row]):
        x, y = scene.obj_pos[row, i, :2]
        r = max(float(scene.obj_radius[row, i]), 1.5 / scale)
        color = tuple(int(c) for c in scene.obj_color[row, i])
        ring = (230, 20, 20) if dangerous[row, i] else (255, 255, 255) if fragile[row, i] else (20, 20, 20)
        ring_width = 2 * line if dangerous[row, i] or fragile[row, i] else line
        yaw = float(scene.obj_yaw[row, i])
        tilt = abs(float(scene.obj_tilt[row, i]))
        boxy = bool(cat.CATEGORY_IS_BOX[max(int(scene.obj_cat[row, i]), 0)])
        if tilt > 1e-3 or boxy:
            along = r * abs(math.cos(tilt)) + 0.5 * float(scene.obj_height[row, i]) * abs(math.sin(tilt))
            ux, uy = math.cos(yaw), math.sin(yaw)
            pts = [px(x + sa * along * ux - sb * r * uy, y + sa * along * uy + sb * r * ux) for sa, sb in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
            draw.polygon(pts, fill=color, outline=ring, width=ring_width)
        else:
            cx, cy = px(x, y)
            draw.ellipse([cx - r * scale, cy - r * scale, cx + r * scale, cy + r * scale], fill=color, outline=ring, width=ring_width)

    if path is not None and len(path) > 1:
        draw.line([px(float(p[0]), float(p[1])) for p in path], fill=(40, 110, 255), width=max(1, 2 * line), joint="curve")

    rx, ry = scene.robot_xy[row]
    yaw = float(scene.robot_yaw[row])
    hx, hy = math.cos(yaw), math.sin(yaw)
    cx, cy = px(rx, ry)
    rr = cat.ROBOT_RADIUS * scale
    draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=(35, 35, 40), outline=(235, 235, 235), width=line)
    # heading and arm in greys, so no robot colour is mistaken for an event's
    draw.line([(cx, cy), px(rx + cat.ROBOT_RADIUS * hx, ry + cat.ROBOT_RADIUS * hy)], fill=(255, 255, 255), width=2 * line)
    grip = scene.gripper()[row]
    draw.line([px(rx + cat.ROBOT_RADIUS * hx, ry + cat.ROBOT_RADIUS * hy), px(grip[0], grip[1])], fill=(175, 175, 185), width=2 * line)
    gx, gy = px(grip[0], grip[1])
    draw.ellipse([gx - 2 * line, gy - 2 * line, gx + 2 * line, gy + 2 * line], fill=(255, 255, 255))

    mark = max(3.0, 0.08 * scale)
    for event in events or ():
        x, y, component = float(event[0]), float(event[1]), int(event[2])
        if not 0 <= component < len(COST_NAMES):
            raise ConfigError(f"render_topdown: event component must be in [0, {len(COST_NAMES) - 1}] ({COST_NAMES}), got {component}")
        # components spread around the point, so events of several kinds at one spot all show
        angle = 2 * math.pi * component / len(COST_NAMES)
        ex, ey = px(x, y)
        ex, ey = ex + 0.8 * mark * math.cos(angle), ey - 0.8 * mark * math.sin(angle)
        draw.ellipse([ex - mark, ey - mark, ex + mark, ey + mark], outline=COST_COLORS[component], width=max(2, 2 * line))

    if legend:
        x = margin
        for name, color in zip(COST_NAMES, COST_COLORS):
            draw.rectangle([x, size - legend + 3, x + 8, size - 4], fill=color)
            label = name.replace("_", " ").replace(" equipment", "").replace(" collection", "")
            draw.text((x + 11, size - legend + 1), label, fill=(230, 230, 230))
            x += 12 + int(draw.textlength(label)) + 8
    return np.asarray(image, dtype=np.uint8)


# ---- episodes as animations --------------------------------------------------------------------


def write_episode(frames: Sequence[np.ndarray], path: str | Path, fps: float = 8) -> Path:
    """Write uint8 ``[H, W, 3]`` frames to an animated GIF (``.gif``, with Pillow) or an MP4
    video (``.mp4``, needs ``imageio`` and ``imageio-ffmpeg``). Returns the path.

    In a GIF, identical consecutive frames are stored once with their durations added, so the
    animation plays for the same time."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ConfigError(f"write_episode: {path} must end in .gif or .mp4")
    fps = _number("write_episode", "fps", fps, 0.1, 240.0)
    frames = list(frames)
    if not frames:
        raise ConfigError("write_episode: no frames to write")
    shape = np.shape(frames[0])
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or frame.shape != shape:
            raise ConfigError(
                f"write_episode: frame {i} has dtype {frame.dtype} and shape {frame.shape}; every frame must be "
                f"uint8 [H, W, 3] with the shape of the first ({shape})"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(np.asarray(f)) for f in frames]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=max(10, round(1000 / fps)), loop=0
        )
        return path
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the MP4 writer imageio uses)
    except ImportError:
        raise ConfigError(
            f"write_episode: writing {path.name} (MP4) needs the packages imageio and imageio-ffmpeg "
            f"(pip install imageio imageio-ffmpeg); .gif works without them"
        ) from None
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame))
    return path
