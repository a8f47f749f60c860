"""The IDX format of MNIST-style files: parsing with full validation, and writing (for tests/tools).

Layout (big-endian): 2 zero bytes, a type code (0x08 = unsigned byte, ...), the number of
dimensions d, then d uint32 sizes, then prod(sizes) values in C order. An images file
of MNIST has magic 0x00000803 ([N, rows, cols] ubyte), a labels file 0x00000801 ([N] ubyte).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from src.utils.errors import DataError

# IDX type code -> big-endian numpy dtype.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
UBYTE = 0x08


def sha256_file(path: Path) -> str:
    """The file's SHA-256; an unreadable file (permissions) is a DataError naming it."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return digest.hexdigest()


def read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when the name ends in .gz; unreadable files are DataErrors."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def parse_idx(data: bytes, ndim: int, type_code: int, source: str) -> np.ndarray:
    """Parses IDX bytes, requiring `ndim` dimensions of type `type_code`.

    Raises DataError naming `source` for a wrong magic number, a truncated header or payload,
    or trailing bytes.
    """
    expected_magic = f"0x0000{type_code:02x}{ndim:02x}"
    if len(data) < 4:
        raise DataError(f"{source}: truncated: {len(data)} bytes, not even an IDX magic number")
    if data[:2] != b"\0\0" or data[2] != type_code or data[3] != ndim:
        raise DataError(
            f"{source}: wrong magic number 0x{data[:4].hex()}; expected {expected_magic} "
            f"(IDX, type 0x{type_code:02x}, {ndim} dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow however large
    payload = len(data) - header
    shape = "x".join(map(str, dims))
    if payload < expected:
        raise DataError(
            f"{source}: truncated: header declares {shape} ({expected} bytes of data), "
            f"file holds {payload}"
        )
    if payload > expected:
        raise DataError(
            f"{source}: {payload - expected} unexpected bytes after the {shape} array the header "
            "declares"
        )
    return np.frombuffer(data, dtype, count=math.prod(dims), offset=header).reshape(dims)


def read_idx(path: Path, ndim: int, type_code: int = UBYTE) -> np.ndarray:
    """Reads and validates an IDX file (raw or .gz); see parse_idx."""
    return parse_idx(read_bytes(path), ndim, type_code, str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of an array whose dtype is one of IDX_TYPES (uint8 for MNIST-style data)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"no IDX type for dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Writes array as an IDX file, gzipped when the name ends in .gz."""
    data = encode_idx(array)
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes (and so the SHA-256) independent of when the file was written.
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
