"""`adapter4rec report`: per-user ranks from the evaluator and the trainer, varied keys and labels,
mean ± std over seeds, the paired bootstrap, the tables and the plots, over a folder of small runs
(ID-item models on synthetic data: seconds, and nothing depends on timing)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adapter4rec.cli import main
from adapter4rec.config import load_config
from adapter4rec.experiments import report as rp
from adapter4rec.training.trainer import train

BASE = ["model.item_encoder=id", "model.embedding_dim=16", "model.num_heads=2", "train.epochs=2",
        "train.batch_size=32", "train.progress=false", "train.amp=fp32", "train.objective=bce"]
RQ2 = {"default": [], "user": ["peft.options.towers=user"], "ffn": ["peft.options.positions=ffn"],
       "parallel": ["peft.options.insertion=parallel"], "noln": ["peft.options.tune_layernorm=false"],
       "b4": ["peft.options.user_bottleneck=4"], "user_ffn": ["peft.options.towers=user",
                                                              "peft.options.positions=ffn"]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """source/ (pretrained), and a study: rq1 methods x 2 seeds + scratch, rq2 seven houlsby
    variants, rq3 target fractions (full, houlsby, scratch)."""
    from adapter4rec.data.synthetic import make_transfer_pair

    root = tmp_path_factory.mktemp("study")
    src, tgt = make_transfer_pair(root / "data", seed=0, source_users=100, source_items=50,
                                  target_users=80, target_items=40)
    source = root / "study" / "source"
    train(load_config(overrides=BASE + [f"data.path={src}"]), source)
    adapt = [f"data.path={tgt}", f"train.init_from={source}"]

    def run(name, sets):
        train(load_config(overrides=BASE + sets), root / "study" / name)

    for seed in (1, 2):
        for m in ("full", "houlsby", "lora"):
            run(f"rq1/{m}_s{seed}", adapt + [f"peft.method={m}", f"train.seed={seed}"])
        run(f"rq1/scratch_s{seed}", [f"data.path={tgt}", f"train.seed={seed}"])
    for name, opts in RQ2.items():
        run(f"rq2/houlsby_{name}", adapt + ["peft.method=houlsby"] + opts)
    for f in (0.5, 1.0):
        for m in ("full", "houlsby"):
            run(f"rq3/{m}_t{f}", adapt + [f"peft.method={m}", f"data.user_fraction={f}"])
        run(f"rq3/scratch_t{f}", [f"data.path={tgt}", f"data.user_fraction={f}"])
    return root / "study"


# --- per-user ranks ------------------------------------------------------------------------------

def test_the_evaluator_returns_every_users_rank(study):
    import torch

    from adapter4rec.evaluation.evaluator import evaluate
    from adapter4rec.pipeline import prepare

    cfg = load_config(study / "rq1" / "full_s1" / "config.yaml")
    data, model, content, _ = prepare(cfg)
    plain = evaluate(model, content, data, torch.device("cpu"), k=(5, 10))
    got, ranks = evaluate(model, content, data, torch.device("cpu"), k=(5, 10), return_ranks=True)
    assert got == plain and set(ranks) == {"valid", "test"}
    for split, r in ranks.items():
        assert isinstance(r, np.ndarray) and r.dtype == np.float32 and r.shape == (data.n_users,)
        assert np.all((r >= 1) | np.isinf(r))
        for k in (5, 10):
            assert rp.user_ndcg(r, k).mean() == pytest.approx(got[split][f"NDCG@{k}"], abs=1e-6)
            assert (r <= k).mean() == pytest.approx(got[split][f"HR@{k}"])
    assert np.isinf(ranks["test"]).any()  # targets in the user's own history: never a hit


def test_a_run_folder_keeps_the_best_epochs_ranks_and_its_resources(study):
    for run in (study / "rq1" / "houlsby_s1", study / "rq3" / "full_t0.5"):
        final = json.loads((run / "metrics.json").read_text())
        with np.load(run / "ranks.npz") as z:
            assert int(z["epoch"]) == final["best_epoch"]
            for split in ("valid", "test"):
                assert rp.user_ndcg(z[split]).mean() == pytest.approx(final[split]["NDCG@10"], abs=1e-6)
        res = json.loads((run / "resources.json").read_text())
        records = (run / "metrics.jsonl").read_text().splitlines()
        assert [e["epoch"] for e in res["epochs"]] == [json.loads(r)["epoch"] for r in records]
        assert res["peak_rss_mb"] > 0 and (res["peak_cuda_mb"] is None) == (res["device"] == "cpu")
        assert not any("peak" in k for k in final)  # metrics.json stays bit-identical on resume
    assert not list(study.rglob(".ranks.npz.*")) and not list(study.rglob(".resources.json.*"))


def test_a_runs_peak_memory_is_its_own_not_an_earlier_runs_in_the_same_process(tmp_path):
    """A suite with one job trains its runs one after another in one process: the peak of a
    large run before (here 600 MB held and let go) must not become a small run's peak."""
    from adapter4rec.data.synthetic import make_domain
    from adapter4rec.training.trainer import _vm_hwm_mb

    make_domain(tmp_path / "d", "target", n_users=60, n_items=30, seed=1)
    big = np.ones(600 * 2**20 // 8)  # touched, so resident; freed (unmapped) again below
    del big
    peak_before = _vm_hwm_mb()
    if peak_before is None:
        pytest.skip("no /proc/self/status here")
    train(load_config(overrides=BASE + [f"data.path={tmp_path / 'd'}", "train.epochs=1"]), tmp_path / "run")
    res = json.loads((tmp_path / "run" / "resources.json").read_text())
    # the tiny run needs far less than the 600 MB the process held before it
    assert res["peak_rss_mb"] < peak_before - 300, (res["peak_rss_mb"], peak_before)
    assert res["peak_rss_scope"] == "run"


# --- keys, labels, seeds ------------------------------------------------------------------------

def test_varied_keys_come_from_the_resolved_configs(study):
    rep = rp.build([str(study / "rq2")])
    assert rep.keys == ["peft.options.towers", "peft.options.positions", "peft.options.insertion",
                        "peft.options.user_bottleneck", "peft.options.tune_layernorm"]
    labels = [v.label for v in rep.variants]
    assert len(set(labels)) == len(labels) == 7  # seven houlsby runs, seven labels
    assert set(labels) == {"houlsby", "houlsby towers=user", "houlsby positions=ffn",
                           "houlsby insertion=parallel", "houlsby tune_layernorm=false",
                           "houlsby user_bottleneck=4", "houlsby towers=user positions=ffn"}
    table = rep.run_table
    assert {"towers", "positions", "insertion", "tune_layernorm", "seed", "trainable",
            "trainable_%", "adapter_mb", "test_HR@10", "test_NDCG@10", "epoch_s",
            "peak_rss_mb"} <= set(table.columns)
    row = table.set_index("run").loc[str(study / "rq2" / "houlsby_user_ffn")]
    assert (row["towers"], row["positions"]) == ("user", "ffn")
    assert 0 < row["trainable_%"] < 100 and row["adapter_mb"] > 0


def test_seeds_are_one_variant_with_mean_and_std(study):
    rep = rp.build([str(study / "rq1")])
    assert rep.keys == ["peft.method", "init", "source_data", "source_fraction", "train.seed"]
    assert sorted(v.label for v in rep.variants) == ["full", "full scratch", "houlsby", "lora"]
    assert all(len(v.runs) == 2 for v in rep.variants)
    row = rep.variant_table.set_index("label").loc["houlsby"]
    ndcg = [json.loads((study / "rq1" / f"houlsby_s{s}" / "metrics.json").read_text())["test"]["NDCG@10"]
            for s in (1, 2)]
    assert row["n"] == 2 and row["seeds"] == "1,2"
    assert row["test_NDCG@10"] == pytest.approx(np.mean(ndcg))
    assert row["test_NDCG@10_std"] == pytest.approx(np.std(ndcg, ddof=1))
    assert "±" in rp.markdown_table(rep.variant_table)


def test_groups_are_the_folders_holding_the_runs(study):
    side_by_side = rp.build(sorted(str(p) for p in (study / "rq2").iterdir()))  # a shell glob
    assert not side_by_side.groups and len({v.label for v in side_by_side.variants}) == 7
    two = rp.build([str(study / "rq1"), str(study / "rq2")], auto=False)
    assert sorted(two.groups) == ["rq1", "rq2"]
    assert len(two.groups["rq2"][1]) == 7 and "## rq1" in rp.to_markdown(two)


def _run(path, group="", **config):
    flat = {"peft.method": "houlsby", "train.seed": 1, "init": "transfer", "data.path": "/x/target",
            **config}
    return rp.RunInfo(Path(path), Path(path).name, group, flat, {"valid": {}, "test": {}}, [], {}, None)


def test_labels_are_distinct_even_where_defaults_and_paths_hide_keys():
    runs = [_run("a", **{"peft.options.towers": ("item", "user")}),
            _run("b", **{"peft.options.towers": ("user",)}),
            _run("c", **{"peft.method": "full", "init": "scratch"}),
            _run("d", **{"peft.method": "full"}),
            _run("e", **{"data.path": "/x/one/target", "peft.options.towers": ("user",)}),
            _run("f", **{"data.path": "/x/two/target", "peft.options.towers": ("user",)})]
    keys = rp.varied_keys(runs)
    variants = rp.make_variants(runs, keys, by_group=False)
    labels = sorted(v.label for v in variants)
    assert len(set(labels)) == 6, labels
    assert "full scratch path=x/target" in labels and "houlsby path=one/target towers=user" in labels
    assert "houlsby path=x/target" in labels  # towers item+user: houlsby's default


# --- paired bootstrap ---------------------------------------------------------------------------

def test_paired_bootstrap():
    rng = np.random.default_rng(3)
    b = rng.random(500)
    assert rp.paired_bootstrap(b, b) == (0.0, 0.0, 0.0)
    d, lo, hi = rp.paired_bootstrap(b + 0.25, b)
    assert d == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    a = b + rng.normal(0.05, 0.2, 500)
    d, lo, hi = rp.paired_bootstrap(a, b, resamples=400, seed=1)
    assert lo < d < hi and lo > 0  # the 0.05 shift is ~5 standard errors away from 0
    assert rp.paired_bootstrap(a, b, resamples=400, seed=1) == (d, lo, hi)  # seeded
    se = 0.2 / np.sqrt(500)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)
    with pytest.raises(rp.Adapter4RecError):
        rp.paired_bootstrap(a, b, resamples=0)


