"""ONNX Runtime's histogram calibration, the same histograms computed faster.

ORT's entropy and percentile calibrators fold every calibrated activation into a histogram with numpy, one tensor at
a time and on one core: on a 640x640 text detector (~490 M activation values a sample) that took 63 s (entropy) and
125 s (percentile) of a 32-sample calibration whose inference took 6-8 s. The percentile collector extends its bins
with np.arange, so numpy sees explicit bin edges and counts them by sorting every block of the data (86 s).

`faster()` swaps ORT's collector for `Collector` while quantize_static calibrates. Its histograms are ORT's to the
count (tested against ORT's own collector): the same edges, the same minima and maxima, so the same ranges. Only the
counting differs:
- counts are additive, so each array is counted in slices on a thread pool (numpy releases the GIL in its loops),
  and the batches of one collect call are counted where they lie instead of being stacked and flattened first;
- explicit edges are counted by an arithmetic guess of the bin corrected against the edges themselves until every
  value sits where np.histogram's sorted search puts it, instead of by sorting.
Anything but float32 data goes to ORT's own code. Two differences, where ORT's collector raises and this one
calibrates: batches of different shapes (200 samples in batches of 32 end with one of 8) are counted as the values
they hold, which ORT flattens when it can stack them and numpy cannot stack ("inhomogeneous shape"); and where a
tensor's range is too narrow for the bins at float32's precision (a near-constant large value), it is counted in a
range half the value wide on each side.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

SLICE = 1 << 16
"""Values counted per numpy call: np.histogram's own block, small enough to stay in cache."""
PART = 1 << 20
"""The fewest values a thread counts at a time."""
_pool: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="histogram")
    return _pool


