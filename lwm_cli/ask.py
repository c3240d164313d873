"""`lwm ask`: questions about a video, an image or a folder of frames (lwm_core.infer.ask)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lwm_cli.common import (MaxSequenceLengthOption, RopeThetaOption, config_changes, console, default_model,
                            err_console, fail, handle_errors, parse_vqgan_config)
from lwm_core.config import RANDOM_PREFIX
from lwm_core.errors import LWMError

_HELP = """Answer questions about a video, an image or a folder of frames, streaming the answer.

The input is exactly what LWM's chat script builds: the question, then the sampled frames (VQGAN codes), then ASSISTANT:. The question comes BEFORE the video in LWM's template, so every question is its own prefill of the whole input; the video is read and VQGAN-encoded only once (and with --cache-dir not again in later runs). --chat instead makes the questions one conversation, each turn appended to the same KV cache.

Example: lwm ask clip.mp4 "What happens after the dog jumps?" --checkpoint params::lwm/params --config 7b-1m --tokenizer tokenizer.model --vqgan vqgan.pkl

Example: lwm ask clip.mp4 -q "Who is there?" -q "What do they do?" --json ...  (one JSON line per answer)

Example: lwm ask --questions qa.jsonl --out answers.jsonl ...  (each line {"video": ..., "question": ...}; videos relative to the file)

--frame-layout chat ends every frame with 8193 as LWM's chat script does (the default for LWM's weights); training puts 8192 between frames as in LWM's training data (the default for models trained with lwm train, which record it in their config). Greedy by default (--temperature 0).
"""  # noqa: E501 (typer keeps line breaks, so paragraphs are one line)


def _questions(question, extra, questions_file) -> list[str]:
    found = ([question] if question else []) + list(extra or [])
    if questions_file:
        path = Path(questions_file)
        if not path.is_file():
            raise LWMError(f"{path}: no such questions file")
        found += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return found


def _jsonl_items(path: Path) -> list[tuple[str, Path, dict]]:
    """(question, video path, the record) per line; videos relative to the file's folder."""
    if not path.is_file():
        raise LWMError(f"{path}: no such questions file")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LWMError(f"{path}:{n}: not JSON ({exc.msg}); each line is "
                           '{"video": ..., "question": ...}') from None
        if not isinstance(record, dict) or not isinstance(record.get("video"), str) or \
                not isinstance(record.get("question"), str):
            raise LWMError(f"{path}:{n}: needs string fields \"video\" and \"question\"")
        video = Path(record["video"]).expanduser()
        video = video if video.is_absolute() else path.parent / video
        if not video.exists():
            raise LWMError(f"{path}:{n}: video {video} does not exist")
        items.append((record["question"], video, record))
    if not items:
        raise LWMError(f"{path}: no questions in this file")
    return items


def _progress(description: str) -> Progress:
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)


