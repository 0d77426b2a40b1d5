"""MSADataModule: shapes, batching by indexing, seeded shuffling, modality subsets, manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.datamodule import MSADataModule
from datamodules.schema import Batch, DataError
from datamodules.synthetic import generate


@pytest.fixture
def bundle(tiny_cfg):
    return generate(tiny_cfg)


def test_shapes_and_named_test_sets(bundle):
    dm = MSADataModule(bundle, batch_size=32, seed=3)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Batch)
    assert batch.text.shape == (32, 12, 16) and batch.audio.shape == (32, 9, 5) and batch.vision.shape == (32, 8, 7)
    assert batch.label.dtype == torch.float32 and batch.index.dtype == torch.long
    assert batch.audio_lengths.min() >= 1 and batch.audio_lengths.max() <= 9
    assert dm.test_set_names == ["test", "ood_text", "ood_audio", "ood_vision", "ood_tav"]
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [96, 64, 64, 64, 64]
    assert dm.spec.dims == {"text": 16, "audio": 5, "vision": 7}
    assert dm.spec.max_lengths == {"text": 12, "audio": 9, "vision": 8}
    # batches are rows of the split: the label of row index i is the split's label i
    np.testing.assert_array_equal(batch.label.numpy(), bundle.train.label[batch.index.numpy()])


def test_every_train_row_once_per_epoch_and_seeded_order(bundle):
    def order(seed):
        dm = MSADataModule(bundle, batch_size=50, seed=seed)
        loader = dm.train_dataloader()
        return [torch.cat([b.index for b in loader]).tolist() for _ in range(2)]

    a, b, c = order(1), order(1), order(2)
    assert a == b, "same seed, same order"
    assert a != c, "different seed, different order"
    assert a[0] != a[1], "a new permutation each epoch"
    assert sorted(a[0]) == list(range(len(bundle.train)))


def test_eval_loaders_keep_order(bundle):
    dm = MSADataModule(bundle, eval_batch_size=40)
    idx = torch.cat([b.index for b in dm.val_dataloader()]).tolist()
    assert idx == list(range(len(bundle.valid)))


def test_modality_subset(bundle):
    dm = MSADataModule(bundle, modalities=["text", "audio"])
    batch = next(iter(dm.train_dataloader()))
    assert batch.vision is None and batch.audio is not None
    assert dm.spec.modalities == ("text", "audio")
    with pytest.raises(DataError, match="unknown modalities"):
        MSADataModule(bundle, modalities=["smell"])


def test_manifest_subselects_the_test_split(bundle, tmp_path):
    ids = bundle.test.ids[[5, 1, 7]].tolist()
    path = tmp_path / "ood_x.json"
    path.write_text(json.dumps({"name": "ood_x", "dataset": "synthetic", "ids": ids}))
    dm = MSADataModule(bundle, manifests=[path])
    assert dm.test_set_names[-1] == "ood_x"
    assert dm.ids_of("ood_x").tolist() == ids
    np.testing.assert_array_equal(dm.test_splits["ood_x"].label, bundle.test.label[[5, 1, 7]])


@pytest.mark.parametrize(
    "manifest, message",
    [
        ({"name": "x", "ids": ["nope"]}, "not in the test split"),
        ({"name": "x", "ids": ["A", "A"]}, "duplicate"),
        ({"ids": []}, "no key 'name'"),
        ({"name": "test", "ids": ["A"]}, "is reserved"),
        ({"name": "x", "ids": []}, "'ids' is empty"),
    ],
)
def test_bad_manifests_are_named(bundle, tmp_path, manifest, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message) as info:
        MSADataModule(bundle, manifests=[path])
    assert str(path) in str(info.value)


def test_manifest_source_hash_mismatch(bundle, tmp_path):
    bundle.source_sha256 = "a" * 64
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "x", "ids": bundle.test.ids[:2].tolist(), "source_sha256": "b" * 64}))
    with pytest.raises(DataError, match="source_sha256"):
        MSADataModule(bundle, manifests=[path])
    dm = MSADataModule(bundle, manifests=[path], allow_source_mismatch=True)
    assert "x" in dm.test_set_names


def test_text_mask_from_lengths_and_ids(bundle):
    b = Batch.from_split(bundle.train, np.arange(4))
    mask = b.text_mask()
    np.testing.assert_array_equal(mask.sum(1).numpy(), bundle.train.text_lengths[:4])
    no_ids = Batch(label=b.label, index=b.index, text=b.text, text_lengths=b.text_lengths)
    assert torch.equal(no_ids.text_mask(), mask)


def test_manifest_test_ids_hash_mismatch(bundle, tmp_path):
    import hashlib

    good = hashlib.sha256("\n".join(bundle.test.ids.tolist()).encode()).hexdigest()
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "x", "ids": bundle.test.ids[:2].tolist(), "test_ids_sha256": good}))
    assert "x" in MSADataModule(bundle, manifests=[path]).test_set_names
    path.write_text(json.dumps({"name": "x", "ids": bundle.test.ids[:2].tolist(), "test_ids_sha256": "0" * 64}))
    with pytest.raises(DataError, match="test_ids_sha256"):
        MSADataModule(bundle, manifests=[path])
