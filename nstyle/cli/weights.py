"""``nstyle-weights``: fetch, verify, inspect and convert nstyle's pretrained weights.

nstyle-weights fetch            # all of: vgg19 vgg16 lpips-vgg16 lpips-alexnet
nstyle-weights verify           # every cache entry against its pinned checksum
nstyle-weights info             # where the cache is and what it holds
nstyle-weights convert torchvision-vgg19 vgg19-dcbb9e9d.pth vgg19_tv.npz
"""

from __future__ import annotations

import argparse
import sys

from nstyle.cli.errors import command, message
from nstyle.weights import (
    CACHE_ENV,
    NAMES,
    WeightsError,
    cache_path,
    convert_keras_vgg19,
    convert_torchvision_vgg19,
    fetch_many,
    info,
    verify,
)

PROG = "nstyle-weights"


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description="Fetch, verify and convert nstyle's pretrained weights.")
    ap.add_argument("--cache", help=f"cache folder (default ${CACHE_ENV} or ~/.cache/nstyle)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and convert weights into the cache")
    f.add_argument("names", nargs="*", default=list(NAMES), help=f"any of {', '.join(NAMES)} (default all)")
    f.add_argument("--force", action="store_true", help="convert again even if cached")
    v = sub.add_parser("verify", help="check cached weights load with the right shapes")
    v.add_argument("names", nargs="*", default=list(NAMES))
    sub.add_parser("info", help="show the cache and what is in it")
    p = sub.add_parser("path", help="print the cache path of one weight set")
    p.add_argument("name")
    c = sub.add_parser("convert", help="convert full-precision weights a user already has")
    c.add_argument("format", choices=("torchvision-vgg19", "keras-vgg19"))
    c.add_argument("file")
    c.add_argument("out", help="output .npz; load it with nstyle.weights.load(PATH) or weights=PATH")
    c.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        for n, path in fetch_many(args.names, args.cache, force=args.force).items():
            print(f"{n}: {path}")
    elif args.cmd == "verify":
        failed = False
        for n in args.names:  # report every entry, not just the first bad one
            try:
                print(verify(n, args.cache))
            except WeightsError as e:
                print(f"{PROG}: error: {message(e)}", file=sys.stderr)
                failed = True
        return 1 if failed else 0
    elif args.cmd == "info":
        print("\n".join(info(args.cache)))
    elif args.cmd == "path":
        print(cache_path(args.name, args.cache))
    elif args.cmd == "convert":
        fn = convert_torchvision_vgg19 if args.format == "torchvision-vgg19" else convert_keras_vgg19
        print(fn(args.file, args.out, overwrite=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
