"""`flops` entry point: the click group and the registration of every sub-command."""

from __future__ import annotations

import click

from flops import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flops")
def cli() -> None:
    """FLOps: turn a plain PyTorch repository into a tracked federated learning run."""


# --- sub-commands: one line per command module ---


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
