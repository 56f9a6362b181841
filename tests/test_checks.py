"""The recipe check (tfqat.recipe.checks) and the dataset read order, in process: every flag a
run cannot use is a usage error naming it, every path that is not what the recipe needs an input
error naming it; a broken val annotation file stops before any train image is decoded."""

import os
import types

import numpy as np
import pytest
from absl import app, flags
from conftest import REPO, small_split
from PIL import Image

from tfqat.cli import InputError
from tfqat.data.coco import DatasetError, load_coco_splits
from tfqat.recipe.build import stage_configs
from tfqat.recipe.checks import (
    Range,
    check_ema,
    check_recipe,
    check_tf_config,
    ema_median_step,
)
from tfqat.recipe.flags import define_flags

SMOKE = os.path.join(REPO, "configs", "smoke_yolo.flags")


def recipe(tmp_path, *extra, flagfile=SMOKE):
    """The smoke recipe's flags, with `extra` after them, on a private FlagValues."""
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["tfqat", f"--flagfile={flagfile}", f"--model_dir={tmp_path / 'run'}", *extra])
    return fv


def test_the_smoke_recipes_pass(tmp_path):
    check_recipe(recipe(tmp_path))
    check_recipe(recipe(tmp_path, flagfile=os.path.join(REPO, "configs", "smoke_pose.flags")))


@pytest.mark.parametrize(
    "config", sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if "synthetic" in f)
)
def test_every_synthetic_recipe_passes_its_checks(tmp_path, config):
    check_recipe(recipe(tmp_path, flagfile=os.path.join(REPO, "configs", config)))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model_size=zz"], "--model_size=zz is not a detection model size; use one of femto"),
        (["--model_size=m"], "--model_size=m is not a detection model size"),  # pose-only size
        (["--activation=gelu"], "--activation=gelu is not supported; use one of relu6, silu"),
        (["--eval_every=0"], "--eval_every=0 must be >= 1"),
        (["--epochs=0"], "--epochs=0 must be >= 1"),
        (["--batch_size=0"], "--batch_size=0 must be >= 1"),
        (["--lr=0"], r"--lr=0.0 must be > 0"),
        (["--qat_epochs=0"], "--qat_epochs=0 must be >= 1"),
        (["--qat_lr=-1"], r"--qat_lr=-1.0 must be > 0"),
        (["--calibration_images=0"], "--calibration_images=0 must be >= 1"),
        (["--min_output_levels=300"], r"--min_output_levels=300 must be in \[1, 256\]"),
        (["--qat_freeze_bn_after=1.5"], r"--qat_freeze_bn_after=1.5 must be in \[0, 1\]"),
        (["--qat_freeze_ranges_after=-0.1"], r"--qat_freeze_ranges_after=-0.1 must be in \[0, 1\]"),
        (["--ema_decay=1"], r"--ema_decay=1.0 must be in \[0, 1\)"),
        (["--warmup_epochs=nan"], "--warmup_epochs=nan must be >= 0"),
        (["--num_val=0"], "--num_val=0 must be >= 1"),
        (["--input_size=64,abc"], "--input_size=64,abc must be height,width, two integers"),
        (["--input_size=64,48"], "--input_size=64,48: height and width must be positive"),
        (["--jitter=1.5,1.2"], "--jitter=1.5,1.2 must be low,high with 0 < low <= high"),
        (["--stages=qat"], "--stages=qat is not supported"),
        (["--dataset=synthetic_pose"], "--dataset=synthetic_pose does not match --task=detection"),
        (["--train_annotations=a.json"], "dataset paths are all-or-none"),
    ],
)
def test_a_flag_no_run_can_use_is_a_usage_error_naming_it(tmp_path, extra, message):
    with pytest.raises(app.UsageError, match=message):
        check_recipe(recipe(tmp_path, *extra))


def test_pose_sizes_follow_the_pose_family(tmp_path):
    pose = os.path.join(REPO, "configs", "smoke_pose.flags")
    check_recipe(recipe(tmp_path, "--model_size=m", flagfile=pose))
    with pytest.raises(app.UsageError, match="--model_size=femto is not a pose model size"):
        check_recipe(recipe(tmp_path, "--model_size=femto", flagfile=pose))
    with pytest.raises(app.UsageError, match=r"--rotation_prob=2.0 must be in \[0, 1\]"):
        check_recipe(recipe(tmp_path, "--rotation_prob=2", flagfile=pose))


