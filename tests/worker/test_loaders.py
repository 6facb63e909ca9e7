"""Loading every model format and running it on numpy batches; broken models and bad outputs."""

from __future__ import annotations

import re
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fabric.errors import INTERNAL, INVALID_ARGUMENT, RequestError
from worker.loaders import ModelLoadError, PythonModel, TorchModel, collect_outputs, load_model
from worker.model_config import parse_model_config
from worker.repository import ModelSource, scan_model

ADD_SUB = """
max_batch_size: 4
input [ { name: "A" data_type: TYPE_FP32 dims: [ 2 ] },
        { name: "B" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 2 ] },
         { name: "DIFF" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""

STRINGS = """
max_batch_size: 4
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "LENGTH" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


class AddSub(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a - b


class AddSubDict(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"DIFF": a - b, "SUM": a + b}


class OnlySum(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class AsDouble(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a.double(), b.double()


class DropsRow(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a[1:], b[1:]


def model_dir(root: Path, config: str, name: str = "m") -> Path:
    path = root / name
    (path / "1").mkdir(parents=True)
    (path / "config.pbtxt").write_text(config)
    return path


def save_torchscript(module: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))


def torchscript_source(root: Path, module: nn.Module, config: str = ADD_SUB) -> ModelSource:
    path = model_dir(root, config)
    save_torchscript(module, path / "1" / "model.pt")
    return scan_model(path)


def python_source(root: Path, code: str, config: str = STRINGS) -> ModelSource:
    path = model_dir(root, config)
    (path / "1" / "model.py").write_text(textwrap.dedent(code))
    return scan_model(path)


def read_only(array: np.ndarray) -> np.ndarray:
    """An array like the codec produces: a read-only view over request bytes."""
    return np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)


A = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
B = np.array([[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]], dtype=np.float32)


@pytest.mark.parametrize("writable", [True, False])
def test_torchscript_tuple_outputs(tmp_path: Path, writable: bool) -> None:
    model = load_model(torchscript_source(tmp_path, AddSub()), 1, "cpu")
    assert isinstance(model, TorchModel)
    assert model.version == "1"
    assert model.device == "cpu"
    a, b = (A.copy(), B.copy()) if writable else (read_only(A), read_only(B))
    out = model.execute({"A": a, "B": b})
    assert list(out) == ["SUM", "DIFF"]
    np.testing.assert_array_equal(out["SUM"], A + B)
    np.testing.assert_array_equal(out["DIFF"], A - B)
    assert out["SUM"].dtype == np.float32


def test_torchscript_dict_outputs(tmp_path: Path) -> None:
    model = load_model(torchscript_source(tmp_path, AddSubDict()), "1", "cpu")
    out = model.execute({"A": A, "B": B})
    np.testing.assert_array_equal(out["SUM"], A + B)
    np.testing.assert_array_equal(out["DIFF"], A - B)


def test_single_tensor_output(tmp_path: Path) -> None:
    config = ADD_SUB.replace(',\n         { name: "DIFF" data_type: TYPE_FP32 dims: [ 2 ] }', "")
    model = load_model(torchscript_source(tmp_path, OnlySum(), config), 1, "cpu")
    np.testing.assert_array_equal(model.execute({"A": A, "B": B})["SUM"], A + B)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (OnlySum(), "model 'm' returned one Tensor, config declares 2 outputs"),
        (AsDouble(), "model 'm' output 'SUM' has dtype float64, config says FP32"),
        (DropsRow(), "model 'm' output 'SUM' has shape [2, 2], expected batch size 3"),
    ],
)
def test_torch_outputs_not_matching_config(tmp_path: Path, module: nn.Module, message: str) -> None:
    model = load_model(torchscript_source(tmp_path, module), 1, "cpu")
    with pytest.raises(RequestError) as info:
        model.execute({"A": A, "B": B})
    assert info.value.code == INTERNAL
    assert message in info.value.message


def test_torch_model_that_raises_fails_the_request(tmp_path: Path) -> None:
    model = load_model(torchscript_source(tmp_path, AddSub()), 1, "cpu")
    with pytest.raises(RequestError) as info:
        model.execute({"A": A, "B": B[:2]})
    assert info.value.code == INTERNAL
    assert info.value.message.startswith("model 'm' failed: ")


