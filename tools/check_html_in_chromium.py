"""Open a gradscope HTML report in headless Chromium: no console errors, every image decodes.

Run:  python tools/check_html_in_chromium.py [REPORT.html]
      (without an argument it writes the deep_sigmoid_mlp demo's report first)

Needs Debian's chromium package (``apt-get install chromium``).  Prints what it
checked and exits 1 on a console error or an image that did not render.
It also saves a screenshot next to the report for a person to look at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


def demo_report(path: Path) -> Path:
    import gradscope
    from gradscope.models import builtin_specs

    spec = builtin_specs()["deep_sigmoid_mlp"]
    report = gradscope.diagnose(
        spec.factory(), spec.example_batch(), spec.loss_fn, steps=20, name=spec.name
    )
    return report.save_html(path)


def check(path: Path) -> int:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium is not installed: apt-get install chromium")
        return 2
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", path.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        shot = path.with_suffix(".png")
        subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1280,2000",
                path.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    match = re.search(r'data-images-ok="(\d+)/(\d+)"', run.stdout)
    print(f"page: {path}")
    print(f"console messages: {len(console)}")
    for line in console:
        print(f"  {line}")
    if match is None:
        print("the page's load check did not run")
        return 1
    ok, total = int(match.group(1)), int(match.group(2))
    print(f"images rendered: {ok}/{total}")
    print(f"screenshot: {shot}")
    return 0 if not console and ok == total and total > 0 else 1


def main() -> int:
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        path = demo_report(Path(tempfile.mkdtemp()) / "report.html")
    return check(path)


if __name__ == "__main__":
    sys.exit(main())
