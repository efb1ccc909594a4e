"""Case "decode": token-by-token generation's matmuls, M = 1, 2, 4, 8 rows against 4096x4096 weights, in two
regimes (issue 19, item 1):

* hot: one layer called again and again (its 16 MB int8 weight stays in the 32 MB L3; fp32's 64 MB does not);
* cold: a stack of distinct layers run in sequence as a model would (32 layers, 512 MB of int8 weights, far beyond
  L3; the quick run uses 4), and three LLaMA-7B MLP blocks (gate and up 4096 -> 11008, down 11008 -> 4096; 406 MB
  int8; full run only).

GB/s: weight bytes read per call / time. Floor (cold): a row of its own, timed in the same interleaved loop: an amax
over one int8-sized buffer per layer (reads only, unlike the copy bandwidth of the other cases). Peers: torch fp32
``nn.Linear`` and ``torch.ao`` dynamic int8 (same weights); ONNX Runtime's dynamic int8 MatMul where onnxruntime is
installed; llama.cpp's Q8_0 matmul through ggml where ``ggml-python`` is installed (the ``bench`` extra: it builds
ggml from source with the machine's compiler and ``-march=native``, a few minutes once).
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from .common import Built, Context, Impl, Row, Unavailable, measure

K = N = 4096


def _stack(shapes: list[tuple[int, int]], seed: int) -> list[nn.Linear]:
    """float32 ``nn.Linear`` layers of the given (in, out) shapes, random weights of a trained model's scale."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for k, n in shapes:
        lin = nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, k, generator=g) * 0.02)
        layers.append(lin.eval())
    return layers


def _chain(modules, layers, xs):
    """Each module (built from the float layer beside it) on the input of that layer's width (``xs``: in_features ->
    [M, in_features]): the same matmuls as running them in sequence, without one layer's outliers steering the next."""
    pairs = [(module, xs[lin.in_features]) for module, lin in zip(modules, layers)]

    def fn():
        with torch.no_grad():
            for module, x in pairs:
                module(x)
    return Built(fn)


def _eightbit(layers, xs) -> Built:
    from eightbit.nn import Linear8bitLt

    return _chain([Linear8bitLt.from_linear(lin, threshold=6.0) for lin in layers], layers, xs)


def _torch_ao(layers, xs) -> Built:
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise Unavailable("torch.ao.quantization is not available") from e
    return _chain([quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8) for lin in layers], layers, xs)


def _onnxruntime(layers, xs) -> Built:
    from .case_linear import ort_dynamic_int8_session  # one ORT session per layer, built as in the linear case

    sessions = [ort_dynamic_int8_session(lin, xs[lin.in_features], spinning=False) for lin in layers]
    return Built(lambda: [s() for s in sessions])


class _GgmlQ8:
    """llama.cpp's Q8_0 matmul (ggml, the ``ggml-python`` bindings): every layer's weight quantized to Q8_0 (blocks
    of 32 int8 with an fp16 scale, 34 bytes per 32 weights), one graph of ``ggml_mul_mat`` nodes on the fp32 input
    (ggml quantizes the activations to Q8_0 itself), computed with the same thread count per call, as llama.cpp
    runs one graph per token. The context (weights included) is freed with this object."""

    def __init__(self, layers, xs: dict[int, torch.Tensor]):
        import ggml

        self._ggml = ggml
        m = next(iter(xs.values())).shape[0]
        size = (sum(lin.weight.numel() * 34 // 32 + lin.out_features * m * 4 for lin in layers)
                + sum(x.numel() * 4 for x in xs.values()) + 64 * 2**20)
        self._ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=size, mem_buffer=None, no_alloc=False))
        if not self._ctx:
            raise Unavailable("ggml_init could not allocate the weights")
        self._graph = ggml.ggml_new_graph(self._ctx)
        inputs = {}
        for k, x in xs.items():
            inputs[k] = ggml.ggml_new_tensor_2d(self._ctx, ggml.GGML_TYPE_F32, k, m)
            ctypes.memmove(ggml.ggml_get_data(inputs[k]), x.contiguous().data_ptr(), x.numel() * 4)
        for lin in layers:
            k, n = lin.in_features, lin.out_features
            w = lin.weight.detach().float().contiguous()
            wt = ggml.ggml_new_tensor_2d(self._ctx, ggml.GGML_TYPE_Q8_0, k, n)
            ggml.ggml_quantize_chunk(ggml.GGML_TYPE_Q8_0, ctypes.cast(w.data_ptr(), ctypes.POINTER(ctypes.c_float)),
                                     ggml.ggml_get_data(wt), 0, n, k, None)
            ggml.ggml_build_forward_expand(self._graph, ggml.ggml_mul_mat(self._ctx, wt, inputs[k]))
        # plan once with a work buffer of our own: ggml_graph_compute_with_ctx would carve a new one out of the
        # context on every call until the context is full
        self._plan = ggml.ggml_graph_plan(self._graph, torch.get_num_threads(), None)
        self._work = (ctypes.c_uint8 * max(1, self._plan.work_size))()
        self._plan.work_data = ctypes.cast(self._work, ctypes.POINTER(ctypes.c_uint8))

    def __call__(self) -> None:
        self._ggml.ggml_graph_compute(self._graph, ctypes.byref(self._plan))

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            self._ggml.ggml_free(self._ctx)
            self._ctx = None


