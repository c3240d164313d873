"""`lwm tokenize-video`: videos/images -> VQGAN token files, and token files -> frames."""

from __future__ import annotations

import time
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lwm_cli.common import console, err_console, fail, handle_errors
from lwm_core.config import RANDOM_PREFIX

_HELP = """Turn videos and images into VQGAN codes (one .npz per input), or codes back into frames.

INPUTS are files, folders (searched recursively) or .txt lists of paths. Files already tokenized with the same VQGAN are skipped, so an interrupted run resumes; unreadable files are listed at the end while the rest still run.

Example: lwm tokenize-video clips/ --out tokens/ --vqgan vqgan.pkl --max-frames 32

Example: lwm tokenize-video --decode tokens/x.npz --out x.mp4 --vqgan vqgan.pkl  (or x.gif, x.png, frames/)

--vqgan takes a LWM pickle, a diffusers VQModel folder, a .safetensors from `lwm convert`, or random:tiny / random:full for UNTRAINED random weights (plumbing tests only).
"""  # noqa: E501 (typer keeps line breaks, so paragraphs are one line)


@handle_errors
def tokenize_video(
    inputs: list[str] | None = typer.Argument(None, help="Videos, images, folders or .txt lists."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output folder (tokenize) or file (decode)."),
    vqgan: str | None = typer.Option(None, "--vqgan", help="VQGAN weights, or random:tiny/random:full."),
    decode: str | None = typer.Option(None, "--decode", help="A token .npz to turn back into frames."),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Sample at most this many frames "
                                             "per video, uniformly (LWM's linspace)."),
    fps: float | None = typer.Option(None, "--fps", help="Sample at this rate (tokenize) or play at "
                                        "it (decode)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Frames per VQGAN call."),
    backend: str = typer.Option("auto", "--backend", help="Video reader: auto, decord or opencv."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo files that are already tokenized."),
    conv: str = typer.Option("auto", "--conv", help="3x3 convolutions: auto (Winograd where it is "
                             "faster), winograd, or direct (lax.conv; closest to the reference)."),
):
    from lwm_core.vqgan import load_vqgan
    from lwm_core.vqgan.pipeline import decode_token_file, plan_tokenize, tokenize_files

    if not vqgan:
        fail("--vqgan is required (a LWM .pkl, a diffusers folder, a .safetensors, or random:tiny)")
    if not out:
        fail("--out is required (a folder for token files, or a .mp4/.gif/.png/folder when decoding)")
    if vqgan.startswith(RANDOM_PREFIX):
        err_console.print(f"[yellow]warning:[/] {vqgan} is an UNTRAINED random VQGAN: codes are "
                          "meaningless outside tests", highlight=False)

    if decode:
        if inputs:
            fail("--decode takes one token file; do not pass INPUTS as well")
        files, warning = decode_token_file(decode, lambda cfg: load_vqgan(vqgan, cfg, batch_size=batch_size,
                                                                            conv=conv),
                                           out, fps=fps)
        if warning:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        where = files[0] if len(files) == 1 else f"{len(files)} PNGs in {files[0].parent}"
        console.print(f"decoded {decode} -> {where}", highlight=False)
        return

    if not inputs:
        fail("give videos, images or folders to tokenize (or --decode FILE)")
    pairs = plan_tokenize(inputs, out)
    tok = load_vqgan(vqgan, batch_size=batch_size, conv=conv)
    console.print(f"VQGAN {tok.identity} ({tok.config.resolution}px -> {tok.config.latent_size}x"
                  f"{tok.config.latent_size} codes, {tok.conv} convs); {len(pairs)} input files", highlight=False)

    start, frames_done = time.perf_counter(), [0]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("files  {task.fields[rate]} frames/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("tokenizing", total=len(pairs), rate="-")

        def on_frames(n: int) -> None:
            frames_done[0] += n
            rate = frames_done[0] / max(time.perf_counter() - start, 1e-9)
            progress.update(task, rate=f"{rate:.1f}")

        results = tokenize_files(pairs, tok, max_n_frames=max_frames, fps=fps, backend=backend,
                                 overwrite=overwrite, on_frames=on_frames,
                                 on_file=lambda r: progress.advance(task))
    done = [r for r in results if r.status == "done"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    console.print(f"{len(done)} tokenized ({sum(r.frames for r in done)} frames), {len(skipped)} already "
                  f"done, {len(failed)} failed -> {out}", highlight=False)
    for r in failed:
        err_console.print(f"[bold red]failed:[/] {r.error}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(2)


tokenize_video.__doc__ = _HELP  # typer shows the docstring as --help
