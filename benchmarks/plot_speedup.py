"""Plot speedup over ar per method and prompt group from `braid bench --out X.md` results.

    python benchmarks/plot_speedup.py benchmarks/results/draft_val_t0.json [more.json ...]

Each JSON gives a PNG beside it (same name), with batch sizes as panels and the temperature in
the title. Needs matplotlib (`pip install 'braid-llm[bench]'`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from braid.bench.plot import plot_speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON written by braid bench --out")
    args = parser.parse_args()
    for path in args.results:
        result = json.loads(path.read_text())
        print(plot_speedup(result, path.with_suffix(".png")))


if __name__ == "__main__":
    main()
