"""VQGAN and video-read throughput, ours vs the references, measured side by side in one process.

    python bench/vqgan.py                 # full-size 256x256 VQGAN, fp32, random weights
    python bench/vqgan.py --preset tiny   # quick smoke run

1. Encode and decode frames/s: our jitted NNX VQGAN vs diffusers' VQModel (torch) holding the same
   weights (converted through our diffusers writer), same thread count, same frames.
2. Video read + uniform sampling frames/s: decord vs OpenCV on a 1-minute 480p video made here.
Measured (full size, batch 4, 2 Zen 4 cores, quiet machine): encode ~1.0x, decode ~1.15x diffusers;
both sides are conv-bound at ~150-190 GFLOP/s, see docs/vqgan.md (Performance). Run nothing else
meanwhile: a busy core skews whichever side it lands on.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _rate(fn, n_frames: int, repeats: int) -> float:
    fn()  # warm-up / compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_frames / best


def bench_vqgan(preset: str, batch: int, repeats: int, threads: int) -> None:
    import torch
    from diffusers import VQModel

    from lwm_core.vqgan import VQGANConfig, VQGANTokenizer
    from lwm_core.vqgan.io import write_vqgan
    from lwm_core.vqgan.model import init_vqgan
    from lwm_core.vqgan.params_lwm import model_to_lwm

    torch.set_num_threads(threads)
    config = VQGANConfig.from_name(preset)
    model = init_vqgan(config, seed=0)
    ours = VQGANTokenizer(model, identity="bench", source="bench", batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        write_vqgan(model_to_lwm(model), config, tmp, fmt="diffusers")
        ref = VQModel.from_pretrained(tmp).eval()
    r = config.resolution
    frames = np.random.default_rng(0).uniform(-1, 1, (batch, r, r, 3)).astype(np.float32)
    codes = ours.encode(frames)
    x_t = torch.from_numpy(frames.transpose(0, 3, 1, 2).copy())
    idx_t = torch.from_numpy(codes.reshape(-1).astype(np.int64))
    shape = (batch, *codes.shape[1:], config.quantized_embed_dim)

    def ref_encode():
        with torch.no_grad():
            latents = ref.encode(x_t).latents
            ref.quantize(latents)

    def ref_decode():
        with torch.no_grad():
            ref.decode(idx_t, force_not_quantize=True, shape=shape).sample.clamp_(-1, 1)

    print(f"VQGAN {preset} {r}x{r} fp32, random weights, batch {batch}, {threads} threads "
          f"(torch {torch.__version__}, XLA CPU)")
    results = {}
    for name, ours_fn, ref_fn in (("encode", lambda: ours.encode(frames), ref_encode),
                                  ("decode", lambda: ours.decode(codes), ref_decode)):
        a, b = _rate(ours_fn, batch, repeats), _rate(ref_fn, batch, repeats)
        results[name] = (a, b)
        print(f"  {name}: ours {a:7.2f} frames/s   diffusers {b:7.2f} frames/s   ratio {a / b:5.2f}x")


def make_test_video(path: str, seconds: int = 60, fps: int = 30, w: int = 854, h: int = 480) -> None:
    import cv2

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    base = np.zeros((h, w, 3), np.uint8)
    base[:] = (30, 60, 90)
    for t in range(seconds * fps):
        f = base.copy()
        cv2.rectangle(f, ((7 * t) % w, 100), ((7 * t) % w + 80, 220), (40, 40, 250), -1)
        cv2.circle(f, (w // 2, (3 * t) % h), 40, (60, 230, 60), -1)
        writer.write(f)
    writer.release()


def bench_video(max_n_frames: int, repeats: int) -> None:
    from lwm_core.video import load_media

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench_480p_60s.mp4")
        make_test_video(path)
        print(f"video read + sample {max_n_frames} frames (linspace) of a 60 s 854x480 30 fps MPEG-4 video")
        for mode, n in (("sampled", max_n_frames), ("all frames", None)):
            rates = {}
            for backend in ("decord", "opencv"):
                count = len(load_media(path, max_n_frames=n, backend=backend).indices)
                rates[backend] = _rate(lambda b=backend, n=n: load_media(path, max_n_frames=n, backend=b),
                                       count, repeats)
            print(f"  {mode:10s}: decord {rates['decord']:8.1f} frames/s   opencv "
                  f"{rates['opencv']:8.1f} frames/s   ({count} frames)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-frames", type=int, default=32)
    parser.add_argument("--skip-video", action="store_true")
    args = parser.parse_args()
    bench_vqgan(args.preset, args.batch, args.repeats, args.threads)
    if not args.skip_video:
        bench_video(args.max_frames, args.repeats)


if __name__ == "__main__":
    main()
