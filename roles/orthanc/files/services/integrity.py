"""Integrity: refuse, at C-STORE, an image whose pixel data is cut short.

Orthanc stores what its DICOM parser could read: a file cut in the middle of its
pixel data (a network or disk fault at the modality) would be archived as it is,
and the modality told "stored". This service checks each incoming instance with
uncompressed pixel data: the PixelData element must hold all the bytes it
declares, and at least Rows x Columns x SamplesPerPixel x BitsAllocated/8 x
NumberOfFrames. Otherwise the C-STORE fails (0xA900, "data set does not match SOP
class"); the modality keeps the image and can send it again.

``pixel_data_problem`` is plain Python, tested in tests/test_orthanc_integrity.py;
``setup`` is the boundary with Orthanc.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Uncompressed transfer syntaxes, and whether their VR is explicit.
NATIVE = {
    "1.2.840.10008.1.2": False,  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": True,  # Explicit VR Little Endian
}
PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"
REFUSED = 0xA900


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value).split("\\")[0])
    except (TypeError, ValueError):
        return default


def expected_pixel_bytes(tags: Mapping[str, Any]) -> int | None:
    """Bytes of uncompressed pixel data that the image's tags announce."""
    rows, columns = _int(tags.get("Rows"), 0), _int(tags.get("Columns"), 0)
    bits = _int(tags.get("BitsAllocated"), 0)
    if not (rows and columns and bits):
        return None
    samples = _int(tags.get("SamplesPerPixel"), 1)
    frames = _int(tags.get("NumberOfFrames"), 1)
    return rows * columns * samples * frames * bits // 8


def pixel_data_problem(raw: bytes, transfer_syntax: str, tags: Mapping[str, Any]) -> str | None:
    """Why this instance's pixel data is incomplete, or None when it is whole (or compressed)."""
    explicit = NATIVE.get(transfer_syntax)
    if explicit is None:
        return None  # compressed or big endian: not checked here
    start = raw.rfind(PIXEL_DATA_LE)
    if start < 0:
        return None  # no pixel data (a structured report, a key object...)
    if explicit:
        header = 12  # tag, VR, 2 reserved bytes, 4-byte length
        length = int.from_bytes(raw[start + 8 : start + 12], "little")
    else:
        header = 8
        length = int.from_bytes(raw[start + 4 : start + 8], "little")
    if length == 0xFFFFFFFF:
        return None  # undefined length: encapsulated
    present = len(raw) - start - header
    if present < length:
        return f"PixelData declares {length} bytes but {present} follow"
    expected = expected_pixel_bytes(tags)
    if expected is not None and length < expected:
        return f"PixelData holds {length} bytes, the image needs {expected}"
    return None


def setup(orthanc: Any, _settings: Mapping[str, Any]) -> None:
    """Check every instance received by C-STORE (called by pacs_services.py)."""

    def check(received: Any) -> int:
        try:
            tags = json.loads(received.GetInstanceSimplifiedJson())
            problem = pixel_data_problem(
                bytes(received.GetInstanceData()),
                str(tags.get("TransferSyntaxUID") or received.GetInstanceTransferSyntaxUid()),
                tags,
            )
        except Exception as exc:  # never let a check error stop the archive
            orthanc.LogError(f"integrity: check failed, instance accepted: {exc!r}")
            return 0
        if problem:
            orthanc.LogWarning(
                f"integrity: refused {tags.get('SOPInstanceUID', '?')} from "
                f"{received.GetInstanceRemoteAet()}: {problem}"
            )
            return REFUSED
        return 0

    orthanc.RegisterIncomingCStoreInstanceFilter(check)
    orthanc.LogWarning("integrity: incoming images are checked for truncated pixel data")
