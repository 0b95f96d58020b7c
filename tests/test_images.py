"""The image path: LMDB store, worker-safe reading, ViT / ViT-MAE item encoders, a short run."""
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapter4rec.config import load_config
from adapter4rec.data.images import BLANK_VALUE, ImageContent, ImageStore, decode_image
from adapter4rec.data.lmdb import build_lmdb
from adapter4rec.data.synthetic import make_image_domain, topic_look, write_tiny_vit
from adapter4rec.data.synthetic import TOPICS
from adapter4rec.encoders import build_item_encoder
from adapter4rec.encoders.backbone import load_backbone
from adapter4rec.encoders.image import ImageItemEncoder, read_preprocessor
from adapter4rec.errors import ConfigError, DataError

lmdb = pytest.importorskip("lmdb")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vit")
    return {k: write_tiny_vit(root / k, k) for k in ("vit", "mae")}


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    """A small synthetic image domain: users.tsv, one-column items.tsv, images/, images.lmdb."""
    return make_image_domain(tmp_path_factory.mktemp("img_domain"), "source", n_users=300,
                             n_items=48, seed=0, image_size=40)


def image_bytes(colour, fmt="PNG", size=(20, 12)):
    buf = __import__("io").BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Four items with PNG, JPEG (in a subfolder, as in the H&M layout), RGBA PNG and grey JPEG."""
    img = tmp_path / "images"
    (img / "010").mkdir(parents=True)
    (img / "a1.png").write_bytes(image_bytes((255, 0, 0)))
    (img / "010" / "b2.jpg").write_bytes(image_bytes((0, 0, 255), "JPEG"))
    Image.new("RGBA", (8, 8), (0, 255, 0, 128)).save(img / "c3.png")
    Image.new("L", (30, 30), 100).save(img / "d4.jpeg")
    (img / "notes.txt").write_text("not an image")
    items = tmp_path / "items.tsv"
    items.write_bytes(b"a1\r\nb2\r\nc3\r\nd4\r\n")  # one column, CRLF (the H&M layout)
    return tmp_path


def raw_store(path, entries):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in entries.items():
            txn.put(k.encode(), v)
    env.close()
    return path


# --- LMDB store -------------------------------------------------------------------------------

def test_lmdb_round_trip(folder):
    s = build_lmdb(folder / "images", folder / "items.tsv", folder / "x.lmdb", progress=False)
    assert s["count"] == 4 and s["missing"] == 0 and s["formats"] == {"PNG": 2, "JPEG": 2}
    store = ImageStore(folder / "x.lmdb")
    assert store.get("a1") == (folder / "images" / "a1.png").read_bytes()  # the file's bytes, as stored
    assert store.get("b2") == (folder / "images" / "010" / "b2.jpg").read_bytes()
    assert sorted(store.keys()) == ["a1", "b2", "c3", "d4"]
    meta = store.check_format()
    assert meta["count"] == 4 and meta["format"] == "adapter4rec-images"
    assert store.get("zz") is None and store.missing(["a1", "zz"]) == ["zz"]
    content = ImageContent(store, ["c3", "a1", "d4", "b2"], size=16)
    px = content.get(np.array([2, 4, 1, 3]))["pixels"]
    assert px.dtype == torch.uint8 and px.shape == (4, 3, 16, 16)
    assert px[0, :, 8, 8].tolist() == [255, 0, 0]            # a1: red PNG, resized
    assert abs(px[1, 2, 8, 8].item() - 255) <= 3            # b2: blue JPEG
    assert px[2, :, 8, 8].tolist() == [0, 255, 0]           # c3: RGBA -> RGB
    assert px[3, :, 8, 8].tolist() == [100, 100, 100]       # d4: grey JPEG -> RGB
    assert len(content) == 4


def test_build_lmdb_missing_images(folder):
    (folder / "items.tsv").write_text("a1\nb2\nc3\nd4\nz9\ny8\n")
    with pytest.raises(DataError, match=r"2 of 6 items have no image.*'z9', 'y8'.*--allow-missing"):
        build_lmdb(folder / "images", folder / "items.tsv", folder / "x.lmdb", progress=False)
    assert not (folder / "x.lmdb").exists()
    s = build_lmdb(folder / "images", folder / "items.tsv", folder / "x.lmdb", allow_missing=True,
                   progress=False)
    assert s["count"] == 4 and s["missing"] == 2 and s["missing_ids"] == ["z9", "y8"]
    with pytest.raises(DataError, match="already exists.*--overwrite"):
        build_lmdb(folder / "images", folder / "items.tsv", folder / "x.lmdb", progress=False)


def test_build_lmdb_rejects_non_image_and_leaves_nothing(folder):
    (folder / "images" / "a1.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match=r"a1\.png.*not a readable image"):
        build_lmdb(folder / "images", folder / "items.tsv", folder / "x.lmdb", progress=False)
    assert not (folder / "x.lmdb").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".x.lmdb")]  # no temporary left


def test_build_lmdb_command(folder, capsys):
    from adapter4rec.cli import main

    rc = main(["build-lmdb", "--images", str(folder / "images"), "--items", str(folder / "items.tsv"),
               "--out", str(folder / "cli.lmdb"), "--no-progress"])
    assert rc == 0 and "wrote 4 images" in capsys.readouterr().out
    assert sorted(ImageStore(folder / "cli.lmdb").keys()) == ["a1", "b2", "c3", "d4"]
    rc = main(["build-lmdb", "--images", str(folder / "nowhere"), "--items", str(folder / "items.tsv"),
               "--out", str(folder / "y.lmdb")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err


# --- worker-safe reading ----------------------------------------------------------------------

class _Batches(torch.utils.data.Dataset):
    def __init__(self, content, n):
        self.content, self.n = content, n

    def __len__(self):
        return 6

    def __getitem__(self, i):
        ids = np.arange(i, self.n, 6) + 1
        return {"pid": torch.tensor(os.getpid()), "ids": torch.from_numpy(ids),
                **self.content.get(ids)}


def test_reading_in_two_workers(domain):
    content = ImageContent(Path(domain["images"]), list(domain["item_topics"]), size=32)
    assert not content.store.is_open()  # the build-time check closed what it opened: nothing to fork
    expect = {i: content.get(np.array([i]))["pixels"][0] for i in range(1, len(content) + 1)}
    assert content.store.is_open()  # now open in the main process; workers must reopen
    loader = torch.utils.data.DataLoader(_Batches(content, len(content)), batch_size=None,
                                         num_workers=2, multiprocessing_context="fork")
    pids, seen = set(), 0
    for batch in loader:
        pids.add(int(batch["pid"]))
        for i, px in zip(batch["ids"].tolist(), batch["pixels"]):
            assert torch.equal(px, expect[i])
            seen += 1
    assert seen == len(content) and len(pids) == 2 and os.getpid() not in pids
    clone = pickle.loads(pickle.dumps(content))  # spawn-style workers get a pickled copy
    assert torch.equal(clone.get(np.array([3]))["pixels"][0], expect[3])


def test_items_without_image_error_or_blank(domain, caplog):
    ids = list(domain["item_topics"]) + ["X1", "X2"]
    with pytest.raises(DataError, match=r"images\.lmdb.*2 of 50 items have no image.*'X1', 'X2'"
                                        r".*missing_image: blank"):
        ImageContent(domain["images"], ids, size=32)
    with caplog.at_level(logging.WARNING, logger="adapter4rec"):
        content = ImageContent(domain["images"], ids, size=32, missing="blank")
    assert "2 of 50 items have no image" in caplog.text
    px = content.get(np.array([49, 1, 50]))["pixels"]
    assert (px[0] == BLANK_VALUE).all() and (px[2] == BLANK_VALUE).all() and not (px[1] == BLANK_VALUE).all()


def test_unknown_index_and_corrupt_bytes(tmp_path, domain):
    content = ImageContent(domain["images"], list(domain["item_topics"]), size=32)
    for bad in (0, 49):
        with pytest.raises(DataError, match=f"item index {bad} is outside 1..48"):
            content.get(np.array([1, bad]))
    store = raw_store(tmp_path / "bad.lmdb", {"ok": image_bytes((1, 2, 3)), "broken": b"\xff\xd8garbage",
                                              "__meta__": json.dumps({"format": "adapter4rec-images"}).encode()})
    content = ImageContent(store, ["ok", "broken"], size=8)
    assert content.get(np.array([1]))["pixels"].shape == (1, 3, 8, 8)
    with pytest.raises(DataError, match=r"bad\.lmdb.*item 'broken' cannot be decoded.*build-lmdb"):
        content.get(np.array([1, 2]))


def test_reference_pickled_store_is_refused(tmp_path):
    store = raw_store(tmp_path / "ref.lmdb", {"__keys__": pickle.dumps([b"1"]), "1": pickle.dumps("x")})
    with pytest.raises(DataError, match="reference implementation.*rebuild"):
        ImageContent(store, ["1"], size=8)
    with pytest.raises(DataError, match="does not exist.*build-lmdb"):
        ImageStore(tmp_path / "absent.lmdb")


def test_decode_resizes_any_size():
    big = decode_image(image_bytes((10, 200, 30), "JPEG", size=(300, 170)), 24)
    assert big.shape == (3, 24, 24) and big.dtype == np.uint8
    assert np.abs(big[:, 12, 12].astype(int) - [10, 200, 30]).max() <= 6


# --- encoders ---------------------------------------------------------------------------------

def _encoder(path, pooling="cls", d=16):
    b = load_backbone(path, expect_type="vit|vit_mae")
    pre = read_preprocessor(path, b.config.model_type)
    return ImageItemEncoder(b, d, pooling, pre["mean"], pre["std"])


def test_normalisation_from_preprocessor_config(tiny):
    vit, mae = _encoder(tiny["vit"]), _encoder(tiny["mae"])
    px = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    assert torch.allclose(vit.normalise(px)[:, :, 0, 0], torch.tensor([[-1.0] * 3, [1.0] * 3]))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(mae.normalise(px)[:, :, 0, 0], torch.stack([-mean / std, (1 - mean) / std]), atol=1e-6)
    assert not any("scale" in k or "shift" in k for k in vit.state_dict())  # not in checkpoints


@pytest.mark.parametrize("kind", ["vit", "mae"])
def test_encoder_deterministic_in_eval(tiny, kind):
    enc = _encoder(tiny[kind]).eval()
    if kind == "mae":
        assert enc.backbone.config.mask_ratio == 0.0
    px = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = enc(px), enc(px)
        alone = enc(px[2:3])
        hidden = enc.backbone(pixel_values=enc.normalise(px), **(
            {"noise": torch.arange(16.0).expand(5, 16)} if kind == "mae" else {})).last_hidden_state
    assert torch.get_rng_state().equal(state)  # no random masking noise drawn
    assert torch.equal(a, b) and a.shape == (5, 16)
    assert torch.allclose(alone[0], a[2], atol=1e-5)  # an item's vector does not depend on its batch
    assert hidden.shape[1] == 17  # CLS + all 16 patches: nothing masked
    assert not torch.allclose(a[0], a[1])


def test_mae_whole_items_differ_from_masked(tiny):
    """With the reference's 75% masking the same image gives a different vector on every call."""
    enc = _encoder(tiny["mae"]).eval()
    px = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = enc.normalise(px)
        fixed = enc.backbone(pixel_values=x, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
        shuffled = enc.backbone(pixel_values=x).last_hidden_state  # mask_ratio 0, random patch order
        enc.backbone.config.mask_ratio = 0.75
        m1, m2 = (enc.backbone(pixel_values=x).last_hidden_state for _ in range(2))
    # unmasked, CLS does not depend on the patch order (up to float rounding): the fixed order only
    # makes it exact and keeps the RNG untouched
    assert torch.allclose(fixed[:, 0], shuffled[:, 0], atol=1e-5)
    assert m1.shape[1] == 5 and not torch.allclose(m1, m2)


@pytest.mark.parametrize("kind", ["vit", "mae"])
def test_build_item_encoder_from_config(tiny, domain, kind):
    cfg = load_config(overrides=[f"data.path={Path(domain['images']).parent}", "data.images=images.lmdb",
                                 "model.item_encoder=image", f"model.pretrained={tiny[kind]}",
                                 "model.random_init=true", "model.pooling=mean", "data.image_size=40",
                                 "model.embedding_dim=8", "model.num_heads=2"])
    data = type("D", (), {"item_ids": list(domain["item_topics"])})()
    enc, content = build_item_encoder(cfg, data)
    assert isinstance(content, ImageContent) and content.size == 40 and len(content) == 48
    batch = content.get(np.arange(1, 5))
    out = enc.eval()(**batch)  # 40 px with a 32 px model: position encodings interpolated
    assert out.shape == (4, 8) and torch.isfinite(out).all()
    enc2, same = build_item_encoder(cfg, data, content)
    assert same is content


def test_config_errors(tiny, domain):
    base = [f"data.path={Path(domain['images']).parent}", "model.item_encoder=image",
            f"model.pretrained={tiny['vit']}"]
    data = type("D", (), {"item_ids": list(domain["item_topics"])})()
    with pytest.raises(ConfigError, match="needs data.images"):
        build_item_encoder(load_config(overrides=base), data)
    with pytest.raises(DataError, match="image store not found.*build-lmdb"):
        build_item_encoder(load_config(overrides=base + ["data.images=nope.lmdb"]), data)
    with pytest.raises(ConfigError, match="multiple of the model's patch size 8"):
        build_item_encoder(load_config(overrides=base + ["data.images=images.lmdb", "data.image_size=30"]), data)
    with pytest.raises(ConfigError, match="expected vit\\|vit_mae"):
        from adapter4rec.data.synthetic import write_tiny_bert
        bert = write_tiny_bert(Path(domain["images"]).parent.parent / "bert")
        build_item_encoder(load_config(overrides=base + ["data.images=images.lmdb", f"model.pretrained={bert}"]), data)


# --- synthetic images and a short run ---------------------------------------------------------

def test_synthetic_images_follow_topics(domain):
    looks = {topic_look(t) for t in TOPICS}
    assert len(looks) == len(TOPICS)  # every topic has its own shape and colour
    root = Path(domain["images"]).parent
    assert (root / "items.tsv").read_text().splitlines()[0] in domain["item_topics"]  # one column
    with Image.open(next((root / "images").iterdir())) as im:
        assert im.size == (40, 40)
    # items of one topic look more alike than items of different topics
    content = ImageContent(domain["images"], list(domain["item_topics"]), size=16)
    px = content.get(np.arange(1, 49))["pixels"].float().flatten(1)
    topics = list(domain["item_topics"].values())
    same = [torch.dist(px[i], px[j]) for i in range(48) for j in range(i) if topics[i] == topics[j]]
    diff = [torch.dist(px[i], px[j]) for i in range(48) for j in range(i) if topics[i] != topics[j]]
    assert torch.stack(same).mean() < 0.8 * torch.stack(diff).mean()


def test_short_image_run_learns(tiny, domain, tmp_path):
    from adapter4rec.evaluation.evaluator import evaluate
    from adapter4rec.pipeline import prepare
    from adapter4rec.runtime.seed import seed_everything
    from adapter4rec.training.trainer import train

    cfg = load_config(overrides=[
        f"data.path={Path(domain['images']).parent}", "data.images=images.lmdb", "data.image_size=32",
        "model.item_encoder=image", f"model.pretrained={tiny['vit']}", "model.embedding_dim=32",
        "train.epochs=4", "train.batch_size=64", "train.lr_backbone=1e-3", "train.progress=false",
        "train.num_workers=2", "train.seed=0"])
    seed_everything(0)
    data, model, content, _ = prepare(cfg)
    before = evaluate(model, content, data, torch.device("cpu"))  # the same model, untrained
    res = train(cfg, tmp_path / "run", data=data, content=content)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    # 48 items with the history excluded: a random ranking scores NDCG@10 of about 0.1
    assert res["valid"]["NDCG@10"] > max(0.18, before["valid"]["NDCG@10"] + 0.04)
    assert res["test"]["NDCG@10"] > max(0.18, before["test"]["NDCG@10"] + 0.04)


# --- PEFT on ViT and ViT-MAE (loaded from disk, on the synthetic image domain) -----------------

peft = pytest.importorskip("adapter4rec.peft")
H, I, L, MI, MU = 32, 64, 2, 8, 4  # tiny ViT width, FFN width, layers; bottlenecks used here
PEFT_OPTIONS = {
    "full": {}, "frozen": {},
    "houlsby": {"item_bottleneck": MI, "user_bottleneck": MU, "zero_init_up": True},
    "pfeiffer": {"item_bottleneck": MI, "user_bottleneck": MU, "zero_init_up": True},
    "parallel": {"item_bottleneck": MI, "user_bottleneck": MU, "zero_init_up": True},
    "kadapter": {"item_bottleneck": MI, "user_bottleneck": MU},
    "compacter": {"item_bottleneck": MI, "user_bottleneck": MU},
    "lora": {"item_rank": 4, "user_rank": 2},
    "prompt": {"n_tokens": 3},
    "layernorm": {}, "bitfit": {},
}
NOT_IDENTITY = {"prompt"}  # appended visual prompt tokens change the item vectors from the start


def _lin(i, o):
    return i * o + o


def _sasrec_block(m):  # the reference's block: bias-free attention q/k/v/out
    return 4 * m * m + _lin(m, 4 * m) + _lin(4 * m, m) + 4 * m


LN = (2 * L + 1) * 2 * H  # every LayerNorm of the tower: the adapters tune them by default
ITEM_TRAINABLE = {  # trainable parameters in the ViT / ViT-MAE tower, by hand
    "frozen": 0,
    "houlsby": L * 2 * (_lin(H, MI) + _lin(MI, H)) + LN,
    "pfeiffer": L * (_lin(H, MI) + _lin(MI, H)) + LN,
    "parallel": L * 2 * (_lin(H, MI) + _lin(MI, H)) + LN,
    "compacter": L * 2 * (4 * (H // 4 + MI // 4) * 2 + MI + H) + 4 ** 3 + LN,
    "kadapter": 2 * (_lin(H, MI) + _lin(MI, H) + 2 * _sasrec_block(MI)) + _lin(2 * H, H),
    "lora": L * 2 * (4 * H + H * 4),                     # q_proj and v_proj: A [r, H], B [H, r]
    "prompt": 3 * H,                                      # 3 visual prompt tokens
    "layernorm": (2 * L + 1) * 2 * H,                     # layernorm_before/after per layer + final
    "bitfit": H + L * (4 * H + I + H + 2 * H) + H,        # patch conv, q/k/v/o, fc1, fc2, 2 LNs; final LN
}


@pytest.fixture(scope="module")
def image_data(domain):
    from adapter4rec.data.split import build_data

    return build_data(Path(domain["images"]).parent, max_seq_len=6)


def _image_model(tiny, domain, image_data, kind, seed=0):
    from adapter4rec.model import build_model

    cfg = load_config(overrides=[
        f"data.path={Path(domain['images']).parent}", "data.images=images.lmdb", "data.max_seq_len=6",
        "model.item_encoder=image", f"model.pretrained={tiny[kind]}", "model.embedding_dim=16",
        "train.objective=inbatch", "train.lr=1e-2", "train.lr_peft=1e-2", "train.lr_backbone=1e-3"])
    torch.manual_seed(seed)
    model = build_model(cfg, image_data)
    return model, model.content, cfg


@pytest.mark.parametrize("kind", ["vit", "mae"])
@pytest.mark.parametrize("method", list(PEFT_OPTIONS))
def test_peft_method_on_image_backbone(tiny, domain, image_data, kind, method):
    """As on BERT: identity at insertion where meant, the trainable set, and the loss falls."""
    from adapter4rec.data.batching import TrainBatches

    assert method in peft.available()
    from adapter4rec.training.optim import param_groups

    model, content, cfg = _image_model(tiny, domain, image_data, kind)
    model.eval()  # no dropout: outputs and losses are exactly comparable
    pixels = content.get(np.arange(1, 9))
    g = torch.Generator().manual_seed(3)
    seq, mask = torch.randn(4, 6, 16, generator=g), torch.ones(4, 6, dtype=torch.bool)
    mask[2:, :2] = False
    with torch.no_grad():
        before = model.encode_items(pixels), model.user_encoder(seq, mask)
    s = peft.apply(model, method, **PEFT_OPTIONS[method])
    with torch.no_grad():
        after = model.encode_items(pixels), model.user_encoder(seq, mask)
    if method in NOT_IDENTITY:
        assert after[0].shape == before[0].shape and not torch.equal(after[0], before[0])
        assert torch.equal(after[1], before[1])
    else:
        assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])

    # the trainable set
    backbone = model.item_encoder.backbone
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"item_encoder.project.0.weight", "item_encoder.project.0.bias"} <= trainable
    tower = {n for n in trainable if n.startswith("item_encoder.backbone.")}
    if method in ITEM_TRAINABLE:
        assert s["towers"]["item"]["trainable"] == ITEM_TRAINABLE[method], method
    if method == "full":
        assert tower == {"item_encoder.backbone." + n for n, _ in backbone.named_parameters()}
        if kind == "mae":  # MAE's fixed sin-cos position table is a buffer: never trained
            assert "embeddings.position_embeddings" in dict(backbone.named_buffers())
            assert "item_encoder.backbone.embeddings.position_embeddings" not in tower
    elif method == "layernorm":
        assert tower == {n for n in model.peft_tuned if n.startswith("item_encoder.backbone.")}
        assert all(".layernorm" in n for n in tower)
    elif method == "bitfit":
        assert tower == {n for n in model.peft_tuned if n.startswith("item_encoder.backbone.")}
        assert all(n.endswith(".bias") for n in tower)
    elif method != "frozen":  # inserted modules, and the LayerNorms the method tunes
        assert all("peft_" in n or n in model.peft_tuned for n in tower) and s["inserted"] > 0

    # a few steps on one batch: the loss falls and only trainable parameters move
    batch = TrainBatches(image_data, content, 32, "inbatch", seed=0)[0]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam(param_groups(model, cfg))  # the trainer's learning rate per role
    losses = []
    for _ in range(6):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05, (method, losses)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    if method not in ("full", "frozen"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in backbone.named_parameters() if p.requires_grad)


