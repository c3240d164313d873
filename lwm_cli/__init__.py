"""The `lwm` command line: thin typer wrappers over `lwm_core`."""
