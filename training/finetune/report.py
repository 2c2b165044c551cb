"""The finetuning report: loss curve (from train.log) and held-out figures as one self-contained HTML file."""
import copy
import html
import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

ITER_LINE = re.compile(r"iter (\d+)/(\d+) loss ([0-9.eE+-]+|nan|inf)")


def loss_history(log_path: Path) -> List[Tuple[int, float]]:
    """(iteration, loss) of every `iter N/T loss X` line the training loop logged; after a resume, the iterations
    run again (since the last checkpoint) count once, as their last run."""
    if not Path(log_path).is_file():
        return []
    found = (ITER_LINE.search(line) for line in Path(log_path).read_text().splitlines())
    losses = {int(m.group(1)): float(m.group(3)) for m in found if m}
    return sorted(losses.items())


class HeldOutCurve:
    """The held-out score at each periodic checkpoint (training.engine.train_loop's on_checkpoint), scored on a
    CPU copy of the model so training is untouched; each is a progress line for the job and a point of the
    report, kept in work_dir/held_out.json so that a resumed run's report still has those before the stop."""

    def __init__(self, work_dir: Path, metric: str, score: Callable[[torch.nn.Module], float],
                 progress: Callable[[float, str], None], total: int):
        self.path = Path(work_dir) / "held_out.json"
        self.metric, self.score, self.progress, self.total = metric, score, progress, total
        kept = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.points: List[Tuple[int, float]] = [(int(it), float(v)) for it, v in kept]

    def __call__(self, model: torch.nn.Module, iteration: int) -> None:
        scored = copy.deepcopy(model).cpu().eval()
        with torch.no_grad():
            value = float(self.score(scored))
        self.points = [p for p in self.points if p[0] < iteration] + [(iteration, value)]
        self.path.write_text(json.dumps(self.points))
        self.progress(10 + 78 * iteration / self.total,
                      f"training: held-out {self.metric} {value:.3f} at iteration {iteration}/{self.total}")


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
    if value is None or isinstance(value, float) and value != value:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def report_html(report: Dict) -> str:
    """report: model, name, metric, scores [(what, value)] (the finetuned model first), amounts and matching
    (sentences), per_class_header + per_class rows, loss [(iteration, loss)], held_out_curve [(iteration,
    score)], provenance, elapsed_s."""
    prov, esc = report["provenance"], html.escape
    scores = "".join(f"<tr><td>{esc(what)}</td><td>{'<b>' if i == 0 else ''}{_figure(value)}"
                     f"{'</b>' if i == 0 else ''}</td></tr>" for i, (what, value) in enumerate(report["scores"]))
    header = "".join(f"<th>{esc(h)}</th>" for h in report["per_class_header"])
    rows = "".join("<tr>" + "".join(f"<td>{_figure(v)}</td>" for v in row) + "</tr>" for row in report["per_class"])
    stopped = " (stopped by the time budget)" if prov.get("stopped_by_time_budget") else ""
    curve = "".join(f"<tr><td>{it}</td><td>{_figure(v)}</td></tr>" for it, v in report.get("held_out_curve", []))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Finetuning report: {esc(report['model'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#f3f3f3}}</style>
</head><body>
<h1>Finetuning report: {esc(report['model'])}</h1>
<p>{esc(report['name'])}, finetuned from <b>{esc(prov['base_model'])}</b> ({esc(prov.get('base_model_name', ''))}):
{prov['iterations_done']} of {prov['iterations_planned']} iterations{stopped}, {report['elapsed_s']:.0f} s in all.</p>
<h2>Held-out score</h2>
<p>Held out: {esc(prov.get('split', ''))}. {esc(report['amounts'])}</p>
<table><tr><th></th><th>{esc(report['metric'])}</th></tr>{scores}</table>
<p>{esc(report['matching'])}</p>
<h2>Per class</h2>
<table><tr>{header}</tr>{rows}</table>
<h2>Training loss</h2>
{loss_svg(report['loss'])}
<h2>Held-out {esc(report['metric'])} during training</h2>
<table><tr><th>iteration</th><th>{esc(report['metric'])}</th></tr>{curve}</table>
</body></html>
"""


def write_report(path: Path, report: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(report), encoding="utf-8")
