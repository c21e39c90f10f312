"""Resetting safety-gymnasium envs without recompiling their MuJoCo world.

safety-gymnasium 1.0.0 rebuilds its world from XML at every reset: ``World.build`` writes the
layout into an XML string and calls ``mujoco.MjModel.from_xml_string``. The compile decodes the
skybox's six PNG files into 191 MB of texture each time, about 0.4 s of CPU per reset on this
project's machine, as much as the 1,000 steps of the episode that follows. Between two resets of
one task of the Goal family the XML differs only in where things are: the ``pos`` and ``quat`` of
bodies (agent, goal, hazards, vases) and the pose of the tracking camera. A layout whose XML
differs anywhere else (Button's moves geoms within their bodies) is compiled as before.

:func:`reuse_compiled_world` makes one env keep its compiled model and, at each later reset,
write the new poses into it instead: body positions and orientations (normalised as MuJoCo's
compiler does), the free joints' reference configuration, the inertial frame of massless bodies
(which the compiler puts at the body's frame), the constants MuJoCo derives from the reference
configuration (``mj_setConst``), and the mean inertia the solver scales by. Every other model
array is restored from a snapshot taken at the compile, so that what the task changed during an
episode (the goal is moved by writing ``body_pos``) does not leak into the next one.

Whether that reproduces the compile is checked, not assumed: the first
:data:`VERIFIED_RESETS` new layouts of each env are also compiled, and compared on every model
array that the physics and the observations read (all but cameras' and lights' poses, which only
rendering reads, and the visual statistics). On any difference the env goes back to compiling
at every reset and says so in a warning. The peer-env tests show equal observations, rewards
and costs, bit for bit, against envs that compile (SafetyPointGoal1 and SafetyCarGoal1, with the
goal moved mid-episode), and a kept model equal to a fresh compile over 11 layouts of
SafetyPointGoal2.

Only envs that cannot render use it (no ``render_mode``, no vision observation), since the
cameras are not moved.
"""

from __future__ import annotations

import contextvars
import re
import types
import warnings
from typing import Any

import numpy as np

__all__ = ["reuse_compiled_world", "WorldModelReuse", "VERIFIED_RESETS"]

VERIFIED_RESETS = 2
"""New layouts per env that are also compiled and compared before patching is trusted."""

_BODY_POSE = re.compile(r'<body name="([^"]+)" pos="([^"]*)" quat="([^"]*)">')
_CAMERA_TAG = re.compile(r"<camera [^>]*>")
_CAMERA_POSE = re.compile(r' (pos|xyaxes)="[^"]*"')
_RENDER_ONLY_PREFIXES = ("cam_", "light_")
# model arrays larger than this are assets (textures above all) that a pose never changes
_SNAPSHOT_MAX_BYTES = 1 << 20

_ACTIVE: contextvars.ContextVar[WorldModelReuse | None] = contextvars.ContextVar("cmdp_world_reuse", default=None)


