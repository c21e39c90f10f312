"""Run directories: progress.csv alignment and resume, config.json, TensorBoard, progress line."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdp import runlog
from cmdp.runlog import ProgressBar, RunLogger, default_run_dir, read_progress, to_jsonable


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def quiet_logger(run_dir: Path, **kwargs) -> RunLogger:
    kwargs.setdefault("tensorboard", False)
    kwargs.setdefault("progress_bar", False)
    return RunLogger(run_dir, {"algo": "X"}, **kwargs)


# ---- progress.csv -------------------------------------------------------------------------


def test_new_keys_extend_the_header_and_keep_columns_aligned(tmp_path):
    with quiet_logger(tmp_path) as logger:
        logger.log(100, {"Metrics/EpRet": 1.5, "Loss/pi": 0.25})
        # the first finished episode brings per-channel costs; an epoch may lack a key
        logger.log(200, {"Metrics/EpRet": 2.5, "Metrics/EpCost/hazard": 3.0, "Loss/pi": 0.5})
        logger.log(300, {"Loss/pi": 0.75, "Multiplier/hazard": 0.1})
        logger.log(400, {"Multiplier/hazard": 0.2, "Metrics/EpRet": 4.0, "Loss/pi": 1.0, "Metrics/EpCost/hazard": 5.0})
        assert logger.columns == ["step", "Metrics/EpRet", "Loss/pi", "Metrics/EpCost/hazard", "Multiplier/hazard"]
    assert rows_of(tmp_path / "progress.csv") == [
        ["step", "Metrics/EpRet", "Loss/pi", "Metrics/EpCost/hazard", "Multiplier/hazard"],
        ["100", "1.5", "0.25", "", ""],
        ["200", "2.5", "0.5", "3.0", ""],
        ["300", "", "0.75", "", "0.1"],
        ["400", "4.0", "1.0", "5.0", "0.2"],
    ]
    parsed = read_progress(tmp_path)
    assert [r["step"] for r in parsed] == [100, 200, 300, 400]
    assert parsed[2]["Metrics/EpRet"] is None and parsed[2]["Multiplier/hazard"] == 0.1


def test_values_are_converted_exactly(tmp_path):
    with quiet_logger(tmp_path) as logger:
        logger.log(
            np.int64(8),
            {
                "a": np.float32(0.5),
                "b": torch.tensor(2.0),
                "c": True,
                "d": 7,
                "e": float("nan"),
                "f": None,
                "g": 0.1,
                "h": np.bool_(False),
            },
        )
    header, row = rows_of(tmp_path / "progress.csv")
    assert dict(zip(header, row)) == {
        "step": "8", "a": "0.5", "b": "2.0", "c": "1", "d": "7", "e": "nan", "f": "", "g": "0.1", "h": "0"
    }


def test_bad_metrics_are_rejected_with_the_key(tmp_path):
    with quiet_logger(tmp_path) as logger:
        with pytest.raises(ValueError, match="step"):
            logger.log(1, {"step": 3})
        with pytest.raises(TypeError, match="'vec'.*3 values"):
            logger.log(1, {"vec": np.zeros(3)})
        with pytest.raises(TypeError, match="'obj'"):
            logger.log(1, {"obj": object()})


def write_run(run_dir: Path, steps, extra_key_from: int | None = None) -> None:
    with quiet_logger(run_dir) as logger:
        for s in steps:
            m = {"Metrics/EpRet": float(s)}
            if extra_key_from is not None and s >= extra_key_from:
                m["Multiplier/hazard"] = s / 1000
            logger.log(s, m)


def test_resume_drops_rows_after_the_checkpoint_step(tmp_path):
    write_run(tmp_path, [100, 200, 300, 400, 500], extra_key_from=200)
    with quiet_logger(tmp_path, resume_step=300) as logger:
        assert logger.columns == ["step", "Metrics/EpRet", "Multiplier/hazard"]
        logger.log(400, {"Metrics/EpRet": -4.0, "Multiplier/hazard": 0.9, "Loss/pi": 1.0})
    rows = read_progress(tmp_path)
    assert [r["step"] for r in rows] == [100, 200, 300, 400]
    assert rows[-1] == {"step": 400, "Metrics/EpRet": -4.0, "Multiplier/hazard": 0.9, "Loss/pi": 1.0}
    assert rows[1]["Loss/pi"] is None


def test_resume_drops_a_line_cut_short_by_a_crash(tmp_path):
    write_run(tmp_path, [100, 200, 300], extra_key_from=100)
    with open(tmp_path / "progress.csv", "a", encoding="utf-8") as f:
        f.write("40")  # the start of the row for step 400, killed mid-write
    with quiet_logger(tmp_path, resume_step=300) as logger:
        logger.log(400, {"Metrics/EpRet": 4.0, "Multiplier/hazard": 0.4})
    assert [r["step"] for r in read_progress(tmp_path)] == [100, 200, 300, 400]


def test_resume_without_a_csv_starts_one(tmp_path):
    with quiet_logger(tmp_path, resume_step=300) as logger:
        logger.log(400, {"x": 1.0})
    assert rows_of(tmp_path / "progress.csv") == [["step", "x"], ["400", "1.0"]]


def test_a_fresh_run_replaces_an_old_csv_with_a_warning(tmp_path):
    write_run(tmp_path, [100, 200])
    with pytest.warns(UserWarning, match="replaced"):
        logger = quiet_logger(tmp_path)
    with logger:
        logger.log(50, {"y": 1.0})
    assert rows_of(tmp_path / "progress.csv") == [["step", "y"], ["50", "1.0"]]


def test_log_after_close_raises(tmp_path):
    logger = quiet_logger(tmp_path)
    logger.close()
    logger.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(1, {"x": 1.0})


# ---- config.json --------------------------------------------------------------------------


def test_config_json_round_trip(tmp_path):
    config = {
        "algo": "PPOLag",
        "env_id": "GridWorld-v0",
        "seed": np.int64(3),
        "cost_limit": np.array([5.0, 3.0]),
        "config": {
            "hidden_sizes": (64, 64),
            "actor_lr": np.float32(0.5),
            "target_kl": None,
            "normalize_obs": np.bool_(True),
            "env_kwargs": {"obs_mode": "state", "cost_fn": len},
            "path": Path("a/b"),
            "lr": torch.tensor(0.25),
        },
    }
    RunLogger(tmp_path, config, tensorboard=False, progress_bar=False).close()
    loaded = json.loads((tmp_path / "config.json").read_text())
    assert loaded == {
        "algo": "PPOLag",
        "env_id": "GridWorld-v0",
        "seed": 3,
        "cost_limit": [5.0, 3.0],
        "config": {
            "hidden_sizes": [64, 64],
            "actor_lr": 0.5,
            "target_kl": None,
            "normalize_obs": True,
            "env_kwargs": {"obs_mode": "state", "cost_fn": repr(len)},
            "path": "a/b",
            "lr": 0.25,
        },
    }
    assert to_jsonable(loaded) == loaded  # already plain: unchanged


# ---- TensorBoard --------------------------------------------------------------------------


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    with RunLogger(tmp_path, {}, tensorboard=True, progress_bar=False) as logger:
        logger.log(10, {"Metrics/EpRet": 1.0, "note": "text is CSV-only", "none": None})
        logger.log(20, {"Metrics/EpRet": 2.0})
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["Metrics/EpRet"]
    assert [(e.step, e.value) for e in acc.Scalars("Metrics/EpRet")] == [(10, 1.0), (20, 2.0)]


def test_missing_tensorboard_warns_once_and_logging_continues(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    monkeypatch.setattr(runlog, "_tensorboard_warned", False)
    with pytest.warns(UserWarning, match="TensorBoard logging is off"):
        first = RunLogger(tmp_path / "a", {}, tensorboard=True, progress_bar=False)
    with first:
        first.log(1, {"x": 1.0})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RunLogger(tmp_path / "b", {}, tensorboard=True, progress_bar=False).close()
    assert rows_of(tmp_path / "a" / "progress.csv") == [["step", "x"], ["1", "1.0"]]
    assert not list((tmp_path / "a").glob("events.out.tfevents.*"))


# ---- progress line ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


EPOCH = {
    "Metrics/EpRet": 12.5,
    "Metrics/EpCost/hazard": 2.0,
    "Metrics/EpCost/wall": 1.0,
    "Multiplier/hazard": 0.25,
    "Multiplier/wall": 0.0,
}


def test_non_tty_prints_a_plain_line_at_most_every_interval_and_at_the_end():
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar(1000, stream=out, interval=10.0, clock=clock)
    assert not bar.tty
    for step, t in [(100, 1.0), (200, 2.0), (300, 9.0), (400, 11.5), (500, 12.0)]:
        clock.t = t
        bar.update(step, {300: {"Metrics/EpRet": 99.0}, 400: {"Loss/pi": 1.0}}.get(step, EPOCH))
    clock.t = 20.0
    bar.update(1000, {})
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[0] for line in lines] == ["100/1,000", "400/1,000", "1,000/1,000"]
    first = lines[0]
    assert "10.0%" in first and "100 steps/s" in first and "ETA 9s" in first
    assert "EpRet 12.5" in first and "EpCost 3 |" in first  # summed over channels
    assert "lambda[hazard] 0.25" in first and "lambda[wall] 0" in first
    assert "EpRet 99" in lines[1] and "EpCost 3 |" in lines[1]  # missing metrics keep their last value
    assert "100.0%" in lines[2] and "done in 20s" in lines[2]


def test_tty_redraws_in_place_and_ends_the_line():
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar(None, stream=out, tty=True, tty_interval=0.0, clock=clock)
    for step in (10, 20, 30):
        clock.t = step / 10
        bar.update(step, {"Metrics/EpRet": float(step), "Metrics/EpCost": 0.5})
    assert out.getvalue().count("\r") == 3 and "\n" not in out.getvalue()
    bar.close()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert text.rstrip("\n").split("\r")[-1].startswith("30 steps")
    assert "EpCost 0.5" in text
    # a narrow terminal loses whole trailing fields, never half a number
    assert bar.render(width=26) == "30 steps | 10 steps/s"


def test_disabled_progress_writes_nothing(tmp_path):
    out = io.StringIO()
    with RunLogger(tmp_path, {}, tensorboard=False, progress_bar=False, progress_stream=out, total_steps=10) as lg:
        lg.log(10, EPOCH)
    assert out.getvalue() == ""


def test_run_logger_drives_the_progress_line(tmp_path):
    out = io.StringIO()
    with RunLogger(tmp_path, {}, tensorboard=False, total_steps=300, resume_step=100, progress_stream=out) as lg:
        lg.log(200, EPOCH)
        lg.log(300, EPOCH)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("200/300") and lines[-1].startswith("300/300")


# ---- run directory names ------------------------------------------------------------------


def test_default_run_dir_name_is_safe_and_unique(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5)
    first = default_run_dir("PPOLag", "ALE/Pong v5", 7, root=tmp_path, now=now)
    assert first == tmp_path / "PPOLag-ALE_Pong_v5-s7-20260102-030405"
    assert not first.exists()  # nothing is created until the logger opens
    first.mkdir()
    assert default_run_dir("PPOLag", "ALE/Pong v5", 7, root=tmp_path, now=now).name.endswith("030405-2")
