"""Training losses (TensorFlow)."""