def reuse_compiled_world(env: Any) -> bool:
    """Make a safety-gymnasium env reuse its compiled MuJoCo model across resets.

    Returns True if it now does; False (and the env unchanged) for envs that can render or
    observe images, and for anything that is not a safety-gymnasium ``Builder``.
    """
    builder = getattr(env, "unwrapped", env)
    task = getattr(builder, "task", None)
    render = getattr(builder, "render_parameters", None)
    if task is None or render is None or not callable(getattr(builder, "reset", None)):
        return False
    if isinstance(getattr(builder, "world_model_reuse", None), WorldModelReuse):
        return True
    if getattr(render, "mode", None) is not None or getattr(task, "observe_vision", False):
        return False
    if not _route_world_compiles():
        return False
    reuse = WorldModelReuse()
    reset = builder.reset

    def reset_reusing_the_model(*args: Any, **kwargs: Any) -> Any:
        token = _ACTIVE.set(reuse)
        try:
            return reset(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    builder.reset = reset_reusing_the_model
    builder.world_model_reuse = reuse
    return True


class WorldModelReuse:
    """One env's compiled model, and how its XML maps onto it."""

    def __init__(self) -> None:
        self.model: Any = None
        self.compiles = 0
        self.patches = 0
        self.verified = 0
        self.enabled = True
        self._layout_free_xml: str | None = None
        self._compiled_xml: str | None = None
        self._snapshot: dict[str, np.ndarray] = {}
        self._massless_frames: set[int] = set()

    def compile(self, xml: str) -> Any:
        if not self.enabled or self.model is None or _without_poses(xml) != self._layout_free_xml:
            return self._compile_anew(xml)
        self._patch(xml)
        self.patches += 1
        # a build of the layout just compiled (safety-gymnasium builds twice at its first reset)
        # proves nothing about writing a new one
        if self.verified < VERIFIED_RESETS and xml != self._compiled_xml:
            compiled = _compile(xml)
            self.compiles += 1
            differences = physics_differences(self.model, compiled)
            if differences:
                self.enabled = False
                warnings.warn(
                    "safety-gymnasium world: writing the new layout into the compiled model did "
                    f"not reproduce the compile ({', '.join(differences)}); this env compiles at "
                    "every reset from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.model = compiled
                return compiled
            self.verified += 1
        return self.model

    def _compile_anew(self, xml: str) -> Any:
        model = _compile(xml)
        self.compiles += 1
        self.model = model
        self._compiled_xml = xml
        self._layout_free_xml = _without_poses(xml)
        self._snapshot = {
            name: array.copy()
            for name in _array_fields(model)
            if (array := getattr(model, name)).nbytes <= _SNAPSHOT_MAX_BYTES
        }
        self._massless_frames = {
            body
            for body in range(model.nbody)
            if model.body_mass[body] == 0
            and np.array_equal(model.body_ipos[body], model.body_pos[body])
            and np.array_equal(model.body_iquat[body], model.body_quat[body])
        }
        return model

    def _patch(self, xml: str) -> None:
        import mujoco

        model = self.model
        for name, array in self._snapshot.items():
            getattr(model, name)[...] = array
        for name, pos, quat in _BODY_POSE.findall(xml):
            body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
            model.body_pos[body] = np.array(pos.split(), dtype=np.float64)
            orientation = np.array(quat.split(), dtype=np.float64)
            mujoco.mju_normalize4(orientation)
            model.body_quat[body] = orientation
            if body in self._massless_frames:
                model.body_ipos[body] = model.body_pos[body]
                model.body_iquat[body] = model.body_quat[body]
            joint = model.body_jntadr[body]
            if model.body_jntnum[body] == 1 and model.jnt_type[joint] == mujoco.mjtJoint.mjJNT_FREE:
                address = model.jnt_qposadr[joint]
                for reference in (model.qpos0, model.qpos_spring):
                    reference[address : address + 3] = model.body_pos[body]
                    reference[address + 3 : address + 7] = model.body_quat[body]
        mujoco.mj_setConst(model, mujoco.MjData(model))
        # the compiler's mean inertia (the solver's tolerance scale) is the mean of the diagonal
        # at the reference configuration, summed in order; mj_setConst leaves it alone
        total = 0.0
        for inertia in model.dof_M0:
            total += float(inertia)
        if model.nv:
            model.stat.meaninertia = total / model.nv


def _without_poses(xml: str) -> str:
    """The XML with what a patch writes blanked out: the poses of bodies and of cameras. Two
    layouts whose XML differs anywhere else (a geom moved within its body, say) need a compile."""
    xml = _BODY_POSE.sub(lambda m: f'<body name="{m.group(1)}">', xml)
    return _CAMERA_TAG.sub(lambda m: _CAMERA_POSE.sub("", m.group(0)), xml)


def physics_differences(model: Any, reference: Any) -> list[str]:
    """Names of the model arrays (and statistics) that differ, ignoring what only rendering reads."""
    different = [
        name
        for name in _array_fields(reference)
        if not name.startswith(_RENDER_ONLY_PREFIXES)
        and not _equal(getattr(model, name), getattr(reference, name))
    ]
    for statistic in ("meaninertia", "meanmass"):
        if getattr(model.stat, statistic) != getattr(reference.stat, statistic):
            different.append(f"stat.{statistic}")
    return different


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    # equal_nan on integer arrays costs seconds on the 191 MB texture
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc")


def _array_fields(model: Any) -> list[str]:
    return [name for name in dir(model) if not name.startswith("_") and isinstance(getattr(model, name), np.ndarray)]


def _compile(xml: str) -> Any:
    import mujoco

    return mujoco.MjModel.from_xml_string(xml)


class _ModelFactory:
    """``MjModel`` as safety_gymnasium.world sees it: compiles go through the active reuse."""

    @staticmethod
    def from_xml_string(xml: str, *args: Any, **kwargs: Any) -> Any:
        reuse = _ACTIVE.get()
        if reuse is None or args or kwargs:
            import mujoco

            return mujoco.MjModel.from_xml_string(xml, *args, **kwargs)
        return reuse.compile(xml)


def _route_world_compiles() -> bool:
    """Point safety_gymnasium.world's ``mujoco`` at a view whose compiles consult the reuse.

    Everything else passes through to mujoco, and a compile outside a reusing env's reset is an
    ordinary compile, so other envs in the process are unaffected.
    """
    try:
        import mujoco
        from safety_gymnasium import world
    except ImportError:
        return False
    if isinstance(world.mujoco, _MujocoForWorlds):
        return True
    if world.mujoco is not mujoco:
        return False
    world.mujoco = _MujocoForWorlds(mujoco)
    return True


class _MujocoForWorlds(types.ModuleType):
    def __init__(self, mujoco: types.ModuleType) -> None:
        super().__init__(mujoco.__name__, mujoco.__doc__)
        self._mujoco = mujoco
        self.MjModel = _ModelFactory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mujoco, name)
