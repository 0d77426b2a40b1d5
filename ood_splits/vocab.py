"""Vocabularies for the OOD split builder (docs/algorithms.md#ood-split-builder: text, audio / visual and TAV words).

A vocabulary is a list of "words" plus one count vector per sample (a CSR matrix). Text words
are tokens of the transcripts counted on the test split; "acoustic / visual words" are K-means
clusters of per-utterance descriptors fitted on train; TAV is the column-wise union of the three.
Each vocabulary is built for the test split (what the annealer balances) and for the train split
(what the sanity report compares against), with the same columns.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import scipy.sparse as sp

# Text words, step 1: these characters become spaces. This is the notebook's set, character for
# character: Python's string.punctuation without the ASCII apostrophe and with U+2018 (left single
# quotation mark) in place of the backtick. The apostrophe is kept so "i'm" and "that's" are tokens.
PUNCTUATION = '!"#$%&()*+,-./:;<=>?@[\\]^_\u2018{|}~'
_PUNCTUATION_TABLE = str.maketrans({ch: " " for ch in PUNCTUATION})

# Text words, step 2: NLTK's English stop-word list (nltk_data corpora/stopwords/english, the 179-word
# version), in the file's order.
NLTK_ENGLISH_STOP_WORDS: tuple[str, ...] = tuple(
    """
    i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
    he him his himself she she's her hers herself it it's its itself they them their theirs themselves
    what which who whom this that that'll these those am is are was were be been being have has had
    having do does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on off over
    under again further then once here there when where why how all any both each few more most other
    some such no nor not only own same so than too very s t can will just don don't should should've
    now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn
    hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
    shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
    """.split()
)


def stop_words_sha256(words: Sequence[str] = NLTK_ENGLISH_STOP_WORDS) -> str:
    """SHA-256 of the stop-word list as a file: the words in order, one per line, trailing newline."""
    return hashlib.sha256(("\n".join(words) + "\n").encode("utf-8")).hexdigest()


def tokenize(text: str) -> list[str]:
    """Text words, step 1: lower-case, punctuation (``PUNCTUATION``) to spaces, split on whitespace."""
    return str(text).lower().translate(_PUNCTUATION_TABLE).split()


def content_tokens(text: str, stop_words: frozenset[str]) -> list[str]:
    """The tokens of ``text`` that are not stop words (repeats kept)."""
    return [tok for tok in tokenize(text) if tok not in stop_words]


class VocabularyError(ValueError):
    """A vocabulary cannot be built (empty, bad K, missing inputs); the message names the knob."""


@dataclass
class Vocabulary:
    """Words of one or more modalities and per-sample counts on the test and train splits.

    ``entries`` are unique names (text words as they are; clusters as ``audio#03``), ``modality``
    the modality of each entry, ``test_counts`` / ``train_counts`` int64 CSR (N, |V|) with repeats
    counted, ``weights`` the objective weight of each entry (1 unless ``tav.weighting`` says
    otherwise) and ``info`` what the manifest records about how the vocabulary was built.
    """

    entries: list[str]
    modality: list[str]
    test_counts: sp.csr_matrix
    train_counts: sp.csr_matrix
    weights: np.ndarray
    info: dict

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def test_totals(self) -> np.ndarray:
        """Total count of each entry on the test split."""
        return np.asarray(self.test_counts.sum(axis=0), dtype=np.int64).ravel()


def _csr(rows: Sequence[dict[int, int]], n_cols: int) -> sp.csr_matrix:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indices: list[int] = []
    data: list[int] = []
    for i, row in enumerate(rows):
        for col in sorted(row):
            indices.append(col)
            data.append(row[col])
        indptr[i + 1] = len(indices)
    return sp.csr_matrix(
        (np.asarray(data, dtype=np.int64), np.asarray(indices, dtype=np.int64), indptr), shape=(len(rows), n_cols)
    )


def count_matrix(texts: Iterable[str], words: Sequence[str], stop_words: frozenset[str]) -> sp.csr_matrix:
    """Per-sample counts of ``words`` in ``texts`` (int64 CSR, columns in the order of ``words``)."""
    column = {w: j for j, w in enumerate(words)}
    rows = []
    for text in texts:
        counts = Counter(tok for tok in content_tokens(text, stop_words) if tok in column)
        rows.append({column[w]: c for w, c in counts.items()})
    return _csr(rows, len(words))


def text_vocabulary(
    test_text: Sequence[str],
    train_text: Sequence[str] | None,
    min_count: int,
    stop_words: Sequence[str] = NLTK_ENGLISH_STOP_WORDS,
) -> Vocabulary:
    """Text words: tokens (stop words dropped) whose total count on the **test** split is > ``min_count``.

    Entries are sorted by descending test count, then alphabetically, so the order is a function of
    the data alone. ``train_text`` (optional) gives the train counts the report compares with.
    """
    if min_count < 0:
        raise VocabularyError(f"split.text.min_count must be >= 0, got {min_count}")
    stops = frozenset(stop_words)
    totals = Counter(tok for text in test_text for tok in content_tokens(text, stops))
    words = sorted((w for w, c in totals.items() if c > min_count), key=lambda w: (-totals[w], w))
    if not words:
        most = totals.most_common(1)
        raise VocabularyError(
            f"empty text vocabulary: no token occurs more than split.text.min_count={min_count} times in the "
            f"{len(test_text)} test transcripts (most frequent: {most[0] if most else 'none'}); lower the threshold"
        )
    test_counts = count_matrix(test_text, words, stops)
    train_counts = count_matrix(train_text if train_text is not None else [], words, stops)
    info = {
        "kind": "text",
        "tokeniser": "lower-case; each of PUNCTUATION -> space (apostrophe kept); split on whitespace",
        "punctuation": PUNCTUATION,
        "stop_words": "nltk_english_179" if tuple(stop_words) == NLTK_ENGLISH_STOP_WORDS else "custom",
        "stop_words_count": len(stops),
        "stop_words_sha256": stop_words_sha256(tuple(stop_words)),
        "min_count": int(min_count),
        "size": len(words),
        "counts": {w: int(totals[w]) for w in words},
    }
    return Vocabulary(
        entries=list(words),
        modality=["text"] * len(words),
        test_counts=test_counts,
        train_counts=train_counts,
        weights=np.ones(len(words)),
        info=info,
    )


Descriptor = Literal["masked_mean", "mean", "mean_std"]
DESCRIPTORS: tuple[str, ...] = get_args(Descriptor)


def descriptors(x: np.ndarray, lengths: np.ndarray | None, kind: str = "masked_mean") -> np.ndarray:
    """Per-utterance descriptors (N, d) or (N, 2d) of frame features ``x`` (N, T, d) (audio / visual words).

    ``masked_mean``: mean over the valid frames ``[0, length)``; ``mean``: mean over all T frames,
    padding included; ``mean_std``: masked mean concatenated with the masked standard deviation.
    """
    if kind not in DESCRIPTORS:
        raise VocabularyError(f"split.av.descriptor={kind!r}; expected one of {DESCRIPTORS}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise VocabularyError(f"frame features must have shape (N, T, d), got {x.shape}")
    if kind == "mean":
        return x.mean(axis=1)
    n, t_max = x.shape[:2]
    lengths = np.full(n, t_max, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    valid = (np.arange(t_max)[None, :] < lengths[:, None]).astype(np.float64)[:, :, None]
    mean = (x * valid).sum(axis=1) / lengths[:, None]
    if kind == "masked_mean":
        return mean
    var = (((x - mean[:, None, :]) ** 2) * valid).sum(axis=1) / lengths[:, None]
    return np.concatenate([mean, np.sqrt(var)], axis=1)


def _zscore(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def _one_hot(labels: np.ndarray, k: int) -> sp.csr_matrix:
    n = labels.shape[0]
    return sp.csr_matrix(
        (np.ones(n, dtype=np.int64), labels.astype(np.int64), np.arange(n + 1, dtype=np.int64)), shape=(n, k)
    )


def _presence(frame_labels: np.ndarray, lengths: np.ndarray, k: int) -> sp.csr_matrix:
    """c_i[w] = 1 if any valid frame of sample i falls in cluster w."""
    rows, start = [], 0
    for length in lengths.tolist():
        rows.append(dict.fromkeys(np.unique(frame_labels[start : start + length]).tolist(), 1))
        start += length
    return _csr(rows, k)


def av_vocabulary(
    modality: str,
    train_x: np.ndarray,
    train_lengths: np.ndarray | None,
    test_x: np.ndarray,
    test_lengths: np.ndarray | None,
    *,
    k: int,
    seed: int,
    descriptor: str = "masked_mean",
    normalise: str = "train_zscore",
    fit_on: str = "train",
    words: str = "utterance",
    frame_k: int = 64,
    n_init: int = 10,
) -> Vocabulary:
    """K-means "acoustic / visual words" for one modality.

    ``words=utterance`` (default): descriptors per utterance, z-scored with train statistics,
    ``KMeans(n_clusters=k, n_init=n_init, random_state=seed)`` fitted on the ``fit_on`` split and
    used to assign both splits; c_i is the one-hot cluster id. ``words=frame``: every valid frame
    is clustered by ``MiniBatchKMeans(frame_k)`` and c_i marks which clusters occur in sample i.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if normalise not in ("train_zscore", "none"):
        raise VocabularyError(f"split.av.normalise={normalise!r}; expected 'train_zscore' or 'none'")
    if fit_on not in ("train", "test"):
        raise VocabularyError(f"split.av.fit_on={fit_on!r}; expected 'train' or 'test'")
    if words not in ("utterance", "frame"):
        raise VocabularyError(f"split.av.words={words!r}; expected 'utterance' or 'frame'")
    if words == "utterance":
        d_train, d_test = descriptors(train_x, train_lengths, descriptor), descriptors(test_x, test_lengths, descriptor)
        n_clusters = k
    else:
        d_train, d_test = _valid_frames(train_x, train_lengths), _valid_frames(test_x, test_lengths)
        n_clusters = frame_k
    if normalise == "train_zscore":
        d_train, d_test = _zscore(d_train, d_test)
    fit = d_train if fit_on == "train" else d_test
    if not 2 <= n_clusters <= fit.shape[0]:
        knob = "split.av.k" if words == "utterance" else "split.av.frame_k"
        raise VocabularyError(f"{knob}={n_clusters} must lie in [2, {fit.shape[0]}] (points in the {fit_on} split)")
    if words == "utterance":
        model = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(fit)
        train_counts = _one_hot(model.predict(d_train), n_clusters)
        test_counts = _one_hot(model.predict(d_test), n_clusters)
    else:
        model = MiniBatchKMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(fit)
        train_counts = _presence(model.predict(d_train), _lengths(train_x, train_lengths), n_clusters)
        test_counts = _presence(model.predict(d_test), _lengths(test_x, test_lengths), n_clusters)
    entries = [f"{modality}#{j:02d}" for j in range(n_clusters)]
    totals = np.asarray(test_counts.sum(axis=0)).ravel()
    info = {
        "kind": modality,
        "descriptor": descriptor,
        "normalise": normalise,
        "fit_on": fit_on,
        "words": words,
        "k": int(n_clusters),
        "n_init": int(n_init) if words == "utterance" else 3,
        "kmeans": "sklearn.cluster.KMeans" if words == "utterance" else "sklearn.cluster.MiniBatchKMeans",
        "random_state": int(seed),
        "size": int(n_clusters),
        "counts": {e: int(c) for e, c in zip(entries, totals)},
    }
    return Vocabulary(entries, [modality] * n_clusters, test_counts, train_counts, np.ones(n_clusters), info)


def _lengths(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    return np.full(x.shape[0], x.shape[1], dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)


def _valid_frames(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    lengths = _lengths(x, lengths)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    return np.asarray(x, dtype=np.float64)[valid]


def union(parts: Sequence[Vocabulary], weighting: str = "sum") -> Vocabulary:
    """The TAV vocabulary: one from several (columns concatenated; E is additive over entries).

    ``weighting=sum`` keeps every weight 1 (E_TAV = E_t + E_a + E_v); ``per_modality`` weights
    each entry of modality m by 1 / |V_m|.
    """
    if weighting not in ("sum", "per_modality"):
        raise VocabularyError(f"split.tav.weighting={weighting!r}; expected 'sum' or 'per_modality'")
    if not parts:
        raise VocabularyError("union of no vocabularies")
    for counts in ("test_counts", "train_counts"):
        rows = {part.info.get("kind", "?"): getattr(part, counts).shape[0] for part in parts}
        if len(set(rows.values())) > 1:
            what = "train rows (is raw_text missing on train?)" if counts == "train_counts" else "test rows"
            raise VocabularyError(f"cannot unite vocabularies with different numbers of {what}: {rows}")
    weights = [part.weights * (1.0 / len(part) if weighting == "per_modality" else 1.0) for part in parts]
    return Vocabulary(
        entries=[e for part in parts for e in part.entries],
        modality=[m for part in parts for m in part.modality],
        test_counts=sp.hstack([p.test_counts for p in parts], format="csr", dtype=np.int64),
        train_counts=sp.hstack([p.train_counts for p in parts], format="csr", dtype=np.int64),
        weights=np.concatenate(weights),
        info={"kind": "union", "weighting": weighting, "parts": [p.info for p in parts]},
    )
