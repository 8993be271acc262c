"""`images:DIR`: an ImageFolder-style tree read with Pillow, one file per item, decoded in DataLoader workers.

DIR/<class>/*.png (split train/val/test by the seed), or DIR/train/<class>/..., with optional DIR/val/ and DIR/test/
folders of the same classes (split folders spelt otherwise, Train/ or valid/, are refused). Hidden files and folders
and __MACOSX/ are left out; symlinked folders are followed. Scanning checks each file with Pillow's verify (the file
is read, no pixels are kept), and decodes a BMP or a JPEG without its end marker once, which verify cannot judge; a
file that fails is reported (file, reason) and skipped, up to `[data] max_bad_fraction`. Images are read upright
(their EXIF Orientation applied), and a class that validation or test lacks is named in one warning line.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch.utils.data as tud

from compress.data.folders import check_split_names, hidden, warn_empty_classes, warn_unseen_classes
from compress.errors import CompressError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
"""Folder names (any case) that mean a split: read only as train/, val/ and test/, refused under any other spelling."""
STATS_SAMPLES = 512  # training images mean/std are computed from, when [data] does not give them
log = logging.getLogger("compress")


class ImageDataset(tud.Dataset):
    """Files `paths` with labels; decoded, resized, scaled to [0, 1], normalised, and (training) augmented."""

    def __init__(self, paths: Sequence[str], labels: Any, *, size: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float], augment: Sequence[str] = (), max_bad_fraction: float = 0.0):
        self.paths, self.labels, self.size = list(paths), labels, size
        self.mean, self.std, self.augment = list(mean), list(std), tuple(augment)
        self.max_bad_fraction = max_bad_fraction
        self.failed: set[int] = set()  # this process's files that passed the scan but did not decode

    def __len__(self) -> int:
        return len(self.paths)

    def with_augment(self, augment: Sequence[str]) -> "ImageDataset":
        return ImageDataset(self.paths, self.labels, size=self.size, mean=self.mean, std=self.std, augment=augment,
                            max_bad_fraction=self.max_bad_fraction)

    def __getitem__(self, i: int) -> tuple[int, Any, int]:
        import torch

        if i < 0 or i >= len(self):
            raise IndexError(i)
        try:
            x = decode(self.paths[i], self.size)
        except CompressError as exc:
            return self._skip(i, exc)
        if "jitter" in self.augment:  # brightness and contrast, +-20%
            b, c = 1 + 0.4 * (torch.rand(2) - 0.5)
            x = ((x - x.mean()) * c + x.mean() * b).clamp(0, 1)
        x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
        if "flip" in self.augment and torch.rand(()) < 0.5:
            x = x.flip(2)
        if "crop" in self.augment:  # pad by 1/8 of the side (reflect), crop back at a random offset
            h, w = self.size
            p = max(1, min(h, w) // 8)
            padded = torch.nn.functional.pad(x[None], (p, p, p, p), mode="reflect")[0]
            dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            x = padded[:, dy:dy + h, dx:dx + w]
        return i, x.contiguous(), int(self.labels[i])

    def _skip(self, i: int, exc: CompressError) -> tuple[int, Any, int]:
        """A file that passed the scan but does not decode now (changed on disk, or damage the header check cannot
        see): one warning line the first time, and an item the loader drops (target SKIPPED); past
        max_bad_fraction of the split in this process, the run stops with exit 2."""
        import torch

        from compress.data.datasets import SKIPPED

        if i not in self.failed:
            self.failed.add(i)
            log.warning("warning: data.source: skipped %s", exc)
            if len(self.failed) > self.max_bad_fraction * len(self):
                raise CompressError(f"data.source: {len(self.failed)} of {len(self)} images of a split failed to "
                                    f"decode during the run (over data.max_bad_fraction = {self.max_bad_fraction:g}); "
                                    f"last: {exc}")
        return i, torch.zeros(3, *self.size), SKIPPED


def decode(path: str, size: tuple[int, int]) -> Any:
    """RGB float tensor (3, H, W) in [0, 1], resized (bilinear) to `size`; a file Pillow cannot decode is one line."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decoded here, where a broken stream raises: reading the EXIF loads it and hid the error
            im = _upright(im)
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                a = _wide_gray(im, size)
            else:
                im = im.convert("RGB")
                if im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
    except Exception as exc:
        raise CompressError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def open_images(cfg: Any, *, seed: int, base_dir: Path, origin: str) -> Any:
    """Scan the tree, check every file's header, split, and compute (or take) mean/std."""
    import numpy as np

    from compress.data import DataBundle
    from compress.data.arrays import fingerprint, grouped_split, smallest_held_class

    root = Path(cfg.source[len("images:"):])
    root = root if root.is_absolute() else base_dir / root
    if not root.is_dir():
        raise CompressError(f"{origin}: folder not found: {root}")
    # train/ (with optional val/ and test/) holds the class folders; without train/, the root holds them
    folders = {part: root / part for part in ("train", "val", "test") if (root / part).is_dir()}
    folders = folders if "train" in folders else {}
    check_split_names(root, "train" in folders, origin)
    top = folders.get("train", root)
    classes = sorted(d.name for d in top.iterdir() if d.is_dir() and not hidden(d.name))
    if len(classes) < 2:
        raise CompressError(f"{origin}: {top} needs one sub-folder per class (at least two), found "
                            f"{classes or 'none'}")
    for part in ("val", "test"):  # a class only val/ or test/ has would be left out of the figures unsaid
        extra = sorted(d.name for d in folders[part].iterdir() if d.is_dir() and not hidden(d.name)
                       and d.name not in classes) if part in folders else []
        if extra:
            raise CompressError(f"{origin}: {part}/ has class folders train/ lacks ({', '.join(extra)}); the model "
                                f"learns the classes of train/ ({', '.join(classes)}): add them there or remove them")
    found = {part: _scan(folders.get(part, top) if part == "train" else folders[part], classes, origin)
             for part in ("train", "val", "test") if part == "train" or part in folders}
    _check_bad_files(found, cfg.max_bad_fraction, origin)
    warn_empty_classes(found["train"]["labels"], classes, top, origin)
    paths, labels = found["train"]["paths"], np.asarray(found["train"]["labels"], dtype=np.int64)
    val_f = 0.0 if "val" in found else cfg.val_fraction
    test_f = 0.0 if "test" in found else cfg.test_fraction
    distinct: list[int] = []

    def said(repeats: int, links: int, count: int) -> None:  # a copy held out would be scored on what it trained on
        distinct.append(count)
        log.warning("warning: %s: %s: %d images are reached by more than one path (%d paths: symbolic links to one "
                    "file); each image's paths are kept in one split, and the split counts %d distinct images",
                    origin, root, repeats, links, count)

    real = [os.path.realpath(p) for p in paths]  # once: a 50,000-image folder's links resolved for both below
    train_rows, val_rows, test_rows = grouped_split(labels, real, val_f, test_f, seed, said=said)
    _warn_untrained(labels, train_rows, classes, origin, root)
    _warn_linked_across(found, real, origin, root)
    rows = {"train": train_rows, "val": val_rows, "test": test_rows}
    size = _image_size(cfg, paths[0], origin)
    mean, std, how_stats = _stats(cfg, [paths[r] for r in train_rows], size, origin)
    splits, how = {}, {}
    for part, frac in (("train", 1.0), ("val", val_f), ("test", test_f)):
        if part in found and part != "train":
            p, y = found[part]["paths"], np.asarray(found[part]["labels"], dtype=np.int64)
            how[part] = f"folder {part}/"
        elif frac:
            p, y = [paths[r] for r in rows[part]], labels[rows[part]]
            how[part] = (f"stratified {100 * frac:g}% (seed {seed})" if part != "train" else
                         ("the rest of " if (val_f or test_f) else "") + ("folder train/" if "train" in folders
                                                                            else "the class folders"))
        else:
            splits[part] = None
            continue
        splits[part] = ImageDataset(p, y, size=size, mean=mean, std=std, max_bad_fraction=cfg.max_bad_fraction)
    if splits["val"] is None or len(splits["val"]) == 0:
        raise CompressError(f"{origin}: too few images ({len(paths)}{f', {distinct[0]} distinct' if distinct else ''})"
                            " to hold out a validation split")
    warn_unseen_classes(splits, found, classes, root, "train/" if "train" in folders else "", origin,
                         smallest_held_class(val_f, test_f))
    augment = tuple(cfg.augment)
    skipped = [b for part in found.values() for b in part["bad"]]
    details = {"image_size": list(size), "mean": mean, "std": std, "mean_std": how_stats,
               "skipped_files": [{"file": f, "reason": r} for f, r in skipped[:50]], "skipped_count": len(skipped)}
    train = splits["train"].with_augment(augment) if augment else splits["train"]
    return DataBundle(train=train, val=splits["val"], test=splits["test"],
                      num_classes=len(classes), input_shape=(3, *size), class_names=classes, how=how,
                      train_plain=splits["train"], augment=augment, details=details,
                      fingerprint=fingerprint([str(root), classes, *[found[k]["stamp"] for k in sorted(found)],
                                               train_rows, val_rows, test_rows, mean, std, list(size), DECODING]))


