"""Entry point of the `lwm` command: registers one thin module per subcommand."""

from __future__ import annotations

import typer

from lwm_cli import convert, extend_context, info, pending, tokenize_video, train

app = typer.Typer(
    name="lwm",
    help="Large World Model toolkit: long-context text and video models in JAX.\n\n"
         "Example: lwm info --checkpoint params::lwm-7b.msgpack --config 7b-1m",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("train")(train.train)
app.command("extend-context")(extend_context.extend_context)
app.command("tokenize-video")(tokenize_video.tokenize_video)
app.command("ask")(pending.ask)
app.command("generate")(pending.generate)
app.command("needle")(pending.needle)
app.command("convert")(convert.convert)
app.command("info")(info.info)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
