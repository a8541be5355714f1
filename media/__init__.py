"""Media in and out: decoding uploads (decode.py), fitting them to a size (fit.py), writing and
reading result files (video_io.py), inpainting paste-back and alpha (compositing.py), and still
previews of results (previews.py). Frames are numpy arrays, (T, H, W, C) uint8 RGB."""
