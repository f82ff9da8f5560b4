"""A self-contained HTML report: findings table, suggestions with copyable code, images inlined.

Runs after the other renderers (``trylast``) and embeds every PNG they wrote into
``outdir`` as a data URI, so the page is one file that can be mailed or attached
to a CI run.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from gradscope import Report, hookimpl

COLOURS = {"error": "#d62728", "warning": "#e08a00", "info": "#1f77b4"}
FILENAME = "report.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: .2rem; } .verdict { font-size: 1.2rem; margin-bottom: 1rem; }
table { border-collapse: collapse; margin: 1rem 0; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left; }
td { vertical-align: top; }
.sev { color: #fff; border-radius: 4px; padding: 1px 6px; font-weight: 600; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; border-radius: 6px; }
.finding { border-left: 4px solid #ccc; padding-left: 1rem; margin: 1.5rem 0; }
button.copy { float: right; font-size: .8rem; }
img { max-width: 100%; border: 1px solid #eee; margin: .5rem 0; }
.note { color: #555; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.setAttribute('data-images-ok', decoded.length + '/' + images.length);
});
document.querySelectorAll('button.copy').forEach(function (button) {
  button.addEventListener('click', function () {
    var code = button.parentElement.querySelector('code').innerText;
    if (navigator.clipboard) {
      navigator.clipboard.writeText(code).then(
        function () { button.textContent = 'copied'; },
        function () { button.textContent = 'select + copy'; });
    }
  });
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _severity(severity: str) -> str:
    colour = COLOURS.get(severity, "#666")
    return f'<span class="sev" style="background:{colour}">{_e(severity)}</span>'


def _finding_html(index: int, finding: Any) -> str:
    parts = [
        f'<div class="finding" id="finding-{index}" '
        f'style="border-color:{COLOURS.get(finding.severity, "#ccc")}">',
        f"<h3>{_severity(finding.severity)} {_e(finding.kind)} in "
        f"<code>{_e(finding.layer or '-')}</code> (step {_e(finding.step)})</h3>",
        f"<p>{_e(finding.message)}</p>",
    ]
    numbers = {k: v for k, v in finding.evidence.items() if isinstance(v, (int, float, str, bool))}
    if numbers:
        rows = "".join(
            f"<tr><td>{_e(k)}</td><td>{_e(f'{v:.4g}' if isinstance(v, float) else v)}</td></tr>"
            for k, v in numbers.items()
        )
        parts.append(f"<details><summary>evidence</summary><table>{rows}</table></details>")
    for rank, s in enumerate(finding.suggestions, start=1):
        parts.append(
            f"<h4>Fix {rank}: {_e(s.title)} <small>({_e(s.kind)})</small></h4>"
            f"<p>{_e(s.why)}</p>"
            f'<pre><button class="copy" type="button">copy</button><code>{_e(s.code)}</code></pre>'
        )
    parts.append("</div>")
    return "\n".join(parts)


def render_html(report: Report, images: list[Path]) -> str:
    """The page as a string, with ``images`` inlined."""
    verdict = "healthy: no findings" if not report.findings else report.summary().splitlines()[0]
    table_rows = "".join(
        f'<tr><td>{_severity(f.severity)}</td><td><a href="#finding-{i}">{_e(f.kind)}</a></td>'
        f"<td><code>{_e(f.layer or '-')}</code></td><td>{_e(f.step)}</td>"
        f"<td>{_e(f.suggestions[0].kind if f.suggestions else '-')}</td></tr>"
        for i, f in enumerate(report.findings)
    )
    figures = "".join(
        f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{_e(path.stem)}'
        "</figcaption></figure>"
        for path in images
    )
    notes = "".join(f'<p class="note">note: {_e(n)}</p>' for n in report.notes)
    errors = "".join(
        f'<p class="note">plugin {_e(e["plugin"])} failed in {_e(e["hook"])}: {_e(e["error"])}</p>'
        for e in report.plugin_errors
    )
    overhead = report.overhead.get("seconds_per_step")
    own_time = (
        f'<p class="note">gradscope own time: {overhead * 1e3:.2f} ms per recorded step</p>'
        if overhead
        else ""
    )
    rows = table_rows or '<tr><td colspan="5">none</td></tr>'
    data = script_json({"model": report.model_name, "ok": report.ok})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>gradscope: {_e(report.model_name)}</title>
<style>{STYLE}</style></head>
<body>
<h1>gradscope report: {_e(report.model_name)}</h1>
<div class="verdict">{_e(verdict)}</div>
{notes}{errors}
{own_time}
<table id="findings"><thead><tr><th>severity</th><th>finding</th><th>layer</th><th>step</th>
<th>top fix</th></tr></thead><tbody>{rows}</tbody></table>
{"".join(_finding_html(i, f) for i, f in enumerate(report.findings))}
<h2>Plots</h2>
{figures or '<p class="note">no plots were rendered</p>'}
<script type="application/json" id="report-data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def script_json(value: object) -> str:
    """JSON safe inside ``<script type="application/json">``: ``JSON.parse`` of the
    element's text gives ``value`` back, and no name can close the element (``<``, ``>``
    and ``&`` are written as ``\\u003c``, ``\\u003e``, ``\\u0026``)."""
    text = json.dumps(value)  # ensure_ascii: U+2028/U+2029 are escaped too
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@hookimpl(trylast=True)
def gradscope_render(report: Report, outdir: Path) -> list[Path]:
    """Write report.html with the PNGs the other renderers left in ``outdir``."""
    outdir = Path(outdir)
    images = sorted(p for p in outdir.glob("*.png"))
    dashboard = [p for p in images if p.stem == "dashboard"]
    images = dashboard + [p for p in images if p.stem != "dashboard"]
    path = outdir / FILENAME
    path.write_text(render_html(report, images), encoding="utf-8")
    return [path]
