"""Three small models, sized so a chapter's training run takes seconds on a CPU.

* ``MLP``: ``Linear -> ReLU`` blocks and a linear classifier head, for the
  64-pixel digits (inputs of any shape are flattened).
* ``SmallCNN``: two ``Conv3x3 -> BatchNorm -> ReLU`` blocks, 2x2 max-pool and
  a linear head, for ``(B, 1, 8, 8)`` digit images.
* ``TinyTransformer``: a GPT-style causal character language model (token +
  learned position embeddings, pre-LayerNorm blocks of causal multi-head
  self-attention and a 4x GELU MLP, final LayerNorm, linear head). Attention is
  either ``F.scaled_dot_product_attention(is_causal=True)`` or, with
  ``sdpa=False``, the same computation written out
  (``softmax(QK^T / sqrt(d) + causal mask) V``) so that a trace under autocast
  shows every matmul and the softmax separately.

All models are plain ``nn.Module`` stacks of standard layers; construct them
after ``torch.manual_seed(s)`` for reproducible weights.
Introduced in chapter 02 (notebooks/02_where_16_bits_break.ipynb).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.validate import positive_int

__all__ = ["MLP", "SmallCNN", "CausalSelfAttention", "TransformerBlock", "TinyTransformer",
           "count_parameters"]


class MLP(nn.Module):
    """A multilayer perceptron classifier.

    Algorithm: flatten the input to ``(B, in_features)``, then for each width
    in ``hidden`` a ``Linear -> ReLU``, then ``Linear(hidden[-1], num_classes)``
    producing logits.

    Args:
        in_features (int, default 64): input size (64 for 8x8 digits).
        hidden (Sequence[int], default (128, 64)): hidden widths; may be empty
            (then the model is logistic regression).
        num_classes (int, default 10): number of logits.

    Example:
        >>> _ = torch.manual_seed(0); m = MLP(hidden=(32,))
        >>> m(torch.randn(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128, 64),
                 num_classes: int = 10):
        super().__init__()
        positive_int("in_features", in_features)
        positive_int("num_classes", num_classes)
        if isinstance(hidden, int) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of ints such as (128, 64), got {hidden!r}")
        widths = [in_features] + [positive_int("hidden width", h) for h in hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.in_features = in_features
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} features per sample, "
                             f"got input of shape {tuple(x.shape)}")
        return self.net(x)


class SmallCNN(nn.Module):
    """A small convolutional classifier for ``(B, 1, 8, 8)`` images.

    Algorithm: ``Conv3x3(1->c1) -> BatchNorm -> ReLU -> Conv3x3(c1->c2) ->
    BatchNorm -> ReLU -> MaxPool2x2 -> flatten -> Linear(c2*4*4, num_classes)``
    (padding 1, so the convolutions keep the 8x8 size).

    Args:
        num_classes (int, default 10): number of logits.
        channels (tuple[int, int], default (16, 32)): conv widths ``c1, c2``.

    Example:
        >>> _ = torch.manual_seed(0); m = SmallCNN()
        >>> m(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, num_classes: int = 10, channels: tuple[int, int] = (16, 32)):
        super().__init__()
        positive_int("num_classes", num_classes)
        if not isinstance(channels, (tuple, list)) or len(channels) != 2:
            raise TypeError(f"channels must be a pair of ints such as (16, 32), got {channels!r}")
        c1, c2 = (positive_int("channels", c) for c in channels)
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(c2 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[1] == 64:
            x = x.reshape(-1, 1, 8, 8)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"SmallCNN expects (B, 1, 8, 8) images (or (B, 64)), "
                             f"got shape {tuple(x.shape)}")
        return self.head(self.features(x).flatten(1))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention.

    Algorithm: ``q, k, v = split(Linear(x))`` into ``n_heads`` heads of size
    ``d = d_model / n_heads``; ``y = softmax(q k^T / sqrt(d) + M) v`` where
    ``M`` is ``-inf`` above the diagonal (a token sees only itself and earlier
    tokens); heads are concatenated and projected by a final ``Linear``.

    Args:
        d_model (int): model width, divisible by ``n_heads``.
        n_heads (int): number of heads.
        block_size (int): longest sequence (size of the causal mask buffer).
        sdpa (bool, default True): use ``F.scaled_dot_product_attention``;
            ``False`` spells the computation out with ``matmul``/``softmax``.

    Example:
        >>> _ = torch.manual_seed(0); a = CausalSelfAttention(16, 4, block_size=8)
        >>> a(torch.randn(2, 8, 16)).shape
        torch.Size([2, 8, 16])
    """

    def __init__(self, d_model: int, n_heads: int, block_size: int, sdpa: bool = True):
        super().__init__()
        positive_int("d_model", d_model)
        positive_int("n_heads", n_heads)
        positive_int("block_size", block_size)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.sdpa = bool(sdpa)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        mask = torch.triu(torch.ones(block_size, block_size, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
            att = att.masked_fill(self.causal_mask[:T, :T], float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``.

    The MLP is ``Linear(d, 4d) -> GELU -> Linear(4d, d)``. Arguments as for
    ``CausalSelfAttention``.

    Example:
        >>> _ = torch.manual_seed(0); TransformerBlock(16, 2, 8)(torch.randn(1, 8, 16)).shape
        torch.Size([1, 8, 16])
    """

    def __init__(self, d_model: int, n_heads: int, block_size: int, sdpa: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, block_size, sdpa=sdpa)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """A GPT-style causal character language model.

    Algorithm: ``h = tok_emb[idx] + pos_emb[0..T-1]``, ``n_layers`` pre-LN
    ``TransformerBlock``s, final ``LayerNorm``, ``Linear(d_model, vocab_size)``
    giving next-token logits at every position.

    Args:
        vocab_size (int): number of tokens (e.g. ``corpus.vocab_size``).
        block_size (int, default 64): longest input sequence.
        d_model (int, default 64): width.
        n_heads (int, default 4): attention heads.
        n_layers (int, default 2): blocks.
        sdpa (bool, default True): attention kernel, see ``CausalSelfAttention``.

    Input ``(B, T)`` int64 ids with ``T <= block_size``; output ``(B, T,
    vocab_size)`` logits.

    Example:
        >>> _ = torch.manual_seed(0); m = TinyTransformer(vocab_size=50, block_size=16)
        >>> m(torch.randint(0, 50, (2, 16))).shape
        torch.Size([2, 16, 50])
    """

    def __init__(self, vocab_size: int, block_size: int = 64, d_model: int = 64,
                 n_heads: int = 4, n_layers: int = 2, sdpa: bool = True):
        super().__init__()
        positive_int("vocab_size", vocab_size)
        positive_int("n_layers", n_layers)
        self.block_size = positive_int("block_size", block_size)
        self.vocab_size = vocab_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, block_size, sdpa=sdpa)
                                    for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"TinyTransformer expects (B, T) integer token ids, "
                             f"got {idx.dtype} of shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        h = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Return the number of scalar parameters of ``model``.

    Args:
        model (nn.Module): any module.
        trainable_only (bool, default True): count only ``requires_grad`` ones.

    Example:
        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_parameters() takes an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
