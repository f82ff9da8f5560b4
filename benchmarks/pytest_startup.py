"""pytest start-up cost of the gradscope plugin for a suite that does not use it.

Run:  python benchmarks/pytest_startup.py [--runs 7]

Times `pytest --co -q` on a throwaway suite of 20 trivial tests, with the plugin
loaded (the default once gradscope is installed) and with `-p no:gradscope`,
alternating the two; prints the medians and the difference.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp)
        (suite / "test_plain.py").write_text(
            "\n".join(f"def test_{i}():\n    assert {i} == {i}\n" for i in range(20))
        )
        commands = {
            "with gradscope": [
                sys.executable,
                "-m",
                "pytest",
                "--co",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            "-p no:gradscope": [
                sys.executable,
                "-m",
                "pytest",
                "--co",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:gradscope",
            ],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for label, command in commands.items():
                t0 = time.perf_counter()
                subprocess.run(command, cwd=suite, capture_output=True, check=True)
                times[label].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for label, value in medians.items():
        print(f"{label:18s} {value * 1e3:7.1f} ms (median of {args.runs})")
    extra = medians["with gradscope"] - medians["-p no:gradscope"]
    print(f"gradscope adds {extra * 1e3:+.1f} ms to pytest start-up")


if __name__ == "__main__":
    main()
