"""`flops` entry point: the click group and the registration of every sub-command."""

from __future__ import annotations

import click

from flops import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flops")
def cli() -> None:
    """FLOps: turn a plain PyTorch repository into a tracked federated learning run."""


# --- sub-commands: one line per command module ---
from cli.runs import list_command, logs_command, resume_command, status_command, stop_command, submit_command, ui_command  # noqa: E402
from cli.source import augment_command, schema_command, validate_command  # noqa: E402
for _command in (submit_command, resume_command, status_command, list_command, logs_command, stop_command, ui_command, validate_command, augment_command, schema_command):
    cli.add_command(_command)
from cli.inference import bundle_command, package_command, serve_command; cli.add_command(bundle_command); cli.add_command(serve_command); cli.add_command(package_command)  # noqa: E402,E702
from cli.build import build_command; cli.add_command(build_command)  # noqa: E402,E702
from cli.export import export_command; cli.add_command(export_command)  # noqa: E402,E702
from cli.images import images_group; cli.add_command(images_group)  # noqa: E402,E702


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
