"""``onerec serve RUN --workers N``: N worker processes on one listening socket, each with its own model and batcher.

This is uvicorn's own multi-process mode (``uvicorn.run(..., workers=N)``): the parent binds the socket once and
supervises N spawned workers (it restarts one that dies, and stops them all on SIGINT / SIGTERM); each worker
accepts connections on the shared socket, loads the run (:class:`RecommendService`) and runs its own
:class:`MicroBatcher`, so N searches run at once and N copies of the model sit in memory. Workers share nothing
at run time: they are the same as N separate ``onerec serve`` replicas behind a load balancer, on one port.

uvicorn starts workers by spawning fresh interpreters, which re-import the app from an import string; the run
directory, the whole resolved config and the device reach them through the environment variable
:data:`ENV` (JSON), read by :func:`worker_app` and, for the guarded HTTP protocol's read timeout, by
``WorkerProtocol`` (this module's attribute, built on first access).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from onerec.config import RunConfig, from_dict, to_dict

ENV = "ONEREC_SERVE_WORKER"


def _settings() -> tuple[Path, RunConfig, str]:
    """(run directory, config, device) that :func:`serve_workers` left in the environment."""
    raw = os.environ.get(ENV)
    if not raw:
        raise RuntimeError(f"{ENV} is not set: worker processes are started by `onerec serve RUN --workers N`")
    data = json.loads(raw)
    return Path(data["run"]), from_dict(RunConfig, data["config"]), data["device"]


def worker_app():
    """The application of one worker (uvicorn's ``factory``): the run loaded anew in this process."""
    from onerec.serve.app import create_app
    from onerec.serve.service import RecommendService
    from onerec.threads import keep_freed_memory

    keep_freed_memory(one_arena=True)  # a fresh interpreter: the parent's policy is not inherited; searches on a thread
    run, cfg, device = _settings()
    if cfg.serve.torch_threads > 0:
        torch.set_num_threads(cfg.serve.torch_threads)
    return create_app(RecommendService(run, cfg, device, note_drift=False), cfg)  # the parent printed it


def __getattr__(name: str) -> Any:
    """``WorkerProtocol``: :func:`onerec.serve.http.guarded_protocol` with this run's ``serve.read_timeout_s``
    (uvicorn imports it by name in each worker, as it imports the app)."""
    if name == "WorkerProtocol":
        from onerec.serve.http import guarded_protocol

        protocol = guarded_protocol(_settings()[1].serve.read_timeout_s)
        globals()[name] = protocol
        return protocol
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve_workers(run: Path, cfg: RunConfig, device: str = "cpu") -> None:
    """Serve ``run`` with ``serve.workers`` processes on ``serve.host:serve.port`` until interrupted."""
    import uvicorn

    from onerec.pipeline import log, model_config_drift, trained_config
    from onerec.serve.http import uvicorn_options

    drift = model_config_drift(run, cfg, trained_config(run, cfg).model)  # once here, not in every worker
    if drift:
        log(f"note: {drift}")
    os.environ[ENV] = json.dumps({"run": str(Path(run).resolve()), "config": to_dict(cfg), "device": device})
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=cfg.serve.workers,
                http=f"{__name__}:WorkerProtocol", **uvicorn_options(cfg))
