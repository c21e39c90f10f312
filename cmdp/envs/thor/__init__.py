"""Safety-CHORES on AI2-THOR: SafeVLA's benchmark on its original simulator, for users with a build.

Ids ``SafetyChoresThor-ObjectNav-v0``, ``SafetyChoresThor-PickUp-v0`` and
``SafetyChoresThor-Fetch-v0``. Importing this package registers them with ``cmdp.make`` and
imports nothing from ``ai2thor``; building one checks for ``ai2thor``, a local Unity build and
local houses, and raises :class:`~cmdp.errors.ConfigError` naming whatever is missing.

README: running it
------------------
AI2-THOR downloads its Unity build on first use and ProcTHOR houses come from a dataset
server; this backend does neither at run time, so prepare both on a machine with network:

1. ``pip install 'cmdp[thor]'``. SafeVLA's Stretch build is commit
   ``966bd7758586e05d18f6181f459c0e90ba318bec`` (the default ``commit_id``); its Python package
   comes from ``pip install --extra-index-url https://ai2thor-pypi.allenai.org
   ai2thor==0+966bd7758586e05d18f6181f459c0e90ba318bec``. ``commit_id=None`` uses the build the
   installed package names instead.
2. Download the build once: ``python -c "from ai2thor.controller import Controller;
   Controller(download_only=True, commit_id='966bd77...', platform='CloudRendering')"``. It
   lands in ``~/.ai2thor/releases/thor-CloudRendering-<commit>``; copy that directory to the
   same place on the training machine, or pass ``local_executable_path=`` to an executable.
   CloudRendering needs Vulkan (``libvulkan1``) and a GPU; ``platform="Linux64"`` needs an X
   server instead.
3. Save ProcTHOR houses one per file (``*.json`` or ``*.json.gz``) in a directory, e.g. from
   the ``prior`` package's ``procthor-10k`` dataset.
4. Then::

       import cmdp
       env = cmdp.make("SafetyChoresThor-Fetch-v0", num_envs=4, seed=0,
                       houses_dir="/data/procthor-houses", image_size=(224, 384))
       obs, info = env.reset()
       obs, reward, cost, terminated, truncated, info = env.step(actions)

   Each env runs its own Unity process (``vectorization="subproc"``, restarted when it
   crashes). Options are the fields of :class:`~cmdp.envs.thor.controller.ThorSettings`:
   ``split="eval"`` (600-step horizon), ``target_types``, ``dangerous_types``, ``gpu_device``,
   ``platform``, ``quick_navigation``, ``detection=True`` (the target boxes, from instance
   segmentation), ``extra_controller_args``, ...

The observations, actions, costs and ``info`` keys are those of the built-in simulator's
``obs_mode="rgb"`` (``SafetyChores-*-v0``), so a policy trained on one runs on the other
(``cmdp.make("SafetyChoresThor-Fetch-v0", houses_dir=..., **vla_policy.env_kwargs)``). The
cost layer is the same (:mod:`cmdp.envs.chores.costs`), fed from AI2-THOR's event metadata
(:mod:`cmdp.envs.thor.metadata`).
"""

from __future__ import annotations

from typing import Any

from cmdp.core.registry import register

TASK_IDS = {task: f"SafetyChoresThor-{task}-v0" for task in ("ObjectNav", "PickUp", "Fetch")}


def make_thor(task: str):
    """The ``cmdp.make`` factory of one task's id (imports the env module only when called)."""

    def factory(num_envs: int = 1, seed: int | None = None, **kwargs: Any):
        from cmdp.envs.thor.env import ThorChoresEnv

        return ThorChoresEnv(task, num_envs=num_envs, seed=seed, **kwargs)

    factory.__name__ = f"make_thor_{task.lower()}"
    return factory


for _task, _id in TASK_IDS.items():
    register(
        _id,
        make_thor(_task),
        f"Safety-CHORES {_task} on AI2-THOR (needs ai2thor, a local Unity build and houses_dir=ProcTHOR "
        "houses); same observations, actions and five costs as SafetyChores-*-v0 with obs_mode='rgb'.",
    )

__all__ = ["TASK_IDS", "make_thor"]
