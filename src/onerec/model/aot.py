"""``generate.compile=aot``: the beam search's decode step compiled ahead of time with AOTInductor (issue 43).

``generate.compile=true`` (:mod:`onerec.model.compiled`) leaves two costs in every step on a CPU: Dynamo's guard
checks (~0.28 ms a step at batch 1, ~300 guards a graph) and the compiled graphs' Python wrappers. Here each
semantic-ID level's step is exported once (``torch.export``) and compiled to a package of C++ code
(``torch._inductor.aoti_compile_and_package``) that is called without either: at batch 1, beam 128 on CPU the
step measured ~1.6x the eager one against ~1.1x for ``torch.compile`` (docs/benchmarks/generation.md).

* **One package per level serves every search.** Users, beams and the encoder's length (the longest history of
  a batch) are dynamic dimensions of the export (``torch.export.Dim``), so eval's last partial batch, serving's
  micro-batches of any size and a request's larger beam run the same package. The step's inputs are handed over
  as [users, beams, ...] so that rows = users x beams stays a product of the two.
* **Packages hold code, not weights.** They are compiled without their constants and given the model's own
  parameters at load (``load_constants(user_managed=True)``: no copy, and weights changed in place are seen). So
  a package depends on the architecture, not the checkpoint: its key hashes the model's class, config, parameter
  names and shapes, the model code and torch's version, and a retrained model of the same config reuses it.
* **Cached on disk, signed.** ``cache_dir`` (a run's ``aot/`` folder under ``onerec``; a temporary folder
  otherwise) keeps one folder per key with ``level<N>.pt2``; the first search compiles what is missing (15-35 s a
  level at d_model 128 on a CPU), later processes load it (~0.3 s a level). A package is a shared library,
  i.e. code that runs when loaded: each is signed with an HMAC under a key kept in the user's cache folder
  (``~/.cache/onerec/aot-signing.key``, mode 0600), and one that does not verify, say a run folder copied from
  elsewhere, is compiled anew instead of loaded. Writes go to a temporary file and are renamed; a lock file per
  key makes concurrent processes (``onerec serve --workers N``) compile each level once.

The eager step stays the reference: ``tests/generate/test_compiled.py`` checks that both return the same items
(and scores to float tolerance) for the encoder-decoder, the lazy model and a mixture-of-experts decoder. Where
export or compilation fails (no C++ compiler, an operator export cannot trace), the first search warns once and
decoding runs eagerly. bf16 autocast (``generate.precision=bf16``) is not exported: the two do not combine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from onerec.io import atomic_path
from onerec.model.compiled import StepOnModel

log = logging.getLogger("onerec.generate")

_ATTR = "_onerec_aot_decode_step"
FORMAT = 1  # the layout of the step's inputs and outputs below; part of every package's key
#: example sizes to export with: distinct from each other and from 0 and 1 (which export would specialise)
_USERS, _BEAMS, _HISTORY = 2, 3, 5


class _Level(nn.Module):
    """``decode_step`` at one semantic-ID level over tensors and lists of tensors (what ``torch.export`` takes):
    prefix [U, G, step], the context's mask and per-layer cross-attention [k, v], the cache per layer [k, v] each
    [U, G, heads, step, dk] (empty at level 0) -> (log-probs [U*G, V], the new cache per layer [k, v])."""

    def __init__(self, model: nn.Module, step: int) -> None:
        super().__init__()
        self.model, self.step = model, step

    def forward(self, prefix: Tensor, mask: Tensor, cross: list[list[Tensor]], cache: list[list[Tensor]]):
        from onerec.model.generator import DecodingContext

        u, g = prefix.shape[0], prefix.shape[1]
        ctx = DecodingContext(cross=[(k, v) for k, v in cross], mask=mask, beams=g, users=u)
        flat = None if self.step == 0 else [(k.flatten(0, 1), v.flatten(0, 1)) for k, v in cache]
        log_probs, new = self.model.decode_step(prefix.flatten(0, 1), self.step, ctx, flat)
        return log_probs, [[k, v] for k, v in new]


def _inputs(prefix: Tensor, step: int, ctx: Any, cache: Any) -> tuple:
    """The decode step's arguments as :class:`_Level` takes them (views, no copies of contiguous tensors)."""
    u = ctx.mask.shape[0]
    g = prefix.shape[0] // u
    split = [] if step == 0 else [[k.unflatten(0, (u, g)), v.unflatten(0, (u, g))] for k, v in cache]
    return prefix.unflatten(0, (u, g)), ctx.mask, [[k, v] for k, v in ctx.cross], split


def _dynamic_shapes(step: int, mask: Tensor, layers: int) -> tuple:
    dim = torch.export.Dim
    users, beams, history = dim("users", min=1), dim("beams", min=1), dim("history", min=1)
    cross = [[{0: users, 2: history}, {0: users, 2: history}] for _ in range(layers)]
    cache = [] if step == 0 else [[{0: users, 1: beams}, {0: users, 1: beams}] for _ in range(layers)]
    return {0: users, 1: beams}, {0: users, mask.dim() - 1: history}, cross, cache