def test_evaluation_item_pass_in_workers(tiny, domain, image_data):
    """Images decoded in two DataLoader workers give the very item matrix and metrics of the
    in-process pass (workers change where decoding runs, not what is encoded)."""
    from adapter4rec.evaluation.evaluator import encode_all_items, evaluate

    model, content, _ = _image_model(tiny, domain, image_data, "vit")
    cpu = torch.device("cpu")
    own = encode_all_items(model, content, cpu, batch_size=7)
    workers = encode_all_items(model, content, cpu, batch_size=7, num_workers=2)
    assert own.shape == (image_data.n_items + 1, 16) and torch.equal(own, workers)
    assert evaluate(model, content, image_data, cpu, item_batch_size=7) == \
        evaluate(model, content, image_data, cpu, item_batch_size=7, num_workers=2)


# --- scripts ----------------------------------------------------------------------------------

def test_pretrain_and_adapt_scripts_smoke(tmp_path, capsys):
    """configs/pretrain/hm_mae_cpc.yaml then configs/adapt/amazon_mae_cpc.yaml, one epoch each on
    synthetic images with a tiny model (scripts/*.py --smoke)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("adapt_amazon", root / "scripts" / "adapt_amazon.py")
    adapt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapt)
    # one CLI style and one run layout for every script: runs/pretrain_<name>, runs/adapt_<target>/<method>
    rows = adapt.main(["--backbone", "mae", "--user-encoder", "cpc", "--methods", "houlsby", "lora",
                       "--smoke", "--runs", str(tmp_path)])
    assert [r["method"] for r in rows] == ["houlsby", "lora"]
    assert all(0 < r["trainable"] < r["total"] for r in rows)
    assert (tmp_path / "smoke" / "pretrain_hm_mae_cpc" / "metrics.json").is_file()
    cfg = load_config(tmp_path / "smoke" / "adapt_amazon_mae_cpc" / "lora" / "config.yaml")
    assert cfg.model.user_encoder == "cpc" and cfg.train.init_from.endswith("pretrain_hm_mae_cpc")
    assert "adapt_amazon_mae_cpc/houlsby" in capsys.readouterr().out
