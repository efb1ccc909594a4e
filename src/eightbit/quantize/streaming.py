"""Load a float safetensors checkpoint larger than memory straight into 8-bit, tensor by tensor.

``load_quantized_from_float(checkpoint, model_factory_or_config, config)`` builds the model with its
parameters on the meta device (buffers are computed for real, so rotary ``inv_freq`` or ``position_ids``
are correct), reads the checkpoint one tensor at a time with plain file reads straight into the tensor's
own buffer, and replaces each linear layer by ``config.make_linear(...)`` as soon as its weight has
arrived (biases are read first). Peak memory stays near the final 8-bit footprint plus one float tensor.

Why not ``safetensors.safe_open``: it memory-maps the file, and every mapped page it touches counts in
the process's resident memory until the file is closed, on top of the copy ``get_tensor`` makes. Reading
at the header's offsets keeps exactly one float copy of one tensor alive at a time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .._memory import empty
from .base import QuantConfig
from .convert import as_linear, is_linear_like, put_layer

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MB = 1 << 20
# safetensors dtype codes (https://github.com/huggingface/safetensors, format spec)
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# keys transformers always drops (old checkpoints kept these buffers persistent)
_ALWAYS_IGNORED = (r"rotary_emb\.inv_freq$", r"(^|\.)position_ids$")
_PREFIXES = ("model", "transformer", "module")


# ---------------------------------------------------------------------------------------------- reading
@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: where its bytes are (absolute offsets) and what they hold."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | os.PathLike) -> list[TensorEntry]:
    """Parse the header of safetensors file ``path`` (no tensor data is read).

    Raises FileNotFoundError if absent and ValueError naming the file (and tensor) when the header is
    malformed, a dtype is unknown, a size does not match the shape, or the file is truncated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated ({size} bytes): not a safetensors file")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 * _MB:
            raise ValueError(f"{path}: header of {n} bytes does not fit in the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: safetensors header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header must be a JSON object")
    base, entries = 8 + n, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: tensor {name!r} has a malformed or unsupported header entry {info!r}") from e
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * dtype.itemsize or begin < 0:
            raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes, shape {shape} {dtype} needs {numel * dtype.itemsize}")
        if base + end > size:
            raise ValueError(f"{path} is truncated: tensor {name!r} ends at byte {base + end} but the file has {size} bytes")
        entries.append(TensorEntry(name, path, dtype, shape, base + begin, base + end))
    return entries


