"""Videos as the model sees them: a file (.mp4, .webm, .avi, ...) or a directory of frames, sampled
to a few frames by `data.video` (config.VideoConfig).

Decoding is PyAV's (`av`, pinned in requirements.txt): the FFmpeg binding that transformers'
`load_video` uses by default and that qwen-vl-utils depends on, so it is installed wherever they
are. Sampling is ours, one function for files, frame directories and generated clips, so that a
clip is sampled identically at training, evaluation and `vlm-recipes encode`:

    n       = num_frames, or round(duration x fps) when num_frames is 0; then at most max_frames
              and at most the clip's frames (at least 1)
    indices = linspace(0, total - 1, n), rounded (as Qwen3-VL's video processor samples)

A `Clip` keeps its frames in time order at their native size (the per-frame pixel budget is
applied when the processor batch is built, models/embedding.py) and the indices they came from, so
the processor's timestamps (Qwen3-VL writes "<1.5 seconds>" before each frame pair) say when each
frame was shown.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import VideoConfig
from ..errors import InputError, first_line
from .sources import IMAGE_SUFFIXES, decode_image

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv")
"""Files read as videos (a .gif stays an image: data/sources.py IMAGE_SUFFIXES)."""


@dataclass(frozen=True)
class Clip:
    """The sampled frames of one video, in time order."""
    frames: tuple[Image.Image, ...]  # RGB, native size
    fps: float  # the video's own frame rate
    indices: tuple[int, ...]  # which of its frames these are (ascending)
    total: int  # frames in the whole video

    def reversed(self) -> Clip:
        """The same frames played backwards on the same timeline (the order test's negative)."""
        return replace(self, frames=self.frames[::-1])


def sample_indices(total: int, native_fps: float, config: VideoConfig) -> list[int]:
    """The frames to keep of a `total`-frame video at `native_fps` (module docstring)."""
    if total < 1:
        raise ValueError("a video needs at least one frame")
    wanted = config.num_frames or max(1, round(total / native_fps * config.fps))
    count = max(1, min(wanted, config.max_frames, total))
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


def is_video_path(value: str | Path) -> bool:
    """A path that names a video: a video suffix, or an existing directory (of frames)."""
    path = Path(value)
    return path.suffix.lower() in VIDEO_SUFFIXES or path.is_dir()


def read_video(path: str | Path | bytes, config: VideoConfig, where: str) -> Clip:
    """The sampled clip of a video file, a directory of frames or a video's bytes (a `datasets`
    Video column that embeds them); an unreadable one is an InputError naming `where` (the row or
    flag) and the file."""
    name = "the stored bytes" if isinstance(path, bytes) else repr(str(path))
    if not isinstance(path, bytes):
        path = Path(path)
        if path.is_dir():
            return _read_frame_dir(path, config, where)
        if not path.is_file():
            raise InputError(f"{where}: video {str(path)!r} not found")
    try:
        return _decode(path, config)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV raises FFmpeg's many error types; all mean "unreadable"
        raise InputError(f"unreadable video {name} in {where} ({type(err).__name__}: {first_line(err)}); "
                         "fix or drop it") from None


def _open(source: Path | bytes):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))


def _decode(path: Path | bytes, config: VideoConfig) -> Clip:
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else config.default_fps
        # the count from the container header when it has one (mp4), else from the packets (webm)
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    if total < 1:
        raise ValueError("no frames")
    indices = sample_indices(total, fps, config)
    frames, seen = _decode_frames(path, set(indices))
    if seen != total:  # the header miscounted: sample from the frames that really decode
        total = seen
        indices = sample_indices(total, fps, config)
        frames, _ = _decode_frames(path, set(indices))
    return Clip(tuple(frames[i] for i in indices), fps, tuple(indices), total)


def _decode_frames(path: Path | bytes, wanted: set[int]) -> tuple[dict[int, Image.Image], int]:
    """The wanted frames (index -> RGB image) and how many frames the stream decodes to."""
    frames, seen = {}, 0
    with _open(path) as container:
        for seen, frame in enumerate(container.decode(video=0), 1):
            if seen - 1 in wanted:
                frames[seen - 1] = frame.to_image().convert("RGB")
    if seen == 0:
        raise ValueError("no frame decodes")
    return frames, seen


def _read_frame_dir(path: Path, config: VideoConfig, where: str) -> Clip:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{where}: video directory {str(path)!r} holds no {'/'.join(IMAGE_SUFFIXES)} frame")
    indices = sample_indices(len(files), config.default_fps, config)
    frames = tuple(decode_image(str(files[i]), f"{where}, frame {files[i].name}") for i in indices)
    if len({frame.size for frame in frames}) > 1:
        raise InputError(f"{where}: the frames of {str(path)!r} differ in size; a video's frames must match")
    return Clip(frames, config.default_fps, tuple(indices), len(files))


def write_video(path: str | Path, frames, fps: float, codec: str = "mpeg4") -> Path:
    """Frames (PIL images of one even-sided size) as a video file, e.g. to export generated clips or
    to build test files. `codec`: any PyAV encoder the container takes (mpeg4 for .mp4/.avi, libvpx for .webm)."""
    import av

    path = Path(path)
    width, height = frames[0].size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame.convert("RGB"))))
        container.mux(stream.encode())
    return path


def video_files(items) -> list[Path]:
    """Videos in `items`, what --videos takes: video files, directories of frames, or directories
    holding video files (searched recursively), in order."""
    paths = []
    for item in [items] if isinstance(items, (str, Path)) else items:
        path = Path(item)
        if path.is_file():
            paths.append(path)  # any name: decoding tells a non-video apart
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            paths += found or [path]  # no video files inside: the directory is one video's frames
        else:
            raise InputError(f"--videos {item}: no such file or directory")
    if not paths:
        raise InputError("no videos given: pass video files, directories of frames, or directories of videos")
    return paths

