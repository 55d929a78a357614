"""One helper per idea, written once low in the tree: JSON-safe numbers (hagg_tf/jsonsafe.py),
JSON written atomically (hagg_tf.model.io.write_json_atomic), and no module importing another
module's private names."""
import ast
import json
import math
import pathlib

import numpy as np
import pytest

import hagg_tf
from hagg_tf.jsonsafe import finite_or_none, json_default, json_safe
from hagg_tf.model.io import write_json_atomic

PACKAGE_ROOT = pathlib.Path(hagg_tf.__file__).resolve().parent


def test_json_safe_gives_plain_json_types_and_null_for_missing_numbers():
    value = {"nan": math.nan, "inf": -math.inf, 3: np.float32(0.5), "n": np.int64(7),
             "flag": np.bool_(True), "array": np.array([[1.0, np.nan], [np.inf, 2.0]]),
             "tuple": (1, np.float64(2.5)), "path": pathlib.Path("a") / "b.json", "text": "x",
             "none": None}
    safe = json_safe(value)
    assert safe == {"nan": None, "inf": None, "3": 0.5, "n": 7, "flag": True,
                    "array": [[1.0, None], [None, 2.0]], "tuple": [1, 2.5],
                    "path": str(pathlib.Path("a") / "b.json"), "text": "x", "none": None}
    assert type(safe["n"]) is int and type(safe["3"]) is float and type(safe["flag"]) is bool
    json.dumps(safe, allow_nan=False)  # valid JSON: no NaN token, nothing numpy


def test_finite_or_none_and_json_default():
    assert finite_or_none(np.float32(0.25)) == 0.25 and finite_or_none(3) == 3.0
    assert [finite_or_none(x) for x in (math.nan, math.inf, -math.inf, None)] == [None] * 4
    text = json.dumps({"a": np.float64(np.nan), "b": np.arange(3), "c": pathlib.Path("p")},
                      default=json_default)
    # np.float64 is a float: json writes it itself (NaN token) unless json_safe ran first.
    assert json.loads(text)["b"] == [0, 1, 2] and json.loads(text)["c"] == "p"
    with pytest.raises(TypeError, match="not JSON-serialisable: object"):
        json_default(object())


def test_write_json_atomic_formats_as_asked_and_refuses_nan(tmp_path):
    value = {"b": 1, "a": [1.5, "é"]}
    path = write_json_atomic(tmp_path / "sub" / "x.json", value)
    assert path.read_bytes() == (json.dumps(value, indent=2) + "\n").encode()
    write_json_atomic(path, value, indent=1, sort_keys=True, ensure_ascii=False,
                      trailing_newline=False)
    assert path.read_bytes() == json.dumps(value, indent=1, sort_keys=True,
                                           ensure_ascii=False).encode()
    write_json_atomic(path, {"x": np.float32(0.5), "y": np.arange(2)})
    assert json.loads(path.read_text()) == {"x": 0.5, "y": [0, 1]}
    with pytest.raises(ValueError):
        write_json_atomic(path, {"x": math.nan})
    assert json.loads(path.read_text()) == {"x": 0.5, "y": [0, 1]}  # the old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary left
    write_json_atomic(path, {"x": math.nan}, allow_nan=True, trailing_newline=False)
    assert path.read_text() == '{\n  "x": NaN\n}'


def _definitions(root: pathlib.Path):
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(root), node.name


def test_json_safe_numbers_and_json_writing_are_defined_once():
    # The names the repeats had before they were made one (json_safe, _json_number,
    # _nan_to_none, _json_default, finite_or_none, _finite_or_none, _write_json,
    # write_json_atomic).
    ideas = {"json_safe", "json_number", "nan_to_none", "json_default", "finite_or_none",
             "write_json", "write_json_atomic"}
    found = sorted((str(path), name) for path, name in _definitions(PACKAGE_ROOT)
                   if name.lstrip("_") in ideas)
    assert found == [("jsonsafe.py", "finite_or_none"), ("jsonsafe.py", "json_default"),
                     ("jsonsafe.py", "json_safe"), ("model/io.py", "write_json_atomic")]


def private_imports(root: pathlib.Path = PACKAGE_ROOT) -> list[str]:
    """``file:line: module._name`` for every import of another module's private name."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or
                                                     (node.module or "").startswith("hagg_tf")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: "
                                     f"{node.module}.{alias.name}")
    return found


def test_no_module_imports_a_private_name_of_another():
    assert private_imports() == []


def test_the_check_sees_a_private_import(tmp_path):
    (tmp_path / "bad.py").write_text("from hagg_tf.estimation.characterize import (\n"
                                     "    report, _hidden)\nfrom .io import __all__\n")
    assert private_imports(tmp_path) == ["bad.py:1: hagg_tf.estimation.characterize._hidden"]


def test_read_json_record_names_the_file_and_the_format(tmp_path):
    from hagg_tf.data.manifest import DatasetError
    from hagg_tf.model.io import read_json_record, write_json_atomic

    good = write_json_atomic(tmp_path / "good.json", {"format": "hagg_tf test", "value": 1})
    assert read_json_record(good, "hagg_tf test", "test file") == {"format": "hagg_tf test",
                                                                   "value": 1}
    cases = {"other.json": '{"format": "something else"}', "list.json": "[1, 2]",
             "broken.json": '{"format": ', "binary.json": b"\xff\xfe"}
    for name, content in cases.items():
        path = tmp_path / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        with pytest.raises(DatasetError, match=f"{path}: (unreadable|not a) test file"):
            read_json_record(path, "hagg_tf test", "test file", error=DatasetError)
