"""Study suites (adapter4rec/experiments/suite.py, docs/suites.md): grid expansion and run names,
--only, skip and resume, the selection step, dry-run validation, --jobs workers, and the shipped
suites (each passes --dry-run, plain and --smoke; one smoke suite runs end to end).

Runs train tiny ID models on synthetic data, or a fake ``train`` that writes the metrics a test
chooses (the selection step), so nothing depends on timing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from adapter4rec.cli import main
from adapter4rec.config import save_config
from adapter4rec.errors import Adapter4RecError, ConfigError, StorageError
from adapter4rec.experiments import suite as suite_mod
from adapter4rec.experiments.suite import Suite, matches, run_suite, short_names
from adapter4rec.runtime.io import FolderLock
from adapter4rec.training import trainer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "suites").glob("*.yaml"))


def quick(target, **more) -> dict:
    """Overrides for a tiny, fast ID-model run on ``target``."""
    return {"data.path": str(target), "model.item_encoder": "id", "model.embedding_dim": 16,
            "train.progress": False, "train.amp": "fp32", "train.epochs": 1,
            "train.batch_size": 128, **more}


def write(tmp_path, body: dict, name: str = "s") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return p


def report(out) -> dict:
    return json.loads((Path(out) / "suite.json").read_text(encoding="utf-8"))


def statuses(out) -> dict:
    return {r["name"]: r["status"] for r in report(out)["runs"]}


def fake_train(table=None, calls=None, fail=()):
    """A ``train`` that writes metrics.json: valid NDCG@10 from ``table[(method, lr_peft)]``."""
    def train(cfg, output, resume=False):
        output = Path(output)
        if calls is not None:
            calls.append((output, cfg, resume))
        if output.name in fail:
            raise RuntimeError(f"boom in {output.name}")
        v = (table or {}).get((cfg.peft.method, cfg.train.lr_peft), 0.1)
        metrics = {"best_epoch": 0, "valid": {"NDCG@10": v}, "test": {"HR@10": v, "NDCG@10": v},
                   "trainable_params": 1, "total_params": 2}
        output.mkdir(parents=True, exist_ok=True)
        (output / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
        return metrics
    return train


# ------------------------------------------------------------------------------ expansion, names

def test_grid_expansion_and_run_names(tmp_path, domains):
    p = write(tmp_path, {
        "set": quick(domains[1]),
        "grid": {"peft.method": ["houlsby", "pfeiffer"],
                 "peft.options.dropout": [0.0, 0.1],
                 "model.dropout": [0.2],
                 "towers": {"item": {"peft.options.towers": "item"},
                            "both": {"peft.options.towers": ["item", "user"]}}},
        "runs": [{"set": {"peft.method": "lora", "train.lr_peft": "1e-4"}},
                 {"name": "lora_big", "set": {"peft.method": "lora", "peft.options.item_rank": 16}}],
        "output": str(tmp_path / "out")})
    s = Suite(p)
    names = [r.name for r in s.main]
    assert len(names) == 2 * 2 * 1 * 2 + 2 == len(set(names))
    # the last dotted part, or more parts where two keys end alike; in the grid's order
    assert names[0] == "method=houlsby,options.dropout=0,model.dropout=0.2,towers=item"
    assert names[7] == "method=pfeiffer,options.dropout=0.1,model.dropout=0.2,towers=both"
    assert names[-2:] == ["method=lora,lr_peft=1e-4", "lora_big"]
    assert all(r.folder == tmp_path / "out" / r.name for r in s.main)
    run = s.main[7]
    cfg = s.config_of(run)
    assert (cfg.peft.method, cfg.peft.options["dropout"], cfg.model.dropout,
            cfg.peft.options["towers"]) == ("pfeiffer", 0.1, 0.2, ["item", "user"])
    assert s.config_of(s.main[-2]).train.lr_peft == 1e-4
    # names: short names of one's own; a run name is safe for a folder
    p2 = write(tmp_path, {"set": quick(domains[1]), "names": {"peft.method": "m"},
                          "grid": {"peft.method": ["houlsby"],
                                   "peft.options.towers": [["item", "user"], "user"],
                                   "train.init_from": ["a/b:c"]}}, "names")
    assert [r.name for r in Suite(p2).main] == ["m=houlsby,towers=item+user,init_from=a_b_c",
                                                "m=houlsby,towers=user,init_from=a_b_c"]
    assert short_names(["model.dropout", "peft.options.dropout", "train.seed"]) == {
        "model.dropout": "model.dropout", "peft.options.dropout": "options.dropout",
        "train.seed": "seed"}


def test_names_must_be_unique(tmp_path, domains):
    p = write(tmp_path, {"set": quick(domains[1]),
                         "runs": [{"name": "a", "set": {"train.seed": 1}},
                                  {"name": "a", "set": {"train.seed": 2}}]})
    with pytest.raises(ConfigError, match="share the name.*'a'"):
        Suite(p)
    p = write(tmp_path, {"grid": {"peft.method": ["houlsby", "houlsby"]}}, "dupe")
    with pytest.raises(ConfigError, match="same name twice"):
        Suite(p)
    p = write(tmp_path, {"names": {"peft.method": "x", "train.seed": "x"},
                         "grid": {"peft.method": ["houlsby"], "train.seed": [1]}}, "clash")
    with pytest.raises(ConfigError, match="both be called 'x'"):
        Suite(p)


def test_only_selects_runs_and_what_they_need(tmp_path, domains):
    p = write(tmp_path, {
        "set": quick(domains[1], **{"train.init_from": "source:src"}),
        "sources": [{"name": "src", "set": quick(domains[0])}],
        "grid": {"peft.method": ["houlsby", "lora", "full"], "train.seed": [1, 2]},
        "select": {"key": "train.lr_peft", "values": [1e-4, 1e-3], "per": ["peft.method"],
                   "exclude": ["method=full"]},
        "output": str(tmp_path / "out")})
    s = Suite(p)
    assert len(s.plan()) == 1 + 2 * 2 + 6
    plan = [r.name for r in s.plan(["method=lora,seed=2"])]
    assert plan == ["sources/src", "select/method=lora,lr_peft=0.0001",
                    "select/method=lora,lr_peft=0.001", "method=lora,seed=2"]
    assert [r.name for r in s.plan(["*seed=1"]) if r.phase == "main"] == [
        "method=houlsby,seed=1", "method=lora,seed=1", "method=full,seed=1"]
    assert [r.name for r in s.plan(["method=full"])] == [
        "sources/src", "method=full,seed=1", "method=full,seed=2"]  # full selects nothing
    assert matches("method=houlsby,towers=item,seed=1", "seed=1,method=houlsby")
    assert not matches("method=houlsby,seed=10", "seed=1")
    # a term may be a glob of its own, wherever it stands in the name
    assert matches("users=0.1,method=frozen_items,seed=42", "method=frozen*")
    assert matches("users=0.1,method=frozen,seed=42", "seed=42,method=frozen*")
    assert not matches("users=0.1,method=iisan,seed=42", "method=frozen*")
    with pytest.raises(ConfigError, match="matches no run"):
        s.plan(["method=prompt"])


# ------------------------------------------------------------------------------- skip, resume

def test_skip_finished_and_resume_interrupted(tmp_path, domains, monkeypatch):
    out = tmp_path / "out"
    p = write(tmp_path, {"set": quick(domains[1], **{"train.epochs": 2}),
                         "grid": {"train.seed": [1, 2]}, "output": str(out)})
    evaluate = trainer.Trainer._evaluate

    def killed(self, record):  # seed=2 dies in its second evaluation, after epoch 0's checkpoint
        if self.output.name == "seed=2" and self.state.epoch == 2:
            raise KeyboardInterrupt
        return evaluate(self, record)

    monkeypatch.setattr(trainer.Trainer, "_evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_suite(p, echo=lambda _: None)
    assert statuses(out) == {"seed=1": "trained", "seed=2": "running"}
    assert not (out / "seed=2" / "metrics.json").exists()
    assert (out / "seed=2" / "checkpoints" / "latest").is_dir()
    assert not (out / ".lock").exists()  # the suite's folder lock is released

    monkeypatch.setattr(trainer.Trainer, "_evaluate", evaluate)
    lines = []
    done = run_suite(p, echo=lines.append)
    assert statuses(out) == {"seed=1": "skipped", "seed=2": "resumed"}
    assert any(line.startswith("[1/2] seed=1: finished before, skipped") for line in lines)
    assert any(line.startswith("[2/2] seed=2: resumed") for line in lines)
    epochs = [json.loads(x)["epoch"] for x in (out / "seed=2" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    row = next(r for r in done["runs"] if r["name"] == "seed=2")
    assert row["metrics"]["valid"]["NDCG@10"] == json.loads(
        (out / "seed=2" / "metrics.json").read_text())["valid"]["NDCG@10"]
    assert "method" in lines[-1] and "seed=2" in lines[-1]  # the final table


def test_a_finished_run_made_with_another_config_is_refused_not_skipped(tmp_path, domains, monkeypatch):
    """A finished run was skipped by name alone: after an edit of the suite (a learning rate),
    its old numbers went on being reported as the new config's. Now its config.yaml must still
    match what the suite gives it, up to keys that change how a run goes, not what it computes."""
    out = tmp_path / "out"
    body = {"set": quick(domains[1]), "grid": {"train.seed": [1]}, "output": str(out)}
    run_suite(write(tmp_path, body), echo=lambda _: None)
    assert statuses(out) == {"seed=1": "trained"}
    body["set"]["train.progress"] = True  # not what it computes: still that run
    run_suite(write(tmp_path, body), echo=lambda _: None)
    assert statuses(out) == {"seed=1": "skipped"}
    body["set"]["train.lr"] = 0.002
    for dry in (True, False):
        with pytest.raises(ConfigError, match=r"run seed=1: .*seed=1 holds a run made with another "
                                              r"config than the suite gives it now \(train.lr "
                                              r"0.001 -> 0.002\): delete the folder"):
            run_suite(write(tmp_path, body), dry_run=dry, echo=lambda _: None)


def test_a_method_option_in_short_form_is_no_drift(tmp_path, domains):
    """config.yaml records every PEFT option as the build resolved it (``positions: ffn`` as
    ``['ffn']``); the drift check compared that with the suite's unresolved value and refused
    pfeiffer's finished selection runs as made with another config. The suite's options are now
    resolved the same way before they are compared, so the runs are skipped (and linked)."""
    out = tmp_path / "out"
    body = {"set": quick(domains[1], **{"peft.options.towers": "user",
                                        "peft.options.positions": "ffn"}),
            "grid": {"peft.method": ["pfeiffer"], "train.seed": [1]},
            "select": {"key": "train.lr_peft", "values": [1e-4, 5e-4], "per": ["peft.method"]},
            "output": str(out)}
    run_suite(write(tmp_path, body), echo=lambda _: None)
    saved = yaml.safe_load((out / "select" / "method=pfeiffer,lr_peft=0.0001" / "config.yaml")
                           .read_text(encoding="utf-8"))
    assert saved["peft"]["options"]["positions"] == ["ffn"]  # the resolved form
    lines = []
    run_suite(write(tmp_path, body), echo=lines.append)
    assert set(statuses(out).values()) <= {"skipped", "linked"}, statuses(out)


def test_a_run_of_a_selection_made_with_another_choice_is_refused(tmp_path, domains, monkeypatch):
    """check() accepts a main run of a group made with any candidate value; the runner then
    compares it with the value the selection chose."""
    out = tmp_path / "out"
    body = {"set": quick(domains[1]), "grid": {"peft.method": ["houlsby"], "train.seed": [1]},
            "select": {"key": "train.lr_peft", "values": [1e-4, 5e-4], "per": ["peft.method"]},
            "output": str(out)}
    table = {("houlsby", 1e-4): 0.1, ("houlsby", 5e-4): 0.3}
    plain = fake_train(table)

    def train(cfg, output, resume=False):  # a fake that keeps its config, as the trainer does
        Path(output).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(output) / "config.yaml")
        return plain(cfg, output, resume)
    monkeypatch.setattr(suite_mod, "train", train)
    run_suite(write(tmp_path, body), echo=lambda _: None)
    assert statuses(out)["method=houlsby,seed=1"] == "trained"
    # the selection turns the other way: the main run, made at 5e-4, is now a 1e-4 run
    (out / "select" / "method=houlsby,lr_peft=0.0001" / "metrics.json").write_text(json.dumps(
        {"best_epoch": 0, "valid": {"NDCG@10": 0.9}, "test": {"NDCG@10": 0.9}}), encoding="utf-8")
    with pytest.raises(Adapter4RecError, match="1 of 3 runs did not finish"):
        run_suite(write(tmp_path, body), echo=lambda _: None)
    row = {r["name"]: r for r in report(out)["runs"]}["method=houlsby,seed=1"]
    assert row["status"] == "failed"
    assert "made with another config than the suite gives it now (train.lr_peft 0.0005 -> " \
           "0.0001)" in row["error"]


def test_a_failed_run_blocks_what_needs_it_and_the_rest_goes_on(tmp_path, domains, monkeypatch):
    out = tmp_path / "out"
    p = write(tmp_path, {"set": quick(domains[1]),
                         "sources": [{"name": "a", "set": quick(domains[0])},
                                     {"name": "b", "set": quick(domains[0])}],
                         "grid": {"from": {"a": {"train.init_from": "source:a"},
                                           "b": {"train.init_from": "source:b"}}},
                         "output": str(out)})
    monkeypatch.setattr(suite_mod, "train", fake_train(fail={"a"}))
    with pytest.raises(Adapter4RecError, match="2 of 4 runs did not finish"):
        run_suite(p, echo=lambda _: None)
    st = statuses(out)
    assert st == {"sources/a": "failed", "sources/b": "trained", "from=a": "blocked",
                  "from=b": "trained"}
    rows = {r["name"]: r for r in report(out)["runs"]}
    assert rows["sources/a"]["error"] == "boom in a"
    assert "needs sources/a" in rows["from=a"]["error"]
    monkeypatch.setattr(suite_mod, "train", fake_train())
    run_suite(p, echo=lambda _: None)  # the failed and blocked runs go again, the rest is skipped
    assert statuses(out) == {"sources/a": "trained", "sources/b": "skipped", "from=a": "trained",
                             "from=b": "skipped"}


def test_a_run_left_out_by_only_keeps_its_record_in_suite_json(tmp_path, domains, monkeypatch):
    """A study goes one `--only` at a time: each run must not rewrite the others' records with its
    own view ("skipped", no seconds; a failure's error gone from the report's unfinished list)."""
    out = tmp_path / "out"
    p = write(tmp_path, {"set": quick(domains[1]), "grid": {"train.seed": [1, 2, 3]},
                         "output": str(out)})
    monkeypatch.setattr(suite_mod, "train", fake_train(fail={"seed=2"}))
    run_suite(p, only=["seed=1"], echo=lambda _: None)
    first = {r["name"]: r for r in report(out)["runs"]}["seed=1"]
    assert first["status"] == "trained" and first["seconds"] is not None and first["overrides"]
    with pytest.raises(Adapter4RecError):
        run_suite(p, only=["seed=2"], echo=lambda _: None)
    run_suite(p, only=["seed=3"], echo=lambda _: None)
    rows = {r["name"]: r for r in report(out)["runs"]}
    assert rows["seed=1"] == first  # as its own run left it
    assert rows["seed=2"]["status"] == "failed" and rows["seed=2"]["error"] == "boom in seed=2"
    assert rows["seed=3"]["status"] == "trained"
    (out / "seed=1" / "metrics.json").unlink()  # the folder wins over what suite.json said
    run_suite(p, only=["seed=3"], echo=lambda _: None)
    assert statuses(out) == {"seed=1": "not run", "seed=2": "failed", "seed=3": "skipped"}


def test_one_writer_per_folder(tmp_path, domains, monkeypatch):
    out = tmp_path / "out"
    p = write(tmp_path, {"set": quick(domains[1]), "grid": {"train.seed": [1, 2]},
                         "output": str(out)})
    (out / "seed=1").mkdir(parents=True)
    held = FolderLock(out / "seed=1").acquire()  # another process writes this run
    try:
        with pytest.raises(Adapter4RecError, match="1 of 2 runs"):
            run_suite(p, echo=lambda _: None)
        rows = {r["name"]: r for r in report(out)["runs"]}
        assert rows["seed=1"]["status"] == "failed" and "in use" in rows["seed=1"]["error"]
        assert rows["seed=2"]["status"] == "trained"
    finally:
        held.release()
    held = FolderLock(out).acquire()  # another `suite run` of the same output
    try:
        with pytest.raises(StorageError, match="in use"):
            run_suite(p, echo=lambda _: None)
    finally:
        held.release()


# -------------------------------------------------------------------------------- selection

def test_selection_picks_best_valid_ndcg_per_method(tmp_path, domains, monkeypatch):
    out = tmp_path / "out"
    p = write(tmp_path, {
        "set": quick(domains[1]),
        "grid": {"peft.method": ["houlsby", "lora", "full"], "train.seed": [1, 2]},
        "select": {"key": "train.lr_peft", "values": [1e-4, 5e-4, 1e-3], "per": ["peft.method"],
                   "set": {"data.user_fraction": 0.5}, "exclude": ["method=full"]},
        "output": str(out)})
    table = {("houlsby", 1e-4): 0.20, ("houlsby", 5e-4): 0.30, ("houlsby", 1e-3): 0.25,
             ("lora", 1e-4): 0.40, ("lora", 5e-4): 0.10, ("lora", 1e-3): 0.40}  # a tie: first
    calls = []
    monkeypatch.setattr(suite_mod, "train", fake_train(table, calls))
    lines = []
    done = run_suite(p, echo=lines.append)
    assert done["selection"]["method=houlsby"]["choice"] == "0.0005"
    assert done["selection"]["method=lora"]["choice"] == "0.0001"
    assert "method=full" not in done["selection"]
    assert done["selection"]["method=houlsby"]["values"] == {"0.0001": 0.2, "0.0005": 0.3,
                                                             "0.001": 0.25}
    # the selection runs (on half the users) all finish before the first run that depends on them
    phases = ["select" if out / "select" in o.parents else "main" for o, _, _ in calls]
    assert phases == ["select"] * 6 + ["main"] * 6
    assert all(cfg.data.user_fraction == 0.5 for o, cfg, _ in calls[:6])
    main = {o.name: cfg for o, cfg, _ in calls[6:]}
    assert all(cfg.data.user_fraction == 1.0 for cfg in main.values())
    assert main["method=houlsby,seed=1"].train.lr_peft == main["method=houlsby,seed=2"].train.lr_peft == 5e-4
    assert main["method=lora,seed=2"].train.lr_peft == 1e-4
    assert main["method=full,seed=1"].train.lr_peft == 1e-3  # not selected: the config's value
    assert "select method=houlsby: lr_peft=0.0005 (valid.NDCG@10 0.3000" in "\n".join(lines)
    rows = {r["name"]: r for r in done["runs"]}
    assert rows["method=lora,seed=1"]["selected"] == "0.0001"
    assert "train.lr_peft=0.0001" in rows["method=lora,seed=1"]["overrides"]
    # again: every run is finished, the same values are chosen from the selection runs' metrics
    calls.clear()
    again = run_suite(p, echo=lambda _: None)
    assert calls == [] and again["selection"] == done["selection"]


def test_a_listed_run_takes_a_selection_only_by_naming_its_group(tmp_path, domains, monkeypatch):
    """The study's BCE runs were entries of runs: beside a grid with a learning-rate selection:
    they silently trained at their config's learning rate, not the one selected for their method.
    An entry of runs: takes a group's selected value when it names the group (runs[].group)."""
    out = tmp_path / "out"
    body = {"set": quick(domains[1]),
            "grid": {"peft.method": ["houlsby", "lora"]},
            "runs": [{"name": "houlsby_bce", "set": {"peft.method": "houlsby", "train.objective": "bce"},
                      "group": "method=houlsby"},
                     {"name": "lora_bce", "set": {"peft.method": "lora", "train.objective": "bce"}}],
            "select": {"key": "train.lr_peft", "values": [1e-4, 5e-4], "per": ["peft.method"]},
            "output": str(out)}
    table = {("houlsby", 1e-4): 0.1, ("houlsby", 5e-4): 0.3, ("lora", 1e-4): 0.3, ("lora", 5e-4): 0.1}
    calls = []
    monkeypatch.setattr(suite_mod, "train", fake_train(table, calls))
    # --only the listed run: its group's selection runs come with it, and run first
    done = run_suite(write(tmp_path, body), only=["houlsby_bce"], echo=lambda _: None)
    trained = {o.name: cfg for o, cfg, _ in calls}
    assert list(trained) == ["method=houlsby,lr_peft=0.0001", "method=houlsby,lr_peft=0.0005",
                             "houlsby_bce"]
    assert trained["houlsby_bce"].train.lr_peft == 5e-4 and trained["houlsby_bce"].train.objective == "bce"
    assert {r["name"]: r for r in done["runs"]}["houlsby_bce"]["selected"] == "0.0005"
    calls.clear()
    run_suite(write(tmp_path, body), echo=lambda _: None)
    trained = {o.name: cfg for o, cfg, _ in calls}
    assert trained["lora_bce"].train.lr_peft == 1e-3  # names no group: the config's value
    # a group that does not exist, or a group without a selection step: a one-line error
    body["runs"][1]["group"] = "method=lroa"
    with pytest.raises(ConfigError, match=r"run lora_bce: group 'method=lroa' is not a selection "
                                          r"group \(groups: method=houlsby, method=lora\)"):
        Suite(write(tmp_path, body, "bad"))
    del body["select"]
    with pytest.raises(ConfigError, match="run houlsby_bce: group 'method=houlsby', but the suite "
                                          "has no 'select' section"):
        Suite(write(tmp_path, body, "bad"))


