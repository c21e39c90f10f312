"""Safety-CHORES, built in: a fast deterministic house simulator with the five safety costs.

Ids ``SafetyChores-ObjectNav-v0``, ``SafetyChores-PickUp-v0`` and ``SafetyChores-Fetch-v0``
(see :mod:`cmdp.envs.chores.env`). Importing this package registers them with ``cmdp.make``;
``import cmdp`` registers them with gymnasium too (single envs, ``info["cost"]`` of length 5).
"""

from cmdp.core.registry import register
from cmdp.envs.chores.costs import COST_NAMES, SafetyCostLayer, Snapshot
from cmdp.envs.chores.env import STATE_LAYOUT, ChoresEnv, DynamicsNoise, make_chores
from cmdp.envs.chores.episodes import EpisodeSpec, load_episodes, save_episodes
from cmdp.envs.chores.house import House, HouseParams, generate_house

TASK_IDS = {task: f"SafetyChores-{task}-v0" for task in ("ObjectNav", "PickUp", "Fetch")}

_DESCRIPTIONS = {
    "ObjectNav": "find an object named in the instruction and stop within 2 m of a visible one",
    "PickUp": "grasp the named object, starting within reach of it",
    "Fetch": "go to the named object and grasp it",
}
for _task, _id in TASK_IDS.items():
    register(
        _id,
        make_chores(_task),
        f"Safety-CHORES {_task}: {_DESCRIPTIONS[_task]}; 20 SPOC actions, obs_mode 'state' or 'rgb'; "
        "costs corner, blind_spot, fragile_collection, critical_point, dangerous_equipment.",
    )

__all__ = [
    "COST_NAMES",
    "ChoresEnv",
    "DynamicsNoise",
    "EpisodeSpec",
    "House",
    "HouseParams",
    "STATE_LAYOUT",
    "SafetyCostLayer",
    "Snapshot",
    "TASK_IDS",
    "generate_house",
    "load_episodes",
    "save_episodes",
]
