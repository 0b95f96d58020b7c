"""The hidden-state cache and the decoupled side network (peft method iisan)."""
import json
import logging
import pickle

import numpy as np
import pytest
import torch

from adapter4rec import peft
from adapter4rec.cache import CachedContent, cache_folder, read_index
from adapter4rec.cli import main
from adapter4rec.config import load_config
from adapter4rec.data.batching import TrainBatches
from adapter4rec.errors import ConfigError
from adapter4rec.evaluation.evaluator import evaluate
from adapter4rec.peft.iisan import layer_states, read_layers
from adapter4rec.pipeline import prepare
from adapter4rec.runtime.seed import seed_everything
from adapter4rec.training.optim import param_groups

from conftest import overrides, torchrun_train


def iisan_cfg(data, bert, cache_dir, **kw):
    return load_config(overrides=overrides(data, bert, peft__method="iisan", cache__dir=cache_dir, **kw))


@pytest.fixture(scope="module")
def warm(domains, tiny_bert, tmp_path_factory):
    """A prepared iisan run on the source domain whose cache is already built."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = iisan_cfg(domains[0], tiny_bert, cache, train__objective="bce")
    seed_everything(0)
    data, model, content, _ = prepare(cfg)
    return cfg, data, model, content


def built(caplog) -> bool:
    return any("built [" in r.getMessage() for r in caplog.records)


def stale(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if "is stale (changed" in r.getMessage())


def test_registered_with_options():
    assert "iisan" in peft.available()
    assert peft.defaults("iisan")["layer_stride"] == 2
    assert read_layers(12, 2) == [0, 2, 4, 6, 8, 10, 12]
    assert read_layers(6, 2) == [0, 2, 4, 6] and read_layers(5, 2) == [0, 1, 3, 5]
    assert read_layers(4, 1) == [0, 1, 2, 3, 4]


def test_round_trip_matches_the_backbone(domains, tiny_bert, tmp_path):
    cfg = iisan_cfg(domains[0], tiny_bert, tmp_path, cache__release_backbone=False)
    data, model, content, _ = prepare(cfg)
    assert isinstance(content, CachedContent)
    (cache,) = content.caches.values()
    index = read_index(cache.folder)
    layers = model.item_encoder.peft_side.layers["text"]
    assert index["complete"] and index["layers"] == layers == [0, 2]
    assert index["shape"] == [data.n_items + 1, 2, 32] and index["dtype"] == "float16"
    # one array, its index and the build lock; no temporary file left behind
    assert sorted(p.name for p in cache.folder.iterdir()) == [".lock", "hidden.bin", "index.json"]
    ids = np.array([1, 5, data.n_items])
    got = content.get(ids)["hidden"]
    direct = layer_states(model.item_encoder, content.stores["text"].get(ids), layers)
    assert got.dtype == torch.float16 and got.shape == (3, 2, 32)
    assert torch.allclose(got.float(), direct, atol=2e-3, rtol=1e-3)
    assert not content.get(np.array([0]))["hidden"].any()  # row 0: padding
    # picklable for DataLoader workers, without the mapped rows
    clone = pickle.loads(pickle.dumps(content))
    assert len(pickle.dumps(content)) < 200_000
    assert torch.equal(clone.get(ids)["hidden"], got)


def test_bfloat16_cache(domains, tiny_bert, tmp_path):
    cfg = iisan_cfg(domains[1], tiny_bert, tmp_path, cache__dtype="bfloat16", cache__release_backbone=False)
    data, model, content, _ = prepare(cfg)
    ids = np.array([1, 2, data.n_items])
    got = content.get(ids)["hidden"]
    direct = layer_states(model.item_encoder, content.stores["text"].get(ids), [0, 2])
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), direct, atol=2e-2, rtol=1e-2)
    assert model.encode_items(content.get(ids)).shape == (3, 64)


def test_cached_and_uncached_side_network_agree(warm, domains, tiny_bert, tmp_path):
    cfg, data, model, content = warm
    cfg2 = iisan_cfg(domains[0], tiny_bert, tmp_path, cache__enabled="false")
    _, model2, content2, _ = prepare(cfg2)
    assert not isinstance(content2, CachedContent)
    trained = {k: v for k, v in model.state_dict().items() if ".backbone." not in k}
    model2.load_state_dict(trained, strict=False)  # same side network and user encoder
    model.eval(), model2.eval()
    ids = np.arange(1, 40)
    a = model.encode_items(content.get(ids))
    b = model2.encode_items(content2.get(ids))
    assert torch.allclose(a, b, atol=5e-3), (a - b).abs().max()


def test_adapter_file_of_a_cached_run_loads_into_an_uncached_model(warm, domains, tiny_bert, tmp_path):
    cfg, data, model, content = warm
    info = peft.save_adapter(model, tmp_path / "a.safetensors")
    assert info["adapter_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    fresh_cfg = load_config(overrides=overrides(domains[0], tiny_bert, peft__method="frozen"))
    _, fresh, tokens, _ = prepare(fresh_cfg)  # a plain model: load_adapter applies iisan to it
    fresh = type(fresh)(fresh.item_encoder, fresh.user_encoder)  # no PEFT applied yet
    peft.load_adapter(fresh, tmp_path / "a.safetensors")
    model.eval(), fresh.eval()
    ids = np.arange(1, 30)
    assert torch.allclose(model.encode_items(content.get(ids)), fresh.encode_items(tokens.get(ids)), atol=5e-3)


def test_warm_cache_never_runs_the_backbone_and_loss_falls(warm):
    cfg, data, model, content = warm
    calls = []
    hook = model.item_encoder.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        torch.manual_seed(0)
        model.train()
        opt = torch.optim.AdamW(param_groups(model, cfg))
        tb = TrainBatches(data, content, 64, cfg.train.objective, seed=0)
        losses = []
        for epoch in range(4):
            tb.set_epoch(epoch)
            total = 0.0
            for s in range(len(tb)):
                loss = model(tb[s])
                loss.backward()
                opt.step()
                opt.zero_grad()
                total += float(loss.detach())
            losses.append(total / len(tb))
        res = evaluate(model, content, data, torch.device("cpu"))
        # cached states read in DataLoader workers (the memory map reopened there): same metrics
        assert evaluate(model, content, data, torch.device("cpu"), num_workers=2) == res
    finally:
        hook.remove()
    assert calls == []
    assert losses[-1] < 0.8 * losses[0], losses
    assert 0 <= res["test"]["HR@10"] <= 1
    # the released backbone refuses to run, with a clear message
    with pytest.raises(RuntimeError, match="released"):
        model.encode_items(content.stores["text"].get(np.array([1, 2])))


def test_stale_cache_is_rebuilt(domains, tiny_bert, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="adapter4rec")
    prepare(iisan_cfg(domains[0], tiny_bert, tmp_path))
    assert built(caplog)
    caplog.clear()
    prepare(iisan_cfg(domains[0], tiny_bert, tmp_path))  # same everything: reused
    assert not built(caplog) and not stale(caplog)
    caplog.clear()
    prepare(iisan_cfg(domains[0], tiny_bert, tmp_path, data__max_title_len=8))
    assert built(caplog) and "content.max_title_len" in stale(caplog)
    caplog.clear()
    prepare(iisan_cfg(domains[0], tiny_bert, tmp_path, model__pooling="mean"))
    assert built(caplog) and "pooling" in stale(caplog)


def test_stale_after_items_or_backbone_change(domains, tiny_bert, tmp_path, caplog):
    import shutil

    from adapter4rec.data.synthetic import write_tiny_bert

    caplog.set_level(logging.INFO, logger="adapter4rec")
    data_dir = tmp_path / "data"
    shutil.copytree(domains[1], data_dir)
    bert = tmp_path / "bert"
    shutil.copytree(tiny_bert, bert)
    prepare(iisan_cfg(data_dir, bert, tmp_path / "c"))
    caplog.clear()
    lines = (data_dir / "items.tsv").read_text().splitlines()
    first_id = lines[0].split("\t")[0]
    lines[0] = f"{first_id}\tguitar drum piano violin"  # a changed title
    (data_dir / "items.tsv").write_text("\n".join(lines) + "\n")
    prepare(iisan_cfg(data_dir, bert, tmp_path / "c"))
    assert built(caplog) and "content.tokens" in stale(caplog)
    caplog.clear()
    write_tiny_bert(bert, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=1)
    prepare(iisan_cfg(data_dir, bert, tmp_path / "c"))  # same folder, other weights
    assert built(caplog) and "backbone.weights" in stale(caplog)


def test_cli_build_and_info(domains, tiny_bert, tmp_path, capsys):
    import yaml

    cfg = {"data": {"path": str(domains[1])}, "model": {"pretrained": tiny_bert},
           "peft": {"method": "iisan"}, "train": {"amp": "fp32"}, "cache": {"dir": str(tmp_path)}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cache", "build", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    folder = cache_folder(load_config(tmp_path / "c.yaml"), "text", [0, 2])
    assert str(folder) in out and (folder / "hidden.bin").is_file()
    assert main(["cache", "info", str(folder)]) == 0
    index = json.loads(capsys.readouterr().out)
    assert index["layers"] == [0, 2]
    inode = (folder / "hidden.bin").stat().st_ino
    assert main(["cache", "build", "--config", str(tmp_path / "c.yaml")]) == 0  # up to date: kept
    assert (folder / "hidden.bin").stat().st_ino == inode
    assert main(["cache", "build", "--config", str(tmp_path / "c.yaml"), "--rebuild"]) == 0
    assert (folder / "hidden.bin").stat().st_ino != inode  # a new file replaced the old one
    capsys.readouterr()
    assert main(["cache", "build", "--config", str(tmp_path / "c.yaml"), "--set", "peft.method=houlsby"]) == 2
    assert "reads no cached hidden states" in capsys.readouterr().err


def test_frozen_method_served_from_the_cache(domains, tiny_bert, tmp_path):
    base = overrides(domains[0], tiny_bert, peft__method="frozen")
    _, plain, content, _ = prepare(load_config(overrides=base))
    cfg = load_config(overrides=base + ["cache.frozen=true", f"cache.dir={tmp_path}"])
    _, cached, ccontent, _ = prepare(cfg)
    assert isinstance(ccontent, CachedContent)
    cached.item_encoder.project.load_state_dict(plain.item_encoder.project.state_dict())
    plain.eval(), cached.eval()
    ids = np.arange(1, 30)
    assert torch.allclose(plain.encode_items(content.get(ids)), cached.encode_items(ccontent.get(ids)),
                          atol=3e-3)


def test_any_method_that_leaves_the_item_backbone_alone_is_served_from_the_cache(domains, tiny_bert,
                                                                                  tmp_path):
    # full fine-tuning of the user tower only: frozen item features with SASRec trained on them
    base = overrides(domains[0], tiny_bert, peft__method="full") + ["peft.options.towers=[user]"]
    _, plain, content, _ = prepare(load_config(overrides=base))
    cfg = load_config(overrides=base + ["cache.frozen=true", f"cache.dir={tmp_path}"])
    _, cached, ccontent, summary = prepare(cfg)
    assert isinstance(ccontent, CachedContent)
    assert summary["towers"]["user"]["trainable"] > 0 and summary["towers"]["item"]["trainable"] == 0
    cached.load_state_dict({k: v for k, v in plain.state_dict().items()  # the released backbone aside
                            if not k.startswith("item_encoder.backbone.")}, strict=False)
    plain.eval(), cached.eval()
    ids = np.arange(1, 30)
    assert torch.allclose(plain.encode_items(content.get(ids)), cached.encode_items(ccontent.get(ids)),
                          atol=3e-3)
    # anything trained or inserted in the item backbone: it must run, never the cache
    for sets in (["peft.method=houlsby"], ["peft.method=full"],
                 ["peft.method=houlsby", "peft.options.towers=[user]", "peft.options.tune_layernorm=true"]):
        cfg = load_config(overrides=overrides(domains[0], tiny_bert) + sets
                          + ["cache.frozen=true", f"cache.dir={tmp_path}"])
        _, model, c, _ = prepare(cfg)
        item_trains = any(p.requires_grad for p in model.item_encoder.backbone.parameters())
        inserted = any("peft_" in n for n, _ in model.item_encoder.backbone.named_modules())
        assert isinstance(c, CachedContent) == (not item_trains and not inserted), sets


def test_image_and_text_image_items(tiny_bert, tmp_path):
    from adapter4rec.data.synthetic import make_image_domain, write_tiny_vit
    from adapter4rec.training.trainer import train

    make_image_domain(tmp_path / "d", "target", n_users=150, n_items=60, keep_titles=True)
    vit = write_tiny_vit(tmp_path / "vit")
    common = [f"data.path={tmp_path / 'd'}", "data.images=images.lmdb", "peft.method=iisan",
              "train.progress=false", "train.amp=fp32", "train.epochs=1", f"cache.dir={tmp_path / 'c'}"]
    res = train(load_config(overrides=common + ["model.item_encoder=text+image", f"model.pretrained={tiny_bert}",
                                                f"model.image_pretrained={vit}"]), tmp_path / "mm")
    assert res["test"]["HR@10"] >= 0
    _, model, content, _ = prepare(load_config(overrides=common + ["model.item_encoder=text+image",
                                                                  f"model.pretrained={tiny_bert}",
                                                                  f"model.image_pretrained={vit}"]))
    side = model.item_encoder.peft_side
    assert set(side.intra) == {"text", "image"} and side.inter is not None
    assert set(content.get(np.array([1, 2]))) == {"hidden_text", "hidden_image"}
    _, model, content, _ = prepare(load_config(overrides=common + ["model.item_encoder=image",
                                                                  f"model.pretrained={vit}"]))
    assert list(model.item_encoder.peft_side.intra) == ["image"] and model.item_encoder.peft_side.inter is None
    assert model.encode_items(content.get(np.array([1, 2, 3]))).shape == (3, 64)
    with pytest.raises(ConfigError, match="needs peft.method iisan"):
        prepare(load_config(overrides=common + ["model.item_encoder=text+image", f"model.pretrained={tiny_bert}",
                                                f"model.image_pretrained={vit}", "peft.method=houlsby"]))


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs gloo")
def test_two_ranks_build_the_same_cache(domains, tiny_bert, tmp_path):
    """Under torchrun each rank encodes its shard of the items into the one file."""
    sets = overrides(domains[1], tiny_bert, peft__method="iisan", cache__batch_size=16, train__epochs=1)
    torchrun_train(sets, tmp_path / "run", tmp_path / "two")
    prepare(load_config(overrides=sets + [f"cache.dir={tmp_path / 'one'}"]))
    (two,) = (tmp_path / "two").iterdir()
    (one,) = (tmp_path / "one").iterdir()
    assert (two / "hidden.bin").read_bytes() == (one / "hidden.bin").read_bytes()
    assert read_index(two)["ranks"] == 2