def test_selection_with_named_values_and_per_named_axis(tmp_path, domains, monkeypatch):
    out = tmp_path / "out"
    p = write(tmp_path, {
        "set": quick(domains[1]),
        "grid": {"method": {"adapter": {"peft.method": "houlsby"}, "low_rank": {"peft.method": "lora"}}},
        "select": {"key": "lr", "per": "method",
                   "values": {"small": {"train.lr_peft": 1e-4, "train.lr": 1e-4},
                              "large": {"train.lr_peft": 1e-3, "train.lr": 1e-3}}},
        "output": str(out)})
    table = {("houlsby", 1e-4): 0.1, ("houlsby", 1e-3): 0.2, ("lora", 1e-4): 0.3, ("lora", 1e-3): 0.2}
    calls = []
    monkeypatch.setattr(suite_mod, "train", fake_train(table, calls))
    done = run_suite(p, echo=lambda _: None)
    assert {g: v["choice"] for g, v in done["selection"].items()} == {
        "method=adapter": "large", "method=low_rank": "small"}
    # each main run has its winner's very config: it is that selection run (linked, not retrained)
    assert not [o for o, _, _ in calls if o.parent == out]
    assert statuses(out)["method=adapter"] == statuses(out)["method=low_rank"] == "reused"
    assert (out / "method=adapter").resolve() == (out / "select" / "method=adapter,lr=large").resolve()
    assert (out / "method=low_rank").resolve() == (out / "select" / "method=low_rank,lr=small").resolve()


