"""Did pruning pay? Sparsity of a pruned int8 .tflite's prunable kernels, and its gzip size
against a dense int8 .tflite (both gzipped at level 9).

    python tools/compare_pruned.py --pruned=runs/yolo_synthetic_pqat/export/model_int8.tflite \
        --dense=runs/yolo_synthetic/export/model_int8.tflite

"Prunable" kernels are those the recipe's prune stage wraps: the stem and output convolutions
(--exclude, the recipe default) stay dense and are reported apart. Needs no TensorFlow.

It also prints the order-0 entropy of the prunable int8 weights of both files: the size an ideal
byte-wise entropy coder (what gzip's Huffman stage approximates) would give them, to tell what
the zeros can buy from what gzip fails to take.
"""

import os
import re

import numpy as np
from absl import app, flags

from tfqat import cli
from tfqat.evaluate.report import gzip_size
from tfqat.export.tflite.flatbuffer import weight_tensors
from tfqat.optimize.prune_defaults import DEFAULT_EXCLUDE

FLAGS = flags.FLAGS
flags.DEFINE_string("pruned", None, "The pruned (PQAT) int8 .tflite.")
flags.DEFINE_string("dense", None, "The dense int8 .tflite to compare with.")
flags.DEFINE_list(
    "exclude",
    list(DEFAULT_EXCLUDE),
    "Layer-name patterns the prune stage keeps dense (recipe --prune_exclude).",
)
flags.mark_flags_as_required(["pruned", "dense"])


def layer_name(tensor_name: str) -> str:
    """'yolo_pico_relu6/quant_c2f_p3_cv1a_conv/Conv2D;...' -> 'c2f_p3_cv1a_conv'."""
    scope = tensor_name.split(";")[0].split("/")
    return re.sub(r"^quant_", "", scope[1] if len(scope) > 1 else scope[0])


def is_prunable(tensor_name: str) -> bool:
    return not any(re.search(p, layer_name(tensor_name)) for p in FLAGS.exclude)


def entropy_bits(values: np.ndarray) -> float:
    """Order-0 entropy of `values` in bits, summed over the values."""
    counts = np.unique(values, return_counts=True)[1].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def count(tensors: dict) -> tuple[int, int]:
    """(weights, exact zeros) over `tensors`."""
    return (
        sum(v.size for v in tensors.values()),
        sum(int(np.count_nonzero(v == 0)) for v in tensors.values()),
    )


def read_tflite(flag: str, path: str) -> bytes:
    """The bytes of a .tflite file; cli.InputError naming the flag when it is not one."""
    from tfqat.runtime.metadata import tflite_metadata_entries

    if not os.path.isfile(path):
        raise cli.InputError(f"--{flag}={path}: no such file")
    try:
        tflite_metadata_entries(path)  # reads the flatbuffer's tables: fails on a foreign file
    except ValueError as e:
        raise cli.InputError(f"--{flag}={e}") from e
    with open(path, "rb") as f:
        return f.read()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    data = {name: read_tflite(name, getattr(FLAGS, name)) for name in ("pruned", "dense")}
    weights = {name: weight_tensors(content) for name, content in data.items()}
    prunable = {
        name: {t: v for t, v in found.items() if is_prunable(t)} for name, found in weights.items()
    }
    kept = {t: v for t, v in weights["pruned"].items() if not is_prunable(t)}
    size, zeros = count(prunable["pruned"])
    kept_size, kept_zeros = count(kept)
    print(
        f"prunable kernels: {size} weights, {zeros / size:.4f} exact zeros; kept dense "
        f"({kept_size} weights, {kept_zeros / max(kept_size, 1):.4f} zeros): "
        f"{', '.join(sorted(layer_name(t) for t in kept))}"
    )
    # Per layer: each tensor has its own per-channel scales, so its own value statistics.
    bits = {name: sum(entropy_bits(v) for v in found.values()) for name, found in prunable.items()}
    sizes = {name: count(found)[0] for name, found in prunable.items()}
    print(
        f"order-0 entropy of the prunable int8 weights: pruned "
        f"{bits['pruned'] / sizes['pruned']:.2f} bits/weight, dense "
        f"{bits['dense'] / sizes['dense']:.2f} bits/weight (ideal-coder ratio "
        f"{bits['pruned'] / bits['dense']:.3f})"
    )
    packed = {name: gzip_size(d) for name, d in data.items()}
    print(
        f"gzip -9: pruned {packed['pruned']} B, dense {packed['dense']} B, ratio "
        f"{packed['pruned'] / packed['dense']:.3f} (raw {len(data['pruned'])} / "
        f"{len(data['dense'])} B)"
    )


if __name__ == "__main__":
    cli.run(main)
