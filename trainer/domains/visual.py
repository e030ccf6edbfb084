"""Domains with visual inputs: the builtin rendered ones (a record's images: trainer/domains/records.py).

`builtin:shapes` (image reasoning): a 56×56 picture of a 4×4 board, each cell empty or holding a red, green or
blue square. Questions: `r?` / `g?` / `b?` how many squares of that colour; `r>b?` which colour has more
(`R`, `B`, or `=`); `@23?` the colour in row 2, column 3 (`r`, `g`, `b`, or `-` for empty).

`builtin:motion` (video reasoning): 3 or 4 frames, 28×28 each (4 × 4 cells of 7 px: one vision token a frame),
of a red square moving at a constant velocity along its row, grey specks flickering at random (sensor noise).
Questions: `v?` its direction (`L`, `R`, `S`), `d?` its displacement from the first frame to the last in
columns, `n?` (half of them) its cell in the next, unseen frame, as row and column (`23`: row 2, column 3).

The pictures are rendered with PIL and kept as PNG bytes (a few hundred bytes each); prompts are told apart by
their text and image bytes (`Sample.pool_key`), and the held-out pool is `held_out` of that key, so no seed's
eval picture is ever a train picture. This module imports no torch (the server previews domains with it).

>>> d = build_shapes(0)
>>> len(d.train), len(d.eval), len(d.eval[0].images)
(4000, 512, 1)
"""

from __future__ import annotations

import functools
import random

from PIL import Image, ImageDraw

import trainer.domains.frames as frames
from trainer.domains.images import open_image, png  # noqa: F401  (importable from here too)
from trainer.domains.base import Domain, Sample, draw_splits, held_out
from trainer.domains.verifiers import score_exact

SHAPES_KEY, MOTION_KEY = "builtin:shapes", "builtin:motion"
TRAIN_SIZE, EVAL_SIZE = 4000, 512
CELL = 14                        # pixels: one vision patch of a Qwen2-VL-family model
BOARD = 4                        # shapes: 4×4 cells
FILL_P = 0.4                     # shapes: chance a cell holds a square
COLOURS = {"r": (220, 30, 30), "g": (30, 170, 30), "b": (30, 60, 220)}
# motion: a frame is 28×28, the smallest image a Qwen2-VL-family model takes, so it is ONE token after the 2×2
# merge and the square's place is in that token's content, not in RoPE positions offset differently in every
# frame (84×28 frames of three tokens each: docs/results/vl.md, "Why the video expert barely learned").
MOTION_COLS, MOTION_ROWS, MOTION_CELL = 4, 4, 7
SPECK_P = 0.08                   # motion: chance of a grey speck in a cell, per frame
# motion: half the questions ask for the next frame's cell (row and column: 16 answers), so a model that
# does not look at the frames scores ~0.1-0.2, below the warm start's band (it must learn to look to get there)
MOTION_QUESTIONS = ("n?", "n?", "d?", "v?")
_SALT_SHAPES, _SALT_MOTION = 0x5A1E, 0x30F1


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

def cell_name(i: int, width: int) -> str:
    """Cell i (row-major) as row and column, counted from 1: `23` is row 2, column 3."""
    return f"{i // width + 1}{i % width + 1}"


def _strip_image(col: int, row: int, rng: random.Random) -> Image.Image:
    """One 28×28 frame of MOTION_COLS × MOTION_ROWS cells of MOTION_CELL px: the red square at (col, row),
    grey specks elsewhere at random."""
    c_px = MOTION_CELL
    im = Image.new("RGB", (MOTION_COLS * c_px, MOTION_ROWS * c_px), (245, 245, 245))
    draw = ImageDraw.Draw(im)
    for c in range(MOTION_COLS):
        for r in range(MOTION_ROWS):
            x, y = c * c_px, r * c_px
            if (c, r) == (col, row):
                draw.rectangle([x + 1, y + 1, x + c_px - 2, y + c_px - 2], fill=COLOURS["r"])
            elif rng.random() < SPECK_P:
                draw.rectangle([x + 3, y + 3, x + 4, y + 4], fill=(120, 120, 120))
    return im


def draw_motion(rng: random.Random) -> Sample:
    """One random clip and question (frames.py's trajectories: constant velocity, inside the strip)."""
    question, n = rng.choice(MOTION_QUESTIONS), rng.choice(frames.FRAME_COUNTS)
    positions = frames._trajectory(rng, n + 1 if question == "n?" else n, MOTION_COLS)
    row = rng.randrange(MOTION_ROWS)
    clip = tuple(png(_strip_image(p, row, rng)) for p in positions[:n])
    # n?: the cell (row, column) in the next frame; frames.habit reads it one column further right, as it does
    # the column of builtin:frames
    answer = cell_name(row * MOTION_COLS + positions[-1], MOTION_COLS) if question == "n?" else frames.answer(positions, question)
    return Sample(question, answer, images=clip)


def build_motion(seed: int) -> Domain:
    """The motion domain for `seed`: 4000 train and 512 eval clips, no clip-and-question in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT_MOTION), draw_motion, TRAIN_SIZE, EVAL_SIZE,
                               functools.partial(held_out, MOTION_KEY))
    return Domain(key=MOTION_KEY, train=train, eval=eval_, verifier=score_exact, habit=frames.habit)