def test_main_run_identical_to_the_winning_selection_run_reuses_it(tmp_path, domains, monkeypatch):
    """Selecting at 10% of the users and then running the winner at 10% again would train the
    same config twice: the main run links the selection run's folder instead."""
    out = tmp_path / "out"
    p = write(tmp_path, {
        "set": quick(domains[1]),
        "grid": {"peft.method": ["houlsby"], "data.user_fraction": [0.5, 1.0]},
        "select": {"key": "train.lr_peft", "values": [1e-4, 1e-3], "per": ["peft.method"],
                   "set": {"data.user_fraction": 0.5}},
        "output": str(out)})
    calls = []
    monkeypatch.setattr(suite_mod, "train", fake_train({("houlsby", 1e-4): 0.1, ("houlsby", 1e-3): 0.2}, calls))
    lines = []
    done = run_suite(p, echo=lines.append)
    trained = [o.name for o, _, _ in calls]
    assert trained == ["method=houlsby,lr_peft=0.0001", "method=houlsby,lr_peft=0.001",
                       "method=houlsby,user_fraction=1"], trained
    rows = {r["name"]: r for r in done["runs"]}
    twin = out / "method=houlsby,user_fraction=0.5"
    assert rows[twin.name]["status"] == "reused" and twin.is_symlink()
    assert twin.resolve() == (out / "select" / "method=houlsby,lr_peft=0.001").resolve()
    assert json.loads((twin / "metrics.json").read_text())["valid"]["NDCG@10"] == 0.2
    assert any("its run, linked" in line for line in lines)
    calls.clear()
    assert statuses(out)[twin.name] == "reused"
    again = run_suite(p, echo=lambda _: None)  # finished: skipped, nothing trains
    assert calls == [] and {r["name"]: r["status"] for r in again["runs"]}[twin.name] == "skipped"


