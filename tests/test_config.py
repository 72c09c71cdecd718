"""Configuration files: a mistake is one line naming the key, before any work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from desomspark.config import load_config
from desomspark.errors import UserError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("desom1: 5\n", r"\[desom1\] must be a mapping"),
        ("desom1:\n  batch_size: abc\n", r"\[desom1\] batch_size: expected a whole number, not 'abc'"),
        ("desom1:\n  batch_size: true\n", r"\[desom1\] batch_size: expected a whole number, not True"),
        ("ingest:\n  clean: 3\n", r"\[ingest\] clean: expected true or false"),
        ("spark:\n  master: 5\n", r"\[spark\] master: expected text"),
        ("desom2:\n  hidden: 450\n", r"\[desom2\] hidden: expected a list"),
        ("desom1:\n  gamma: [1, 2\n", r"not valid YAML \(line 3"),
        ("- a\n- b\n", "a YAML mapping was expected"),
        ("desom1:\n  gama: 0.1\n", r"unknown key\(s\) in \[desom1\]: gama"),
        (
            "desom2:\n  qa_input_weights:\n    trail_lenght: 3\n",
            r"\[desom2\] qa_input_weights names \['trail_lenght'\], which are not among qa_inputs",
        ),
        ("desom2:\n  qa_input_weights:\n    fwhm: 0\n", r"\[desom2\] qa_input_weights must be > 0"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_key(tmp_path, text, message):
    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(conf)


def test_numbers_as_yaml_writes_them_are_taken(tmp_path):
    conf = tmp_path / "ok.yaml"
    conf.write_text(
        "desom1:\n  gamma: 1\n  learning_rate: 2e-3\n  map_shape: [5, 6]\ndesom2:\n  map_shape: null\n"
    )
    cfg = load_config(conf)
    assert cfg.desom1.gamma == 1.0 and isinstance(cfg.desom1.gamma, float)
    assert cfg.desom1.learning_rate == 0.002 and cfg.desom1.map_shape == (5, 6)
    assert cfg.desom2.map_shape is None


def test_the_command_line_says_it_in_one_line(tmp_path):
    conf = tmp_path / "broken.yaml"
    conf.write_text("desom1:\n  batch_size: [\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "desomspark.cli",
            "export",
            "--lake",
            str(tmp_path),
            "--format",
            "csv",
            "--out",
            str(tmp_path / "x.csv"),
            "--conf",
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not valid YAML" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_impossible_night_is_refused(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "desomspark.cli",
            "ingest",
            "--lake",
            str(tmp_path / "lake"),
            "--input",
            str(tmp_path),
            "--night",
            "20201340",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "is not a date of the calendar" in done.stderr
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("", "cannot be empty"),
        ("x" * 65, "at most 64"),
        ("Good\nBT", "printable"),
        ("\x1b[31mGood", "printable"),
        (" Good", "no space"),
        ("Good ", "no space"),
    ],
)
def test_one_rule_for_a_label(label, message):
    """The command line and the console (explore.label_cells) refuse the same names."""
    from desomspark.serve.explore import valid_label

    with pytest.raises(UserError, match=message):
        valid_label(label)
    assert valid_label('B-Seeing (2.1")') == 'B-Seeing (2.1")'


def test_a_typo_in_a_camera_profile_is_one_configuration_error(tmp_path):
    from desomspark.ingest.camera import read_profile

    path = tmp_path / "mycam.yaml"
    path.write_text("name: mycam\npixel_scael: 0.2\n")
    with pytest.raises(UserError, match=r"mycam.yaml: unknown key\(s\) pixel_scael"):
        read_profile(path)
    path.write_text("name: mycam\nccd_position: somewhere\n")
    with pytest.raises(UserError, match="mycam.yaml: camera mycam: ccd_position"):
        read_profile(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_profile(path)


def test_the_decide_section_is_checked():
    with pytest.raises(UserError, match="accept_below <= retake_above"):
        load_config(overrides={"decide": {"accept_below": 0.9, "retake_above": 0.5}})
    with pytest.raises(UserError, match="max_<column>"):
        load_config(overrides={"decide": {"rules": {"fwhm": 1.5}}})
    assert load_config(overrides={"decide": {"rules": {"max_fwhm": 1.5}}}).decide.rules == {"max_fwhm": 1.5}
