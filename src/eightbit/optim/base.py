"""`Optimizer8bit`: the one base class of every eightbit optimizer (8-bit and 32-bit state).

A subclass names its update rule (``update_rule``, a rule of `eightbit.functional.optimizer`, whose op runs the
step: block-wise dequantize -> 32-bit update -> requantize, natively on CPU), its state names and signedness
(``state_spec``) and its scalar hyperparameters per step (``hyper``). The base class owns everything else:
state creation (one method), percentile clipping, update-norm capping (max_unorm, as
in bitsandbytes), non-finite gradient policy, per-parameter overrides via `GlobalOptimManager`,
bf16/fp16 parameters (update in fp32, written back rounded), float64 parameters (update and 32-bit
states in float64), DTensor parameters (local shards) and
a state_dict made of plain tensors and numbers (safetensors-friendly).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Iterable

import torch

from .._checks import check_choice, check_number
from ..functional.blockwise import VALID_BLOCKSIZES, check_blocksize, dequantize_blockwise, quantize_blockwise
from ..functional.codes import binary_codebook, codebook, dynamic_codebook
from ..functional.optimizer import (WD_DECOUPLED, WD_L2, WD_NONE, OptimHyper, check_update_many, compute_dtype,
                                    dispatch_update_many, optimizer_update, optimizer_update_norm)
from ..functional.rounding import step_seed
from . import paging
from .job import Job, Plan, all_finite, local_tensor, shard_groups, sum_over
from .manager import GlobalOptimManager
from .state import shared_code, slot, translate_state

__all__ = ["Optimizer8bit", "bit_variants", "WD_NONE", "WD_L2", "WD_DECOUPLED"]

NONFINITE_CHOICES = ("skip_block", "skip", "raise", "propagate")
# state_code -> (signed, device) -> Codebook of the 8-bit states
STATE_CODES = {"binary": binary_codebook, "dynamic": dynamic_codebook}


def _check_entry(where: str, name: str, t: Any, dtype: torch.dtype, shape: tuple) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{where}[{name!r}] must be {dtype} of shape {shape} for this parameter, got {got}")


def _state_code(config: dict[str, Any], signed: bool) -> str:
    """The code map name of a state: ``state_code``, with "auto" resolved (see Optimizer8bit)."""
    code = config["state_code"]
    if code != "auto":
        return code
    return "binary" if signed or config["stochastic_rounding"] else "dynamic"


class Optimizer8bit(torch.optim.Optimizer):
    """Base of all eightbit optimizers. Subclasses define:

    - ``state_spec(config) -> tuple[(name, signed), ...]``: the per-element states (signed dynamic code
      for first moments / momentum, unsigned for second moments);
    - ``update_rule``: the name of its rule in `eightbit.functional.optimizer.RULES` (the base applies
      ``p -= lr * update_scale * direction``);
    - ``hyper(config, step) -> dict``: the rule's fields of `OptimHyper` for this step (lr, weight_decay and
      grad_scale are filled in by the base);
    - ``weight_decay_mode``: WD_L2 (added to the gradient), WD_DECOUPLED (AdamW-style) or WD_NONE.

    Keyword options common to all: ``lr`` (a number, or as in torch a one-element float tensor read at every
    step), ``is_paged`` (bitsandbytes' flag: True makes it the ``Paged<Name>`` optimizer), ``args`` (accepted for
    bitsandbytes compatibility; only None), ``optim_bits`` (8 or 32), ``min_8bit_size`` (tensors with fewer elements
    keep 32-bit state), ``percentile_clipping`` (clip the gradient at this percentile of the last 100
    gradient norms of the parameter; 100 = off), ``max_unorm`` (cap ||update|| at max_unorm * ||param||;
    0 = off), ``blocksize`` (64..4096), ``nonfinite``: what a gradient holding NaN/Inf does. "skip_block"
    (default): each block of ``blocksize`` values whose gradient holds one is left untouched, parameter values
    and state, the other blocks step, and ``state["skipped_blocks"]`` counts them; the update kernel checks each
    block's new states, so this costs no extra pass over the gradient, and also skips a block whose finite
    gradient would make a new 8-bit state Inf (a square that overflows float32: the block's scale would be Inf
    and all its codes NaN from then on). The parameter's step count still
    advances, so a skipped block's bias correction later counts one step its moments did not take (Adam: that
    block's steps are off by the ratio of two consecutive bias corrections, about 1 % at most after the tenth
    step, vanishing as ``1 - beta2^t`` approaches 1). With percentile clipping or an update
    norm (LAMB, LARS, ``max_unorm``), which read the whole gradient before the update, it acts as "skip".
    "skip": the whole parameter is left untouched, values and all state, and ``state["skipped_steps"]`` counts
    it (one more read of the gradient per step). "raise": FloatingPointError, nothing changed. "propagate": no
    check (the NaN reaches the parameter and the quantization blocks it is in).
    ``stochastic_rounding`` (default True): 8-bit unsigned states (second moments, Adagrad sums) are rounded
    up or down at random, unbiased, with a counter-based hash of (step, element) (reproducible; see
    `eightbit.functional.rounding`), so that they keep following changes smaller than half a code step;
    False rounds to nearest as bitsandbytes does. Signed states (momentum) always round to nearest.
    ``state_code``: the code map of 8-bit states. "binary": the binary dynamic map
    (`eightbit.functional.create_binary_dynamic_map`: power-of-two block scales, encoded and decoded with
    integer arithmetic by the native kernel, smaller state error than the decimal map on the 10,000-step run);
    "dynamic": bitsandbytes' decimal dynamic tree map; "auto" (default): binary, except for unsigned states
    rounded to nearest (``stochastic_rounding=False``), which keep the decimal map: with a power-of-two scale,
    that stays put while the block's absmax drifts, a slowly decaying v rounded to nearest freezes (AdamW with
    nearest v: final loss 11 % off fp32 on that run, 1.3 % with the decimal map). The map is chosen when a state is
    created (turning stochastic rounding off later warns); a loaded checkpoint keeps the maps it was saved with.
    """

    weight_decay_mode: int = WD_L2
    default_optim_bits: int = 32
    update_rule: str  # a rule of eightbit.functional.optimizer.RULES

    fixed_bits: int | None = None  # set on the <Name>8bit / <Name>32bit variants
    n_betas: int = 2
    is_paged: bool = False  # Paged<Name>: see paged_variants
    counts_steps: bool = True  # whether a loaded state must carry its step (torch's SGD saves none)

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        d = {**dict(defaults), **self._defaults_extra()}
        # bitsandbytes' constructor keywords that are not group settings: args (an argparse namespace overriding
        # settings, which eightbit does not read) and is_paged (the Paged<Name> classes, as a flag)
        if d.pop("args", None) is not None:
            raise ValueError("args (bitsandbytes' argparse override) is not supported: pass the settings as "
                             "keyword arguments")
        is_paged = d.pop("is_paged", False)
        if not isinstance(is_paged, bool):
            raise TypeError(f"is_paged must be a bool, got {is_paged!r}")
        if is_paged:
            self.is_paged = True  # as the Paged<Name> class (the state of accelerator parameters on the host)
        d.setdefault("stochastic_rounding", True)
        d.setdefault("state_code", "auto")
        if self.fixed_bits is not None:
            # as bitsandbytes: its 8-bit classes take optim_bits=32 "for compatibility" and mean 8-bit state
            allowed = (None, 8, 32) if self.fixed_bits == 8 else (None, 32)
            if d.get("optim_bits") not in allowed:
                raise ValueError(f"{type(self).__name__} keeps {self.fixed_bits}-bit state: optim_bits must be one of "
                                 f"{allowed} (use the generic class to choose), got {d.get('optim_bits')!r}")
            d["optim_bits"] = self.fixed_bits
        if d.get("optim_bits") is None:
            d["optim_bits"] = self.default_optim_bits
        self._validate(d)
        super().__init__(params, d)
        GlobalOptimManager.get_instance()._register_optimizer_params(self)

    # ----- configuration -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group`` plus the constructor's validation of the group's settings (a bad lr,
        blocksize, optim_bits, betas or nonfinite raises ValueError/TypeError and the group is not added)."""
        super().add_param_group(param_group)
        try:
            self._validate(self.param_groups[-1])
        except Exception:
            self.param_groups.pop()
            raise

    def _validate(self, d: dict[str, Any]) -> None:
        """Raise ValueError/TypeError unless the settings ``d`` (defaults, a param group, or a group with a
        parameter's overrides) are valid for this optimizer."""
        lr = d["lr"]
        if isinstance(lr, torch.Tensor):  # as torch's optimizers: a one-element tensor, read at every step
            if lr.numel() != 1 or not lr.is_floating_point():
                raise ValueError(f"lr given as a tensor must hold one float, got {lr.dtype} of shape {tuple(lr.shape)}")
            lr = float(lr)
        check_number(lr, "lr", low=0.0)
        if "betas" in d:
            betas = d["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != self.n_betas:
                raise ValueError(f"betas must be {self.n_betas} numbers, got {betas!r}")
            for i, b in enumerate(betas):
                check_number(b, f"betas[{i}]", low=0.0, high=1.0, high_inclusive=False)
        for key in ("eps", "weight_decay", "max_unorm"):
            if key in d:
                check_number(d[key], key, low=0.0)
        for key in ("momentum", "alpha", "dampening", "lr_decay"):
            if key in d:
                check_number(d[key], key, low=0.0, high=1.0 if key != "lr_decay" else None)
        check_choice(d["optim_bits"], "optim_bits", (8, 32))
        d["blocksize"] = check_blocksize(d["blocksize"])  # stored as an int (a NumPy integer would be saved as such)
        check_number(d["min_8bit_size"], "min_8bit_size", low=0)
        check_number(d["percentile_clipping"], "percentile_clipping", low=0.0, high=100.0, low_inclusive=False)
        check_choice(d["nonfinite"], "nonfinite", NONFINITE_CHOICES)
        check_choice(d["state_code"], "state_code", ("auto", *STATE_CODES))
        if not isinstance(d.get("stochastic_rounding", True), bool):
            raise TypeError(f"stochastic_rounding must be a bool, got {d['stochastic_rounding']!r}")
        if d.get("nesterov") and (d.get("momentum", 0) <= 0 or d.get("dampening", 0) != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening == 0")

    def _config(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """The group's settings with this parameter's GlobalOptimManager overrides applied."""
        override = GlobalOptimManager.get_instance().get_config(p)
        if not override:
            return group
        cfg = {**group, **override}
        self._validate(cfg)
        return cfg

    def _defaults_extra(self) -> dict[str, Any]:
        """Extra group settings a subclass adds to the defaults (LAMB's bias_correction, adam_w_mode)."""
        return {}

    def rule_for(self, config: dict[str, Any]) -> tuple[str, int]:
        """(rule name, weight-decay mode) for these settings: the class's by default."""
        return self.update_rule, self.weight_decay_mode

    def state_spec(self, config: dict[str, Any]) -> tuple[tuple[str, bool], ...]:
        raise NotImplementedError

    def hyper(self, config: dict[str, Any], step: int) -> dict[str, float]:
        raise NotImplementedError

    def needs_update_norm(self, config: dict[str, Any]) -> bool:
        return config.get("max_unorm", 0.0) > 0

    def update_scale(self, unorm: float, pnorm: float, config: dict[str, Any]) -> float:
        """Multiplier of the update given ||direction|| and ||param|| (bitsandbytes' max_unorm cap)."""
        max_unorm = config.get("max_unorm", 0.0)
        if max_unorm > 0 and unorm > max_unorm * pnorm:
            return max_unorm * pnorm / unorm
        return 1.0

    # ----- state ---------------------------------------------------------------------------------
    def _init_state(self, p_local: torch.Tensor, state: dict[str, Any], config: dict[str, Any], numel: int) -> None:
        """Create every state tensor of one parameter (the only place state is allocated). ``numel`` is the
        whole parameter's size (min_8bit_size is judged on it, so every shard of a DTensor agrees)."""
        eight = config["optim_bits"] == 8 and numel >= config["min_8bit_size"]
        bs = config["blocksize"]
        nblocks = -(-p_local.numel() // bs)
        dev, home = p_local.device, self._state_device(p_local)  # home: where the large state tensors live
        pin = home.type == "cpu" and paging.pinned(dev)
        state["step"] = torch.zeros((), dtype=torch.int64)
        state["skipped_steps"] = torch.zeros((), dtype=torch.int64)
        state["skipped_blocks"] = torch.zeros((), dtype=torch.int64, device=dev)  # where the update kernel runs
        if config["percentile_clipping"] < 100:
            state["gnorm_history"] = torch.zeros(100, dtype=torch.float32, device=dev)
        if eight and self.state_spec(config):
            state["blocksize"] = torch.tensor(bs, dtype=torch.int64)  # a tensor: state_dicts stay all-tensor
        for i, (name, signed) in enumerate(self.state_spec(config)):
            if eight:  # bitsandbytes' names (see optim/state.py)
                cb = STATE_CODES[_state_code(config, signed)](signed, dev)
                state[slot("state", i)] = torch.full(p_local.shape, cb.zero_index, dtype=torch.uint8, device=home,
                                                     pin_memory=pin)
                state[slot("absmax", i)] = torch.zeros(nblocks, dtype=torch.float32, device=home, pin_memory=pin)
                state[slot("qmap", i)] = cb.values  # shared by every parameter (tables built once), on its device
            else:  # float64 parameters keep float64 states (their precision is the point of float64)
                state[name] = torch.zeros(p_local.shape, dtype=compute_dtype(p_local), device=home, pin_memory=pin)

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict``, with each parameter's code maps (``qmap1``, ``qmap2``: one shared tensor in
        memory) as its own copy, so the result saves with safetensors (which refuses shared storage). Each
        parameter's entry is a new dict (torch's holds the live one), so the copies never replace the shared
        maps in the optimizer's own state; the other tensors are references, as in torch."""
        sd = super().state_dict()
        sd["state"] = {pid: {k: v.clone() if k.startswith("qmap") and isinstance(v, torch.Tensor) else v
                             for k, v in st.items()} for pid, st in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, except that state tensors keep their exact dtypes (torch would cast uint8 codes
        and float32 absmax to the parameter's dtype) and are copied, never aliased. Reads eightbit's layout, the
        layout of earlier eightbit versions and bitsandbytes' 8-bit and 32-bit optimizer states
        (``optim/state.py``); settings a saved group lacks (a bitsandbytes group has no ``blocksize``) keep this
        optimizer's values.

        Every parameter's state is checked first against the parameter and the saved group's settings:
        the state names of this optimizer, uint8 codes (8-bit) or float32 values (32-bit) of the
        parameter's shape, one float32 absmax per block. A mismatch raises ValueError naming the parameter
        index and the state entry, and leaves this optimizer unchanged."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or not isinstance(state_dict.get("state"), dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups', as from state_dict()")
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(h["params"]) for g, h in zip(groups, self.param_groups)
        ):
            raise ValueError("state_dict has a different number of parameter groups or parameters per group "
                             "than this optimizer")
        translated = dict(state_dict["state"])
        specs: dict[Any, tuple] = {}  # pid -> the state spec under its own group's settings
        configs: dict[Any, dict] = {}
        for saved, group in zip(groups, self.param_groups):
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            if self.fixed_bits is not None:  # AdamW8bit / AdamW32bit keep their state width whatever was saved
                merged["optim_bits"] = self.fixed_bits
            for pid, p in zip(saved["params"], group["params"]):
                if pid in translated:
                    config = configs[pid] = self._config(p, merged)
                    pl = local_tensor(p)
                    specs[pid] = self.state_spec(config)
                    translated[pid] = translate_state(translated[pid], specs[pid], pl.numel(), config["blocksize"])
                    self._check_state(pid, translated[pid], pl, config)
        own = [dict(g) for g in self.param_groups]
        super().load_state_dict({**state_dict, "state": translated})
        for group, before in zip(self.param_groups, own):
            for key, value in before.items():
                group.setdefault(key, value)
            if self.fixed_bits is not None:
                group["optim_bits"] = self.fixed_bits
        saved_ids = [i for g in groups for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            if pid in translated:
                dev = local_tensor(p).device
                paged = self._pages(local_tensor(p))
                large = {n for n, _ in specs[pid]}  # the state tensors a paged optimizer keeps on the host
                large |= {slot(k, i) for i in range(len(specs[pid])) for k in ("state", "absmax")}
                st = {}
                for k, v in translated[pid].items():
                    if k.startswith("qmap") and isinstance(v, torch.Tensor):
                        st[k] = shared_code(v, specs[pid][int(k[4:]) - 1][1], dev)
                    elif isinstance(v, torch.Tensor) and paged and k in large:
                        st[k] = paging.host_tensor(v.contiguous().clone(), dev)
                    elif isinstance(v, torch.Tensor):
                        st[k] = v.detach().to(dev, copy=True).contiguous()
                    else:
                        st[k] = v
                if specs[pid] and "state1" not in st:  # 32-bit (torch's optimizers, a 32-bit eightbit one)
                    st = self._requantized(st, p, configs[pid])
                elif specs[pid]:  # 8-bit, into an optimizer that keeps this parameter's state in 32 bits
                    st = self._dequantized(st, p, configs[pid])
                self.state[p] = st

    def _requantized(self, st: dict[str, Any], p: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
        """A loaded 32-bit state in the 8-bit layout where this optimizer keeps ``p``'s state in 8 bits (switching
        from torch's AdamW to AdamW8bit mid-run keeps the moments and takes the memory saving), each moment
        rounded to nearest on the map a new state would get; ``st`` unchanged where the state stays 32-bit."""
        fresh: dict[str, Any] = {}
        self._init_state(local_tensor(p), fresh, config, p.numel() * (2 if p.is_complex() else 1))
        if "state1" not in fresh:
            return st
        bs = int(fresh["blocksize"])
        for i, (name, _) in enumerate(self.state_spec(config)):  # to nearest, as a step without its stochastic draw
            codes, qs = quantize_blockwise(st.pop(name).float(), fresh[slot("qmap", i)], blocksize=bs)
            fresh[slot("state", i)].copy_(codes)
            fresh[slot("absmax", i)].copy_(qs.absmax)
        for k, v in fresh.items():  # the loaded counters and history stay; the 8-bit entries are new
            st.setdefault(k, v)
        return st

    def _dequantized(self, st: dict[str, Any], p: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
        """A loaded 8-bit state in the 32-bit layout where this optimizer keeps ``p``'s state in 32 bits (an
        AdamW8bit checkpoint loaded into AdamW32bit): each moment dequantized, in the parameter's compute dtype;
        ``st`` unchanged where the state stays 8-bit."""
        fresh: dict[str, Any] = {}
        pl = local_tensor(p)
        self._init_state(pl, fresh, config, p.numel() * (2 if p.is_complex() else 1))
        if "state1" in fresh:
            return st
        bs = int(st.pop("blocksize"))
        for i, (name, _) in enumerate(self.state_spec(config)):
            codes, absmax, code = (st.pop(slot(k, i)) for k in ("state", "absmax", "qmap"))
            values = dequantize_blockwise(codes, absmax=absmax, code=code, blocksize=bs)
            fresh[name].copy_(values.view(fresh[name].shape))
            st[name] = fresh[name]
        return st

    def _check_state(self, pid: Any, st: Any, p: torch.Tensor, config: dict[str, Any]) -> None:
        """Raise ValueError unless ``st`` is a well-formed state of local parameter ``p`` under ``config``; its
        blocksize and skipped_blocks become int64 tensors."""
        where = f"state_dict['state'][{pid!r}]"
        if not isinstance(st, dict):
            raise ValueError(f"{where} must be a dict, got {type(st).__name__}")
        spec = self.state_spec(config)
        names = [n for n, _ in spec]
        eight = bool(names) and "state1" in st
        expected = {"step", "skipped_steps"}
        if eight:
            expected |= {slot(k, i) for i in range(len(names)) for k in ("state", "absmax", "qmap")} | {"blocksize"}
        else:
            expected |= set(names)
        if config["percentile_clipping"] < 100:
            expected.add("gnorm_history")
        optional = {"skipped_steps", "skipped_blocks"}  # counters that earlier versions did not save
        if config["percentile_clipping"] < 100:  # a torch state has no history: it starts afresh, as a new state
            optional.add("gnorm_history")
        if not self.counts_steps:  # torch's SGD saves no step (its rule does not use one)
            optional.add("step")
        expected |= optional
        missing, unknown = expected - set(st) - optional, set(st) - expected
        if missing or unknown:
            raise ValueError(f"{where}: missing entries {sorted(missing)}, unexpected entries {sorted(unknown)} "
                             f"for {type(self).__name__} (expected {sorted(expected)})")
        if eight:
            bs = st["blocksize"]
            bs = int(bs) if isinstance(bs, torch.Tensor) and bs.numel() == 1 and not bs.is_floating_point() else bs
            if isinstance(bs, bool) or not isinstance(bs, int) or bs not in VALID_BLOCKSIZES:
                raise ValueError(f"{where}['blocksize'] must be one of {VALID_BLOCKSIZES}, got {st['blocksize']!r}")
            st["blocksize"] = torch.tensor(bs, dtype=torch.int64)
            nblocks = -(-p.numel() // bs)
            for i in range(len(names)):
                _check_entry(where, slot("state", i), st[slot("state", i)], torch.uint8, tuple(p.shape))
                _check_entry(where, slot("absmax", i), st[slot("absmax", i)], torch.float32, (nblocks,))
                _check_entry(where, slot("qmap", i), st[slot("qmap", i)], torch.float32, (256,))
                try:
                    codebook(st[slot("qmap", i)])
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{where}[{slot('qmap', i)!r}]: {e}") from None
        else:
            for name in names:
                _check_entry(where, name, st[name], compute_dtype(p), tuple(p.shape))
        if "gnorm_history" in expected:
            if "gnorm_history" not in st:
                st["gnorm_history"] = torch.zeros(100, dtype=torch.float32)
            _check_entry(where, "gnorm_history", st["gnorm_history"], torch.float32, (100,))
        # (only where counts_steps is False) a state holding buffers has been stepped: the next step is not the first
        st.setdefault("step", torch.tensor(1 if names else 0, dtype=torch.int64))
        for name in ("step", "skipped_steps", "skipped_blocks"):
            v = st.get(name, 0)
            # torch's own optimizers save step as a float32 tensor (1., 2., ...): a whole number is a count too
            n = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
            if isinstance(n, bool) or not isinstance(n, (int, float)) or not (math.isfinite(n) and n >= 0 and n == int(n)):
                raise ValueError(f"{where}[{name!r}] must be an integer count, got {v!r}")
            if name in st and isinstance(v, torch.Tensor) and v.is_floating_point():
                st[name] = torch.tensor(int(n), dtype=torch.int64)
        # the update kernel adds to this counter in place: an int64 tensor (moved to the parameter's device by
        # load_state_dict), also for a state saved before it existed or saved as an int or another integer dtype
        st["skipped_blocks"] = torch.tensor(int(st.get("skipped_blocks", 0)), dtype=torch.int64)
        st["skipped_steps"] = torch.tensor(int(st.get("skipped_steps", 0)), dtype=torch.int64)  # torch's: none

    # ----- step ----------------------------------------------------------------------------------
    # torch.compile runs the step eagerly (a graph break): it is a few native ops whose Python around them (state
    # creation, cached code tables, per-parameter step counts) Dynamo cannot trace, and compiling would gain nothing
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step over all parameters with a gradient; returns ``closure()`` if given. Plain updates
        (no paging, no update norm) of a group run as one ``optimizer_update_many`` op per kind of state.
        Under ``torch.compile`` (of ``step`` itself or of a training step that calls it) it runs eagerly, with the
        eager result; with ``fullgraph=True`` torch raises at the call, as for any function it may not trace."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        paged: set[torch.device] = set()
        try:
            for group in self.param_groups:
                batches: dict[tuple, list[Job]] = {}
                error: BaseException | None = None
                plan = None
                try:
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        config = self._config(p, group)
                        if config is group:
                            plan = plan or self._plan(group)
                            job = self._prepare(p, config, plan)
                        else:
                            job = self._prepare(p, config, self._plan(config))
                        if job is None:
                            continue
                        if job.batch_key is not None:
                            batches.setdefault(job.batch_key, []).append(job)
                        elif self._run(job):
                            paged.add(job.work.device)
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the prepared jobs ran
                    error = e
                for jobs in batches.values():  # prepared jobs have advanced their step counters: they all run
                    try:
                        self._run_many(jobs)
                    except Exception as e:  # noqa: BLE001 - the first error of the group is raised
                        error = error or e
                if error is not None:
                    raise error
        finally:  # the states already written back are current even when a later parameter raises
            paging.synchronize(paged)
        return loss

    def _pages(self, p_local: torch.Tensor) -> bool:
        """Whether this parameter's state is paged (kept on the host, see optim/paging.py)."""
        return self.is_paged and p_local.device.type != "cpu"

    def _state_device(self, p_local: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self._pages(p_local) else p_local.device

    def _plan(self, config: dict[str, Any]) -> Plan:
        """The step's settings-derived values for parameters updated under ``config``."""
        mode = config["nonfinite"]
        norm = self.needs_update_norm(config)
        if mode == "skip_block" and (config["percentile_clipping"] < 100 or norm):
            mode = "skip"  # a NaN would reach the gradient-norm history or the update norm before the update
        spec = tuple(self.state_spec(config))
        stochastic = tuple(not signed and bool(config["stochastic_rounding"]) for _, signed in spec)
        slots = tuple(tuple(slot(kind, i) for i in range(len(spec))) for kind in ("state", "absmax", "qmap"))
        return Plan(mode, norm, *self.rule_for(config), spec, stochastic, slots, {})

    def _prepare(self, p: torch.Tensor, config: dict[str, Any], plan: Plan) -> Job | None:
        """Everything of one parameter's update up to the op: state created, non-finite check, step counted,
        the op's arguments; None when there is nothing to update (empty, or skipped)."""
        pl, gl = local_tensor(p), local_tensor(p.grad)
        if gl.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        groups = shard_groups(p)  # non-empty for a sharded DTensor: collectives below, even on an empty shard
        if pl.numel() == 0 and not groups:
            return None
        state = self.state[p]
        if not state:
            self._init_state(pl, state, config, p.numel() * (2 if p.is_complex() else 1))
        elif self._refit_needed(state, config, plan):
            self._refit_state(pl, state, config, p.numel() * (2 if p.is_complex() else 1))
        mode = plan.mode
        # with an update norm (and no clipping history to keep clean), the norm's own pass tells whether the
        # gradient needs a check: one read of the gradient less per step (_run)
        defer = plan.norm and mode in ("skip", "raise") and config["percentile_clipping"] >= 100
        if mode in ("skip", "raise") and not defer and not all_finite(gl, groups):
            self._nonfinite(state, mode, p.shape)
            return None
        skipped = state["skipped_blocks"] if mode == "skip_block" else None  # checked by the kernel, per block
        state["step"] += 1
        step = int(state["step"])
        grad_scale = self._percentile_scale(gl, state, config, step, groups)
        work = pl if pl.is_contiguous() else pl.contiguous()
        g = gl.contiguous()
        h = plan.memo.get((step, grad_scale))
        if h is None:  # one frozen OptimHyper per (step, clip scale): equal for a group's parameters
            h = plan.memo[step, grad_scale] = OptimHyper(
                lr=float(config["lr"]), weight_decay=config.get("weight_decay", 0.0), grad_scale=grad_scale,
                **self.hyper(config, step))
        states, absmaxes, codes, seeds = self._op_args(state, config, plan, step)
        bs = int(state.get("blocksize", config["blocksize"]))  # a loaded bitsandbytes state keeps its 256
        paged = self._pages(pl)
        key = None  # jobs with equal keys share one op call
        if not (paged or plan.norm or work is not pl):
            key = (plan.rule, plan.wd_mode, len(states), bool(absmaxes), skipped is not None, work.device)
        return Job(config, pl, work, g, states, absmaxes, codes, h, seeds, plan.rule, plan.wd_mode, bs, skipped,
                   paged, plan.norm, groups, key, state if defer else None)

    @staticmethod
    def _nonfinite(state: dict, mode: str, shape) -> None:
        """A step not taken for a NaN/Inf gradient: FloatingPointError under "raise", else counted as skipped."""
        if mode == "raise":
            raise FloatingPointError(f"non-finite gradient for a parameter of shape {tuple(shape)}")
        state["skipped_steps"] += 1

    def _run(self, job: Job) -> bool:
        """The op of one prepared update (paging, update norm and copy-back included); True when paged."""
        states, absmaxes, h, work, g = job.states, job.absmaxes, job.hyper, job.work, job.g
        if job.paged:  # this parameter's state visits the device for its update only
            host = states + absmaxes
            on_device = paging.fetch(host, work.device)
            states, absmaxes = on_device[: len(states)], on_device[len(states):]
        if job.norm:
            # the squared norms of the direction and of the parameter, from one pass
            sq = optimizer_update_norm(job.rule, work, g, states, absmaxes, job.codes, h, wd_mode=job.wd_mode,
                                       blocksize=job.blocksize)
            if job.groups:  # norms of the whole parameter, not of this shard
                sq = sum_over(job.groups, sq.to(work.device))
            unorm, pnorm = (v**0.5 for v in sq.tolist())
            state = job.deferred_check
            if state is not None and not math.isfinite(unorm) and not all_finite(g, job.groups):
                state["step"] -= 1  # counted by _prepare; the step is not taken
                self._nonfinite(state, "raise" if job.config["nonfinite"] == "raise" else "skip", job.local.shape)
                return job.paged  # nothing was written (a paged state's copy is dropped unchanged)
            h = dataclasses.replace(h, update_scale=self.update_scale(unorm, pnorm, job.config))
        optimizer_update(job.rule, work, g, states, absmaxes, job.codes, h, wd_mode=job.wd_mode,
                         blocksize=job.blocksize, seeds=job.seeds, skipped=job.skipped)
        if job.paged:
            paging.write_back(host, on_device)
        if work is not job.local:
            job.local.copy_(work)
        return job.paged

    def _run_many(self, jobs: list[Job]) -> None:
        """The ops of prepared plain updates sharing a batch key, in one call. If a parameter's arguments fail
        the checks (a damaged state), each job runs on its own instead, so that the others still step, and the
        first error is raised after them."""
        if len(jobs) == 1:
            self._run(jobs[0])
            return
        j0 = jobs[0]
        args = (j0.rule, [j.work for j in jobs], [j.g for j in jobs], [j.states for j in jobs],
                [j.absmaxes for j in jobs], [j.codes for j in jobs], [j.hyper for j in jobs])
        tail = ([j.blocksize for j in jobs], [j.seeds for j in jobs],
                [j.skipped for j in jobs] if j0.skipped is not None else None)
        try:
            check_update_many(*args, *tail)
        except (ValueError, TypeError):
            error = None
            for job in jobs:
                try:
                    self._run(job)
                except Exception as e:  # noqa: BLE001 - the first one is raised after every job ran
                    error = error or e
            if error is not None:
                raise error from None
            return
        dispatch_update_many(*args, j0.wd_mode, *tail)

    def _percentile_scale(self, g: torch.Tensor, state: dict, config: dict, step: int, groups: list) -> float:
        if config["percentile_clipping"] >= 100:
            return 1.0
        hist = state["gnorm_history"]
        if groups:  # the whole gradient's norm, identical on every shard
            gnorm = sum_over(groups, g.float().square().sum()).sqrt()
        else:
            gnorm = torch.linalg.vector_norm(g, dtype=torch.float32)
        hist[(step - 1) % 100] = gnorm
        clip = torch.quantile(hist[: min(step, 100)], config["percentile_clipping"] / 100.0)
        gnorm, clip = float(gnorm), float(clip)
        return clip / gnorm if gnorm > clip else 1.0

    @staticmethod
    def _refit_needed(state: dict, config: dict, plan: Plan) -> bool:
        """Whether ``state`` was created under settings that change which entries it has (momentum or percentile
        clipping turned on or off mid-run): a cheap test on the entries the current settings need."""
        history = "gnorm_history" in state
        if (config["percentile_clipping"] < 100) != history:
            return True
        n = len(plan.spec)  # entries besides the counters: 3 per 8-bit state and the blocksize, or 1 per 32-bit one
        held = len(state) - history - ("step" in state) - ("skipped_steps" in state) - ("skipped_blocks" in state)
        return held != (3 * n + 1 if "state1" in state else n)

    def _refit_state(self, pl: torch.Tensor, state: dict, config: dict, numel: int) -> None:
        """The entries the current settings need, added as a new state has them (zero moments, an empty
        gradient-norm history), and the ones they no longer use dropped (a state_dict then loads back); the step
        and skip counters and every kept entry stay."""
        fresh: dict[str, Any] = {}
        self._init_state(pl, fresh, config, numel)
        counters = {"step", "skipped_steps", "skipped_blocks"}
        for k in [k for k in state if k not in fresh and k not in counters]:
            del state[k]
        for k, v in fresh.items():
            state.setdefault(k, v)

    def _op_args(self, state: dict, config: dict, plan: Plan, step: int) -> tuple:
        """(states, absmaxes, codes, seeds) of ``optimizer_update`` for this parameter's state at ``step``
        (absmaxes and codes empty for 32-bit state). Unsigned 8-bit states round stochastically when
        ``stochastic_rounding``."""
        spec = plan.spec
        if not (spec and "state1" in state):
            return [state[n] for n, _ in spec], [], [], [-1] * len(spec)
        state_keys, absmax_keys, code_keys = plan.slots
        states = [state[key] for key in state_keys]
        absmaxes = [state[key] for key in absmax_keys]
        codes = [state[key] for key in code_keys]
        seeds = plan.memo.get(step)
        if seeds is None:
            seeds = plan.memo[step] = [step_seed(step, i) if sr else -1 for i, sr in enumerate(plan.stochastic)]
        if not config["stochastic_rounding"] and not getattr(self, "_warned_frozen", False):
            for (name, signed), c in zip(spec, codes):
                if not signed and codebook(c).pow2_scale:
                    self._warned_frozen = True
                    warnings.warn(f"{type(self).__name__}: state {name!r} is on the binary dynamic map (chosen when the "
                                  "state was created) but is now rounded to nearest (stochastic_rounding=False): "
                                  "on power-of-two scales a slowly changing state freezes. Keep stochastic "
                                  "rounding, or create the state with state_code='dynamic'.", stacklevel=4)
                    break
        return states, absmaxes, codes, seeds


def bit_variants(cls: type) -> tuple[type, type]:
    """The ``<Name>8bit`` and ``<Name>32bit`` classes of a generic optimizer (only the default optim_bits differs)."""
    out = []
    for bits in (8, 32):
        name = f"{cls.__name__}{bits}bit"
        doc = f"{cls.__name__} with {bits}-bit optimizer state by default (see :class:`{cls.__name__}`)."
        out.append(type(name, (cls,), {"default_optim_bits": bits, "fixed_bits": bits, "__doc__": doc,
                                       "__module__": cls.__module__}))
    return out[0], out[1]


def paged_variants(*classes: type) -> tuple[type, ...]:
    """``Paged<Name>`` classes (bitsandbytes' names): the same optimizer with ``is_paged = True``: the state of a
    parameter on an accelerator is kept in pinned host memory and visits the device for its update only
    (optim/paging.py). On CPU a paged optimizer is the plain one (host memory is all there is)."""
    out = []
    for cls in classes:
        doc = (f"Paged {cls.__name__} (bitsandbytes' name): :class:`{cls.__name__}` whose state, for parameters on an "
               "accelerator, lives in pinned host memory and is streamed to the device per parameter and step "
               "(eightbit.optim.paging); the same as the plain optimizer on CPU.")
        out.append(type(f"Paged{cls.__name__}", (cls,), {"is_paged": True, "__doc__": doc,
                                                         "__module__": cls.__module__}))
    return tuple(out)

