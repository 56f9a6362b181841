"""Small file helpers with no TensorFlow import."""

import os


def atomic_write(path: str, data: str | bytes):
    """Writes `path` through a temporary file and a rename, so readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, path)
