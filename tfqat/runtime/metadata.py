"""Reads the deployment metadata of an exported file, with the standard library only.

No TensorFlow and no LiteRT schema, so a device with nothing but tflite-runtime can read it.
`tfqat.export.metadata` writes it: embedded in a .tflite as a Model.metadata entry named
`METADATA_NAME` (where TFLite keeps its own "min_runtime_version"), and as
`export/metadata.json` for the .onnx / OpenVINO files made from the same model.
"""

import json
import os
import struct

METADATA_NAME = "tfqat_metadata"
METADATA_FILE = "metadata.json"


def read_metadata(path: str) -> dict:
    """The metadata of an exported file.

    A .tflite carries it inside; without an embedded entry, and for .onnx / .xml files, it is
    `metadata.json` next to the file or in its parent folder (export/openvino/model.xml ->
    export/metadata.json). Raises FileNotFoundError naming the places looked at, ValueError
    when the file is not a .tflite or is cut short.
    """
    path = os.fspath(path)
    if path.endswith(".tflite"):
        entries = tflite_metadata_entries(path)
        if METADATA_NAME in entries:
            return _parse(entries[METADATA_NAME], path)
    folder = os.path.dirname(os.path.abspath(path))
    candidates = [
        os.path.join(folder, METADATA_FILE),
        os.path.join(os.path.dirname(folder), METADATA_FILE),
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                return _parse(f.read(), candidate)
    inside = f"no {METADATA_NAME!r} entry in the file, and " if path.endswith(".tflite") else ""
    raise FileNotFoundError(
        f"{path}: no tfqat metadata: {inside}no {' or '.join(candidates)} (re-export the run "
        "with `python -m tfqat.export --model_dir=DIR`)"
    )


def _parse(data: bytes, source: str) -> dict:
    try:
        return json.loads(data.decode())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{source}: its tfqat metadata is not valid JSON ({e})") from e


def tflite_metadata_entries(tflite_model) -> dict[str, bytes]:
    """Name -> bytes of every Model.metadata entry of a .tflite, read with `struct` only.

    Raises ValueError naming the file when it is not a .tflite or ends before its data does.
    """
    if isinstance(tflite_model, (bytes, bytearray)):
        data, source = tflite_model, "the .tflite"
    else:
        source = os.fspath(tflite_model)
        with open(source, "rb") as f:
            data = f.read()
    try:
        return _metadata_entries(_FlatbufferReader(bytes(data)))
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{source}: not a valid .tflite file: it ends before its data does (truncated?)"
        ) from e
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def _metadata_entries(reader) -> dict[str, bytes]:
    model = reader.root()
    buffers = reader.table_vector(model, _MODEL_BUFFERS)
    entries = {}
    for entry in reader.table_vector(model, _MODEL_METADATA):
        name = reader.string(entry, _METADATA_NAME_FIELD)
        index = reader.scalar(entry, _METADATA_BUFFER_FIELD, "<I")
        entries[name] = reader.buffer_bytes(buffers[index])
    return entries


def min_runtime_version(tflite_model) -> str:
    """The converter's estimate of the oldest TFLite runtime that runs the file ("" if none)."""
    entry = tflite_metadata_entries(tflite_model).get("min_runtime_version", b"")
    return entry.rstrip(b"\0").decode(errors="replace")


# Field numbers in TFLite's schema.fbs: table Model, table Metadata, table Buffer.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME_FIELD, _METADATA_BUFFER_FIELD = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class _FlatbufferReader:
    """The few flatbuffer reads the metadata needs: tables, vectors of tables, strings, bytes.

    A read past the end of the data raises struct.error or IndexError.
    """

    def __init__(self, data: bytes):
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise ValueError("not a .tflite file (no TFL3 flatbuffer identifier)")
        self.data = data

    def _slice(self, start: int, length: int) -> bytes:
        if start + length > len(self.data):
            raise IndexError(f"bytes {start}..{start + length} of {len(self.data)}")
        return self.data[start : start + length]

    def _u32(self, position: int) -> int:
        return struct.unpack_from("<I", self.data, position)[0]

    def root(self) -> int:
        return self._u32(0)

    def _field(self, table: int, field: int):
        """Absolute position of a table's field, or None when the field is absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * field
        if slot >= vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def _target(self, table: int, field: int):
        position = self._field(table, field)
        return None if position is None else position + self._u32(position)

    def scalar(self, table: int, field: int, fmt: str, default=0):
        position = self._field(table, field)
        return default if position is None else struct.unpack_from(fmt, self.data, position)[0]

    def _vector(self, table: int, field: int):
        vector = self._target(table, field)
        if vector is None:
            return 0, 0
        return vector + 4, self._u32(vector)

    def table_vector(self, table: int, field: int) -> list[int]:
        start, length = self._vector(table, field)
        self._slice(start, 4 * length)
        return [start + 4 * i + self._u32(start + 4 * i) for i in range(length)]

    def string(self, table: int, field: int) -> str:
        start, length = self._vector(table, field)
        return self._slice(start, length).decode()

    def buffer_bytes(self, buffer: int) -> bytes:
        """A Buffer's bytes: inline, or after the flatbuffer (files over 2 GB)."""
        start, length = self._vector(buffer, _BUFFER_DATA)
        if length:
            return self._slice(start, length)
        offset = self.scalar(buffer, _BUFFER_OFFSET, "<Q")
        size = self.scalar(buffer, _BUFFER_SIZE, "<Q")
        return self._slice(offset, size) if offset > 1 else b""
