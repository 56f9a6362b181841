"""Did pruning pay? Sparsity of a pruned int8 .tflite's prunable kernels, and its gzip size
against a dense int8 .tflite (both gzipped at level 9).

    python tools/compare_pruned.py --pruned=runs/yolo_synthetic_pqat/export/model_int8.tflite \
        --dense=runs/yolo_synthetic/export/model_int8.tflite

"Prunable" kernels are those the recipe's prune stage wraps: the stem and output convolutions
(--exclude, the recipe default) stay dense and are reported apart. Needs no TensorFlow.
"""

import re

from absl import app, flags

from tfqat.export.tflite_runtime import weight_sparsity
from tfqat.optimize.prune_defaults import DEFAULT_EXCLUDE
from tfqat.report import gzip_size

FLAGS = flags.FLAGS
flags.DEFINE_string("pruned", None, "The pruned (PQAT) int8 .tflite.")
flags.DEFINE_string("dense", None, "The dense int8 .tflite to compare with.")
flags.DEFINE_list("exclude", list(DEFAULT_EXCLUDE),
                  "Layer-name patterns the prune stage keeps dense (recipe --prune_exclude).")
flags.mark_flags_as_required(["pruned", "dense"])


def layer_name(tensor_name: str) -> str:
    """'yolo_pico_relu6/quant_c2f_p3_cv1a_conv/Conv2D;...' -> 'c2f_p3_cv1a_conv'."""
    scope = tensor_name.split(";")[0].split("/")
    return re.sub(r"^quant_", "", scope[1] if len(scope) > 1 else scope[0])


def main(argv):
    del argv
    found = weight_sparsity(FLAGS.pruned)
    zeros = {"prunable": 0, "dense": 0}
    sizes = {"prunable": 0, "dense": 0}
    kept = []
    for tensor, fraction in found["layers"].items():
        name = layer_name(tensor)
        group = "dense" if any(re.search(p, name) for p in FLAGS.exclude) else "prunable"
        if group == "dense":
            kept.append(name)
        zeros[group] += round(fraction * found["sizes"][tensor])
        sizes[group] += found["sizes"][tensor]
    print(f"prunable kernels: {sizes['prunable']} weights, "
          f"{zeros['prunable'] / sizes['prunable']:.4f} exact zeros; kept dense "
          f"({sizes['dense']} weights, {zeros['dense'] / max(sizes['dense'], 1):.4f} zeros): "
          f"{', '.join(sorted(kept))}")
    data = {name: open(path, "rb").read() for name, path in
            (("pruned", FLAGS.pruned), ("dense", FLAGS.dense))}
    packed = {name: gzip_size(d) for name, d in data.items()}
    print(f"gzip -9: pruned {packed['pruned']} B, dense {packed['dense']} B, ratio "
          f"{packed['pruned'] / packed['dense']:.3f} (raw {len(data['pruned'])} / "
          f"{len(data['dense'])} B)")


if __name__ == "__main__":
    app.run(main)
