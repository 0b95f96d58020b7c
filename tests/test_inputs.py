"""Inputs that would give numbers nobody should publish are refused up front: a model folder without
a tokenizer, titles the tokenizer cannot read, an image store fed a decompression bomb."""
import io
import logging
import shutil
import struct
import zlib

import numpy as np
import pytest

from adapter4rec.encoders.backbone import load_tokenizer
from adapter4rec.encoders.text import TextContent
from adapter4rec.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_without(src, dst, *names):
    shutil.copytree(src, dst)
    for name in names:
        (dst / name).unlink(missing_ok=True)
    return dst


# --- a model folder must bring its tokenizer ----------------------------------------------------

@pytest.mark.parametrize("removed", [TOKENIZER_FILES, ("tokenizer.json", "vocab.txt")],
                         ids=["no_tokenizer_files", "config_only"])
def test_folder_without_tokenizer_files_is_refused(tiny_bert, tmp_path, removed):
    # transformers 5 builds a tokenizer of the special tokens alone here: every title is [UNK]
    folder = copy_without(tiny_bert, tmp_path / "bert", *removed)
    with pytest.raises(ConfigError) as info:
        load_tokenizer(str(folder))
    msg = str(info.value)
    assert str(folder) in msg and "tokenizer.json" in msg and "vocab.txt" in msg


def test_bpe_vocab_without_merges_is_refused(tiny_bert, tmp_path):
    folder = copy_without(tiny_bert, tmp_path / "bert", *TOKENIZER_FILES)
    (folder / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(ConfigError, match="merges.txt"):
        load_tokenizer(str(folder))


def test_vocab_txt_alone_is_enough(tiny_bert, tmp_path):
    folder = copy_without(tiny_bert, tmp_path / "bert", "tokenizer.json")
    tok = load_tokenizer(str(folder))
    assert tok.unk_token_id not in tok("red shoe")["input_ids"]


# --- titles the tokenizer cannot read -------------------------------------------------------------

KNOWN, UNKNOWN = "red shoe", "привет мир"  # the tiny vocabulary has ASCII only: Cyrillic is [UNK]


def test_mostly_unknown_titles_are_refused(tiny_bert):
    titles = [UNKNOWN, UNKNOWN, UNKNOWN, KNOWN]
    with pytest.raises(ConfigError) as info:
        TextContent.from_titles(titles, tiny_bert)
    msg = str(info.value)
    assert "\n" not in msg
    assert "3 of 4" in msg and "75" in msg and "data.max_unk_fraction" in msg and "0.5" in msg
    assert "tokenizer" in msg and "language" in msg


def test_unknown_titles_are_counted_and_logged(tiny_bert, caplog):
    caplog.set_level(logging.INFO, logger="adapter4rec")
    # "red привет" is half [UNK]: counted; "red blue shoe привет" is a quarter: not counted
    titles = ["red привет", "red blue shoe привет", KNOWN, KNOWN]
    content = TextContent.from_titles(titles, tiny_bert)  # 1 of 4 is under the default 0.5
    assert len(content) == 4
    assert any("1 of 4" in r.getMessage() and "[UNK]" in r.getMessage() for r in caplog.records)


def test_unknown_fraction_limit_is_strict_and_configurable(tiny_bert):
    titles = [UNKNOWN, UNKNOWN, KNOWN, KNOWN]
    TextContent.from_titles(titles, tiny_bert)  # exactly half: not more than the limit
    TextContent.from_titles([UNKNOWN] * 4, tiny_bert, max_unk_fraction=1.0)
    with pytest.raises(ConfigError, match="1 of 4"):
        TextContent.from_titles([UNKNOWN, KNOWN, KNOWN, KNOWN], tiny_bert, max_unk_fraction=0.0)
    content = TextContent.from_titles([KNOWN] * 3, tiny_bert, max_unk_fraction=0.0)
    assert np.all(content.tokens[0] == content.pad_id)


def test_max_unk_fraction_is_validated():
    from adapter4rec.config import Config, validate

    cfg = Config()
    cfg.model.item_encoder = "id"  # needs no model folder, so the default config is valid
    assert cfg.data.max_unk_fraction == 0.5
    validate(cfg)
    for bad in (-0.1, 1.5):
        cfg.data.max_unk_fraction = bad
        with pytest.raises(ConfigError, match="data.max_unk_fraction"):
            validate(cfg)


# --- build-lmdb and a decompression bomb ----------------------------------------------------------

def forged_png(width, height):
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed up): PIL reads the
    size from the header alone, so this is what a decompression bomb looks like to it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)           # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # CRC of "IHDR" + its data
    return bytes(data)


def test_build_lmdb_refuses_a_decompression_bomb_in_one_line(tmp_path, capsys):
    pytest.importorskip("lmdb")
    from PIL import Image

    from adapter4rec.cli import main

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (4, 4), "red").save(images / "a1.png")
    (images / "b2.png").write_bytes(forged_png(30000, 30000))
    (tmp_path / "items.tsv").write_text("a1\nb2\n")
    rc = main(["build-lmdb", "--images", str(images), "--items", str(tmp_path / "items.tsv"),
               "--out", str(tmp_path / "x.lmdb"), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("adapter4rec: error:")
    assert "b2.png" in lines[0] and "decompression bomb" in lines[0]
    assert not (tmp_path / "x.lmdb").exists()


def test_a_run_takes_its_unk_limit_from_the_config(tiny_bert, domains, tmp_path):
    """data.max_unk_fraction reaches the check: titles in a script the vocabulary lacks."""
    from adapter4rec.config import load_config
    from adapter4rec.pipeline import prepare

    src = tmp_path / "data"
    shutil.copytree(domains[0], src)
    items = (src / "items.tsv").read_text(encoding="utf-8").splitlines()
    (src / "items.tsv").write_text("".join(f"{line.split(chr(9))[0]}\t日本語の題名\n" for line in items),
                                   encoding="utf-8")
    sets = [f"data.path={src}", f"model.pretrained={tiny_bert}", "model.embedding_dim=16"]
    with pytest.raises(ConfigError, match="data.max_unk_fraction"):
        prepare(load_config(overrides=sets))
    prepare(load_config(overrides=sets + ["data.max_unk_fraction=1.0"]))
