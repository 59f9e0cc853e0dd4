"""``python -m fastml demo``: a small network on scikit-learn's handwritten digits, once
per backend: an MLP (``--model mlp``, the default) or a CNN (``--model cnn``).

Every backend trains from the same seeded initialisation with the same seeded
batch order, so the accuracies agree (they compute the same math) and the
time per epoch compares the backends' kernels.
"""
from __future__ import annotations

import time

import numpy as np

import fastml
from fastml import losses, nn, optim

# The ops one training step runs: a backend is fully native when all of them are.
TRAINING_OPS = ("layers.linear", "layers.linear_backward", "layers.relu", "layers.relu_backward",
                "losses.cross_entropy_and_grad", "optim.adam_step")
# Adam's learning rate per model: the CNN's 1e-3 stops near 0.94 after 20 epochs.
DEFAULT_LR = {"mlp": 1e-3, "cnn": 1e-2}
MODEL_OPS = {"mlp": TRAINING_OPS,
             "cnn": TRAINING_OPS + ("layers.conv2d", "layers.conv2d_backward",
                                    "layers.max_pool2d", "layers.max_pool2d_backward")}


def load_data():
    """Digits scaled to [0, 1] (float32), split 75/25, stratified, random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y.astype(np.int64), test_size=0.25, stratify=y, random_state=0)


def build_model(seed, hidden=128, model="mlp"):
    """``mlp``: Linear(64, hidden) -> ReLU -> Linear(hidden, 10). ``cnn``, on the
    8x8 images: Conv2d(1, 8, 3, padding=1) -> ReLU -> MaxPool2d(2) -> Flatten ->
    Linear(128, 10)."""
    rng = np.random.default_rng(seed)
    if model == "cnn":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(8 * 4 * 4, 10, rng=rng))
    return nn.Sequential(nn.Linear(64, hidden, rng=rng), nn.ReLU(), nn.Linear(hidden, 10, rng=rng))


def _inputs(X, model):
    """The model's input layout: flat rows for the MLP, (N, 1, 8, 8) images for the CNN."""
    return X.reshape(-1, 1, 8, 8) if model == "cnn" else X


def _train_step(model, opt, xb, yb):
    logits = model(xb)
    loss, grad = losses.cross_entropy_and_grad(logits, yb)
    model.backward(grad)
    opt.step(model.gradients())
    return loss


def train(backend, data, *, epochs=20, seed=0, batch_size=32, lr=None, hidden=128,
          progress=None, model="mlp"):
    """Train ``model`` (see :func:`build_model`) with Adam on ``backend``; returns a dict.
    ``lr`` None: the model's ``DEFAULT_LR``.

    ``progress``: a tqdm-like factory (``progress(iterable, desc=...)``) or None.
    Keys: backend, accuracy (test), sec_per_epoch (mean over the timed epochs),
    warmup_s (a throw-away first step, where JIT backends compile), final_loss.
    """
    X_train, X_test, y_train, y_test = data
    X_train, X_test = _inputs(X_train, model), _inputs(X_test, model)
    lr = DEFAULT_LR[model] if lr is None else lr
    n = len(X_train)
    with fastml.use_backend(backend):
        t0 = time.perf_counter()
        warm = build_model(seed, hidden, model)
        _train_step(warm, optim.Adam(warm.parameters(), lr=lr), X_train[:batch_size],
                    y_train[:batch_size])
        warmup_s = time.perf_counter() - t0

        net = build_model(seed, hidden, model)
        opt = optim.Adam(net.parameters(), lr=lr)
        order = np.random.default_rng(seed + 1)
        epochs_iter = range(epochs)
        if progress is not None:
            epochs_iter = progress(epochs_iter, desc=f"{backend:>7}", unit="epoch", leave=True)
        elapsed, loss = 0.0, float("nan")
        for _ in epochs_iter:
            t0 = time.perf_counter()
            perm = order.permutation(n)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                total += _train_step(net, opt, X_train[idx], y_train[idx]) * len(idx)
            elapsed += time.perf_counter() - t0
            loss = total / n
            if progress is not None:
                epochs_iter.set_postfix(loss=f"{loss:.4f}")
        pred = net.eval()(X_test).argmax(axis=1)
    return {"backend": backend, "accuracy": float(np.mean(pred == y_test)),
            "sec_per_epoch": elapsed / max(epochs, 1), "warmup_s": warmup_s, "final_loss": loss}


def run(backends, *, epochs=20, seed=0, batch_size=32, lr=None, hidden=128, model="mlp"):
    """Train on each backend in turn with a tqdm progress bar; returns (headers, rows, results)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise SystemExit("fastml demo shows a progress bar with tqdm, which is not installed: "
                         "pip install 'fastml[demo]'") from None
    data = load_data()
    ops = fastml.backend_info()["ops"]
    results = [train(b, data, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                     hidden=hidden, progress=tqdm, model=model) for b in backends]
    base = next((r["sec_per_epoch"] for r in results if r["backend"] == "numpy"), None)
    headers = ["backend", "test accuracy", "s/epoch", "speed-up vs numpy", "warm-up s",
               "native training ops"]
    rows = []
    for r in results:
        native = sum(ops[q][r["backend"]] == "native" for q in MODEL_OPS[model])
        speed = f"{base / r['sec_per_epoch']:.2f}x" if base and r["sec_per_epoch"] else "-"
        rows.append([r["backend"], f"{r['accuracy']:.4f}", f"{r['sec_per_epoch']:.4f}", speed,
                     f"{r['warmup_s']:.2f}", f"{native}/{len(MODEL_OPS[model])}"])
    return headers, rows, results
