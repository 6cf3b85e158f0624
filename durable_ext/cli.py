"""``durable-ext``: the command line (``durable-ext start [APP_DIR]``, also ``python -m durable_ext``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="durable-ext", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="run a function app folder with the local Functions host")
    start.add_argument("app_dir", nargs="?", default=".", help="folder with function_app.py (default: .)")
    start.add_argument("--port", type=int, default=7071, help="HTTP port (default: 7071)")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    start.add_argument(
        "--enforce-keys",
        action="store_true",
        help="require function keys (DURABLE_EXT_FUNCTION_KEY / DURABLE_EXT_MASTER_KEY)",
    )
    start.add_argument("--log-level", default=os.environ.get("DURABLE_EXT_LOG", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``durable-ext`` script."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "start":
        from .core.errors import DurableError
        from .host.azurite import AzuriteError
        from .host.process import exit_now, run_until_signalled
        from .host.server import serve

        try:
            run_until_signalled(
                lambda stop: serve(
                    args.app_dir, stop, port=args.port, host=args.host, enforce_keys=args.enforce_keys
                )
            )
        except (DurableError, AzuriteError, OSError) as exc:  # no app, bad settings, port taken, no Azurite
            logging.getLogger("durable_ext.host").error("cannot start: %s", exc)
            return 1
        exit_now(0)  # stopped cleanly: its in-process work was handed back
    return 0


if __name__ == "__main__":
    sys.exit(main())
