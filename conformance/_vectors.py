"""Golden vectors: JSON cases computed in float64 by ``haepo_core`` on NumPy.

The file format (one case per ``<name>.json``, described in docs/conformance.md): top-level
keys ``name``, ``function`` (``haepo_loss`` or ``haepo_loss_packed``), ``inputs``, ``options``
(the seven loss keywords), ``expected`` and ``tolerance`` (``rtol``, ``atol``); arrays are
``{"dtype", "shape", "data"}`` objects, non-finite floats are the strings ``"nan"``, ``"inf"``
and ``"-inf"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VECTORS_DIR", "decode_array", "encode_array", "load_vectors"]

#: Where the packaged vectors live (``haepo_conformance/vectors/*.json``).
VECTORS_DIR = Path(__file__).resolve().parent / "vectors"

_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
_OPTION_KEYS = (
    "entropy_coef",
    "kl_coef",
    "kl_estimator",
    "normalize_returns",
    "temperature",
    "length_normalize",
    "eps",
)


def _decode_scalar(x: Any) -> Any:
    if isinstance(x, str):
        if x not in _NONFINITE:
            raise ValueError(f"expected a number or one of 'nan', 'inf', '-inf', got {x!r}")
        return _NONFINITE[x]
    if isinstance(x, list):
        return [_decode_scalar(v) for v in x]
    return x


def _encode_scalar(x: Any) -> Any:
    if isinstance(x, list):
        return [_encode_scalar(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def decode_array(obj: dict[str, Any], where: str = "array") -> np.ndarray:
    """``{"dtype", "shape", "data"}`` -> NumPy array (checks that the shape matches)."""
    for key in ("dtype", "shape", "data"):
        if key not in obj:
            raise ValueError(f"{where}: expected keys dtype, shape, data; missing {key!r}")
    arr = np.asarray(_decode_scalar(obj["data"]), dtype=np.dtype(obj["dtype"]))
    shape = tuple(int(s) for s in obj["shape"])
    if arr.size == 0:
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise ValueError(f"{where}: expected shape {shape} from 'shape', got data of {arr.shape}")
    return arr


def encode_array(x: Any) -> dict[str, Any]:
    """NumPy array -> ``{"dtype", "shape", "data"}`` (non-finite floats as strings)."""
    arr = np.asarray(x)
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "data": _encode_scalar(arr.tolist())}


def _decode_nested(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _decode_nested(v) for k, v in x.items()}
    if isinstance(x, list):
        return np.asarray(_decode_scalar(x), dtype=np.float64)
    return _decode_scalar(x)


def _decode_case(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    where = path.name
    for key in ("name", "function", "inputs", "options", "expected", "tolerance"):
        if key not in raw:
            raise ValueError(f"{where}: expected a top-level key {key!r}")
    if raw["function"] not in ("haepo_loss", "haepo_loss_packed"):
        raise ValueError(
            f"{where}: function: expected 'haepo_loss' or 'haepo_loss_packed', "
            f"got {raw['function']!r}"
        )
    missing = [k for k in _OPTION_KEYS if k not in raw["options"]]
    if missing:
        raise ValueError(f"{where}: options: missing {missing}")
    inputs = {k: decode_array(v, f"{where}: inputs.{k}") for k, v in raw["inputs"].items()}
    expected = _decode_nested(raw["expected"])
    return {
        "name": raw["name"],
        "description": raw.get("description", ""),
        "function": raw["function"],
        "inputs": inputs,
        "options": dict(raw["options"]),
        "expected": expected,
        "tolerance": {
            "rtol": float(raw["tolerance"].get("rtol", 1e-10)),
            "atol": float(raw["tolerance"].get("atol", 1e-12)),
        },
        "path": str(path),
    }


def load_vectors(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """Load every ``*.json`` golden vector of ``directory`` (default: the packaged ones).

    Returns a list of dicts sorted by file name, with ``inputs`` decoded to NumPy arrays (the
    dtype each file names), ``expected`` arrays as float64 NumPy arrays (scalars stay floats),
    ``options`` (all seven loss keywords), ``tolerance`` (``rtol``, ``atol``) and ``path``.
    Raises ``ValueError`` naming the file when one does not follow the format; an absent or
    empty directory gives ``[]``.
    """
    folder = VECTORS_DIR if directory is None else Path(directory)
    if not folder.is_dir():
        return []
    cases = []
    for path in sorted(folder.glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path.name}: not valid JSON ({err})") from err
        cases.append(_decode_case(raw, path))
    return cases
