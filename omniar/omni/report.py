"""The demo's HTML report: scores against the targets, training curves, and what the model made - text-to-image
grids for test and held-out prompts, edits before/after, answers and captions next to their images, and for a
model with speech its spoken captions (audio players beside espeak-ng's), transcripts and spoken-question answers.
One static page; media are the benchmark's own files, linked relative to the page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

# The acceptance targets of the OneCAT and AR-Omni issues: (task, metric) -> minimum, or ("max", maximum)
TARGETS = {("t2i", "overall"): 0.80, ("t2i", "single"): 0.95, ("heldout", "overall"): 0.60,
           ("vqa", "exact_match"): 0.95, ("caption", "correct"): 0.90, ("edit", "satisfied"): 0.80,
           ("edit", "preserved"): 0.95, ("tts", "wer_ratio"): ("max", 1.5), ("asr", "wer"): ("max", 0.10),
           ("svqa", "exact_match"): 0.90}

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}.cell{width:132px;font-size:11px}.cell img{width:128px;
image-rendering:pixelated;border:1px solid #999}.strip img{height:128px;image-rendering:pixelated}
.ok{color:#070}.bad{color:#a00}code{background:#f4f4f4}"""


def _esc(x) -> str:
    return html.escape(str(x))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _score_rows(report: dict) -> str:
    rows = []
    tables = dict(report.get("scores") or {})
    if report.get("heldout"):
        tables["heldout"] = report["heldout"]
    for task, sc in tables.items():
        for metric, value in sc.items():
            if metric == "count" or not isinstance(value, (int, float)):
                continue
            target = TARGETS.get((task, metric))
            if target is None:
                mark = ""
            elif isinstance(target, tuple):
                mark = (f"<span class=ok>&le; {target[1]}</span>" if value <= target[1]
                        else f"<span class=bad>&gt; {target[1]}</span>")
            else:
                mark = (f"<span class=ok>&ge; {target}</span>" if value >= target
                        else f"<span class=bad>&lt; {target}</span>")
            rows.append(f"<tr><td>{task}</td><td>{metric}</td><td>{value:.3f}</td><td>{mark}</td>"
                        f"<td>{sc.get('count', '')}</td></tr>")
    return "<table><tr><th>task</th><th>metric</th><th>score</th><th>target</th><th>items</th></tr>" + \
        "".join(rows) + "</table>"


def _curve(metrics: list[Path]) -> str:
    """An inline SVG of the training loss over all stages (stage boundaries dashed)."""
    points, bounds, offset = [], [], 0
    for path in metrics:
        rows = _records(path)
        points += [(offset + r["step"], r["loss"]) for r in rows]
        offset += rows[-1]["step"] if rows else 0
        bounds.append(offset)
    if len(points) < 2:
        return "<p>(no training metrics)</p>"
    w, h = 700, 200
    x_max = max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    span = max(y_hi - y_lo, 1e-6)

    def sx(x):
        return f"{40 + (w - 50) * x / x_max:.1f}"

    def sy(y):
        return f"{10 + (h - 30) * (1 - (y - y_lo) / span):.1f}"

    lines = "".join(f'<line x1="{sx(b)}" y1="10" x2="{sx(b)}" y2="{h - 20}" stroke="#bbb" stroke-dasharray="4"/>'
                    for b in bounds[:-1])
    poly = " ".join(f"{sx(x)},{sy(y)}" for x, y in points)
    return (f'<svg width="{w}" height="{h}" style="border:1px solid #ddd">{lines}<polyline fill="none" '
            f'stroke="#36c" stroke-width="1.5" points="{poly}"/><text x="4" y="16" font-size="11">{y_hi:.3f}'
            f'</text><text x="4" y="{h - 22}" font-size="11">{y_lo:.3f}</text><text x="{w - 80}" y="{h - 4}" '
            f'font-size="11">step {x_max}</text></svg>')


def _input_images(data_dir: Path, page_dir: Path, count: int) -> list[str]:
    """Links (relative to the page) to the renders of the test split's first `count` samples in the demo's
    ShapeWorld dataset - the understanding items' inputs, which the predictions file does not hold."""
    records = _records(data_dir / "test.jsonl")[:count]
    return [os.path.relpath(data_dir / r["image"], page_dir) for r in records]


