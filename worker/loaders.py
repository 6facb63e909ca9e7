"""Load one version of a model onto a device and run it on batched numpy inputs.

Formats in ``<repo>/<model>/<version>/``:

- ``model.pt``  — TorchScript, ``torch.jit.load(map_location=device)``.
- ``model.pt2`` — ``torch.export.save`` output; ``torch.export.load`` then ``.module()``.
- ``model.py``  — a module defining ``class Model`` with ``load(self, config: ModelSpec,
  device: str) -> None`` and ``execute(self, inputs: dict[str, np.ndarray]) -> dict[str, ...]``
  (optionally ``finalize(self) -> None``). Inputs may be read-only views of the request; BYTES
  tensors arrive as object arrays of ``bytes``. Outputs may be arrays, tensors or nested lists.
  A model may raise ``RequestError`` itself to choose the status its caller sees.

Model files come from the operator's repository, never from the network. Every format returns a
``LoadedModel`` whose ``execute`` takes and returns numpy arrays (dim 0 is the batch when the
config's ``max_batch_size`` > 0) and checks the outputs against the config, so a misbehaving model
fails its requests with ``INTERNAL`` instead of sending wrong shapes to clients.

On a CUDA device a ``TorchModel`` runs on a stream of its own (one per model instance, so
instances in other threads overlap with it) and moves data through pinned host memory; on the
CPU it calls the module on tensors that share the numpy inputs' memory, with no extra copy.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fabric.errors import INTERNAL, RequestError
from worker.executor import CudaExecution
from worker.model_config import ModelSpec, TensorSpec
from worker.repository import ModelSource

logger = logging.getLogger(__name__)

MODEL_FILENAMES = ("model.pt", "model.pt2", "model.py")
_module_counter = itertools.count()


class ModelLoadError(Exception):
    """One model version could not be loaded; the worker goes on serving the others."""

    def __init__(self, model: str, version: int | str, reason: str) -> None:
        super().__init__(f"cannot load model '{model}' version {version}: {reason}")
        self.model = model
        self.version = str(version)
        self.reason = reason


class LoadedModel(Protocol):
    """A model version ready to run. ``execute`` is called from one thread at a time."""

    spec: ModelSpec
    version: str
    device: str
    # Tensor compute whose time follows the input shapes (TorchScript, torch.export): such a
    # model may run inline on the worker's I/O thread. A Python model may sleep, wait on I/O or
    # loop on input values, so it always gets a compute thread.
    shape_bound: bool

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; inputs and outputs keyed by tensor name. Raises ``RequestError``."""
        ...

    def close(self) -> None:
        """Release what the model holds; it is not called again afterwards."""
        ...


def load_model(source: ModelSource, version: int | str, device: str) -> LoadedModel:
    """Load ``version`` of ``source`` onto ``device`` ("cpu", "cuda:0", ...)."""
    spec = source.spec
    version_dir = source.version_path(version)
    path = _model_file(spec, version_dir, version)
    logger.info("loading model %s version %s from %s on %s", spec.name, version, path, device)
    try:
        if path.suffix == ".py":
            return PythonModel.load(spec, str(version), device, path)
        module = _load_torch_module(spec, str(version), device, path)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            spec.name, version, f"{path.name}: {type(exc).__name__}: {exc}"
        ) from exc
    return TorchModel(spec, str(version), device, module)


class TorchModel:
    """A TorchScript or torch.export module called with tensors in config input order."""

    shape_bound = True

    def __init__(
        self, spec: ModelSpec, version: str, device: str, module: Callable[..., Any]
    ) -> None:
        self.spec = spec
        self.version = version
        self.device = device
        self._module = module
        self._torch_device = torch.device(device)
        # CUDA only: a stream and pinned staging buffers of this instance's own. Every other
        # device (the CPU above all) keeps the plain path below, which adds no copy.
        self._cuda: CudaExecution | None = None
        if self._torch_device.type == "cuda":
            self._cuda = CudaExecution(self._torch_device, spec)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            with torch.inference_mode():
                if self._cuda is not None:  # CUDA only, see __init__
                    result = self._cuda.run(self._module, inputs)
                else:
                    args = [
                        _to_tensor(inputs[t.name], self._torch_device) for t in self.spec.inputs
                    ]
                    result = self._module(*args)
                return collect_outputs(self.spec, result, _batch_size(self.spec, inputs))
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(INTERNAL, f"model '{self.spec.name}' failed: {exc}") from exc

    def close(self) -> None:
        self._module = _closed
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None