def read_tensor(fh: Any, entry: TensorEntry, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Read ``entry`` from the open binary file ``fh`` into a fresh CPU tensor (one copy, no mmap; huge pages from
    4 MiB), or into the front of ``scratch`` (a uint8 buffer of at least ``entry.nbytes``), which the result then
    aliases."""
    buf = empty((entry.nbytes,), torch.uint8) if scratch is None else scratch[: entry.nbytes]
    view, pos = memoryview(buf.numpy()), 0
    fh.seek(entry.start)
    while pos < entry.nbytes:
        got = fh.readinto(view[pos:])
        if not got:
            raise ValueError(f"{entry.file} is truncated: tensor {entry.name!r} ended after {pos} of {entry.nbytes} bytes")
        pos += got
    return buf.view(entry.dtype).reshape(entry.shape)


def checkpoint_entries(checkpoint: str | os.PathLike) -> list[TensorEntry]:
    """Every tensor of a single-file or sharded safetensors checkpoint.

    ``checkpoint``: a ``.safetensors`` file, an index JSON (``weight_map``: name -> shard file), or a
    directory holding ``model.safetensors.index.json`` or ``model.safetensors``. Raises
    FileNotFoundError for a missing file or shard, ValueError for an inconsistent index."""
    path = Path(checkpoint)
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            path = path / INDEX_NAME
        elif (path / SINGLE_NAME).is_file():
            path = path / SINGLE_NAME
        else:
            raise FileNotFoundError(f"{path} holds neither {INDEX_NAME} nor {SINGLE_NAME}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix != ".json":
        return read_header(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a safetensors index (expected JSON with a 'weight_map' object): {e}") from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{path}: 'weight_map' must map tensor names to shard file names")
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    entries = []
    for shard, names in by_shard.items():
        file = path.parent / shard
        if not file.is_file():
            raise FileNotFoundError(f"shard {file} (holding tensor {names[0]!r}, listed in {path}) not found")
        found = {e.name: e for e in read_header(file)}
        for name in names:
            if name not in found:
                raise ValueError(f"{path} lists tensor {name!r} in {file}, but that file does not hold it")
            entries.append(found[name])
    return entries


# ---------------------------------------------------------------------------------------------- skeleton
@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Within this context new module parameters are moved to the meta device as they are registered;
    buffers stay real, so values computed in ``__init__`` (rotary ``inv_freq``, position ids) are right.
    ``torch.empty`` for a parameter is never touched, so it costs no resident memory. Not thread-safe."""
    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def skip_hf_init() -> Any:
    """transformers' ``no_init_weights`` context where it exists (a no-op context otherwise): the random
    initialization of a model whose parameters are all about to be loaded is wasted work, ~30 ms for MiniLM on
    the meta device (``normal_`` there runs torch's Python decompositions)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def tie_hf_weights(model: nn.Module) -> nn.Module:
    """Tie a transformers model's shared weights (``lm_head`` and the input embeddings), which its skipped
    initialization (:func:`skip_hf_init`) would otherwise have done."""
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
    return model


def build_empty_model(model_factory_or_config: Any) -> nn.Module:
    """The model with parameters on the meta device: from a zero-argument callable, or from a
    transformers ``PretrainedConfig``: the class its ``architectures`` names (what ``save_pretrained`` wrote, so
    the checkpoint's names match: a BERT encoder's ``BertModel``, not a causal LM head around it), else
    ``AutoModelForCausalLM.from_config``, else ``AutoModel``."""
    if callable(model_factory_or_config):
        with params_on_meta():
            model = model_factory_or_config()
    else:
        try:
            from transformers import AutoModel, AutoModelForCausalLM, PretrainedConfig
        except ImportError:  # pragma: no cover - transformers is optional
            PretrainedConfig = None
        if PretrainedConfig is None or not isinstance(model_factory_or_config, PretrainedConfig):
            raise TypeError("model_factory_or_config must be a zero-argument callable returning an nn.Module "
                            f"or a transformers PretrainedConfig, got {type(model_factory_or_config).__name__}")
        import transformers

        config = model_factory_or_config
        named = [getattr(transformers, a, None) for a in (getattr(config, "architectures", None) or ())]
        named = [c for c in named if isinstance(c, type) and issubclass(c, nn.Module)]
        with params_on_meta(), skip_hf_init():
            if named:
                model = named[0](config)
            else:
                try:
                    model = AutoModelForCausalLM.from_config(config)
                except ValueError:
                    model = AutoModel.from_config(config)
            tie_hf_weights(model)
        model.eval()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory_or_config() must return an nn.Module, got {type(model).__name__}")
    return model


# ---------------------------------------------------------------------------------------------- plan
@dataclasses.dataclass
class _Slot:
    """One tensor object of the model (tied names share a slot) and every (module, attribute) holding it."""

    names: list[str]
    holders: list[tuple[nn.Module, str]]
    tensor: torch.Tensor
    is_param: bool
    persistent: bool
    loaded: bool = False


def _slots(model: nn.Module) -> dict[str, _Slot]:
    slots: dict[int, _Slot] = {}
    by_name: dict[str, _Slot] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
            for attr, t in table.items():
                if t is None:
                    continue
                full = f"{mname}.{attr}" if mname else attr
                persistent = kind == "param" or attr not in module._non_persistent_buffers_set
                slot = slots.setdefault(id(t), _Slot([], [], t, kind == "param", persistent))
                if full not in by_name:
                    slot.names.append(full)
                    slot.holders.append((module, attr))
                    by_name[full] = slot
    return by_name


def _key_mapper(ckpt_keys: list[str], expected: set[str], model: nn.Module) -> Callable[[str], str]:
    """Pick the prefix rule (none, strip 'p.', add 'p.') under which most checkpoint keys name model tensors."""
    prefixes = dict.fromkeys([getattr(model, "base_model_prefix", "") or "", *_PREFIXES])
    rules: list[Callable[[str], str]] = [lambda k: k]
    for p in filter(None, prefixes):
        rules.append(lambda k, p=p: k[len(p) + 1:] if k.startswith(p + ".") else k)
        rules.append(lambda k, p=p: f"{p}.{k}")
    return max(rules, key=lambda rule: sum(rule(k) in expected for k in ckpt_keys))


def _ignored_unexpected(model: nn.Module) -> re.Pattern[str]:
    patterns = list(_ALWAYS_IGNORED) + list(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# ---------------------------------------------------------------------------------------------- stats
@dataclasses.dataclass
class StreamingLoadStats:
    """What a streaming load read and kept. Sizes in bytes; ``peak_rss_growth_bytes`` is set by
    ``demo_streaming_load`` (growth of the process's peak resident memory over its resident memory
    just before the load), else None. ``eightbit.quantize.streaming_demo`` measures it in a fresh process."""

    checkpoint_bytes: int = 0
    bytes_by_dtype: dict[str, int] = dataclasses.field(default_factory=dict)
    num_tensors: int = 0
    num_quantized_layers: int = 0
    largest_tensor_bytes: int = 0
    footprint_bytes: int = 0
    seconds: float = 0.0
    peak_rss_growth_bytes: int | None = None

    @property
    def limit_bytes(self) -> int:
        """The memory budget: final footprint + largest float tensor + 64 MB."""
        return self.footprint_bytes + self.largest_tensor_bytes + 64 * _MB

    def summary(self) -> str:
        """``loaded 1.58 GB of fp32 weights with a peak of 0.46 GB (final 8-bit footprint 0.42 GB, largest
        tensor 0.02 GB, bound 0.50 GB)``: GB = 1e9 bytes; the bound is ``limit_bytes``."""
        kinds = "/".join(k for k, _ in sorted(self.bytes_by_dtype.items(), key=lambda kv: -kv[1])) or "no"
        peak = "unmeasured" if self.peak_rss_growth_bytes is None else f"{self.peak_rss_growth_bytes / 1e9:.2f} GB"
        return (f"loaded {self.checkpoint_bytes / 1e9:.2f} GB of {kinds} weights with a peak of {peak} "
                f"(final 8-bit footprint {self.footprint_bytes / 1e9:.2f} GB, largest tensor "
                f"{self.largest_tensor_bytes / 1e9:.2f} GB, bound {self.limit_bytes / 1e9:.2f} GB)")

    def __str__(self) -> str:
        return self.summary()


_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


# ---------------------------------------------------------------------------------------------- loading
def load_quantized_from_float(
    checkpoint: str | os.PathLike,
    model_factory_or_config: Any,
    config: QuantConfig,
    *,
    keep_non_linear_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build a model and fill it from a float safetensors ``checkpoint``, quantizing every linear layer
    (``nn.Linear`` and transformers ``Conv1D``, minus ``config.skip_modules``) as its weight arrives.

    ``checkpoint``: a ``.safetensors`` file, a sharded index JSON, or a directory holding either
    (``save_pretrained`` output; keys may carry or lack the base-model prefix such as ``model.``).
    ``model_factory_or_config``: a zero-argument callable returning the float model (its parameters are
    never allocated) or a transformers ``PretrainedConfig``. Tensors may be fp32/fp16/bf16; layers that
    are not quantized keep the checkpoint dtype, or ``keep_non_linear_dtype`` (float tensors only).
    Tied weights load once; buffers absent from the checkpoint keep the values computed at build time.
    Returns the model with ``model._eightbit_config = config`` (``Int8StaticConfig`` models still need
    ``eightbit.calibrate``). Peak extra memory: final footprint + one float tensor + quantizer scratch.

    Raises TypeError for wrong argument types; FileNotFoundError for a missing file or shard; ValueError
    naming the tensor and file for a missing, unexpected, mis-shaped or truncated tensor.
    """
    return _load(checkpoint, model_factory_or_config, config, keep_non_linear_dtype)[0]


@torch.no_grad()
def _load(checkpoint, model_factory_or_config, config, keep_dtype) -> tuple[nn.Module, StreamingLoadStats]:
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be an eightbit QuantConfig (Int8Config, FP8Config, ...), got {type(config).__name__}")
    if keep_dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"keep_non_linear_dtype must be None, torch.float32, torch.float16 or torch.bfloat16, got {keep_dtype!r}")
    stats, t0 = StreamingLoadStats(), time.perf_counter()
    entries = checkpoint_entries(checkpoint)
    model = build_empty_model(model_factory_or_config)
    slots = _slots(model)

    if is_linear_like(model):
        raise ValueError("the model itself is a linear layer: build a model that contains it")
    # linear layers to quantize, by module object (a shared module is quantized once): (module, parents)
    targets: dict[int, tuple[nn.Module, list[tuple[nn.Module, str, str]]]] = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        for attr, module in parent._modules.items():
            name = f"{pname}.{attr}" if pname else attr
            if module is not None and is_linear_like(module) and not config.is_skipped(name):
                targets.setdefault(id(module), (module, []))[1].append((parent, attr, name))

    # --- validate everything before reading any tensor data
    expected = {n for n, s in slots.items() if s.persistent}
    to_model = _key_mapper([e.name for e in entries], expected, model)
    ignored = _ignored_unexpected(model)
    plan: list[tuple[TensorEntry, _Slot]] = []
    seen: set[int] = set()
    for e in entries:
        key = to_model(e.name)
        slot = slots.get(key)
        if slot is None:
            if ignored.search(key):
                continue
            raise ValueError(f"unexpected tensor {e.name!r} in {e.file}: the model has no parameter or buffer {key!r}")
        if e.shape != tuple(slot.tensor.shape):
            raise ValueError(f"tensor {e.name!r} in {e.file} has shape {e.shape}, the model expects {tuple(slot.tensor.shape)} for {key!r}")
        if slot.tensor.is_floating_point() != e.dtype.is_floating_point or (not e.dtype.is_floating_point and e.dtype != slot.tensor.dtype):
            raise ValueError(f"tensor {e.name!r} in {e.file} has dtype {e.dtype}, the model expects {slot.tensor.dtype} for {key!r}")
        if id(slot) not in seen:  # a tied weight saved under several names is read once
            seen.add(id(slot))
            plan.append((e, slot))
    where = entries[0].file if len({e.file for e in entries}) == 1 else Path(checkpoint)
    for name, slot in slots.items():
        if id(slot) not in seen and slot.is_param:
            raise ValueError(f"missing tensor {name!r}: not found in checkpoint {where}")

    # --- biases (and any other non-weight parameter of a target) first, so each weight completes its layer
    def is_companion(slot: _Slot) -> bool:
        return any(id(m) in targets and attr != "weight" for m, attr in slot.holders)

    order = sorted(plan, key=lambda es: (not is_companion(es[1]), str(es[0].file), es[0].start))
    pending = {mid: {a for a, t in m._parameters.items() if t is not None} for mid, (m, _) in targets.items()}
    handles: dict[Path, Any] = {}
    # A weight that completes its layer(s) is quantized as soon as it is read, so its float copy is read into one
    # reused scratch buffer: no fresh pages to fault in (MiniLM: 45 % of the bytes), no heap holes to trim
    scratch: torch.Tensor | None = None
    freed = 0  # bytes of fresh temporaries freed since the last trim
    try:
        for e, slot in order:
            fh = handles.get(e.file) or handles.setdefault(e.file, open(e.file, "rb", buffering=0))
            temporary = _completes_targets(slot, targets, pending)
            if temporary and (scratch is None or scratch.numel() < e.nbytes):
                scratch = torch.empty(e.nbytes, dtype=torch.uint8)
            tensor = read_tensor(fh, e, scratch if temporary else None)
            stats.num_tensors += 1
            stats.checkpoint_bytes += e.nbytes
            label = _SHORT.get(e.dtype, str(e.dtype).removeprefix("torch."))
            stats.bytes_by_dtype[label] = stats.bytes_by_dtype.get(label, 0) + e.nbytes
            if e.dtype.is_floating_point:
                stats.largest_tensor_bytes = max(stats.largest_tensor_bytes, e.nbytes)
            _place(slot, tensor, targets, pending, config, keep_dtype, stats)
            del tensor
            if temporary and _aliases(slot, targets, scratch):
                scratch = None  # a layer kept the float weight itself: the next temporary gets a new buffer
            if temporary or is_companion(slot):
                freed += e.nbytes  # a quantized weight: its quantizer's chunks, at most its size, were freed
            # hand freed pages back every TRIM_BYTES, so the peak stays within limit_bytes (after every layer, the
            # trims took 4 ms of MiniLM's 65 ms streaming load)
            if freed >= TRIM_BYTES:
                _release_freed_memory()
                freed = 0
        _release_freed_memory()
    finally:
        for fh in handles.values():
            fh.close()

    _fill_meta_buffers(model, slots)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"tensors {leftover[:5]} are still on the meta device after loading {where}")
    model._eightbit_config = config
    from .convert import memory_footprint

    stats.footprint_bytes = memory_footprint(model)
    stats.seconds = time.perf_counter() - t0
    return model, stats


