"""YOLOv8-style detector as one flat functional tf_keras graph that TF-MOT can quantize.

Only layers with a quantize config in TF-MOT's default 8-bit scheme are used: Conv2D,
BatchNormalization (folded into the preceding Conv2D), Activation("swish") / ReLU(6.0),
MaxPooling2D, UpSampling2D (nearest), Concatenate and Add. No Lambda, no raw tf ops.

The graph ends at six raw head tensors (see `yolo_spec.OUTPUT_NAMES`): DFL logits and class
logits per level. Decoding (DFL softmax, sigmoid, NMS) happens outside the graph, in
`tfqat.postprocess.detection`.
"""

import math

from tfqat.models.activations import ACTIVATIONS
from tfqat.models.layers import c2f, conv_bn_act, lookup, make_divisible, sppf
from tfqat.models.yolo_spec import LEVELS, OUTPUT_NAMES, SIZES, STRIDES, check_input_size
from tfqat.tf_compat import keras

layers = keras.layers

__all__ = ["ACTIVATIONS", "OUTPUT_NAMES", "SIZES", "STRIDES", "build_yolo"]


def detect_head(features, num_classes, reg_max, act):
    """Decoupled YOLOv8 head; returns [box_p3, cls_p3, box_p4, cls_p4, box_p5, cls_p5]."""
    box_width = max(16, features[0].shape[-1] // 4, 4 * reg_max)
    cls_width = max(features[0].shape[-1], min(num_classes, 100))
    outputs = []
    for x, level, stride in zip(features, LEVELS, STRIDES):
        box = conv_bn_act(x, box_width, 3, 1, f"box_{level}_cv1", act)
        box = conv_bn_act(box, box_width, 3, 1, f"box_{level}_cv2", act)
        box = layers.Conv2D(
            4 * reg_max, 1, bias_initializer=keras.initializers.Constant(1.0), name=f"box_{level}"
        )(box)
        # Prior: about 5 objects per 640x640 image, spread over the classes and this level's cells.
        cls_prior = math.log(5 / num_classes / (640 / stride) ** 2)
        cls = conv_bn_act(x, cls_width, 3, 1, f"cls_{level}_cv1", act)
        cls = conv_bn_act(cls, cls_width, 3, 1, f"cls_{level}_cv2", act)
        cls = layers.Conv2D(
            num_classes,
            1,
            bias_initializer=keras.initializers.Constant(cls_prior),
            name=f"cls_{level}",
        )(cls)
        outputs += [box, cls]
    return outputs


def build_yolo(num_classes, size="n", input_size=(256, 256), activation="silu", reg_max=16):
    """Builds the YOLOv8-style detector.

    Args:
      num_classes: number of object classes.
      size: a key of `SIZES`.
      input_size: (height, width), multiples of 32.
      activation: a key of `ACTIVATIONS`.
      reg_max: DFL bins per box side; distances cover 0 .. reg_max - 1 strides.

    Returns:
      A keras.Model taking float32 images [B, H, W, 3] with pixel values 0..255 (RGB, as the
      device has them; no normalisation outside the model), and returning the list of six head
      tensors named as in `OUTPUT_NAMES`.
    """
    depth_mult, width_mult, max_channels = lookup(SIZES, size, "YOLO size")
    act = lookup(ACTIVATIONS, activation, "activation")
    if num_classes < 1 or reg_max < 2:
        raise ValueError(f"need num_classes >= 1 and reg_max >= 2; got {num_classes}, {reg_max}")
    height, width = check_input_size(input_size)

    def ch(c):
        return make_divisible(min(c, max_channels) * width_mult)

    def n(d):
        return max(round(d * depth_mult), 1)

    images = keras.Input((height, width, 3), dtype="float32", name="image")
    # Normalisation is folded into the stem: it sees raw 0..255 pixels and its BatchNormalization
    # (folded into the conv by TF-MOT) learns the affine map. No Rescaling layer: TF-MOT's
    # default scheme does not quantize it. The stem kernel keeps the usual initializer on
    # purpose: shrinking it 127.5x (unit-scale outputs at init) makes its gradient relative to
    # its weights 127.5**2 times larger than in a normalised-input net (measured |g|/|w|: 7e4,
    # against 4.5 for the next conv), and the stem then thrashes under SGD or Adam. BN is
    # scale-invariant, so the larger pre-BN values cost nothing; only BN's moving variance
    # takes ~100 steps to reach them.
    x = conv_bn_act(images, ch(64), 3, 2, "stem", act)  # P1/2

    # === Backbone ===
    x = conv_bn_act(x, ch(128), 3, 2, "down_p2", act)
    x = c2f(x, ch(128), n(3), True, "c2f_p2", act)
    x = conv_bn_act(x, ch(256), 3, 2, "down_p3", act)
    p3 = c2f(x, ch(256), n(6), True, "c2f_p3", act)
    x = conv_bn_act(p3, ch(512), 3, 2, "down_p4", act)
    p4 = c2f(x, ch(512), n(6), True, "c2f_p4", act)
    x = conv_bn_act(p4, ch(1024), 3, 2, "down_p5", act)
    x = c2f(x, ch(1024), n(3), True, "c2f_p5", act)
    p5 = sppf(x, ch(1024), "sppf", act)

    # === PAN-FPN neck ===
    x = layers.UpSampling2D(2, interpolation="nearest", name="up_p5")(p5)
    x = layers.Concatenate(name="cat_top_p4")([x, p4])
    top_p4 = c2f(x, ch(512), n(3), False, "c2f_top_p4", act)
    x = layers.UpSampling2D(2, interpolation="nearest", name="up_p4")(top_p4)
    x = layers.Concatenate(name="cat_out_p3")([x, p3])
    out_p3 = c2f(x, ch(256), n(3), False, "c2f_out_p3", act)
    x = conv_bn_act(out_p3, ch(256), 3, 2, "down_out_p3", act)
    x = layers.Concatenate(name="cat_out_p4")([x, top_p4])
    out_p4 = c2f(x, ch(512), n(3), False, "c2f_out_p4", act)
    x = conv_bn_act(out_p4, ch(512), 3, 2, "down_out_p4", act)
    x = layers.Concatenate(name="cat_out_p5")([x, p5])
    out_p5 = c2f(x, ch(1024), n(3), False, "c2f_out_p5", act)

    # === Head ===
    outputs = detect_head([out_p3, out_p4, out_p5], num_classes, reg_max, act)
    model = keras.Model(images, outputs, name=f"yolo_{size}_{activation}")
    assert tuple(model.output_names) == OUTPUT_NAMES, model.output_names
    return model