# ------------------------------------------------------------------------------ validation

def test_dry_run_errors_name_the_run_and_the_key(tmp_path, domains, capsys):
    out = tmp_path / "out"
    body = {"set": quick(domains[1]), "output": str(out),
            "grid": {"peft.method": ["houlsby", "nosuch"]},
            "runs": [{"name": "typo", "set": {"peft.method": "houlsby", "train.nosuch": 1}},
                     {"name": "bad_option", "set": {"peft.method": "houlsby",
                                                    "peft.options.item_bottleneck": 0}},
                     {"name": "foreign_option", "set": {"peft.method": "houlsby",
                                                        "peft.options.item_rank": 4}},
                     {"name": "bad_value", "set": {"train.objective": "mse"}}]}
    p = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        run_suite(p, dry_run=True, echo=lambda _: None)
    msg = str(e.value)
    assert "5 run(s) do not check out" in msg
    assert "run method=nosuch: unknown peft.method 'nosuch'" in msg
    assert "run typo: unknown config key 'train.nosuch'" in msg
    assert "run bad_option: peft.options.item_bottleneck must be an integer >= 1; got 0" in msg
    assert "run foreign_option: peft.options.item_rank: unknown option for peft method 'houlsby'" in msg
    assert "run bad_value: config key 'train.objective' must be one of" in msg
    assert "method=houlsby" not in msg.replace("peft.method=houlsby", "")  # the good run passes
    assert not out.exists()  # nothing written, nothing trained
    # the same without --dry-run: nothing starts; the command says so in one line per run
    assert main(["suite", "run", str(p)]) == 2
    err = capsys.readouterr().err
    assert "run typo: unknown config key 'train.nosuch'" in err and not out.exists()


