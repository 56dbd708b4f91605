"""mnist-cnn: the CustomCNN of the 'CNN with Python' tutorial, trained on the MNIST family."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnist-cnn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# Names are imported on first use, so that a torch-free deployment (ONNX Runtime) can import
# the package, and `import mnist_cnn` stays quick.
_EXPORTS = {
    "anatomy": [
        "feature_maps",
        "format_summary",
        "grad_cam",
        "layer_table",
        "summarize",
        "weight_sharing",
    ],
    "checkpoint": ["TrainedModel", "load_run", "save_weights"],
    "datasets": ["DATASETS", "Dataset", "DatasetInfo", "get_dataset_info"],
    "download": ["fetch", "load_dataset", "verify_folder"],
    "errors": ["ConfigError", "MnistCnnError"],
    "evaluation": ["EvalResult", "evaluate", "normalize"],
    "idx": ["load_idx"],
    "model": ["CustomCNN", "ModelConfig", "count_parameters", "eval_mode"],
    "predict": ["Predictor"],
    "preprocessing": ["preprocess"],
    "serve": ["create_app"],
    "spec": ["InputSpec", "Model", "ModelInfo"],
    "training": ["TrainConfig", "TrainResult", "train"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def lazy_getattr(package: str, where: dict[str, str]):
    """A module ``__getattr__`` for ``package`` that imports ``name`` from the submodule
    ``where[name]`` on first use and keeps it (PEP 562)."""

    def __getattr__(name: str):
        if name in where:
            import sys
            from importlib import import_module

            value = getattr(import_module(f".{where[name]}", package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_getattr(__name__, _WHERE)


__all__ = [
    "DATASETS",
    "ConfigError",
    "CustomCNN",
    "Dataset",
    "DatasetInfo",
    "EvalResult",
    "InputSpec",
    "MnistCnnError",
    "Model",
    "ModelInfo",
    "ModelConfig",
    "Predictor",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "count_parameters",
    "eval_mode",
    "create_app",
    "evaluate",
    "feature_maps",
    "fetch",
    "format_summary",
    "get_dataset_info",
    "grad_cam",
    "layer_table",
    "load_dataset",
    "load_idx",
    "load_run",
    "normalize",
    "preprocess",
    "save_weights",
    "summarize",
    "train",
    "verify_folder",
    "weight_sharing",
]
