"""Data-stage throughput: records/s of the default config with 1 and 2 worker processes.

    python benchmarks/prepare.py [--records N] [--repeats R]

Runs both settings alternately in one process (the machine is noisy; compare the ratio) on the
default ``shapes`` raw-scrape source and default filters, writing to a temporary folder.
Target on the 2-core machine: >= 300 records/s with 2 workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from glide.config import compose, to_dataclass
from glide.data.filters import FilterConfig
from glide.data.prepare import PrepareConfig, merge_parts, reset_outputs, run_part
from glide.data.sources import build_source


def measure(workers: int, records: int, out: Path) -> tuple[float, dict]:
    cfg = compose("config", [f"data.options.num_records={records}"])
    source = build_source(cfg["data"]["source"], **cfg["data"]["options"])
    filters = to_dataclass(FilterConfig, cfg["filters"])
    prep = to_dataclass(PrepareConfig, cfg["prepare"])
    prep = dataclasses.replace(
        prep,
        num_workers=workers,
        progress=False,
        shards_dir=str(out / "shards"),
        eval_dir=str(out / "eval"),
    )
    reset_outputs(prep)
    start = time.perf_counter()
    seconds = run_part(source, filters, prep, has_ground_truth=True)["seconds"]
    stats = merge_parts(prep, seconds=seconds)
    return records / (time.perf_counter() - start), stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    best = {1: 0.0, 2: 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for workers in (1, 2):
                rate, stats = measure(workers, args.records, Path(tmp) / f"w{workers}")
                best[workers] = max(best[workers], rate)
                print(
                    f"repeat {r} workers={workers}: {rate:7.1f} records/s "
                    f"(kept {stats['kept']}/{stats['total']})"
                )
    print(
        f"\nbest of {args.repeats}: 1 worker {best[1]:.1f} records/s, "
        f"2 workers {best[2]:.1f} records/s, ratio 2/1 = {best[2] / best[1]:.2f}x"
    )
    print(f"target >= 300 records/s with 2 workers: {'met' if best[2] >= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
