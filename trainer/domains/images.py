"""Images of prompts: encoded file bytes or paths in, RGB PIL images out (imports PIL only, not torch)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def png(image: Image.Image) -> bytes:
    """The image as PNG file bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def open_image(src: bytes | str) -> Image.Image:
    """An RGB PIL image from encoded file bytes or a file path."""
    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
        return im.convert("RGB")


def visual_messages(sample: Any) -> list[dict[str, Any]]:
    """Chat messages of a sample with images: the images (a video's frames in order), then the prompt text,
    as the content parts of the (first) user message."""
    parts = [{"type": "image", "image": open_image(src)} for src in sample.images]
    if sample.messages is None:
        return [{"role": "user", "content": parts + [{"type": "text", "text": sample.prompt}]}]
    out, placed = [], False
    for role, content in sample.messages:
        if role == "user" and not placed:
            out.append({"role": role, "content": parts + [{"type": "text", "text": content}]})
            placed = True
        else:
            out.append({"role": role, "content": content})
    return out