def test_torch_export_program(tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(
        AddSub(),
        (torch.ones(2, 2), torch.ones(2, 2)),
        dynamic_shapes=({0: batch}, {0: batch}),
    )
    path = model_dir(tmp_path, ADD_SUB)
    torch.export.save(program, str(path / "1" / "model.pt2"))
    model = load_model(scan_model(path), 1, "cpu")
    assert isinstance(model, TorchModel)
    for rows in (1, 3):
        out = model.execute({"A": read_only(A[:rows]), "B": read_only(B[:rows])})
        np.testing.assert_array_equal(out["SUM"], A[:rows] + B[:rows])
        np.testing.assert_array_equal(out["DIFF"], A[:rows] - B[:rows])


PYTHON_MODEL = """
    import numpy as np
    import torch

    CALLS = []


    class Model:
        def load(self, config, device):
            self.name = config.name
            self.device = device
            CALLS.append("load")

        def execute(self, inputs):
            text = inputs["TEXT"]
            assert text.dtype == object and all(isinstance(t, bytes) for t in text.flat)
            upper = [[t.upper()] for t in text[:, 0]]
            length = torch.tensor([[len(t)] for t in text[:, 0]], dtype=torch.int32)
            return {"UPPER": upper, "LENGTH": length}

        def finalize(self):
            CALLS.append("finalize")
"""


def test_python_model_with_bytes_and_mixed_return_types(tmp_path: Path) -> None:
    model = load_model(python_source(tmp_path, PYTHON_MODEL), 1, "cpu")
    assert isinstance(model, PythonModel)
    text = np.array([[b"ab"], [b"xyz"]], dtype=object)
    out = model.execute({"TEXT": text})
    assert out["UPPER"].dtype == object
    assert out["UPPER"].tolist() == [[b"AB"], [b"XYZ"]]
    np.testing.assert_array_equal(out["LENGTH"], np.array([[2], [3]], dtype=np.int32))
    module = sys.modules[type(model._instance).__module__]
    assert module.CALLS == ["load"]
    model.close()
    assert module.CALLS == ["load", "finalize"]


def test_python_models_get_separate_modules(tmp_path: Path) -> None:
    source = python_source(tmp_path, PYTHON_MODEL)
    first = load_model(source, 1, "cpu")
    second = load_model(source, 1, "cpu")
    assert isinstance(first, PythonModel) and isinstance(second, PythonModel)
    assert type(first._instance).__module__ != type(second._instance).__module__


def test_python_model_exception_becomes_internal(tmp_path: Path) -> None:
    code = """
    class Model:
        def execute(self, inputs):
            raise ValueError("boom")
    """
    model = load_model(python_source(tmp_path, code), 1, "cpu")
    with pytest.raises(RequestError) as info:
        model.execute({"TEXT": np.array([[b"a"]], dtype=object)})
    assert info.value.code == INTERNAL
    assert info.value.message == "model 'm' failed: boom"


def test_python_model_may_choose_its_status(tmp_path: Path) -> None:
    code = """
    from fabric.errors import INVALID_ARGUMENT, RequestError

    class Model:
        def execute(self, inputs):
            raise RequestError(INVALID_ARGUMENT, "input 'TEXT': not a word")
    """
    model = load_model(python_source(tmp_path, code), 1, "cpu")
    with pytest.raises(RequestError) as info:
        model.execute({"TEXT": np.array([[b"a"]], dtype=object)})
    assert info.value.code == INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ("{'UPPER': [[b'A']]}", "returned outputs ['UPPER'], config declares ['LENGTH', 'UPPER']"),
        ("{'UPPER': [[b'A']], 'LENGTH': [[1]], 'X': 1}", "returned outputs"),
        ("([[b'A']],)", "returned 1 outputs, config declares 2"),
        ("{'UPPER': [[b'A']], 'LENGTH': [[1], [2]]}", "output 'LENGTH' has shape [2, 1]"),
        ("{'UPPER': [[b'A']], 'LENGTH': [[1, 2]]}", "config dims are [1]"),
        ("{'UPPER': [[b'A']], 'LENGTH': [['x']]}", "output 'LENGTH': cannot convert to INT32"),
        ("{'UPPER': np.array([[1.5]]), 'LENGTH': [[1]]}", "'UPPER' has dtype float64"),
        ("{'UPPER': np.array([[b'A']]), 'LENGTH': [[1]]}", None),
    ],
)
def test_python_outputs_checked_against_config(
    tmp_path: Path, result: str, message: str | None
) -> None:
    code = f"""
    import numpy as np

    class Model:
        def execute(self, inputs):
            return {result}
    """
    model = load_model(python_source(tmp_path, code), 1, "cpu")
    inputs = {"TEXT": np.array([[b"a"]], dtype=object)}
    if message is None:
        assert model.execute(inputs)["UPPER"].tolist() == [[b"A"]]
        return
    with pytest.raises(RequestError) as info:
        model.execute(inputs)
    assert info.value.code == INTERNAL
    assert "model 'm'" in info.value.message
    assert message in info.value.message