def _read_floor(layers) -> Built:
    """The floor, timed in the same interleaved loop as the implementations (the VM's memory bandwidth moves by
    ~30 % between minutes, so a probe measured once beforehand misplaced it): an amax over int32 views of one
    int8-sized buffer per layer, torch's fastest read-only pass over the same number of bytes."""
    bufs = [torch.randint(-2**31, 2**31 - 1, (-(-lin.weight.numel() // 4),), dtype=torch.int32) for lin in layers]
    return Built(lambda: [b.amax() for b in bufs])


FLOOR = "read-only floor: amax over the int8 bytes"


def _ggml_q8_0(layers, xs) -> Built:
    try:
        import ggml  # noqa: F401
    except ImportError as e:
        raise Unavailable("ggml-python (llama.cpp's ggml) is not installed") from e
    return Built(_GgmlQ8(layers, xs))


# gate and up projections 4096 -> 11008, down 11008 -> 4096: one LLaMA-7B MLP block
LLAMA_MLP = [(4096, 11008), (4096, 11008), (11008, 4096)]


def run(ctx: Context) -> list[Row]:
    """The regimes at M = 1, 2, 4, 8 (quick: M = 1, no LLaMA stack), as result rows; the cold rows carry the ratio to
    the read-only floor row measured beside them."""
    regimes = [(f"{K}x{N}, hot, 1 layer(s)", [(K, N)]),
               (f"{K}x{N}, cold, {4 if ctx.quick else 32} layer(s)", [(K, N)] * (4 if ctx.quick else 32))]
    if not ctx.quick:
        regimes.append(("LLaMA-7B MLP gate/up/down 4096->11008->4096, cold, 3 blocks", LLAMA_MLP * 3))
    rows: list[Row] = []
    for name, shapes in regimes:
        layers = _stack(shapes, seed=1)
        cold = ", cold, " in name
        for m in ((1,) if ctx.quick else (1, 2, 4, 8)):
            xs = {k: torch.randn(m, k, generator=torch.Generator().manual_seed(m)) for k in {k for k, _ in shapes}}
            impls = [Impl("eightbit Linear8bitLt", lambda: _eightbit(layers, xs)),
                     Impl("torch fp32 nn.Linear", lambda: _chain(layers, layers, xs)),
                     Impl("torch.ao dynamic int8", lambda: _torch_ao(layers, xs)),
                     Impl("onnxruntime dynamic int8", lambda: _onnxruntime(layers, xs)),
                     Impl("llama.cpp ggml Q8_0", lambda: _ggml_q8_0(layers, xs))]
            if cold:
                impls.append(Impl(FLOOR, lambda: _read_floor(layers)))
            int8_bytes = sum(k * n for k, n in shapes)
            got = measure(ctx, "decode", f"{name}, M={m}", impls, bytes_per_call=int8_bytes)
            floor = next((r for r in got if r.impl == FLOOR and r.median_ms is not None), None)
            for row in got:
                if row.median_ms is not None:  # per layer, so the regimes compare directly
                    row.extra["ms_per_layer"] = row.median_ms / len(shapes)
                    if floor is not None:
                        row.floor_ms, row.x_floor = floor.median_ms, row.median_ms / floor.median_ms
                rows.append(row)
    return rows
