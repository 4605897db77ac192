"""`flops` entry point: the click group and the registration of every sub-command."""

from __future__ import annotations

import click

from flops import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flops")
def cli() -> None:
    """FLOps: turn a plain PyTorch repository into a tracked federated learning run."""


# --- sub-commands: one line per command module ---
from cli.inference import bundle_command, serve_command; cli.add_command(bundle_command); cli.add_command(serve_command)  # noqa: E402,E702
from cli.build import build_command; cli.add_command(build_command)  # noqa: E402,E702


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
