"""Pure-BF16 training: stochastic rounding and Kahan-compensated optimizer updates.

Why pure BF16 training stalls. bfloat16 keeps 8 significant bits, so the
gap between neighbours of a weight ``w`` is ``ulp(w) = 2**(e - 7)`` for
``2**e <= |w| < 2**(e+1)``: 0.4 % to 0.8 % of ``|w|``. Writing ``w + u`` back
into a BF16 weight with round-to-nearest gives ``w`` again whenever ``|u|``
is below half an ulp (exactly half ties to even, i.e. it moves only when
``w``'s last bit is odd; at a power of two the spacing below is half the
spacing above, so there a decrease of ``|w|`` needs only a quarter ulp).
With ``lr = 1e-3`` and gradients around ``1e-2`` every update is about
``1e-5``: far below half an ulp of a weight of ``0.1`` (``2**-12 = 2.4e-4``),
so ``model.bfloat16()`` plus a ``torch.optim`` optimizer leaves most
weights untouched, step after step (chapter 02 measured it). Three fixes:
keep FP32 master weights (:mod:`course_lib.master`, 4 more bytes per
parameter), or keep BF16 weights and change how the FP32 update is written:

* **Stochastic rounding (SR)**: round ``x`` up to the next BF16 value with
  probability (distance from the value below) / (gap), down otherwise. Then
  ``E[SR(x)] = x``: small updates survive *on average*, and over many steps
  the weight follows the FP32 trajectory plus zero-mean noise of at most one
  ulp per step. On the bits: add a uniform random integer in
  ``[0, 2**16)`` to the FP32 bit pattern (magnitude), then clear the 16
  low bits (truncate) -- it carries into the kept bits with exactly that
  probability. :func:`stochastic_round` delegates to
  :func:`course_lib.formats.round_to_format`, which does this for every
  format (``2**d`` with ``d`` dropped bits), including subnormals, overflow
  and NaN.
* **Kahan-compensated summation** (as torchdistx's ``AnyPrecisionAdamW``
  with ``use_kahan_summation=True``): a buffer ``c`` per parameter, of the
  parameter's dtype, holds the part of past updates that the last write
  rounded away, and is added back to the next update. With ``u`` the FP32
  update of this step::

      c  <- c + u            (rounded to c's dtype)
      w' <- w + c            (rounded to w's dtype: round to nearest)
      c  <- c + (w - w')     (w - w' is what was actually applied)

  Over many steps the sum of the applied steps tracks the sum of the
  updates to within the (rounded) compensation, so tiny updates accumulate
  in ``c`` until they are large enough to move ``w``. Deterministic, no
  random numbers, but one more 16-bit tensor per parameter.

The optimizers :class:`BF16AdamW` and :class:`BF16SGD` compute every update
in FP32 (exactly the operations of ``torch.optim.AdamW`` / ``torch.optim.SGD``
with ``foreach=False``) and write the result with ``rounding`` =
``"nearest"`` (what ``model.bfloat16()`` + torch.optim gives), ``"stochastic"``
or ``"kahan"``, through one shared helper, :func:`write_rounded_`. Their
state (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``) is FP32 or BF16
(``state_dtype``); stochastic rounding draws from the optimizer's own seeded
``torch.Generator`` whose state is part of ``state_dict()``, so a resumed run
continues bit for bit.

Evidence from practice is mixed, which is why the chapter measures instead of
promising: llm.c PR #772 (BF16 optimizer state with SR, no master weights)
reached a GPT-2 validation loss as good as FP32 state with master weights;
in bitsandbytes issue #1165 Tim Dettmers reports that SR for their 8-bit
optimizers "did not help" in his experiments.

References: Zamirai et al., "Revisiting BFloat16 Training", arXiv:2010.06192
(SR and Kahan summation for pure-BF16 training); torchdistx
``AnyPrecisionAdamW`` (src/python/torchdistx/optimizers/anyprecision_optimizer.py);
torchao ``bf16_stochastic_round=True`` (an argument of the optimizers in
``torchao.optim``, e.g. ``AdamW8bit``, and of ``torchao.optim._AdamW``;
pytorch/ao PR #1124); karpathy/llm.c PR #772; bitsandbytes-foundation/bitsandbytes
issue #1165; pytorch/pytorch issue #120376 (SR requested in torch itself).

Introduced in chapter 06 (notebooks/06_bfloat16.ipynb).

>>> w = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
>>> for r in ("nearest", "stochastic", "kahan"):
...     _ = w.data.fill_(1.0)
...     opt = BF16SGD([w], lr=1e-3, rounding=r, seed=0)
...     for _ in range(100):
...         w.grad = torch.ones_like(w)          # 100 steps of -1e-3: FP32 would give 0.9
...         opt.step()
...     print(r, round(w.float().mean().item(), 2))
nearest 1.0
stochastic 0.9
kahan 0.9
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from course_lib.formats import get_format, round_to_format
from course_lib.validate import non_negative_float, non_negative_int, one_of

__all__ = ["stochastic_round", "stochastic_round_bits", "kahan_add_", "write_rounded_", "BF16AdamW",
           "BF16SGD",
           "ROUNDINGS", "PARAM_DTYPES", "STATE_DTYPES"]

#: How an FP32 update is written into a low-precision parameter.
ROUNDINGS = ("nearest", "stochastic", "kahan")
#: Parameter dtypes the optimizers accept (the rounding targets the parameter's own dtype).
PARAM_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
#: Dtypes of the optimizer state (moments, momentum buffer).
STATE_DTYPES = (torch.float32, torch.bfloat16)


def stochastic_round(x, fmt="bf16", *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round ``x`` to ``fmt`` stochastically: up with probability (x - down) / (up - down).

    Algorithm (:func:`course_lib.formats.round_to_format` with
    ``rounding="stochastic"``, on the FP32 bit pattern): add a uniform random
    integer in ``[0, 2**d)`` to the magnitude bits, ``d`` the number of bits
    the format drops (16 for BF16), then clear those ``d`` bits. So
    ``E[result] = x`` for every ``|x| <= max``. Edge cases, as formats does
    them: NaN stays NaN, +-0 and +-inf stay; FP32 subnormals round to BF16's
    subnormals (same exponent range, spacing 2**-133), and below 2**-133 to
    0 or 2**-133; between the format's ``max`` and the next power of two the
    carry makes the result +-inf with probability ``(|x| - max) / ulp(max)``
    and +-max otherwise. For BF16 (max = ``0x7F7F`` = 3.3895e38, ulp(max) =
    2**120) that covers every finite float32 above max; round-to-nearest
    (torch's cast) gives max below ``max + ulp/2`` and inf from there on
    (the tie goes to inf: max's last bit is odd).

    Args:
        x (Tensor | float | list): floating input (converted to float32 as
            ``round_to_format`` does).
        fmt (str | torch.dtype | FloatFormat, default ``"bf16"``): the target.
        generator (torch.Generator | None, default None): random source on
            ``x``'s device (None: torch's global generator).

    Returns:
        Tensor: of the format's torch dtype where it has one (``"bf16"`` ->
        ``torch.bfloat16``; values are on the grid, so the cast is exact),
        else float32 values on the format's grid.

    Measured on this course's 2-core CPU (1M float32 elements, one thread,
    best of 40): 3.4 ms, against 0.1 ms for ``x.to(torch.bfloat16)``;
    drawing the random integers alone takes 1.9 ms. A dedicated BF16 bit
    trick (add 16 random bits, mask, fix NaN) was no faster (3.7 ms), so
    there is one implementation.

    >>> g = torch.Generator().manual_seed(0)
    >>> y = stochastic_round(torch.full((10000,), 1 + 2**-9), "bf16", generator=g)
    >>> y.dtype, sorted(set(y.float().tolist()))        # neighbours 1 and 1 + 2**-7
    (torch.bfloat16, [1.0, 1.0078125])
    >>> abs(y.float().mean().item() - (1 + 2**-9)) < 1e-4   # a quarter of them round up
    True
    """
    f = get_format(fmt)
    y = round_to_format(x, f, "stochastic", generator=generator)
    return y if f.torch_dtype is None else y.to(f.torch_dtype)


