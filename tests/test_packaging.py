"""The wheel holds what a run needs: installed into a fresh venv (no git clone, no source tree), it
lists and copies the shipped configs and trains a run."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_and_runs_without_the_source_tree(tmp_path):
    wheels = tmp_path / "wheels"
    # built as pip builds it for a user (an isolated build environment with pyproject's setuptools)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(wheels)], check=True, timeout=600)
    wheel = next(wheels.glob("adapter4rec-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=600)
    # the dependencies (torch, transformers, ...) from this environment, after the venv's own
    # site-packages: the wheel's adapter4rec comes first, this checkout's never
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"

    def run(*args):
        p = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        return p.stdout

    where = run(str(py), "-c", "import adapter4rec; print(adapter4rec.__file__)")
    assert str(ROOT) not in where and str(venv) in where
    assert "adapt/scientific_houlsby.yaml" in run("adapter4rec", "configs", "list")
    run("adapter4rec", "configs", "copy", "pretrain/instrument_minilm.yaml")
    # the study suites travel too, runnable by name (their configs resolve inside the package)
    assert "rq2_scientific" in run("adapter4rec", "suite", "list")
    assert "every config checks out" in run("adapter4rec", "suite", "run", "rq2_scientific",
                                            "--smoke", "--dry-run")
    run(str(py), "-c", "from adapter4rec.config import load_config; "
        "c = load_config('instrument_minilm.yaml'); assert c.model.item_encoder == 'text'")
    run("adapter4rec", "synthetic", "data")
    run("adapter4rec", "train", "--output", "run", "--set", "data.path=data/target",
        "--set", "model.item_encoder=id", "--set", "train.epochs=1", "--set", "train.progress=false",
        "--set", "model.embedding_dim=16")
    assert (work / "run" / "metrics.json").is_file()


def test_git_keeps_the_studys_run_records_and_leaves_out_checkpoints_and_other_runs():
    """A session's work tree is laid anew: what the study has run must be in git, and its
    checkpoints must not (a full fine-tuning checkpoint with its optimizer is 270 MB), except the
    source's best weights that every target run starts from."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        import pytest
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index", "-q", path]).returncode == 0

    run = "runs/study/study_scientific_cheap/users=0.1,method=frozen,seed=42"
    for kept in (f"{run}/metrics.json", f"{run}/ranks.npz", f"{run}/config.yaml", f"{run}/train.log",
                 "runs/study/study_scientific_cheap/suite.json",
                 "runs/study/pretrain_instrument/checkpoints/best/model.safetensors"):
        assert not ignored(kept), kept
    for left in (f"{run}/checkpoints/best/model.safetensors", f"{run}/checkpoints/latest/trainer_state.pt",
                 "runs/study/pretrain_instrument/checkpoints/latest/model.safetensors",
                 f"{run}/.lock", "runs/study/study.log", "runs/demo/metrics.json"):
        assert ignored(left), left
