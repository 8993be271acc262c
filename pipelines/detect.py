"""The detection demo's own code, found beside detect.toml the way a user's is: data, models, loss and metric.

Data: the shipped UCI digits (8x8) placed at random positions and scales (8 to 14 pixels) on a 32x32 canvas, one to
three per image, with their boxes and classes. Digits from disjoint parts of the set (after a seeded shuffle: the set
is stored writer by writer) go to train, validation and test, so no test digit was ever seen in training.

Models: a single-shot grid detector (YOLO-style, one prediction per 4x4-pixel cell of an 8x8 grid). It returns two
outputs, named in the export:
  boxes   (N, 4, 8, 8): centre offset in the cell (before a sigmoid) and log width / height in cells
  scores  (N, 11, 8, 8): an objectness logit and ten class logits

`loss` trains it against the boxes and classes (the hard loss); `map50` scores it: mean average precision at IoU
0.5 over the ten classes (VOC all-point interpolation), after per-class non-maximum suppression.
"""
from __future__ import annotations

import numpy as np

GRID, CANVAS, MAX_OBJECTS, CLASSES = 8, 32, 3, 10
CELL = CANVAS // GRID


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from importlib.resources import files

    with np.load(files("compress.data") / "digits.npz") as z:
        return z["x"].astype(np.float32) / 16.0, z["y"].astype(np.int64)


