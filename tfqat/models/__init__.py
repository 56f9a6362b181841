"""Float models, one module per family with a plain `build_*` (`yolo`, `pose`) and their shared
layers (`layers`). Nothing of quantization. May import `data` only."""