TRIM_BYTES = 16 << 20  # freed temporaries (quantizer chunks, biases of quantized layers) between two malloc_trim calls


def _completes_targets(slot: _Slot, targets, pending) -> bool:
    """Whether every holder of ``slot`` is a target layer waiting only for this tensor (it is then quantized
    as soon as it is placed, and the float tensor is garbage)."""
    return all(id(m) in targets and pending[id(m)] == {attr} for m, attr in slot.holders)


def _aliases(slot: _Slot, targets, scratch: torch.Tensor) -> bool:
    """Whether a layer that replaced one of ``slot``'s holders keeps a tensor in ``scratch``'s memory."""
    base = scratch.untyped_storage().data_ptr()
    for module, _ in slot.holders:
        for parent, attr, _ in targets[id(module)][1]:
            new = getattr(parent, attr)
            for t in list(new.parameters()) + list(new.buffers()):
                if not t.is_meta and t.untyped_storage().data_ptr() == base:
                    return True
    return False


def _place(slot: _Slot, tensor: torch.Tensor, targets, pending, config: QuantConfig, keep_dtype, stats) -> None:
    """Put one loaded tensor into every holder; quantize each target layer it completes."""
    slot.loaded = True
    shared: torch.Tensor | None = None
    for module, attr in slot.holders:
        if id(module) in targets and attr in pending[id(module)]:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
            pending[id(module)].discard(attr)
            if not pending[id(module)]:
                _quantize_target(module, targets[id(module)][1], config)
                stats.num_quantized_layers += 1
            continue
        if shared is None:
            shared = tensor.to(keep_dtype) if keep_dtype is not None and tensor.is_floating_point() else tensor
            if slot.is_param:
                shared = nn.Parameter(shared, requires_grad=slot.tensor.requires_grad)
        (module._parameters if slot.is_param else module._buffers)[attr] = shared


