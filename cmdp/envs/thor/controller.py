"""The AI2-THOR side of the backend: settings, preflight checks and the Stretch controller.

:class:`ThorSettings` holds everything an episode needs (task, local houses, image size, the
cost tables) and the arguments of ``ai2thor.controller.Controller`` that SafeVLA uses for its
Stretch robot (``STRETCH_ENV_ARGS`` in its ``stretch_initialization_utils.py``): ``agentMode=
"stretch"``, the CloudRendering platform (headless Vulkan), 396x224 frames of which the
policy sees the central 384x224 (SafeVLA crops 6/396 of the width on each side), a vertical
field of view of 59 degrees, ``visibilityDistance`` 0.867 m with the ``"Distance"`` scheme,
``gridSize`` 0.15 m (three quarters of a 0.2 m move), ``snapToGrid=False``, instance
segmentation on, no auto-simulation, ``cameraNearPlane`` 0.01 and the FIFO server.

:func:`preflight` runs before any controller starts and never touches the network: it
raises :class:`~cmdp.errors.ConfigError` when ``ai2thor`` is missing, or when neither
``local_executable_path`` nor an already-downloaded build for ``commit_id`` exists (the
controller would otherwise try to download one and, without network, fail slowly or hang).

:class:`StretchController` wraps one ``Controller`` the way SafeVLA's ``StretchController``
drives it: reset to a ProcTHOR house and calibrate the cameras, map each SPOC action to its
controller action (:func:`stretch_action`), release objects with two seconds of physics so they
settle, and after every physical step ask the navigation camera which objects it shows within
4 m (``GetVisibleObjects``), which the blind-spot cost needs. Every step returns a
:class:`ThorStep`: the event's metadata, those object ids and the raw camera frames.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cmdp.envs.chores import text
from cmdp.envs.thor.metadata import DANGEROUS_TYPES, SEEN_DISTANCE
from cmdp.errors import ConfigError

SAFEVLA_STRETCH_COMMIT_ID = "966bd7758586e05d18f6181f459c0e90ba318bec"
"""The AI2-THOR build SafeVLA and SPOC run (its Python package: ``pip install --extra-index-url
https://ai2thor-pypi.allenai.org ai2thor==0+966bd7758586e05d18f6181f459c0e90ba318bec``)."""

CAMERA_WIDTH, CAMERA_HEIGHT = 396, 224  # the Stretch's Intel camera, as rendered
CROP_FRACTION = 6 / 396  # cut from each side of the width: 396 -> 384 pixels
MAX_IMAGE_SIZE = (224, 384)  # (height, width) after the crop
MIN_IMAGE_SIDE = 8
ARM_LIFT_OFFSET = 0.16297650337219238  # m: lift joint's root-relative height at the lowest arm
WRIST_BOUNDS = (-260.0, 75.0)  # degrees the Stretch's wrist may turn to
MOVE_STEP = 0.2  # m
TURN_STEP = 30.0  # deg; the small turns are a fifth of it
ARM_STEP = 0.1  # m; the small arm steps are a fifth of it
WRIST_STEP = 10.0  # deg
RELEASE_SETTLE_SECONDS = 2.0  # physics run after a release so the object comes to rest

DEFAULT_TARGET_TYPES = (
    "Mug", "Cup", "Apple", "Bread", "Book", "RemoteControl", "Bottle", "Bowl", "TeddyBear", "Plate", "Pencil",
)  # fmt: skip
"""AI2-THOR types a training instruction may name: the built-in simulator's target categories
that exist in AI2-THOR."""

TYPE_WORDS = {
    "Mug": "mug", "Cup": "cup", "Apple": "apple", "Bread": "bread", "Book": "book", "RemoteControl": "remote",
    "Bottle": "bottle", "Bowl": "bowl", "TeddyBear": "teddy_bear", "Plate": "plate", "Pencil": "pencil",
    "Vase": "vase", "Laptop": "laptop", "CellPhone": "phone", "Candle": "candle", "Knife": "knife",
    "Fork": "fork", "Box": "box", "HousePlant": "plant_pot", "WineBottle": "bottle", "Scissors": "scissors",
}  # fmt: skip
"""How an instruction names an AI2-THOR type: the shared vocabulary's word where there is one."""

PLATFORMS = ("CloudRendering", "Linux64")
SPLITS = {"train": 500, "eval": 600}  # split -> horizon (steps)


def type_word(object_type: str) -> str:
    """The instruction word for an AI2-THOR object type (``AlarmClock`` -> ``alarm_clock``)."""
    if object_type in TYPE_WORDS:
        return TYPE_WORDS[object_type]
    out = "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(object_type))
    return out


@dataclass(frozen=True, kw_only=True)
class ThorSettings:
    """Everything one AI2-THOR Safety-CHORES env needs. Validated at construction."""

    task: str
    """``"ObjectNav"``, ``"PickUp"`` or ``"Fetch"``."""
    houses_dir: str
    """Local directory of ProcTHOR house JSON files (``*.json`` or ``*.json.gz``, one house
    each). Never fetched from the network."""
    split: str = "train"
    """``"train"`` (horizon 500 steps) or ``"eval"`` (600 steps)."""
    max_episode_steps: int | None = None
    """Horizon in steps; ``None`` takes the split's."""
    image_size: tuple[int, int] = (64, 64)
    """(height, width) of ``rgb_nav`` and ``rgb_manip`` after the crop to 384x224, at most (224, 384)."""
    obs_mode: str = "rgb"
    """Only ``"rgb"``: taken so that a VLA policy's ``env_kwargs`` make this env as they make
    the built-in one."""
    detection: bool = False
    """Add the target boxes (``nav_target_box``, ``manip_target_box``), as the built-in
    simulator's ``detection=True``, from AI2-THOR's instance segmentation of each camera."""
    target_types: tuple[str, ...] = DEFAULT_TARGET_TYPES
    """AI2-THOR object types an episode may target (exact types)."""
    dangerous_types: tuple[str, ...] = tuple(DANGEROUS_TYPES)
    """AI2-THOR object types that are dangerous equipment (exact types)."""
    max_entities: int = 512
    """Objects per house the cost layer tracks (structure excluded); a bigger house is an error."""
    success_reward: float = 10.0
    """Reward on the step the task succeeds."""
    commit_id: str | None = SAFEVLA_STRETCH_COMMIT_ID
    """AI2-THOR build commit; ``None`` takes the one the installed ``ai2thor`` package names."""
    local_executable_path: str | None = None
    """A local AI2-THOR executable; overrides ``commit_id``."""
    platform: str = "CloudRendering"
    """``"CloudRendering"`` (headless Vulkan, SafeVLA's choice) or ``"Linux64"`` (X server)."""
    gpu_device: int | None = None
    """Index into ``CUDA_VISIBLE_DEVICES`` for rendering; ``None`` lets AI2-THOR choose."""
    field_of_view: float = 59.0
    """Vertical field of view of both cameras, degrees."""
    visibility_distance: float = 0.8673349051766235
    """m; AI2-THOR's ``visible`` flag (the arm's reach from the agent's centre, as SafeVLA)."""
    grid_size: float = 0.15
    """m; spacing of reachable positions (and of the corner test's grid)."""
    quick_navigation: bool = True
    """Use ``MoveAheadQuick``/``RotateRightQuick`` (SafeVLA's setting) instead of
    ``MoveAgent``/``RotateAgent``. The quick actions come with SPOC's build; set False with
    other builds."""
    camera_jitter: bool = True
    """Jitter the camera mounts (+-2 deg) and fields of view (+-1 deg) at each reset, as SafeVLA."""
    server_timeout: float = 300.0
    """Seconds AI2-THOR may take for one action before the controller gives up."""
    server_start_timeout: float = 300.0
    """Seconds AI2-THOR may take to start."""
    extra_controller_args: Mapping[str, Any] = field(default_factory=dict)
    """Passed on to ``Controller(...)`` last (e.g. ``quality``, ``x_display``)."""

    def __post_init__(self) -> None:
        name = "SafetyChoresThor"
        if self.task not in text.TASKS:
            raise ConfigError(f"{name}: unknown task {self.task!r}; allowed: {', '.join(text.TASKS)}")
        if self.houses_dir is None or not str(self.houses_dir):
            raise ConfigError(
                f"{name}: pass houses_dir=<a local directory of ProcTHOR house JSON files (*.json or "
                "*.json.gz)>; houses are never downloaded at run time"
            )
        if self.split not in SPLITS:
            raise ConfigError(f"{name}: split must be one of {list(SPLITS)}, got {self.split!r}")
        if self.max_episode_steps is not None and (
            isinstance(self.max_episode_steps, bool) or not isinstance(self.max_episode_steps, int) or self.max_episode_steps < 1
        ):
            raise ConfigError(f"{name}: max_episode_steps must be None or an integer >= 1, got {self.max_episode_steps!r}")
        size = tuple(self.image_size) if isinstance(self.image_size, (tuple, list)) else None
        if (
            size is None
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or not (MIN_IMAGE_SIDE <= size[0] <= MAX_IMAGE_SIZE[0] and MIN_IMAGE_SIDE <= size[1] <= MAX_IMAGE_SIZE[1])
        ):
            raise ConfigError(
                f"{name}: image_size must be (height, width) integers with {MIN_IMAGE_SIDE} <= height <= "
                f"{MAX_IMAGE_SIZE[0]} and {MIN_IMAGE_SIDE} <= width <= {MAX_IMAGE_SIZE[1]}, got {self.image_size!r}"
            )
        object.__setattr__(self, "image_size", size)
        if self.obs_mode != "rgb":
            raise ConfigError(
                f"{name}: obs_mode must be 'rgb', got {self.obs_mode!r}: AI2-THOR renders camera images; "
                "state observations are the built-in simulator's (SafetyChores-*-v0)"
            )
        if not isinstance(self.detection, bool):
            raise ConfigError(f"{name}: detection must be True or False, got {self.detection!r}")
        for what in ("target_types", "dangerous_types"):
            value = getattr(self, what)
            if isinstance(value, str) or not all(isinstance(t, str) and t for t in value):
                raise ConfigError(f"{name}: {what} must be a sequence of AI2-THOR object type names, got {value!r}")
            object.__setattr__(self, what, tuple(value))
        if not self.target_types:
            raise ConfigError(f"{name}: target_types is empty; name at least one AI2-THOR object type")
        if isinstance(self.max_entities, bool) or not isinstance(self.max_entities, int) or self.max_entities < 1:
            raise ConfigError(f"{name}: max_entities must be an integer >= 1, got {self.max_entities!r}")
        if self.platform not in PLATFORMS:
            raise ConfigError(f"{name}: platform must be one of {list(PLATFORMS)}, got {self.platform!r}")
        for what, lo, hi in (
            ("success_reward", 0.0, math.inf),
            ("field_of_view", 1.0, 179.0),
            ("visibility_distance", 0.0, math.inf),
            ("grid_size", 0.01, 1.0),
            ("server_timeout", 1.0, math.inf),
            ("server_start_timeout", 1.0, math.inf),
        ):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value < hi or math.isnan(value):
                raise ConfigError(f"{name}: {what} must be a number in [{lo:g}, {hi:g}), got {value!r}")
        if self.gpu_device is not None and (isinstance(self.gpu_device, bool) or not isinstance(self.gpu_device, int) or self.gpu_device < 0):
            raise ConfigError(f"{name}: gpu_device must be None or an integer >= 0, got {self.gpu_device!r}")
        if not isinstance(self.extra_controller_args, Mapping):
            raise ConfigError(f"{name}: extra_controller_args must be a mapping, got {self.extra_controller_args!r}")

    @property
    def horizon(self) -> int:
        return self.max_episode_steps if self.max_episode_steps is not None else SPLITS[self.split]

    def controller_kwargs(self, ai2thor: Any) -> dict[str, Any]:
        """Arguments of ``ai2thor.controller.Controller`` (needs the imported package)."""
        kwargs: dict[str, Any] = dict(
            agentMode="stretch",
            gridSize=self.grid_size,
            width=CAMERA_WIDTH,
            height=CAMERA_HEIGHT,
            visibilityDistance=self.visibility_distance,
            visibilityScheme="Distance",
            fieldOfView=self.field_of_view,
            server_class=ai2thor.fifo_server.FifoServer,
            useMassThreshold=False,
            massThreshold=1,
            autoSimulation=False,
            autoSyncTransforms=True,
            renderInstanceSegmentation=True,
            renderDepthImage=False,
            cameraNearPlane=0.01,
            snapToGrid=False,
            fastActionEmit=True,
            server_timeout=self.server_timeout,
            server_start_timeout=self.server_start_timeout,
            gpu_device=self.gpu_device,
        )
        if self.local_executable_path:
            kwargs["local_executable_path"] = self.local_executable_path
        else:
            kwargs["commit_id"] = self.commit_id or ai2thor.build.COMMIT_ID
            kwargs["platform"] = ai2thor.platform.STR_PLATFORM_MAP[self.platform]
        kwargs.update(self.extra_controller_args)
        return kwargs


# ---- preflight --------------------------------------------------------------------------------


def require_ai2thor() -> Any:
    """Import ``ai2thor`` (and the modules the controller uses) or raise a ConfigError saying how
    to install it."""
    try:
        ai2thor = importlib.import_module("ai2thor")
        for sub in ("controller", "build", "platform", "fifo_server"):
            importlib.import_module(f"ai2thor.{sub}")
    except ImportError as e:
        raise ConfigError(
            "the AI2-THOR backend of Safety-CHORES needs the ai2thor package, which is not installed "
            f"({e}). Install the optional extra: pip install 'cmdp[thor]' (SafeVLA's build needs "
            "pip install --extra-index-url https://ai2thor-pypi.allenai.org "
            f"ai2thor==0+{SAFEVLA_STRETCH_COMMIT_ID}). The built-in simulator "
            "(SafetyChores-*-v0) needs nothing extra."
        ) from e
    return ai2thor


def releases_dir() -> Path:
    """Where AI2-THOR keeps downloaded builds (``~/.ai2thor/releases``)."""
    return Path(os.path.expanduser("~")) / ".ai2thor" / "releases"


def preflight(settings: ThorSettings) -> Any:
    """Check, without network, that a controller can start; return the ``ai2thor`` module."""
    ai2thor = require_ai2thor()
    if settings.local_executable_path:
        path = Path(settings.local_executable_path)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(
                f"local_executable_path {str(path)!r} is not an executable file; point it at an AI2-THOR "
                "Unity build (the file named thor-<platform>-<commit> inside the build directory)"
            )
        return ai2thor
    commit = settings.commit_id or ai2thor.build.COMMIT_ID
    platform = ai2thor.platform.STR_PLATFORM_MAP[settings.platform]
    build = ai2thor.build.Build(platform, commit, False, str(releases_dir()))
    missing = [p for p in (build.executable_path, build.metadata_path) if not os.path.isfile(p)]
    if missing:
        raise ConfigError(
            f"no local AI2-THOR build for commit {commit} on platform {settings.platform}: "
            f"{', '.join(missing)} not found. This backend never downloads at run time. On a machine "
            f"with network, run python -c \"from ai2thor.controller import Controller; "
            f"Controller(download_only=True, commit_id='{commit}', platform='{settings.platform}')\" "
            f"and copy {build.base_dir} here, or pass local_executable_path=<an AI2-THOR executable>"
        )
    return ai2thor


# ---- one step's record ------------------------------------------------------------------------


@dataclass
class ThorStep:
    """What one controller step reports, in AI2-THOR's own format."""

    metadata: dict[str, Any]
    """``event.metadata`` of the step (a plain dict)."""
    seen_ids: tuple[str, ...] = ()
    """Objects the navigation camera shows within ``SEEN_DISTANCE`` after the step."""
    nav_frame: np.ndarray | None = None
    """``event.frame``: ``[224, 396, 3]`` uint8 from the navigation camera, uncropped."""
    manip_frame: np.ndarray | None = None
    """``event.third_party_camera_frames[0]``: the manipulation camera, uncropped."""
    nav_segmentation: np.ndarray | None = None
    """With ``detection``: ``event.instance_segmentation_frame``, one colour per object."""
    manip_segmentation: np.ndarray | None = None
    """With ``detection``: ``event.third_party_instance_segmentation_frames[0]``."""
    object_colors: Mapping[str, Any] = field(default_factory=dict)
    """With ``detection``: ``event.object_id_to_color``, object id -> its (r, g, b) in both."""


# ---- actions ----------------------------------------------------------------------------------


def arm_state(metadata: Mapping[str, Any]) -> dict[str, float]:
    """The Stretch arm's target frame (x, lift y, extension z) from ``metadata["arm"]``."""
    joints = metadata["arm"]["joints"]
    wrist = joints[-1]["rootRelativePosition"]
    lift = joints[0]["rootRelativePosition"]["y"] - ARM_LIFT_OFFSET
    return {"x": float(wrist["x"]), "y": float(lift), "z": float(wrist["z"])}


def wrist_yaw(metadata: Mapping[str, Any]) -> float:
    """The wrist's yaw in degrees, from the last joint's axis-angle ``rootRelativeRotation``."""
    r = metadata["arm"]["joints"][-1]["rootRelativeRotation"]
    return math.fmod(float(r["w"]) * float(r["y"]), 360.0)


_TURNS = {"r": TURN_STEP, "l": -TURN_STEP, "rs": TURN_STEP / 5, "ls": -TURN_STEP / 5}
_ARM = {
    "yp": ("y", ARM_STEP), "ym": ("y", -ARM_STEP), "zp": ("z", ARM_STEP), "zm": ("z", -ARM_STEP),
    "yps": ("y", ARM_STEP / 5), "yms": ("y", -ARM_STEP / 5), "zps": ("z", ARM_STEP / 5), "zms": ("z", -ARM_STEP / 5),
}  # fmt: skip
_ARM_ARGS = {"returnToStart": True, "speed": 1}
_NAV_ARGS = {"returnToStart": False, "speed": 1}


def stretch_action(action: str, metadata: Mapping[str, Any], quick_navigation: bool = True) -> dict[str, Any] | None:
    """The controller action for a SPOC action, given the current metadata (arm and wrist
    moves are absolute targets). ``None`` for ``end`` and ``sub_done``, which do not act.

    The mapping is SafeVLA's ``StretchController.agent_step``: moves of 0.2 m, turns of 30 and
    6 degrees (positive turns right), arm steps of 0.1 and 0.02 m through ``MoveArm``, wrist
    steps of 10 degrees clipped to the wrist's bounds, ``PickupObject`` and ``ReleaseObject``.
    """
    if action in ("end", "sub_done"):
        return None
    if action in ("m", "b"):
        ahead = MOVE_STEP if action == "m" else -MOVE_STEP
        if quick_navigation:
            return {"action": "MoveAheadQuick" if action == "m" else "MoveBackQuick", "moveMagnitude": MOVE_STEP}
        return {"action": "MoveAgent", "ahead": ahead, **_NAV_ARGS}
    if action in _TURNS:
        return {"action": "RotateRightQuick" if quick_navigation else "RotateAgent", "degrees": _TURNS[action]}
    if action in _ARM:
        axis, delta = _ARM[action]
        target = arm_state(metadata)
        target[axis] += delta
        return {"action": "MoveArm", "position": target, **_ARM_ARGS}
    if action in ("wp", "wm"):
        yaw = wrist_yaw(metadata)
        if action == "wp":
            step = -min(WRIST_STEP, abs(yaw - (WRIST_BOUNDS[0] + 360.0)))
        else:
            step = min(WRIST_STEP, abs(WRIST_BOUNDS[1] - yaw))
        return {"action": "RotateWristRelative", "yaw": step, **_ARM_ARGS}
    if action == "p":
        return {"action": "PickupObject"}
    if action == "d":
        return {"action": "ReleaseObject"}
    raise ConfigError(f"unknown SPOC action {action!r}")


# ---- the controller ---------------------------------------------------------------------------


class StretchController:
    """One AI2-THOR controller with the Stretch agent. See the module docstring.

    ``StretchController(settings)`` runs :func:`preflight`, then starts Unity (seconds to a
    minute). Methods: :meth:`reset` to a house, :meth:`teleport`, :meth:`step` by SPOC action
    name, :meth:`reachable_positions`, :meth:`visible_object_ids`, :meth:`close`.
    """

    def __init__(self, settings: ThorSettings) -> None:
        ai2thor = preflight(settings)
        self.settings = settings
        self.controller = ai2thor.controller.Controller(**settings.controller_kwargs(ai2thor))
        self._seen: tuple[str, ...] = ()

    def _record(self, event: Any, seen: tuple[str, ...]) -> ThorStep:
        manip = event.third_party_camera_frames[0] if event.third_party_camera_frames else None
        record = ThorStep(dict(event.metadata), seen, event.frame, manip)
        if self.settings.detection:
            segmentations = event.third_party_instance_segmentation_frames
            record.nav_segmentation = event.instance_segmentation_frame
            record.manip_segmentation = segmentations[0] if segmentations else None
            record.object_colors = event.object_id_to_color
        return record

    def _seen_now(self) -> tuple[str, ...]:
        self._seen = tuple(self.visible_object_ids(SEEN_DISTANCE))
        return self._seen

    def reset(self, house: Mapping[str, Any], rng: np.random.Generator) -> ThorStep:
        """Load a ProcTHOR house and calibrate the cameras; the agent stands where the house says."""
        house = copy.deepcopy(dict(house))
        agent = house.setdefault("metadata", {}).get("agent")
        if agent is not None:
            agent["horizon"] = 0  # camera tilt comes from the mounts below, as in SafeVLA
        self.controller.reset(scene=house)
        jitter = (lambda width: float(rng.uniform(-width, width))) if self.settings.camera_jitter else (lambda width: 0.0)
        c = self.controller
        c.step(action="RotateCameraMount", degrees=27.0 + jitter(2.0), secondary=False, raise_for_failure=True)
        c.step(action="RotateCameraMount", degrees=33.0 + jitter(2.0), secondary=True, raise_for_failure=True)
        for camera in ("FirstPersonCharacter", "SecondaryCamera"):
            fov = self.settings.field_of_view + jitter(1.0)
            c.step(action="ChangeFOV", fieldOfView=fov, camera=camera, raise_for_failure=True)
        c.step(action="SetGripperOpenness", openness=30, raise_for_failure=True)
        event = c.step(action="ToggleMagnetVisibility", visible=False, raise_for_failure=True)
        return self._record(event, self._seen_now())

    def teleport(self, position: Mapping[str, float], yaw: float) -> ThorStep | None:
        """Place the agent at a reachable ``position`` facing ``yaw`` degrees; None if refused."""
        event = self.controller.step(
            action="Teleport", position=dict(position), rotation={"x": 0.0, "y": float(yaw), "z": 0.0}
        )
        if not event.metadata["lastActionSuccess"]:
            return None
        return self._record(event, self._seen_now())

    def step(self, action: str) -> ThorStep:
        """Take one SPOC action (a name from ``catalog.ACTIONS``)."""
        last = self.controller.last_event
        request = stretch_action(action, last.metadata, self.settings.quick_navigation)
        if request is None:  # end / sub_done: nothing moves, nothing is reported
            record = self._record(last, self._seen)
            record.metadata.update(errorMessage="", lastActionSuccess=True)
            return record
        event = self.controller.step(**request)
        if action == "d":
            settled = self.controller.step(action="AdvancePhysicsStep", simSeconds=RELEASE_SETTLE_SECONDS)
            outcome = {k: event.metadata[k] for k in ("errorMessage", "lastActionSuccess")}
            record = self._record(settled, ())
            record.metadata.update(outcome)
        else:
            record = self._record(event, ())
        record.seen_ids = self._seen_now()
        return record

    def reachable_positions(self) -> list[dict[str, float]]:
        event = self.controller.step(action="GetReachablePositions", gridSize=self.settings.grid_size)
        return list(event.metadata["actionReturn"] or [])

    def visible_object_ids(self, max_distance: float) -> list[str]:
        """Objects the navigation camera shows within ``max_distance`` metres."""
        event = self.controller.step(action="GetVisibleObjects", maxDistance=float(max_distance))
        return list(event.metadata["actionReturn"] or [])

    def close(self) -> None:
        controller, self.controller = getattr(self, "controller", None), None
        if controller is not None:
            controller.stop()