class PythonModel:
    """A ``model.py`` ``Model`` instance, given numpy inputs under ``torch.inference_mode()``."""

    shape_bound = False

    def __init__(self, spec: ModelSpec, version: str, device: str, instance: Any) -> None:
        self.spec = spec
        self.version = version
        self.device = device
        self._instance = instance

    @classmethod
    def load(cls, spec: ModelSpec, version: str, device: str, path: Path) -> PythonModel:
        safe_name = re.sub(r"\W", "_", spec.name)
        module_name = f"_served_model_{safe_name}_{version}_{next(_module_counter)}"
        import_spec = importlib.util.spec_from_file_location(module_name, path)
        if import_spec is None or import_spec.loader is None:
            raise ModelLoadError(
                spec.name, version, f"{shown(path)} is not an importable Python file"
            )
        module = importlib.util.module_from_spec(import_spec)
        # Registered so that dataclasses, pickling-free introspection and relative lookups work.
        sys.modules[module_name] = module
        try:
            import_spec.loader.exec_module(module)
            model_cls = getattr(module, "Model", None)
            if model_cls is None:
                raise ModelLoadError(spec.name, version, f"{path.name} defines no class 'Model'")
            instance = model_cls()
            if not callable(getattr(instance, "execute", None)):
                raise ModelLoadError(spec.name, version, "class 'Model' has no execute() method")
            if callable(getattr(instance, "load", None)):
                instance.load(spec, device)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return cls(spec, version, device, instance)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            with torch.inference_mode():
                result = self._instance.execute(inputs)
                return collect_outputs(self.spec, result, _batch_size(self.spec, inputs))
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(INTERNAL, f"model '{self.spec.name}' failed: {exc}") from exc

    def execute_stream(self, inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """A decoupled model's responses (``worker.decoupled``): ``execute`` is a generator,
        each value it yields one response's outputs, checked like ``execute``'s."""
        batch = _batch_size(self.spec, inputs)
        try:
            results = self._instance.execute(inputs)
            if not isinstance(results, Iterator):
                raise RequestError(
                    INTERNAL, f"model '{self.spec.name}' is decoupled: execute must yield"
                )
            try:
                while True:
                    with torch.inference_mode():  # the generator's body runs in next()
                        try:
                            result = next(results)
                        except StopIteration:
                            return
                    yield collect_outputs(self.spec, result, batch)
            finally:
                close = getattr(results, "close", None)
                if callable(close):
                    close()
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(INTERNAL, f"model '{self.spec.name}' failed: {exc}") from exc

    def close(self) -> None:
        finalize = getattr(self._instance, "finalize", None)
        if callable(finalize):
            try:
                finalize()
            except Exception:
                logger.exception(
                    "model %s version %s: finalize failed", self.spec.name, self.version
                )


def collect_outputs(spec: ModelSpec, result: Any, batch_size: int | None) -> dict[str, np.ndarray]:
    """Turn a model's return value into ``{output name: numpy array}`` checked against ``spec``.

    ``result`` is one value (single-output models), a tuple/list in config output order, or a
    mapping by name; each value a tensor, array or nested list. ``batch_size`` is the expected
    dim 0 (None for models without batching).
    """
    names = [t.name for t in spec.outputs]
    if isinstance(result, Mapping):
        if set(result) != set(names):
            raise RequestError(
                INTERNAL,
                f"model '{spec.name}' returned outputs {sorted(map(str, result))}, "
                f"config declares {sorted(names)}",
            )
        values = [result[n] for n in names]
    elif isinstance(result, tuple | list):
        if len(result) != len(names):
            raise RequestError(
                INTERNAL,
                f"model '{spec.name}' returned {len(result)} outputs, config declares "
                f"{len(names)} {names}",
            )
        values = list(result)
    elif len(names) == 1:
        values = [result]
    else:
        raise RequestError(
            INTERNAL,
            f"model '{spec.name}' returned one {type(result).__name__}, config declares "
            f"{len(names)} outputs {names}",
        )
    return {
        t.name: _to_numpy(spec, t, v, batch_size) for t, v in zip(spec.outputs, values, strict=True)
    }


def _to_numpy(spec: ModelSpec, tensor: TensorSpec, value: Any, batch: int | None) -> np.ndarray:
    where = f"model '{spec.name}' output '{tensor.name}'"
    if isinstance(value, torch.Tensor):
        if tensor.datatype == "BYTES":
            raise RequestError(INTERNAL, f"{where}: BYTES output cannot be a tensor")
        array = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value, dtype=tensor.numpy_dtype)
        except (TypeError, ValueError) as exc:
            raise RequestError(
                INTERNAL, f"{where}: cannot convert to {tensor.datatype}: {exc}"
            ) from exc
    if array.dtype != tensor.numpy_dtype:
        if tensor.datatype == "BYTES" and array.dtype.kind in "SU":
            array = array.astype(object)
        else:
            raise RequestError(
                INTERNAL, f"{where} has dtype {array.dtype}, config says {tensor.datatype}"
            )
    _check_shape(where, tensor, array.shape, batch)
    return array