def test_flags_of_stages_that_do_not_run_are_not_checked(tmp_path):
    check_recipe(recipe(tmp_path, "--prune_epochs=0", "--m_by_n=3,2"))
    pruned = ["--stages=float,prune,pqat"]
    with pytest.raises(app.UsageError, match="--prune_epochs=0 must be >= 1"):
        check_recipe(recipe(tmp_path, *pruned, "--prune_epochs=0"))
    with pytest.raises(app.UsageError, match=r"--target_sparsity=1.0 must be in \(0, 1\)"):
        check_recipe(recipe(tmp_path, *pruned, "--target_sparsity=1"))
    with pytest.raises(app.UsageError, match="--m_by_n=3,2 must be m,n with 0 < m < n"):
        check_recipe(recipe(tmp_path, *pruned, "--m_by_n=3,2"))
    with pytest.raises(app.UsageError, match="set --target_sparsity=0.5"):
        check_recipe(recipe(tmp_path, *pruned, "--m_by_n=2,4", "--target_sparsity=0.4"))
    with pytest.raises(app.UsageError, match="--prune_exclude: '\\(' is not a regular"):
        check_recipe(recipe(tmp_path, *pruned, "--prune_exclude=("))


def test_range_bounds_and_their_wording():
    assert 1 in Range(1) and 0 not in Range(1) and str(Range(1)) == ">= 1"
    open_interval = Range(0, 1, low_open=True, high_open=True)
    assert 0.5 in open_interval and 0 not in open_interval and 1 not in open_interval
    assert str(open_interval) == "in (0, 1)" and str(Range(0, 0.5)) == "in [0, 0.5]"
    assert float("inf") not in Range(0) and float("nan") not in Range(0)


@pytest.mark.parametrize(
    "config", sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if "yolo_synthetic" in f)
)
def test_every_synthetic_detection_recipe_exports_an_ema_of_its_stage_ends(tmp_path, config):
    fv = recipe(tmp_path, flagfile=os.path.join(REPO, "configs", config))
    check_ema(stage_configs(fv, fv.num_train // fv.batch_size))  # one sample per image


def test_the_ema_median_step_is_where_the_ema_holds_half_its_weight():
    """Against train.loop.ModelEMA itself, averaging a weight that is 1 up to a step (and at the
    start) and 0 after it: the average is the share of the EMA from up to that step."""
    from tfqat.tf_compat import keras
    from tfqat.train.loop import ModelEMA

    def share_up_to(last, decay, tau, steps):
        model = keras.Sequential([keras.layers.Dense(1, use_bias=False, input_shape=(1,))])
        model.set_weights([np.full((1, 1), 1.0 if last >= 0 else 0.0)])
        ema = ModelEMA(model, decay, tau)
        for step in range(1, steps + 1):
            model.set_weights([np.full((1, 1), 1.0 if step <= last else 0.0)])
            ema.update(model)
        return float(ema.model.get_weights()[0][0, 0])

    for decay, tau, steps in [(0.9999, 200, 600), (0.99, 20, 300), (0.9999, 1, 4)]:
        median = ema_median_step(decay, tau, steps)
        assert share_up_to(median, decay, tau, steps) >= 0.5
        assert share_up_to(median - 1, decay, tau, steps) < 0.5


def test_an_ema_of_mid_training_weights_is_a_usage_error_naming_a_decay_that_fits():
    stage = types.SimpleNamespace(name="float", total_steps=2232, ema_decay=0.9999, ema_tau=200)
    with pytest.raises(
        app.UsageError,
        match=r"--ema_decay=0.9999 with --ema_tau=200: the float stage's EMA model .* from step "
        r"1166 of 2232 or earlier\); use --ema_decay=0.998$",
    ):
        check_ema([stage])
    check_ema([types.SimpleNamespace(**{**vars(stage), "ema_decay": 0.998})])


# === Paths ===


@pytest.fixture
def dataset_flags(tmp_path):
    """--train_*/--val_* of a small valid dataset, as a dict of flag -> path."""
    paths = {}
    for split in ("train", "val"):
        paths[f"{split}_annotations"], paths[f"{split}_images"] = small_split(tmp_path, split)
    return paths


def with_paths(paths, **changes):
    return [f"--{name}={value}" for name, value in {**paths, **changes}.items()]


def test_a_valid_dataset_and_checkpoint_pass(tmp_path, dataset_flags):
    prefix = tmp_path / "weights" / "ckpt-3"
    prefix.parent.mkdir()
    (tmp_path / "weights" / "ckpt-3.index").write_bytes(b"")
    check_recipe(recipe(tmp_path, *with_paths(dataset_flags), f"--init_checkpoint={prefix}"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"val_annotations": "{tmp}/nope.json"}, "--val_annotations={tmp}/nope.json: no such file"),
        ({"train_annotations": "{tmp}"}, "--train_annotations={tmp} is not a file"),
        ({"val_images": "{tmp}/nope"}, "--val_images={tmp}/nope: no such folder"),
        ({"train_images": "{tmp}/train.json"}, "--train_images={tmp}/train.json is not a folder"),
        ({"val_images": "{tmp}/empty"}, r"--val_images={tmp}/empty holds no image \(.jpg"),
    ],
)
def test_a_path_that_is_not_what_the_recipe_needs_is_an_input_error(
    tmp_path, dataset_flags, change, message
):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no image here")
    change = {name: value.format(tmp=tmp_path) for name, value in change.items()}
    with pytest.raises(InputError, match=message.format(tmp=tmp_path)):
        check_recipe(recipe(tmp_path, *with_paths(dataset_flags, **change)))