def _slices(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Flat views of `arrays` in about as many slices as there are threads, at least PART values each."""
    flat = [a.reshape(-1) for a in arrays if a.size]
    per = max(PART, -(-sum(a.size for a in flat) // _workers()))
    return [a[i:i + per] for a in flat for i in range(0, a.size, per)]


def uniform(arrays: list[np.ndarray], bins: int, lo: Any, hi: Any) -> tuple[np.ndarray, np.ndarray]:
    """np.histogram(concatenated arrays, bins, range=(lo, hi)), counted in slices on the thread pool; a range too
    narrow for `bins` distinct edges at the data's precision is widened on each side by 0.5 or half its largest
    |value|, whichever is more, where that stays finite (np.histogram, and ORT's collector with it, raises "Too
    many bins for data range" there; numpy widens a range of one value by 0.5, lost at 1e9 in float32)."""
    kind = np.result_type(lo, hi, *(a.dtype for a in arrays[:1]))
    if kind.kind == "f" and np.isfinite(lo) and np.isfinite(hi) and lo <= hi:
        low, high = (lo, hi) if lo < hi else (lo - kind.type(0.5), hi + kind.type(0.5))  # numpy's own widening
        edges = np.linspace(low, high, bins + 1, dtype=kind)
        if np.any(edges[:-1] >= edges[1:]):  # Magika: a (near-)constant |x| of about 1e9 over a sample
            # half the value on each side: bins of a width a later, wider batch extends by few (ORT's growth adds
            # bins of the first width), where bins a few float32 steps wide would take millions
            pad = max(kind.type(0.5), kind.type(0.5) * kind.type(max(abs(lo), abs(hi))))
            with np.errstate(over="ignore"):
                low, high = lo - pad, hi + pad
            if np.isfinite(low) and np.isfinite(high):  # at float32's largest, numpy's error stands, as ORT's
                lo, hi = low, high
    parts = list(_threads().map(lambda a: np.histogram(a, bins, range=(lo, hi)), _slices(arrays)))
    if not parts:
        return np.histogram(np.zeros(0, np.float32), bins, range=(lo, hi))
    return np.sum([p[0] for p in parts], axis=0), parts[0][1]


def _count(a: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """np.histogram(a, bins=edges)[0] for non-decreasing edges: each value in the last bin whose edge it reaches."""
    v = edges.astype(np.float64)
    nb = len(v) - 1
    lo, hi = v[0], v[-1]
    scale = nb / (hi - lo) if hi > lo else 0.0
    counts = np.zeros(nb, np.int64)
    for i in range(0, a.size, SLICE):
        x = a[i:i + SLICE].astype(np.float64)  # the comparisons numpy makes: float32 against the edges' type
        x = x[(x >= lo) & (x <= hi)]  # out of range and NaN are not counted
        idx = ((x - lo) * scale).astype(np.intp)
        np.clip(idx, 0, nb - 1, out=idx)
        while True:
            down = x < v[idx]
            up = (x >= v[idx + 1]) & (idx != nb - 1)
            if not (down.any() or up.any()):
                break
            idx -= down
            idx += up
        counts += np.bincount(idx, minlength=nb)
    return counts


def explicit(arrays: list[np.ndarray], edges: np.ndarray) -> np.ndarray:
    """np.histogram(concatenated arrays, bins=edges)[0], counted in slices on the thread pool."""
    return np.sum([np.zeros(len(edges) - 1, np.int64),
                   *_threads().map(lambda a: _count(a, edges), _slices(arrays))], axis=0)


def _arrays(data: Any) -> list[np.ndarray] | None:
    """The batches of one tensor as float32 arrays, or None where ORT's own code should take them."""
    arrays = data if isinstance(data, list) else [data]
    if not arrays or not all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays):
        return None
    return arrays


def _for_ort(data: Any) -> Any:
    """`data` as ORT's own code can take it: batches of different shapes (a last batch of fewer samples, token
    batches of other widths) as one flat array of their values, which numpy cannot stack; ORT flattens what it
    stacks, so the histograms are those of the same values."""
    if not isinstance(data, list) or len({getattr(a, "shape", None) for a in data}) < 2 or \
            not all(isinstance(a, np.ndarray) for a in data) or len({a.dtype for a in data}) > 1:
        return data
    return np.concatenate([a.reshape(-1) for a in data])


def _range(arrays: list[np.ndarray]) -> tuple[Any, Any]:
    """np.nanmin and np.nanmax over the batches, as ORT's collector takes them (0 for no data)."""
    full = [a for a in arrays if a.size]
    if not full:
        return np.array(0, dtype=np.float32), np.array(0, dtype=np.float32)
    return min(np.nanmin(a) for a in full), max(np.nanmax(a) for a in full)


class _Unbounded:
    """A tensor that holds -inf or inf (a transformer's attention mask) gets no histogram, where ORT's collector raises
    "supplied range ... is not finite" and fails the calibration: its range is its minimum and maximum, as the
    min-max calibrators give it, so the quantized model keeps it in float (qdq.infinite_ranges_in_float). Mixed into
    a HistogramCollector (`histogram_dict`)."""

    histogram_dict: dict[str, Any]

    def _infinite(self, tensor: str, min_value: Any, max_value: Any) -> bool:
        unbounded = self.__dict__.setdefault("unbounded", {})
        if np.isfinite(min_value) and np.isfinite(max_value) and tensor not in unbounded:
            return False
        old = unbounded.get(tensor, (min_value, max_value))
        unbounded[tensor] = (min(old[0], min_value), max(old[1], max_value))
        self.histogram_dict.pop(tensor, None)
        return True

    def compute_collection_result(self) -> dict[str, Any]:
        unbounded = self.__dict__.get("unbounded", {})
        result = super().compute_collection_result() if self.histogram_dict or not unbounded else {}  # type: ignore
        for tensor, (lo, hi) in unbounded.items():
            result[tensor] = (np.asarray(lo, np.float32), np.asarray(hi, np.float32), np.zeros(1, np.int64),
                              np.asarray([lo, hi], np.float32))
        return result


def _collector_class() -> type:
    from onnxruntime.quantization.calibrate import HistogramCollector

    class Collector(_Unbounded, HistogramCollector):
        """ORT's HistogramCollector with the counting above; every histogram it keeps is the one ORT would."""

        def collect_absolute_value(self, name_to_arr: dict[str, Any]) -> None:
            for tensor, data in name_to_arr.items():
                arrays = _arrays(data)
                if arrays is None:
                    super().collect_absolute_value({tensor: _for_ort(data)})
                    continue
                min_value, max_value = _range(arrays)
                if self._infinite(tensor, min_value, max_value):
                    continue
                absolute = [np.absolute(a) for a in arrays]
                if tensor not in self.histogram_dict:
                    lo, hi = _outer_edges(absolute)
                    hist, edges = uniform(absolute, self.num_bins, lo, hi)
                    self.histogram_dict[tensor] = (hist, edges.astype(np.float32), min_value, max_value)
                    continue
                old_hist, edges, old_min, old_max = self.histogram_dict[tensor]
                amax = max((np.nanmax(a) for a in absolute if a.size), default=np.float32(0))  # no minimum
                if amax > edges[-1]:
                    width = edges[1] - edges[0]
                    edges = np.hstack((edges, np.arange(edges[-1] + width, amax + width, width)))
                hist = explicit(absolute, edges)
                hist[:len(old_hist)] += old_hist
                self.histogram_dict[tensor] = (hist, edges.astype(np.float32), min(old_min, min_value),
                                               max(old_max, max_value))

        def collect_value(self, name_to_arr: dict[str, Any]) -> None:
            for tensor, data in name_to_arr.items():
                arrays = _arrays(data)
                if arrays is None:
                    super().collect_value({tensor: _for_ort(data)})
                    continue
                min_value, max_value = _range(arrays)
                if self._infinite(tensor, min_value, max_value):
                    continue
                threshold = np.array(max(abs(min_value), abs(max_value)), dtype=np.float32)
                if tensor not in self.histogram_dict:
                    hist, edges = uniform(arrays, self.num_bins, -threshold, threshold)
                    self.histogram_dict[tensor] = (hist, edges, min_value, max_value, threshold)
                    continue
                old_hist, old_edges, old_min, old_max, old_threshold = self.histogram_dict[tensor]
                if threshold <= old_threshold:
                    hist, edges = uniform(arrays, len(old_hist), -old_threshold, old_threshold)
                    hist, edges, threshold = hist + old_hist, old_edges, old_threshold
                elif old_threshold == 0:
                    hist, edges = uniform(arrays, len(old_hist), -threshold, threshold)
                    hist += old_hist
                else:  # ORT's merge_histogram: the old bins stay, whole bins are added on both sides
                    stride = 2 * old_threshold / len(old_hist)
                    half = int((threshold - old_threshold) // stride + 1)
                    threshold = half * stride + old_threshold
                    hist, edges = uniform(arrays, len(old_hist) + 2 * half, -threshold, threshold)
                    hist[half:len(hist) - half] += old_hist
                self.histogram_dict[tensor] = (hist, edges, min(old_min, min_value), max(old_max, max_value),
                                               threshold)

    return Collector


def _outer_edges(arrays: list[np.ndarray]) -> tuple[Any, Any]:
    """The range np.histogram(data, bins=n) takes from the data: its minimum and maximum."""
    full = [a for a in arrays if a.size]
    if not full:
        return 0, 1
    return min(a.min() for a in full), max(a.max() for a in full)


def _flattening_class() -> type:
    from onnxruntime.quantization.calibrate import HistogramCollector

    class Flattening(_Unbounded, HistogramCollector):
        """ORT's HistogramCollector, counting as ORT counts, handed batches of different shapes as one flat array;
        a tensor holding -inf or inf is left to _Unbounded, as in `Collector`."""

        def collect(self, name_to_arr: dict[str, Any]) -> Any:
            finite = {}
            for tensor, data in name_to_arr.items():
                arrays = _arrays(data)
                if arrays is not None and self._infinite(tensor, *_range(arrays)):
                    continue
                finite[tensor] = _for_ort(data)
            return super().collect(finite)

    return Flattening


@contextlib.contextmanager
def faster() -> Iterator[None]:
    """ORT's histogram calibrators count with `Collector` inside this block."""
    with _collecting(_collector_class()):
        yield


@contextlib.contextmanager
def flattened() -> Iterator[None]:
    """ORT's histogram calibrators count as they do inside this block, on batches of any shapes: where `faster` is not
    used (a model over 2 GB, an onnxruntime without the calibration cache), a last batch of fewer samples still
    calibrates."""
    with _collecting(_flattening_class()):
        yield


@contextlib.contextmanager
def _collecting(collector: type) -> Iterator[None]:
    from onnxruntime.quantization import calibrate

    original = calibrate.HistogramCollector
    calibrate.HistogramCollector = collector
    try:
        yield
    finally:
        calibrate.HistogramCollector = original
