"""`python -m compress.dist.worker JOB_DIR`, started by torchrun: one DDP worker of one training job.

It joins the process group (nccl when every local rank has a GPU, gloo on CPU), rebuilds the data from the
pipeline file and the model from its record (compress.families.rebuild) with the parent's weights, and calls the
same training function the parent would have called; fit sees the process group and trains with DDP. Local rank 0 of each machine writes the
trained weights (identical on every rank: fit broadcasts rank 0's) and the function's result into the job folder,
atomically; on node 0 that is global rank 0, the only writer into the run directory that reports.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

from compress.errors import CompressError


@record
def main(argv: list[str] | None = None) -> None:
    import torch
    import torch.distributed as dist

    from compress.heap import limit_heap_growth_for_run

    limit_heap_growth_for_run()  # as the parent does (compress/heap.py)
    job_dir = Path((sys.argv[1:] if argv is None else argv)[0])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_size
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        _run(job_dir, local_rank)
    except CompressError as exc:  # bad input found in a worker: the parent shows it as it would in one process
        from compress.cache import write_json
        from compress.dist.job import ERROR_PREFIX

        write_json(job_dir / f"{ERROR_PREFIX}{dist.get_rank()}.json",
                   {"message": str(exc), "exit_code": exc.exit_code})
        sys.exit(3)
    # Every rank waits until rank 0 has written, then the group is torn down together. The process then ends at once:
    # under load, gloo's threads could abort ("terminate called without an active exception") in the interpreter's
    # own teardown after the work was done and written, which torchrun would report as a failed rank.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def said_once_a_machine(local_rank: int) -> Iterator[None]:
    """Every rank loads the same data and model and would write the same warnings into torchrun.log: while they
    load, local rank 0 of each machine says them and the others say errors only. (Training's own warnings, a file
    one rank's shard fails to decode, stay every rank's.)"""
    logger = logging.getLogger("compress")
    level = logger.level
    if local_rank:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run(job_dir: Path, local_rank: int) -> None:
    import importlib

    import torch
    from safetensors.torch import load_file

    from compress.cache import write_json
    from compress.config import parse_config
    from compress.data import load_data
    from compress.dist.group import current
    from compress.dist.job import JOB, RESULT_JSON, RESULT_WEIGHTS, decode, save_tensors
    from compress.families import rebuild
    from compress.records import ModelRecord

    job = json.loads((job_dir / JOB).read_text())
    with said_once_a_machine(local_rank):
        cfg = parse_config(job["config"], Path(job["source_path"]))
        if cfg.pipeline.threads:
            torch.set_num_threads(cfg.pipeline.threads)
        data = load_data(cfg.data, seed=cfg.pipeline.seed, base_dir=cfg.base_dir,
                         origin=f"{cfg.source_path}: data.source", tokenizer=cfg.teacher.model,
                         cache_dir=cfg.run_dir / "tokens")
    if data.fingerprint != job["fingerprint"]:
        raise CompressError(f"{cfg.source_path}: data.source: a worker loaded different data than the run (data "
                            "changed during the run, or another machine has other files); every machine needs the "
                            "same data")
    model = rebuild(ModelRecord.from_json(job["record"]), data=data, base_dir=cfg.base_dir,
                    weights=job_dir / "init.safetensors")
    tensors = load_file(str(job_dir / "tensors.safetensors")) if (job_dir / "tensors.safetensors").is_file() else {}

    def teacher_model() -> Any:
        spec = dict(job["teacher"])
        weights = spec.pop("weights")
        teacher = rebuild(ModelRecord.from_json(spec), data=data, base_dir=cfg.base_dir, weights=Path(weights))
        return teacher.to(current().device).eval()

    args = [decode(a, tensors, teacher_model) for a in job["args"]]
    kwargs = {k: decode(v, tensors, teacher_model) for k, v in job["kwargs"].items()}
    if "progress" in kwargs:  # one line per epoch from local rank 0 into the job's log: how far it got
        kwargs["progress"] = local_rank == 0
    module, _, name = job["function"].partition(":")
    result = getattr(importlib.import_module(module), name)(model, data, *args, **kwargs)
    if local_rank == 0:
        save_tensors(job_dir / RESULT_WEIGHTS, {k: v.detach().cpu().contiguous().clone()
                                                 for k, v in model.state_dict().items()})
        write_json(job_dir / RESULT_JSON, {"result": result})


if __name__ == "__main__":
    main()
