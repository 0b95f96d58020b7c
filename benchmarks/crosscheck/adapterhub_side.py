"""The AdapterHub side of the cross-check (runs in its own venv: adapters 1.3.0, transformers 4.57).

Called by ``benchmarks/crosscheck/run.sh`` from ``benchmarks/crosscheck_adapterhub.py``, which
writes ``spec.json`` (the model folder, the checks and their AdapterHub configs, the weight
scales) and ``tokens.safetensors`` (the tokenised titles) into OUT_DIR. For each check this
script loads the backbone as a plain transformers 4.57 ``BertModel`` (SDPA, fp32),
``adapters.init(model)``, adds the AdapterHub config and ``train_adapter``s it, and writes into
OUT_DIR/<check>/, for two variants:

- ``adapters``: what ``train_adapter`` makes trainable, set to seeded random non-zero values;
- ``layernorm``: that plus every LayerNorm of the backbone, unfrozen by hand (AdapterHub has no
  switch for it) and perturbed;

``weights_<variant>.safetensors`` (the trainable parameters under AdapterHub's names),
``hidden_<variant>.safetensors`` (``last_hidden_state`` [batch, tokens, hidden], fp32, eval
mode) and ``info.json`` (trainable counts, parameter names and shapes, the config as AdapterHub
resolved it). Check ``plain`` (no adapter) writes ``hidden.safetensors`` of the backbone alone.

    python adapterhub_side.py OUT_DIR
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def config_for(method: dict):
    import adapters

    kind, kwargs = method["adapterhub"], dict(method["kwargs"])
    cls = {"double_seq_bn": adapters.DoubleSeqBnConfig, "seq_bn": adapters.SeqBnConfig,
           "par_bn": adapters.ParBnConfig, "compacter": adapters.CompacterConfig,
           "compacter++": adapters.CompacterPlusPlusConfig,
           "lora": adapters.LoRAConfig, "prompt_tuning": adapters.PromptTuningConfig}[kind]
    return cls(**kwargs)


def load_model(folder: str, attn: str):
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused pooler of the checkpoint, on purpose

    model = BertModel.from_pretrained(folder, add_pooling_layer=False, dtype=torch.float32,
                                      attn_implementation=attn, local_files_only=True)
    return model.float().eval()


def count(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)


def randomise(params: dict[str, torch.Tensor], seed: int, scales: dict) -> None:
    """Seeded N(0, std) for every parameter, biases too, in sorted name order (std by the last
    name component, ``scales["default"]`` otherwise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            std = scales.get(name.rsplit(".", 1)[-1], scales["default"])
            p.copy_(torch.randn(p.shape, generator=g) * std)


def perturb_layernorms(params: dict[str, torch.Tensor], seed: int) -> None:
    """Tuned LayerNorms: weight 1 + N(0, 0.1), bias + N(0, 0.02) (seeded, sorted name order)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            p.add_(torch.randn(p.shape, generator=g) * (0.1 if name.endswith("weight") else 0.02))


def forward(model, tokens: dict, path: Path) -> None:
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=tokens["input_ids"],
                       attention_mask=tokens["attention_mask"]).last_hidden_state
    save_file({"last_hidden_state": hidden.contiguous()}, str(path))


def run_method(spec: dict, method: dict, tokens: dict, out: Path) -> dict:
    """Two variants: ``adapters`` (what ``train_adapter`` trains) and ``layernorm`` (that plus
    every LayerNorm of the backbone, unfrozen by hand: AdapterHub has no switch for it; their
    weights perturbed too, so the forward shows that the same LayerNorms are used the same way)."""
    import adapters

    model = load_model(spec["model"], spec["attn"])
    info = {"method": method["name"]}
    folder = out / method["name"]
    folder.mkdir(parents=True, exist_ok=True)
    if method["name"] == "plain":
        forward(model, tokens, folder / "hidden.safetensors")
    else:
        adapters.init(model)
        name = "xcheck"
        model.add_adapter(name, config=config_for(method))
        model.train_adapter(name)            # freezes the backbone; sets model.train()
        model.eval()
        assert str(model.active_adapters) == f"Stack[{name}]", model.active_adapters
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        info["trainable"] = count(model)
        randomise(trainable, spec["seed"], method.get("scales", spec["scales"]))
        info["parameters"] = {n: list(p.shape) for n, p in sorted(trainable.items())}
        info["resolved_config"] = model.adapters_config.get(name).to_dict()
        save_file({n: p.detach().contiguous() for n, p in trainable.items()},
                  str(folder / "weights_adapters.safetensors"))
        forward(model, tokens, folder / "hidden_adapters.safetensors")

        ln = {f"{mn}.{pn}": p for mn, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
              for pn, p in m.named_parameters()}
        for p in ln.values():
            p.requires_grad_(True)
        info["trainable_with_layernorm"] = count(model)
        info["layernorm_parameters"] = sorted(ln)
        perturb_layernorms(ln, spec["seed"])
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  str(folder / "weights_layernorm.safetensors"))
        forward(model, tokens, folder / "hidden_layernorm.safetensors")
    (folder / "info.json").write_text(json.dumps(info, indent=1, default=str))
    return info


def main(argv: list[str]) -> None:
    import logging

    import adapters
    import transformers

    # set_active_adapters runs a ForwardContext before the adapter is active and warns about it
    logging.getLogger("adapters").setLevel(logging.ERROR)
    out = Path(argv[0])
    spec = json.loads((out / "spec.json").read_text())
    tokens = load_file(str(out / "tokens.safetensors"))
    torch.manual_seed(0)
    torch.set_num_threads(spec.get("threads", 1))
    only = set(argv[1:])
    for method in spec["methods"]:
        if only and method["name"] not in only:
            continue
        info = run_method(spec, method, tokens, out)
        print(f"adapterhub {method['name']}: trainable {info.get('trainable', '-')} "
              f"(+LayerNorm {info.get('trainable_with_layernorm', '-')})", flush=True)
    (out / "adapterhub_versions.json").write_text(json.dumps({
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "adapters": adapters.__version__}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