def test_suite_format_errors(tmp_path, domains):
    def fails(body, pattern):
        with pytest.raises(ConfigError, match=pattern):
            Suite(write(tmp_path, body, "bad"))

    fails({"gird": {}}, r"unknown key\(s\) 'gird'")
    fails({"grid": {"train.seed": []}}, "non-empty list")
    fails({"grid": {"train.seed": [1]}, "select": {"key": "train.seed", "values": [1]}},
          "also an axis of the grid")
    fails({"grid": {"train.seed": [1]}, "select": {"key": "train.lr", "values": [1], "per": ["method"]}},
          "select.per must list axes of the grid")
    fails({"config": "nowhere.yaml"}, "is not a file")
    fails({"grid": {"m": {"a": {"config": "nowhere.yaml"}}}}, r"grid.m.a.config: nowhere.yaml")
    fails({"runs": [{"name": "../up"}]}, "not a usable name")
    fails({"runs": [{"name": "select"}]}, "may not be called 'select'")
    with pytest.raises(ConfigError, match="no 'smoke' section"):
        Suite(write(tmp_path, {}, "plain"), smoke=True)
    s = Suite(write(tmp_path, {"set": quick(domains[1], **{"train.init_from": "source:nope"})}, "ref"))
    with pytest.raises(ConfigError, match="run base: train.init_from: no source named 'nope'"):
        s.check(s.plan())