def _warn_untrained(labels: Any, train_rows: Any, classes: list[str], origin: str, root: Path) -> None:
    """One warning for classes the split leaves without a training image: every file of theirs is a link to another
    class's image, which went to a held-out split with that one (the model cannot learn them)."""
    import numpy as np

    counts = np.bincount(labels, minlength=len(classes))
    trained = np.bincount(labels[train_rows], minlength=len(classes))
    lacking = [f"{classes[k]}/ ({counts[k]} image{'' if counts[k] == 1 else 's'})" for k in range(len(classes))
               if counts[k] and not trained[k]]
    if lacking:
        log.warning("warning: %s: %s: classes without a training image (their files are links to images a held-out "
                    "split took): %s; the model cannot learn them: give them images of their own", origin, root,
                    ", ".join(lacking))


def _warn_linked_across(found: dict, train_real: list[str], origin: str, root: Path) -> None:
    """One warning for the same image file in two of the user's own split folders (a link in one to the other's):
    the folders are kept as they are, but such an image is scored on what chose or trained the model.
    `train_real`: the training paths resolved."""
    real = {part: set(train_real) if part == "train" else {os.path.realpath(p) for p in found[part]["paths"]}
            for part in ("train", "val", "test") if part in found}
    pairs = [(a, b, len(real[a] & real[b])) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
             if a in real and b in real]
    shared = [f"{n} in {a}/ and {b}/" for a, b, n in pairs if n]
    if shared:
        log.warning("warning: %s: %s: image files in two split folders (links): %s; they are scored on what trained "
                    "or chose the model: keep each image in one split folder (copy it, or remove one of its paths)",
                    origin, root, ", ".join(shared))


