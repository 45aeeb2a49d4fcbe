# -*- test-case-name: tests.test_uploads_service -*-
"""
Thumbnails of uploaded images, made with Pillow (blocking: run them on a
thread). The image's size is read from its header and checked against a
pixel bound before any pixel is decoded, so a decompression bomb (a small
file that claims a huge image) is refused, not rendered.
"""

from __future__ import annotations

import os
import warnings

from twisted.python.filepath import FilePath

#: The image types a thumbnail is made of (not SVG: it is a document).
THUMBNAIL_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class ThumbnailError(Exception):
    """
    No thumbnail can be made of this file.
    """


def makeThumbnail(source: FilePath[str], target: FilePath[str], size: int, maxPixels: int) -> None:
    """
    Write a JPEG at most C{size} px on its long side of the image at
    C{source} to C{target} (atomically).

    @raise ThumbnailError: if it is not a readable JPEG, PNG, GIF or WebP,
        or has more than C{maxPixels} pixels.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source.path) as image:
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
                target.parent().makedirs(ignoreExistingDirectory=True)
                temporary = target.siblingExtension(".tmp")
                image.save(temporary.path, "JPEG", quality=80)
                os.replace(temporary.path, target.path)
    except ThumbnailError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ThumbnailError("image too large for a thumbnail (a decompression bomb?)")
    except (OSError, ValueError, SyntaxError) as error:
        raise ThumbnailError(f"unreadable image: {error}")
