"""What sizes the pose network comes in, without TensorFlow: the model builder
(`tfqat.models.pose`) and the recipe check read them."""

# name -> (channels at strides 2, 4, 8, 16, 32; C2f depth at strides 4, 8, 16, 32; head
# channels). Per 128x96 crop with 17 keypoints: multiply-accumulates, all weights (incl. BN
# statistics), and a float training step at batch 32 on this project's 2 cores (AdamW, TF 2.21):
#   n  41 M MAC, 0.64 M weights, 271 ms/step
#   s  78 M MAC, 1.23 M weights, 380 ms/step   (the demo size)
#   m 183 M MAC, 2.95 M weights, about 2x "s"
SIZES = {
    "n": ((16, 24, 48, 96, 192), (1, 1, 1, 1), 48),
    "s": ((16, 32, 64, 128, 256), (1, 2, 2, 1), 64),
    "m": ((24, 48, 96, 192, 384), (1, 2, 3, 1), 96),
}
