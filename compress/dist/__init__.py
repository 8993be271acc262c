"""Training on several processes or machines: torchrun launches the workers, DistributedDataParallel trains.

The `compress run` process stays the single owner of the run directory (lock, cache, manifests, report). For each
training run of a stage (teacher training, distillation, the control, prune recovery) it writes a job folder and
launches `torch.distributed.run` (torchrun) on `compress.dist.worker`; every worker trains with DDP (gloo on CPU,
nccl on CUDA), rank 0 writes the trained weights into the job folder, and the parent loads them and goes on as in
one process. Export, quantize and benchmark run once, in the parent.

  settings   DistSettings: --nproc / --nnodes / --node-rank / --rdzv-endpoint, their checks, torchrun's arguments
  group      World: this process's rank in the process group; DDP wrapping, sharding, sums and broadcasts for fit
  launch     the parent's side: job folder, torchrun subprocess, trained weights back into the model
  job        the job folder's files, and how a call's arguments travel to the workers
  torchrun   torchrun's own main(), with its ChildFailedError recorded as JSON (which rank, which signal)
  worker     the worker's side: rebuild the model and the data, call the same training function, rank 0 writes
  failure    a failed launch as one line naming the rank and the reason
"""
