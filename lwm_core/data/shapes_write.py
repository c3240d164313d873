"""A shapes data set on disk: clips plus jsonl records in the forms `lwm_core.data` reads.

    write_shapes_dataset("data/videos", split="train", n=1000, seed=0, size=64, frames=8)

    data/videos/
      clips/train_00000000.mp4 ...   the clips (frames == 1: .png images), 4 fps
      scenes.jsonl      ground truth per clip: name, seed, scene, caption, prompt, questions (for evals)
      captions.jsonl    {"fields": ["[caption],vision", "[vision],caption"], "caption", "vision"}
      generation.jsonl  {"fields": "[prompt],vision", "prompt": LWM's generation prompt, "vision"}
                        (single-shape clips only: 'a red square', 'a red square moving left')
      qa.jsonl          {"fields": "conversations", "vision", "conversations": [question, answer], "kind"}
      text.jsonl        {"text"}: the text corpus of the same seeds (captions, descriptions, stories, Q&A)
      needle.jsonl      {"fields": "conversations", ...}: needle documents, when needles > 0
      info.json         the arguments and record counts

Every "vision" names `tokens/<clip name>.npz`, relative to the jsonl: run
`lwm tokenize-video data/videos/clips --out data/videos/tokens --vqgan vqgan.safetensors` to make
them with the VQGAN in use (the token files record it; training checks it). The whole folder is
written under a temporary name and renamed when complete, so it is never half-written.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable

import numpy as np

from lwm_core.data.shapes import random_scene, scene_seed
from lwm_core.data.shapes_text import caption, corpus_document, generation_prompt, needle_document, questions
from lwm_core.errors import LWMError
from lwm_core.fileio import atomic_path
from lwm_core.video import write_frames

SYSTEM = "You are a helpful assistant."
CAPTION_FIELDS = ["[caption],vision", "[vision],caption"]  # text-to-vision and captioning, one picked per record


def _generation_text(prompt: str, video: bool) -> str:
    # LWM's generation prompt up to the vision span (vision_generation.py): the record's vision
    # field adds "<vision>" frames "</vision>" after it.
    return f"{SYSTEM} USER: Generate {'a video' if video else 'an image'} of {prompt} ASSISTANT:"


def write_shapes_dataset(out_dir: str | os.PathLike, split: str = "train", n: int = 100, seed: int = 0,
                         size: int | tuple[int, int] = 64, frames: int = 8, *, fps: float = 4.0,
                         num_shapes: int | None = None, event_prob: float = 0.3, text_docs: int | None = None,
                         needles: int = 0, needle_length: int = 1000, overwrite: bool = False,
                         on_clip: Callable[[int], None] | None = None) -> dict:
    """Write clips `seed .. seed + n - 1` of `split` (scene seeds from `scene_seed`, so splits never
    overlap and a later call with seed = n adds new clips), each `frames` frames of `size` (S or
    (H, W)); `frames == 1` writes images. `num_shapes` fixes the shapes per clip (1 with
    `event_prob=0`: every clip gets a generation record), `text_docs` corpus documents (default n),
    `needles` needle conversations of about `needle_length` words. `on_clip(i)` after each clip
    (progress). Returns info.json's content."""
    if n < 1 or frames < 1:
        raise LWMError(f"n and frames must be positive, got n={n}, frames={frames}")
    if seed < 0:
        raise LWMError(f"seed must be >= 0, got {seed}")
    scene_seed(split, seed + n - 1)  # refuses an unknown split or a range past the split's seeds
    out = pathlib.Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"clips": 0, "captions": 0, "generation": 0, "qa": 0, "chat": 0, "text": 0, "needle": 0}
    suffix = ".png" if frames == 1 else ".mp4"
    with atomic_path(out, overwrite=overwrite) as tmp:
        (tmp / "clips").mkdir(parents=True)
        files = {name: open(tmp / f"{name}.jsonl", "w", encoding="utf-8")
                 for name in ("scenes", "captions", "generation", "qa", "chat", "text")}
        try:
            for i in range(n):
                index = seed + i
                s = scene_seed(split, index)
                scene = random_scene(s, frames, num_shapes=num_shapes, event_prob=event_prob)
                name = f"{split}_{index:08d}"
                write_frames(scene.render(size), tmp / "clips" / f"{name}{suffix}", fps=fps)
                counts["clips"] += 1
                for key, record in _records(scene, name, split, s, suffix):
                    files[key].write(json.dumps(record) + "\n")
                    counts[key] = counts.get(key, 0) + 1
                if on_clip:
                    on_clip(i)
            for k in range(n if text_docs is None else text_docs):
                files["text"].write(json.dumps({"text": corpus_document(scene_seed(split, seed + k))}) + "\n")
                counts["text"] += 1
        finally:
            for f in files.values():
                f.close()
        if needles:
            with open(tmp / "needle.jsonl", "w", encoding="utf-8") as f:
                for k in range(needles):
                    doc = needle_document(scene_seed(split, seed + k), needle_length, 100.0 * k / max(needles - 1, 1))
                    # the prompt exactly as `lwm needle` encodes it (one piece, ending "ASSISTANT: "), then
                    # the answer sentence: training sees the evaluation's own token boundaries
                    f.write(json.dumps({"fields": "[prompt],answer", "prompt": doc.prompt, "answer": doc.answer,
                                        "city": doc.city, "number": doc.number,
                                        "depth_percent": doc.depth_percent}) + "\n")
                    counts["needle"] += 1
        counts.pop("scenes", None)
        info = {"split": split, "n": n, "seed": seed, "size": list(size) if isinstance(size, tuple) else size,
                "frames": frames, "fps": fps, "num_shapes": num_shapes, "event_prob": event_prob,
                "needle_length": needle_length, "records": counts,
                "tokens": "run `lwm tokenize-video <this folder>/clips --out <this folder>/tokens --vqgan ...`"}
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _records(scene, name: str, split: str, seed: int, suffix: str):
    """(file, record) pairs of one clip."""
    vision = f"tokens/{name}.npz"
    video = scene.num_frames > 1
    placeholder = "<video>" if video else "<image>"
    qas = questions(scene)
    prompt = generation_prompt(scene)
    yield "scenes", {"name": name, "split": split, "seed": seed, "clip": f"clips/{name}{suffix}",
                     "scene": scene.to_dict(), "caption": caption(scene), "prompt": prompt,
                     "questions": [{"kind": q.kind, "question": q.question, "answer": q.answer,
                                    "accept": list(q.accept), "reject": list(q.reject)} for q in qas]}
    yield "captions", {"fields": CAPTION_FIELDS, "caption": caption(scene), "vision": vision}
    if prompt is not None:
        yield "generation", {"fields": "[prompt],vision", "prompt": _generation_text(prompt, video),
                             "vision": vision}
    for q in qas:
        yield "qa", {"fields": "conversations", "vision": vision, "kind": q.kind,
                     "conversations": [{"from": "human", "value": f"{placeholder}\n{q.question}"},
                                       {"from": "gpt", "value": q.answer}]}
    # every question of the clip as one conversation, in a seeded order: the clip's tokens are read
    # once for all its answers (LLaVA's multi-turn records; `lwm ask --chat` asks the same way)
    order = np.random.default_rng(seed).permutation(len(qas))
    turns = []
    for k, i in enumerate(order):
        turns += [{"from": "human", "value": (f"{placeholder}\n" if k == 0 else "") + qas[i].question},
                  {"from": "gpt", "value": qas[i].answer}]
    if turns:
        yield "chat", {"fields": "conversations", "vision": vision, "conversations": turns}