def stochastic_round_bits(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Stochastic rounding of float32 ``x`` to BF16 with *given* random integers: the bit trick.

    The deterministic core of :func:`stochastic_round` for BF16, with the
    randomness passed in, so that a result can be checked bit for bit
    (exercise 06.stochastic_round_bits). Algorithm, per element, on the
    float32 bit pattern ``a`` (an int32) and ``n = noise`` in ``[0, 2**16)``:
    ``a + n``, then clear the low 16 bits. The carry out of the low 16 bits
    happens exactly when ``(a & 0xFFFF) + n >= 2**16``; for ``n`` uniform
    that is probability ``(a & 0xFFFF) / 2**16`` = (x - down) / (up - down),
    so ``E[result] = x``. Working on the signed pattern is the same as
    working on the magnitude: for a negative ``x`` the int32 is
    ``-2**31 + |a|``, whose low 16 bits are those of ``|a|``, and
    ``|a| + n < 2**31`` for every non-NaN ``x``.

    Edge cases, from the same arithmetic: +-0 stay (noise < 2**16 never
    carries), +-inf stay (its low 16 bits are 0), a bf16 value stays (low
    bits 0), float32 subnormals round to BF16's subnormals (same exponent
    field), a carry out of BF16's ``max`` (0x7F7F) lands on 0x7F80 = inf;
    NaN is returned as it is (its payload could carry into the sign bit).

    torchao (``_fp32_to_bf16_sr``) and llm.c decide "up" by ``n < (a & 0xFFFF)``
    instead: the same distribution, a different realisation for a given
    ``n`` (it equals this function with noise ``0xFFFF - n``).

    Args:
        x (Tensor): float32.
        noise (Tensor): integer tensor of ``x``'s shape, values in ``[0, 65536)``.

    Returns:
        Tensor: float32 values on the BF16 grid (exactly ``.to(torch.bfloat16)``-able).

    >>> x = torch.tensor([1 + 2**-9, -(1 + 2**-9), 3.0])          # low 16 bits: 0x4000 (a quarter)
    >>> stochastic_round_bits(x, torch.tensor([0xBFFF, 0xC000, 0xFFFF])).tolist()
    [1.0, -1.0078125, 3.0]
    >>> every = torch.arange(1 << 16)                              # all 65,536 noise values ...
    >>> y = stochastic_round_bits(torch.full((1 << 16,), 1 + 2**-9), every)
    >>> (y.double().mean() == 1 + 2**-9).item()                    # ... average to x exactly
    True
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"x must be a float32 tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(noise, torch.Tensor) or noise.is_floating_point() or noise.is_complex() \
            or noise.dtype == torch.bool:
        raise TypeError(f"noise must be an integer tensor, got "
                        f"{noise.dtype if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    if noise.shape != x.shape:
        raise ValueError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
    if noise.numel() and (int(noise.min()) < 0 or int(noise.max()) >= 1 << 16):
        raise ValueError(f"noise values must be in [0, 65536), got [{int(noise.min())}, "
                         f"{int(noise.max())}]")
    bits = x.view(torch.int32)
    rounded = (bits + noise.to(device=x.device, dtype=torch.int32)) & -0x10000   # add, clear 16 bits
    return torch.where(torch.isnan(x), x, rounded.view(torch.float32))


@torch.no_grad()
def kahan_add_(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor) -> None:
    """``param += update`` with Kahan compensation, in place: what rounding drops stays in ``compensation``.

    The recurrence of torchdistx's ``AnyPrecisionAdamW`` (``use_kahan_summation``),
    in the same tensor operations; each line is computed in float32 and
    rounded to the dtype of the tensor it writes (round to nearest even)::

        c  <- c + u            compensation.add_(update)
        w' <- w + c            param.add_(compensation)
        c  <- c + (w - w')     compensation.add_(old.sub_(param)), old = w

    Over many steps ``w + c`` tracks the exact sum of the updates: an update
    below half an ulp of ``w`` stays in ``c`` until enough of them add up
    to move ``w``. The order of the operations *is* the algorithm:
    ``c + (w - w')`` is not ``(c + w) - w'`` in rounded arithmetic (the
    second rounds ``c`` away again). Exercise 06.kahan_update asks for it.

    Args:
        param (Tensor): the weights ``w`` (bf16, fp16 or fp32), changed in place.
        update (Tensor): ``u``, the step to add (any floating dtype, ``param``'s shape).
        compensation (Tensor): ``c``, usually of ``param``'s dtype, changed in place.

    >>> w = torch.tensor([1.0], dtype=torch.bfloat16); c = torch.zeros_like(w)
    >>> for _ in range(3):
    ...     kahan_add_(w, torch.tensor([2**-9]), c)     # a quarter ulp each time
    ...     print(w.item(), c.item())
    1.0 0.001953125
    1.0 0.00390625
    1.0078125 -0.001953125
    """
    if compensation.shape != param.shape or update.shape != param.shape:
        raise ValueError(f"update and compensation must have the parameter's shape "
                         f"{tuple(param.shape)}; got {tuple(update.shape)} and "
                         f"{tuple(compensation.shape)}")
    compensation.add_(update)                          # c <- c + u
    old = param.clone()
    param.add_(compensation)                           # w' <- w + c (rounded)
    compensation.add_(old.sub_(param))                 # c <- c + (w - w')


@torch.no_grad()
def write_rounded_(param: torch.Tensor, value: torch.Tensor, rounding: str, *,
                   compensation: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> None:
    """Store the float32 tensor ``value`` into ``param`` (in place) with ``rounding``.

    The one place where the optimizers of this module turn an FP32 result
    into the parameter's dtype:

    - ``"nearest"``: ``param.copy_(value)`` -- round to nearest even, what
      ``torch.optim`` on a BF16 model does.
    - ``"stochastic"``: ``param.copy_(stochastic_round(value, param.dtype))``
      with ``generator``; for a float32 ``param`` it is a plain copy (FP32 SR
      to FP32 is the identity) and draws no random numbers.
    - ``"kahan"``: the update is ``u = value - param`` (computed in float32;
      exact by Sterbenz's lemma whenever ``|u| <= |param| / 2``), then
      :func:`kahan_add_` (torchdistx's AnyPrecisionAdamW recurrence:
      ``c += u``; ``old = param.clone()``; ``param += c``;
      ``c += old - param``). ``compensation`` (``c``) is required, has
      ``param``'s shape and is updated in place.

    Args:
        param (Tensor): the parameter (bf16, fp16 or fp32), changed in place.
        value (Tensor): float32, same shape: the exact new value.
        rounding (str): one of :data:`ROUNDINGS`.
        compensation (Tensor | None): the Kahan buffer (``"kahan"`` only).
        generator (torch.Generator | None): for ``"stochastic"``.

    >>> p = torch.tensor([1.0], dtype=torch.bfloat16); c = torch.zeros_like(p)
    >>> for _ in range(4):
    ...     write_rounded_(p, p.float() + 2**-9, "kahan", compensation=c)
    >>> p.item(), c.item()          # four quarter-ulp updates made one ulp
    (1.0078125, 0.0)
    """
    one_of("rounding", rounding, ROUNDINGS)
    if rounding == "nearest" or (rounding == "stochastic" and param.dtype == torch.float32):
        param.copy_(value)
    elif rounding == "stochastic":
        param.copy_(stochastic_round(value, param.dtype, generator=generator))
    else:
        if compensation is None or compensation.shape != param.shape:
            raise ValueError("rounding='kahan' needs a compensation buffer of the parameter's shape "
                             f"{tuple(param.shape)}; got "
                             f"{None if compensation is None else tuple(compensation.shape)}")
        kahan_add_(param, value - param.to(torch.float32), compensation)   # u = value - w


def _beta(name: str, value) -> float:
    value = non_negative_float(name, value)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


class _BF16Optimizer(torch.optim.Optimizer):
    """What BF16AdamW and BF16SGD share: argument checks, the generators, the write, checkpoints.

    Subclasses implement ``_check_group(group)`` (their hyperparameters) and
    ``_step_param(p, group)`` (the FP32 update of one parameter).
    """

    def __init__(self, params, defaults: dict[str, Any], seed: int):
        self.seed = non_negative_int("seed", seed)
        self._generators: dict[str, torch.Generator] = {}
        super().__init__(params, defaults)

    # -- checks ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as torch.optim does), checking its values and parameter dtypes."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        one_of("rounding", group["rounding"], ROUNDINGS)
        one_of("state_dtype", group["state_dtype"], STATE_DTYPES)
        self._check_group(group)
        for p in group["params"]:
            if p.dtype not in PARAM_DTYPES:
                self.param_groups.pop()
                raise TypeError(f"{type(self).__name__} updates parameters of dtype "
                                f"{', '.join(map(str, PARAM_DTYPES))}; got a parameter of dtype "
                                f"{p.dtype}")

    def _check_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    # -- the step ----------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        """The optimizer's generator on ``device`` (one per device, seeded with ``seed``)."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def _state_tensor(self, p: torch.Tensor, key: str, dtype: torch.dtype) -> torch.Tensor:
        """``self.state[p][key]``: zeros of ``dtype`` on first use, converted if the group's
        ``state_dtype`` changed since."""
        state = self.state[p]
        if key not in state:
            state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        elif state[key].dtype != dtype:
            state[key] = state[key].to(dtype)
        return state[key]

    def _write(self, p: torch.Tensor, value: torch.Tensor, group: dict[str, Any]) -> None:
        """Write the FP32 result ``value`` into ``p`` with the group's rounding."""
        rounding = group["rounding"]
        state = self.state[p]
        compensation = None
        if rounding == "kahan":
            compensation = self._state_tensor(p, "compensation", p.dtype)
        else:
            state.pop("compensation", None)   # a pending compensation (< 1 ulp) is dropped
        generator = self._generator(p.device) if rounding == "stochastic" else None
        write_rounded_(p, value, rounding, compensation=compensation, generator=generator)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Perform one optimization step; returns ``closure()``'s loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self._step_param(p, group)
        return loss

    # -- checkpoints -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:   # pickle / copy.deepcopy keep seed and generators
        return {**super().__getstate__(), "seed": self.seed, "_generators": self._generators}

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus ``"rng"``: the seed and every generator's state.

        As with torch.optim, the tensors are references to the live state:
        ``torch.save`` it (or ``copy.deepcopy``) before stepping on.
        """
        sd = super().state_dict()
        sd["rng"] = {"seed": self.seed,
                     "generators": {k: g.get_state() for k, g in self._generators.items()}}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output exactly: state tensors keep their saved dtype.

        ``torch.optim.Optimizer.load_state_dict`` casts every floating state
        tensor to its parameter's dtype -- FP32 moments of a BF16 parameter
        would come back as BF16 and the resumed run would differ. Here the
        saved tensors are put back as saved (moved to the parameter's device),
        and the generators continue where they were.
        """
        if not isinstance(state_dict, dict) or "rng" not in state_dict or "state" not in state_dict:
            raise ValueError(f"{type(self).__name__}.load_state_dict() needs the dict returned by "
                             f"{type(self).__name__}.state_dict() (with 'state', 'param_groups' "
                             "and 'rng' keys)")
        state_dict = dict(state_dict)
        rng = state_dict.pop("rng")
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                if torch.is_tensor(value) and key != "step":
                    self.state[p][key] = value.to(device=p.device, copy=True)
        self.seed = non_negative_int("seed", rng["seed"])
        self._generators = {}
        for key, gen_state in rng["generators"].items():
            self._generator(torch.device(key)).set_state(gen_state)


class BF16AdamW(_BF16Optimizer):
    """AdamW for BF16 (or FP16/FP32) weights: FP32 update, written with a chosen rounding.

    Per parameter ``p`` with gradient ``g`` (float32 copies of both), step
    ``t``, exactly the operations of ``torch.optim.AdamW(foreach=False)``::

        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        new = p * (1 - lr * weight_decay)
        new = new - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    then ``write_rounded_(p, new, rounding)``. ``m`` and ``v`` are computed
    in FP32 and stored in ``state_dtype`` (rounded to nearest); the step uses
    the FP32 values before that storage rounding.

    Differences from torch (measured, torch 2.13): ``torch.optim.AdamW`` on a
    BF16 parameter keeps ``exp_avg``/``exp_avg_sq`` in BF16 (the parameter's
    dtype), rounds after every operation (``mul_``, ``addcmul_``, the
    denominator) and rounds the decayed weight before adding the step; this
    class rounds once. With FP32 parameters and ``rounding`` "nearest" or
    "stochastic" it *is* torch.optim.AdamW, bit for bit; with "kahan" the
    compensation also catches FP32 rounding errors (differences of a few
    FP32 ulps). Unlike AnyPrecisionAdamW, whose weight decay multiplies the
    BF16 weight directly (and so is rounded away like any small update), the
    decay here is part of the compensated update.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer;
            dtype bf16, fp16 or fp32 (else TypeError). An FP32 parameter makes
            "nearest" and "stochastic" exact copies (nothing to round).
        lr (float, default 1e-3), betas (tuple[float, float], default
            (0.9, 0.999)), eps (float, default 1e-8), weight_decay (float,
            default 1e-2): as torch.optim.AdamW.
        rounding (str, default "stochastic"): "nearest", "stochastic" or
            "kahan" (adds a ``compensation`` tensor of the parameter's dtype).
        state_dtype (torch.dtype, default torch.float32): dtype of ``exp_avg``
            and ``exp_avg_sq``: torch.float32 or torch.bfloat16.
        seed (int, default 0): seed of the optimizer's generators (one per
            device). Pick one not used to draw the weights: the same random
            stream would correlate the first rounding decisions with the
            weights' low bits.

    The memory bill (``course_lib.memory.measure_training_state`` counts every
    state tensor): BF16 weights + BF16 grads + state: 2 + 2 + 8 = 12 bytes per
    parameter with FP32 state, 8 with BF16 state, +2 with Kahan.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 1).bfloat16()
        >>> opt = BF16AdamW(model.parameters(), lr=1e-2, rounding="kahan")
        >>> model(torch.ones(2, 4, dtype=torch.bfloat16)).float().sum().backward()
        >>> opt.step(); sorted(opt.state[model.weight])
        ['compensation', 'exp_avg', 'exp_avg_sq', 'step']
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, rounding: str = "stochastic",
                 state_dtype: torch.dtype = torch.float32, seed: int = 0):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        rounding=rounding, state_dtype=state_dtype)
        super().__init__(params, defaults, seed)

    def _check_group(self, group: dict[str, Any]) -> None:
        non_negative_float("lr", group["lr"])
        non_negative_float("eps", group["eps"])
        non_negative_float("weight_decay", group["weight_decay"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats in [0, 1), got {betas!r}")
        _beta("betas[0]", betas[0])
        _beta("betas[1]", betas[1])

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
        exp_avg = self._state_tensor(p, "exp_avg", group["state_dtype"])
        exp_avg_sq = self._state_tensor(p, "exp_avg_sq", group["state_dtype"])
        state["step"] += 1
        t = state["step"].item()
        grad = p.grad.to(torch.float32)
        m = exp_avg.to(torch.float32)          # the state itself when it is float32
        v = exp_avg_sq.to(torch.float32)
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if m is not exp_avg:
            exp_avg.copy_(m)
            exp_avg_sq.copy_(v)
        new = p.to(torch.float32, copy=True)
        if wd != 0:
            new.mul_(1 - lr * wd)
        step_size = lr / (1 - beta1 ** t)
        denom = (v.sqrt() / (1 - beta2 ** t) ** 0.5).add_(eps)
        new.addcdiv_(m, denom, value=-step_size)
        self._write(p, new, group)


class BF16SGD(_BF16Optimizer):
    """SGD (momentum, weight decay) for BF16 weights: FP32 update, written with a chosen rounding.

    Per parameter, with ``g`` the gradient in float32, exactly the operations
    of ``torch.optim.SGD(foreach=False)``::

        g = g + weight_decay * p
        buf = g (first step)  or  momentum * buf + (1 - dampening) * g
        d = g + momentum * buf (nesterov)  or  buf  (or g without momentum)
        new = p - lr * d

    then ``write_rounded_(p, new, rounding)``; ``buf`` is computed in FP32 and
    stored in ``state_dtype``. With FP32 parameters and "nearest" or
    "stochastic" this is torch.optim.SGD bit for bit; with BF16 parameters,
    no momentum and no weight decay, "nearest" is also what torch.optim.SGD
    does to a BF16 model (one rounding of ``p - lr * g``) -- bit for bit when
    ``lr`` is a BF16 value (e.g. a power of two): torch's CPU kernel for
    ``bf16.add_(g, alpha=-lr)`` rounds ``alpha`` to BF16 in its vectorised
    loop (measured with torch 2.13), so for ``lr=0.01`` torch steps with
    0.010009765625.

    Args:
        params: as for any torch optimizer (bf16, fp16 or fp32 parameters).
        lr (float): learning rate (required, as in torch.optim.SGD).
        momentum (float, default 0), dampening (float, default 0),
            weight_decay (float, default 0), nesterov (bool, default False):
            as torch.optim.SGD (nesterov needs momentum > 0 and dampening 0).
        rounding (str, default "stochastic"), state_dtype (torch.dtype,
            default torch.float32), seed (int, default 0): as :class:`BF16AdamW`.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.bfloat16))
        >>> w.grad = torch.tensor([1.0], dtype=torch.bfloat16)
        >>> opt = BF16SGD([w], lr=1e-3, rounding="nearest"); opt.step(); w.item()   # 0.999 -> 1
        1.0
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, rounding: str = "stochastic",
                 state_dtype: torch.dtype = torch.float32, seed: int = 0):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, rounding=rounding, state_dtype=state_dtype)
        super().__init__(params, defaults, seed)

    def _check_group(self, group: dict[str, Any]) -> None:
        non_negative_float("lr", group["lr"])
        non_negative_float("momentum", group["momentum"])
        non_negative_float("dampening", group["dampening"])
        non_negative_float("weight_decay", group["weight_decay"])
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov must be a bool, got {group['nesterov']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0; got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        d = p.grad.to(torch.float32)
        if wd != 0:
            d = d.add(p.to(torch.float32), alpha=wd)
        if momentum != 0:
            state = self.state[p]
            if "momentum_buffer" not in state:
                buf = d.clone()
                state["momentum_buffer"] = buf.to(group["state_dtype"])
            else:
                stored = self._state_tensor(p, "momentum_buffer", group["state_dtype"])
                buf = stored.to(torch.float32)
                buf.mul_(momentum).add_(d, alpha=1 - group["dampening"])
                if buf is not stored:
                    stored.copy_(buf)
            d = d.add(buf, alpha=momentum) if group["nesterov"] else buf
        new = p.to(torch.float32, copy=True).add_(d, alpha=-lr)
        self._write(p, new, group)
