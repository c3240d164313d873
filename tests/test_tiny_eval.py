"""lwm-tiny, the model in the package, on a 20-case sample of each of its evaluations (held-out
test-split seeds, the same code as bench/tiny_eval.py), and the README's out-of-the-box command.

The shipped lwm-tiny does NOT meet issue 12's goals (ask >= 90%, generate >= 80%, needle >= 95%; its
measured numbers are on docs/lwm-tiny.md): it is undertrained. So these tests check what it does
reliably: the package holds a complete model, ask beats chance (computed from each question's
answers), generation writes decodable frames, the needle grid runs over its context and draws its
heatmap, and the README's command answers its question correctly (greedy, so deterministic). Raise
the floors to the goals when a better lwm-tiny ships."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lwm_cli.main import app
from lwm_core import load_model, load_tokenizer, load_vqgan
from lwm_core.data.shapes_text import QA, score_reply
from lwm_core.evals.runner import read_results
from lwm_core.evals.shapes_eval import ask_eval, generate_eval
from lwm_core.infer import Asker
from lwm_core.tiny import tiny_files

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = 20


@pytest.fixture(scope="module")
def tiny():
    files = tiny_files()
    return files, load_model(files.checkpoint, files.config), load_tokenizer(files.tokenizer), load_vqgan(files.vqgan)


def test_the_package_ships_a_complete_model(tiny):
    files, model, tok, vq = tiny
    assert model.config.vision and model.config.frame_layout == "training"
    assert model.config.vision_codes == vq.config.num_embeddings == 512
    assert tok.vocab_size <= model.config.vocab_size
    assert sum(Path(p.removeprefix("params::")).stat().st_size for p in
               (files.checkpoint, files.config, files.tokenizer, files.vqgan, files.haystack)) < 40 << 20


def test_ask_sample(tiny):
    _, model, tok, vq = tiny
    result = ask_eval(Asker(model, tok, vq), clips=SAMPLE, seed=0, one_per_clip=True)
    assert result["questions"] == SAMPLE and len(result["per_kind"]) >= 4
    assert all(c["reply"].strip() for c in result["cases"])  # every question gets an answer
    assert result["accuracy"] > result["chance"], {k: v["accuracy"] for k, v in result["per_kind"].items()}


def test_ask_single_shape_images(tiny):
    # The easiest case: one shape, one frame. lwm-tiny names the colour of all 200 such test images in
    # bench/tiny_eval.py --ask-frames 1 --ask-shapes 1; its kind only half (docs/lwm-tiny.md).
    _, model, tok, vq = tiny
    result = ask_eval(Asker(model, tok, vq), clips=10, seed=0, frames=1, num_shapes=1)
    assert {c["answer"] for c in result["cases"] if c["kind"] == "count"} == {"One."}  # one shape each
    assert result["per_kind"]["colour"] == {"accuracy": 1.0, "questions": 10}


def test_generate_sample(tiny):
    _, model, tok, vq = tiny
    result = generate_eval(model, tok, vq, images=SAMPLE, videos=SAMPLE // 4, seed=0)
    assert result["images"] == SAMPLE and result["videos"] == SAMPLE // 4
    assert all(c["frames"] == 8 for c in result["cases"] if c["video"])
    found = [c["found"] for c in result["cases"] if not c["video"]]
    assert sum(f != "none none" for f in found) >= SAMPLE // 2, found  # the checker finds a shape in most


def test_needle_sample(tmp_path):
    out = tmp_path / "needle.json"
    result = CliRunner().invoke(app, ["needle", "--n-depth", "4", "--out", str(out)])  # 5 lengths x 4 depths
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == SAMPLE
    assert max(r["context_length"] for r in records) == load_model_config_length()
    assert all(r["response"] for r in records)
    assert out.with_suffix(".png").is_file()


def load_model_config_length() -> int:
    return json.loads(Path(tiny_files().config).read_text())["max_sequence_length"]


def test_readme_command_answers_correctly():
    readme = (ROOT / "README.md").read_text()
    command = next(line.strip() for line in readme.splitlines() if line.strip().startswith("lwm ask "))
    assert "examples/shapes.mp4" in command
    _, _, video, question = shlex.split(command)  # lwm ask VIDEO QUESTION
    result = subprocess.run([sys.executable, "-m", "lwm_cli.main", "ask", video, question], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    expected = json.loads((ROOT / "examples" / "shapes.json").read_text())  # the clip's scene and questions
    qa = next(q for q in expected["questions"] if q["question"] == question)
    assert score_reply(result.stdout, QA(qa["kind"], qa["question"], qa["answer"], tuple(qa["accept"]),
                                         tuple(qa["reject"]))), result.stdout
