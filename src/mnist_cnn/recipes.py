"""Training recipes by name: settings that keep the seed's architecture (no torch import here).

Also the choices and ranges of TrainConfig's settings, which TrainConfig.validate checks and the
CLI's parser checks its flags with.
"""

from .defaults import COUNT, FRACTION, POSITIVE, Range, at_least, between

SCHEDULES = ("constant", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the device computes it natively

RECIPES: dict[str, dict] = {
    # DeepLearningZeroToAll lab 11-2: Adam 1e-3, batch 100, 15 epochs (the TrainConfig defaults)
    "reference": {},
    # the fastest way to >= 99.0%: big steps early, annealed away within two epochs
    "fast": dict(epochs=2, batch_size=256, lr=4e-3, schedule="onecycle", label_smoothing=0.1),
    # the best single model: augmentation and a longer one-cycle schedule
    # ("affine": shifts, rotations, scaling; augment.py's "handwriting" kind, which adds slant,
    # stroke width and elastic wobble, did worse here: seed 777, 99.48% on MNIST and 98.14% of
    # the real handwriting against 99.64% and 99.53%)
    "best": dict(
        epochs=24,
        batch_size=128,
        lr=2e-3,
        schedule="onecycle",
        label_smoothing=0.1,
        augment="affine",
    ),
    # sized for a GPU: fewer, fuller steps in bf16 (on an H200: 99.0% in under 1 s, 99.4% in 1.2 s)
    "gpu": dict(
        epochs=3,
        batch_size=512,
        lr=6e-3,
        schedule="onecycle",
        label_smoothing=0.1,
        precision="auto",  # bf16 on GPUs (and CPUs) that compute it
    ),
}

# "sgd" is plain SGD (no momentum): the update is lr times the gradient, nothing else
OPTIMIZERS = ("adam", "sgd")

# Precision, per recipe: "auto" (bf16 autocast where the device computes bf16 natively, else fp32)
# where bf16 held the recipe's accuracy within 0.05 points over 3 seeds (benchmarks/recipes.py
# --precision fp32 bf16): fast -0.013, best +0.010 (99.633% against 99.623%). The reference recipe
# stays fp32 whatever the device: it is the seed's lab.
RECIPES["fast"]["precision"] = "auto"
RECIPES["best"]["precision"] = "auto"

# The numbers a TrainConfig may hold (None, where a setting allows it, means "not set").
RANGES: dict[str, Range] = {
    "epochs": COUNT,
    "batch_size": COUNT,
    "eval_batch_size": COUNT,
    "lr": POSITIVE,
    "limit_train": COUNT,
    "seed": between(0, 2**32 - 1),
    "val_size": at_least(0),
    "label_smoothing": FRACTION,
    "pairs": FRACTION,
    "dropout": FRACTION,
}
