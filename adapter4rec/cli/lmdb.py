"""`adapter4rec build-lmdb`: pack one image file per item id into an LMDB image store."""
from __future__ import annotations

import logging

from ..data.lmdb import build_lmdb

log = logging.getLogger("adapter4rec")


def add_build_lmdb_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "build-lmdb", help="pack one image file per item id into an LMDB image store",
        description="Pack the image of every item of ITEMS (file DIR/**/<item id>.jpg|.png|...) "
                    "into an LMDB store: key = item id, value = the file's bytes.")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of image files (searched recursively)")
    p.add_argument("--items", required=True, metavar="ITEMS", help="items file (item id in the first column)")
    p.add_argument("--out", required=True, metavar="X.lmdb", help="store to write (a folder)")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out items without an image (then train with data.missing_image: blank)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-verify", action="store_true", help="skip checking that each file is an image")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=build_lmdb_main)


def build_lmdb_main(args) -> None:
    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)
    s = build_lmdb(args.images, args.items, args.out, allow_missing=args.allow_missing,
                   overwrite=args.overwrite, verify=not args.no_verify, progress=not args.no_progress)
    print(f"wrote {s['count']} images ({s['bytes'] / 2**20:.1f} MiB; "
          f"{', '.join(f'{k} {v}' for k, v in sorted(s['formats'].items()))}) to {s['out']}"
          + (f"; {s['missing']} items without an image left out" if s["missing"] else ""))
