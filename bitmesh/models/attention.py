"""Attention blocks rewritten so their projections are plain ``nn.Linear`` calls.

bitmesh quantizes the Conv/Linear modules the forward pass *calls*: that one
rule drives layer discovery (forward hooks), costing, the fake-quant wrapper
(``bitmesh.quant.qmodel.QuantLayer`` replaces the module), the sensitivity
traces (``<layer>.weight``) and the ONNX export (the initializer
``<layer>.weight``). Two attention implementations break the rule by using
their projection weights directly in a functional call, so every one of
those consumers missed them (on ``vit_b_16`` 28.3 M of 86.6 M parameters):

- ``nn.MultiheadAttention`` keeps the q/k/v projection as a bare parameter
  ``in_proj_weight`` and calls ``F.multi_head_attention_forward`` (or the
  fused fast path) with it and with ``out_proj.weight``;
- torchvision's Swin ``ShiftedWindowAttention`` calls
  ``shifted_window_attention(x, self.qkv.weight, self.proj.weight, ...)``.

Rather than teach every consumer a second kind of layer, :func:`adapt_attention`
rewrites these blocks once, when the model is built, into modules that call
their projections as ``nn.Linear`` modules. Everything downstream then sees
ordinary Linear layers and needs no change; the computation is the same (a
test checks the outputs agree with torch's own).

The in-projection is ONE layer (q, k and v tied), not three:

- in self-attention the three projections read the same input, so they are
  one GEMM with a (3E, E) weight, which is how runtimes execute them (a fused
  QKV matmul; ONNX exports one MatMul) and how the checkpoint stores them
  (one ``in_proj_weight``). Three layers would need three activation
  quantizers on one tensor, which a runtime cannot use, and a format per
  projection that no fused kernel runs;
- weight scales are per output channel, so q, k and v rows already keep
  their own scales inside the one layer;
- one decision unit per block keeps the search space of a 12-block ViT at 24
  attention units instead of 48.

Cross-attention (a query that is not the key and value) cannot share one
GEMM: there the block computes the three projections from slices of the
weight with ``F.linear``, so the in-projection is not a discovered layer and
stays float (the coverage figure shows it); the out-projection is still one.

State dicts keep torchvision's keys (``in_proj_weight``, ``in_proj_bias``)
both ways, so pretrained or previously saved weights load unchanged and
saved weights load into a plain torchvision model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProjectedAttention", "adapt_attention", "torchvision_state_keys"]

logger = logging.getLogger(__name__)

#: ProjectedAttention's own key -> nn.MultiheadAttention's key.
_LEGACY_KEYS = {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"}


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """One additive mask (batch, heads, q_len, k_len), or None when nothing is masked.

    Same conventions as ``nn.MultiheadAttention``: a boolean mask is True where
    attention is NOT allowed; a float mask is added to the scores.
    """

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
                mask, float("-inf")
            )
        return mask.to(dtype)

    merged: Tensor | None = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu(1)
    if attn_mask is not None:
        mask = additive(attn_mask)
        if mask.dim() == 2:
            mask = mask.view(1, 1, q_len, k_len)
        else:
            mask = mask.view(batch, heads, q_len, k_len)
        merged = mask
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(batch, 1, 1, k_len)
        merged = padding if merged is None else merged + padding
    return merged


class ProjectedAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``in_proj`` and ``out_proj`` as Linear modules.

    Same signature and results as the module it replaces (dropout included);
    built only from one with q, k and v of the embedding's width and no
    ``bias_k``/``bias_v``/``add_zero_attn`` (what every torchvision model uses).
    """

    def __init__(self, source: nn.MultiheadAttention) -> None:
        super().__init__()
        if not adaptable(source):
            raise ValueError("this nn.MultiheadAttention has separate q/k/v widths or extra biases")
        self.embed_dim = source.embed_dim
        self.num_heads = source.num_heads
        self.dropout = source.dropout
        self.batch_first = source.batch_first
        self.head_dim = source.head_dim
        in_proj_weight = cast(Tensor, source.in_proj_weight)
        in_proj_bias = source.in_proj_bias
        self.in_proj = nn.Linear(
            self.embed_dim,
            3 * self.embed_dim,
            bias=in_proj_bias is not None,
            device=in_proj_weight.device,
            dtype=in_proj_weight.dtype,
        )
        # The same Parameter objects: no copy, and an optimizer built on the
        # source keeps training these.
        self.in_proj.weight = cast(nn.Parameter, in_proj_weight)
        if in_proj_bias is not None:
            self.in_proj.bias = cast(nn.Parameter, in_proj_bias)
        self.out_proj = source.out_proj
        self.register_state_dict_post_hook(_to_legacy_keys)
        self.register_load_state_dict_pre_hook(_from_legacy_keys)

    def _project_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, ...]:
        if query is key and key is value:
            return tuple(self.in_proj(query).chunk(3, dim=-1))
        # Cross-attention: three inputs, three slices of the one weight (not a
        # module call, so not a quantized layer: see the module docstring).
        weight = cast(Tensor, getattr(self.in_proj, "inner", self.in_proj).weight)
        bias = cast(Tensor | None, getattr(self.in_proj, "inner", self.in_proj).bias)
        weights = weight.chunk(3)
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        return tuple(
            F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases, strict=True)
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            same_kv = key is value
            same_qk = query is key
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        q, k, v = self._project_inputs(query, key, value)
        batch, q_len, _ = q.shape
        k_len = k.shape[1]

        def heads(x: Tensor, length: int) -> Tensor:
            return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(q, q_len), heads(k, k_len), heads(v, k_len)
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        mask = _merge_masks(
            attn_mask,
            key_padding_mask,
            is_causal,
            batch,
            self.num_heads,
            q_len,
            k_len,
            scores.dtype,
            scores.device,
        )
        if mask is not None:
            scores = scores + mask
        weights = F.softmax(scores, dim=-1)
        weights = F.dropout(weights, p=self.dropout, training=self.training)
        out = (weights @ v).transpose(1, 2).reshape(batch, q_len, self.embed_dim)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        returned = weights.mean(dim=1) if average_attn_weights else weights
        return out, returned if batched else returned.squeeze(0)