_LIBC: Any = None


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``). Float buffers freed between int8
    allocations leave holes that glibc keeps resident; without this the peak grows with the checkpoint."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)


def _quantize_target(module: nn.Module, places: list[tuple[nn.Module, str, str]], config: QuantConfig) -> None:
    """Replace ``module`` (its float weight now loaded) by ``config.make_linear`` in every parent holding it,
    then put its meta placeholders back so the float tensors are freed."""
    new = config.make_linear(as_linear(module), places[0][2])
    for parent, attr, _ in places:
        put_layer(parent, attr, new)
    for attr, t in module._parameters.items():
        if t is not None:
            module._parameters[attr] = nn.Parameter(t.to("meta"), requires_grad=False)


def _fill_meta_buffers(model: nn.Module, slots: dict[str, _Slot]) -> None:
    """Recompute buffers left on the meta device (a factory that built on meta itself): transformers
    models re-run ``_init_weights`` on the owning module when that module has no parameters of its own
    (rotary embeddings); anything else raises ValueError naming the buffer."""
    for name, slot in slots.items():
        if slot.is_param or slot.loaded or not slot.tensor.is_meta:
            continue
        module, attr = slot.holders[0]
        init = getattr(model, "_init_weights", None)
        if init is None or any(p is not None for p in module._parameters.values()):
            raise ValueError(f"buffer {name!r} is on the meta device and not in the checkpoint: build it on CPU "
                             "(eightbit builds parameters on meta itself; do not use a meta-device factory)")
        for m, a in slot.holders:
            m._buffers[a] = torch.empty_like(slot.tensor, device="cpu")
        init(module)


