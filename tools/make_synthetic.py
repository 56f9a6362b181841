"""Generates a synthetic COCO-format dataset, the default data of the synthetic recipes.

    python tools/make_synthetic.py --task=detection|pose --out=DIR
                                   [--num_train=N --num_val=M --seed=S]
                                   [--image_size=PX]

Writes DIR/annotations/{instances,person_keypoints}_{train,val}.json and DIR/images/{train,val}/.
The output is the same byte for byte for the same flags. DIR must not exist or be empty.
"""

import json
import os
import time

from absl import app, flags

from tfqat import cli
from tfqat.data import synthetic

FLAGS = flags.FLAGS

flags.DEFINE_enum("task", None, list(synthetic.TASKS), "Which dataset to generate.")
flags.DEFINE_string("out", None, "Output folder (must not exist or be empty).")
flags.DEFINE_integer("num_train", synthetic.DEFAULT_NUM_TRAIN, "Training images.", lower_bound=1)
flags.DEFINE_integer("num_val", synthetic.DEFAULT_NUM_VAL, "Validation images.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Generator seed.", lower_bound=0)
flags.DEFINE_integer(
    "image_size", synthetic.DEFAULT_IMAGE_SIZE, "Image width and height in pixels.", lower_bound=64
)
flags.mark_flags_as_required(["task", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    make = synthetic.make_detection if FLAGS.task == "detection" else synthetic.make_pose
    start = time.perf_counter()
    # An --out that is not an empty folder: FileExistsError, one line (cli.run).
    paths = make(
        FLAGS.out,
        num_train=FLAGS.num_train,
        num_val=FLAGS.num_val,
        seed=FLAGS.seed,
        image_size=FLAGS.image_size,
    )
    counts = []
    for split in ("train", "val"):
        with open(paths[f"{split}_annotations"]) as f:
            coco = json.load(f)
        counts.append(
            f"{split} {len(coco['images'])} images / {len(coco['annotations'])} annotations"
        )
    seconds = time.perf_counter() - start
    print(
        f"{FLAGS.task} dataset in {os.path.abspath(FLAGS.out)}: {', '.join(counts)}; {seconds:.1f}s"
    )


if __name__ == "__main__":
    cli.run(main)
