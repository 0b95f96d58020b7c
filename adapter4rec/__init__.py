"""adapter4rec: parameter-efficient transfer learning for content-based sequential recommendation.

    import adapter4rec as a4r
    data = a4r.RecData.from_frames(...)          # or a4r.RecData.from_files("Dataset/x")
    result = a4r.train(a4r.load_config("configs/..."), data=data)
    a4r.evaluate(result.model, data, k=(10, 20)); a4r.recommend(result.model, [["i1", "i2"]])

See docs/api.md. The names below load on first use, so ``import adapter4rec`` stays light.
"""
__version__ = "0.2.0"

_API = {"RecData": "data.split", "load_config": "config", "build_model": "model", "train": "api",
        "evaluate": "api", "load_run": "api", "recommend": "api", "TrainResult": "api",
        "Callback": "training.callbacks", "peft": None}


def __getattr__(name):
    import importlib

    if name not in _API:
        raise AttributeError(f"module 'adapter4rec' has no attribute {name!r}")
    if _API[name] is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)


def __dir__():
    return sorted([*globals(), *_API])


__all__ = sorted(_API)