def test_pairs_vs_full_transfer_vs_scratch_and_named(study):
    rep = rp.build([str(study / "rq1")], pairs=["lora*:houlsby*"], resamples=200)
    t = rep.pair_table
    got = {(r.A, r.B, r.why) for r in t.itertuples()}
    assert {("lora", "houlsby", "--pair"), ("houlsby", "full", "vs full"),
            ("lora", "full", "vs full"), ("full", "full scratch", "transfer vs scratch"),
            ("houlsby", "full scratch", "transfer vs scratch")} <= got
    assert (t.ci_low <= t["diff"]).all() and (t["diff"] <= t.ci_high).all()
    with np.load(study / "rq1" / "full_s1" / "ranks.npz") as z:
        assert (t.users == len(z["test"])).all() and (t.seeds == "2/2").all()
    row = t[(t.A == "houlsby") & (t.B == "full")].iloc[0]
    means = rep.variant_table.set_index("label")["test_NDCG@10"]
    assert row["NDCG@10_A"] == pytest.approx(means["houlsby"], abs=1e-6)
    assert row["diff"] == pytest.approx(means["houlsby"] - means["full"], abs=1e-6)
    assert not rep.skipped
    with pytest.raises(rp.Adapter4RecError, match="nothing matches"):
        rp.build([str(study / "rq1")], pairs=["nope:full"])


