"""Read tensors out of a ``torch.save`` file without unpickling it.

Published feature-extractor weights (the FID Inception network) only exist as ``.pth`` files,
which ``torch.load`` reads by running the pickle machine. We never do that: this module walks the
pickle *opcode stream* with :func:`pickletools.genops` and interprets a small data-only subset
(dicts, lists, tuples, strings, numbers) plus exactly the references a plain tensor state dict
needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``/``_rebuild_parameter``,
``torch.<Type>Storage``). Any other global is refused with an error naming it, so nothing in the
file can run code. Both the zip format (torch >= 1.6) and the legacy sequential format are read.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from pickletools import genops
from typing import Any

import torch

from ..core.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Storage:
    dtype: torch.dtype
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Mark:
    pass


_MARK = _Mark()
_ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter")} | {("torch", n) for n in _STORAGE_DTYPES}


def _call(fn: _Global, args: tuple, path: Path) -> Any:
    if (fn.module, fn.name) == ("collections", "OrderedDict"):
        return dict(args[0]) if args else {}
    if fn.name == "_rebuild_tensor_v2":
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"{path}: a tensor refers to something that is not a storage")
        return _TensorRef(storage, int(offset), tuple(size), tuple(stride))
    if fn.name == "_rebuild_parameter":
        return args[0]
    raise CheckpointError(f"{path}: {fn.module}.{fn.name} cannot be called")


def _parse(stream: io.BufferedIOBase | io.BytesIO, path: Path, persistent: Any) -> Any:
    """Interpret one pickle as data; ``persistent`` maps a persistent id tuple to a storage."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise CheckpointError(f"{path}: malformed pickle stream (no MARK)")

    try:
        for op, arg, _pos in genops(stream):
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise CheckpointError(f"{path}: malformed pickle stream")
                return stack[0]
            if name == "MARK":
                stack.append(_MARK)
            elif name in ("EMPTY_DICT",):
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
                          "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING",
                          "SHORT_BINSTRING", "STRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
                stack.append(arg)
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr = stack.pop()
                stack.append(_Global(stack.pop(), attr))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[int(arg)])
            elif name == "BINPERSID":
                stack.append(persistent(stack.pop()))
            elif name in ("REDUCE", "NEWOBJ"):
                args = stack.pop()
                fn = stack.pop()
                if not isinstance(fn, _Global):
                    raise CheckpointError(f"{path}: malformed pickle stream (call of a non-global)")
                if (fn.module, fn.name) not in _ALLOWED:
                    raise CheckpointError(
                        f"{path}: refers to {fn.module}.{fn.name}; only plain tensor state dicts can be read "
                        "(we never unpickle files). Convert it to safetensors with a trusted tool first.")
                stack.append(_call(fn, tuple(args), path))
            elif name == "BUILD":
                stack.pop()  # instance state, e.g. a state dict's _metadata: not needed for tensors
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = pop_mark()
                stack[-1].update(zip(items[::2], items[1::2]))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            else:
                raise CheckpointError(f"{path}: unsupported pickle opcode {name}; not a plain tensor state dict")
    except CheckpointError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, struct.error) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt torch file ({type(exc).__name__}: {exc})") from exc
    raise CheckpointError(f"{path}: truncated torch file (no STOP opcode)")


def _storage_from_id(pid: Any, path: Path) -> _Storage:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _Global)):
        raise CheckpointError(f"{path}: unexpected persistent reference {pid!r}")
    kind = pid[1]
    if kind.module != "torch" or kind.name not in _STORAGE_DTYPES:
        raise CheckpointError(f"{path}: unsupported storage type {kind.module}.{kind.name}")
    return _Storage(_STORAGE_DTYPES[kind.name], str(pid[2]), int(pid[4]))


def _materialise(obj: Any, raw: dict[str, bytes], path: Path) -> Any:
    if isinstance(obj, _TensorRef):
        s = obj.storage
        data = raw.get(s.key)
        itemsize = torch.empty((), dtype=s.dtype).element_size()
        if data is None or len(data) < s.numel * itemsize:
            raise CheckpointError(f"{path}: storage {s.key} is missing or truncated")
        flat = torch.frombuffer(bytearray(data[: s.numel * itemsize]), dtype=s.dtype) if s.numel else torch.empty(
            0, dtype=s.dtype)
        try:
            return torch.as_strided(flat, obj.size, obj.stride, obj.offset).clone()
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: tensor view out of its storage ({exc})") from exc
    if isinstance(obj, dict):
        return {k: _materialise(v, raw, path) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, raw, path) for v in obj)
    return obj


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: zip file without exactly one data.pkl: not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError(f"{path}: big-endian torch files are not supported")
        obj = _parse(io.BytesIO(z.read(pkl[0])), path, lambda pid: _storage_from_id(pid, path))
        storages: dict[str, _Storage] = {}
        _collect(obj, storages)
        raw = {}
        for key in storages:
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path}: storage {member} is missing")
            raw[key] = z.read(member)
    return _materialise(obj, raw, path)


def _collect(obj: Any, out: dict[str, _Storage]) -> None:
    if isinstance(obj, _TensorRef):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, out)


def _read_legacy(path: Path) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as f:
        none = lambda pid: None  # noqa: E731 - the header pickles hold no storages
        if _parse(f, path, none) != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a torch.save file (bad magic number)")
        _parse(f, path, none)  # protocol version
        info = _parse(f, path, none)
        if isinstance(info, dict) and info.get("little_endian") is False:
            raise CheckpointError(f"{path}: big-endian torch files are not supported")
        obj = _parse(f, path, lambda pid: _storage_from_id(pid, path))
        keys = _parse(f, path, none)
        storages: dict[str, _Storage] = {}
        _collect(obj, storages)
        raw = {}
        for key in keys:
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointError(f"{path}: truncated torch file (storage {key})")
            (numel,) = struct.unpack("<q", header)
            st = storages.get(str(key))
            itemsize = torch.empty((), dtype=st.dtype).element_size() if st else 1
            if not 0 <= numel * itemsize <= size - f.tell():
                raise CheckpointError(f"{path}: storage {key} claims {numel} elements, more than the file holds")
            raw[str(key)] = f.read(numel * itemsize)
    return _materialise(obj, raw, path)


def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``-d state dict, read as data (no code in the file can run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, UnicodeDecodeError, NotImplementedError, OSError, EOFError, RuntimeError,
            ValueError, OverflowError, MemoryError, struct.error) as exc:
        # zipfile and pickletools raise many kinds of errors on damaged input; all mean the same here
        raise CheckpointError(f"{path}: truncated or corrupt torch file ({type(exc).__name__}: {exc}). "
                              "Download it again.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a flat state dict of tensors")
    return obj