def _canvases(images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> tuple:
    """`count` canvases of 1 to 3 digits drawn from `images`; boxes as (x1, y1, x2, y2) in [0, 1], classes -1-padded."""
    import torch

    rng = np.random.default_rng(seed)
    x = np.zeros((count, 1, CANVAS, CANVAS), np.float32)
    boxes = np.zeros((count, MAX_OBJECTS, 4), np.float32)
    classes = np.full((count, MAX_OBJECTS), -1, np.int64)
    for i in range(count):
        placed: list[tuple[int, int, int]] = []
        for k in range(rng.integers(1, MAX_OBJECTS + 1)):
            j = rng.integers(len(images))
            size = int(rng.integers(8, 15))
            for _ in range(20):  # a free spot: little overlap with the digits already there
                top, left = (int(v) for v in rng.integers(0, CANVAS - size + 1, 2))
                if all(_overlap((top, left, size), p) < 0.15 for p in placed):
                    break
            else:
                continue
            digit = torch.nn.functional.interpolate(torch.from_numpy(images[j])[None, None], size=(size, size),
                                                    mode="bilinear", align_corners=False)[0, 0].numpy()
            x[i, 0, top:top + size, left:left + size] = np.maximum(x[i, 0, top:top + size, left:left + size], digit)
            slot = len(placed)
            placed.append((top, left, size))
            boxes[i, slot] = [left / CANVAS, top / CANVAS, (left + size) / CANVAS, (top + size) / CANVAS]
            classes[i, slot] = labels[j]
    return x, boxes, classes


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (t1, l1, s1), (t2, l2, s2) = a, b
    h = max(0, min(t1 + s1, t2 + s2) - max(t1, t2))
    w = max(0, min(l1 + s1, l2 + s2) - max(l1, l2))
    return h * w / min(s1 * s1, s2 * s2)


class Canvases:
    """(x, {"boxes", "classes"}) pairs: what a `python:` data source returns."""

    def __init__(self, x: np.ndarray, boxes: np.ndarray, classes: np.ndarray) -> None:
        self.x, self.boxes, self.classes = x, boxes, classes

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {"boxes": self.boxes[i], "classes": self.classes[i]}


def make_datasets(train: int = 6000, val: int = 1000, test: int = 1000):
    """(train, val, test) canvases from disjoint parts of the digits, 1,200 / 300 / 297 source images, taken from a
    seeded permutation. The set is stored writer by writer, so slices of it in order gave validation and test
    different writers: a 1-nearest-neighbour classifier on the first 1,200 digits read 99.3% of the next 300 and
    93.6% of the last 297 (98.7-99.0% and 98.3-99.0% over three permutations), and a model picked on validation was
    not the better one on test."""
    images, labels = _digits()
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    parts = [(slice(0, 1200), train, 1), (slice(1200, 1500), val, 2), (slice(1500, None), test, 3)]
    return tuple(Canvases(*_canvases(images[s], labels[s], n, seed)) for s, n, seed in parts)


# ---------------------------------------------------------------------------------------------------- models

def _conv(nn, cin: int, cout: int, stride: int = 1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def detector(width: int = 32, depth: int = 1):
    """A grid detector: a full-resolution conv, two stride-2 stages to the 8x8 grid, then a 1x1 head for boxes and
    scores. `depth`: 3x3 convs at the 8x8 grid after the last stride; each adds a 4*width-channel conv on 64 cells,
    capacity that costs little time next to the full-resolution layers."""
    import torch.nn as nn

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.body = nn.Sequential(_conv(nn, 1, w), _conv(nn, w, 2 * w, 2), _conv(nn, 2 * w, 2 * w),
                                      _conv(nn, 2 * w, 4 * w, 2), *(_conv(nn, 4 * w, 4 * w) for _ in range(depth)))
            self.head = nn.Conv2d(4 * w, 4 + 1 + CLASSES, 1)

        def forward(self, x):
            out = self.head(self.body(x))
            return {"boxes": out[:, :4], "scores": out[:, 4:]}

    return Detector()


def mobile_detector(width: int = 16, expand: int = 2, depth: int = 1):
    """The same grid detector from MobileNet-V2-style blocks (1x1 expand, 3x3 depthwise, 1x1 project; residual when
    the shape allows): fewer multiply-adds per channel, so a wider one can be as fast. `depth` as in `detector`."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            mid = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
                nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                nn.ReLU6(inplace=True), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.body = nn.Sequential(_conv(nn, 1, w), Block(w, 2 * w, 2), Block(2 * w, 2 * w, 1),
                                      Block(2 * w, 4 * w, 2), *(Block(4 * w, 4 * w, 1) for _ in range(depth)))
            self.head = nn.Conv2d(4 * w, 4 + 1 + CLASSES, 1)

        def forward(self, x):
            out = self.head(self.body(x))
            return {"boxes": out[:, :4], "scores": out[:, 4:]}

    return MobileDetector()


# ---------------------------------------------------------------------------------------------------- loss

def _targets(boxes, classes):
    """Per cell: object mask (N, G, G), box targets (N, 4, G, G), class targets (N, G, G) from padded boxes."""
    import torch

    n = boxes.shape[0]
    obj = torch.zeros(n, GRID, GRID, device=boxes.device)
    box = torch.zeros(n, 4, GRID, GRID, device=boxes.device)
    cls = torch.zeros(n, GRID, GRID, dtype=torch.long, device=boxes.device)
    real = classes >= 0
    b, k = real.nonzero(as_tuple=True)
    x1, y1, x2, y2 = boxes[b, k].unbind(-1)
    cx, cy, w, h = (x1 + x2) / 2 * GRID, (y1 + y2) / 2 * GRID, (x2 - x1) * GRID, (y2 - y1) * GRID
    gx, gy = cx.long().clamp(0, GRID - 1), cy.long().clamp(0, GRID - 1)
    obj[b, gy, gx] = 1.0
    box[b, :, gy, gx] = torch.stack([cx - gx, cy - gy, w.log(), h.log()], dim=1)
    cls[b, gy, gx] = classes[b, k]
    return obj, box, cls


def loss(outputs, targets):
    """Objectness (BCE, positives weighted), box centre (BCE on the offset) and size (MSE on log size), class (CE),
    the last two at the cells that hold an object."""
    import torch.nn.functional as F

    obj, box, cls = _targets(targets["boxes"].float(), targets["classes"].long())
    raw_box, scores = outputs["boxes"], outputs["scores"]
    objectness = F.binary_cross_entropy_with_logits(scores[:, 0], obj, pos_weight=obj.new_tensor(5.0))
    mask = obj > 0
    if not mask.any():
        return objectness
    centre = F.binary_cross_entropy_with_logits(raw_box[:, :2].permute(0, 2, 3, 1)[mask],
                                                box[:, :2].permute(0, 2, 3, 1)[mask])
    size = F.mse_loss(raw_box[:, 2:].permute(0, 2, 3, 1)[mask], box[:, 2:].permute(0, 2, 3, 1)[mask])
    classes = F.cross_entropy(scores[:, 1:].permute(0, 2, 3, 1)[mask], cls[mask])
    return objectness + centre + size + classes


# ---------------------------------------------------------------------------------------------------- metric

def _decode(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.05):
    """Per image: (boxes (M, 4) in [0, 1], class (M,), confidence (M,)) of the cells above `threshold`."""
    obj = 1 / (1 + np.exp(-scores[:, 0]))
    logits = scores[:, 1:]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    conf = obj * probs.max(1)
    label = probs.argmax(1)
    gy, gx = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    cx = (gx + 1 / (1 + np.exp(-boxes[:, 0]))) / GRID
    cy = (gy + 1 / (1 + np.exp(-boxes[:, 1]))) / GRID
    w, h = np.exp(np.clip(boxes[:, 2], -5, 3)) / GRID, np.exp(np.clip(boxes[:, 3], -5, 3)) / GRID
    found = []
    for i in range(len(boxes)):
        keep = conf[i] > threshold
        b = np.stack([cx[i][keep] - w[i][keep] / 2, cy[i][keep] - h[i][keep] / 2, cx[i][keep] + w[i][keep] / 2,
                      cy[i][keep] + h[i][keep] / 2], axis=1)
        found.append(_nms(b, label[i][keep], conf[i][keep]))
    return found


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (M, 4) with every box in `b` (K, 4)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def _nms(boxes: np.ndarray, labels: np.ndarray, conf: np.ndarray, iou: float = 0.5):
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(-conf[idx])]
        while len(idx):
            keep.append(idx[0])
            idx = idx[1:][_iou(boxes[idx[:1]], boxes[idx[1:]])[0] < iou] if len(idx) > 1 else idx[1:]
    keep = np.asarray(keep, dtype=np.int64)
    return boxes[keep], labels[keep], conf[keep]


def matches(outputs, targets):
    """Per class, an (M, 3) array of (confidence, true positive, image) for every detection, matched to the ground
    truth at IoU 0.5 image by image (each object once, most confident first); and each class's object count per
    image, (classes, images). map50 is computed from these; a bootstrap over images re-weights them."""
    found = _decode(np.asarray(outputs["boxes"]), np.asarray(outputs["scores"]))
    gt_boxes, gt_classes = np.asarray(targets["boxes"]), np.asarray(targets["classes"])
    scored = []
    for c in range(CLASSES):
        rows = []  # (confidence, true positive, image)
        for i, (boxes, labels, conf) in enumerate(found):
            truth = gt_boxes[i][gt_classes[i] == c]
            mine = labels == c
            used = np.zeros(len(truth), bool)
            for j in np.argsort(-conf[mine]):
                box = boxes[mine][j]
                ok = False
                if len(truth):
                    overlaps = _iou(box[None], truth)[0]
                    best = int(np.argmax(np.where(used, -1, overlaps)))
                    ok = overlaps[best] >= 0.5 and not used[best]
                    used[best] |= ok
                rows.append((conf[mine][j], ok, i))
        scored.append(np.array(rows, dtype=float).reshape(-1, 3))
    return scored, np.stack([(gt_classes == c).sum(1) for c in range(CLASSES)])


def map50(outputs, targets):
    """{"map50": mean over classes of the average precision at IoU 0.5, "recall50": detected share of objects}."""
    scored, counts = matches(outputs, targets)
    aps, hits_all = [], 0
    for c, rows in enumerate(scored):
        count = int(counts[c].sum())
        if count == 0:
            continue
        rows = rows[np.argsort(-rows[:, 0], kind="stable")]
        tp = np.cumsum(rows[:, 1])
        hits_all += int(tp[-1]) if len(tp) else 0
        recall = tp / count if len(tp) else np.zeros(1)
        precision = tp / np.arange(1, len(tp) + 1) if len(tp) else np.zeros(1)
        aps.append(_average_precision(recall, precision))
    return {"map50": float(np.mean(aps)), "recall50": hits_all / max(int(counts.sum()), 1)}


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
