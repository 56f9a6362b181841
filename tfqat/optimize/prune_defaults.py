"""Pruning defaults that TF-free code (recipe flags, tools) shares with `tfqat.optimize.prune`."""

# The 3-channel stem and the final output convolutions (detector heads, pose heatmaps) are small
# and sensitive: they stay dense.
DEFAULT_EXCLUDE = (r"^stem", r"^(box|cls)_p\d$", r"^heatmaps$")
