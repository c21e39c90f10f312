"""The README's main command, examples/safevla_fetch.py: its options are checked before anything trains."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import safevla_fetch as example  # noqa: E402


def test_isa_settings_parse_as_json_where_they_can():
    assert example.parse_setting("step_cost_coef=1") == ("step_cost_coef", 1)
    assert example.parse_setting("target_kl=null") == ("target_kl", None)
    assert example.parse_setting("multiplier=pid") == ("multiplier", "pid")


@pytest.mark.parametrize(
    "setting, message",
    [
        ("no_such_option=1", "no_such_option"),
        ("shield_threshold=-1", "shield_threshold must be >= 0.0"),
        ("step_cost_coef", "expected KEY=VALUE"),
    ],
)
def test_a_bad_isa_setting_stops_the_example_before_it_trains(monkeypatch, capsys, tmp_path, setting, message):
    monkeypatch.setattr(sys, "argv", ["safevla_fetch.py", "--out", str(tmp_path), "--isa-set", setting])
    monkeypatch.setattr(example, "ISA_CONFIG", dict(example.ISA_CONFIG))  # main() updates it
    with pytest.raises(SystemExit) as stop:
        example.main()
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was built or trained
