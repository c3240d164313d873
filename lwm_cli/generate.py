"""`lwm generate`: text to image or video through VQGAN tokens (filled in by issue 10)."""

from __future__ import annotations

import typer

from lwm_cli.common import not_yet


def generate(prompt: list[str] | None = typer.Argument(None)):
    """Generate an image or video from a text prompt through VQGAN tokens.

    Example: lwm generate "a cat on a sofa" --out cat.png
    """
    not_yet("generate", "the generation issue")
