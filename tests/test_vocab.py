"""OOD split vocabularies: tokeniser, stop words, count threshold, K-means words, TAV union."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ood_splits.vocab import (
    NLTK_ENGLISH_STOP_WORDS,
    PUNCTUATION,
    VocabularyError,
    av_vocabulary,
    content_tokens,
    descriptors,
    stop_words_sha256,
    text_vocabulary,
    tokenize,
    union,
)


def test_stop_word_list_is_nltk_english_179():
    words = NLTK_ENGLISH_STOP_WORDS
    assert len(words) == 179 and len(set(words)) == 179
    assert words[:5] == ("i", "me", "my", "myself", "we") and words[-1] == "wouldn't"
    assert {"any", "you're", "should've", "that'll", "mightn't", "ma", "y"} <= set(words)
    assert "film" not in words and "like" not in words
    expected = hashlib.sha256(("\n".join(words) + "\n").encode()).hexdigest()
    assert stop_words_sha256() == expected
    assert stop_words_sha256() == "019f104ba2ed07436d05f9cdd3383034ad66014edc27fc651f837e1a038b6451"


def test_tokeniser_follows_methods_4_2():
    assert PUNCTUATION == '!"#$%&()*+,-./:;<=>?@[\\]^_\u2018{|}~'
    assert "'" not in PUNCTUATION and "`" not in PUNCTUATION
    assert tokenize("I'm SO happy, that's it!!") == ["i'm", "so", "happy", "that's", "it"]
    assert tokenize("well...(really)   GOOD\tfilm\nend") == ["well", "really", "good", "film", "end"]
    assert tokenize("a-b/c_d\u2018e") == ["a", "b", "c", "d", "e"]
    assert tokenize("don`t") == ["don`t"]
    assert tokenize("") == []
    stops = frozenset(NLTK_ENGLISH_STOP_WORDS)
    assert content_tokens("I don't like THE movie, it's bad bad", stops) == ["like", "movie", "bad", "bad"]


def test_text_vocabulary_threshold_counts_and_train_columns():
    test = ["good good film", "bad film", "good", "the good and the bad", "film film film"]
    train = ["good bad", "nothing here", "film good good"]
    vocab = text_vocabulary(test, train, min_count=1)
    # totals on test: good 4, film 5, bad 2 -> all > 1, ordered by count then name
    assert vocab.entries == ["film", "good", "bad"]
    assert vocab.info["counts"] == {"film": 5, "good": 4, "bad": 2}
    dense = vocab.test_counts.toarray()
    assert vocab.test_counts.dtype == np.int64
    np.testing.assert_array_equal(dense, [[1, 2, 0], [1, 0, 1], [0, 1, 0], [0, 1, 1], [3, 0, 0]])
    np.testing.assert_array_equal(vocab.train_counts.toarray(), [[0, 1, 1], [0, 0, 0], [1, 2, 0]])
    np.testing.assert_array_equal(vocab.test_totals, [5, 4, 2])
    # strictly greater than min_count: bad (2) drops at 2, good (4) at 4
    assert text_vocabulary(test, None, min_count=2).entries == ["film", "good"]
    assert text_vocabulary(test, None, min_count=4).entries == ["film"]
    assert vocab.info["stop_words_sha256"] == stop_words_sha256() and vocab.info["min_count"] == 1


def test_empty_text_vocabulary_is_one_clear_error():
    with pytest.raises(VocabularyError, match=r"empty text vocabulary.*min_count=10"):
        text_vocabulary(["good film", "the a an"], None, min_count=10)


def test_descriptors_mask_padding():
    x = np.zeros((2, 4, 1))
    x[0, :2, 0] = [1.0, 3.0]
    x[0, 2:, 0] = 100.0  # padding values that the masked mean must ignore
    x[1, :, 0] = [2.0, 2.0, 2.0, 2.0]
    lengths = np.array([2, 4])
    np.testing.assert_allclose(descriptors(x, lengths, "masked_mean")[:, 0], [2.0, 2.0])
    np.testing.assert_allclose(descriptors(x, lengths, "mean")[:, 0], [51.0, 2.0])
    np.testing.assert_allclose(descriptors(x, lengths, "mean_std"), [[2.0, 1.0], [2.0, 0.0]])
    with pytest.raises(VocabularyError, match="split.av.descriptor"):
        descriptors(x, lengths, "median")


def _blobs(rng: np.random.Generator, n_per: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(centres)), n_per)
    x = centres[labels] + 0.05 * rng.standard_normal((labels.size, centres.shape[1]))
    return x[:, None, :], labels


def test_kmeans_words_fit_on_train_assign_test_deterministic():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    train_x, train_lab = _blobs(rng, 30, centres)
    test_x, test_lab = _blobs(rng, 10, centres)
    vocab = av_vocabulary("audio", train_x, None, test_x, None, k=3, seed=4)
    assert vocab.entries == ["audio#00", "audio#01", "audio#02"] and vocab.modality == ["audio"] * 3
    test_c, train_c = vocab.test_counts.toarray(), vocab.train_counts.toarray()
    assert (test_c.sum(axis=1) == 1).all() and (train_c.sum(axis=1) == 1).all()  # one-hot
    # the clusters found on train are the blobs, and test samples go to their blob's cluster
    mapping = {blob: int(np.argmax(train_c[train_lab == blob].sum(axis=0))) for blob in range(3)}
    assert sorted(mapping.values()) == [0, 1, 2]
    np.testing.assert_array_equal(test_c.argmax(axis=1), [mapping[b] for b in test_lab])
    again = av_vocabulary("audio", train_x, None, test_x, None, k=3, seed=4)
    assert (again.test_counts != vocab.test_counts).nnz == 0
    assert vocab.info["fit_on"] == "train" and vocab.info["n_init"] == 10 and vocab.info["random_state"] == 4


def test_kmeans_uses_train_statistics_not_test():
    rng = np.random.default_rng(1)
    train_x, _ = _blobs(rng, 20, np.array([[0.0], [10.0]]))
    # every test sample sits near the train blob at 0: fitted on train they share one cluster, whereas
    # z-scoring or fitting with test statistics would split them
    test_x = 0.3 * rng.standard_normal((12, 1, 1))
    vocab = av_vocabulary("vision", train_x, None, test_x, None, k=2, seed=0)
    assert vocab.test_counts.toarray().sum(axis=0).max() == 12
    split = av_vocabulary("vision", train_x, None, test_x, None, k=2, seed=0, fit_on="test")
    assert split.test_counts.toarray().sum(axis=0).max() < 12


def test_kmeans_k_out_of_range_and_frame_words():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 2))
    with pytest.raises(VocabularyError, match=r"split.av.k=9 must lie in \[2, 5\]"):
        av_vocabulary("audio", x, None, x, None, k=9, seed=0)
    lengths = np.array([1, 2, 3, 3, 2])
    frame = av_vocabulary("audio", x, lengths, x, lengths, k=2, seed=0, words="frame", frame_k=4)
    dense = frame.test_counts.toarray()
    assert dense.shape == (5, 4) and set(np.unique(dense)) <= {0, 1}
    assert (dense.sum(axis=1) <= lengths).all() and (dense.sum(axis=1) >= 1).all()


def test_tav_union_concatenates_columns_and_weights():
    t = text_vocabulary(["good film", "bad film", "good"], ["good"] * 8, min_count=0)
    rng = np.random.default_rng(3)
    a = av_vocabulary("audio", rng.standard_normal((8, 1, 2)), None, rng.standard_normal((3, 1, 2)), None, k=2, seed=0)
    both = union([t, a])
    assert both.entries == t.entries + a.entries
    assert both.modality == ["text"] * len(t) + ["audio"] * 2
    stacked = np.hstack([t.test_counts.toarray(), a.test_counts.toarray()])
    np.testing.assert_array_equal(both.test_counts.toarray(), stacked)
    np.testing.assert_array_equal(both.weights, np.ones(len(t) + 2))
    weighted = union([t, a], "per_modality")
    np.testing.assert_allclose(weighted.weights, [1 / len(t)] * len(t) + [0.5, 0.5])
    with pytest.raises(VocabularyError, match="split.tav.weighting"):
        union([t, a], "max")
    no_train = text_vocabulary(["good film", "bad film", "good"], None, min_count=0)
    with pytest.raises(VocabularyError, match="train rows"):
        union([no_train, a])
