"""Top-down heatmap pose network as one flat functional tf_keras graph that TF-MOT can quantize.

A CSP backbone (YOLOv8's C2f blocks, dense 3x3 convolutions) down to stride 32, and an FPN-style
head that upsamples (nearest) back to stride 4, concatenating the backbone's stride-16, 8 and 4
features on the way, ends in a 1x1 convolution `heatmaps` with one logit map per keypoint.

Layers are those of `tfqat.models.yolo`: Conv2D, BatchNormalization, ReLU(6) / swish,
UpSampling2D (nearest), Concatenate and Add. No depthwise convolutions: on this project's CPU,
TensorFlow trained a MobileNetV2-style body (width 0.5, 87 M multiply-accumulates per 128x96
crop) 1.9x slower per image than the "s" CSP body below (78 M), and training time is the budget
that matters here.

The output stays raw logits (no sigmoid in the graph, see PITFALLS #8): sigmoid and the
sub-pixel decoding run in float, in `tfqat.postprocess.pose`. There is no separate offsets
output; DARK-style refinement of the heatmap recovers sub-pixel positions.
"""

from tfqat.models.activations import ACTIVATIONS
from tfqat.models.layers import c2f, conv_bn_act, lookup
from tfqat.models.pose_spec import SIZES
from tfqat.tf_compat import keras

layers = keras.layers

__all__ = ["ACTIVATIONS", "HEATMAP_STRIDE", "OUTPUT_NAMES", "SIZES", "build_pose"]

HEATMAP_STRIDE = 4
OUTPUT_NAMES = ("heatmaps",)
_INPUT_MULTIPLE = 32

# Background prior of the heatmap logits: sigmoid(-4) = 0.018, about the fraction of a
# 32x24 heatmap that a sigma-2 Gaussian covers, so training starts near the right level.
_HEATMAP_BIAS = -4.0


def check_input_size(input_size):
    height, width = (int(v) for v in input_size)
    if height <= 0 or width <= 0 or height % _INPUT_MULTIPLE or width % _INPUT_MULTIPLE:
        raise ValueError(
            f"input_size must be (height, width), multiples of {_INPUT_MULTIPLE}; got {input_size}"
        )
    return height, width


def build_pose(num_keypoints=17, input_size=(128, 96), size="s", activation="relu6"):
    """Builds the heatmap pose network.

    Args:
      num_keypoints: keypoints per person (COCO: 17).
      input_size: (height, width) of the person crop, multiples of 32.
      size: a key of `SIZES`.
      activation: a key of `ACTIVATIONS` ("relu6" keeps int8 activations well-conditioned).

    Returns:
      A keras.Model taking float32 crops [B, H, W, 3] with pixel values 0..255 (RGB; no
      normalisation outside the model) and returning heatmap logits [B, H/4, W/4, K], the
      layer named `heatmaps`.
    """
    channels, depths, head = lookup(SIZES, size, "pose size")
    act = lookup(ACTIVATIONS, activation, "activation")
    if num_keypoints < 1:
        raise ValueError(f"need num_keypoints >= 1; got {num_keypoints}")
    height, width = check_input_size(input_size)

    images = keras.Input((height, width, 3), dtype="float32", name="image")
    # The stem sees raw 0..255 pixels; its BatchNormalization learns the normalisation (see
    # the note in tfqat.models.yolo.build_yolo).
    x = conv_bn_act(images, channels[0], 3, 2, "stem", act)  # stride 2

    # === Backbone ===
    features = {}
    for i, (filters, depth) in enumerate(zip(channels[1:], depths)):
        stride = 4 << i
        x = conv_bn_act(x, filters, 3, 2, f"down_s{stride}", act)
        x = c2f(x, filters, depth, True, f"c2f_s{stride}", act)
        features[stride] = x

    # === FPN-style head, stride 32 -> 4 ===
    x = conv_bn_act(features[32], head, 1, 1, "lateral_s32", act)
    for stride in (16, 8, 4):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up_s{stride}")(x)
        x = layers.Concatenate(name=f"cat_s{stride}")([x, features[stride]])
        x = c2f(x, head, 1, False, f"head_s{stride}", act)
    heatmaps = layers.Conv2D(
        num_keypoints,
        1,
        bias_initializer=keras.initializers.Constant(_HEATMAP_BIAS),
        name="heatmaps",
    )(x)
    return keras.Model(images, heatmaps, name=f"pose_{size}_{activation}")