DECODING = "exif-upright"
"""How decode reads pixels, in the data's fingerprint: stages cached before images were turned upright (their EXIF
Orientation applied) are not reused for the rotated pixels."""


def _scan(folder: Path, classes: list[str], origin: str) -> dict:
    """Every image file under folder/<class>/ (sorted), its label, and the files whose header does not read."""
    paths: list[str] = []
    labels: list[int] = []
    bad: list[tuple[str, str]] = []
    stamp = []
    total = 0
    for label, name in enumerate(classes):
        d = folder / name
        if not d.is_dir():
            continue
        for f in _image_files(d):
            total += 1
            try:
                st = f.stat()  # a link whose target is gone fails here: reported, like a file that does not read
                stamp.append((str(f.relative_to(folder)), st.st_size, st.st_mtime_ns))
                _check_image(f)
            except Exception as exc:
                bad.append((str(f), f"{type(exc).__name__}: {exc}".strip()))
                continue
            paths.append(str(f))
            labels.append(label)
    if not paths:
        raise CompressError(f"{origin}: no readable images ({', '.join(sorted(EXTENSIONS))}) under {folder}")
    return {"paths": paths, "labels": labels, "bad": bad, "total": total, "stamp": stamp}


def _image_files(d: Path) -> list[Path]:
    """Image files under d at any depth, sorted; symlinked folders are followed (each real folder once; a link to a
    folder above d, a loop, is not), hidden names left out."""
    files, seen, above = [], set(), {str(p) for p in Path(os.path.realpath(d)).parents}
    for top, dirs, names in os.walk(d, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or real in above:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [n for n in dirs if not hidden(n)]
        files.extend(Path(top) / n for n in names if not hidden(n) and Path(n).suffix.lower() in EXTENSIONS)
    return sorted(f for f in files if f.is_file() or f.is_symlink())


def _check_image(f: Path) -> None:
    """Raise when Pillow cannot read f. verify() reads the file and checks it (PNG: every chunk's CRC) without
    keeping pixels, but reads no JPEG or BMP data: a BMP (no compression: cheap) and a JPEG without its end marker
    (cut short: a copy or download that stopped) are decoded once to be sure."""
    from PIL import Image

    with Image.open(f) as im:
        fmt = im.format
        im.verify()
    if fmt == "BMP" or (fmt == "JPEG" and not _ends_like_jpeg(f)):
        with Image.open(f) as im:
            im.load()


def _ends_like_jpeg(f: Path) -> bool:
    """Whether the file ends with JPEG's end-of-image marker (FF D9), padding bytes after it allowed."""
    with open(f, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 64))
        tail = fh.read().rstrip(b"\x00 \r\n\t")
    return tail.endswith(b"\xff\xd9")


