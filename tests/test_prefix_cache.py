"""The frozen-prefix cache (cache.prefix): methods inserted in upper layers only read the token
states entering their lowest layer from the cache and run only the layers from there on."""
import numpy as np
import pytest
import torch

from adapter4rec.cache.prefix import PrefixContent
from adapter4rec.config import load_config
from adapter4rec.data.batching import TrainBatches
from adapter4rec.encoders.sites import layer_list
from adapter4rec.evaluation.evaluator import evaluate
from adapter4rec.pipeline import prepare
from adapter4rec.runtime.seed import seed_everything
from adapter4rec.training.optim import param_groups
from adapter4rec.training.trainer import train

from conftest import overrides, torchrun_train


@pytest.fixture(scope="module")
def bert4(tmp_path_factory):
    """A tiny random BERT with 4 layers (the upper two take the adapters)."""
    from adapter4rec.data.synthetic import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("bert4"), hidden_size=32, num_layers=4,
                           num_heads=2, intermediate_size=64)


def cfg_of(data, bert, cache_dir, method="houlsby", **kw):
    return load_config(overrides=overrides(data, bert, peft__method=method, cache__dir=cache_dir,
                                           train__objective="bce", **kw))


UPPER = {"peft__options": "{layers: [-2, -1]}"}


@pytest.mark.parametrize("method,options,k", [
    ("houlsby", "{layers: [-2, -1]}", 2), ("pfeiffer", "{layers: [-1]}", 3),
    ("parallel", "{layers: {item: [1, 2, 3]}}", 1), ("lora", "{layers: [-2, -1]}", 2),
    ("compacter", "{layers: [-2, -1]}", 2), ("layernorm", "{layers: [-2, -1]}", 2),
    ("bitfit", "{layers: [-1]}", 3),
    ("houlsby", "{}", None), ("lora", "{}", None), ("prompt", "{}", None), ("full", "{}", None),
    ("frozen", "{}", None), ("kadapter", "{layers: [-1]}", None), ("iisan", "{}", None),
])
def test_which_runs_use_it(method, options, k, domains, bert4, tmp_path):
    cfg = cfg_of(domains[1], bert4, tmp_path, method, peft__options=options)
    _, model, content, _ = prepare(cfg)
    assert getattr(model.item_encoder, "prefix_layer", None) == k
    assert isinstance(content, PrefixContent) == (k is not None)


def test_off_and_disabled(domains, bert4, tmp_path):
    for extra in ({"cache__prefix": "off"}, {"cache__enabled": "false"}):
        cfg = cfg_of(domains[1], bert4, tmp_path, **UPPER, **extra)
        _, model, content, _ = prepare(cfg)
        assert not isinstance(content, PrefixContent) and model.item_encoder.prefix_layer is None
    # YAML 1.1 reads a bare `off` as false: it means off here
    assert load_config(overrides=["cache.prefix=off", "model.item_encoder=id"]).cache.prefix == "off"


def test_frozen_prefix_runs_in_eval_mode_on_both_paths(domains, bert4, tmp_path):
    """No dropout below the lowest trainable layer, cached or not: both train the same function."""
    cfg = cfg_of(domains[1], bert4, tmp_path, cache__prefix="off", **UPPER)
    _, model, content, _ = prepare(cfg)
    model.train()
    bb = model.item_encoder.backbone
    layers = layer_list(bb)
    assert not bb.embeddings.training and not layers[0].training and not layers[1].training
    assert layers[2].training and layers[3].training and model.user_encoder.training
    model.eval()
    assert not layers[3].training


def _same_batch_loss(model, data, content, seed=0):
    seed_everything(seed)
    model.train()
    tb = TrainBatches(data, content, 32, "bce", seed=0)
    tb.set_epoch(0)
    loss = model(tb[0])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return float(loss.detach()), grads


