"""Small, offline data sets for the course: handwritten digits and a text corpus.

Nothing here downloads anything; both data sets ship with the software the
course already needs.

* **Digits** (``digits_tensors``, ``digits_loaders``): scikit-learn's bundled
  ``load_digits`` (1797 grey-scale 8x8 images, 10 classes, pixel values 0..16).
  Algorithm: a deterministic *stratified* split (for every class, a
  ``torch.randperm`` seeded by ``seed`` picks ``round(n_class * val_fraction)``
  images for validation), then standardisation with the mean and standard
  deviation of the **training** pixels (one global mean/std, so images stay
  images for a CNN and no pixel has a zero standard deviation), stored as
  float32. Loaders shuffle with a seeded ``torch.Generator`` so the batch order
  is reproducible.
* **Characters** (``CharCorpus``, ``char_lm_loaders``): the Python language
  reference that every CPython ships for ``help()`` -- the ``pydoc_data.topics``
  module, all 79 topics joined in sorted-key order (about 465k characters on
  Python 3.11; 459k on 3.10, 492k on 3.12, 511k on 3.13). It is identical for a
  given Python version but differs slightly between versions; ``fingerprint``
  identifies the exact text. Typographic characters are mapped to ASCII by
  default, leaving a vocabulary of about 95 characters. Next-character windows
  ``x = text[i:i+T]``, ``y = text[i+1:i+T+1]`` are cut from the first
  ``1 - val_fraction`` of the text (train) and the rest (validation).

Introduced in chapter 02 (notebooks/02_where_16_bits_break.ipynb).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from course_lib.device import resolve_device
from course_lib.validate import fraction, non_negative_int, positive_int

__all__ = [
    "DigitsSplit",
    "digits_tensors",
    "digits_loaders",
    "CharCorpus",
    "CharWindows",
    "char_lm_loaders",
]


# --------------------------------------------------------------------------- helpers
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- digits
@dataclass(frozen=True)
class DigitsSplit:
    """The digits data split into standardised train/validation tensors.

    Attributes: ``x_train`` (float32, ``(N, 64)`` or ``(N, 1, 8, 8)``),
    ``y_train`` (int64, ``(N,)``), ``x_val``, ``y_val`` likewise, and the
    training statistics ``mean`` and ``std`` (Python floats, in raw pixel
    units 0..16) that were used to standardise both parts. Iterating gives
    the four tensors: ``x_train, y_train, x_val, y_val = digits_tensors()``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: float
    std: float

    def __iter__(self):
        return iter((self.x_train, self.y_train, self.x_val, self.y_val))


def digits_tensors(val_fraction: float = 0.2, seed: int = 0, device=None,
                   flatten: bool = True) -> DigitsSplit:
    """Return scikit-learn's digits as a deterministic, standardised split.

    Algorithm: load the 1797 images, split each class separately with a
    ``torch.randperm`` seeded by ``seed`` (``round(n_class * val_fraction)``
    images of each class go to validation, so class proportions match), then
    standardise with the global mean and std of the training pixels.

    Args:
        val_fraction (float, default 0.2): share of each class used for validation.
        seed (int, default 0): seed of the split.
        device (str | torch.device | None, default None): where the tensors
            live; ``None`` means ``default_device()``.
        flatten (bool, default True): ``(N, 64)`` inputs for an MLP; ``False``
            gives ``(N, 1, 8, 8)`` images for a CNN.

    Returns:
        DigitsSplit: the tensors and the training mean/std.

    Example:
        >>> s = digits_tensors(device="cpu")
        >>> s.x_train.shape, s.x_val.shape, s.x_train.dtype
        (torch.Size([1438, 64]), torch.Size([359, 64]), torch.float32)
    """
    val_fraction = fraction("val_fraction", val_fraction)
    seed = non_negative_int("seed", seed)
    if not isinstance(flatten, bool):
        raise TypeError(f"flatten must be a bool, got {type(flatten).__name__}")
    dev = resolve_device(device)

    from sklearn.datasets import load_digits  # local import: sklearn is slow to import

    raw = load_digits()
    x = torch.as_tensor(raw.data, dtype=torch.float64)
    y = torch.as_tensor(raw.target, dtype=torch.int64)

    gen = _generator(seed)
    train_idx, val_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(round(len(idx) * val_fraction))
        if n_val == 0 or n_val == len(idx):
            raise ValueError(f"val_fraction={val_fraction} leaves class {c} "
                             f"({len(idx)} images) with an empty train or validation part")
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train_idx = torch.sort(torch.cat(train_idx)).values
    val_idx = torch.sort(torch.cat(val_idx)).values

    x_train, x_val = x[train_idx], x[val_idx]
    mean = float(x_train.mean())
    std = float(x_train.std())
    x_train = ((x_train - mean) / std).to(torch.float32)
    x_val = ((x_val - mean) / std).to(torch.float32)
    if not flatten:
        x_train = x_train.reshape(-1, 1, 8, 8)
        x_val = x_val.reshape(-1, 1, 8, 8)
    return DigitsSplit(x_train.to(dev), y[train_idx].to(dev), x_val.to(dev), y[val_idx].to(dev),
                       mean, std)


