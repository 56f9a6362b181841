"""An export replaces the run's export/ folder whole, only after every file passed its checks."""

import os

import pytest

from tfqat.export.artifacts import staged_folder
from tfqat.export.errors import ExportValidationError


def write(folder, name, text):
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def listing(folder):
    return sorted(os.listdir(folder))


def previous_set(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    write(export, "model_int8.tflite", "old")
    return export


def test_a_passed_set_replaces_the_previous_one(tmp_path):
    export = previous_set(tmp_path)
    with staged_folder(str(export)) as staging:
        write(staging, "model_int8.tflite", "new")
        write(staging, "metadata.json", "{}")
    assert listing(export) == ["metadata.json", "model_int8.tflite"]
    assert (export / "model_int8.tflite").read_text() == "new"
    assert listing(tmp_path) == ["export"]


def test_a_failed_check_leaves_the_previous_set_and_no_temporary_folder(tmp_path):
    export = previous_set(tmp_path)
    with pytest.raises(ExportValidationError):
        with staged_folder(str(export)) as staging:
            write(staging, "model_int8.tflite", "new but broken")
            raise ExportValidationError("not a fully-int8 file")
    assert (export / "model_int8.tflite").read_text() == "old"
    assert listing(tmp_path) == ["export"]


def test_a_killed_export_leaves_the_previous_set_and_the_next_one_cleans_up(tmp_path):
    export = previous_set(tmp_path)
    killed = tmp_path / "export.partial-999999"  # what a kill -9 midway leaves
    killed.mkdir()
    write(killed, "model_int8.tflite", "half")
    assert (export / "model_int8.tflite").read_text() == "old"
    with staged_folder(str(export)) as staging:
        write(staging, "model_int8.tflite", "new")
    assert listing(tmp_path) == ["export"]


def test_a_crash_between_the_renames_is_undone_by_the_next_export(tmp_path):
    previous = tmp_path / "export.previous"  # export/ was moved aside, the new set not yet in
    previous.mkdir()
    write(previous, "model_int8.tflite", "old")
    with pytest.raises(RuntimeError):
        with staged_folder(str(tmp_path / "export")):
            raise RuntimeError("interrupted")
    assert (tmp_path / "export" / "model_int8.tflite").read_text() == "old"
    assert listing(tmp_path) == ["export"]


def test_the_first_export_needs_no_previous_set(tmp_path):
    with staged_folder(str(tmp_path / "export")) as staging:
        write(staging, "model_int8.tflite", "new")
    assert listing(tmp_path / "export") == ["model_int8.tflite"]