@pytest.mark.parametrize("smoke", [False, True], ids=["plain", "smoke"])
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_suites_pass_dry_run(path, smoke, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["suite", "run", str(path), "--dry-run", "--output", str(out)] + (["--smoke"] if smoke else [])
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "every config checks out" in printed
    assert not out.exists()
    s = Suite(path, smoke=smoke, output=out)
    plan = s.plan()
    assert [r for r in plan if r.phase == "main"] and s.smoke == smoke
    for run in plan:  # a main run that starts from a source names one of the suite's own
        cfg = s.config_of(run, s.select.axis.choices[0][1] if run.group else None)
        if cfg.train.init_from and run.phase != "source":
            assert s.needs(run), run.name
    if smoke:  # self-contained: everything a smoke run reads or writes is under its output
        for run in plan:
            assert out in run.folder.parents
            cfg = s.config_of(run, s.select.axis.choices[0][1] if run.group else None)
            assert cfg.train.epochs == 1 and out in Path(cfg.data.path).parents
            assert cfg.model.item_encoder == "id" or out in Path(cfg.model.pretrained).parents


def test_shipped_suites_by_name_and_listed(tmp_path, monkeypatch, capsys):
    from adapter4rec.cli.suite import SHIPPED, suite_file

    assert (ROOT / "suites").resolve() == SHIPPED  # the repository's suites/ is the package's
    monkeypatch.chdir(tmp_path)
    assert suite_file("rq2_scientific") == SHIPPED / "rq2_scientific.yaml"
    assert suite_file("rq2_scientific.yaml") == SHIPPED / "rq2_scientific.yaml"
    (tmp_path / "rq2_scientific.yaml").write_text("{}")  # a file here wins over the shipped one
    assert suite_file("rq2_scientific.yaml") == Path("rq2_scientific.yaml")
    assert suite_file("nope/x.yaml") == Path("nope/x.yaml")  # a missing path stays an error
    assert main(["suite", "list"]) == 0
    out = capsys.readouterr().out
    assert all(p.stem in out for p in SHIPPED.glob("*.yaml"))


def test_shipped_suites_cover_the_study():
    names = {p.stem for p in SHIPPED}
    assert names >= {f"rq{i}_{layout}" for i in (1, 2, 3, 4)
                     for layout in ("scientific", "adressa", "amazon")}
    from adapter4rec import peft

    for layout in ("scientific", "adressa", "amazon"):  # RQ2: every method, and from scratch
        s = Suite(ROOT / "suites" / f"rq2_{layout}.yaml")
        methods = {s.config_of(r, s.select.axis.choices[0][1] if r.group else None).peft.method
                   for r in s.main}
        assert methods == set(peft.available()), layout
        assert any(not s.config_of(r).train.init_from for r in s.main if not r.group), layout


# ------------------------------------------------------------------------------- end to end

def test_smoke_suite_end_to_end(tmp_path, capsys):
    out = tmp_path / "rq1"
    assert main(["suite", "run", str(ROOT / "suites" / "rq1_scientific.yaml"), "--smoke",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    st = statuses(out)
    assert set(st.values()) == {"trained"} and len(st) == 6
    assert (out / "synthetic" / "ready.json").is_file() and (out / "synthetic" / "tiny-bert").is_dir()
    cfg = yaml.safe_load((out / "user_encoder=cpc,method=adapter" / "config.yaml").read_text())
    assert cfg["train"]["init_from"] == str(out / "sources" / "instrument_cpc")
    assert cfg["model"]["user_encoder"] == "cpc" and cfg["peft"]["method"] == "houlsby"
    assert cfg["train"]["lr_peft"] == 1.5e-4  # scientific_houlsby.yaml's
    assert "[6/6] user_encoder=cpc,method=adapter: trained" in printed
    assert "user_encoder=sasrec,method=full" in printed.splitlines()[-4]  # the final table
    assert main(["suite", "run", str(ROOT / "suites" / "rq1_scientific.yaml"), "--smoke",
                 "--output", str(out), "--only", "method=full"]) == 0
    st = statuses(out)  # the whole suite is in suite.json; the runs asked for were skipped
    assert st["user_encoder=cpc,method=full"] == "skipped"
    assert st["user_encoder=cpc,method=adapter"] == "trained"  # outside --only: as it was left


def test_jobs_run_in_worker_processes(tmp_path, domains):
    out = tmp_path / "out"
    p = write(tmp_path, {"set": quick(domains[1], **{"train.init_from": "source:src"}),
                         "sources": [{"name": "src", "set": quick(domains[0])}],
                         "grid": {"train.seed": [1, 2]}, "output": str(out)})
    done = run_suite(p, jobs=2, echo=lambda _: None)
    assert {r["name"]: r["status"] for r in done["runs"]} == {
        "sources/src": "trained", "seed=1": "trained", "seed=2": "trained"}
    assert (out / ".suite" / "logs" / "sources" / "src.log").is_file()
    for seed in (1, 2):
        assert (out / f"seed={seed}" / "metrics.json").is_file()
        assert (out / ".suite" / "logs" / f"seed={seed}.log").is_file()
        cfg = yaml.safe_load((out / f"seed={seed}" / "config.yaml").read_text())
        assert cfg["train"]["seed"] == seed and cfg["train"]["init_from"] == str(out / "sources" / "src")
    done = run_suite(p, jobs=2, echo=lambda _: None)
    assert {r["status"] for r in done["runs"]} == {"skipped"}


def test_devices_one_gpu_per_worker(monkeypatch):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(suite_mod.os, "cpu_count", lambda: 16)
    env = suite_mod._devices(2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == ["0", "1"]
    assert all(e["OMP_NUM_THREADS"] == "8" for e in env)
    with pytest.raises(ConfigError, match="one GPU per worker, but 2 are visible"):
        suite_mod._devices(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in suite_mod._devices(2)] == ["3", "5"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    env = suite_mod._devices(4)  # CPU: the threads shared out
    assert all("CUDA_VISIBLE_DEVICES" not in e and e["OMP_NUM_THREADS"] == "4" for e in env)


def test_report_lists_the_planned_runs_not_finished_and_why(tmp_path, domains, monkeypatch, capsys):
    out = tmp_path / "out"
    p = write(tmp_path, {"set": quick(domains[1]),
                         "sources": [{"name": "a", "set": quick(domains[0])}],
                         "grid": {"train.seed": [1, 2, 3, 4]}, "output": str(out)})
    # nothing ran: every planned run is listed, and the report says nothing finished
    assert main(["report", str(out), "--suite", str(p)]) == 0
    text = capsys.readouterr().out
    assert "No run has finished yet." in text
    assert text.count(" | not started |  |") == 5  # the 4 main runs and the source
    monkeypatch.setattr(suite_mod, "train", fake_train(fail={"seed=2"}))
    with pytest.raises(Adapter4RecError):
        run_suite(p, only=["seed=1", "seed=2"], echo=lambda _: None)
    # seed=3 was interrupted after two epochs; seed=4 never started
    (out / "seed=3").mkdir()
    (out / "seed=3" / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "valid": {"NDCG@10": v}}) + "\n"
                for e, v in ((0, 0.05), (1, 0.07))) + '{"epoch": 2, "val', encoding="utf-8")
    (out / "seed=3" / "resources.json").write_text(json.dumps(
        {"epochs": [{"epoch": 0, "epoch_seconds": 3000, "eval_seconds": 600},
                    {"epoch": 1, "epoch_seconds": 1800, "eval_seconds": None}]}), encoding="utf-8")
    (out / "seed=1" / "resources.json").write_text(json.dumps(
        {"epochs": [{"epoch": 0, "epoch_seconds": 1700, "eval_seconds": 100}]}), encoding="utf-8")
    md = tmp_path / "r.md"
    assert main(["report", str(out), "--suite", str(p), "--markdown", str(md), "--csv",
                 str(tmp_path / "r.csv"), "--why", "seed=4:CPU budget", "--why", "seed=*:later"]) == 0
    rows = {r["run"]: r for r in pd.read_csv(tmp_path / "r.unfinished.csv").to_dict("records")}
    assert set(rows) == {"sources/a", "seed=2", "seed=3", "seed=4"}  # seed=1 finished (the
    #                                                   runs do not start from the source: not run)
    assert rows["seed=2"]["state"] == "failed: boom in seed=2"
    assert rows["seed=3"]["state"] == ("in progress: 2 epoch(s) finished, best valid NDCG@10 "
                                       "0.0700 (epoch 1)")
    assert rows["seed=4"]["state"] == "not started" and rows["seed=4"]["why"] == "CPU budget"
    assert rows["seed=3"]["why"] == "later"  # the first matching --why counts
    (summary,) = pd.read_csv(tmp_path / "r.suites.csv").to_dict("records")
    assert summary == {"suite": "s", "planned": 5, "finished": 1, "in progress": 1, "failed": 1,
                       "not started": 2, "hours finished": 0.5, "hours unfinished": 1.5}
    text = md.read_text(encoding="utf-8")
    assert "| s | 5 | 1 | 1 | 1 | 2 | 0.50 | 1.50 |" in text
    assert "## Planned runs not finished" in text and "| seed=4 | main | not started | CPU budget |" in text
    assert main(["report", str(out), "--suite", str(p), "--why", "no reason"]) == 2
    assert "PATTERN:REASON" in capsys.readouterr().err