def _check_shape(where: str, tensor: TensorSpec, shape: tuple[int, ...], batch: int | None) -> None:
    dims = shape
    if batch is not None:
        if not shape or shape[0] != batch:
            raise RequestError(
                INTERNAL, f"{where} has shape {list(shape)}, expected batch size {batch}"
            )
        dims = shape[1:]
    if len(dims) != len(tensor.dims) or any(
        want not in (-1, got) for want, got in zip(tensor.dims, dims, strict=True)
    ):
        raise RequestError(
            INTERNAL, f"{where} has shape {list(shape)}, config dims are {list(tensor.dims)}"
        )


def _batch_size(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> int | None:
    if not spec.batched:
        return None
    return int(inputs[spec.inputs[0].name].shape[0])


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    if not array.flags.writeable or not array.flags.c_contiguous:
        # Arrays decoded straight from request bytes are read-only, which torch cannot share.
        return torch.tensor(array, device=device)
    tensor = torch.from_numpy(array)
    if device.type == "cpu":
        return tensor
    return tensor.to(device, non_blocking=True)


def shown(path: Path) -> str:
    """``path`` as error texts name it: from the model directory down (``<model>/<version>``
    or ``<model>/<version>/<file>``). Messages reach clients; where the repository lives on
    this host is not theirs to know, and the log has it."""
    depth = 3 if path.suffix else 2
    return "/".join(path.parts[-depth:])


def _model_file(spec: ModelSpec, version_dir: Path, version: int | str) -> Path:
    if not version_dir.is_dir():
        raise ModelLoadError(spec.name, version, f"no version directory {shown(version_dir)}")
    if spec.default_model_filename:
        path = version_dir / spec.default_model_filename
        if path.suffix not in (".pt", ".pt2", ".py"):
            raise ModelLoadError(spec.name, version, f"unknown model format '{path.name}'")
        if not path.is_file():
            raise ModelLoadError(spec.name, version, f"{shown(path)} does not exist")
        return path
    found = [version_dir / n for n in MODEL_FILENAMES if (version_dir / n).is_file()]
    if not found:
        raise ModelLoadError(
            spec.name,
            version,
            f"{shown(version_dir)} holds none of {', '.join(MODEL_FILENAMES)}",
        )
    if len(found) > 1:
        raise ModelLoadError(
            spec.name,
            version,
            f"{shown(version_dir)} holds {', '.join(p.name for p in found)}; "
            "keep one or set default_model_filename",
        )
    return found[0]


def _load_torch_module(spec: ModelSpec, version: str, device: str, path: Path) -> Any:
    for tensor in (*spec.inputs, *spec.outputs):
        if tensor.datatype == "BYTES":
            raise ModelLoadError(
                spec.name,
                version,
                f"'{tensor.name}' is BYTES, which {path.name} cannot take; use model.py",
            )
    if path.suffix == ".pt":
        # torch.jit is deprecated upstream but still the format most teams ship; loading is
        # rare and never concurrent with request handling, so scoping the filter here is safe.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
            module = torch.jit.load(str(path), map_location=device)
        module.eval()
        return module
    program = torch.export.load(str(path))
    if torch.device(device).type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module()


def _closed(*args: Any) -> Any:
    raise RequestError(INTERNAL, "model is unloaded")
