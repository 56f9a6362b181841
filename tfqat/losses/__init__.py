"""Training losses (TensorFlow). May import `data` and `models`."""