def test_model_without_batching_is_not_batch_checked() -> None:
    spec = parse_model_config(
        'input [ { name: "X" data_type: TYPE_INT64 dims: [ -1 ] } ]'
        ' output [ { name: "Y" data_type: TYPE_INT64 dims: [ -1 ] } ]',
        "m",
    )
    out = collect_outputs(spec, np.arange(5, dtype=np.int64), None)
    assert out["Y"].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("model.pt", b"not a zip archive", "model.pt: "),
        ("model.pt2", b"not a zip archive", "model.pt2: "),
        ("model.py", b"def broken(:\n", "model.py: SyntaxError"),
        ("model.py", b"x = 1\n", "defines no class 'Model'"),
        ("model.py", b"class Model:\n    pass\n", "has no execute() method"),
        (
            "model.py",
            b"class Model:\n    def load(self, c, d):\n        raise OSError('no weights')\n"
            b"    def execute(self, i):\n        return i\n",
            "model.py: OSError: no weights",
        ),
    ],
)
def test_broken_model_file(tmp_path: Path, filename: str, content: bytes, reason: str) -> None:
    path = model_dir(tmp_path, ADD_SUB)
    (path / "1" / filename).write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(scan_model(path), 1, "cpu")
    assert info.value.model == "m"
    assert info.value.version == "1"
    assert reason in str(info.value)
    assert str(info.value).startswith("cannot load model 'm' version 1: ")


def test_missing_and_ambiguous_model_files(tmp_path: Path) -> None:
    path = model_dir(tmp_path, ADD_SUB)
    source = scan_model(path)
    with pytest.raises(
        ModelLoadError, match=re.escape("holds none of model.pt, model.pt2, model.py")
    ):
        load_model(source, 1, "cpu")
    with pytest.raises(ModelLoadError, match="no version directory"):
        load_model(source, 2, "cpu")
    (path / "1" / "model.pt").write_bytes(b"")
    (path / "1" / "model.py").write_text("")
    with pytest.raises(ModelLoadError, match=re.escape("holds model.pt, model.py")):
        load_model(source, 1, "cpu")


def test_default_model_filename_picks_the_file(tmp_path: Path) -> None:
    path = model_dir(tmp_path, 'default_model_filename: "model.pt"\n' + ADD_SUB)
    save_torchscript(AddSub(), path / "1" / "model.pt")
    (path / "1" / "model.py").write_text("raise SystemExit('must not be imported')\n")
    model = load_model(scan_model(path), 1, "cpu")
    np.testing.assert_array_equal(model.execute({"A": A, "B": B})["SUM"], A + B)


def test_torch_formats_refuse_bytes_tensors(tmp_path: Path) -> None:
    path = model_dir(tmp_path, STRINGS)
    save_torchscript(OnlySum(), path / "1" / "model.pt")
    with pytest.raises(
        ModelLoadError, match=re.escape("'TEXT' is BYTES, which model.pt cannot take")
    ):
        load_model(scan_model(path), 1, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torchscript_on_cuda(tmp_path: Path) -> None:
    model = load_model(torchscript_source(tmp_path, AddSub()), 1, "cuda:0")
    out = model.execute({"A": read_only(A), "B": B.copy()})
    np.testing.assert_array_equal(out["SUM"], A + B)
