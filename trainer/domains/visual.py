"""Domains with visual inputs: the builtin rendered ones, and images / video frames of jsonl records.

`builtin:shapes` (image reasoning): a 56×56 picture of a 4×4 board, each cell empty or holding a red, green or
blue square. Questions: `r?` / `g?` / `b?` how many squares of that colour; `r>b?` which colour has more
(`R`, `B`, or `=`); `@23?` the colour in row 2, column 3 (`r`, `g`, `b`, or `-` for empty).

`builtin:motion` (video reasoning): 3 or 4 frames, 84×28 each (a strip of 6 columns, 2 rows), of a red square
moving at a constant velocity along its row, grey specks flickering at random (sensor noise). Questions:
`v?` its direction (`L`, `R`, `S`), `d?` its displacement from the first frame to the last in columns, `n?`
its column (1-6) in the next, unseen frame.

The pictures are rendered with PIL and kept as PNG bytes (a few hundred bytes each); prompts are told apart by
their text and image bytes (`Sample.pool_key`), and the held-out pool is `held_out` of that key, so no seed's
eval picture is ever a train picture. This module imports no torch (the server previews domains with it).

>>> d = build_shapes(0)
>>> len(d.train), len(d.eval), len(d.eval[0].images)
(4000, 512, 1)
"""

from __future__ import annotations

import base64
import functools
import io
import random
from pathlib import Path
from typing import Any, Mapping

from PIL import Image, ImageDraw, UnidentifiedImageError

import trainer.domains.frames as frames
import trainer.domains.video as video
from trainer.domains.images import open_image, png  # noqa: F401  (importable from here too)
from trainer.domains.base import Domain, DomainError, Sample, draw_splits, held_out
from trainer.domains.verifiers import score_exact

SHAPES_KEY, MOTION_KEY = "builtin:shapes", "builtin:motion"
TRAIN_SIZE, EVAL_SIZE = 4000, 512
CELL = 14                        # pixels: one vision patch of a Qwen2-VL-family model
BOARD = 4                        # shapes: 4×4 cells
FILL_P = 0.4                     # shapes: chance a cell holds a square
COLOURS = {"r": (220, 30, 30), "g": (30, 170, 30), "b": (30, 60, 220)}
MOTION_COLS, MOTION_ROWS = 6, 2
SPECK_P = 0.08                   # motion: chance of a grey speck in a cell, per frame
_SALT_SHAPES, _SALT_MOTION = 0x5A1E, 0x30F1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# ---- builtin:shapes ------------------------------------------------------------------------------

def _board_image(board: list[str]) -> Image.Image:
    """A 56×56 picture of a board: one string of BOARD·BOARD cells, each '-' or a colour letter."""
    im = Image.new("RGB", (BOARD * CELL, BOARD * CELL), (245, 245, 245))
    draw = ImageDraw.Draw(im)
    for i, c in enumerate(board):
        if c != "-":
            x, y = (i % BOARD) * CELL, (i // BOARD) * CELL
            draw.rectangle([x + 2, y + 2, x + CELL - 3, y + CELL - 3], fill=COLOURS[c])
    return im


def shapes_answer(board: str, question: str) -> str:
    """The answer to `question` about a board."""
    if question.startswith("@"):
        row, col = int(question[1]), int(question[2])
        return board[(row - 1) * BOARD + col - 1]
    if question == "r>b?":
        r, b = board.count("r"), board.count("b")
        return "R" if r > b else "B" if b > r else "="
    return str(board.count(question[0]))


def draw_shapes(rng: random.Random) -> Sample:
    """One random board and question."""
    board = "".join(rng.choice("rgb") if rng.random() < FILL_P else "-" for _ in range(BOARD * BOARD))
    kind = rng.choice(("count", "compare", "cell"))
    if kind == "count":
        question = rng.choice("rgb") + "?"
    elif kind == "compare":
        question = "r>b?"
    else:
        question = f"@{rng.randint(1, BOARD)}{rng.randint(1, BOARD)}?"
    return Sample(question, shapes_answer(board, question), images=(png(_board_image(list(board))),))


def shapes_habit(sample: Sample) -> str:
    """The warm start's systematic mistake: one square too many when counting, ties read as R, an empty
    cell read as red."""
    a = sample.answer
    if a.isdigit():
        return str(int(a) + 1)
    return {"=": "R", "-": "r"}.get(a, a)


def build_shapes(seed: int) -> Domain:
    """The shapes domain for `seed`: 4000 train and 512 eval samples, no picture-and-question in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT_SHAPES), draw_shapes, TRAIN_SIZE, EVAL_SIZE,
                               functools.partial(held_out, SHAPES_KEY))
    return Domain(key=SHAPES_KEY, train=train, eval=eval_, verifier=score_exact, habit=shapes_habit)


# ---- builtin:motion ------------------------------------------------------------------------------

def _strip_image(col: int, row: int, rng: random.Random) -> Image.Image:
    """One 84×28 frame: the red square at (col, row), grey specks elsewhere at random."""
    im = Image.new("RGB", (MOTION_COLS * CELL, MOTION_ROWS * CELL), (245, 245, 245))
    draw = ImageDraw.Draw(im)
    for c in range(MOTION_COLS):
        for r in range(MOTION_ROWS):
            x, y = c * CELL, r * CELL
            if (c, r) == (col, row):
                draw.rectangle([x + 2, y + 2, x + CELL - 3, y + CELL - 3], fill=COLOURS["r"])
            elif rng.random() < SPECK_P:
                draw.ellipse([x + 5, y + 5, x + 9, y + 9], fill=(120, 120, 120))
    return im


def draw_motion(rng: random.Random) -> Sample:
    """One random clip and question (frames.py's trajectories: constant velocity, inside the strip)."""
    question, n = rng.choice(frames.QUESTIONS), rng.choice(frames.FRAME_COUNTS)
    positions = frames._trajectory(rng, n + 1 if question == "n?" else n, MOTION_COLS)
    row = rng.randrange(MOTION_ROWS)
    clip = tuple(png(_strip_image(p, row, rng)) for p in positions[:n])
    return Sample(question, frames.answer(positions, question), images=clip)


def build_motion(seed: int) -> Domain:
    """The motion domain for `seed`: 4000 train and 512 eval clips, no clip-and-question in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT_MOTION), draw_motion, TRAIN_SIZE, EVAL_SIZE,
                               functools.partial(held_out, MOTION_KEY))
    return Domain(key=MOTION_KEY, train=train, eval=eval_, verifier=score_exact, habit=frames.habit)


# ---- images and frames of records ----------------------------------------------------------------

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
    from dataclasses import replace
    frames = spec.video_frames if field == getattr(spec, "video_field", None) else None
    return replace(sample, images=record_images(record, field, where, base, video_frames=frames))
