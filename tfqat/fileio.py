"""File helpers with no TensorFlow import: the one `atomic_write`."""

import os


def atomic_write(path: str, data: str | bytes):
    """Writes `path` through a temporary file, fsync and a rename, so that readers never see
    half a file and a crash (or a full disk) leaves the previous version in place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def fsync_directory(path: str):
    """Makes a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