def _sizing(plan: dict, paced: list[dict] = ()) -> str:
    """How the budget became the stages' steps (and what pacing changed as they ran)."""
    seconds = plan.get("step_seconds")
    if not seconds:
        return "steps from the reference machine's rates"
    # the calibration times a step of each stage, the tokenizer and the teacher, decoder post-training's cost per
    # redrawn image and self-training's drawing per prompt (demo.OTHER_STEPS)
    unit = {"decoder": "an image", "self-draw": "a prompt"}
    timed = ", ".join(f"{name} {s} s {unit.get(name, 'a step')}" for name, s in seconds.items())
    return f"stages sized by what was timed on this machine: {_esc(timed)}{_pacing(paced)}"


def _pacing(paced: list[dict]) -> str:
    """What pacing changed while the demo ran (demo.pace_stages)."""
    if not paced:
        return ""
    changes = "; ".join(f"before {p['before']} (stages at {p['pace']}x their timing): "
                        + ", ".join(f"{name} {a} -> {b}" for name, (a, b) in p["steps"].items()) for p in paced)
    return f"; paced to end on time - {_esc(changes)} steps"


def write_report(path: str | Path, report: dict, eval_dir: str | Path, data_dir: str | Path,
                 metrics: list[Path] = (), show: int = 24) -> Path:
    """The page at `path` for a demo `report`, linking the benchmark's outputs in `eval_dir` and the inputs in the
    ShapeWorld dataset `data_dir` (the benchmark's test samples), with the loss curve of the `metrics` files."""
    from omniar.data.shapeworld.judge import answer_correct, caption_correct
    from omniar.data.shapeworld.scene import Scene

    path, eval_dir = Path(path), Path(eval_dir)
    rel = Path(os.path.relpath(eval_dir, path.parent))
    test, heldout = _records(eval_dir / "test" / "predictions.jsonl"), _records(eval_dir / "heldout" /
                                                                                 "predictions.jsonl")
    plan = report.get("plan", {})
    parts = [f"<html><head><meta charset=utf-8><title>omniar demo</title><style>{_CSS}</style></head><body>",
             "<h1>omniar demo: OneCAT on ShapeWorld</h1>",
             f"<p>Preset <code>{_esc(plan.get('preset'))}</code>, "
             f"{report.get('parameters', {}).get('total', 0):,} decoder parameters; budget {plan.get('budget')} "
             f"min ({_sizing(plan, report.get('paced') or [])}), wall {report.get('wall_seconds', 0) / 60:.1f} min. "
             "Image sampling: "
             f"<code>{_esc(json.dumps(report.get('sampling')))}</code>.</p>",
             "<h2>Scores (independent judges)</h2>", _score_rows(report),
             "<h2>Steps</h2><table><tr><th>step</th><th>seconds</th><th>cached</th><th>summary</th></tr>"]
    for name, s in report.get("steps", {}).items():
        summary = {k: v for k, v in s.items() if k not in ("seconds", "cached", "dir")}
        parts.append(f"<tr><td>{name}</td><td>{s.get('seconds', '')}</td><td>{'yes' if s.get('cached') else ''}"
                     f"</td><td><code>{_esc(json.dumps(summary))}</code></td></tr>")
    parts += ["</table>", "<h2>Training loss</h2>", _curve(list(metrics))]

    for title, sub, records in (("Text to image: held-out compositions", "heldout", heldout),
                                ("Text to image: test prompts", "test", test)):
        cells = [f'<div class=cell><img src="{rel}/{sub}/{r["image"]}"><br>{_esc(r["prompt"])}</div>'
                 for r in [r for r in records if r["task"] == "t2i"][:show]]
        if cells:
            parts += [f"<h2>{title}</h2><div class=grid>", *cells, "</div>"]

    if report.get("scales"):  # omni/evaluate.py draw_scales: held-out prompts drawn scale by scale
        parts += ["<h2>Coarse to fine: held-out prompts drawn scale by scale</h2><p>Each scale's forward pass adds "
                  "detail to the image of the scales before it (the tokenizer's decoder of the running "
                  "reconstruction); the last column is the image scored above.</p><table>"]
        parts += [f'<tr><td>{_esc(r["prompt"])}</td><td class=strip><img src="{rel}/heldout/{r["image"]}"></td></tr>'
                  for r in report["scales"]]
        parts.append("</table>")

    edits = [r for r in test if r["task"] == "edit"][: show // 2]
    if edits:
        parts.append("<h2>Edits (before / after)</h2><table><tr><th>instruction</th><th>source</th><th>edited</th>"
                     "</tr>")
        parts += [f'<tr><td>{_esc(r["instruction"])}</td><td><div class=cell><img src="{rel}/test/{r["source"]}">'
                  f'</div></td><td><div class=cell><img src="{rel}/test/{r["edited"]}"></div></td></tr>'
                  for r in edits]
        parts.append("</table>")

    for task in ("vqa", "caption"):
        rows = [r for r in test if r["task"] == task][:show]
        if not rows:
            continue
        images = _input_images(Path(data_dir), path.parent, len(rows))
        head = "question</th><th>answer</th><th>model" if task == "vqa" else "model caption"
        parts.append(f"<h2>{'Visual question answering' if task == 'vqa' else 'Captions'}</h2><table><tr>"
                     f"<th>image</th><th>{head}</th><th>correct</th></tr>")
        for r, img in zip(rows, images):
            if task == "vqa":
                ok = answer_correct(r["prediction"], r["answer"])
                text = f'{_esc(r["question"])}</td><td>{_esc(r["answer"])}</td><td>{_esc(r["prediction"])}'
            else:
                ok = caption_correct(r["prediction"], Scene.from_dict(r["scene"]).objects)
                text = _esc(r["prediction"])
            parts.append(f'<tr><td><div class=cell><img src="{img}"></div></td><td>{text}</td>'
                         f'<td class={"ok" if ok else "bad"}>{"yes" if ok else "no"}</td></tr>')
        parts.append("</table>")
    parts += _speech(test, rel, show)
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path


def _table(title: str, head: list[str], rows: list[list[str]]) -> list[str]:
    """A titled table: header names, then rows of cell HTML (from `_td`); nothing when there are no rows."""
    if not rows:
        return []
    header = "".join(f"<th>{h}</th>" for h in head)
    return [f"<h2>{title}</h2><table><tr>{header}</tr>", *(f"<tr>{''.join(r)}</tr>" for r in rows), "</table>"]


def _td(content: str, ok: bool | None = None) -> str:
    """A cell; `ok` colours a judged one."""
    return f"<td>{content}</td>" if ok is None else f'<td class={"ok" if ok else "bad"}>{content}</td>'


def _speech(test: list[dict], rel: Path, show: int) -> list[str]:
    """Spoken captions (the model's and espeak-ng's, as audio players), transcripts, spoken-question answers."""
    from omniar.audio.recognizer import word_errors
    from omniar.data.shapeworld.judge import answer_correct

    def audio(src: str | None) -> str:
        return f'<audio controls preload=none src="{rel}/test/{src}"></audio>' if src else ""

    def rows(task: str, n: int) -> list[dict]:
        return [r for r in test if r["task"] == task][:n]

    tts = [[_td(_esc(r["text"])), _td(audio(r["audio"])), _td(audio(r.get("reference_audio")))]
           for r in rows("tts", show // 2)]
    asr = []
    for r in rows("asr", show):
        errors, words = word_errors(r["text"], r["prediction"])
        asr.append([_td(_esc(r["text"])), _td(_esc(r["prediction"])), _td(f"{errors} / {words}", errors == 0)])
    svqa = []
    for r in rows("svqa", show):
        ok = answer_correct(r["prediction"], r["answer"])
        svqa.append([_td(_esc(r["question"])), _td(_esc(r["answer"])), _td(_esc(r["prediction"])),
                     _td("yes" if ok else "no", ok)])
    return (_table("Text to speech", ["text", "model", "espeak-ng (reference)"], tts)
            + _table("Speech recognition", ["spoken", "model transcript", "word errors"], asr)
            + _table("Spoken questions", ["question (spoken)", "answer", "model", "correct"], svqa))
