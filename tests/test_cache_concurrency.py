"""The hidden-state cache under concurrent builders, same-size damage and unusable indexes.

No test waits on time: interleavings are forced with events set from monkeypatched hooks and log
records (a timeout on a wait only stops a broken build from hanging the suite).
"""
import json
import logging
import pickle
import threading

import numpy as np
import pytest
import torch
from conftest import overrides

from adapter4rec.cache import store
from adapter4rec.cli import main
from adapter4rec.config import load_config
from adapter4rec.errors import DataError
from adapter4rec.pipeline import prepare

SAFETY = 300  # seconds: only a hung build ever reaches it


def iisan_cfg(data, bert, cache_dir, **kw):
    return load_config(overrides=overrides(data, bert, peft__method="iisan", cache__dir=cache_dir,
                                           cache__batch_size=16, **kw))


def messages(caplog, text) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def only_cache(content):
    (cache,) = content.caches.values()
    return cache


def test_two_builders_of_one_folder_take_turns(domains, tiny_bert, tmp_path, monkeypatch, caplog):
    """Builder B starts while builder A is between two row blocks of the same (missing) cache.
    Today B truncates and publishes A's temporary file under it; now B waits for A's lock, then
    uses A's cache."""
    caplog.set_level(logging.INFO, logger="adapter4rec")
    cfg = iisan_cfg(domains[1], tiny_bert, tmp_path / "shared")
    waiting = threading.Event()  # B waits for the lock (or, without a lock, B has finished)

    class OnWait(logging.Handler):
        def emit(self, record):
            if "waiting for it" in record.getMessage():
                waiting.set()

    handler = OnWait()
    logging.getLogger("adapter4rec").addHandler(handler)
    results, errors, threads = {}, [], []

    def second():
        try:
            results["b"] = prepare(cfg)[2]
        except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
            errors.append(e)
        finally:
            waiting.set()

    write = store.Writer.write

    def paused_write(self, start, rows):
        if threading.current_thread() is threading.main_thread() and start > 1 and not threads:
            threads.append(threading.Thread(target=second))  # A has written its first block
            threads[0].start()
            assert waiting.wait(SAFETY), "the second builder neither waited nor finished"
        write(self, start, rows)

    monkeypatch.setattr(store.Writer, "write", paused_write)
    try:
        a = prepare(cfg)[2]
        threads[0].join(SAFETY)
    finally:
        logging.getLogger("adapter4rec").removeHandler(handler)
    if errors:
        raise errors[0]
    assert len(messages(caplog, "built [")) == 1  # A built; B used A's cache
    assert messages(caplog, "while this one waited")
    folder = only_cache(a).folder
    assert only_cache(results["b"]).folder == folder
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "hidden.bin", "index.json"]
    ids = np.arange(0, len(only_cache(a)) + 1)
    assert torch.equal(a.get(ids)["hidden"], results["b"].get(ids)["hidden"])
    monkeypatch.setattr(store.Writer, "write", write)
    fresh = only_cache(prepare(iisan_cfg(domains[1], tiny_bert, tmp_path / "fresh"))[2])
    assert (folder / "hidden.bin").read_bytes() == (fresh.folder / "hidden.bin").read_bytes()
    assert store.read_index(folder)["checksums"] == fresh.index["checksums"]


