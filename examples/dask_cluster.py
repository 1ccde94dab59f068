"""Segment a folder of slides on a Dask cluster, one task per slide.

    python examples/dask_cluster.py SLIDE_OR_FOLDER... --out OUT [--scheduler tcp://HOST:8786]

Without ``--scheduler`` it starts a cluster on this machine (one worker per GPU, else one per
core) and closes it at the end. The workers write ``OUT/<slide>/`` themselves; this script only
receives one small outcome per slide. Rerun it after an interruption: finished slides are skipped.
"""

from __future__ import annotations

import argparse
import sys

from distributed import Client

from idcmap import segment_slides
from idcmap.batch.cluster import local_cluster
from idcmap.batch.inputs import expand_inputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slides", nargs="+", help="slide files, folders of slides or URLs")
    ap.add_argument("--out", required=True, help="output folder (shared by the workers)")
    ap.add_argument("--scheduler", help="address of a running scheduler (default: a local one)")
    ap.add_argument("--workers", type=int, help="workers of the local cluster")
    args = ap.parse_args()

    cluster = None if args.scheduler else local_cluster(args.workers)
    with Client(args.scheduler or cluster) as client:
        print(
            f"{len(client.scheduler_info()['workers'])} workers; dashboard {client.dashboard_link}"
        )
        failed = 0
        for o in segment_slides(
            expand_inputs(args.slides), args.out, client=client, progress=False
        ):
            failed += o.status == "failed"
            print(f"{o.status:8} {o.path}: {o.message}")
    if cluster is not None:
        cluster.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
