"""The finetuning report: loss curve (from train.log) and held-out figures as one self-contained HTML file."""
import html
import re
from pathlib import Path
from typing import Dict, List, Tuple

ITER_LINE = re.compile(r"iter (\d+)/(\d+) loss ([0-9.eE+-]+|nan|inf)")


def loss_history(log_path: Path) -> List[Tuple[int, float]]:
    """(iteration, loss) of every `iter N/T loss X` line the training loop logged."""
    if not Path(log_path).is_file():
        return []
    found = (ITER_LINE.search(line) for line in Path(log_path).read_text().splitlines())
    return [(int(m.group(1)), float(m.group(3))) for m in found if m]


def loss_svg(points: List[Tuple[int, float]], width: int = 560, height: int = 220) -> str:
    if len(points) < 2:
        return "<p>Too few logged iterations for a loss curve.</p>"
    pad = 40
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), 0.0, max(ys) * 1.05 or 1.0

    def sx(x):
        return pad + (x - x0) / max(1, x1 - x0) * (width - 2 * pad)

    def sy(y):
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#999"/>'
            f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
            f'<text x="{pad}" y="{height - 10}" font-size="11">iteration {x0}</text>'
            f'<text x="{width - pad}" y="{height - 10}" font-size="11" text-anchor="end">{x1}</text>'
            f'<text x="4" y="{pad + 4}" font-size="11">{y1:.2f}</text>'
            f'<text x="4" y="{height - pad}" font-size="11">0</text></svg>')


def _figure(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def report_html(report: Dict) -> str:
    m, base, prov = report["metrics"], report["base"], report["provenance"]
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(name)}</td><td>{_figure(m['per_class_iou'].get(name))}</td>"
                   f"<td>{_figure(base['per_class_iou'].get(name))}</td></tr>" for name in report["classes"])
    stopped = " (stopped by the time budget)" if prov.get("stopped_by_time_budget") else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Finetuning report: {esc(report['model'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#f3f3f3}}</style>
</head><body>
<h1>Finetuning report: {esc(report['model'])}</h1>
<p>{esc(report['name'])}, finetuned from <b>{esc(prov['base_model'])}</b> ({esc(prov.get('base_model_name', ''))}):
{prov['iterations_done']} of {prov['iterations_planned']} iterations{stopped}, {report['elapsed_s']:.0f} s in all.</p>
<h2>Held-out score</h2>
<p>Held out: {esc(prov.get('split', ''))}. Labelled pixels: {prov['labelled_pixels']['train']} for training,
{prov['labelled_pixels']['held_out']} held out.</p>
<table><tr><th></th><th>mIoU</th></tr>
<tr><td>finetuned model</td><td><b>{_figure(m['mIoU'])}</b></td></tr>
<tr><td>base model {esc(prov['base_model'])}</td><td>{_figure(base['mIoU'])}</td></tr>
<tr><td>best constant class ({esc(m['baseline_best_constant']['class'])})</td><td>{_figure(m['baseline_best_constant']['mIoU'])}</td></tr>
</table>
<p>Overall accuracy: finetuned {_figure(m['overall_accuracy'])}, base {_figure(base['overall_accuracy'])}.
The base model's classes are matched to yours by name (matched: {esc(', '.join(base['matched_classes']) or 'none')});
a pixel it gives any other class counts as wrong.</p>
<h2>Per class (IoU)</h2>
<table><tr><th>class</th><th>finetuned</th><th>base</th></tr>{rows}</table>
<h2>Training loss</h2>
{loss_svg(report['loss'])}
</body></html>
"""


def write_report(path: Path, report: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(report), encoding="utf-8")
