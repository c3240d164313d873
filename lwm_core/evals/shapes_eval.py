"""lwm-tiny's evaluations on held-out scenes of the shapes world (bench/tiny_eval.py and the CI sample).

- `ask_eval`: test-split clips written as mp4 (what a user hands `lwm ask`), every question of each
  clip asked greedily through `Asker`, replies scored by `score_reply`; accuracy overall and per kind.
- `generate_eval`: `a {colour} {shape}` images and `a {colour} {shape} moving {direction}` videos
  generated with `generate_vision` (the settings `lwm generate` uses) and judged by the pixel checker
  (`check_image`, `check_video`).
Prompts and scenes come from seeds, so a run is repeatable and never shares a scene with training
(the test split's seeds).
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from lwm_core.data.shapes import COLOURS, DIRECTIONS, SHAPES
from lwm_core.data.shapes_check import check_image, check_video
from lwm_core.data.shapes_text import score_reply
from lwm_core.data.shapes_write import write_shapes_dataset


def _rate(hits: list[bool]) -> float:
    return float(np.mean(hits)) if hits else float("nan")


def ask_eval(asker, *, clips: int = 300, seed: int = 0, frames: int = 8, size: int = 64, batch_size: int = 32,
             max_new_tokens: int = 16, one_per_clip: bool = False, num_shapes: int | None = None,
             workdir: str | Path | None = None, on_batch=None) -> dict:
    """Ask every question of test clips `seed .. seed + clips - 1` (or with `one_per_clip`, clip i's
    question i mod its count: a quick sample across kinds); `frames` 1 asks about images, `num_shapes`
    fixes the shapes per clip (default 1-3). Returns {accuracy, per_kind {kind:
    accuracy}, questions, clips, cases: [{clip, kind, question, reply, correct}]}."""
    from lwm_core.data.shapes_text import QA
    from lwm_core.infer import SamplingSettings

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / "clips"
        write_shapes_dataset(out, "test", n=clips, seed=seed, size=size, frames=frames, num_shapes=num_shapes)
        scenes = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
        items = [(s["name"], q, out / s["clip"]) for i, s in enumerate(scenes) for k, q in enumerate(s["questions"])
                 if not one_per_clip or k == i % len(s["questions"])]
        cases = []
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            answers = asker.ask([(q["question"], asker.media(path)) for _, q, path in batch],
                                settings=SamplingSettings(temperature=0.0), max_new_tokens=max_new_tokens)
            for (name, q, _), answer in zip(batch, answers, strict=True):
                qa = QA(q["kind"], q["question"], q["answer"], tuple(q["accept"]), tuple(q["reject"]))
                cases.append({"clip": name, "kind": q["kind"], "question": q["question"], "answer": q["answer"],
                              "reply": answer.answer, "correct": score_reply(answer.answer, qa),
                              "choices": 1 + len(q["reject"])})  # the answers of its kind: 1/choices is chance
            if on_batch:
                on_batch(min(start + batch_size, len(items)), len(items))
    kinds = defaultdict(list)
    for c in cases:
        kinds[c["kind"]].append(c["correct"])
    return {"accuracy": _rate([c["correct"] for c in cases]), "questions": len(cases), "clips": clips,
            "chance": _rate([1 / c["choices"] for c in cases]),  # a guess among each question's answers
            "per_kind": {k: {"accuracy": _rate(v), "questions": len(v)} for k, v in sorted(kinds.items())},
            "cases": cases}


def generation_prompts(n: int, *, video: bool, seed: int = 0) -> list[str]:
    """`n` prompts drawn evenly from every colour x shape (x direction for videos; 'still' videos are
    'a {colour} {shape}'), in a seeded order."""
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS if video else ("none",)))
    rng = np.random.default_rng([seed, 7, int(video)])
    picks = [combos[i] for i in np.concatenate([rng.permutation(len(combos)) for _ in range(-(-n // len(combos)))])]
    return [f"a {c} {s}" + (f" moving {d}" if d != "none" else "") for c, s, d in picks[:n]]


def generate_eval(model, tokenizer, vqgan, *, images: int = 200, videos: int = 50, frames: int = 8,
                  seed: int = 0, settings=None, on_prompt=None) -> dict:
    """Generate `images` images and `videos` videos of `frames` frames and judge them. `settings`: a
    GenerationSettings (default: `lwm generate`'s); its frames and samples are set per prompt group.
    Returns {image_accuracy, video_accuracy, video_frame_accuracy, cases}."""
    import dataclasses

    from lwm_core.infer import Sampler
    from lwm_core.infer.generate import GenerationSettings, generate_vision, plan_generation

    settings = settings or GenerationSettings()
    sampler = Sampler(model)
    cases = []
    groups = [(p, False) for p in generation_prompts(images, video=False, seed=seed)] + \
             [(p, True) for p in generation_prompts(videos, video=True, seed=seed)]
    counts: dict[tuple[str, bool], int] = defaultdict(int)
    for prompt, video in groups:
        counts[(prompt, video)] += 1
    for k, ((prompt, video), n) in enumerate(sorted(counts.items())):
        s = dataclasses.replace(settings, frames=frames if video else 1, samples=n, seed=seed + k)
        plan = plan_generation(model.config, tokenizer, prompt, vqgan.config, s)
        result = generate_vision(plan, sampler)
        words = prompt.split()
        colour, shape = words[1], words[2]
        direction = words[4] if len(words) > 4 else "none"
        for codes in result.codes:  # [frames, h, w]
            pixels = np.asarray(vqgan.decode(codes))  # [frames, H, W, 3] in [-1, 1]
            if video:
                per_frame = [check_image(f) for f in pixels]
                cases.append({"prompt": prompt, "video": True,
                              "correct": bool(check_video(pixels, colour, shape, direction)),
                              "frames_correct": sum(d.colour == colour and d.shape == shape for d in per_frame),
                              "frames": len(per_frame)})
            else:
                found = check_image(pixels[0])
                cases.append({"prompt": prompt, "video": False, "found": f"{found.colour} {found.shape}",
                              "correct": found.colour == colour and found.shape == shape})
        if on_prompt:
            on_prompt(k + 1, len(counts))
    image_cases = [c for c in cases if not c["video"]]
    video_cases = [c for c in cases if c["video"]]
    frame_total = sum(c["frames"] for c in video_cases)
    return {"image_accuracy": _rate([c["correct"] for c in image_cases]), "images": len(image_cases),
            "video_accuracy": _rate([c["correct"] for c in video_cases]), "videos": len(video_cases),
            "video_frame_accuracy": (sum(c["frames_correct"] for c in video_cases) / frame_total
                                     if frame_total else float("nan")),
            "cases": cases}