def test_pairs_of_other_users_or_without_ranks_are_skipped_with_the_reason(study, tmp_path):
    shutil.copytree(study / "rq3", tmp_path / "rq3")
    rep = rp.build([str(tmp_path / "rq3")], pairs=["full_t0.5:full_t1.0"], resamples=50)
    assert any("full user_fraction=0.5 vs full (--pair): their data differ" in s for s in rep.skipped)
    assert {(r.A, r.B) for r in rep.pair_table.itertuples()} >= {
        ("houlsby user_fraction=0.5", "full user_fraction=0.5"), ("houlsby", "full")}
    (tmp_path / "rq3" / "houlsby_t1.0" / "ranks.npz").unlink()  # a run made before ranks.npz
    rep = rp.build([str(tmp_path / "rq3")], resamples=50)
    assert any("houlsby_t1.0 has no ranks.npz" in s for s in rep.skipped)
    assert "Pairs not compared" in rp.to_markdown(rep)


# --- the command: tables, CSV, plots -------------------------------------------------------------

def test_report_writes_tables_intervals_and_plots_with_distinct_labels(study, tmp_path, capsys,
                                                                       monkeypatch):
    seen = {}
    annotate = rp._annotate

    def spy(fig, ax, notes, points=(), **kw):
        seen[ax.get_title().split(":")[0]] = [t for n in notes for t in n[2].split("\n")]
        assert ax.get_xscale() == "log" and "trainable parameters" in ax.get_xlabel()
        assert ax.get_ylabel() == "test NDCG@10" and ax.get_title()
        return annotate(fig, ax, notes, points, **kw)
    monkeypatch.setattr(rp, "_annotate", spy)
    md, csv, plots = tmp_path / "r.md", tmp_path / "r.csv", tmp_path / "plots"
    assert main(["report", str(study), "--markdown", str(md), "--csv", str(csv), "--plots",
                 str(plots), "--pair", "rq2/houlsby_user:rq2/houlsby_default",
                 "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    text = md.read_text()
    assert "## Runs" in text and "| run | method |" in text and "nan" not in out
    for section in ("## Variants (mean ± std over seeds)", "## Paired bootstrap", "## rq1",
                    "## rq2", "## rq3", "## Source runs"):
        assert section in text, section
    assert str(study / "source") in text.split("## Source runs")[1]  # listed apart
    assert "| houlsby towers=user | houlsby [rq2] | --pair |" in text  # the same config in rq1, rq3
    import pandas as pd

    runs = pd.read_csv(csv)
    assert len(runs) == 8 + 7 + 6  # every run but the source
    assert len(pd.read_csv(tmp_path / "r.pairs.csv")) > 5
    assert len(pd.read_csv(tmp_path / "r.variants.csv")) == 4 + 7 + 6  # rq1 seeds aggregate
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["resources.png", "scaling_target_rq3.png", "tradeoff.png", "tradeoff_rq1.png",
                     "tradeoff_rq2.png", "tradeoff_rq3.png"]
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    # rq2's plot: seven houlsby points, each named apart
    rq2 = seen["rq2"]
    assert len(rq2) == len(set(rq2)) == 7
    assert set(rq2) == {"default", "towers=user", "positions=ffn", "insertion=parallel",
                        "tune_layernorm=false", "user_bottleneck=4", "towers=user positions=ffn"}


def test_the_scaling_and_resources_plots(study, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figs = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))  # keep them to look at
    rep = rp.build([str(study / "rq3")], auto=False)
    assert sorted(p.name for p in rp.write_plots(rep, tmp_path)) == [
        "resources.png", "scaling_target.png", "tradeoff.png"]
    by_title = {f.axes[0].get_title() or f._suptitle.get_text(): f for f in figs}
    scaling = by_title["test NDCG@10 vs target user fraction"].axes[0]
    lines = [t.get_text() for t in scaling.get_legend().get_texts()]
    assert lines == ["full", "full scratch", "houlsby"]  # one line per method, scratch included
    assert scaling.get_xlabel().startswith("target user fraction")
    res = by_title["Epoch time and peak memory per variant"]
    assert [a.get_xlabel() for a in res.axes] == ["seconds per training epoch (mean)",
                                                  "peak resident memory of the process (MiB)"]
    assert [t.get_text() for t in res.axes[0].get_yticklabels()] == ["full", "full scratch", "houlsby"]
    for f in figs:
        close(f)


def test_existing_callers_plot_alias_and_python_api(study, tmp_path, capsys):
    rows = rp.report([str(study / "rq1")], plot=str(tmp_path / "t.png"),
                     markdown=str(tmp_path / "t.md"))
    assert len(rows) == 8 and {"run", "method", "test_NDCG@10", "trainable"} <= set(rows[0])
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert "| run | method |" in (tmp_path / "t.md").read_text()
    assert main(["report", str(study / "rq1" / "full_s1"), "--plot", str(tmp_path / "one.png")]) == 0
    out = capsys.readouterr().out
    assert str(study / "rq1" / "full_s1") in out and "nan" not in out


def test_a_method_without_options_and_a_learning_rate_tuned_per_method():
    assert rp.flatten({"peft": {"method": "frozen", "options": {}}}) == {"peft.method": "frozen"}
    runs = [_run("h", **{"train.lr_peft": 1e-4}), _run("l", **{"peft.method": "lora"}),
            _run("f", **{"peft.method": "full"}), _run("s", **{"peft.method": "full", "init": "scratch"})]
    for r in runs:
        r.config.setdefault("train.lr_peft", 1e-3)
    keys = rp.varied_keys(runs)
    assert keys == ["peft.method", "init", "train.lr_peft"]
    variants = rp.make_variants(runs, keys, by_group=False)
    pairs = {(a.label, b.label, why) for a, b, why in rp.auto_pairs(variants, keys)}
    assert pairs == {("houlsby lr_peft=0.0001", "full", "vs full"), ("lora", "full", "vs full"),
                     ("houlsby lr_peft=0.0001", "full scratch", "transfer vs scratch"),
                     ("lora", "full scratch", "transfer vs scratch"),
                     ("full", "full scratch", "transfer vs scratch")}


def test_a_suites_selection_runs_are_left_out_unless_asked_for(tmp_path):
    import json as _json

    import yaml as _yaml

    from adapter4rec.experiments.report import collect_runs

    suite = tmp_path / "suite"
    for rel in ("method=full", "method=houlsby", "select/method=houlsby,lr=0.001"):
        run = suite / rel
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(_json.dumps({"valid": {"NDCG@10": 0.1}, "test": {"NDCG@10": 0.1},
                                                      "trainable_params": 1, "total_params": 2}))
        (run / "config.yaml").write_text(_yaml.safe_dump({"peft": {"method": rel.split("=")[1].split(",")[0]}}))
    (suite / "suite.json").write_text("{}")
    assert sorted(r.path.name for r in collect_runs([str(suite)])) == ["method=full", "method=houlsby"]
    assert [r.path.name for r in collect_runs([str(suite / "select")])] == ["method=houlsby,lr=0.001"]


def test_automatic_pairs_keep_the_objective_and_fall_back_to_the_one_full_run():
    """The study's layout at one target fraction: the learning rate selected per method (so no
    full run shares an adapter's), full and houlsby also with BCE. Each method pairs with the full
    run of its own objective; no BCE run pairs with the (in-batch) scratch run."""
    lr = "train.lr_peft"
    runs = [_run("full", **{"peft.method": "full", lr: 5e-4}),
            _run("full_bce", **{"peft.method": "full", lr: 1e-3, "train.objective": "bce"}),
            _run("houlsby", **{lr: 5e-4}),
            _run("houlsby_bce", **{lr: 1.5e-4, "train.objective": "bce"}),
            _run("frozen", **{"peft.method": "frozen", lr: 1e-3}),
            _run("iisan", **{"peft.method": "iisan", lr: 1e-4}),
            _run("scratch", **{"peft.method": "full", "init": "scratch", lr: 1e-3})]
    for r in runs:
        r.config.setdefault("train.objective", "inbatch")
    keys = rp.varied_keys(runs)
    variants = rp.make_variants(runs, keys, by_group=False)
    name = {id(v): v.runs[0].name for v in variants}
    got = {(name[id(a)], name[id(b)], why) for a, b, why in rp.auto_pairs(variants, keys)}
    assert got == {("houlsby", "full", "vs full"), ("houlsby_bce", "full_bce", "vs full"),
                   ("frozen", "full", "vs full"), ("iisan", "full", "vs full"),
                   ("full", "scratch", "transfer vs scratch"),
                   ("houlsby", "scratch", "transfer vs scratch"),
                   ("frozen", "scratch", "transfer vs scratch"),
                   ("iisan", "scratch", "transfer vs scratch")}


def test_run_json_records_the_learning_rates_that_train_something(study):
    groups = {m: json.loads((study / "rq1" / f"{m}_s1" / "run.json").read_text())["param_groups"]
              for m in ("full", "houlsby")}
    assert "peft" not in groups["full"] and groups["houlsby"]["peft"]["params"] > 0
    cfg = load_config(overrides=BASE)
    assert groups["houlsby"]["peft"]["lr"] == cfg.train.lr_peft
    assert groups["full"]["rest"]["lr"] == cfg.train.lr
    runs = rp.collect_runs([str(study / "rq1")])
    assert {r.name: r.lr_roles for r in runs}["full_s1"] == frozenset(groups["full"])


def test_labels_leave_out_learning_rates_of_no_parameter():
    """A learning rate selected per method sets lr_peft for full fine-tuning too, which has no
    inserted module: "full lr_peft=0.0005" would name a setting that trains nothing."""
    lr = "train.lr_peft"
    runs = [_run("full", **{"peft.method": "full", lr: 5e-4}),
            _run("h1", **{lr: 5e-4}), _run("h2", **{lr: 1e-4}),
            _run("old", **{"peft.method": "lora", lr: 5e-4})]  # made before run.json had groups
    runs[0].lr_roles = frozenset({"backbone", "rest"})
    runs[1].lr_roles = runs[2].lr_roles = frozenset({"peft", "rest"})
    keys = rp.varied_keys(runs)
    assert sorted(v.label for v in rp.make_variants(runs, keys, by_group=False)) == [
        "full", "houlsby lr_peft=0.0001", "houlsby lr_peft=0.0005", "lora lr_peft=0.0005"]
    twin = _run("full2", **{"peft.method": "full", lr: 1e-4})  # labels stay distinct
    twin.lr_roles = runs[0].lr_roles
    labels = [v.label for v in rp.make_variants(runs + [twin], keys, by_group=False)]
    assert len(set(labels)) == 5 and "full lr_peft=0.0001" in labels


def test_tables_leave_blank_a_learning_rate_of_no_parameter():
    """The run and variant tables show each varied key for every row: full fine-tuning's
    lr_peft (and frozen's lr_backbone) trains nothing, so its cell is blank, not a number."""
    lr, lb = "train.lr_peft", "train.lr_backbone"
    runs = [_run("full", **{"peft.method": "full", lr: 5e-4, lb: 1e-5}),
            _run("h1", **{lr: 5e-4, lb: 5e-5}), _run("h2", **{lr: 1e-4, lb: 5e-5}),
            _run("old", **{"peft.method": "lora", lr: 5e-4, lb: 5e-5})]  # no groups recorded
    runs[0].lr_roles = frozenset({"backbone", "rest"})
    runs[1].lr_roles = runs[2].lr_roles = frozenset({"peft", "rest"})
    keys = rp.varied_keys(runs)
    names = rp.short_names([k for k in keys if k not in (rp.METHOD, rp.SEED)])
    table = rp.run_table(runs, keys).set_index("method")
    assert table.loc["full", names[lr]] == "—" and table.loc["full", names[lb]] == "1e-05"
    assert table.loc["houlsby", names[lb]].tolist() == ["—", "—"]
    assert table.loc["lora", names[lr]] == "0.0005"  # unknown roles: shown as configured
    variants = rp.make_variants(runs, keys, by_group=False)
    vt = rp.variant_table(variants, keys, with_group=False)
    assert vt.loc[vt["method"] == "full", names[lr]].tolist() == ["—"]
    assert sorted(vt.loc[vt["method"] == "houlsby", names[lr]]) == ["0.0001", "0.0005"]


def test_the_full_an_automatic_pair_compares_with_is_full_fine_tuning_of_both_towers():
    """A `full` run with other options (towers: [user]: frozen item features, the user tower
    tuned) is a method of its own, never the "full" a method is read against."""
    towers = "peft.options.towers"
    for with_full in (True, False):
        runs = [_run("houlsby"), _run("frozen_items", **{"peft.method": "full", towers: ("user",)})]
        runs += [_run("full", **{"peft.method": "full", towers: ("item", "user")})] if with_full else []
        keys = rp.varied_keys(runs)
        variants = rp.make_variants(runs, keys, by_group=False)
        name = {id(v): v.runs[0].name for v in variants}
        got = {(name[id(a)], name[id(b)], why) for a, b, why in rp.auto_pairs(variants, keys)}
        assert got == ({("houlsby", "full", "vs full")} if with_full else set())


def test_amp_auto_is_read_as_the_precision_each_run_resolved_it_to(tmp_path):
    """Two `train.amp: auto` runs made on machines with and without bf16 units computed in other
    precisions: the report tells them apart instead of averaging them as seeds of one variant."""
    import yaml as _yaml

    def make(name, method, precisions, amp="auto", seed=1):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"valid": {"NDCG@10": 0.1}, "test": {"NDCG@10": 0.1},
                                                      "trainable_params": 1, "total_params": 2}))
        (run / "config.yaml").write_text(_yaml.safe_dump(
            {"peft": {"method": method}, "train": {"amp": amp, "seed": seed}}))
        starts = [{"precision": p} if p else {} for p in precisions]
        (run / "run.json").write_text(json.dumps({"starts": starts}))

    make("a", "houlsby", ["bf16"])
    make("b", "houlsby", ["fp32"], seed=2)
    make("c", "houlsby", ["bf16", "fp32"], seed=3)  # resumed elsewhere by an older adapter4rec
    make("d", "houlsby", [None], seed=4)            # written before precision was recorded
    make("e", "houlsby", ["bf16"], amp="fp32", seed=5)  # an explicit value is what it says
    make("p", "popularity", [None])
    runs = {r.name: r for r in rp.collect_runs([str(tmp_path)])}
    got = {n: r.config.get("train.amp") for n, r in runs.items()}
    assert got == {"a": "bf16", "b": "fp32", "c": "bf16+fp32", "d": "auto", "e": "fp32", "p": rp.MISSING}
    houlsby = [r for r in runs.values() if r.method == "houlsby"]
    keys = rp.varied_keys(houlsby)
    assert "train.amp" in keys
    assert len(rp.make_variants(houlsby, keys, by_group=False)) == 4  # a; b and e; c; d
