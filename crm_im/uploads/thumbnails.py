# -*- test-case-name: tests.test_uploads_service -*-
"""
Thumbnails of uploaded images, made with Pillow (blocking: run them on a
thread). The image's size is read from its header and checked against a
pixel bound before any pixel is decoded, so a decompression bomb (a small
file that claims a huge image) is refused, not rendered.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import IO, Callable

from twisted.python.filepath import FilePath

#: The image types a thumbnail is made of (not SVG: it is a document).
THUMBNAIL_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class ThumbnailError(Exception):
    """
    No thumbnail can be made of this file.
    """


def _open(path: FilePath[str]) -> IO[bytes]:
    return open(path.path, "rb")


def _write(path: FilePath[str], data: bytes) -> None:
    path.parent().makedirs(ignoreExistingDirectory=True)
    # a name of its own: two writers of one thumbnail never share it
    temporary = path.temporarySibling(".tmp")
    with open(temporary.path, "wb") as f:
        f.write(data)
    os.replace(temporary.path, path.path)


def makeThumbnail(
    source: FilePath[str],
    target: FilePath[str],
    size: int,
    maxPixels: int,
    openSource: Callable[[FilePath[str]], IO[bytes]] = _open,
    writeTarget: Callable[[FilePath[str], bytes], None] = _write,
) -> None:
    """
    Write a JPEG at most C{size} px on its long side of the image at
    C{source} to C{target} (atomically).

    @param openSource: opens the image's bytes (the file store's: they may
        be sealed at rest, and are decrypted as Pillow reads them).
    @param writeTarget: writes the thumbnail (the file store's: sealed at
        rest too); it is made in memory, never in clear on disk.

    @raise ThumbnailError: if it is not a readable JPEG, PNG, GIF or WebP,
        or has more than C{maxPixels} pixels.
    @raise OSError: if the thumbnail cannot be written: the disk's
        failure, not the image's, so not a L{ThumbnailError} (whose 404
        says the image is unreadable).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with openSource(source) as handle, Image.open(handle) as image:
                if image.format not in ("JPEG", "PNG", "GIF", "WEBP"):
                    raise ThumbnailError(f"not an image a thumbnail is made of ({image.format})")
                width, height = image.size
                if width <= 0 or height <= 0 or width * height > maxPixels:
                    raise ThumbnailError(f"image too large for a thumbnail ({width}x{height} px)")
                image.draft("RGB", (size, size))
                image.thumbnail((size, size))
                if image.mode not in ("RGB", "L"):
                    background = Image.new("RGB", image.size, (255, 255, 255))
                    converted = image.convert("RGBA")
                    background.paste(converted, mask=converted.split()[-1])
                    image = background  # type: ignore[assignment]
                out = io.BytesIO()
                image.save(out, "JPEG", quality=80)
                data = out.getvalue()
    except ThumbnailError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ThumbnailError("image too large for a thumbnail (a decompression bomb?)")
    except (OSError, ValueError, SyntaxError):
        # (Pillow's message names the file's path on disk: not for clients)
        raise ThumbnailError("unreadable image")
    writeTarget(target, data)
