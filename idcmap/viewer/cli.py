"""``idcmap view OUT``: the command-line side of the viewer."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run_view"]


def _port(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {s!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0 = any free port), got {v}")
    return v


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``view`` command to ``idcmap``'s sub-parsers."""
    view = subparsers.add_parser(
        "view",
        help="look at an output folder in the browser",
        description="Serve an output folder of `idcmap run` to the browser: a table of the "
        "slides, and each slide zoomable with the heatmap and the numbered IDC regions. "
        "Read-only; serves only that folder's outputs and the slides its summaries name.",
    )
    view.add_argument("out", type=Path, metavar="OUT", help="output folder of `idcmap run`")
    view.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this computer only)",
    )
    view.add_argument(
        "--port", type=_port, default=8765, help="port (default: 8765; 0 = any free port)"
    )
    view.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    view.add_argument("--verbose", "-v", action="store_true", help="log every request")
    view.add_argument("--debug", action="store_true", help="print tracebacks")
    view.set_defaults(func=run_view)
    return view


def run_view(args: argparse.Namespace) -> int:
    """Serve until Ctrl+C; returns the exit status (0)."""
    from idcmap.errors import UsageError
    from idcmap.viewer.server import make_server

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if not args.out.is_dir():
        what = "a file, not a folder" if args.out.exists() else "no such folder"
        raise UsageError(f"{args.out}: {what}; pass the --out folder of an `idcmap run`")
    try:
        server = make_server(args.out, args.host, args.port, log=log if args.verbose else None)
    except UsageError as e:  # the library speaks Python API; say it in flags
        raise UsageError(str(e).replace("port=0", "--port 0").replace("port=", "--port")) from e
    url = server.url
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"idcmap view: listening on {args.host}: anyone who can reach this computer can see "
            "these slides",
            file=sys.stderr,
        )
    print(f"idcmap view: {args.out} at {url} (Ctrl+C to stop)", flush=True)
    if not args.no_browser:
        threading.Timer(0.3, lambda: webbrowser.open(url)).start()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM (kill, systemd, a closing terminal's job control) stops it like Ctrl+C
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("idcmap view: stopped", file=sys.stderr)
    finally:
        server.server_close()
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    return 0
