"""The image files of a dataset: each decoded fully once and reported missing, undecodable,
truncated or wrongly sized; the verdicts cached per file in `CACHE_FILE` under the cache folder."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageFile

from tfqat.data.coco.records import _Image, _Problems
from tfqat.data.images import decoded_size, default_cache_dir
from tfqat.fileio import atomic_write

CACHE_FILE = "image_checks.json"

_CACHE_VERSION = 1
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

log = logging.getLogger(__name__)


def _check_image_files(
    images: dict[int, _Image],
    image_dir: str,
    exif_transpose: bool,
    cache_dir: str | None,
    num_workers: int,
    problems: _Problems,
) -> None:
    """Decodes every image fully (or takes the cached verdict) and reports missing, undecodable,
    truncated and wrongly sized images. Threads, not processes: PIL decodes with the GIL
    released, and a process pool would fork a process that may hold TensorFlow's threads."""
    if not images:
        return
    if not os.path.isdir(image_dir):
        problems.file("missing_file", f"image folder not found: {image_dir}")
        return
    _require_strict_decoding()
    start = time.perf_counter()
    cache = _CheckCache(cache_dir or default_cache_dir(), exif_transpose)
    records = list(images.values())
    paths = [os.path.join(image_dir, image.file_name) for image in records]
    pool = ThreadPoolExecutor(max_workers=num_workers)
    try:
        for image, path, (verdict, stamp) in zip(records, paths, _verdicts(paths, cache, pool)):
            if stamp is not None:
                cache.put(path, stamp, verdict)
            _report_image(image, path, verdict, exif_transpose, problems)
    finally:
        pool.shutdown(cancel_futures=True)  # an interrupted check stops without decoding the rest
        cache.save()
    seconds = time.perf_counter() - start
    decoded = len(cache.new)
    log.info(
        "checked %d images in %.1f s (%.2f s per 1,000; %d threads): %d decoded, %d from %s",
        len(records),
        seconds,
        1000 * seconds / len(records),
        num_workers,
        decoded,
        len(records) - decoded,
        cache.path,
    )


def _verdicts(paths: list[str], cache: _CheckCache, pool: ThreadPoolExecutor):
    """(verdict, stamp to cache it under or None) of each path, in order: the known ones looked up
    here, the others decoded by `pool` (a task per file costs more than a cached lookup)."""
    lookups = [cache.lookup(path) for path in paths]
    decodes = [
        pool.submit(_decode_verdict, path, cache.exif_transpose) if verdict is None else None
        for path, (verdict, _) in zip(paths, lookups)
    ]
    for (verdict, stamp), decode in zip(lookups, decodes):
        yield (decode.result(), stamp) if decode else (verdict, None)


def _require_strict_decoding() -> None:
    """Truncated images are only detected while PIL's LOAD_TRUNCATED_IMAGES is off; a library may
    have switched it on for the whole process."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; set it to False to detect truncation"
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _report_image(
    image: _Image, path: str, verdict: dict, exif_transpose: bool, problems: _Problems
) -> None:
    if verdict.get("missing"):
        problems.file("missing_file", f"{image.ref()}: file not found: {path}")
    elif "error" in verdict:
        kind = "truncated_image" if "truncated" in verdict["error"] else "bad_image"
        problems.file(kind, f"{image.ref()}: cannot decode {path}: {verdict['error']}")
    elif tuple(verdict["size"]) != (image.width, image.height):
        text = _size_mismatch_message(image, path, tuple(verdict["size"]), exif_transpose)
        problems.file("size_mismatch", text)


def _size_mismatch_message(
    image: _Image, path: str, decoded: tuple[int, int], exif_transpose: bool
) -> str:
    text = (
        f"{image.ref()}: declared size {image.width}x{image.height} (width x height) but the file "
        f"decodes to {decoded[0]}x{decoded[1]}"
    )
    orientation = _exif_orientation(path)
    if orientation in _SWAPPING_ORIENTATIONS and decoded[::-1] == (image.width, image.height):
        if exif_transpose:
            text += (
                f"; the file has EXIF orientation {orientation} and the declared size is that of "
                "the "
                "image as stored: load it without exif_transpose"
            )
        else:
            text += (
                f"; the file has EXIF orientation {orientation} and the declared size is that of "
                "the "
                "rotated image: load it with exif_transpose=True (--exif_transpose)"
            )
    return text


def _exif_orientation(path: str) -> int | None:
    try:
        with Image.open(path) as img:
            return img.getexif().get(_EXIF_ORIENTATION_TAG)
    except (OSError, ValueError, SyntaxError):
        return None


def _decode_verdict(path: str, exif_transpose: bool) -> dict:
    try:
        width, height = decoded_size(path, exif_transpose)
    except Exception as e:  # any decoder failure is a verdict on the file, not a bug here
        return {"error": f"{type(e).__name__}: {e}"}
    return {"size": [width, height]}


class _CheckCache:
    """Image check verdicts, one record per absolute path:
    {"file_size": n, "mtime_ns": t, "<exif mode>": verdict}. A record whose size or mtime differs
    from the file's is stale and replaced."""

    def __init__(self, cache_dir: str, exif_transpose: bool):
        self.path = os.path.join(cache_dir, CACHE_FILE)
        self.exif_transpose = exif_transpose
        self.mode = "exif_transpose" if exif_transpose else "as_stored"
        self.entries = _read_cache(self.path)
        self.new: dict[str, dict] = {}

    def lookup(self, path: str) -> tuple[dict | None, dict | None]:
        """(verdict, None) of a missing file or a cached one; (None, stamp to cache the verdict
        under) of a file to decode."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return {"missing": True}, None
        except OSError as e:
            return {"error": f"cannot stat: {e}"}, None
        if not stat.S_ISREG(st.st_mode):
            return {"error": "not a regular file"}, None
        stamp = {"file_size": st.st_size, "mtime_ns": st.st_mtime_ns}
        record = self.entries.get(path)
        if record and _same_stamp(record, stamp) and self.mode in record:
            return record[self.mode], None
        return None, stamp

    def put(self, path: str, stamp: dict, verdict: dict) -> None:
        self.new[path] = {**stamp, self.mode: verdict}

    def save(self) -> None:
        """Merges the new verdicts into the file on disk (another process may have written it
        meanwhile), drops records of files that no longer exist, and replaces it atomically."""
        if not self.new:
            return
        merged = _read_cache(self.path)
        for path, record in self.new.items():
            old = merged.get(path)
            merged[path] = {**old, **record} if old and _same_stamp(old, record) else record
        merged = {path: record for path, record in merged.items() if os.path.exists(path)}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write(self.path, json.dumps({"version": _CACHE_VERSION, "entries": merged}))
        except OSError as e:
            log.warning("could not write the image check cache %s: %s", self.path, e)


def _same_stamp(a: dict, b: dict) -> bool:
    return a.get("file_size") == b["file_size"] and a.get("mtime_ns") == b["mtime_ns"]


def _read_cache(path: str) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable image check cache %s: %s", path, e)
        return {}
    known = isinstance(data, dict) and data.get("version") == _CACHE_VERSION
    if not (known and isinstance(data.get("entries"), dict)):
        log.warning("ignoring image check cache %s: unknown format", path)
        return {}
    return data["entries"]
