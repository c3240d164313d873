"""Subcommands of the mission that later issues fill in. Each says so in one line and exits 2."""

from __future__ import annotations


import typer

from lwm_cli.common import not_yet


def ask(video: str | None = typer.Argument(None), question: str | None = typer.Argument(None)):
    """Answer a question about a video or image.

    Example: lwm ask clip.mp4 "What happens in this video?"
    """
    not_yet("ask", "the video question-answering issue")


def generate(prompt: list[str] | None = typer.Argument(None)):
    """Generate an image or video from a text prompt through VQGAN tokens.

    Example: lwm generate "a cat on a sofa" --out cat.png
    """
    not_yet("generate", "the generation issue")


def needle(ctx: str | None = typer.Option(None, "--ctx", help="Largest context length, e.g. 1M.")):
    """Needle-in-a-haystack retrieval over a context-length x depth grid.

    Example: lwm needle --ctx 1M
    """
    not_yet("needle", "the needle evaluation issue")
