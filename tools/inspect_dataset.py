"""Validates a COCO-format dataset and prints a summary; optionally renders training samples.

    python tools/inspect_dataset.py --task=detection|pose --annotations=JSON --images=DIR
        [--show=N --out=DIR [--input_size=SIZE|HEIGHT,WIDTH --seed=S]]
        [--exif_transpose] [--annotation_problems=error|warn]

Exit status 0 with a summary on a valid dataset; 1 with every problem listed on an invalid one
(one line when there is one); 2 for a flag that cannot work.
"""

from absl import app, flags

from tfqat import cli
from tfqat.data.coco import (
    ANNOTATION_PROBLEM_MODES,
    BOX_SIZE_LABELS,
    TASKS,
    CocoDataset,
    load_coco,
)

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "task", None, list(TASKS), "detection (instances JSON) or pose (person_keypoints JSON)."
)
flags.DEFINE_string("annotations", None, "COCO annotation JSON file.")
flags.DEFINE_string("images", None, "Folder the images' file_name entries are relative to.")
flags.DEFINE_integer(
    "show", 0, "Write this many samples, as fed to training, as PNGs to --out.", lower_bound=0
)
flags.DEFINE_string("out", None, "Output folder for --show.")
flags.DEFINE_list("input_size", ["256"], "Model input size for --show: SIZE or HEIGHT,WIDTH.")
flags.DEFINE_integer("seed", 0, "Random seed of the augmentations drawn for --show.")
flags.DEFINE_bool(
    "exif_transpose", False, "Apply EXIF orientation when decoding (COCO's sizes do not)."
)
flags.DEFINE_enum(
    "annotation_problems",
    "error",
    list(ANNOTATION_PROBLEM_MODES),
    "error: a bad annotation fails the dataset; warn: drop it and count it.",
)
flags.mark_flags_as_required(["task", "annotations", "images"])
flags.register_multi_flags_validator(
    ["show", "out"], lambda v: not v["show"] or bool(v["out"]), "--show requires --out"
)
flags.register_validator(
    "input_size",
    lambda v: len(v) in (1, 2) and all(s.isdigit() and int(s) > 0 for s in v),
    "--input_size must be SIZE or HEIGHT,WIDTH (positive integers)",
)


def format_summary(dataset: CocoDataset) -> str:
    stats = dataset.stats
    lines = [
        f"dataset      {dataset.annotation_file} ({dataset.task})",
        f"images dir   {dataset.image_dir}",
        f"images       {stats['images']} ({stats['empty_images']} without targets)",
        f"annotations  {stats['annotations']}: {stats['targets']} targets, "
        f"{stats['crowd_skipped']} crowd skipped, "
        f"{stats['dropped_annotations']} dropped for problems",
        f"boxes        {stats['clipped_boxes']} clipped to the image, "
        f"{stats['tiny_boxes']} with a side under 1 px",
    ]
    if "no_keypoints" in stats:
        lines.append(
            f"keypoints    {len(dataset.keypoint_names)} per person; "
            f"{stats['no_keypoints']} targets without any labelled keypoint"
        )
    lines.append("targets per category:")
    width = max(len(name) for name in dataset.category_names)
    for cat_id, name in zip(dataset.category_ids, dataset.category_names):
        lines.append(f"  {name:<{width}}  (id {cat_id:>3})  {stats['per_category'][cat_id]}")
    lines.append("box size histogram (sqrt(area), pixels):")
    lines.extend(f"  {label:>8}  {stats['box_sizes'][label]}" for label in BOX_SIZE_LABELS)
    lines.append(f"problems skipped: {len(dataset.warnings)}")
    lines.extend(f"  {problem.message}" for problem in dataset.warnings)
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # A DatasetError lists every problem (cli.run prints it, exit status 1).
    dataset = load_coco(
        FLAGS.annotations,
        FLAGS.images,
        FLAGS.task,
        exif_transpose=FLAGS.exif_transpose,
        annotation_problems=FLAGS.annotation_problems,
    )
    print(format_summary(dataset))
    if FLAGS.show:
        from tfqat.data.pipeline import render_samples  # imports TensorFlow: only when asked

        size = [int(s) for s in FLAGS.input_size]
        render_samples(dataset, FLAGS.task, FLAGS.show, FLAGS.out, (size[0], size[-1]), FLAGS.seed)
        print(f"wrote {FLAGS.show} samples to {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
