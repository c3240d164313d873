"""The shapes data set on disk: clips that decode to the scenes, records the data pipeline builds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import TOKENIZER

from lwm_core.data import DataLoader, RecordProcessor, VisionSpec
from lwm_core.data.shapes import Scene, scene_seed
from lwm_core.data.shapes_text import questions
from lwm_core.data.shapes_write import write_shapes_dataset
from lwm_core.data.vision import frame_tokens
from lwm_core.errors import LWMError
from lwm_core.text import load_tokenizer
from lwm_core.text.prompts import lwm_chat_segments, lwm_generation_prompt_ids
from lwm_core.token_files import TokenFile, save_tokens
from lwm_core.video import read_video
from lwm_core.vqgan.config import VQGANConfig

ROOT = Path(__file__).resolve().parent.parent


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_clips_and_ground_truth(tmp_path):
    out = tmp_path / "videos"
    info = write_shapes_dataset(out, "validation", n=4, seed=10, size=32, frames=6, needles=2, needle_length=60)
    scenes = _jsonl(out / "scenes.jsonl")
    assert [s["name"] for s in scenes] == [f"validation_{i:08d}" for i in range(10, 14)]
    assert [s["seed"] for s in scenes] == [scene_seed("validation", i) for i in range(10, 14)]
    for record in scenes:
        scene = Scene.from_dict(record["scene"])
        frames, _ = read_video(out / record["clip"])
        assert frames.shape == (6, 32, 32, 3)
        # mp4 is lossy: the decoded clip is close to the render, not equal
        assert np.abs(frames.astype(int) - scene.render(32).astype(int)).mean() < 8
        assert [q["question"] for q in record["questions"]] == [q.question for q in questions(scene)]
    qa = _jsonl(out / "qa.jsonl")
    assert len(qa) == sum(len(s["questions"]) for s in scenes) == info["records"]["qa"]
    assert qa[0]["conversations"][0]["value"].startswith("<video>\n")
    assert len(_jsonl(out / "text.jsonl")) == 4 and len(_jsonl(out / "needle.jsonl")) == 2
    assert json.loads((out / "info.json").read_text())["records"]["clips"] == 4


def test_images_and_generation_records(tmp_path):
    out = tmp_path / "images"
    write_shapes_dataset(out, "train", n=3, seed=0, size=(24, 40), frames=1, num_shapes=1, text_docs=0)
    assert sorted(p.name for p in (out / "clips").iterdir()) == [f"train_{i:08d}.png" for i in range(3)]
    gen = _jsonl(out / "generation.jsonl")
    assert len(gen) == 3 and gen[0]["fields"] == "[prompt],vision"
    prompt = _jsonl(out / "scenes.jsonl")[0]["prompt"]
    assert gen[0]["prompt"] == f"You are a helpful assistant. USER: Generate an image of {prompt} ASSISTANT:"
    assert read_video(out / "clips" / "train_00000000.png")[0].shape == (1, 24, 40, 3)


def test_records_build_through_the_data_pipeline(tmp_path):
    out = tmp_path / "videos"
    write_shapes_dataset(out, "train", n=3, seed=0, size=32, frames=4, num_shapes=1, event_prob=0.0)
    tiny = VQGANConfig.from_name("tiny")  # 4 x 4 codes a frame
    rng = np.random.default_rng(0)
    for record in _jsonl(out / "scenes.jsonl"):  # stand-ins for `lwm tokenize-video` output
        save_tokens(out / "tokens" / f"{record['name']}.npz",
                    TokenFile(codes=rng.integers(0, tiny.num_embeddings, (4, 4, 4)), frame_indices=np.arange(4),
                              fps=4.0, source=record["clip"], vqgan_id="test", vqgan_config=tiny.to_json()))
    proc = RecordProcessor(load_tokenizer(TOKENIZER), None, fields_from_example="fields",
                           vision=VisionSpec.from_vqgan(tiny))
    for name in ("captions", "generation", "qa"):
        loader = DataLoader([out / f"{name}.jsonl"], proc, batch_size=2, seq_length=256, strict=True)
        batches = list(loader)
        assert batches and loader.stats["bad_records"] == 0 and loader.stats["records"] == len(
            _jsonl(out / f"{name}.jsonl"))
        vision = sum(int(b["vision_masks"].sum()) for b in batches)
        assert vision == loader.stats["records"] * 4 * (16 + 1)  # 4 frames of 16 codes + eof/eov each


def test_records_read_as_lwm_prompts(tmp_path):
    """A generation record starts with exactly `lwm generate`'s prompt ids; a QA record is `lwm ask`'s
    chat input followed by the answer and EOS."""
    out = tmp_path / "videos"
    write_shapes_dataset(out, "train", n=2, seed=0, size=32, frames=4, num_shapes=1, event_prob=0.0)
    tiny = VQGANConfig.from_name("tiny")
    codes = np.arange(64).reshape(4, 4, 4) % tiny.num_embeddings
    for record in _jsonl(out / "scenes.jsonl"):
        save_tokens(out / "tokens" / f"{record['name']}.npz",
                    TokenFile(codes=codes, frame_indices=np.arange(4), fps=4.0, source=record["clip"],
                              vqgan_id="test", vqgan_config=tiny.to_json()))
    tok = load_tokenizer(TOKENIZER)
    spec = VisionSpec.from_vqgan(tiny)
    proc = RecordProcessor(tok, None, fields_from_example="fields", vision=spec)
    vision_ids = list(frame_tokens(codes.reshape(4, 16), spec))
    gen = _jsonl(out / "generation.jsonl")[0]
    prompt = _jsonl(out / "scenes.jsonl")[0]["prompt"]
    example = proc(gen, base_dir=out)
    head = lwm_generation_prompt_ids(tok, prompt, video=True)
    assert list(example.tokens[:len(head) + len(vision_ids)]) == head + vision_ids
    qa = _jsonl(out / "qa.jsonl")[0]
    question, answer = qa["conversations"][0]["value"].removeprefix("<video>\n"), qa["conversations"][1]["value"]
    prefix, suffix = lwm_chat_segments(tok, question)
    assert list(proc(qa, base_dir=out).tokens) == prefix + vision_ids + suffix + tok.encode(answer) + [tok.eos_id]


def test_refuses_existing_folder_bad_split_and_range(tmp_path):
    write_shapes_dataset(tmp_path / "d", n=1, frames=1, text_docs=0)
    with pytest.raises(LWMError, match="already exists"):
        write_shapes_dataset(tmp_path / "d", n=1, frames=1)
    write_shapes_dataset(tmp_path / "d", n=2, frames=1, overwrite=True)
    assert len(_jsonl(tmp_path / "d" / "scenes.jsonl")) == 2
    with pytest.raises(LWMError, match="unknown split"):
        write_shapes_dataset(tmp_path / "e", "dev", n=1)
    with pytest.raises(LWMError, match="outside"):
        write_shapes_dataset(tmp_path / "e", "test", n=2, seed=10**8 - 1)
    assert not (tmp_path / "e").exists()


def test_example_script(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "examples" / "make_shapes.py"), *args],
                                       capture_output=True, text=True, cwd=ROOT)
    done = run(str(tmp_path / "s"), "--n", "2", "--frames", "2", "--size", "16")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and (tmp_path / "s" / "clips" / "train_00000001.mp4").is_file()
    assert "Example:" in run("--help").stdout
    again = run(str(tmp_path / "s"), "--n", "2")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
