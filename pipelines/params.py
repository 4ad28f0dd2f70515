"""Regenerate ``params.yaml`` from ``conf/`` (``make params``; ``make run`` does it first).

    python pipelines/params.py            # write params.yaml (the composed, resolved config)
    python pipelines/params.py --check    # exit 1 when params.yaml is stale

``params.yaml`` is what the ``params:`` of ``dvc.yaml`` read: a stage re-runs when a section it
reads changes. ``dvc exp run`` rewrites it itself (DVC's Hydra composition, ``hydra.enabled`` in
``.dvc/config``) with the ``-S`` overrides; this writes the same text without overrides, so plain
``dvc repro`` sees the parameters ``conf/`` holds. Not a stage: it is the stages' input.
"""

from __future__ import annotations

import argparse
import sys

from glide.config import PARAMS_FILE, project_root, write_params


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when stale")
    args = parser.parse_args(argv)
    path = project_root() / PARAMS_FILE
    fresh = write_params(path, check=args.check)
    if args.check and not fresh:
        print(f"{path} is stale: run `make params` (python pipelines/params.py)", file=sys.stderr)
        return 1
    print(f"{path}: {'up to date' if fresh else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
