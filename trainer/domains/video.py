"""Video files of records: decoded with PyAV (the optional `video` extra) into frames sampled uniformly in
time, kept as PNG bytes — the same image sequence a folder of frames gives (docs/vlm.md). Imports no torch,
and PyAV only when a video file is read, so copd works without it.

>>> sample_indices(10, 4)
[1, 3, 6, 8]
>>> sample_indices(3, 8)
[0, 1, 2]
"""

from __future__ import annotations

import io

INSTALL = "pip install 'copd[video]'"


class VideoError(ValueError):
    """Why a video file gives no frames, in a few words (the caller names the record and the file)."""


def sample_indices(total: int, n: int) -> list[int]:
    """`n` frame indices spread uniformly over `total` frames (the middle of each of n equal spans; every
    frame when there are no more than n)."""
    if total <= n:
        return list(range(total))
    return [int((i + 0.5) * total / n) for i in range(n)]


def _av():
    """The PyAV module, or one line saying how to install it."""
    try:
        import av
    except ImportError:
        raise VideoError(f"needs PyAV to decode: {INSTALL}") from None
    return av


def _frame_count(av, path: str) -> int:
    """Frames in the first video stream: the container's count, else its packets counted (no decoding)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        return sum(1 for packet in container.demux(stream) if packet.size)


def decode_video(path: str, n: int) -> tuple[bytes, ...]:
    """Up to `n` frames of the video file at `path`, uniformly sampled in order, as PNG bytes. Raises
    VideoError when PyAV is missing or the file does not decode."""
    av = _av()
    try:
        total = _frame_count(av, path)
        wanted = set(sample_indices(total, n))
        frames: list[bytes] = []
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    buf = io.BytesIO()
                    frame.to_image().save(buf, format="PNG")
                    frames.append(buf.getvalue())
                if i >= max(wanted, default=-1):
                    break
    except IndexError:
        raise VideoError("has no video stream") from None
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(f"does not decode ({type(err).__name__})") from None
    if not frames:
        raise VideoError("holds no frames")
    return tuple(frames)