@handle_errors
def ask(
    video: str | None = typer.Argument(None, help="A video, an image or a folder of frames."),
    question: str | None = typer.Argument(None, help="The question (or use -q / --questions)."),
    more: list[str] | None = typer.Option(None, "-q", "--question", help="Another question (repeat)."),
    questions_file: str | None = typer.Option(None, "--questions", help="A .txt with one question per line, or a "
                                              ".jsonl of {\"video\", \"question\"} lines (answered in batches)."),
    out: str | None = typer.Option(None, "--out", help="Answers .jsonl for --questions FILE.jsonl "
                                                       "(default: FILE.answers.jsonl beside it)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Vision-language checkpoint spec "
                                          "(params::FILE, an orbax folder, random:PRESET)."),
    config: str | None = typer.Option(None, "--config", help="Model preset (e.g. 7b-1m) or ModelConfig JSON."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="LLaMA tokenizer.model or a HF folder."),
    vqgan: str | None = typer.Option(None, "--vqgan", help="VQGAN weights (.pkl, diffusers folder, .safetensors) "
                                                          "or random:tiny / random:full (untrained)."),
    vqgan_config: str | None = typer.Option(None, "--vqgan-config", help="VQGANConfig JSON (file or text) or "
                                            "preset, for VQGANs other than LWM's full one."),
    max_frames: int = typer.Option(8, "--max-frames", help="Frames sampled uniformly (LWM's linspace)."),
    fps: float | None = typer.Option(None, "--fps", help="Sample frames by time at this rate (then at most "
                                                        "--max-frames of them)."),
    frame_layout: str | None = typer.Option(None, "--frame-layout", help="chat (LWM's chat script: every frame "
                                            "ends with end-of-vision) or training (end-of-frame between frames); "
                                            "default: the one the model's config records."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_k: int | None = typer.Option(None, "--top-k"),
    top_p: float | None = typer.Option(None, "--top-p"),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Answer length cap (tokens)."),
    seed: int = typer.Option(0, "--seed"),
    mesh: str | None = typer.Option(None, "--mesh", metavar="DP,FSDP,TP,SP", help="Device mesh, e.g. 1,1,4,1."),
    batch_size: int = typer.Option(4, "--batch-size", help="Questions per batch for --questions FILE.jsonl."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Keep each video's VQGAN codes here (keyed by "
                                                                  "its content and the VQGAN) for later runs."),
    chat: bool = typer.Option(False, "--chat", help="The questions are one conversation (one KV cache)."),
    max_memory: str | None = typer.Option(None, "--max-memory", help="Refuse a prefill estimated above this "
                                                                    "per device, e.g. 24GiB."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per answer instead of text."),
    rope_theta: RopeThetaOption = None,
    max_sequence_length: MaxSequenceLengthOption = None,
):
    from lwm_core.infer import SamplingSettings
    from lwm_core.infer.ask import Asker, parse_memory
    from lwm_core.infer.vision_prompt import FRAME_LAYOUTS, check_media

    checkpoint, config, tokenizer, vqgan = default_model(checkpoint, config, tokenizer, vqgan)
    if tokenizer is None or vqgan is None:
        fail("--tokenizer (LLaMA's tokenizer.model) and --vqgan (LWM's vqgan .pkl or a converted one) are required")
    if frame_layout is not None and frame_layout not in FRAME_LAYOUTS:
        fail(f"--frame-layout must be chat or training, got {frame_layout!r}")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        fail("--temperature must be >= 0, --top-k >= 1 and --top-p in (0, 1]")
    if max_new_tokens < 1 or batch_size < 1 or max_frames < 1:
        fail("--max-new-tokens, --batch-size and --max-frames must be at least 1")
    memory = parse_memory(max_memory) if max_memory else None
    jsonl = questions_file is not None and questions_file.endswith(".jsonl")
    if jsonl:
        if video or question or more or chat:
            fail("--questions FILE.jsonl names its own videos and questions: pass no VIDEO, QUESTION, -q or --chat")
        items = _jsonl_items(Path(questions_file))
        out_path = Path(out) if out else Path(questions_file).with_suffix(".answers.jsonl")
    else:
        if out:
            fail("--out is for --questions FILE.jsonl; answers to other questions are printed")
        if not video:
            fail("give a video, an image or a folder of frames, and a question")
        questions = _questions(question, more, questions_file)
        if not questions:
            fail("give a question (QUESTION, -q, or --questions FILE)")

    # a bad video fails here, in one line, before the (slow) model load
    for path in sorted({str(v) for _, v, _ in items} if jsonl else {video}):
        check_media(path, max_frames=max_frames, fps=fps)

    from lwm_core import load_model
    from lwm_core.loading import generation_options
    from lwm_core.mesh import make_mesh
    from lwm_core.text import load_tokenizer
    from lwm_core.vqgan import load_vqgan

    tok = load_tokenizer(tokenizer)
    vq = load_vqgan(vqgan, parse_vqgan_config(vqgan_config))
    if vqgan.startswith(RANDOM_PREFIX):
        err_console.print(f"[yellow]warning:[/] {vqgan} is an UNTRAINED random VQGAN: answers are meaningless "
                          "outside tests", highlight=False)
    model = load_model(checkpoint, config, mesh=make_mesh(mesh) if mesh else None,
                       **config_changes(rope_theta, max_sequence_length), **generation_options())
    asker = Asker(model, tok, vq, frame_layout=frame_layout, max_frames=max_frames, fps=fps, cache_dir=cache_dir,
                  max_memory=memory)
    settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p)
    limit = model.config.max_sequence_length

    def say_context(plan) -> None:
        err_console.print(f"context: {plan.context_tokens:,} tokens ({plan.prompt_tokens:,} input + "
                          f"{plan.new_tokens:,} new, of max {limit:,}) x {plan.rows} row(s); KV cache "
                          f"{plan.cache_tokens:,} slots, ~{plan.memory_bytes / 2**30:.2f} GiB per device",
                          highlight=False, soft_wrap=True)

    def media(path):
        with _progress(f"reading {Path(path).name}") as bar:
            task = bar.add_task("frames", total=None)
            return asker.media(path, on_frames=lambda done, total: bar.update(task, completed=done, total=total))

    options = dict(settings=settings, max_new_tokens=max_new_tokens, seed=seed, on_context=say_context)
    if jsonl:
        _answer_jsonl(asker, items, out_path, media, batch_size, options)
        return
    clip = media(video)
    stream = None if as_json else tok.stream()

    def on_token(row: int, token: int) -> None:
        if token < tok.vocab_size:  # a padded model vocabulary: such ids have no text (Asker.text)
            console.out(stream.push(token), end="", highlight=False)

    def show(i: int, answer) -> None:
        nonlocal stream
        if as_json:
            typer.echo(json.dumps(answer.to_json()))
            return
        console.out(stream.flush(), highlight=False)  # ends the streamed line
        stream = tok.stream()

    def header(i: int) -> None:
        if not as_json and len(questions) > 1:
            console.print(f"[bold]Q{i + 1}:[/] {questions[i]}", highlight=False)
            console.out("A: ", end="", highlight=False)

    if chat:
        header(0)
        asker.chat(clip, questions, on_token=None if as_json else on_token,
                   on_turn=lambda i, a: (show(i, a), i + 1 < len(questions) and header(i + 1)), **options)
        return
    for i, q in enumerate(questions):
        header(i)
        clip = asker.media(video) if i else clip  # read and encoded once: later questions get it from memory
        [answer] = asker.ask([(q, clip)], on_token=None if as_json else on_token, **options)
        show(i, answer)


def _answer_jsonl(asker, items, out_path: Path, media, batch_size: int, options: dict) -> None:
    """Answer a .jsonl of questions in batches; the answers file appears whole or not at all."""
    from lwm_core.fileio import atomic_path

    clips = {}
    for _, video, _ in items:
        if video not in clips:
            clips[video] = media(video)
    if not out_path.parent.is_dir():
        raise LWMError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    lines = []
    with _progress("answering") as bar:
        task = bar.add_task("questions", total=len(items))
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            answers = asker.ask([(q, clips[v]) for q, v, _ in batch], **options)
            for (_, _, record), answer in zip(batch, answers, strict=True):
                lines.append(json.dumps({**record, **answer.to_json(), "video": record["video"]}))
            bar.advance(task, len(batch))
    with atomic_path(out_path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    console.print(f"{len(lines)} answers -> {out_path}", highlight=False)


ask.__doc__ = _HELP  # typer shows the docstring as --help