def test_images_in_sub_folders_count(tmp_path, dataset_flags):
    nested = tmp_path / "nested" / "2017" / "a"
    nested.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(nested / "x.JPG", format="JPEG")
    check_recipe(recipe(tmp_path, *with_paths(dataset_flags, val_images=tmp_path / "nested")))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "neither a run directory, a .h5 file nor a TF checkpoint prefix"),
        (lambda p: p.with_suffix(".h5"), "no such .h5 file"),
        (lambda p: p.mkdir() or p, "is a folder but not a tfqat run with a float checkpoint"),
    ],
)
def test_init_checkpoint_must_exist(tmp_path, make, message):
    path = make(tmp_path / "weights")
    with pytest.raises(InputError, match=f"--init_checkpoint={path}.*{message}"):
        check_recipe(recipe(tmp_path, f"--init_checkpoint={path}"))


def test_model_dir_must_not_be_a_file(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(InputError, match="is a file; give a folder for the run"):
        check_recipe(recipe(tmp_path))


# === Read order ===


def test_a_broken_val_file_stops_before_any_train_image_is_decoded(tmp_path):
    train = small_split(tmp_path, "train")
    for png in (tmp_path / "images" / "train").iterdir():
        png.write_bytes(b"not an image")  # decoding any of them would be a problem
    val_annotations, val_images = small_split(tmp_path, "val")
    with open(val_annotations, "w") as f:
        f.write('{"images": [')
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as raised:
        load_coco_splits([train, (val_annotations, val_images)], "detection", cache_dir=str(cache))
    expected = f"{val_annotations}: malformed JSON at line 1 column 13: Expecting value"
    assert str(raised.value) == expected
    assert not cache.exists()  # no image was decoded: nothing to cache


def test_image_problems_are_found_after_both_annotation_files(tmp_path):
    train = small_split(tmp_path, "train")
    (tmp_path / "images" / "train" / "2.png").write_bytes(b"not an image")
    val = small_split(tmp_path, "val")
    with pytest.raises(DatasetError, match=r"train.json: image 2 '2.png': cannot decode"):
        load_coco_splits([train, val], "detection", cache_dir=str(tmp_path / "cache"))
    train_set, val_set = load_coco_splits(
        [small_split(tmp_path / "ok", "train"), val],
        "detection",
        cache_dir=str(tmp_path / "cache"),
    )
    assert len(train_set.samples) == len(val_set.samples) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "reads the cluster from TF_CONFIG, which is not set"),
        ("{cluster", "TF_CONFIG is not .* JSONDecodeError"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not .* KeyError: 'task'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "IndexError"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "no host:port"),
    ],
)
def test_tf_config_must_name_the_cluster_and_this_task(text, message):
    with pytest.raises(InputError, match=message):
        check_tf_config(text)
    check_tf_config(
        '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    )
