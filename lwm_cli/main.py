"""Entry point of the `lwm` command: registers one thin module per subcommand."""

from __future__ import annotations

import typer

from lwm_cli import ask, convert, extend_context, generate, info, needle, tokenize_video, train

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
app.command("ask")(ask.ask)
app.command("generate")(generate.generate)
app.command("needle")(needle.needle)
app.command("convert")(convert.convert)
app.command("info")(info.info)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
