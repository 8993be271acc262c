#!/usr/bin/env python3
"""On-device latency benchmark of the model in this folder. Needs only Python >= 3.8, onnxruntime and numpy.

    python bench_kit.py --json device.json                  # providers, threads, runs from kit.json
    python bench_kit.py --provider xnnpack --provider cpu --json device.json
    python bench_kit.py --provider nnapi --provider-option nnapi:use_fp16=1 --strict --json device.json

Writes a compress.report/1 document (one model, its latency rows and unavailable providers) that
`compress compare` reads next to results measured elsewhere. The method is the one `compress bench` uses:
warm-up runs, then timed runs until both a minimum count and a minimum time are met, in repetitions on fresh
sessions interleaved across configurations; p50/p90/p99, a distribution-free 95% CI of the median, raw samples.
It also checks that outputs on this device match the ones recorded when the kit was made.
A kit made with `compress bench NEW --against OLD --kit DIR` also times NEW against OLD (against.onnx) in
alternating blocks on this device and judges the paired ratio (paired_kit.py); --no-against skips it.
Each row carries where the nodes ran on this device (placement_kit.py: ORT's verbose placement log).
Exit codes: 0 done; 1 a paired regression, or under --strict nodes left to the CPU provider or outputs past --atol;
2 bad usage (an unknown provider name, a bad option), nothing timed, or under --strict a provider this build lacks.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dml": "DmlExecutionProvider",
}
CPU = "CPUExecutionProvider"


def usage(line):
    """One line on stderr, exit 2, as `compress bench` (SystemExit("...") exits 1: read as a regression)."""
    print("error: %s" % line, file=sys.stderr)
    raise SystemExit(2)


def provider_name(name):
    """Short name ('xnnpack') or full ORT name -> full ORT name; unknown names pass through unchanged."""
    return ALIASES.get(name.strip().lower(), name.strip())


def percentile_row(samples_ms):
    arr = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def median_ci(samples_ms, z=1.959963984540054):
    """95% CI of the median from order statistics (normal approximation of Binomial(n, 1/2))."""
    arr = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = arr.size
    if n < 10:
        return float(arr[0]), float(arr[-1])
    half = z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)))
    return float(arr[lo]), float(arr[hi])


def cv(samples):
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size < 2 or arr.mean() == 0:
        return 0.0
    return float(arr.std(ddof=1) / arr.mean())


def subsample(samples, max_count):
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size <= max_count:
        return arr.tolist()
    idx = np.linspace(0, arr.size - 1, max_count).round().astype(np.int64)
    return arr[idx].tolist()


def qnn_plugin_devices():
    """The QNN EP's devices when the onnxruntime-qnn plugin wheel is installed (registered on first call), else
    None: an onnxruntime build with QNN built in (onnxruntime-android-qnn) takes the plain providers list."""
    try:
        import onnxruntime_qnn
    except ImportError:
        return None
    try:
        ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    except Exception as exc:  # already registered in this process
        if "already registered" not in str(exc):
            return None
    return [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"] or None


def open_session(model, provider, threads, options, no_spin, audit_level=None):
    """(session, None) when `provider` really runs the model, else (None, reason). Never silently CPU.

    Options whose key starts with "session." are session config entries (e.g. qnn:session.disable_cpu_ep_fallback=1
    to require the whole graph on the NPU); the rest go to the provider (qnn: backend_type, backend_path, ...).
    """
    options = dict(options)
    config = dict((k, options.pop(k)) for k in list(options) if k.startswith("session."))
    devices = qnn_plugin_devices() if provider == "QNNExecutionProvider" else None
    available = ort.get_available_providers()
    if provider not in available:
        return None, "not available in onnxruntime %s (available: %s)" % (ort.__version__, ", ".join(available))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if audit_level is not None:  # placement audit: the graph every provider is offered, ORT's log at that level
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.log_severity_level = audit_level
    if no_spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    for key, value in config.items():
        so.add_session_config_entry(key, str(value))
    providers = [(provider, {str(k): str(v) for k, v in options.items()})]
    if provider != CPU:
        providers.append(CPU)  # nodes the provider cannot take run on the CPU: normal ORT partitioning
    try:
        if devices:  # plugin EP: chosen by device, CPU stays the fallback unless disabled above
            so.add_provider_for_devices(devices, dict({"backend_type": "htp"}, **providers[0][1]))
            session = ort.InferenceSession(model, sess_options=so)
        else:
            session = ort.InferenceSession(model, sess_options=so, providers=providers)
    except Exception as exc:  # ORT raises its own exception types
        if provider == CPU:
            raise
        return None, "session creation failed: %s" % (str(exc).strip().splitlines() or ["?"])[0][:300]
    if session.get_providers()[0] != provider:
        return None, "onnxruntime dropped it while creating the session (fell back to %s)" % session.get_providers()
    return session, None


def timed_loop(run, min_runs, min_seconds, max_seconds):
    perf = time.perf_counter_ns
    samples = []
    start = perf()
    deadline = start + int(min_seconds * 1e9)
    hard_stop = start + int(max_seconds * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        n = 0
        while True:
            t0 = perf()
            run()
            t1 = perf()
            samples.append(t1 - t0)
            n += 1
            if (n >= min_runs and t1 >= deadline) or (t1 >= hard_stop and n >= 5):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(samples, dtype=np.float64) / 1e6


def max_abs_diff(expected, got):
    worst = 0.0
    for ref, out in zip(expected, got):
        ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            return float("inf")
        if ref.size:
            worst = max(worst, float(np.max(np.abs(ref - out))))
    return worst


def parse_options(items):
    """['nnapi:use_fp16=1', 'cuda:device_id=0'] -> {'NnapiExecutionProvider': {'use_fp16': '1'}, ...}."""
    out = {}
    for item in items:
        prov, sep, kv = item.partition(":")
        key, sep2, value = kv.partition("=")
        if not sep or not sep2 or not key:
            usage("--provider-option: expected PROVIDER:KEY=VALUE, got %r" % item)
        out.setdefault(provider_name(prov), {})[key] = value
    return out


def environment():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "providers_available": ort.get_available_providers(),
        "measured_by": "bench_kit.py",
    }


def parse_args(argv, kit):
    p = argparse.ArgumentParser(description="Benchmark the model in this kit with ONNX Runtime on this device.")
    p.add_argument("--json", help="write the results here (compress.report/1; `compress compare` reads it)")
    p.add_argument("--provider", action="append", help="short or ORT name, repeatable (default: kit.json)")
    p.add_argument("--provider-option", action="append", default=[], help="PROVIDER:KEY=VALUE, repeatable")
    p.add_argument("--threads", type=int, action="append", help="intra-op threads, repeatable (default: kit.json)")
    p.add_argument("--warmup-runs", type=int, default=kit["warmup_runs"])
    p.add_argument("--min-runs", type=int, default=kit["min_runs"])
    p.add_argument("--min-seconds", type=float, default=kit["min_seconds"])
    p.add_argument("--max-seconds", type=float, default=kit["max_seconds"])
    p.add_argument("--repetitions", type=int, default=kit["repetitions"])
    p.add_argument("--no-spin", action="store_true", default=kit.get("no_spin", False),
                   help="no thread spinning (battery-powered boards; default: kit.json, set by compress bench --edge)")
    p.add_argument("--spin", dest="no_spin", action="store_false", help="thread spinning even if kit.json says not")
    p.add_argument("--strict", action="store_true",
                   help="exit 2 when a requested provider is unavailable; exit 1 when one leaves nodes to the CPU "
                        "provider, or outputs differ past --atol")
    p.add_argument("--atol", type=float, default=kit["atol"], help="allowed max abs diff vs recorded outputs")
    p.add_argument("--no-against", action="store_true", help="skip the paired comparison with the kit's old model")
    args = p.parse_args(argv)
    if args.min_runs < 1 or args.repetitions < 1 or args.warmup_runs < 0 or any(t < 1 for t in args.threads or []):
        p.error("--min-runs, --repetitions and --threads must be >= 1, --warmup-runs >= 0")
    return args


def open_jobs(model, feed, expected, providers, threads, options, args):
    """One job per (provider, threads) that opens here, the unavailable ones, and parity per provider."""
    jobs, unavailable, parity, placed, logs = [], [], {}, {}, {}
    for prov in providers:
        for t in threads:
            session, reason = open_session(model, prov, t, options.get(prov, {}), args.no_spin)
            if session is None:
                unavailable.append({"provider": prov, "reason": reason})
                print("unavailable: %s: %s" % (prov, reason), file=sys.stderr)
                break
            if prov not in parity:
                got = session.run(None, feed)
                diff = max_abs_diff(expected, got)
                top1 = float(np.mean(np.argmax(expected[0], -1) == np.argmax(got[0], -1))) if expected[0].ndim else 1.0
                parity[prov] = {"max_abs_diff": diff, "top1_agreement": top1, "ok": diff <= args.atol}
                placed[prov] = audit(model, prov, t, options.get(prov, {}), args, logs)
            jobs.append({"provider": prov, "threads": t, "session": session, "reps": [], "placement": placed[prov]})
    return jobs, unavailable, parity


def audit(model, prov, threads, options, args, logs):
    """Where the nodes ran on this device (placement_kit.py, from ORT's verbose log); None without the script.
    Once per provider, as parity; `logs` keeps the CPU-only session's log (the node count) for the next one."""
    try:
        import placement_kit
    except ImportError:
        return None

    def log_of(p, t, o):
        return placement_kit.session_log(lambda level: open_session(model, p, t, o, args.no_spin, level))

    if CPU not in logs:
        logs[CPU] = log_of(CPU, 1, {})
    log = logs[CPU] if prov == CPU else log_of(prov, threads, options)
    return placement_kit.record_from_logs(prov, logs[CPU], log)


def time_jobs(jobs, model, feed, options, args):
    for _ in range(args.repetitions):  # interleaved: background load hits every row a little
        for job in jobs:
            session = job.pop("session", None)
            if session is None:
                session, reason = open_session(model, job["provider"], job["threads"],
                                               options.get(job["provider"], {}), args.no_spin)
                if session is None:
                    raise SystemExit("error: %s: %s" % (job["provider"], reason))
            run = lambda s=session: s.run(None, feed)  # noqa: E731
            for _ in range(args.warmup_runs):
                run()
            job["reps"].append(timed_loop(run, args.min_runs, args.min_seconds, args.max_seconds))
            del run, session


def latency_row(job, batch, options, args):
    pooled = np.concatenate(job["reps"])
    p50, p90, p99 = percentile_row(pooled)
    lo, hi = median_ci(pooled)
    rep_p50 = [float(np.median(r)) for r in job["reps"]]
    mean_ms = float(pooled.mean())
    print("%-28s batch %-3d threads %-2d p50 %9.4f ms  p90 %9.4f ms  p99 %9.4f ms  %d runs"
          % (job["provider"], batch, job["threads"], p50, p90, p99, pooled.size))
    return {
        "provider": job["provider"], "batch": batch, "threads": job["threads"], "runs": int(pooled.size),
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "ci95_p50_ms": [lo, hi],
        "throughput_per_s": batch * 1000.0 / mean_ms, "mean_ms": mean_ms, "cv": cv(pooled),
        "cv_p50_across_repetitions": cv(rep_p50), "p50_ms_repetitions": rep_p50,
        "repetitions": len(job["reps"]), "warmup_runs": args.warmup_runs, "io_binding": False,
        "edge": bool(args.no_spin), "provider_options": options.get(job["provider"], {}),
        "samples_ms": [round(x, 5) for x in subsample(pooled, 2000)], "placement": job.get("placement"),
    }


def report_of(kit, model, rows, unavailable, parity):
    first_parity = next(iter(parity.values()), None)
    return {
        "schema": "compress.report/1",
        "pipeline": "bench-kit:%s" % kit["name"],
        "final": kit["name"],
        "environment": environment(),
        "stages": [],
        "models": [{
            "name": kit["name"], "role": kit.get("role", "student"), "path": kit["model"],
            "format": "ort" if kit["model"].endswith(".ort") else "onnx",
            "bytes": os.path.getsize(model), "params": kit.get("params"),
            "parity": {k: first_parity[k] for k in ("max_abs_diff", "top1_agreement")} if first_parity else None,
            "parity_by_provider": parity, "latency": rows, "unavailable": unavailable,
        }],
        "kit": {"made_with": kit.get("made_with"), "model_sha256": kit.get("model_sha256")},
    }


def main(argv=None):
    with open(os.path.join(HERE, "kit.json")) as f:
        kit = json.load(f)
    args = parse_args(argv, kit)
    model = os.path.join(HERE, kit["model"])
    with np.load(os.path.join(HERE, kit["inputs"]), allow_pickle=False) as data:
        feed = {k: data[k] for k in data.files}
    with np.load(os.path.join(HERE, kit["expected"]), allow_pickle=False) as data:
        expected = [data["output_%d" % i] for i in range(len(data.files))]
    providers = list(dict.fromkeys(provider_name(x) for x in (args.provider or kit["providers"])))
    for p in (p for p in providers if p not in ort.get_all_providers()):  # a typo, not a provider this build lacks
        usage("--provider: unknown provider %r (short names: %s)" % (p, ", ".join(sorted(ALIASES))))
    threads = list(dict.fromkeys(args.threads or kit["threads"]))
    options = dict((provider_name(k), v) for k, v in kit.get("provider_options", {}).items())
    for prov, opts in parse_options(args.provider_option).items():
        options.setdefault(prov, {}).update(opts)
    batch = kit.get("batch") or (int(next(iter(feed.values())).shape[0]) if feed else 1)  # kit.json: its batch axis

    sys.dont_write_bytecode = True  # the kit folder stays as it was copied
    sys.path.insert(0, HERE)  # the kit's other scripts: placement_kit.py, paired_kit.py
    jobs, unavailable, parity = open_jobs(model, feed, expected, providers, threads, options, args)
    if args.strict and unavailable:
        usage("unavailable under --strict: %s" % ", ".join(u["provider"] for u in unavailable))
    if not jobs:  # a report of no rows, which `compress compare` refuses
        usage("nothing was timed: %s" % "; ".join("%s: %s" % (u["provider"], u["reason"]) for u in unavailable))
    time_jobs(jobs, model, feed, options, args)
    rows = [latency_row(job, batch, options, args) for job in jobs]
    report = report_of(kit, model, rows, unavailable, parity)
    if kit.get("against") and not args.no_against:  # made with --against: NEW vs OLD, paired, on this device
        import paired_kit

        paired, missing = paired_kit.paired_rows(kit, HERE, feed, providers, threads, options, args, open_session,
                                                 median_ci, batch)
        report["paired"] = {"old": kit["against"], "new": kit["model"], "max_regression": kit["max_regression"],
                            "rows": paired, "unavailable": missing}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print("wrote %s" % args.json)
    bad = [k for k, v in parity.items() if not v["ok"]]
    if bad:  # fp16 paths (NNAPI, CoreML) legitimately drift; --strict makes any drift past --atol fatal
        print("%s: outputs differ from the recorded ones on %s (max abs diff %s > %g)"
              % ("error" if args.strict else "warning", ", ".join(bad),
                 [parity[k]["max_abs_diff"] for k in bad], args.atol), file=sys.stderr)
        if args.strict:
            return 1
    fell_back = [r["placement"] for r in rows if (r.get("placement") or {}).get("nodes_on_cpu")]
    if args.strict and fell_back:
        print("error: %s" % "; ".join("%s: %d of %d nodes fell back to %s (%s)" % (
            f["provider"], f["nodes_on_cpu"], f["nodes_total"], CPU, ", ".join(sorted(set(f["cpu_nodes"]))))
            for f in fell_back), file=sys.stderr)
        return 1
    regressed = [r for r in report.get("paired", {}).get("rows", []) if r["regressed"]]
    if regressed:
        print("error: slower than %s beyond +%d%% on %s" % (kit["against"], round(100 * kit["max_regression"]),
              ", ".join("%s x%.3f" % (r["provider"], r["ratio"]) for r in regressed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