def test_same_size_corruption_is_caught_at_open_and_rebuilt(domains, tiny_bert, tmp_path,
                                                            monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="adapter4rec")
    monkeypatch.setattr(store, "BLOCK_ROWS", 16, raising=False)  # several blocks of a tiny cache
    cfg = iisan_cfg(domains[1], tiny_bert, tmp_path)
    cache = only_cache(prepare(cfg)[2])
    path = cache.folder / "hidden.bin"
    good = path.read_bytes()
    row_bytes = int(np.prod(cache.shape[1:])) * 2
    with open(path, "r+b") as f:  # flip four bytes of row 40 (block 2), keeping the size
        f.seek(40 * row_bytes + 6)
        flipped = bytes(b ^ 0xFF for b in f.read(4))
        f.seek(40 * row_bytes + 6)
        f.write(flipped)
    assert path.stat().st_size == len(good) and path.read_bytes() != good
    caplog.clear()
    content = prepare(cfg)[2]
    (why,) = messages(caplog, "does not match its checksum")
    assert "block 2 (rows 32..47)" in why and messages(caplog, "built [")
    assert path.read_bytes() == good
    assert torch.equal(content.get(np.array([40]))["hidden"],
                       torch.from_numpy(np.frombuffer(good, np.float16).reshape(cache.shape)[[40]]))


def test_cache_of_an_older_format_is_rebuilt(domains, tiny_bert, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="adapter4rec")
    cfg = iisan_cfg(domains[1], tiny_bert, tmp_path)
    folder = only_cache(prepare(cfg)[2]).folder
    index = json.loads((folder / "index.json").read_text())
    index["version"] = 1  # as written before row checksums
    index.pop("checksums", None)
    (folder / "index.json").write_text(json.dumps(index))
    caplog.clear()
    prepare(cfg)
    assert messages(caplog, "format version 1") and messages(caplog, "built [")
    assert "checksums" in store.read_index(folder)


@pytest.mark.parametrize("text", ["[]", '"x"'])
def test_index_that_is_not_an_object_is_absent(domains, tiny_bert, tmp_path, capsys, caplog, text):
    caplog.set_level(logging.INFO, logger="adapter4rec")
    cfg = iisan_cfg(domains[1], tiny_bert, tmp_path)
    folder = only_cache(prepare(cfg)[2]).folder
    (folder / "index.json").write_text(text)
    assert store.read_index(folder) is None
    capsys.readouterr()
    assert main(["cache", "info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adapter4rec: error:") and err.count("\n") == 1, err
    assert "not a JSON object" in err
    caplog.clear()
    prepare(cfg)
    assert messages(caplog, "not a JSON object") and messages(caplog, "built [")
    assert store.read_index(folder)["complete"]


def test_failed_build_leaves_no_temporary_file(domains, tiny_bert, tmp_path, monkeypatch):
    cfg = iisan_cfg(domains[1], tiny_bert, tmp_path)
    folder = only_cache(prepare(cfg)[2]).folder
    dead = folder / ".hidden.bin.999999.dead.building"  # left by a build that was killed
    dead.write_bytes(b"\0" * 10)

    def fail(self, start, rows):
        raise DataError("no room", self.folder)

    monkeypatch.setattr(store.Writer, "write", fail)
    with pytest.raises(DataError, match="no room"):
        prepare(iisan_cfg(domains[1], tiny_bert, tmp_path, cache__rebuild="true"))
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "hidden.bin", "index.json"]


def test_reopening_an_array_another_build_replaced_is_refused(tmp_path):
    """A DataLoader worker reopens the array by name: it must not read another build's rows."""
    def publish(value):
        w = store.Writer(tmp_path, 5, [0], 4)
        with store.lock(tmp_path):
            w.create()
            w.open()
            w.write(1, torch.full((5, 1, 4), value))
            return w.finish({"value": value})

    cache = publish(1.0)
    assert store.open_cache(tmp_path, {"value": 1.0}) is not None
    worker = pickle.loads(pickle.dumps(cache))  # opened later, as in a spawned worker
    assert float(cache.rows(np.array([3]))[0, 0, 0]) == 1.0  # mapped here before the rebuild
    publish(2.0)
    assert float(cache.rows(np.array([3]))[0, 0, 0]) == 1.0  # the old inode keeps its rows
    with pytest.raises(DataError, match="replaced by another build"):
        worker.rows(np.array([3]))
    assert store.open_cache(tmp_path, {"value": 1.0}) is None  # stale
    assert store.open_cache(tmp_path, {"value": 2.0}) is not None