def model_key(model: nn.Module, device: torch.device) -> str:
    """What a package depends on besides its level: the model's class, config, codebook sizes, parameter names,
    shapes and dtypes, the per-instance switches of its layers, the model code, torch's version and the device
    type. Not the weights (packages take them at load)."""
    from onerec.model.layers import Attention, RMSNorm

    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.read_bytes())
    cfg = getattr(model, "cfg", None)
    facts = {
        "format": FORMAT, "torch": torch.__version__, "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "cfg": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else repr(cfg),
        "codebook_sizes": list(getattr(model, "codebook_sizes", [])),
        "params": [(name, list(t.shape), str(t.dtype)) for name, t in _constants(model).items()],
        "attention_fast": sorted({bool(m.fast) for m in model.modules() if isinstance(m, Attention)}),
        "fused_norm": bool(getattr(RMSNorm, "fused_inference", False)),
        "device": device.type, "code": code.hexdigest(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _constants(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters and buffers by the names a :class:`_Level` package knows them by."""
    named = dict(model.named_parameters(remove_duplicate=False))  # a tied weight under each of its names
    named.update(model.named_buffers(remove_duplicate=False))
    return {f"model.{name}": t for name, t in named.items()}


def _binding(modules: list[nn.Module]) -> list[int]:
    """Where the tensors a loaded package reads live: every parameter's and buffer's storage (a parameter replaced,
    or moved to another dtype or device, has another). Read from each module's own dicts: ~40 us for the 93
    tensors of decode_step.py's model, against ~280 us through ``named_parameters``."""
    return [t.data_ptr() for m in modules for group in (m._parameters, m._buffers) for t in group.values()
            if t is not None]


# ------------------------------------------------------------------------------------------------ signing
def _signing_key() -> bytes:
    """This user's key for signing packages (created on first use); a per-process key where none can be kept
    (then packages are not reused across processes, but nothing unsigned is ever loaded)."""
    global _PROCESS_KEY
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onerec"
    path = base / "aot-signing.key"
    if path in _KEYS:  # read once a process (a package's signature is checked at every load)
        return _KEYS[path]
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            _KEYS[path] = key
            return key
    except OSError:
        pass
    try:
        base.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".aot-key-")
        with os.fdopen(fd, "wb") as f:  # mkstemp's file is 0600
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        _KEYS[path] = path.read_bytes()
        return _KEYS[path]
    except OSError as e:
        if _PROCESS_KEY is None:
            log.info("generate.compile=aot: cannot keep a signing key in %s (%s): packages compiled by this "
                     "process are not reused by others", base, e)
            _PROCESS_KEY = secrets.token_bytes(32)
        return _PROCESS_KEY


_PROCESS_KEY: bytes | None = None
_KEYS: dict[Path, bytes] = {}


def _signature(data: bytes) -> str:
    return hmac.new(_signing_key(), data, hashlib.sha256).hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (POSIX ``flock``) for as long as the block runs; no lock elsewhere."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent processes may both compile a level (each write is still atomic)
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ the step
class AOTDecodeStep(StepOnModel):
    """``model.decode_step`` through AOTInductor packages, one per semantic-ID level; called like it, with the
    plain cache (None at step 0).

    Args:
        model: a :class:`~onerec.model.generator.SemanticIDModel` (encoder-decoder or lazy), in eval mode.
        cache_dir: where packages are kept (a folder per :func:`model_key`); None: a temporary folder that lives
            as long as this object.
    """

    def __init__(self, model: nn.Module, cache_dir: str | Path | None = None) -> None:
        self.model = model
        self._tmp = tempfile.TemporaryDirectory(prefix="onerec-aot-") if cache_dir is None else None
        self.root = Path(self._tmp.name if self._tmp else cache_dir)
        self.runners: dict[int, Any] = {}
        self.compiled: list[int] = []  # levels this object compiled (the others were loaded from cache_dir)
        self.failed: str | None = None
        self._fallback: tempfile.TemporaryDirectory | None = None  # where to compile when root is read-only
        self._modules = list(model.modules())
        self._binding: list[int] = []  # where the parameters the loaded runners read live (see _binding)
        self._directory: Path | None = None  # directory(), kept with the runners (model_key reads the model code)
        self.lock = threading.Lock()  # a package runs one call at a time (run_single_threaded)

    def __call__(self, prefix: Tensor, step: int, ctx: Any, cache: Any) -> tuple[Tensor, Any]:
        if step == 0:
            # the packages read the parameters they were given at load: weights changed in place are seen, but a
            # parameter replaced by another tensor (load_state_dict(assign=True), .to(), .half()) is not, so every
            # level is loaded again (for another dtype or device: from its own key's folder)
            now = _binding(self._modules)
            if now != self._binding:
                self.runners, self._binding, self._directory = {}, now, None
        if self.failed is None:
            try:
                runner = self.runners.get(step) or self._runner(step)
            except Exception as e:  # whatever stops export or compilation: decode eagerly, as compiled.py
                self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                log.warning("generate.compile=aot: compiling the decode step failed on this machine (%s); "
                            "decoding runs eagerly. Fix: install a C++ compiler for inductor, or set "
                            "generate.compile=true or false", self.failed)
            else:
                with self.lock:
                    log_probs, new = runner(*_inputs(prefix, step, ctx, cache))
                return log_probs, [(k, v) for k, v in new]
        return self.model.decode_step(prefix, step, ctx, cache)

    def directory(self) -> Path:
        """This model's folder under the root: :func:`model_key`, worked out once for the loaded runners (again
        when a parameter is replaced: another dtype or device is another key)."""
        if self._directory is None:
            self._directory = self.root / model_key(self.model, self._device())
        return self._directory

    def _runner(self, step: int):
        from torch._inductor import aoti_load_package

        name = f"level{step}.pt2"
        data = self._verified(self.directory() / name)
        if data is None:
            folder = self._writable()
            with _locked(folder / ".lock"):
                data = self._verified(folder / name)  # another process may have compiled it while this one waited
                if data is None:
                    # a pause of seconds to a minute in the middle of a command: say what it is (once a level)
                    print(f"generate.compile=aot: compiling the decode step of level {step} into {folder} (once per "
                          "model architecture; later commands load it)", file=sys.stderr, flush=True)
                    # the global random state as it was: a training run that scores valid through the packages
                    # (generate.compile=aot) draws the same dropout masks whether this compiles or loads them
                    device = self._device()
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        data = self._compile(step, folder / name)
                    self.compiled.append(step)
        # the verified bytes, not the file again; one model instance, not a pool of them (as fast as the default
        # runner within the noise at batch 1): this object's lock makes concurrent searches take turns
        runner = aoti_load_package(io.BytesIO(data), run_single_threaded=True)
        constants = _constants(self.model)
        runner.load_constants({name: constants[name] for name in runner.get_constant_fqns()},
                              check_full_update=True, user_managed=True)
        self.runners[step] = runner
        return runner

    def _writable(self) -> Path:
        """Where this object compiles: :meth:`directory`, made if missing, or where that cannot be written (a
        read-only run folder) the same key's folder in a temporary one that lives as long as this object, with
        one warning. Packages already in :meth:`directory` are still loaded from it."""
        folder = self.directory()
        if self._fallback is None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / ".lock", "a+b"):
                    return folder
            except OSError as e:
                self._fallback = tempfile.TemporaryDirectory(prefix="onerec-aot-")
                log.warning("generate.compile=aot: cannot write packages to %s (%s); compiling into a temporary "
                            "folder, so every process compiles anew. Fix: make it writable, or run one command "
                            "with generate.compile=aot where it is, before it becomes read-only", folder, e)
        fallback = Path(self._fallback.name) / folder.name
        fallback.mkdir(exist_ok=True)
        return fallback

    @staticmethod
    def _verified(path: Path) -> bytes | None:
        """The package's bytes when it and its signature verify, else None (missing, or not made here)."""
        try:
            data, signature = path.read_bytes(), path.with_suffix(".sig").read_text().strip()
        except OSError:
            return None
        if not hmac.compare_digest(signature, _signature(data)):
            log.warning("generate.compile=aot: %s is not signed by this user's key; compiling it anew", path)
            return None
        return data

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _compile(self, step: int, path: Path) -> bytes:
        from torch._inductor import aoti_compile_and_package

        model, device = self.model, self._device()
        layers = len(model.decoder)
        with torch.no_grad():
            memory = torch.randn(_USERS, _HISTORY, model.memory_width, device=device)
            keep = torch.ones(_USERS, _HISTORY, dtype=torch.bool, device=device)
            ctx = model.start_decoding(memory, keep, _BEAMS)
            prefix = torch.zeros(_USERS * _BEAMS, step, dtype=torch.long, device=device)
            cache = None
            if step:  # the cache of the step before, as beam search hands it over
                _, cache = model.decode_step(prefix[:, :0], 0, ctx, None)
                for level in range(1, step):
                    _, cache = model.decode_step(prefix[:, :level], level, ctx, cache)
            args = _inputs(prefix, step, ctx, cache)
            exported = torch.export.export(_Level(model, step), args, strict=False,
                                           dynamic_shapes=_dynamic_shapes(step, ctx.mask, layers))
        with tempfile.TemporaryDirectory() as tmp:
            built = aoti_compile_and_package(exported, package_path=os.path.join(tmp, path.name),
                                             inductor_configs={"aot_inductor.package_constants_in_so": False})
            data = Path(built).read_bytes()
        for target, content in ((path, data), (path.with_suffix(".sig"), _signature(data).encode())):
            with atomic_path(target) as tmp:
                tmp.write_bytes(content)
        return data


def aot_decode_step(model: nn.Module, cache_dir: str | Path | None = None) -> AOTDecodeStep:
    """The model's AOT decode step, made on first use and kept on the model (its loaded packages are reused by
    every later search); a later call with another ``cache_dir`` makes a new one."""
    step = model.__dict__.get(_ATTR)
    if step is None or (cache_dir is not None and Path(cache_dir) != step.root):
        step = AOTDecodeStep(model, cache_dir)
        model.__dict__[_ATTR] = step  # not a submodule: never in the state dict
    return step
