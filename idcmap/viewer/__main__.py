"""``python -m idcmap.viewer OUT [--port N] [--host H] [--no-browser]``: same as ``idcmap view``."""

from __future__ import annotations

import argparse
import sys

from idcmap.errors import IDCMapError
from idcmap.viewer.cli import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idcmap.viewer")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["view", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except IDCMapError as e:
        print(f"idcmap view: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
