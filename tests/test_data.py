"""Tests for course_lib.data: digits split/loaders and the character corpus."""
import collections

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from course_lib.data import (CharCorpus, CharWindows, char_lm_loaders, digits_loaders,
                             digits_tensors)


@pytest.fixture(scope="module")
def split():
    return digits_tensors(device="cpu")


@pytest.fixture(scope="module")
def corpus():
    return CharCorpus()


# ----------------------------------------------------------------------------- digits
def test_digits_split_sizes_and_dtypes(split):
    assert split.x_train.shape == (1438, 64) and split.x_val.shape == (359, 64)
    x_train, y_train, x_val, y_val = split
    assert x_train is split.x_train and y_val is split.y_val
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.x_train.device.type == "cpu"


def test_digits_split_is_a_stratified_partition(split):
    raw = load_digits()
    # Undo the standardisation: the train and validation parts together are exactly the data set.
    restored = torch.cat([split.x_train, split.x_val]).double() * split.std + split.mean
    restored = np.rint(restored.numpy()).astype(int)
    labels = torch.cat([split.y_train, split.y_val]).numpy()
    got = collections.Counter((tuple(r), int(c)) for r, c in zip(restored, labels))
    want = collections.Counter((tuple(r), int(c)) for r, c in zip(raw.data.astype(int), raw.target))
    assert got == want
    # Stratified: every class contributes round(n_c * 0.2) images to validation.
    for c in range(10):
        n_c = int((raw.target == c).sum())
        assert int((split.y_val == c).sum()) == round(n_c * 0.2)


def test_digits_standardised_with_train_statistics(split):
    raw = load_digits()
    assert abs(float(split.x_train.double().mean())) < 1e-6
    assert abs(float(split.x_train.double().std()) - 1.0) < 1e-6
    assert 4.0 < split.mean < 6.0 and 5.0 < split.std < 7.0  # pixel units 0..16
    assert split.mean != pytest.approx(float(raw.data.mean()), abs=0)  # train-only, not all data


def test_digits_deterministic_by_seed():
    a, b, c = (digits_tensors(seed=s, device="cpu") for s in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.y_val, c.y_val)


def test_digits_unflattened_for_cnn(split):
    img = digits_tensors(device="cpu", flatten=False)
    assert img.x_train.shape == (1438, 1, 8, 8)
    assert torch.equal(img.x_train.reshape(-1, 64), split.x_train)


def test_digits_loaders_deterministic_shuffle_and_unshuffled_val(split):
    tr1, va1 = digits_loaders(batch_size=100, device="cpu")
    tr2, _ = digits_loaders(batch_size=100, device="cpu")
    batches1 = [y for _, y in tr1]
    batches2 = [y for _, y in tr2]
    assert len(tr1) == 15 and batches1[0].shape == (100,) and batches1[-1].shape == (38,)
    assert all(torch.equal(a, b) for a, b in zip(batches1, batches2))
    assert not torch.equal(torch.cat(batches1), split.y_train)  # shuffled
    assert torch.equal(torch.cat([x for x, _ in va1]), split.x_val)  # validation in order
    other_seed, _ = digits_loaders(batch_size=100, seed=3, device="cpu")
    assert not torch.equal(torch.cat([y for _, y in other_seed]), torch.cat(batches1))


@pytest.mark.parametrize("kwargs, exc", [
    ({"val_fraction": 1.5}, ValueError), ({"val_fraction": "0.2"}, TypeError),
    ({"batch_size": 0}, ValueError), ({"batch_size": 2.0}, TypeError),
    ({"seed": -1}, ValueError), ({"device": 3}, TypeError), ({"flatten": "no"}, TypeError),
])
def test_digits_bad_arguments(kwargs, exc):
    with pytest.raises(exc) as info:
        digits_loaders(**{"device": "cpu", **kwargs})
    assert list(kwargs)[0] in str(info.value)


# ----------------------------------------------------------------------------- characters
def test_default_corpus_is_python_reference_text(corpus):
    import pydoc_data.topics
    assert corpus.source == "pydoc_data.topics"
    assert len(corpus) > 100_000
    assert all(ord(ch) < 128 for ch in corpus.vocab) and 60 < corpus.vocab_size <= 128
    assert corpus.text.startswith(pydoc_data.topics.topics[sorted(pydoc_data.topics.topics)[0]][:200])
    assert CharCorpus().fingerprint == corpus.fingerprint  # deterministic


def test_encode_decode_round_trip(corpus):
    piece = corpus.text[5000:6000]
    ids = corpus.encode(piece)
    assert ids.dtype == torch.int64 and ids.shape == (1000,)
    assert torch.equal(ids, corpus.data[5000:6000])
    assert corpus.decode(ids) == piece and corpus.decode(ids.tolist()) == piece
    with pytest.raises(ValueError, match="not in the vocabulary"):
        corpus.encode("caf\u00e9")
    with pytest.raises(ValueError, match="not a character id"):
        corpus.decode([corpus.vocab_size])


def test_custom_text_and_options():
    c = CharCorpus("ba\u2019ab", ascii_only=True)
    assert c.text == "ba'ab" and c.vocab == ["'", "a", "b"]
    assert CharCorpus("abcdef", max_chars=3).text == "abc"
    with pytest.raises(TypeError, match="text must be a str"):
        CharCorpus(b"bytes")
    with pytest.raises(ValueError, match="at least 2 characters"):
        CharCorpus("a")


def test_char_windows_shift_by_one():
    w = CharWindows(torch.arange(100), block_size=8, stride=5)
    assert len(w) == (100 - 1 - 8) // 5 + 1
    x, y = w[3]
    assert torch.equal(x, torch.arange(15, 23)) and torch.equal(y, torch.arange(16, 24))
    x_last, y_last = w[len(w) - 1]
    assert int(y_last[-1]) <= 99
    with pytest.raises(ValueError, match="too short"):
        CharWindows(torch.arange(5), block_size=8)


def test_char_lm_loaders(corpus):
    tr, va, c = char_lm_loaders(block_size=16, batch_size=8, corpus=corpus, device="cpu")
    assert c is corpus
    x, y = next(iter(tr))
    assert x.shape == (8, 16) and y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    n_train = int(len(corpus) * 0.9)
    vx, _ = next(iter(va))  # validation = the tail of the text, in order
    assert torch.equal(vx[0], corpus.data[n_train:n_train + 16])
    tr2, _, _ = char_lm_loaders(block_size=16, batch_size=8, corpus=corpus, device="cpu")
    assert torch.equal(next(iter(tr2))[0], x)  # seeded shuffling
    tr3, _, c3 = char_lm_loaders(block_size=4, batch_size=2, max_chars=1000, device="cpu")
    assert len(c3) == 1000 and len(tr3.dataset) == (900 - 1 - 4) // 4 + 1 == 224 and len(tr3) == 112
    with pytest.raises(TypeError, match="corpus must be a CharCorpus"):
        char_lm_loaders(corpus="text")
