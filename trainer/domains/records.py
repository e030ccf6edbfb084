"""The images or a video's frames of a jsonl / dataset record (docs/vlm.md): paths, bytes, data: URIs, folders
of frames, video files (trainer/domains/video.py), each checked readable when the domain loads; a bad one
fails the domain with one line naming the record and the field. Imports no torch."""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from PIL import Image, UnidentifiedImageError

import trainer.domains.video as video
from trainer.domains.base import DomainError, Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _sources(value: Any, where: str, field: str) -> list[bytes | str]:
    """A record field's images: a path, a data: URI, {bytes | path} (HF datasets' Image), raw bytes, or a list."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise DomainError(f"{where}: field '{field}' is an empty list")
        return [s for v in value for s in _sources(v, where, field)]
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return [bytes(value["bytes"])]
        if value.get("path"):
            return [str(value["path"])]
        raise DomainError(f"{where}: field '{field}' has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value)]
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value:
        try:
            return [base64.b64decode(value.split(";base64,", 1)[1], validate=True)]
        except ValueError:
            raise DomainError(f"{where}: field '{field}' is not valid base64") from None
    if isinstance(value, str) and value.strip():
        return [value]
    raise DomainError(f"{where}: field '{field}' must be an image path, bytes or a list of them")


def record_images(record: Mapping[str, Any], field: str, where: str, base: Path,
                  video_frames: int | None = None) -> tuple[bytes | str, ...]:
    """The images (or a video's frames, in order) of a record, checked readable; paths resolve from `base`
    (the data file's folder), a folder of frames reads its image files in name order. With `video_frames`
    (a video field), a file that is not an image is a video: `video_frames` of its frames, uniformly sampled."""
    if field not in record:
        raise DomainError(f"{where}: missing field '{field}'")
    out: list[bytes | str] = []
    for src in _sources(record[field], where, field):
        if isinstance(src, str):
            p = Path(src).expanduser()
            p = p if p.is_absolute() else base / p
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    raise DomainError(f"{where}: field '{field}': folder {src} holds no image files")
                out.extend(str(f) for f in files)
                continue
            if not p.is_file():
                kind = "video" if video_frames and p.suffix.lower() not in IMAGE_SUFFIXES else "image"
                raise DomainError(f"{where}: field '{field}': {kind} file not found: {src}")
            if video_frames and p.suffix.lower() not in IMAGE_SUFFIXES:
                try:
                    out.extend(video.decode_video(str(p), video_frames))
                except video.VideoError as err:
                    raise DomainError(f"{where}: field '{field}': video file {src} {err}") from None
                continue
            src = str(p)
        out.append(src)
    for src in out:
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            name = src if isinstance(src, str) else f"{len(src)} bytes"
            raise DomainError(f"{where}: field '{field}': not a readable image ({name}: {type(err).__name__})") from None
    return tuple(out)


def with_record_images(sample: Sample, record: Mapping[str, Any], spec: Any, where: str, base: Path) -> Sample:
    """The sample with its record's images (spec.image_field) or video frames (spec.video_field), if the spec names one."""
    field = getattr(spec, "image_field", None) or getattr(spec, "video_field", None)
    if field is None:
        return sample
    frames = spec.video_frames if field == getattr(spec, "video_field", None) else None
    return replace(sample, images=record_images(record, field, where, base, video_frames=frames))