def _to_legacy_keys(
    module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    for own, legacy in _LEGACY_KEYS.items():
        if prefix + own in state:
            state[prefix + legacy] = state.pop(prefix + own)


def _from_legacy_keys(
    module: nn.Module,
    state: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    for own, legacy in _LEGACY_KEYS.items():
        if prefix + legacy in state:
            state[prefix + own] = state.pop(prefix + legacy)


def torchvision_state_keys(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every ProjectedAttention's ``in_proj.*`` keys under
    torchvision's names (for state dicts assembled by hand, as
    ``plain_state_dict`` does from a wrapped model)."""
    renames = {
        f"{name}.{own}": f"{name}.{legacy}"
        for name, module in model.named_modules()
        if isinstance(module, ProjectedAttention)
        for own, legacy in _LEGACY_KEYS.items()
    }
    return {renames.get(key, key): value for key, value in state.items()}


def adaptable(module: nn.MultiheadAttention) -> bool:
    """Whether ``module`` has the one (3E, E) in-projection ProjectedAttention assumes."""
    return bool(
        module._qkv_same_embed_dim
        and module.in_proj_weight is not None
        and module.bias_k is None
        and module.bias_v is None
        and not module.add_zero_attn
    )


def _swin_attention_types() -> tuple[type[nn.Module], ...]:
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention
    except ImportError:  # torchvision without Swin
        return ()
    return (ShiftedWindowAttention,)


def _module_called_window_attention(module: nn.Module, x: Tensor) -> Tensor:
    """torchvision's ``shifted_window_attention`` (Swin V1), with ``module.qkv``
    and ``module.proj`` called as modules instead of their weights passed to
    ``F.linear``. Kept line for line with torchvision 0.29's function."""
    window_size: list[int] = list(module.window_size)  # type: ignore[arg-type]
    shift_size: list[int] = list(module.shift_size)  # type: ignore[arg-type]
    num_heads = int(module.num_heads)  # type: ignore[arg-type]
    relative_position_bias = module.get_relative_position_bias()  # type: ignore[operator]
    B, H, W, C = x.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(
        B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C
    )
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    qkv = module.qkv(x)  # type: ignore[operator]
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // num_heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        attn_mask = attn_mask.view(
            pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1]
        )
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(
            num_windows, window_size[0] * window_size[1]
        )
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=float(module.attention_dropout), training=module.training)  # type: ignore[arg-type]
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = module.proj(x)  # type: ignore[operator]
    x = F.dropout(x, p=float(module.dropout), training=module.training)  # type: ignore[arg-type]
    x = x.view(
        B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C
    )
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


def _swin_class(base: type[nn.Module]) -> type[nn.Module]:
    """A subclass of torchvision's window attention whose forward calls its
    Linear modules; the instance keeps its attributes and state-dict keys."""
    return type(
        f"ModuleCalled{base.__name__}",
        (base,),
        {"forward": _module_called_window_attention, "__module__": __name__},
    )


_SWIN_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def adapt_attention(model: nn.Module) -> nn.Module:
    """Rewrite ``model``'s attention blocks in place (see the module docstring); return it.

    Blocks of other kinds (Swin V2's cosine attention, an ``nn.MultiheadAttention``
    with separate q/k/v widths) are left as they are, their projections
    uncovered.
    """
    swin_types = _swin_attention_types()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            if adaptable(module):
                _set_child(model, name, ProjectedAttention(module))
            else:
                logger.warning("leaving attention %s float: separate q/k/v widths or biases", name)
        elif type(module) in swin_types:
            base = type(module)
            if base not in _SWIN_CLASSES:
                _SWIN_CLASSES[base] = _swin_class(base)
            module.__class__ = _SWIN_CLASSES[base]
    return model
