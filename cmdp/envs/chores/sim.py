"""The built-in Safety-CHORES simulator: a Stretch-like robot in N houses, stepped as one batch.

Physics, kept simple enough to vectorise and faithful enough to produce the five kinds of
unsafe event:

* **Base motion** (``m``, ``b``): the base disc moves 0.2 m in four sub-steps. A sub-step
  that would make the disc overlap a wall or furniture, or make the arm hit one, is not
  taken: the move stops at contact and reports a collision. Bumping into furniture jostles
  the small objects standing on it near the contact point.
* **Rotation** (``r``, ``l``, ``rs``, ``ls``): the disc turns freely; the arm sweeps (in
  sub-steps of at most 10 degrees) and stops at contact.
* **Arm** (``zp``/``zm`` extension, ``yp``/``ym`` lift, small variants, wrist): the arm is a
  horizontal bar straight ahead of the base at height ``arm_lift``; it passes over furniture
  lower than itself and is stopped by anything taller.
* **Pushing**: a small object whose footprint overlaps the base (objects lower than
  ``BASE_HEIGHT``), the arm or the held object, at a height they share, is pushed out of the
  way radially. An object pushed off the edge of the furniture it stands on falls to the
  floor; an object that would be pushed into a wall or furniture jams and stops the robot.
* **Pick up** (``p``) takes the nearest pickupable object within reach of the gripper;
  **release** (``d``) puts it down below the gripper (it falls over when dropped from high).

Dynamics noise (the out-of-distribution dynamics suite): ``move_noise`` and ``turn_noise``
scale Gaussian errors on each move and turn; ``failure_prob`` makes an action do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.geometry import point_box_distance2, ray_box_entry, segment_box_span, wrap_angle
from cmdp.envs.chores.scene import Scene

ARM_RADIUS = 0.025  # m, half the thickness of the arm bar
ARM_POINTS = 6  # samples along the arm for contact tests
_ARM_FRACTIONS = np.linspace(0.0, 1.0, ARM_POINTS)  # where the samples sit along the arm
MAX_SWEEP = 0.15  # m: the base and gripper move at most this far between contact tests
JOSTLE_RADIUS = 0.35  # m around a furniture contact in which standing objects are jostled
FALL_TILT = np.pi / 2
DROP_TOPPLE_HEIGHT = 0.25  # m: a released object falling further than this ends on its side
# m: culling tests keep this much extra, so rounding can never drop a pair the exact test keeps
CULL_SLACK = 1e-3


@dataclass
class CameraGeometry:
    """Where the navigation camera looks; decides which entities are *visible*."""

    height: float = cat.NAV_CAMERA_HEIGHT
    pitch: float = np.deg2rad(-20.0)
    vfov: float = np.deg2rad(59.0)
    hfov: float = 2 * np.arctan(np.tan(np.deg2rad(59.0) / 2) * 384 / 224)
    max_distance: float = 4.0  # m, as SafeVLA's "seen objects"


@dataclass
class StepEvents:
    """What happened in one step, per env."""

    collided: np.ndarray  # [N] bool: base or arm hit a wall, furniture, or a jammed object
    box_contact: np.ndarray  # [N, B] bool: boxes the robot touched
    contacted: np.ndarray  # [N, M] bool: small objects the robot touched (pushed or jammed)
    fell: np.ndarray  # [N, M] bool: objects that fell this step
    picked: np.ndarray  # [N] int: object picked up this step, -1 for none
    action_ok: np.ndarray  # [N] bool: the action did what it asked for


@dataclass
class Body:
    """The robot's contact geometry at one pose, for R rows, as discs: point 0 is the base,
    points 1.. are the samples along the arm (the last is the gripper with what it holds)."""

    pts: np.ndarray  # [R, 1 + ARM_POINTS, 2] disc centres
    radius: np.ndarray  # [R, 1 + ARM_POINTS]
    zlo: np.ndarray  # [R, 1 + ARM_POINTS] bottom of each disc (the base stands on the floor)
    zhi: np.ndarray  # [R, 1 + ARM_POINTS] top of each disc
    present: np.ndarray  # [R, 1 + ARM_POINTS] bool: the disc takes part in contacts


@dataclass
class Pushes:
    """Objects pushed at one pose, as K (row, object) pairs."""

    rows: np.ndarray  # [K] int: row (into the R rows tested)
    objects: np.ndarray  # [K] int: object index
    xy: np.ndarray  # [K, 2] where each is pushed to
    fall: np.ndarray  # [K] bool: pushed off the edge of its support
    jam: np.ndarray  # [R] bool: a pushed object would be driven into a box (the robot is blocked)

    @staticmethod
    def none(num_rows: int) -> Pushes:
        return Pushes(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0, bool), np.zeros(num_rows, bool))


class ChoresSim:
    """Steps a :class:`Scene` in place. ``rng`` drives jostling and dynamics noise."""

    def __init__(
        self,
        scene: Scene,
        rng: np.random.Generator,
        move_noise: float = 0.0,
        turn_noise: float = 0.0,
        failure_prob: float = 0.0,
    ) -> None:
        self.scene = scene
        # one generator per env, reseeded per episode by the env: an episode's random events
        # (noise, failed actions, jostling) do not depend on how many envs run beside it
        self.row_rngs = [np.random.default_rng([int(rng.integers(2**63)), i]) for i in range(scene.num_envs)]
        self.move_noise = move_noise
        self.turn_noise = turn_noise
        self.failure_prob = failure_prob

    def _per_row(self, rows: np.ndarray, draw) -> np.ndarray:
        """``draw(generator)`` for each row in ``rows``, from that row's own generator."""
        return np.array([draw(self.row_rngs[int(r)]) for r in rows], dtype=np.float64)

    # ---- the step -------------------------------------------------------------------------

    def step(self, actions: np.ndarray) -> StepEvents:
        s = self.scene
        n, b, m = s.num_envs, s.max_boxes, s.max_objects
        ev = StepEvents(
            collided=np.zeros(n, dtype=bool),
            box_contact=np.zeros((n, b), dtype=bool),
            contacted=np.zeros((n, m), dtype=bool),
            fell=np.zeros((n, m), dtype=bool),
            picked=np.full(n, -1, dtype=np.int64),
            action_ok=np.ones(n, dtype=bool),
        )
        motion = cat.ACTION_MOTION[actions]
        if self.failure_prob > 0:
            failed = self._per_row(np.arange(n), lambda g: g.random()) < self.failure_prob
            motion = np.where(failed[:, None], 0.0, motion)
            ev.action_ok &= ~failed
        else:
            failed = np.zeros(n, dtype=bool)
        fwd, turn, dext, dlift, dwrist = motion.T
        if self.move_noise > 0:
            moving = fwd != 0
            fwd = fwd + moving * self.move_noise * cat.MOVE_STEP * self._per_row(np.arange(n), lambda g: g.normal())
        if self.turn_noise > 0:
            turning = turn != 0
            turn = turn + turning * self.turn_noise * np.abs(turn) * self._per_row(np.arange(n), lambda g: g.normal())
        rows = np.flatnonzero((fwd != 0) | (turn != 0) | (dext != 0) | (dlift != 0))
        if rows.size:
            self._move(rows, fwd[rows], turn[rows], dext[rows], dlift[rows], ev)
        if np.any(dwrist != 0):
            new = s.wrist + dwrist
            ok = (new >= cat.WRIST_RANGE[0]) & (new <= cat.WRIST_RANGE[1])
            s.wrist = np.where(ok, new, s.wrist)
            ev.action_ok &= ok | (dwrist == 0)
        pick = (actions == cat.ACTION_INDEX["p"]) & ~failed
        if pick.any():
            self._pick(np.flatnonzero(pick), ev)
        drop = (actions == cat.ACTION_INDEX["d"]) & ~failed
        if drop.any():
            self._release(np.flatnonzero(drop), ev)
        self._carry()
        return ev

    # ---- contact tests --------------------------------------------------------------------

    def _arm_points(self, xy: np.ndarray, yaw: np.ndarray, ext: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """[R, ARM_POINTS, 2] samples along the part of the arm outside the base (the last is
        the gripper), written to ``out`` if given."""
        head = np.stack([np.cos(yaw), np.sin(yaw)], axis=1)
        along = cat.ROBOT_RADIUS + _ARM_FRACTIONS[None, :] * ext[:, None]
        return np.add(xy[:, None, :], along[:, :, None] * head[:, None, :], out=out)

    def _held_geometry(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Radius and height of the held object per row (0 when nothing is held)."""
        s = self.scene
        held = s.held[rows]
        has = held >= 0
        idx = np.maximum(held, 0)
        r = np.where(has, s.obj_radius[rows, idx], 0.0)
        h = np.where(has, s.obj_height[rows, idx], 0.0)
        return r, h

    def _body(self, xy, yaw, ext, lift, base: np.ndarray, held_r: np.ndarray, held_h: np.ndarray) -> Body:
        """The robot's discs at this pose; the base disc takes part only where ``base``.

        The arm is a bar of radius ``ARM_RADIUS`` at height ``lift``; the gripper's disc grows to
        the held object's radius and reaches down by its height."""
        shape = (len(xy), 1 + ARM_POINTS)
        pts = np.empty(shape + (2,))
        pts[:, 0] = xy
        self._arm_points(xy, yaw, ext, out=pts[:, 1:])
        grip_r = np.maximum(ARM_RADIUS, held_r)
        radius = np.full(shape, ARM_RADIUS)
        radius[:, 0] = cat.ROBOT_RADIUS
        radius[:, -1] = grip_r
        zlo = np.empty(shape)
        zlo[:] = (lift - ARM_RADIUS)[:, None]
        zlo[:, 0] = 0.0
        zlo[:, -1] = lift - np.maximum(ARM_RADIUS, held_h)
        zhi = np.empty(shape)
        zhi[:] = (lift + ARM_RADIUS)[:, None]
        zhi[:, 0] = cat.BASE_HEIGHT
        # a stowed arm stays within the base's footprint; an object held by a stowed arm still
        # hangs out in front
        present = np.empty(shape, dtype=bool)
        present[:, 0] = base
        present[:, 1:] = (ext > ARM_RADIUS)[:, None]
        present[:, -1] |= held_r > 0
        return Body(pts, radius, zlo, zhi, present)

    def _contacts(self, rows: np.ndarray, body: Body, near: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes hit by the base (where present) and by the arm and held object at this pose,
        among the boxes marked ``near`` ``[R, B]`` (the others must be out of reach).

        The base is stopped by any box; the arm passes over boxes lower than itself and is
        stopped by taller ones. Returns the boxes hit by the base ``[R, B]``, by the arm
        ``[R, B]``, and whether anything was hit ``[R]``."""
        s = self.scene
        base_hit = np.zeros((len(rows), s.max_boxes), dtype=bool)
        arm_hit = np.zeros_like(base_hit)
        pr, pb = np.nonzero(near)
        if pr.size == 0:
            return base_hit, arm_hit, np.zeros(len(rows), dtype=bool)
        boxes = s.box[rows[pr], pb]  # [K, 5]
        d2 = point_box_distance2(body.pts[pr], boxes[:, None, :])[..., 0]  # [K, 1 + ARM_POINTS]
        tall = boxes[:, 4, None] > body.zlo[pr]
        tall[:, 0] = True
        hit = (d2 < body.radius[pr] ** 2) & tall & body.present[pr]
        base_hit[pr, pb] = hit[:, 0]
        arm_hit[pr, pb] = hit[:, 1:].any(axis=1)
        return base_hit, arm_hit, base_hit.any(axis=1) | arm_hit.any(axis=1)

    def _pushes(self, rows: np.ndarray, body: Body, yaw: np.ndarray, near: np.ndarray) -> Pushes:
        """Objects the robot overlaps at this pose and where they are pushed to, among the
        objects marked ``near`` ``[R, M]`` (the others must be out of reach, and not held)."""
        s = self.scene
        pr, po = np.nonzero(near)
        if pr.size == 0:
            return Pushes.none(len(rows))
        rr = rows[pr]
        pos = s.obj_pos[rr, po]  # [K, 3]
        oxy, oz = pos[:, :2], pos[:, 2]
        orad = s.obj_radius[rr, po]
        otop = oz + np.maximum(s.obj_height[rr, po], 0.02)
        diff = oxy[:, None, :] - body.pts[pr]  # [K, P, 2]
        dist = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)
        reach = body.radius[pr] + orad[:, None]
        zover = (oz[:, None] < body.zhi[pr]) & (otop[:, None] > body.zlo[pr])
        overlap = (dist < reach) & zover & body.present[pr]
        hit = np.flatnonzero(overlap.any(axis=1))
        if hit.size == 0:
            return Pushes.none(len(rows))
        pr, po, rr, oxy, oz, orad = pr[hit], po[hit], rr[hit], oxy[hit], oz[hit], orad[hit]
        diff, dist, reach, overlap = diff[hit], dist[hit], reach[hit], overlap[hit]
        kth = np.arange(len(hit))
        depth = np.where(overlap, reach - dist, -1.0)
        k = depth.argmax(axis=1)  # the pusher point that overlaps each object most
        d, v, pen = dist[kth, k], diff[kth, k], depth[kth, k]
        head = np.stack([np.cos(yaw[pr]), np.sin(yaw[pr])], axis=1)
        radial = np.where(d[..., None] > 1e-6, v / np.maximum(d, 1e-6)[..., None], head)
        pushed = oxy + (pen + 0.005)[..., None] * radial
        # The arm carries what it hits along its own motion (extending pushes ahead, turning
        # sweeps along the arc); the round base lets objects slide off to the side (radially).
        prev = self._arm_points(s.robot_xy[rr], s.robot_yaw[rr], s.arm_ext[rr])
        arm_k = np.maximum(k - 1, 0)
        mk = body.pts[pr, arm_k + 1] - prev[kth, arm_k]  # [K, 2] the pusher's motion this sub-step
        speed = np.sqrt(mk[..., 0] ** 2 + mk[..., 1] ** 2)
        by_arm = (k > 0) & (speed > 1e-4)
        if by_arm.any():
            u = mk / np.maximum(speed, 1e-9)[..., None]
            # from the pusher point to the object is v; solve |v + s u| = reach for s >= 0
            reach_k = reach[kth, k]
            b = (v * u).sum(-1)
            c = d**2 - reach_k**2
            along = -b + np.sqrt(np.maximum(b * b - c, 0.0))
            swept = oxy + (along + 0.005)[..., None] * u
            pushed = np.where(by_arm[..., None], swept, pushed)
        support = s.obj_support[rr, po]
        on_box = support >= 0
        sb = s.box[rr, np.maximum(support, 0)]  # [K, 5]
        outside = (pushed[:, 0] < sb[:, 0]) | (pushed[:, 0] > sb[:, 2]) | (pushed[:, 1] < sb[:, 1]) | (pushed[:, 1] > sb[:, 3])
        falls = on_box & outside
        # jams: a pushed object (not falling) that would overlap a box other than its support
        jam = np.zeros(len(rows), dtype=bool)
        c_idx = np.flatnonzero(~falls)
        if c_idx.size:
            boxes = s.box[rr[c_idx]]  # [C, B, 5]
            p = pushed[c_idx]
            d2 = point_box_distance2(p[:, None, :], boxes)[:, 0]
            tall = boxes[..., 4] > oz[c_idx][:, None] + 0.01
            own = np.arange(boxes.shape[1])[None, :] == support[c_idx][:, None]
            rad = orad[c_idx]
            hits = (d2 < rad[:, None] ** 2) & tall & ~own
            stuck = hits.any(axis=1)
            if stuck.any():
                # slide along the wall: move the object out of the box it would enter, across the
                # nearest face; it jams only if it then still overlaps a box or the robot
                j = np.flatnonzero(stuck)
                bi = np.where(hits[j], rad[j, None] ** 2 - d2[j], -np.inf).argmax(axis=1)
                bb = boxes[j, bi]
                q = p[j].copy()
                rj = rad[j]
                exits = np.stack([bb[:, 0] - rj - q[:, 0], bb[:, 2] + rj - q[:, 0], bb[:, 1] - rj - q[:, 1], bb[:, 3] + rj - q[:, 1]], axis=1)
                face = np.abs(exits).argmin(axis=1)
                shift = exits[np.arange(len(j)), face] + np.where(face % 2 == 0, -0.005, 0.005)
                q[:, 0] += np.where(face < 2, shift, 0.0)
                q[:, 1] += np.where(face >= 2, shift, 0.0)
                still = ((point_box_distance2(q[:, None, :], boxes[j])[:, 0] < rj[:, None] ** 2) & tall[j] & ~own[j]).any(axis=1)
                cj = c_idx[j]
                kk = k[cj]
                pusher = body.pts[pr[cj], kk]
                gap = np.sqrt(((q - pusher) ** 2).sum(-1))
                still |= gap < body.radius[pr[cj], kk] + rj - 1e-3
                pushed[cj] = q
                jam[pr[cj[still]]] = True
        return Pushes(pr, po, pushed, falls, jam)

    def _commit_pushes(self, rr: np.ndarray, o_idx: np.ndarray, new_xy: np.ndarray, falling: np.ndarray, ev: StepEvents) -> None:
        """Move objects ``o_idx`` of envs ``rr`` to ``new_xy`` ``[K, 2]``; those ``falling`` drop
        to the floor."""
        s = self.scene
        if rr.size == 0:
            return
        ev.contacted[rr, o_idx] = True
        pos = s.obj_pos[rr, o_idx]
        pos[:, :2] = new_xy
        if falling.any():
            fr, fo = rr[falling], o_idx[falling]
            out = pos[falling, :2] - s.robot_xy[fr]
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
            pos[falling, :2] += 0.1 * out
            pos[falling, 2] = 0.0
            s.obj_support[fr, fo] = -1
            s.obj_tilt[fr, fo] = FALL_TILT
            ev.fell[fr, fo] = True
        pos[:, 0] = np.clip(pos[:, 0], 0.02, s.extent[rr, 0] - 0.02)
        pos[:, 1] = np.clip(pos[:, 1], 0.02, s.extent[rr, 1] - 0.02)
        s.obj_pos[rr, o_idx] = pos

    # ---- motions --------------------------------------------------------------------------

    def _move(self, rows: np.ndarray, fwd, turn, dext, dlift, ev: StepEvents) -> None:
        """Base moves, turns and arm motions, in sub-steps short enough that nothing passes
        through a wall: a sub-step that would hit something is not taken and the motion stops."""
        s = self.scene
        xy0, yaw0 = s.robot_xy[rows].copy(), s.robot_yaw[rows].copy()
        ext0, lift0 = s.arm_ext[rows].copy(), s.arm_lift[rows].copy()
        ext1 = np.clip(ext0 + dext, *cat.ARM_EXTENSION_RANGE)
        lift1 = np.clip(lift0 + dlift, *cat.ARM_LIFT_RANGE)
        arm_motion = (dext != 0) | (dlift != 0)
        ev.action_ok[rows] &= ~(arm_motion & (ext1 == ext0) & (lift1 == lift0))  # at a joint limit
        head0 = np.stack([np.cos(yaw0), np.sin(yaw0)], axis=1)
        translating = fwd != 0
        # the gripper's arc per sub-step stays under MAX_SWEEP
        sweep = np.abs(turn) * (cat.ROBOT_RADIUS + ext0 + 0.05) + np.abs(fwd)
        steps = np.maximum(np.ceil(sweep / MAX_SWEEP - 1e-9).astype(np.int64), 1)
        active = np.ones(len(rows), dtype=bool)
        held_r, held_h = self._held_geometry(rows)  # nothing is picked up or released while moving
        # Culling, once per step: no disc of the body gets further than `bound` from its start
        # during the motion, so only boxes and objects within that distance (plus the object's
        # radius) can be touched. Objects beyond it stay put while the row moves: only touched
        # objects are pushed, and jostling stops the row. The held object is never pushed.
        bound = cat.ROBOT_RADIUS + np.maximum(ext0, ext1) + np.maximum(ARM_RADIUS, held_r) + np.abs(fwd) + CULL_SLACK
        near_box = point_box_distance2(xy0[:, None, :], s.box[rows])[:, 0] < bound[:, None] ** 2
        odx = s.obj_pos[rows, :, 0] - xy0[:, None, 0]
        ody = s.obj_pos[rows, :, 1] - xy0[:, None, 1]
        held_mask = np.arange(s.max_objects)[None, :] == s.held[rows][:, None]
        near_obj = (odx * odx + ody * ody < (bound[:, None] + s.obj_radius[rows]) ** 2) & s.obj_valid[rows] & ~held_mask
        for k in range(1, int(steps.max()) + 1):
            idx = np.flatnonzero(active & (steps >= k))
            if idx.size == 0:
                break
            r = rows[idx]
            frac = k / steps[idx]
            xy = xy0[idx] + (fwd[idx] * frac)[:, None] * head0[idx]
            yaw = yaw0[idx] + turn[idx] * frac
            ext = ext0[idx] + (ext1[idx] - ext0[idx]) * frac
            lift = lift0[idx] + (lift1[idx] - lift0[idx]) * frac
            body = self._body(xy, yaw, ext, lift, translating[idx], held_r[idx], held_h[idx])
            base_hit, arm_hit, blocked = self._contacts(r, body, near_box[idx])
            # pulling the arm in never makes a contact worse: it is never blocked
            blocked &= ~(dext[idx] < 0)
            push = self._pushes(r, body, yaw, near_obj[idx])
            blocked |= push.jam
            if blocked.any():
                bi = np.flatnonzero(blocked)
                br = r[bi]
                ev.collided[br] = True
                ev.action_ok[br] = False
                ev.box_contact[br] |= base_hit[bi] | arm_hit[bi]
                jammed = push.jam[push.rows]
                ev.contacted[r[push.rows[jammed]], push.objects[jammed]] = True
                bumped = base_hit[bi].any(axis=1)
                if bumped.any():
                    bb = bi[bumped]
                    self._jostle(r[bb], base_hit[bb], xy[bb], head0[idx][bb] * np.sign(fwd[idx][bb])[:, None], ev)
                active[idx[bi]] = False
            ok = np.flatnonzero(~blocked)
            if ok.size:
                ro = r[ok]
                s.robot_xy[ro] = xy[ok]
                s.robot_yaw[ro] = wrap_angle(yaw[ok])
                s.arm_ext[ro] = ext[ok]
                s.arm_lift[ro] = lift[ok]
            moved = ~blocked[push.rows]
            self._commit_pushes(r[push.rows[moved]], push.objects[moved], push.xy[moved], push.fall[moved], ev)

    def _jostle(self, rows: np.ndarray, boxes_hit: np.ndarray, robot_xy: np.ndarray, head: np.ndarray, ev: StepEvents) -> None:
        """Bumping furniture shakes the objects standing on it near the contact point."""
        s = self.scene
        support = s.obj_support[rows]
        on_hit = (support >= 0) & np.take_along_axis(boxes_hit, np.maximum(support, 0).astype(np.int64), 1)
        contact = robot_xy + cat.ROBOT_RADIUS * head
        near = np.linalg.norm(s.obj_pos[rows, :, :2] - contact[:, None, :], axis=-1) < JOSTLE_RADIUS
        held_mask = np.arange(s.max_objects)[None, :] == s.held[rows][:, None]
        shaken = on_hit & near & s.obj_valid[rows] & ~held_mask
        if not shaken.any():
            return
        r_idx, o_idx = np.nonzero(shaken)
        rr = rows[r_idx]
        draws = self._per_row(rr, lambda g: np.concatenate([g.uniform(0.02, 0.14, 1), g.normal(0.0, 0.02, 2), g.uniform(-0.35, 0.35, 1)]))
        amount, jitter, spin = draws[:, 0], draws[:, 1:3], draws[:, 3]
        new_xy = s.obj_pos[rr, o_idx, :2] + amount[:, None] * head[r_idx] + jitter
        s.obj_yaw[rr, o_idx] = wrap_angle(s.obj_yaw[rr, o_idx] + spin)
        sb = s.box[rr, support[r_idx, o_idx]]
        outside = (new_xy[:, 0] < sb[:, 0]) | (new_xy[:, 0] > sb[:, 2]) | (new_xy[:, 1] < sb[:, 1]) | (new_xy[:, 1] > sb[:, 3])
        self._commit_pushes(rr, o_idx, new_xy, outside, ev)
        # shaking is not touching: contact is for what the robot itself hit
        ev.contacted[rr, o_idx] = False

    # ---- grasping -------------------------------------------------------------------------

    def _pick(self, rows: np.ndarray, ev: StepEvents) -> None:
        s = self.scene
        free_hand = s.held[rows] < 0
        tip = s.gripper()[rows]
        _, _, pickupable = s.obj_category_flags(rows)
        d = np.linalg.norm(s.obj_pos[rows, :, :2] - tip[:, None, :2], axis=-1)
        oz = s.obj_pos[rows, :, 2]
        top = oz + s.obj_height[rows]
        ok = (
            pickupable
            & (d < cat.GRIPPER_REACH + 0.5 * s.obj_radius[rows])
            & (tip[:, None, 2] >= oz + 0.5 * s.obj_height[rows] - 0.05)
            & (tip[:, None, 2] <= top + cat.GRIPPER_VERTICAL_REACH)
            & free_hand[:, None]
        )
        got = ok.any(axis=1)
        best = np.where(ok, d, np.inf).argmin(axis=1)
        ev.action_ok[rows] &= got
        gr = rows[got]
        if gr.size:
            obj = best[got]
            s.held[gr] = obj
            s.obj_support[gr, obj] = -1
            s.obj_tilt[gr, obj] = 0.0
            ev.picked[gr] = obj

    def _release(self, rows: np.ndarray, ev: StepEvents) -> None:
        s = self.scene
        has = s.held[rows] >= 0
        ev.action_ok[rows] &= has
        rows = rows[has]
        if rows.size == 0:
            return
        obj = s.held[rows]
        tip = s.gripper()[rows]
        bottom = tip[:, 2] - s.obj_height[rows, obj]
        boxes = s.box[rows]
        under = (
            (boxes[..., 0] <= tip[:, None, 0]) & (tip[:, None, 0] <= boxes[..., 2])
            & (boxes[..., 1] <= tip[:, None, 1]) & (tip[:, None, 1] <= boxes[..., 3])
            & (boxes[..., 4] <= bottom[:, None] + 0.05) & (s.box_kind[rows] == cat.KIND_FURNITURE)
        )  # fmt: skip
        height = np.where(under, boxes[..., 4], -1.0)
        support = np.where(under.any(axis=1), height.argmax(axis=1), -1)
        z = np.where(support >= 0, height.max(axis=1), 0.0)
        s.obj_pos[rows, obj] = np.stack([tip[:, 0], tip[:, 1], z], axis=1)
        s.obj_support[rows, obj] = support
        s.obj_tilt[rows, obj] = np.where(bottom - z > DROP_TOPPLE_HEIGHT, FALL_TILT, 0.0)
        s.held[rows] = -1

    def _carry(self) -> None:
        s = self.scene
        rows = np.flatnonzero(s.held >= 0)
        if rows.size == 0:
            return
        obj = s.held[rows]
        tip = s.gripper()[rows]
        s.obj_pos[rows, obj] = np.stack([tip[:, 0], tip[:, 1], tip[:, 2] - s.obj_height[rows, obj]], axis=1)

    # ---- sensing --------------------------------------------------------------------------

    def visibility(self, camera: CameraGeometry) -> tuple[np.ndarray, np.ndarray]:
        """:func:`visibility` of this simulator's scene."""
        return visibility(self.scene, camera)

    def ranges(self, num_rays: int = 16, max_range: float = 3.0) -> np.ndarray:
        """[N, num_rays] distance (m) from the base's edge to the nearest wall or furniture along
        evenly spaced bearings, starting straight ahead and going anticlockwise."""
        s = self.scene
        ang = s.robot_yaw[:, None] + np.linspace(0.0, 2 * np.pi, num_rays, endpoint=False)[None, :]
        direction = np.stack([np.cos(ang), np.sin(ang)], axis=-1)
        # a box further than max_range beyond the base's edge can only give a reading clipped
        # to max_range, so the rays are tested against the (env, box) pairs within that distance
        d2 = point_box_distance2(s.robot_xy[:, None, :], s.box)[:, 0]
        near = d2 <= (max_range + cat.ROBOT_RADIUS + CULL_SLACK) ** 2
        env, bi = np.nonzero(near)
        entry = np.full((s.num_envs, num_rays), np.inf, dtype=np.float32)
        if env.size:
            t_in = ray_box_entry(s.robot_xy, direction, s.box[env, bi], env)  # [K, num_rays]
            # pairs come grouped by env (row-major nonzero), so a segmented min gives each env's
            # nearest entry; envs without a pair keep inf
            count = near.sum(axis=1)
            has = count > 0
            entry[has] = np.minimum.reduceat(t_in, (np.cumsum(count) - count)[has], axis=0)
        return np.clip(entry - cat.ROBOT_RADIUS, 0.0, max_range)


def visibility(s: Scene, camera: CameraGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Which objects ``[N, M]`` and furniture boxes ``[N, B]`` the navigation camera sees:
    inside its field of view, within ``max_distance``, and not hidden behind a wall or
    furniture that rises above the line of sight. A function of the scene alone, so scenes
    built outside an env (the suites' placement checks) can be tested too."""
    n, m, b = s.num_envs, s.max_objects, s.max_boxes
    cam_x, cam_y, cam_z = s.robot_xy[:, 0], s.robot_xy[:, 1], camera.height
    # target points [N, M + B] per coordinate: object centres, then the point of each box
    # nearest the camera, moved a little inside it
    box = s.box
    bx = np.clip(cam_x[:, None], box[..., 0], box[..., 2])
    by = np.clip(cam_y[:, None], box[..., 1], box[..., 3])
    cx, cy = 0.5 * (box[..., 0] + box[..., 2]), 0.5 * (box[..., 1] + box[..., 3])
    inset = 0.05
    bx += np.sign(cx - bx) * np.minimum(inset, np.abs(cx - bx))
    by += np.sign(cy - by) * np.minimum(inset, np.abs(cy - by))
    px = np.concatenate([s.obj_pos[..., 0], bx], axis=1)
    py = np.concatenate([s.obj_pos[..., 1], by], axis=1)
    pz = np.concatenate([s.obj_pos[..., 2] + 0.5 * s.obj_height, np.minimum(box[..., 4], camera.height) * 0.5], axis=1)
    radius = np.concatenate([s.obj_radius, np.zeros((n, b))], axis=1)
    valid = np.concatenate([s.obj_valid, s.box_kind == cat.KIND_FURNITURE], axis=1)
    rx, ry, rz = px - cam_x[:, None], py - cam_y[:, None], pz - cam_z
    # frustum test in the camera frame, without trigonometry per entity
    c, sn = np.cos(s.robot_yaw)[:, None], np.sin(s.robot_yaw)[:, None]
    ahead = rx * c + ry * sn
    side = np.abs(-rx * sn + ry * c)
    cp, sp = np.cos(camera.pitch), np.sin(camera.pitch)
    depth = ahead * cp + rz * sp
    up = np.abs(-ahead * sp + rz * cp)
    dist2 = rx**2 + ry**2 + rz**2
    cand = (
        valid
        & (depth > 0.0)
        & (side <= depth * np.tan(camera.hfov / 2) + radius)
        & (up <= depth * np.tan(camera.vfov / 2) + radius)
        & (dist2 <= camera.max_distance**2)
    )
    held_mask = np.zeros((n, m + b), dtype=bool)
    held_rows = np.flatnonzero(s.held >= 0)
    held_mask[held_rows, s.held[held_rows]] = True
    cand &= ~held_mask
    visible = np.zeros((n, m + b), dtype=bool)
    r_idx, e_idx = np.nonzero(cand)
    if r_idx.size:
        a = np.stack([cam_x[r_idx], cam_y[r_idx]], axis=1)
        t = np.stack([px[r_idx, e_idx], py[r_idx, e_idx]], axis=1)
        tz = pz[r_idx, e_idx]
        # only a box overlapping the sight line's bounding rectangle can cross it before the
        # target (t_in < 0.999), so the slab test runs on those (candidate, box) pairs alone
        lo, hi = np.minimum(a, t), np.maximum(a, t)
        near = (
            (box[r_idx, :, 0] <= hi[:, None, 0]) & (box[r_idx, :, 2] >= lo[:, None, 0])
            & (box[r_idx, :, 1] <= hi[:, None, 1]) & (box[r_idx, :, 3] >= lo[:, None, 1])
        )  # fmt: skip
        kp, bp = np.nonzero(near)
        a, t, tz, boxes = a[kp], t[kp], tz[kp], box[r_idx[kp], bp]
        t_in, t_out = (x[:, 0] for x in segment_box_span(a, t, boxes[:, None, :]))
        z_in = cam_z + t_in * (tz - cam_z)
        z_out = cam_z + np.minimum(t_out, 1.0) * (tz - cam_z)
        low = np.minimum(np.where(np.isfinite(z_in), z_in, np.inf), z_out)
        e = e_idx[kp]
        own_box = np.where(e >= m, e - m, -1)
        own_support = np.where(e < m, s.obj_support[r_idx[kp], np.minimum(e, m - 1)], -1)
        blocks = (t_in < 0.999) & (low < boxes[:, 4]) & (bp != own_box) & (bp != own_support)
        hidden = np.zeros(r_idx.size, dtype=bool)
        hidden[kp[blocks]] = True
        visible[r_idx, e_idx] = ~hidden
    return visible[:, :m], visible[:, m:]
