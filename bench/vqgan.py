"""VQGAN and video-read throughput, ours vs the references, measured side by side in one process.

    python bench/vqgan.py                 # full-size 256x256 VQGAN, fp32, random weights
    python bench/vqgan.py --preset tiny   # quick smoke run
    python bench/vqgan.py --convs         # single 3x3 convs: Winograd vs lax.conv (YNNPACK / Eigen)

1. Encode and decode frames/s: our jitted NNX VQGAN vs diffusers' VQModel (torch) holding the same
   weights (converted through our diffusers writer), same thread count, same frames.
2. Video read + uniform sampling frames/s: decord vs OpenCV on a 1-minute 480p video made here.
Ours runs twice: conv="auto" (Winograd F(4x4, 3x3) for the big 3x3 convs, the default) and
conv="direct" (lax.conv), with how far each lands from diffusers (codes equal, decoded |diff|).
Timings are round-robin, best of --repeats; see docs/vqgan.md (Performance) for measured figures.
Run nothing else meanwhile: a busy core skews whichever side it lands on.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _best_rates(fns: dict, n_frames: int, repeats: int) -> dict[str, float]:
    """frames/s of each fn: min time over `repeats` round-robin rounds after one warm-up each, so a
    slow spell of the machine hits every side alike."""
    for fn in fns.values():
        fn()  # warm-up / compile
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: n_frames / t for name, t in best.items()}


def _rate(fn, n_frames: int, repeats: int) -> float:
    return _best_rates({"fn": fn}, n_frames, repeats)["fn"]


def _test_frames(batch: int, r: int) -> np.ndarray:
    """Smooth colour fields with a few hard edges (more like video than white noise), in [-1, 1]."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:r, 0:r] / r
    frames = []
    for _ in range(batch):
        f = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy + rng.uniform()))
                      for _ in range(3)], -1)
        y0, x0 = rng.integers(0, r // 2, 2)
        f[y0:y0 + r // 3, x0:x0 + r // 4] = rng.uniform(-1, 1, 3)
        frames.append(f)
    return np.clip(np.stack(frames), -1, 1).astype(np.float32)


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
    ours = {conv: VQGANTokenizer(model, identity="bench", source="bench", batch_size=batch, conv=conv)
            for conv in ("auto", "direct")}
    with tempfile.TemporaryDirectory() as tmp:
        write_vqgan(model_to_lwm(model), config, tmp, fmt="diffusers")
        ref = VQModel.from_pretrained(tmp).eval()
    r = config.resolution
    frames = _test_frames(batch, r)
    x_t = torch.from_numpy(frames.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        _, _, (_, _, ref_idx) = ref.quantize(ref.encode(x_t).latents)
    codes = ref_idx.numpy().reshape(batch, r // config.downsample_factor, -1).astype(np.int32)
    idx_t = torch.from_numpy(codes.reshape(-1).astype(np.int64))
    shape = (batch, *codes.shape[1:], config.quantized_embed_dim)

    def ref_encode():
        with torch.no_grad():
            latents = ref.encode(x_t).latents
            ref.quantize(latents)

    def ref_decode():
        with torch.no_grad():
            return ref.decode(idx_t, force_not_quantize=True, shape=shape).sample.clamp_(-1, 1)

    print(f"VQGAN {preset} {r}x{r} fp32, random weights, batch {batch}, {threads} threads "
          f"(torch {torch.__version__}, XLA CPU); ours 'auto' = Winograd 3x3 convs, 'direct' = lax.conv")
    for name, fns in (("encode", {"diffusers": ref_encode, **{f"ours {c}": (lambda t=t: t.encode(frames))
                                                              for c, t in ours.items()}}),
                      ("decode", {"diffusers": ref_decode, **{f"ours {c}": (lambda t=t: t.decode(codes))
                                                              for c, t in ours.items()}})):
        rates = _best_rates(fns, batch, repeats)
        base = rates["diffusers"]
        print(f"  {name}: " + "   ".join(f"{k} {v:6.2f} frames/s ({v / base:4.2f}x)" for k, v in rates.items()))
    ref_frames = ref_decode().numpy().transpose(0, 2, 3, 1)
    for conv, tok in ours.items():
        same = (tok.encode(frames) == codes).mean()
        diff = np.abs(tok.decode(codes) - ref_frames).max()
        print(f"  ours {conv} vs diffusers: codes equal at {100 * same:.2f}% of positions; decoded frames "
              f"max |diff| {diff:.1e}")


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


# (input side, C_in, C_out, upsample) of the full-size VQGAN's 3x3 convs, plus channel counts that
# show where "auto" stops taking Winograd.
CONV_SHAPES = [(256, 128, 128, False), (256, 256, 128, False), (128, 128, 256, False), (128, 256, 256, False),
               (64, 256, 256, False), (32, 512, 512, False), (16, 768, 768, False), (128, 256, 256, True),
               (64, 256, 256, True), (32, 512, 512, True), (16, 768, 768, True), (256, 64, 64, False),
               (256, 32, 32, False), (64, 32, 32, False)]


def bench_convs(batch: int, repeats: int) -> None:
    """One 3x3 conv at a time: lax.conv with XLA's default (YNNPACK) and with the Eigen path the
    tokenizer asks for, and our Winograd (Eigen), with its max |diff| from the Eigen lax.conv."""
    import jax
    import jax.numpy as jnp

    from lwm_core.vqgan.model import upsample_conv
    from lwm_core.vqgan.tokenizer import compiler_options
    from lwm_core.vqgan.winograd import winograd_conv3x3

    def direct(x, kernel, bias, up):
        if up:
            return upsample_conv(x, kernel, bias)
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dims) + bias

    print(f"3x3 convs, batch {batch}, fp32 (ms, best of {repeats} round-robin; 'up' = nearest-x2 upsample first)")
    for side, c_in, c_out, up in CONV_SHAPES:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((batch, side, side, c_in), np.float32))
        kernel = jnp.asarray(rng.standard_normal((3, 3, c_in, c_out), np.float32) / np.sqrt(9 * c_in))
        bias = jnp.asarray(rng.standard_normal(c_out, np.float32))
        eigen = compiler_options()
        fns = {"lax.conv ynnpack": jax.jit(lambda x, k, b, up=up: direct(x, k, b, up)),
               "lax.conv eigen": jax.jit(lambda x, k, b, up=up: direct(x, k, b, up), compiler_options=eigen),
               "winograd": jax.jit(lambda x, k, b, up=up: winograd_conv3x3(x, k, b, upsample=up),
                                   compiler_options=eigen)}
        args = (x, kernel, bias)
        diff = float(jnp.max(jnp.abs(fns["winograd"](*args) - fns["lax.conv eigen"](*args))))
        timed = {k: (lambda f=f, a=args: f(*a).block_until_ready()) for k, f in fns.items()}
        rates = _best_rates(timed, 1, repeats)
        ms = {k: 1e3 / v for k, v in rates.items()}
        print(f"  {side:3d}px {c_in:3d}->{c_out:3d}{' up' if up else '   '}: "
              + "  ".join(f"{k} {v:7.1f}" for k, v in ms.items())
              + f"   winograd {ms['lax.conv eigen'] / ms['winograd']:4.2f}x of eigen   max|diff| {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-frames", type=int, default=32)
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--convs", action="store_true", help="only time single 3x3 convs (Winograd vs lax.conv)")
    args = parser.parse_args()
    if args.convs:
        bench_convs(args.batch, args.repeats)
        return
    bench_vqgan(args.preset, args.batch, args.repeats, args.threads)
    if not args.skip_video:
        bench_video(args.max_frames, args.repeats)


if __name__ == "__main__":
    main()
