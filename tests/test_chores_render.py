"""Safety-CHORES cameras, top-down view and episode files: hand-made scenes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores import house as houses
from cmdp.envs.chores import render
from cmdp.envs.chores.render import CameraSpec, RenderStyle, render_manip, render_nav, render_topdown, write_episode
from cmdp.envs.chores.scene import Scene
from cmdp.errors import ConfigError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
ROOM = 6.0  # m, the side of the hand-made room


def room(boxes=(), objects=()) -> houses.House:
    """A ROOM x ROOM room: four outer walls, then ``boxes`` (x0, y0, x1, y1, height, kind) and
    ``objects`` (category, x, y, z, support)."""
    t = cat.WALL_THICKNESS
    walls = [(-t, -t, ROOM + t, 0, cat.WALL_HEIGHT), (-t, ROOM, ROOM + t, ROOM + t, cat.WALL_HEIGHT),
             (-t, 0, 0, ROOM, cat.WALL_HEIGHT), (ROOM, 0, ROOM + t, ROOM, cat.WALL_HEIGHT)]  # fmt: skip
    kinds = [cat.KIND_WALL] * 4 + [b[5] for b in boxes]
    types = [-1] * 4 + [cat.FURNITURE_INDEX["counter"] if b[5] == cat.KIND_FURNITURE else -1 for b in boxes]
    return houses.House(
        ROOM, ROOM, np.array(walls + [b[:5] for b in boxes], dtype=float), np.array(kinds, np.int8),
        np.array(types, np.int16), np.array([o[1:4] for o in objects], dtype=float).reshape(-1, 3),
        np.zeros(len(objects)), np.array([cat.CATEGORY_INDEX[o[0]] for o in objects], np.int16),
        np.array([o[4] for o in objects], np.int16),
    )  # fmt: skip


def scene_of(house: houses.House, pose=(1.5, 3.0, 0.0), num_envs: int = 1) -> Scene:
    scene = Scene(num_envs, 16, 16)
    for row in range(num_envs):
        scene.load(row, house, pose)
    return scene


def is_color(image: np.ndarray, rgb) -> np.ndarray:
    """Pixels whose colour is a shade of the pure colour ``rgb`` (one channel on, two off)."""
    on = np.array(rgb) > 0
    return (image[..., on] > 60).all(-1) & (image[..., ~on] < 25).all(-1)


# ---- navigation camera ----------------------------------------------------------------------


def test_a_red_wall_ahead_fills_the_centre_and_vanishes_behind_the_robot():
    house = room(boxes=[(4.0, 0.0, 4.1, ROOM, cat.WALL_HEIGHT, cat.KIND_WALL)])
    scene = scene_of(house)
    scene.box_color[0, 4] = RED
    image = render_nav(scene)[0]
    red = is_color(image, RED)
    assert red[:, 28:36].mean() > 0.5  # the centre columns look at the wall from floor to ceiling band
    scene.robot_yaw[0] = math.pi
    assert not is_color(render_nav(scene)[0], RED).any()


def test_a_nearer_object_hides_a_farther_one():
    house = room(objects=[("vase", 2.5, 3.0, 0.0, -1), ("vase", 4.0, 3.0, 0.0, -1)])
    scene = scene_of(house)
    scene.obj_height[0, :2] = 2.0  # taller than the camera: the near one covers the far one's span
    scene.obj_color[0, 0], scene.obj_color[0, 1] = BLUE, RED
    both = render_nav(scene)[0]
    scene.obj_valid[0, 0] = False
    far_alone = render_nav(scene)[0]
    far_pixels = is_color(far_alone, RED)
    assert far_pixels.sum() > 20
    assert not is_color(both, RED).any()
    assert is_color(both[far_pixels], BLUE).all()


def test_an_object_on_a_counter_is_seen_from_above_but_not_behind_a_wall():
    counter = (3.0, 2.5, 3.6, 3.5, 0.9, cat.KIND_FURNITURE)
    house = room(boxes=[counter], objects=[("bowl", 3.3, 3.0, 0.9, 4)])  # low: only its top rises above the counter
    scene = scene_of(house)
    scene.obj_color[0, 0] = GREEN
    assert is_color(render_nav(scene)[0], GREEN).sum() > 3
    blocked = room(
        boxes=[counter, (2.4, 0.0, 2.5, ROOM, cat.WALL_HEIGHT, cat.KIND_WALL)], objects=[("bowl", 3.3, 3.0, 0.9, 4)]
    )
    scene = scene_of(blocked)
    scene.obj_color[0, 0] = GREEN
    assert not is_color(render_nav(scene)[0], GREEN).any()


def test_the_wall_meets_the_floor_where_perspective_puts_it():
    house = room()
    for pitch in (-20.0, 0.0, 10.0):
        camera = CameraSpec(height=61, width=65, pitch=pitch)
        scene = scene_of(house, pose=(1.0, 3.0, 0.0))
        scene.box_color[0, 3] = BLUE  # the east wall, 5 m ahead
        column = is_color(render_nav(scene, camera)[0], BLUE)[:, 32]
        rows = np.flatnonzero(column)
        step = math.radians(camera.vertical_fov) / camera.height
        top = math.radians(pitch) + math.radians(camera.vertical_fov) / 2 - step / 2
        base = math.atan2(-camera.mount_height, 5.0)  # elevation of the wall's foot
        assert rows.max() == math.floor((top - base) / step)
    # looking further down shows more floor (brown: red well above blue) and less ceiling
    def floor_pixels(image):
        rgb = image.astype(int)
        return (rgb[..., 0] - rgb[..., 2] > 0.25 * rgb[..., 0]).sum()

    floors = [floor_pixels(render_nav(scene, CameraSpec(pitch=p))[0]) for p in (5.0, -10.0, -25.0)]
    assert floors[0] < floors[1] < floors[2]


def test_the_same_state_gives_the_same_image_and_styles_change_it_as_specified():
    house = houses.generate_house(3)
    free = np.argwhere(houses.HouseGrid(house).free)
    iy, ix = free[len(free) // 3]
    scene = Scene(1, 64, 96)
    scene.load(0, house, ((ix + 0.5) * 0.1, (iy + 0.5) * 0.1, 1.0))
    plain = render_nav(scene)
    assert np.array_equal(plain, render_nav(scene))
    dim = render_nav(scene, style=RenderStyle(brightness=0.5)).astype(int)
    assert np.abs(dim - plain.astype(int) * 0.5).max() <= 1.0
    flat = render_nav(scene, style=RenderStyle(contrast=0.0))
    assert (flat == 128).all()

    # hue: objects and structure turn separately
    one = room(objects=[("vase", 3.0, 3.0, 0.0, -1)])
    scene = scene_of(one)
    scene.obj_color[0, 0] = RED
    scene.box_color[0, 3] = RED
    base = render_nav(scene)[0]
    turned = render_nav(scene, style=RenderStyle(object_hue=120.0))[0]
    assert is_color(base, RED).sum() > is_color(turned, RED).sum() > 0  # the wall stays red
    assert is_color(turned, GREEN).sum() > 0 and not is_color(base, GREEN).any()
    walls_turned = render_nav(scene, style=RenderStyle(structure_hue=240.0))[0]
    assert is_color(walls_turned, BLUE).sum() > is_color(walls_turned, RED).sum() > 0
    # a per-category colour replaces the catalog's
    scene.obj_color[0, 0] = cat.CATEGORY_COLOR[cat.CATEGORY_INDEX["vase"]]
    painted = render_nav(scene, style=RenderStyle(category_colors={"vase": GREEN}))[0]
    assert is_color(painted, GREEN).sum() > 0


def test_a_fallen_object_is_drawn_low_and_wide():
    house = room(objects=[("vase", 3.0, 3.0, 0.0, -1)])
    scene = scene_of(house)
    scene.obj_color[0, 0] = RED
    scene.obj_yaw[0, 0] = math.pi / 2  # lying across the line of sight
    upright = np.argwhere(is_color(render_nav(scene)[0], RED))
    scene.obj_tilt[0, 0] = math.pi / 2
    fallen = np.argwhere(is_color(render_nav(scene)[0], RED))
    height = lambda px: np.ptp(px[:, 0]) + 1  # noqa: E731
    width = lambda px: np.ptp(px[:, 1]) + 1  # noqa: E731
    assert height(fallen) < height(upright) and width(fallen) > 1.5 * width(upright)


# ---- manipulation camera --------------------------------------------------------------------


def test_the_manipulation_camera_shows_the_held_object():
    house = room(objects=[("mug", 0.5, 3.0, 0.0, -1)])
    scene = scene_of(house)
    scene.obj_color[0, 0] = GREEN
    assert not is_color(render_manip(scene)[0], GREEN).any()  # the mug is behind the robot
    scene.held[0] = 0
    tip = scene.gripper()[0]
    scene.obj_pos[0, 0] = (tip[0], tip[1], tip[2] - scene.obj_height[0, 0])  # as the simulator carries it
    image = render_manip(scene)[0]
    rows, cols = np.nonzero(is_color(image, GREEN))
    assert rows.size > 20
    assert rows.mean() > image.shape[0] / 2 and abs(cols.mean() - image.shape[1] / 2) < 6


# ---- shapes, batches, configuration ---------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (224, 384), (17, 40)])
def test_images_have_the_asked_shape(size):
    scene = scene_of(room(objects=[("mug", 3.0, 3.0, 0.0, -1)]), num_envs=2)
    for draw in (render_nav, render_manip):
        image = draw(scene, CameraSpec(height=size[0], width=size[1]) if draw is render_nav else CameraSpec.manipulation(height=size[0], width=size[1]))
        assert image.shape == (2, *size, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
        assert draw(scene, rows=[]).shape == (0, 64, 64, 3)


def test_a_batch_renders_each_env_as_if_alone():
    scene = Scene(6, 64, 96)
    for row in range(6):
        house = houses.generate_house(10 + row)
        free = np.argwhere(houses.HouseGrid(house).free)
        iy, ix = free[(row * 37) % len(free)]
        scene.load(row, house, ((ix + 0.5) * 0.1, (iy + 0.5) * 0.1, 0.9 * row))
    scene.arm_ext[1], scene.arm_lift[1] = 0.4, 0.5
    scene.obj_tilt[2, :3] = math.pi / 2
    scene.held[3] = 0
    for draw in (render_nav, render_manip):
        batch = draw(scene)
        for row in range(6):
            assert np.array_equal(batch[row], draw(scene, rows=[row])[0]), (draw.__name__, row)
        assert np.array_equal(draw(scene, rows=[4, 1]), batch[[4, 1]])


def test_bad_camera_and_style_settings_are_refused():
    with pytest.raises(ConfigError, match="height"):
        CameraSpec(height=4)
    with pytest.raises(ConfigError, match="width"):
        CameraSpec(width=5000)
    with pytest.raises(ConfigError, match="pitch"):
        CameraSpec(pitch=-70.0)  # with 59 deg of field of view the view would pass the vertical
    with pytest.raises(ConfigError, match="brightness"):
        RenderStyle(brightness=-1.0)
    with pytest.raises(ConfigError, match="unknown category 'teapot'"):
        RenderStyle(category_colors={"teapot": RED})
    with pytest.raises(ConfigError, match="rows"):
        render_nav(scene_of(room()), rows=[3])
    assert abs(CameraSpec().horizontal_fov - 88.2) < 0.1
    assert abs(CameraSpec().replace(vertical_fov=40.0).horizontal_fov - 63.9) < 0.1  # the same 384x224 frame
    assert CameraSpec(horizontal_fov=70.0).replace(vertical_fov=40.0).horizontal_fov == 70.0
    assert RenderStyle(category_colors={"mug": [1, 2, 3]}) == RenderStyle(category_colors=(("mug", (1, 2, 3)),))


# ---- top-down view and episode files --------------------------------------------------------


def test_the_top_down_view_draws_the_robot_path_and_events_where_they_are():
    house = room()
    scene = scene_of(house, pose=(1.0, 1.0, 0.0))
    size = 200
    image = render_topdown(scene, 0, size=size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8

    def dark_centre(img):  # of the robot's disc
        ys, xs = np.nonzero((img == (35, 35, 40)).all(-1))
        return xs.mean(), ys.mean()

    x1, y1 = dark_centre(image)
    scene.robot_xy[0] = (4.5, 4.0)
    x2, y2 = dark_centre(render_topdown(scene, 0, size=size))
    scale = (x2 - x1) / 3.5
    assert scale > 20 and abs((y1 - y2) - 3.0 * scale) < 3  # north is up
    events = [(2.0, 2.0, 4)]  # dangerous equipment
    marked = render_topdown(scene, 0, size=size, path=[(1.0, 1.0), (4.5, 4.0)], events=events)
    yellow = (marked[..., 0] > 200) & (marked[..., 1] > 180) & (marked[..., 2] < 60)
    ys, xs = np.nonzero(yellow[: size - 20])
    assert abs(xs.mean() - (x1 + scale)) < 8 and abs(ys.mean() - (y1 - scale)) < 8
    with pytest.raises(ConfigError, match="component"):
        render_topdown(scene, 0, events=[(1.0, 1.0, 9)])


def test_an_episode_gif_keeps_its_frames(tmp_path):
    from PIL import Image

    frames = [np.full((24, 32, 3), 20 * i, dtype=np.uint8) for i in range(6)]
    path = write_episode(frames, tmp_path / "episode.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.size == (32, 24)
        assert gif.info["duration"] == 200
    with pytest.raises(ConfigError, match="uint8"):
        write_episode([frames[0], frames[0][:, :10]], tmp_path / "bad.gif")
    with pytest.raises(ConfigError, match=".gif or .mp4"):
        write_episode(frames, tmp_path / "episode.avi")


def test_writing_mp4_without_imageio_names_the_packages(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(ConfigError, match="imageio-ffmpeg"):
        write_episode([np.zeros((8, 8, 3), np.uint8)], tmp_path / "episode.mp4")
    assert render.COST_COLORS and len(render.COST_COLORS) == 5


def test_a_face_thinner_than_a_row_paints_nothing_else():
    # a plate on a low table 1.3 to 2 m away: its rim is less than a pixel row tall, and at
    # some distances it falls between two row centres
    table = (2.6, 2.5, 3.9, 3.5, 0.45, cat.KIND_FURNITURE)
    for x in np.linspace(2.8, 3.5, 8):
        scene = scene_of(room(boxes=[table], objects=[("plate", x, 3.0, 0.45, 4)]))
        scene.obj_color[0, 0] = GREEN
        rows, cols = np.nonzero(is_color(render_nav(scene)[0], GREEN))
        assert rows.size > 10 and np.ptp(rows) <= 6, x


def reference_image(scene: Scene, row: int, camera: CameraSpec, cam_xyz, arm: bool) -> np.ndarray:
    """What the camera sees, traced independently per pixel in float64: the nearest point
    where the pixel's ray enters a prism (its footprint interval and its height range in 3-D),
    else the floor or the ceiling; every prism flat in its base colour."""
    groups = render._scene_prisms(scene, np.array([row]), RenderStyle(), arm)
    H, W = camera.height, camera.width
    hfov, vfov = math.radians(camera.horizontal_fov), math.radians(camera.vertical_fov)
    az = scene.robot_yaw[row] + hfov / 2 - (np.arange(W) + 0.5) / W * hfov
    el = math.radians(camera.pitch) + vfov / 2 - (np.arange(H) + 0.5) / H * vfov
    dx, dy, slope = np.cos(az)[None, :], np.sin(az)[None, :], np.tan(el)[:, None]
    cx, cy, cz = cam_xyz
    best = np.full((H, W), np.inf)
    image = np.where((slope < 0)[..., None], np.array(cat.FLOOR_COLOR), np.array(cat.CEILING_COLOR) * render.CEILING_SHADE)
    image = np.broadcast_to(image, (H, W, 3)).copy()
    for kind, group in zip(("box", "rect", "disc"), groups):
        g = {name: getattr(group, name)[0].astype(float) for name in render._FIELDS}
        for p in np.flatnonzero(group.valid[0]):
            rx, ry = cx - g["cx"][p], cy - g["cy"][p]
            if kind == "disc":
                along = -(dx * rx + dy * ry)
                half2 = g["half_a"][p] ** 2 - (rx * rx + ry * ry - along * along)
                half = np.sqrt(np.maximum(half2, 0))
                enter, leave = np.where(half2 > 0, along - half, np.inf), along + half
            else:
                ux, uy = g["ux"][p], g["uy"][p]
                spans = []
                for q, k, half in ((rx * ux + ry * uy, dx * ux + dy * uy, g["half_a"][p]), (ry * ux - rx * uy, dy * ux - dx * uy, g["half_b"][p])):
                    with np.errstate(divide="ignore", invalid="ignore"):
                        t0, t1 = (-half - q) / k, (half - q) / k
                    inside = np.abs(q) <= half
                    spans.append((np.where(k == 0, np.where(inside, -np.inf, np.inf), np.minimum(t0, t1)),
                                  np.where(k == 0, np.where(inside, np.inf, -np.inf), np.maximum(t0, t1))))  # fmt: skip
                enter, leave = np.maximum(spans[0][0], spans[1][0]), np.minimum(spans[0][1], spans[1][1])
            enter = np.maximum(enter, render.NEAR_CLIP)
            with np.errstate(divide="ignore", invalid="ignore"):
                lo_z, hi_z = (g["z0"][p] - cz) / slope, (g["z1"][p] - cz) / slope
            s_lo, s_hi = np.minimum(lo_z, hi_z), np.maximum(lo_z, hi_z)
            first = np.maximum(enter, s_lo)
            hit = (first <= np.minimum(leave, s_hi)) & (leave > enter) & (first < best)
            best = np.where(hit, first, best)
            image[hit] = [g["red"][p], g["green"][p], g["blue"][p]]
    return image.round().astype(np.uint8)


def test_cameras_agree_with_a_per_pixel_ray_tracer(monkeypatch):
    # flat colours, one per prism, so every pixel names the prism it shows
    for name, value in (("DISTANCE_FALLOFF", 0.0), ("FACE_SHADE_MIN", 1.0), ("CYLINDER_SHADE_MIN", 1.0),
                        ("TOP_FACE_SHADE", 1.0), ("BOTTOM_FACE_SHADE", 1.0), ("ARM_COLOR", (1, 2, 3)),
                        ("FINGER_COLOR", (4, 5, 6))):  # fmt: skip
        monkeypatch.setattr(render, name, value)
    rng = np.random.default_rng(0)
    envs = 6
    scene = Scene(envs, 64, 96)
    for row in range(envs):
        house = houses.generate_house(20 + row, houses.HouseParams(surface_clutter=4.0, floor_clutter=0.3))
        free = np.argwhere(houses.HouseGrid(house).free)
        iy, ix = free[rng.integers(len(free))]
        scene.load(row, house, ((ix + 0.5) * 0.1, (iy + 0.5) * 0.1, rng.uniform(-np.pi, np.pi)))
    scene.box_color[:] = rng.integers(20, 236, scene.box_color.shape)
    scene.obj_color[:] = rng.integers(20, 236, scene.obj_color.shape)
    scene.obj_tilt[:, ::5] = math.pi / 2
    scene.obj_yaw[:] = rng.uniform(-np.pi, np.pi, scene.obj_yaw.shape)
    scene.arm_ext[:] = rng.uniform(0.0, 0.5, envs)
    scene.arm_lift[:] = rng.uniform(0.3, 1.1, envs)
    scene.held[1], scene.obj_tilt[1, 0] = 0, 0.0  # carried upright below the gripper, as the simulator does
    tip = scene.gripper()[1]
    scene.obj_pos[1, 0] = (tip[0], tip[1], tip[2] - scene.obj_height[1, 0])
    mismatched = total = 0
    for pitch in (-20.0, 0.0, 15.0):
        nav = CameraSpec(height=48, width=64, pitch=pitch)
        manip = CameraSpec.manipulation(height=48, width=64, pitch=pitch - 25.0)
        images = render_nav(scene, nav), render_manip(scene, manip)
        for row in range(envs):
            cam_nav = (*scene.robot_xy[row], nav.mount_height)
            grip = scene.gripper()[row]
            cam_manip = (grip[0] + manip.forward_offset * math.cos(scene.robot_yaw[row]),
                         grip[1] + manip.forward_offset * math.sin(scene.robot_yaw[row]), grip[2] + manip.mount_height)  # fmt: skip
            for image, camera, cam, arm in ((images[0], nav, cam_nav, True), (images[1], manip, cam_manip, False)):
                expected = reference_image(scene, row, camera, cam, arm)
                mismatched += (image[row] != expected).any(-1).sum()
                total += expected.shape[0] * expected.shape[1]
    assert mismatched / total < 0.001


# ---- object ids and target boxes (SPOC's detection sensors) ---------------------------------------


@pytest.mark.parametrize("camera", [render_nav, render_manip])
def test_object_ids_mark_exactly_the_pixels_each_object_paints(camera):
    """Recolouring one object changes exactly the pixels the id image gives it, occlusions included."""
    counter = (2.6, 2.2, 3.4, 3.8, 0.9, cat.KIND_FURNITURE)
    house = room(
        boxes=[counter],
        objects=[("vase", 2.2, 3.0, 0.0, -1), ("mug", 2.9, 2.8, 0.9, 4), ("bowl", 3.1, 3.3, 0.9, 4), ("apple", 4.5, 3.2, 0.0, -1)],
    )  # fmt: skip
    scene = scene_of(house, pose=(1.2, 3.0, 0.0))
    scene.obj_height[0, 0] = 1.2  # the vase hides part of what stands behind it
    image, ids = camera(scene, ids=True)
    assert (image == camera(scene)).all() and ids.dtype == np.int16 and ids.shape == image.shape[:3]
    shown = set(np.unique(ids[0]).tolist()) - {-1}
    assert shown, "the scene should put some object in view"
    for obj in range(4):
        old = scene.obj_color[0, obj].copy()
        scene.obj_color[0, obj] = (255, 0, 255) if tuple(old) != (255, 0, 255) else (0, 255, 0)
        changed = (camera(scene)[0] != image[0]).any(-1)
        scene.obj_color[0, obj] = old
        assert (changed == (ids[0] == obj)).all(), obj


def test_target_boxes_bound_the_target_pixels_in_image_fractions():
    from cmdp.envs.chores.env import target_boxes

    ids = np.full((3, 4, 8), -1, dtype=np.int16)
    ids[0, 1:3, 2:5] = 1  # target 1
    ids[0, 3, 7] = 0  # not a target
    ids[1, 0, 0] = 0  # env 1: only a non-target object
    ids[2, 2, 6] = 2  # env 2: a one-pixel target
    targets = np.array([[False, True, False], [False, True, True], [False, False, True]])
    boxes = target_boxes(ids, targets)
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0], [1, 2 / 8, 1 / 4, 5 / 8, 3 / 4])
    np.testing.assert_array_equal(boxes[1], np.zeros(5))
    np.testing.assert_allclose(boxes[2], [1, 6 / 8, 2 / 4, 7 / 8, 3 / 4])


def test_detection_observations_box_the_target_when_it_is_in_view():
    import cmdp

    env = cmdp.make("SafetyChores-Fetch-v0", num_envs=6, seed=2, obs_mode="rgb", image_size=(32, 32), detection=True)
    obs, _ = env.reset(seed=2)
    inner = env
    while not hasattr(inner, "scene"):
        inner = inner.env
    seen_any = False
    for _ in range(12):
        _, nav_ids = render_nav(inner.scene, inner._camera, ids=True)
        on_target = np.array([np.isin(nav_ids[i], np.flatnonzero(inner._targets[i])).any() for i in range(6)])
        np.testing.assert_array_equal(obs["nav_target_box"][:, 0] == 1, on_target)
        assert env.observation_space.contains({k: v[0] for k, v in obs.items()})
        seen_any |= on_target.any()
        obs, *_ = env.step(np.full(6, cat.ACTION_INDEX["r"]))
    assert seen_any
    with pytest.raises(ConfigError, match="obs_mode='rgb'"):
        cmdp.make("SafetyChores-Fetch-v0", obs_mode="state", detection=True)
