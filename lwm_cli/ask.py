"""`lwm ask`: question answering about a video or image (filled in by issue 10)."""

from __future__ import annotations

import typer

from lwm_cli.common import not_yet


def ask(video: str | None = typer.Argument(None), question: str | None = typer.Argument(None)):
    """Answer a question about a video or image.

    Example: lwm ask clip.mp4 "What happens in this video?"
    """
    not_yet("ask", "the video question-answering issue")
