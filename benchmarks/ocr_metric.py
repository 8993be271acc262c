"""What an OCR user reads off PP-OCR's detector and recogniser, against the fp32 model's own reading: for
bench_real_peers.py's figures, and as `compress quantize --metric` functions (bench_real_models.py copies this file
beside its runs).

- detector: its text boxes, a box (x1, y1, x2, y2) per connected region of the probability map over 0.3 with at
  least 9 pixels (PP-OCR's DB post-processing, simplified); recall and precision of fp32's boxes at IoU 0.5.
- recogniser: its lines decoded greedily (CTC: repeats collapsed, the blank class 0 dropped); the lines read exactly
  as fp32 reads them and the character accuracy against fp32's text (1 - character error rate).
"""
from __future__ import annotations

import numpy as np


def text_boxes(prob: np.ndarray, threshold: float = 0.3, min_pixels: int = 9) -> list[tuple[int, int, int, int]]:
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(prob).reshape(np.shape(prob)[-2:]) > threshold)
    return [(s[1].start, s[0].start, s[1].stop, s[0].stop) for i, s in enumerate(ndimage.find_objects(labels))
            if (labels[s] == i + 1).sum() >= min_pixels]


def _iou(a, b) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _matched(truth: list, mine: list) -> int:
    used, matched = set(), 0
    for box in truth:
        best = max(((j, _iou(box, m)) for j, m in enumerate(mine) if j not in used), key=lambda t: t[1],
                   default=(None, 0.0))
        if best[1] >= 0.5:
            used.add(best[0])
            matched += 1
    return matched


def box_figures(fp32: np.ndarray, int8: np.ndarray) -> dict:
    """Recall of fp32's text boxes by the other model's at IoU 0.5 (each matched once), and that model's precision."""
    table = box_table(fp32)
    figures = text_boxes50({"maps": int8}, table)
    return {"fp32_boxes": int((table[..., 0] >= 0).sum()), "recall50": round(figures["recall50"], 4),
            "precision50": round(figures["precision50"], 4)}


def ctc_text(probs: np.ndarray) -> list[int]:
    best = np.asarray(probs).argmax(-1)
    return [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def _edits(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _line_figures(pairs: list[tuple[list[int], list[int]]]) -> dict:
    return {"lines_as_fp32": round(float(np.mean([a == b for a, b in pairs])), 4),
            "cer_vs_fp32": round(sum(_edits(a, b) for a, b in pairs) / max(sum(len(a) for a, _ in pairs), 1), 4)}


def line_figures(fp32: np.ndarray, int8: np.ndarray) -> dict:
    return _line_figures([(ctc_text(a), ctc_text(b)) for a, b in zip(fp32, int8)])


# ---- as `compress quantize --data gate.npz --metric ocr_metric:FUNCTION` (targets: fp32's reading, -1 padded) ----

def box_table(maps: np.ndarray) -> np.ndarray:
    """fp32's text boxes of each map as an (N, K, 4) array, rows of -1 past the last box: the --data targets."""
    found = [text_boxes(m) for m in maps]
    table = np.full((len(maps), max(1, max(len(f) for f in found)), 4), -1, np.int32)
    for i, f in enumerate(found):
        table[i, :len(f)] = f
    return table


def text_table(probs: np.ndarray) -> np.ndarray:
    """fp32's decoded text of each line as an (N, steps) array of class ids, -1 past the end: the --data targets."""
    table = np.full(np.shape(probs)[:2], -1, np.int32)
    for i, p in enumerate(probs):
        text = ctc_text(p)
        table[i, :len(text)] = text
    return table


def text_boxes50(outputs, targets) -> dict:
    """Recall (the primary figure) and precision at IoU 0.5 of fp32's text boxes."""
    maps = next(iter(outputs.values()))
    matched = found = made = 0
    for m, truth in zip(maps, np.asarray(targets)):
        truth = [tuple(b) for b in truth if b[0] >= 0]
        mine = text_boxes(m)
        matched, found, made = matched + _matched(truth, mine), found + len(truth), made + len(mine)
    return {"recall50": matched / max(found, 1), "precision50": matched / max(made, 1)}


def lines(outputs, targets) -> dict:
    """Character accuracy against fp32's text (the primary figure: 1 - character error rate) and the lines read
    exactly as fp32 reads them."""
    probs = next(iter(outputs.values()))
    pairs = [([int(c) for c in t if c >= 0], ctc_text(p)) for p, t in zip(probs, np.asarray(targets))]
    figures = _line_figures(pairs)
    return {"char_accuracy": 1.0 - figures["cer_vs_fp32"], "lines_as_fp32": figures["lines_as_fp32"]}
