"""mnist-cnn: the CustomCNN of the 'CNN with Python' tutorial, trained on the MNIST family."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnist-cnn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from .checkpoint import TrainedModel, load_run, save_weights  # noqa: E402
from .datasets import DATASETS, Dataset, DatasetInfo, get_dataset_info, load_dataset  # noqa: E402
from .download import fetch, verify_folder  # noqa: E402
from .errors import MnistCnnError  # noqa: E402
from .evaluate import EvalResult, evaluate, normalize  # noqa: E402
from .idx import load_idx  # noqa: E402
from .model import CustomCNN, ModelConfig, count_parameters, format_summary, summarize  # noqa: E402
from .predict import Predictor  # noqa: E402
from .preprocess import preprocess  # noqa: E402
from .train import TrainConfig, TrainResult, train  # noqa: E402

__all__ = [
    "DATASETS",
    "CustomCNN",
    "Dataset",
    "DatasetInfo",
    "EvalResult",
    "MnistCnnError",
    "ModelConfig",
    "Predictor",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "count_parameters",
    "evaluate",
    "fetch",
    "format_summary",
    "get_dataset_info",
    "load_dataset",
    "load_idx",
    "load_run",
    "normalize",
    "preprocess",
    "save_weights",
    "summarize",
    "train",
    "verify_folder",
]
