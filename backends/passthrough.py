"""Images passed on as the backend sent them: a cheap check of base64 PNG/JPEG instead of decode + re-encode.

A 512×512 PNG is ~550 kB of base64; decoding it, verifying every chunk and encoding it again costs the
gateway 1.5-2 ms of CPU per image for bytes it only forwards. `check_b64_image` looks at the ends only:
the base64 is ASCII with a whole number of quanta and under a size bound, the first bytes carry a PNG or
JPEG signature and a header naming the expected width × height, and the last bytes the format's end
marker (IEND / EOI), so a truncated or mislabelled image is refused. Pixels are decoded only if someone
asks for them (`LazyImages`).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence

from PIL import Image

MAX_IMAGE_BYTES = 32 * 2**20  # far above any 1024×1024 PNG; bounds what one field may hold
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_HEADER_CHARS = 87_384  # base64 of 64 KiB + a marker: room for an EXIF segment before the frame header


class ImageCheckError(ValueError):
    """The payload is not the PNG/JPEG the check expects."""


def _decode(chars: str) -> bytes:
    try:
        return binascii.a2b_base64(chars, strict_mode=True)
    except binascii.Error as exc:
        raise ImageCheckError(f"not base64 ({exc})") from exc


def _jpeg_size(head: bytes) -> tuple[int, int]:
    """(width, height) from the first frame header (SOFn) within `head`."""
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            raise ImageCheckError("JPEG: broken marker sequence")
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in JPEG_SOF:
            return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(head[i + 5 : i + 7], "big")
        i += 2 + int.from_bytes(head[i + 2 : i + 4], "big")
    raise ImageCheckError("JPEG: no frame header in the first 64 KiB")


def check_b64_image(
    data: object, width: int | None = None, height: int | None = None, max_bytes: int = MAX_IMAGE_BYTES
) -> str:
    """The format ("PNG" or "JPEG") of a base64 image that passes the cheap check; ImageCheckError otherwise."""
    if not isinstance(data, str):
        raise ImageCheckError(f"expected a base64 string, got {type(data).__name__}")
    if len(data) > (max_bytes + 2) // 3 * 4:
        raise ImageCheckError(f"larger than {max_bytes:,} bytes")
    if len(data) < 32 or len(data) % 4 or not data.isascii():
        raise ImageCheckError("not base64 (length or characters)")
    tail = _decode(data[-24:])
    if data.startswith(base64.b64encode(PNG_SIGNATURE).decode()[:10]):
        head = _decode(data[:32])
        if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
            raise ImageCheckError("PNG: no IHDR header")
        if not tail.endswith(PNG_END):
            raise ImageCheckError("PNG: no IEND at the end (truncated?)")
        kind, size = "PNG", (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
    elif data.startswith("/9j/"):  # FF D8 FF
        head = _decode(data[: min(len(data), JPEG_HEADER_CHARS)])
        if not tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ImageCheckError("JPEG: no end-of-image marker (truncated?)")
        kind, size = "JPEG", _jpeg_size(head)
    else:
        raise ImageCheckError("neither a PNG nor a JPEG signature")
    if width is not None and height is not None and size != (width, height):
        raise ImageCheckError(f"image is {size[0]}x{size[1]}, asked {width}x{height}")
    return kind


class LazyImages(Sequence[Image.Image]):
    """PIL images of base64 payloads, each decoded on first access (the hot path never touches them)."""

    def __init__(self, payloads: Sequence[str]):
        self._payloads = list(payloads)
        self._images: list[Image.Image | None] = [None] * len(self._payloads)

    def __len__(self) -> int:
        return len(self._payloads)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._images[index] is None:
            image = Image.open(io.BytesIO(base64.b64decode(self._payloads[index])))
            image.load()
            self._images[index] = image
        return self._images[index]
