"""lwm-tiny's model card numbers (issue 12's "must hold"), on held-out (test-split) seeds.

    python bench/tiny_eval.py                      # ask 300 clips, generate 200 images + 50 videos, needles
    python bench/tiny_eval.py --sample 20          # the CI sample (tests/test_tiny_eval.py runs the same)
    python bench/tiny_eval.py --model-dir runs/lwm-tiny/lwm-tiny --json results.json
    python bench/tiny_eval.py --skip generate,needle --clips 200 --ask-frames 1 --ask-shapes 1   # easiest case

- ask: every question of each test clip (8 frames, 64 x 64 mp4), greedy, scored by the answer word;
  accuracy overall and per question kind (goal >= 90%).
- generate: images and videos from `a {colour} {shape} [moving {direction}]` prompts with
  `lwm generate`'s default settings, judged by the pixel checker (goal >= 80%).
- needle: `lwm needle` with its lwm-tiny defaults (5 lengths up to the trained context x 5 depths; goal
  >= 95%), then the curve past it (`--curve 4K,8K,16K`, RoPE as trained, max_sequence_length raised).
Each part prints its wall time; `--json` keeps every case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(model_dir):
    from lwm_core import load_model, load_tokenizer, load_vqgan
    from lwm_core.tiny import tiny_files

    files = tiny_files(model_dir)
    return files, load_model(files.checkpoint, files.config), load_tokenizer(files.tokenizer), load_vqgan(files.vqgan)


def run_ask(files, model, tok, vq, clips: int, frames: int = 8, num_shapes: int | None = None) -> dict:
    from lwm_core.evals.shapes_eval import ask_eval
    from lwm_core.infer import Asker

    started = time.perf_counter()
    result = ask_eval(Asker(model, tok, vq), clips=clips, seed=0, frames=frames, num_shapes=num_shapes)
    result["wall_s"] = time.perf_counter() - started
    what = ("images" if frames == 1 else f"{frames}-frame clips") + (f" of {num_shapes} shape(s)" if num_shapes else "")
    print(f"ask: {result['accuracy']:.1%} of {result['questions']} questions on {clips} test {what} "
          f"({result['wall_s']:.0f} s)")
    for kind, r in result["per_kind"].items():
        print(f"  {kind:10s} {r['accuracy']:.1%} of {r['questions']}")
    return result


def run_generate(files, model, tok, vq, images: int, videos: int) -> dict:
    from lwm_core.evals.shapes_eval import generate_eval

    started = time.perf_counter()
    result = generate_eval(model, tok, vq, images=images, videos=videos, seed=0)
    result["wall_s"] = time.perf_counter() - started
    print(f"generate: images {result['image_accuracy']:.1%} of {result['images']}, videos "
          f"{result['video_accuracy']:.1%} of {result['videos']} (frames {result['video_frame_accuracy']:.1%}) "
          f"({result['wall_s']:.0f} s)")
    return result


def run_needle(model_dir, args: list[str], label: str) -> dict:
    """`lwm needle` as a user runs it (a fresh process), scored from its results JSON."""
    from lwm_core.evals.runner import read_results, summary

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "needle.json"
        cmd = [sys.executable, "-m", "lwm_cli.main", "needle", *args, "--out", str(out)]
        if model_dir:  # another lwm-tiny: its files, and the grid `lwm needle` gives the packaged one
            from lwm_core.tiny import tiny_files

            f = tiny_files(model_dir)
            cmd += ["--checkpoint", f.checkpoint, "--config", f.config, "--tokenizer", f.tokenizer,
                    "--haystack", f.haystack]
            if "--ctx" not in args:
                top = json.loads(Path(f.config).read_text())["max_sequence_length"]
                cmd += ["--ctx", str(top), "--ctx-min", "512", "--n-ctx", "5"]
            if "--n-depth" not in args:
                cmd += ["--n-depth", "5"]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        records = read_results(out)
    result = {**summary(records), "wall_s": time.perf_counter() - started, "records": records}
    per = ", ".join(f"{n:,}: {v:.0%}" for n, v in result["per_length"].items())
    print(f"needle {label}: {result['mean']:.1%} of {result['trials']} trials ({per}) ({result['wall_s']:.0f} s)")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", help="a folder with lwm-tiny's files (default: the package's)")
    p.add_argument("--sample", type=int, help="N cases of each: N clips, N images, N//4 videos, a N-trial grid")
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--ask-frames", type=int, default=8, help="frames of each ask clip (1: images)")
    p.add_argument("--ask-shapes", type=int, choices=(1, 2, 3), help="shapes per ask clip (default 1-3)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--videos", type=int, default=50)
    p.add_argument("--curve", default="4K,8K,16K", help="needle lengths past the trained context ('' to skip)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: ask,generate,needle")
    p.add_argument("--json", type=Path, help="write every case here")
    args = p.parse_args()
    if args.sample:
        args.clips, args.images, args.videos, args.curve = args.sample, args.sample, max(1, args.sample // 4), ""
    skip = set(filter(None, args.skip.split(",")))
    files, model, tok, vq = load(args.model_dir)
    results: dict = {"model": files.checkpoint}
    if "ask" not in skip:
        results["ask"] = run_ask(files, model, tok, vq, args.clips, args.ask_frames, args.ask_shapes)
    if "generate" not in skip:
        results["generate"] = run_generate(files, model, tok, vq, args.images, args.videos)
    if "needle" not in skip:
        grid = ["--n-ctx", "5", "--n-depth", "4" if args.sample else "5"] if args.sample else []
        results["needle"] = run_needle(args.model_dir, grid, "grid")
        if args.curve:
            top = max(int(x.rstrip("Kk")) * 1024 if x[-1] in "Kk" else int(x) for x in args.curve.split(","))
            results["needle_curve"] = run_needle(args.model_dir, ["--ctx", args.curve, "--n-depth", "5",
                                                                   "--max-sequence-length", str(top)], "curve")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
