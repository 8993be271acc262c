"""What an images: folder's layout says before any image is read: split folders spelt otherwise, or holding the
class folders where no train/ is; class folders a split or training does not show (compress.data.images)."""
from __future__ import annotations

import logging
from pathlib import Path

from compress.errors import CompressError

SPLIT_LIKE = {"train", "training", "val", "valid", "validation", "dev", "test", "testing"}
log = logging.getLogger("compress")


def hidden(name: str) -> bool:
    """Names the scan leaves out: hidden files and folders (macOS's '._x.jpg' resource forks, '.ipynb_checkpoints')
    and the '__MACOSX' folder a zip made on a Mac holds."""
    return name.startswith(".") or name == "__MACOSX"


def check_split_names(root: Path, has_train: bool, origin: str) -> None:
    """Split folders spelt otherwise (Train/, valid/, validation/, Test/) were read as classes, or not at all."""
    subs = sorted(d.name for d in root.iterdir() if d.is_dir() and not hidden(d.name))
    read = [root / n for n in ("train", "val", "test") if (root / n).is_dir()] if has_train else []
    # Train/ on a case-insensitive file system (macOS, Windows) is the train/ the reader opens: not spelt otherwise
    odd = [n for n in subs if n.lower() in SPLIT_LIKE and not any((root / n).samefile(r) for r in read)]
    if not has_train and not any(n.lower() in ("train", "training") for n in odd):
        # classes that happen to be named valid/ (beside invalid/) or test/ stay classes, unless one holds folders
        # named like its sibling classes: a val/ split beside the training class folders became a class of its own
        split = next((n for n in odd if {d.name for d in (root / n).iterdir() if d.is_dir()} & (set(subs) - {n})),
                     None)
        if split is not None:
            raise CompressError(f"{origin}: {root} has {split}/ holding class folders beside the class folders, and "
                                "no train/: put the training class folders under train/ (split folders are train/, "
                                f"val/ and test/), or move them out of {split}/")
        return
    if not odd:
        return
    named = ", ".join(f"{n}/" for n in odd)
    if has_train:
        raise CompressError(f"{origin}: {root} has {named} beside train/, which is not read: the validation folder "
                            "must be named val/ and the test folder test/; rename it")
    raise CompressError(f"{origin}: {root} has {named} but no train/: split folders are train/ (required), val/ and "
                        "test/, in lower case, each with one sub-folder per class; rename them (without split "
                        "folders, every sub-folder of the root is a class)")


def warn_empty_classes(labels: list[int], classes: list[str], top: Path, origin: str) -> None:
    """A class folder without a readable training image still gets a model output, which nothing trains: say so."""
    used = set(labels)
    empty = [name for k, name in enumerate(classes) if k not in used]
    if empty:
        log.warning("warning: %s: %s: class folders with no training image: %s; the models still get an output for "
                    "each, which no example trains: add images or remove the folders", origin, top,
                    ", ".join(f"{n}/" for n in empty))


def warn_unseen_classes(splits: dict, found: dict, classes: list[str], root: Path, pool: str, origin: str,
                         need: int) -> None:
    """A class that validation or test never shows is never measured there: one line names each such class, its
    images and the splits without it. The split gives every class one image in each held-out split when it has one
    to spare beside the one it keeps for training; a class with fewer (or split folders without it) is said here."""
    import numpy as np

    n = len(classes)
    trained = np.bincount(np.asarray(found["train"]["labels"], dtype=np.int64), minlength=n)
    total = sum(np.bincount(np.asarray(part["labels"], dtype=np.int64), minlength=n) for part in found.values())
    missing: dict[int, list[str]] = {}
    held = [part for part in ("val", "test") if splits.get(part) is not None]
    for part in held:
        seen = set(np.asarray(splits[part].labels).tolist())
        for k in range(n):
            if trained[k] and k not in seen:  # (a class without a training image is warned of on its own)
                missing.setdefault(k, []).append(f"{part}/" if part in found else part)
    if not missing:
        return
    items = ", ".join(f"{classes[k]}/ ({total[k]} image{'' if total[k] == 1 else 's'}: not in {' or '.join(parts)})"
                      for k, parts in sorted(missing.items()))
    hints = []
    if any(p in ("val", "test") for parts in missing.values() for p in parts):
        hints.append(f"a class of {need} or more images in {pool} gets at least one in each split made from them"
                     if pool else f"a class of {need} or more images gets at least one in every split")
    folders = [f"{p}/" for p in held if any(f"{p}/" in parts for parts in missing.values())]
    if folders:
        hints.append(f"put some of each in {' and '.join(folders)}")
    log.warning("warning: %s: %s: classes a split does not show: %s; accuracy on them is not measured there: add "
                "images (%s)", origin, root, items, "; ".join(hints))
