"""A rerun is the same run: new flags are compared with the run directory's flags.txt."""

import os
import subprocess

import pytest
from absl import flags
from conftest import REPO, train_command

from tfqat.recipe import run_dir
from tfqat.recipe.flags import define_flags


def _flags(*args) -> flags.FlagValues:
    """The smoke recipe's flags (run from the repository) with `args` after it."""
    options = flags.FlagValues()
    define_flags(options)
    options(["tfqat", f"--flagfile={REPO}/configs/smoke_yolo.flags", *args])
    return options


@pytest.fixture
def run(tmp_path):
    """A run directory whose flags.txt records the smoke recipe with COCO paths of its own."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.json", "val.json"):
        (data / name).write_text("{}")
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    run_dir.write_flags(_flags(*_paths(str(data))), str(model_dir))
    return model_dir


def _paths(data: str):
    return [
        f"--train_annotations={data}/train.json",
        f"--train_images={data}",
        f"--val_annotations={data}/val.json",
        f"--val_images={data}",
    ]


def test_flags_txt_records_file_flags_as_absolute_paths(run, monkeypatch):
    monkeypatch.chdir(run.parent)
    run_dir.write_flags(_flags(*_paths("data")), str(run))
    assert f"--train_annotations={run.parent}/data/train.json" in (run / "flags.txt").read_text()


def test_the_same_flags_pass(run):
    assert (
        run_dir.flag_differences(
            run_dir.read_flags(str(run)), _flags(*_paths(f"{run.parent}/data"))
        )
        == []
    )


def test_changes_to_the_trained_model_are_listed(run):
    new = _flags(*_paths(f"{run.parent}/data"), "--epochs=3", "--lr=0.02", "--m_by_n=2,4")
    assert run_dir.flag_differences(run_dir.read_flags(str(run)), new) == [
        "--m_by_n: (unset) -> 2,4",
        "--epochs: 2 -> 3",
        "--lr: 0.01 -> 0.02",
    ]


def test_harmless_differences_pass(run, monkeypatch):
    link = run.parent / "link"
    os.symlink(run.parent / "data", link)
    monkeypatch.chdir(run.parent)
    new = _flags(
        "--train_annotations=data/../data/train.json",  # the same files, spelled differently
        f"--train_images={link}",
        "--val_annotations=link/val.json",
        f"--val_images={run.parent}/data/",
        f"--model_dir={run}/../run/",
        "--name=another_name",
        "--eval_every=5",
        "--min_output_levels=8",
        "--memory_cache_mb=0",  # streamed instead of cached: the same batches
    )
    assert run_dir.flag_differences(run_dir.read_flags(str(run)), new) == []


def test_another_file_is_a_difference(run):
    other = run.parent / "other.json"
    other.write_text("{}")
    data = f"{run.parent}/data"
    new = _flags(*_paths(data), f"--val_annotations={other}")
    assert run_dir.flag_differences(run_dir.read_flags(str(run)), new) == [
        f"--val_annotations: {data}/val.json -> {other}"
    ]


def test_check_rerun_stops_with_the_list_unless_overwrite_flags(run, capsys):
    new = _flags(*_paths(f"{run.parent}/data"), "--epochs=3")
    with pytest.raises(ValueError) as error:
        run_dir.check_rerun(new, str(run))
    assert str(error.value) == (
        f"{run} was trained with other flags (flags.txt): --epochs: 2 -> 3. Rerun with "
        f"--flagfile={run}/flags.txt, give another --model_dir, or add --overwrite_flags to "
        "continue under the new ones"
    )
    run_dir.check_rerun(new, str(run), overwrite=True)
    assert "continuing under changed flags (--overwrite_flags): --epochs: 2 -> 3" in (
        capsys.readouterr().out
    )


def test_a_new_run_directory_is_not_compared(tmp_path):
    run_dir.check_rerun(_flags("--epochs=3"), str(tmp_path / "new"))


def test_the_cli_stops_a_changed_rerun_before_reading_any_data(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    run_dir.write_flags(_flags(f"--model_dir={model_dir}"), str(model_dir))
    before = (model_dir / "flags.txt").read_text()
    cache = tmp_path / "cache"
    command = train_command("smoke_yolo.flags", model_dir, "--batch_size=4")
    env = dict(os.environ, TFQAT_CACHE_DIR=str(cache))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "was trained with other flags (flags.txt): --batch_size: 8 -> 4." in result.stderr
    assert not cache.exists()  # the synthetic dataset was neither made nor read
    assert (model_dir / "flags.txt").read_text() == before
    assert sorted(os.listdir(model_dir)) == ["flags.txt"]
