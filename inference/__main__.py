"""`python -m inference`: serve the bundle named by $FLOPS_BUNDLE on $PORT (the image's entrypoint)."""

from __future__ import annotations

import logging
import sys

import torch
import uvicorn

from flops.errors import FlopsError
from inference.server import create_app
from inference.settings import ServerSettings


def main() -> int:
    try:
        settings = ServerSettings.from_environment()
        torch.set_num_threads(settings.torch_threads)
        app = create_app(settings)
    except FlopsError as exc:
        # This process is an entrypoint of its own (in the image there is no cli/); say why and exit with the code.
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
