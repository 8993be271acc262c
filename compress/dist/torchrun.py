"""`python -m compress.dist.torchrun FAILURES.json [torchrun options] -m module args`: torchrun, and which rank died.

This is torchrun itself (`torch.distributed.run.main`), not another launcher. torchrun reports a failed worker by
raising ChildFailedError; its error files exist only for Python exceptions, so a worker killed by a signal would be
known only from the text torchrun prints. Here the exception's failures (global rank, local rank, exit code, signal,
message) are written as JSON for compress.dist.failure to turn into one line.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out, args = argv[0], argv[1:]
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(args)
    except ChildFailedError as exc:
        failures = []
        for rank, f in exc.failures.items():
            message = f.message["message"] if isinstance(f.message, dict) else str(f.message)
            failures.append({"rank": rank, "local_rank": f.local_rank, "pid": f.pid, "exitcode": f.exitcode,
                             "signal": f.signal_name() if f.exitcode < 0 else None, "message": message,
                             "timestamp": f.timestamp})
        with open(out, "w") as fh:
            json.dump({"name": exc.name, "failures": failures}, fh)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