# ---------------------------------------------------------------------------------------------- measuring
def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (VmHWM) to its current value (Linux >= 4.0);
    False where that is not possible, and then the peak includes earlier history."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident memory of this process in bytes, from /proc/self/status (VmRSS, VmHWM)."""
    return _proc_status_bytes("VmRSS"), _proc_status_bytes("VmHWM")


def demo_streaming_load(
    checkpoint: str | os.PathLike,
    model_factory_or_config: Any,
    config: QuantConfig,
    *,
    keep_non_linear_dtype: torch.dtype | None = None,
    print_fn: Callable[[str], Any] | None = print,
) -> tuple[nn.Module, StreamingLoadStats]:
    """``load_quantized_from_float`` that also measures the growth of peak resident memory over the
    resident memory just before the load, and prints ``stats.summary()``
    ("loaded N GB of fp32 weights with a peak of M GB ...") through ``print_fn`` (None: silent).
    Linux only for the peak figure (``/proc``); elsewhere ``peak_rss_growth_bytes`` stays None."""
    try:
        reset_ok = reset_peak_rss()
        before = rss_bytes()[0]
    except OSError:
        reset_ok, before = False, None
    model, stats = _load(checkpoint, model_factory_or_config, config, keep_non_linear_dtype)
    if before is not None and reset_ok:
        stats.peak_rss_growth_bytes = max(0, rss_bytes()[1] - before)
    if print_fn is not None:
        print_fn(stats.summary())
    return model, stats