def digits_loaders(batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0,
                   device=None, flatten: bool = True):
    """Return ``(train_loader, val_loader)`` over the digits split.

    Algorithm: ``digits_tensors(val_fraction, seed, device, flatten)`` wrapped
    in ``TensorDataset``s; the train loader shuffles with a
    ``torch.Generator`` seeded by ``seed`` (same order every run), the
    validation loader does not shuffle. Neither drops the last, smaller batch.

    Args:
        batch_size (int, default 64): samples per batch (both loaders).
        val_fraction (float, default 0.2): see ``digits_tensors``.
        seed (int, default 0): seed of the split and of the shuffling.
        device (str | torch.device | None, default None): where the batches
            live; ``None`` means ``default_device()``.
        flatten (bool, default True): ``False`` yields ``(B, 1, 8, 8)`` images.

    Returns:
        tuple[DataLoader, DataLoader]: batches of ``(x float32, y int64)``.

    Example:
        >>> train_dl, val_dl = digits_loaders(batch_size=32, device="cpu")
        >>> x, y = next(iter(train_dl)); x.shape, y.shape
        (torch.Size([32, 64]), torch.Size([32]))
    """
    batch_size = positive_int("batch_size", batch_size)
    split = digits_tensors(val_fraction=val_fraction, seed=seed, device=device, flatten=flatten)
    train = DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=batch_size,
                       shuffle=True, generator=_generator(seed))
    val = DataLoader(TensorDataset(split.x_val, split.y_val), batch_size=batch_size, shuffle=False)
    return train, val


# --------------------------------------------------------------------------- characters
#: Typographic characters of the Python docs mapped to ASCII (``ascii_only=True``).
_ASCII_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": "--", "\u2026": "...", "\u00b0": " degrees", "\u00df": "ss",
    "\u00a0": " ",
}


def _python_reference_text() -> str:
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # pragma: no cover - stripped-down Python builds
        raise RuntimeError(
            "CharCorpus needs the 'pydoc_data' module of the Python standard library "
            "(the text behind help()); this Python build lacks it. Pass text=... explicitly."
        ) from exc
    return "\n\n".join(topics[key] for key in sorted(topics))