def _copy_trained(src, dst):
    own = dict(src.named_parameters())
    dst.load_state_dict({k: v for k, v in src.state_dict().items()
                         if k in own and own[k].requires_grad}, strict=False)


def test_same_loss_gradients_and_metrics_with_and_without(domains, bert4, tmp_path):
    # mean pooling: a random tiny BERT's CLS states are near-identical for every item, so its
    # rankings would be near-ties that any rounding flips
    cfg_on = cfg_of(domains[1], bert4, tmp_path / "c", model__pooling="mean", **UPPER)
    cfg_off = cfg_of(domains[1], bert4, tmp_path / "c", cache__prefix="off", model__pooling="mean", **UPPER)
    data, on, content_on, _ = prepare(cfg_on)
    _, off, content_off, _ = prepare(cfg_off)
    assert isinstance(content_on, PrefixContent) and not isinstance(content_off, PrefixContent)
    _copy_trained(off, on)  # the same adapters
    # the prefix layers never run with the cache, in training or evaluation
    calls = []
    hook = layer_list(on.item_encoder.backbone)[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        loss_on, g_on = _same_batch_loss(on, data, content_on)
        loss_off, g_off = _same_batch_loss(off, data, content_off)
        # float16 storage of the states: bf16-level agreement on the same batch
        assert abs(loss_on - loss_off) < 1e-2 * max(1.0, abs(loss_off)), (loss_on, loss_off)
        assert set(g_on) == set(g_off) and len(g_on) > 0
        for n in g_on:
            assert torch.allclose(g_on[n], g_off[n], atol=2e-3, rtol=5e-2), (n, (g_on[n] - g_off[n]).abs().max(), g_off[n].abs().max())
        # trained a little on the cached path (an untrained tiny model's items are near-ties),
        # then the same weights on both paths: the same metrics
        seed_everything(0)
        on.train()
        opt = torch.optim.AdamW(param_groups(on, cfg_on))
        tb = TrainBatches(data, content_on, 32, "bce", seed=0)
        for epoch in range(3):
            tb.set_epoch(epoch)
            for s in range(len(tb)):
                on(tb[s]).backward()
                opt.step()
                opt.zero_grad()
        res_on = evaluate(on, content_on, data, torch.device("cpu"))
    finally:
        hook.remove()
    assert calls == []
    _copy_trained(on, off)
    res_off = evaluate(off, content_off, data, torch.device("cpu"))
    users = len(data.valid_users) if hasattr(data, "valid_users") else 300
    for split in ("valid", "test"):
        assert abs(res_on[split]["HR@10"] - res_off[split]["HR@10"]) <= 1 / users + 1e-9, (res_on, res_off)  # one user
        assert abs(res_on[split]["NDCG@10"] - res_off[split]["NDCG@10"]) <= 1e-3, (res_on, res_off)


def test_cache_covers_the_prefix_weights_only(domains, bert4, tmp_path, caplog):
    """Changed weights below the layer rebuild it; the upper layers' own weights do not."""
    import logging

    caplog.set_level(logging.INFO, logger="adapter4rec")
    cfg = cfg_of(domains[1], bert4, tmp_path, **UPPER)
    _, model, content, _ = prepare(cfg)
    first = content.get(np.array([1, 2, 3]))["prefix"].clone()
    caplog.clear()
    _, model, content, _ = prepare(cfg)
    assert not any("frozen-prefix cache" in r.getMessage() and "built" in r.getMessage()
                   for r in caplog.records)
    assert torch.equal(content.get(np.array([1, 2, 3]))["prefix"], first)
    # a different prefix (here: the source weights of layer 0 perturbed) is another cache
    from adapter4rec.cache.prefix import fingerprint
    from adapter4rec.data.synthetic import write_tiny_bert  # noqa: F401 (same fixture family)

    cfg2 = cfg_of(domains[1], bert4, tmp_path, cache__prefix="off", **UPPER)
    _, m2, c2, _ = prepare(cfg2)
    enc = m2.item_encoder
    fp = fingerprint(enc, c2, 2, cfg2.model.pretrained, "float16", None)
    with torch.no_grad():
        layer_list(enc.backbone)[3].output.dense.weight.add_(1.0)
    assert fingerprint(enc, c2, 2, cfg2.model.pretrained, "float16", None) == fp
    with torch.no_grad():
        layer_list(enc.backbone)[1].output.dense.weight.add_(1.0)
    assert fingerprint(enc, c2, 2, cfg2.model.pretrained, "float16", None) != fp


def test_training_run_and_resume_with_the_prefix_cache(domains, bert4, tmp_path):
    common = overrides(domains[1], bert4, peft__method="houlsby", peft__options="{layers: [-1]}",
                       cache__dir=tmp_path / "c", train__epochs=2, train__objective="bce")
    res = train(load_config(overrides=common), tmp_path / "run")
    assert 0 <= res["test"]["HR@10"] <= 1
    from adapter4rec.api import load_run

    model, data, _ = load_run(tmp_path / "run")  # a finished run, opened again: the cache again
    assert isinstance(model.content, PrefixContent)
    from adapter4rec.api import evaluate as api_evaluate

    again = api_evaluate(model, data)
    assert abs(again["NDCG@10"] - res["test"]["NDCG@10"]) < 1e-6


def test_image_items(tmp_path):
    from adapter4rec.data.synthetic import make_image_domain, write_tiny_vit

    make_image_domain(tmp_path / "d", "target", n_users=120, n_items=50)
    vit = write_tiny_vit(tmp_path / "vit")
    base = [f"data.path={tmp_path / 'd'}", "data.images=images.lmdb", "peft.method=houlsby",
            "peft.options={layers: [-1]}", "train.progress=false", "train.amp=fp32",
            f"cache.dir={tmp_path / 'c'}", "model.item_encoder=image", f"model.pretrained={vit}"]
    _, on, content, _ = prepare(load_config(overrides=base))
    _, off, tokens, _ = prepare(load_config(overrides=base + ["cache.prefix=off"]))
    assert isinstance(content, PrefixContent) and on.item_encoder.prefix_layer == len(
        layer_list(off.item_encoder.backbone)) - 1
    _copy_trained(off, on)
    on.eval(), off.eval()
    ids = np.arange(1, 20)
    a, b = on.encode_items(content.get(ids)), off.encode_items(tokens.get(ids))
    assert torch.allclose(a, b, atol=5e-3), (a - b).abs().max()


def test_cli_cache_build_builds_the_prefix(domains, bert4, tmp_path, capsys):
    from adapter4rec.cli import main

    sets = overrides(domains[1], bert4, peft__method="houlsby", peft__options="{layers: [-1]}",
                     cache__dir=tmp_path)
    main(["cache", "build"] + [a for s in sets for a in ("--set", s)])
    out = capsys.readouterr().out
    assert "frozen prefix (layers 0..2)" in out and "[116, " in out


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs gloo")
def test_two_ranks_train_with_the_prefix_cache(domains, bert4, tmp_path):
    """Under torchrun rank 0 builds the prefix cache and the other rank waits and opens it: the
    same file as one process builds, and the run finishes."""
    sets = overrides(domains[1], bert4, peft__method="houlsby", peft__options="{layers: [-1]}",
                     train__epochs=1, train__objective="bce")
    p = torchrun_train(sets, tmp_path / "run", tmp_path / "two")
    assert "frozen-prefix cache" in p.stderr + p.stdout
    prepare(load_config(overrides=sets + [f"cache.dir={tmp_path / 'one'}"]))
    (two,) = (tmp_path / "two").iterdir()
    (one,) = (tmp_path / "one").iterdir()
    assert (two / "hidden.bin").read_bytes() == (one / "hidden.bin").read_bytes()