def _check_bad_files(found: dict, max_fraction: float, origin: str) -> None:
    bad = [b for part in found.values() for b in part["bad"]]
    total = sum(part["total"] for part in found.values())
    for path, reason in bad[:20]:
        log.warning("warning: %s: skipped %s: %s", origin, path, reason)
    if len(bad) > 20:
        log.warning("warning: %s: skipped %d more unreadable files", origin, len(bad) - 20)
    if bad and len(bad) > max_fraction * total:
        path, reason = bad[0]
        raise CompressError(f"{origin}: {len(bad)} of {total} image files are unreadable (over data.max_bad_fraction "
                            f"= {max_fraction:g}); first: {path}: {reason}")


def _image_size(cfg: Any, first: str, origin: str) -> tuple[int, int]:
    if cfg.image_size is not None:
        return (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else tuple(cfg.image_size)
    from PIL import Image

    with Image.open(first) as im:
        w, h = im.size
        # EXIF orientations 5-8 turn the image a quarter: decode reads it upright, so its sides swap
        return (w, h) if _orientation(im) in (5, 6, 7, 8) else (h, w)


def _orientation(im: Any) -> int:
    """The EXIF Orientation tag (0x0112) of an opened image; 1 (as stored) when it has none."""
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # an EXIF block that does not parse: read the pixels as they are stored
        return 1


def _upright(im: Any) -> Any:
    """The image as a viewer shows it: a phone's JPEG stores the sensor's pixels and an EXIF Orientation tag (6: turn
    90 degrees clockwise), which was ignored, so a portrait photo was read on its side. Only an image with a tag
    other than 1 is transposed (a copy); the rest are returned as they are."""
    from PIL import ImageOps

    if _orientation(im) == 1:
        return im
    return ImageOps.exif_transpose(im)


def _wide_gray(im: Any, size: tuple[int, int]) -> Any:
    """A 16-bit (I;16, or I holding 16-bit values) or float grayscale image as (H, W, 3) float32 in [0, 1]: Pillow's
    convert("RGB") saturates such pixels to 255, so every image read white. Integers are scaled by their bit depth
    (values over 255 are 16-bit), floats taken as [0, 1] (or 0-255 when larger)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(im, dtype=np.float32)
    top = 65535.0 if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255) else (
        255.0 if im.mode == "I" or a.max() > 1.0 else 1.0)
    gray = Image.fromarray(np.clip(a / top, 0.0, 1.0).astype(np.float32), mode="F")
    if gray.size != (size[1], size[0]):
        gray = gray.resize((size[1], size[0]), Image.BILINEAR)
    return np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=2)


def _stats(cfg: Any, train_paths: list[str], size: tuple[int, int], origin: str) -> tuple[list, list, str]:
    """[data] mean/std when given; else per-channel mean/std of a seeded sample of training images."""
    import numpy as np
    import torch

    if cfg.mean is not None and cfg.std is not None:
        return list(cfg.mean), list(cfg.std), "[data] mean/std"
    rng = np.random.default_rng(0)
    pick = sorted(rng.permutation(len(train_paths))[:STATS_SAMPLES].tolist())
    total = torch.zeros(3, dtype=torch.float64)
    square = torch.zeros(3, dtype=torch.float64)
    count, used = 0, 0
    for i in pick:
        try:
            x = decode(train_paths[i], size).double()
        except CompressError as exc:  # the run skips it too (ImageDataset._skip), within data.max_bad_fraction
            log.warning("warning: data.source: skipped %s", exc)
            continue
        total += x.sum((1, 2))
        square += (x * x).sum((1, 2))
        count += x.shape[1] * x.shape[2]
        used += 1
    if not used:
        raise CompressError(f"{origin}: none of the {len(pick)} training images sampled for the mean and std "
                            "decodes; give [data] mean and std, or check the files")
    mean = total / count
    std = (square / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return ([round(float(v), 6) for v in mean], [round(float(v), 6) for v in std],
            f"computed from {used} training images (seed 0)")
