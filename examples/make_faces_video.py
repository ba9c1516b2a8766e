"""Write a short video of drawn faces for the README's `fer predict VIDEO` example (default talk.mp4).

The project ships a photo (examples/faces.png) but no video. This writes one from
it: 4 seconds at 10 frames per second, 640x480, the photo's three faces drifting
right by 2 pixels a frame over a plain grey background, so `fer predict` follows
three faces over 40 frames. Any mp4, avi, webm, mkv, mov or m4v file of your own
works the same way.

Run from the repository root (deterministic: the same frames every time):

    python examples/make_faces_video.py            # talk.mp4 in the working folder
    python examples/make_faces_video.py clip.avi   # another name or container
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make_faces_photo, beside this file

from make_faces_photo import faces_photo  # noqa: E402

FRAME_SIZE = (640, 480)  # width, height
FPS = 10.0
FRAMES = 40
STEP = 2  # pixels the faces move right each frame
TOP, LEFT = 80, 20  # where the photo's top-left corner is in the first frame
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".webm": "VP80"}


def frames() -> list[np.ndarray]:
    """The video's frames, BGR uint8 (height x width x 3)."""
    photo = faces_photo()
    height, width = photo.shape
    if LEFT + STEP * (FRAMES - 1) + width > FRAME_SIZE[0] or TOP + height > FRAME_SIZE[1]:
        raise ValueError("the photo does not fit in the frame for the whole video")
    made = []
    for index in range(FRAMES):
        gray = np.full(FRAME_SIZE[::-1], 128, np.uint8)
        left = LEFT + STEP * index
        gray[TOP:TOP + height, left:left + width] = photo
        made.append(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    return made


def write_video(path: str | Path = "talk.mp4") -> Path:
    """Write the video to `path` (its suffix picks the codec); the path.

    Example:
        >>> write_video("talk.mp4")  # doctest: +SKIP
        PosixPath('talk.mp4')
    """
    path = Path(path)
    codec = CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: the name must end in one of {', '.join(CODECS)}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), FPS, FRAME_SIZE)
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write this container with codec {codec}")
    try:
        for frame in frames():
            writer.write(frame)
    finally:
        writer.release()
    return path


if __name__ == "__main__":
    written = write_video(sys.argv[1] if len(sys.argv) > 1 else "talk.mp4")
    print(f"Wrote {written} ({FRAMES} frames, {FRAMES / FPS:g} s, {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, "
          f"{written.stat().st_size:,} bytes)")
