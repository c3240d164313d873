"""`lwm needle`: needle-in-a-haystack evaluation (filled in by issue 11)."""

from __future__ import annotations

import typer

from lwm_cli.common import not_yet


def needle(ctx: str | None = typer.Option(None, "--ctx", help="Largest context length, e.g. 1M.")):
    """Needle-in-a-haystack retrieval over a context-length x depth grid.

    Example: lwm needle --ctx 1M
    """
    not_yet("needle", "the needle evaluation issue")
