"""Re-encode the GIF turntables a device run brought back (the lent GPU machine has no
imageio-ffmpeg, so its runs write GIFs) as the mp4s a run writes where ffmpeg exists:
    python tools/device_runs/turntables_to_mp4.py <folder> [--delete-gifs]
Every <folder>/**/turntable.gif gets a turntable.mp4 beside it, through the runs' own writer
(framework.outputs.images.write_video, same fps). An mp4 is about a tenth of the GIF's size, which
keeps a committed benchmark report small enough to travel with the repo to the device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def gif_to_mp4(gif: Path) -> Path:
    import imageio.v3 as iio
    import torch

    from framework.outputs.images import write_video

    frames = iio.imread(gif, index=None)  # [N, H, W, 3 or 4] uint8
    duration_ms = iio.immeta(gif).get("duration", 62.5)
    fps = max(1, round(1000.0 / duration_ms))
    video = torch.from_numpy(frames[..., :3]).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, H, W]
    return write_video(gif.with_suffix(".mp4"), video, fps=fps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--delete-gifs", action="store_true", help="remove each GIF once its mp4 is written")
    args = ap.parse_args()
    gifs = sorted(args.folder.rglob("turntable.gif"))
    for gif in gifs:
        mp4 = gif_to_mp4(gif)
        if args.delete_gifs and mp4.suffix == ".mp4":
            gif.unlink()
    print(f"{len(gifs)} turntables re-encoded under {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