class CharCorpus:
    """A character-level corpus with a fixed vocabulary.

    Algorithm: the vocabulary is the sorted set of characters of the text; a
    character's id is its position in that list. ``encode`` maps a string to
    an int64 tensor of ids, ``decode`` maps ids back to a string.

    Args:
        text (str | None, default None): the text; ``None`` uses the Python
            language reference shipped as ``pydoc_data.topics`` (see the
            module docstring).
        ascii_only (bool, default True): map typographic quotes/dashes to
            ASCII and drop any other non-ASCII character.
        max_chars (int | None, default None): keep only the first
            ``max_chars`` characters (handy for quick experiments).

    Attributes:
        text (str), vocab (list[str]), vocab_size (int), data (int64 tensor of
        the whole text), fingerprint (first 16 hex digits of the text's SHA-256).

    Example:
        >>> c = CharCorpus("hello world")
        >>> c.vocab_size, c.decode(c.encode("hello"))
        (8, 'hello')
    """

    def __init__(self, text: str | None = None, ascii_only: bool = True,
                 max_chars: int | None = None):
        if text is None:
            text = _python_reference_text()
            self.source = "pydoc_data.topics"
        elif isinstance(text, str):
            self.source = "user text"
        else:
            raise TypeError(f"text must be a str or None, got {type(text).__name__}")
        if ascii_only:
            text = "".join(_ASCII_MAP.get(ch, ch) for ch in text)
            text = "".join(ch for ch in text if ord(ch) < 128)
        if max_chars is not None:
            max_chars = positive_int("max_chars", max_chars)
            text = text[:max_chars]
        if len(text) < 2:
            raise ValueError(f"the corpus needs at least 2 characters, got {len(text)}")
        self.text = text
        self.vocab = sorted(set(text))
        self._index = {ch: i for i, ch in enumerate(self.vocab)}
        self.data = torch.tensor([self._index[ch] for ch in text], dtype=torch.int64)
        self.fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        return (f"CharCorpus(source={self.source!r}, chars={len(self.text)}, "
                f"vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})")

    def encode(self, s: str) -> torch.Tensor:
        """Map a string to an int64 tensor of character ids.

        Example: ``CharCorpus("abc").encode("cab")`` -> ``tensor([2, 0, 1])``.
        """
        if not isinstance(s, str):
            raise TypeError(f"encode() takes a str, got {type(s).__name__}")
        missing = sorted({ch for ch in s if ch not in self._index})
        if missing:
            raise ValueError(f"characters {missing!r} are not in the vocabulary "
                             f"({self.vocab_size} characters: {''.join(self.vocab)!r})")
        return torch.tensor([self._index[ch] for ch in s], dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Map character ids (1-D tensor or sequence of ints) back to a string.

        Example: ``CharCorpus("abc").decode([2, 0, 1])`` -> ``'cab'``.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(f"decode() takes a 1-D sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i!r} is not a character id (allowed: ints 0..{self.vocab_size - 1})")
            out.append(self.vocab[i])
        return "".join(out)


class CharWindows(Dataset):
    """Next-character windows over a 1-D id tensor.

    Item ``i`` is ``(data[j:j+T], data[j+1:j+T+1])`` with ``j = i * stride``
    and ``T = block_size``: the target is the input shifted by one character.

    Args:
        data (torch.Tensor): 1-D int64 ids.
        block_size (int): window length ``T``.
        stride (int | None, default None): offset between windows; ``None``
            means ``block_size`` (non-overlapping windows).

    Example:
        >>> w = CharWindows(torch.arange(10), block_size=4)
        >>> len(w), w[1]
        (2, (tensor([4, 5, 6, 7]), tensor([5, 6, 7, 8])))
    """

    def __init__(self, data: torch.Tensor, block_size: int, stride: int | None = None):
        if not isinstance(data, torch.Tensor) or data.dim() != 1:
            raise TypeError("data must be a 1-D tensor of character ids")
        self.data = data
        self.block_size = positive_int("block_size", block_size)
        self.stride = self.block_size if stride is None else positive_int("stride", stride)
        n = (len(data) - 1 - self.block_size) // self.stride + 1
        if len(data) - 1 < self.block_size or n < 1:
            raise ValueError(f"a text of {len(data)} characters is too short for block_size={block_size}")
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        if not -self._n <= i < self._n:
            raise IndexError(f"window {i} out of range for {self._n} windows")
        j = (i % self._n) * self.stride
        chunk = self.data[j:j + self.block_size + 1]
        return chunk[:-1], chunk[1:]


def char_lm_loaders(block_size: int = 64, batch_size: int = 32, seed: int = 0,
                    val_fraction: float = 0.1, stride: int | None = None,
                    corpus: CharCorpus | None = None, max_chars: int | None = None,
                    device=None):
    """Return ``(train_loader, val_loader, corpus)`` of next-character windows.

    Algorithm: the first ``1 - val_fraction`` of the corpus ids are cut into
    training windows, the rest into validation windows (``CharWindows``;
    contiguous split, so no validation text leaks into training). The train
    loader shuffles with a ``torch.Generator`` seeded by ``seed``; the
    validation loader does not shuffle.

    Args:
        block_size (int, default 64): characters per window.
        batch_size (int, default 32): windows per batch.
        seed (int, default 0): shuffling seed.
        val_fraction (float, default 0.1): tail share used for validation.
        stride (int | None, default None): window offset, ``None`` = ``block_size``.
        corpus (CharCorpus | None, default None): ``None`` builds
            ``CharCorpus(max_chars=max_chars)``.
        max_chars (int | None, default None): truncate the default corpus.
        device (str | torch.device | None, default None): where the ids live;
            ``None`` means ``default_device()``.

    Returns:
        tuple[DataLoader, DataLoader, CharCorpus]: batches are ``(x, y)`` int64
        tensors of shape ``(B, block_size)``.

    Example:
        >>> tr, va, corpus = char_lm_loaders(block_size=16, batch_size=4, device="cpu")
        >>> x, y = next(iter(tr)); x.shape, bool((x[:, 1:] == y[:, :-1]).all())
        (torch.Size([4, 16]), True)
    """
    block_size = positive_int("block_size", block_size)
    batch_size = positive_int("batch_size", batch_size)
    seed = non_negative_int("seed", seed)
    val_fraction = fraction("val_fraction", val_fraction)
    if corpus is None:
        corpus = CharCorpus(max_chars=max_chars)
    elif not isinstance(corpus, CharCorpus):
        raise TypeError(f"corpus must be a CharCorpus or None, got {type(corpus).__name__}")
    dev = resolve_device(device)
    data = corpus.data.to(dev)
    n_train = int(math.floor(len(data) * (1.0 - val_fraction)))
    train_ds = CharWindows(data[:n_train], block_size, stride)
    val_ds = CharWindows(data[n_train:], block_size, stride)
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=_generator(seed))
    val = DataLoader(val_ds, batch_size=batch_size, shuffle=False)
    return train, val, corpus
