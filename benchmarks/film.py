"""A film that codes slow latent signals, encoded like a real one (H.264, 25 fps, 640 x 360,
a panning texture, sensor noise), shared by the benchmarks that decode movies.

Decoding such a film costs what a real one does per second of video (every frame is decoded,
most are only references for the next), which a 2 fps thumbnail film would hide.
"""
from __future__ import annotations

import numpy as np


def write_film(path, lat: np.ndarray, rng, fps: int = 25, size=(640, 360)) -> None:
    """Write ``path``: one second per row of ``lat`` ((seconds, k) values in [0, 1]); the
    screen is a 4 x 2 grid of coloured fields (one per latent, cycling when k > 8) whose
    brightness follows the latents, linearly interpolated between seconds, over a texture
    that pans one pixel a frame, with Gaussian noise (sd 4 grey levels, film grain: about 1 Mbit/s, a streamed 360p film)."""
    import av

    width, height = size
    k = lat.shape[1]
    colours = rng.uniform(0.3, 1.0, (k, 3))
    texture = (rng.random((height // 8, width // 4)) * 40).astype(np.float32)
    texture = np.repeat(np.repeat(texture, 8, 0), 8, 1)  # (height, 2 width) blobs
    noise = rng.normal(0, 4, (8, height, width, 1)).astype(np.float32)
    cell = (height // 2, width // 4)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        n_frames = lat.shape[0] * fps
        times = np.arange(n_frames) / fps
        values = np.stack([np.interp(times, np.arange(lat.shape[0]), lat[:, j])
                           for j in range(k)], 1)
        for f in range(n_frames):
            grid = np.zeros((2, 4, 3), np.float32)
            for j in range(8):
                grid[j // 4, j % 4] = 215 * values[f, j % k] * colours[j % k]
            frame = np.repeat(np.repeat(grid, cell[0], 0), cell[1], 1)
            shift = f % width
            frame += texture[:, shift:shift + width, None] + noise[f % 8]
            video = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8),
                                               format="rgb24")
            for packet in stream.encode(video):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
