"""Data: synthetic inputs, scikit-learn's bundled digits, local MNIST / CIFAR-10 files,
the paper's preprocessing and the Forster transform (THEORY sections 4 and 8).

Nothing here downloads anything. MNIST and CIFAR-10 are read from files the user
already has and points to with ``path``.

Every builder returns a :class:`Dataset` of float64 numpy arrays

    x_train (N, M_0), y_train (N, C), x_test (N', M_0), y_test (N', C)

and an ``info`` dict: name, classes, n_train, n_test, dim (M_0), n_outputs (C),
targets / target_values, preprocessing (text) and preprocessing_info, forster (flag)
and forster_info (errors, iterations, leverage range, the map T), labels_train /
labels_test (integer class labels), indices_train / indices_test (rows of the source
arrays), seed, source. Conventions of the paper (THEORY section 8):
two classes -> scalar targets +-0.5 (C = 1; ``classes[0] -> -0.5``,
``classes[1] -> +0.5``); more classes -> one-hot (C = number of classes); inputs
flattened, standardized with the training set's per-feature mean / std, then every
row scaled to unit norm.

Forster transform (THEORY section 4, K-FAC note): a linear map T (M_0, M_0) such
that the rows of Z = row_normalize(X T) are unit vectors with Z^T Z = (N / M_0) I.
Then every hat-matrix leverage score diag(Z (Z^T Z)^{-1} Z^T) equals M_0 / N, which
is what makes K-FAC's first layer isotropic when N > M_0. It is fitted on the
training inputs and the same T (then row normalization) is applied to test inputs.
"""
from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import zipfile
import zlib
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

__all__ = [
    "Dataset", "synthetic", "digits", "load_mnist", "load_cifar10", "preprocess",
    "normalize_rows", "forster_fit", "forster_apply", "make_dataset", "read_idx", "load_arrays",
    "DATASETS", "USER_FORMATS",
]

_NO_DOWNLOAD = "ntk_ngd never downloads data: obtain the files yourself and pass their location as path."


class Dataset(NamedTuple):
    """x_train (N, M_0), y_train (N, C), x_test (N', M_0), y_test (N', C): float64 numpy; info: dict
    (see the module docstring; :meth:`from_arrays` builds one from a user's own arrays)."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]
    info: dict

    @classmethod
    def from_arrays(cls, x_train, y_train, x_test=None, y_test=None, *, name: str = "arrays",
                    preprocessing: bool = False, **info) -> "Dataset":
        """A Dataset from a user's arrays, used as given (targets are what the network fits).

        x_train (N, ...) numeric, flattened to (N, M_0); y_train (N,) or (N, C) targets; x_test,
        y_test the same for N' test samples, or both None (no test set). ``preprocessing=True``
        applies the paper's :func:`preprocess` (train statistics) to both inputs. Extra keywords
        go into ``info``, beside name, n_train, n_test, dim, n_outputs, targets ("values"),
        preprocessing. Every array is checked: shapes, numeric dtype, finiteness."""
        xtr = _as_float_matrix(x_train, "x_train")
        ytr = _as_targets(y_train, xtr.shape[0], "y_train")
        if (x_test is None) != (y_test is None):
            raise ValueError("give both x_test and y_test, or neither")
        xte = yte = None
        if x_test is not None:
            xte = _as_float_matrix(x_test, "x_test", allow_empty=True)
            yte = _as_targets(y_test, xte.shape[0], "y_test")
            if xte.shape[1] != xtr.shape[1] or yte.shape[1] != ytr.shape[1]:
                raise ValueError(f"x_test, y_test have {xte.shape[1]} features and {yte.shape[1]} outputs per sample, "
                                 f"x_train, y_train {xtr.shape[1]} and {ytr.shape[1]}")
        steps = ["flatten"]
        if preprocessing:
            xtr, xte, pinfo = preprocess(xtr, xte, return_info=True)
            steps = pinfo["steps"]
        base = {"name": name, "n_train": int(xtr.shape[0]), "n_test": 0 if xte is None else int(xte.shape[0]),
                "dim": int(xtr.shape[1]), "n_outputs": int(ytr.shape[1]), "targets": "values",
                "target_values": "as given", "preprocessing": "; ".join(steps), "forster": False}
        return cls(xtr, ytr, xte, yte, {**base, **info})


# ----------------------------------------------------------------------------- checks

def _check_finite(x: np.ndarray, what: str) -> None:
    """Raise ValueError naming ``what`` if x holds NaN or inf entries."""
    x = np.asarray(x)
    if x.dtype.kind in "fc":
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        if n_nan or n_inf:
            raise ValueError(f"{what} contains {n_nan} NaN and {n_inf} inf entries; "
                             "clean the data first (no imputation is done here)")


def _as_float_matrix(x, what: str, allow_empty: bool = False) -> np.ndarray:
    """(N, ...) array -> float64 (N, prod(...)), finite, N >= 1 (N >= 0 with ``allow_empty``)."""
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise ValueError(f"{what} must be a rectangular numeric array (N, features...): {e}") from None
    if x.ndim < 1 or (x.shape[0] == 0 and not allow_empty) or (x.shape[0] and x.size == 0):
        raise ValueError(f"{what} must be a non-empty array of shape (N, features...), got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be a real numeric array, got dtype {x.dtype}")
    _check_finite(x, what)
    return np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)


def _as_targets(y, n: int, what: str) -> np.ndarray:
    """Targets (n,) or (n, C) -> float64 (n, C), finite."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be a real numeric array, got dtype {y.dtype}")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n or y.shape[1] == 0:
        raise ValueError(f"{what} must have shape ({n},) or ({n}, C) (one target row per sample), got {y.shape}")
    _check_finite(y, what)
    return np.asarray(y, dtype=np.float64)


def _as_labels(y, n: int, what: str) -> np.ndarray:
    """Integer class labels (n,) from (n,) or (n, 1) arrays."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what} must hold one integer label per sample (shape ({n},)), got shape {y.shape}")
    _check_finite(y, what)
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            raise ValueError(f"{what} must be integer class labels, found non-integer values")
    elif y.dtype.kind not in "biu":
        raise ValueError(f"{what} must be integer class labels, got dtype {y.dtype}")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------- preprocessing

def normalize_rows(x: np.ndarray) -> np.ndarray:
    """(N, M) -> (N, M) with every row scaled to unit Euclidean norm (error on an all-zero row)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(norms[:, 0] == 0)
    if bad.size:
        raise ValueError(f"cannot scale rows to unit norm: {bad.size} all-zero row(s), e.g. row {bad[0]}")
    return x / norms


def preprocess(x_train, x_test=None, *, drop_constant: bool = False,
               pca_dim: Optional[int] = None, return_info: bool = False):
    """The paper's preprocessing: flatten, standardize per feature with the TRAINING
    mean / std, then scale every row to unit norm.

    x_train (N, ...) and x_test (N', ...) -> (N, M_0), (N', M_0) float64 (x_test None -> None).
    Features that are constant on the training set (std = 0) cannot be standardized:
    they are set to 0 in both sets (``drop_constant=True`` removes them instead, so
    M_0 shrinks). ``pca_dim=d`` (optional, not the paper's) projects the standardized
    inputs on the top-d principal directions of the training set before row
    normalization; useful to put data with exact degeneracies (e.g. the digits'
    near-constant border pixels) into the general position the Forster transform needs.
    With ``return_info=True`` a third value, a dict of what was done, is returned.
    """
    xtr = _as_float_matrix(x_train, "x_train")
    xte = None if x_test is None else _as_float_matrix(x_test, "x_test")
    if xte is not None and xte.shape[1] != xtr.shape[1]:
        raise ValueError(f"x_train has {xtr.shape[1]} features per sample but x_test has {xte.shape[1]}")
    mean = xtr.mean(axis=0)
    std = xtr.std(axis=0)
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    safe_std = np.where(constant, 1.0, std)

    def standardize(x):
        z = (x - mean) / safe_std
        z[:, constant] = 0.0
        return z

    ztr = standardize(xtr)
    zte = None if xte is None else standardize(xte)
    steps = ["flatten", "standardize (train mean/std; constant features -> 0)"]
    if drop_constant:
        keep = ~constant
        ztr, zte = ztr[:, keep], (None if zte is None else zte[:, keep])
        steps.append(f"drop {int(constant.sum())} constant features")
    if pca_dim is not None:
        pca_dim = int(pca_dim)
        if not 1 <= pca_dim <= min(ztr.shape):
            raise ValueError(f"pca_dim must be in [1, min(N, features)] = [1, {min(ztr.shape)}], got {pca_dim}")
        _, _, vt = np.linalg.svd(ztr, full_matrices=False)   # ztr is centered (train mean 0)
        basis = vt[:pca_dim].T
        ztr, zte = ztr @ basis, (None if zte is None else zte @ basis)
        steps.append(f"project on top {pca_dim} training principal directions")
    ztr = normalize_rows(ztr)
    zte = None if zte is None else normalize_rows(zte)
    steps.append("rows to unit norm")
    if not return_info:
        return ztr, zte
    info = {"steps": steps, "n_features_in": int(xtr.shape[1]), "n_constant": int(constant.sum()),
            "dim": int(ztr.shape[1]), "drop_constant": bool(drop_constant), "pca_dim": pca_dim}
    return ztr, zte, info


# ----------------------------------------------------------------------------- Forster transform

def forster_apply(T: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply a fitted Forster map: (M_0, M_0), (N, M_0) -> row_normalize(x @ T), shape (N, M_0)."""
    x = _as_float_matrix(x, "x")
    T = np.asarray(T, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] != x.shape[1]:
        raise ValueError(f"Forster map of shape {T.shape} does not fit inputs with {x.shape[1]} features")
    return normalize_rows(x @ T)


def _single_thread_blas():
    """Context limiting BLAS to one thread if threadpoolctl (a scikit-learn dependency) is present."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl missing
        import contextlib
        return contextlib.nullcontext()


def _forster_iterate(X, c, scale, tol, max_iter, max_cond):
    """Z = row_normalize(X T); T <- T (Z^T Z)^{-1/2} (rescaled to ||T||_2 = 1) until converged."""
    M = X.shape[1]
    T = np.eye(M)
    it = 0
    history = {}
    window = 250
    while True:
        Zt = normalize_rows(X @ T)
        G = Zt.T @ Zt
        err = float(np.linalg.norm(G - c * np.eye(M)))
        if err <= tol * scale:
            return T, Zt, err, it
        history[it] = err
        projected = None
        if it >= 2 * window and it % window == 0:
            # forecast with the geometric rate of the last window (optimistic when convergence
            # is sublinear, as it is for inputs on the boundary of general position)
            rate = (err / history[it - window]) ** (1.0 / window)
            need = np.inf if rate >= 1 else np.log(tol * scale / err) / np.log(rate)
            if it + need > max_iter:
                projected = need
        if it >= max_iter or projected is not None:
            when = (f"in {max_iter} iterations" if projected is None else
                    f"within max_iter = {max_iter} (stopped at {it}: the current rate would need "
                    f"~{projected:.3g} more iterations)")
            raise RuntimeError(
                f"Forster iteration did not converge {when}: ||Z^T Z - (N/M_0) I||_F = "
                f"{err:.3e} (relative {err / scale:.3e}, tol {tol:.1e}), cond(T) = {np.linalg.cond(T):.3e}. "
                "The inputs are (close to) not in general position (too many rows in a low-dimensional "
                "subspace); reduce the dimension (pca_dim=d), choose other samples/classes, or raise max_iter.")
        w, V = np.linalg.eigh(G)                       # (Z^T Z)^{-1/2} = V w^{-1/2} V^T
        if w[0] <= w[-1] * 1e-14:
            raise RuntimeError(f"Forster iteration became numerically singular after {it} iterations "
                               "(Z^T Z has a ~zero eigenvalue): inputs not in general position")
        T = T @ ((V / np.sqrt(w)) @ V.T)
        T = T / np.linalg.norm(T, 2)
        it += 1
        if it % 50 == 0:
            cond = np.linalg.cond(T)
            if cond > max_cond:
                raise RuntimeError(
                    f"Forster iteration diverging after {it} iterations: cond(T) = {cond:.3e} > {max_cond:.1e}, "
                    f"||Z^T Z - (N/M_0) I||_F = {err:.3e}. The inputs are not in general position; reduce the "
                    "dimension (pca_dim=d) or choose other samples/classes.")


def forster_fit(Z, tol: float = 1e-12, max_iter: int = 10000, max_cond: float = 1e12):
    """Fit the Forster transform of training inputs Z (N, M_0), N >= M_0.

    Iterates Z <- Z (Z^T Z)^{-1/2}, then rows to unit norm, accumulating the linear
    map T (M_0, M_0), until ||Z^T Z - (N/M_0) I||_F <= tol * (N/M_0) sqrt(M_0) (relative).
    Z is recomputed from T every iteration, so ``forster_apply(T, Z_in)`` reproduces
    the fitted inputs exactly. Returns ``(T, info)``; info holds the achieved absolute
    and relative errors, iterations, the target N/M_0, cond(T) and the leverage-score
    range of the result. Errors: ValueError if N < M_0 or Z is rank deficient;
    RuntimeError if it does not converge (Z not in general position: a radial isotropic
    position exists only if every k-dim subspace holds fewer than k N / M_0 rows).
    """
    X = _as_float_matrix(Z, "Z")
    N, M = X.shape
    if N < M:
        raise ValueError(f"the Forster transform needs N >= M_0, got N = {N} samples in M_0 = {M} "
                         "dimensions (with M_0 >= N K-FAC's first layer is already isotropic)")
    normalize_rows(X)                # validates: no all-zero rows (X itself is used as given)
    rank = int(np.linalg.matrix_rank(X))
    if rank < M:
        raise ValueError(f"the Forster transform needs inputs in general position: Z has rank {rank} < "
                         f"M_0 = {M} (constant or linearly dependent features; drop them, e.g. "
                         "preprocess(..., drop_constant=True) or pca_dim=d)")
    c = N / M
    scale = c * np.sqrt(M)
    with _single_thread_blas():      # tiny M x M problems: threading only adds contention
        T, Zt, err, it = _forster_iterate(X, c, scale, tol, max_iter, max_cond)
    lev = np.sum(Zt * np.linalg.solve(Zt.T @ Zt, Zt.T).T, axis=1)
    info = {"iterations": it, "error": err, "relative_error": err / scale, "target": c,
            "tol": tol, "cond": float(np.linalg.cond(T)),
            "leverage_min": float(lev.min()), "leverage_max": float(lev.max()),
            "leverage_expected": M / N}
    return T, info


# ----------------------------------------------------------------------------- shared assembly

def _targets(labels: np.ndarray, classes: Sequence[int], targets: str) -> tuple[np.ndarray, dict]:
    """Integer labels (n,) -> targets (n, C) and a description of the convention."""
    classes = list(classes)
    order = {c: i for i, c in enumerate(classes)}
    pos = np.array([order[int(l)] for l in labels], dtype=np.int64)
    if targets == "auto":
        targets = "pm_half" if len(classes) == 2 else "one_hot"
    if targets == "pm_half":
        if len(classes) != 2:
            raise ValueError(f"targets='pm_half' needs exactly two classes, got {classes}")
        y = np.where(pos == 1, 0.5, -0.5)[:, None]
        return y, {"targets": "pm_half", "target_values": {classes[0]: -0.5, classes[1]: 0.5}}
    if targets == "one_hot":
        y = np.eye(len(classes))[pos]
        return y, {"targets": "one_hot", "target_values": {c: f"e_{i}" for i, c in enumerate(classes)}}
    raise ValueError(f"unknown targets {targets!r}; use 'auto', 'pm_half' or 'one_hot'")


def _balanced_indices(labels: np.ndarray, classes: Sequence[int], n: int, rng: np.random.Generator,
                      what: str, exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """n indices, split as evenly as possible over classes, without replacement, shuffled."""
    k = len(classes)
    counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
    taken = np.zeros(labels.shape[0], dtype=bool)
    if exclude is not None:
        taken[exclude] = True
    out = []
    for c, m in zip(classes, counts):
        pool = np.flatnonzero((labels == c) & ~taken)
        if m > pool.size:
            raise ValueError(f"{what}: class {c} has only {pool.size} available samples, asked for {m} "
                             f"({n} over {k} classes)")
        out.append(rng.choice(pool, size=m, replace=False))
    idx = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    return rng.permutation(idx)


def _check_classes(classes, available: np.ndarray, name: str) -> tuple[int, ...]:
    if classes is None:
        classes = tuple(int(c) for c in np.unique(available))
    classes = tuple(int(c) for c in classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"{name}: classes must be at least two distinct labels, got {classes}")
    missing = [c for c in classes if c not in set(np.unique(available).tolist())]
    if missing:
        raise ValueError(f"{name}: classes {missing} do not occur in the data "
                         f"(labels present: {np.unique(available).tolist()})")
    return classes


def _finish(name: str, xtr_raw, ltr, xte_raw, lte, classes, targets, *, forster: bool,
            preprocessing: bool, drop_constant: Optional[bool], pca_dim: Optional[int],
            forster_kw: Optional[dict], extra: dict) -> Dataset:
    """Preprocess, optional Forster, targets, info."""
    if drop_constant is None:
        drop_constant = bool(forster)
    if preprocessing:
        xtr, xte, pinfo = preprocess(xtr_raw, xte_raw, drop_constant=drop_constant,
                                     pca_dim=pca_dim, return_info=True)
    else:
        xtr, xte = _as_float_matrix(xtr_raw, "x_train"), _as_float_matrix(xte_raw, "x_test")
        pinfo = {"steps": ["flatten (no standardization, no row normalization)"], "dim": xtr.shape[1]}
    finfo = None
    if forster:
        T, finfo = forster_fit(xtr, **(forster_kw or {}))
        xtr, xte = forster_apply(T, xtr), forster_apply(T, xte)
        finfo = dict(finfo, map=T)
        pinfo["steps"] = pinfo["steps"] + ["Forster transform (fitted on train; test: same map, rows to unit norm)"]
    if classes is None:  # regression: ltr, lte are the target values (n, C), used as given
        ytr, yte, tinfo = ltr, lte, {"targets": "values", "target_values": "as given"}
        ltr = lte = None
    else:
        ytr, tinfo = _targets(ltr, classes, targets)
        yte, _ = _targets(lte, classes, targets)
    info = {"name": name, "classes": None if classes is None else tuple(classes), "n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0]),
            "dim": int(xtr.shape[1]), "n_outputs": int(ytr.shape[1]), **tinfo,
            "preprocessing": "; ".join(pinfo["steps"]), "preprocessing_info": pinfo,
            "forster": bool(forster), "forster_info": finfo,
            "labels_train": None if ltr is None else np.asarray(ltr, dtype=np.int64),
            "labels_test": None if lte is None else np.asarray(lte, dtype=np.int64), **extra}
    return Dataset(xtr, ytr, xte, yte, info)


# ----------------------------------------------------------------------------- synthetic

def synthetic(n_train: int, n_test: int, dim: int, n_outputs: int = 1, seed: int = 0,
              targets: str = "pm_half", forster: bool = False,
              forster_kw: Optional[dict] = None) -> Dataset:
    """Gaussian inputs with unit-norm rows and a random linear teacher W (dim, C) ~ N(0, 1).

    targets: "pm_half": 0.5 sign(x W) (C = n_outputs, +-0.5 per output; C = 1 is the paper's
    two-class setting); "one_hot": one-hot of argmax(x W) over C = n_outputs >= 2 classes;
    "teacher": the real-valued x W (each entry ~ N(0, 1) since rows have unit norm).
    Returns x_train (n_train, dim), y_train (n_train, C), x_test (n_test, dim), y_test (n_test, C).
    ``forster=True`` fits the Forster map on x_train (needs n_train >= dim) and applies it to both.
    """
    n_train, n_test, dim, n_outputs = int(n_train), int(n_test), int(dim), int(n_outputs)
    if n_train < 1 or n_test < 0 or dim < 1 or n_outputs < 1:
        raise ValueError(f"need n_train >= 1, n_test >= 0, dim >= 1, n_outputs >= 1; got "
                         f"{n_train}, {n_test}, {dim}, {n_outputs}")
    rng = np.random.default_rng(seed)
    x = normalize_rows(rng.standard_normal((n_train + n_test, dim)))
    w = rng.standard_normal((dim, n_outputs))
    out = x @ w
    if targets == "pm_half":
        y = np.where(out >= 0, 0.5, -0.5)
        labels = (out[:, 0] >= 0).astype(np.int64) if n_outputs == 1 else None
    elif targets == "one_hot":
        if n_outputs < 2:
            raise ValueError("targets='one_hot' needs n_outputs >= 2 classes")
        labels = np.argmax(out, axis=1)
        y = np.eye(n_outputs)[labels]
    elif targets == "teacher":
        y, labels = out, None
    else:
        raise ValueError(f"unknown targets {targets!r}; use 'pm_half', 'one_hot' or 'teacher'")
    xtr, xte = x[:n_train], x[n_train:]
    steps = ["Gaussian N(0, I) inputs", "rows to unit norm"]
    finfo = None
    if forster:
        T, finfo = forster_fit(xtr, **(forster_kw or {}))
        xtr, xte = forster_apply(T, xtr), forster_apply(T, xte)
        finfo = dict(finfo, map=T)
        steps.append("Forster transform (fitted on train; test: same map, rows to unit norm)")
    info = {"name": "synthetic", "classes": None if labels is None else tuple(range(max(2, n_outputs))),
            "n_train": n_train, "n_test": n_test, "dim": dim, "n_outputs": n_outputs, "targets": targets,
            "target_values": {"pm_half": "+-0.5 = 0.5 sign(x W)", "one_hot": "one-hot argmax(x W)",
                              "teacher": "x W"}[targets],
            "preprocessing": "; ".join(steps), "forster": bool(forster), "forster_info": finfo,
            "labels_train": None if labels is None else labels[:n_train],
            "labels_test": None if labels is None else labels[n_train:], "seed": seed, "teacher": w}
    return Dataset(xtr, y[:n_train], xte, y[n_train:], info)


# ----------------------------------------------------------------------------- digits (bundled)

def digits(classes: Optional[Sequence[int]] = (0, 1), n_train: int = 64, n_test: int = 64, seed: int = 0,
           forster: bool = False, targets: str = "auto", *, preprocessing: bool = True,
           drop_constant: Optional[bool] = None, pca_dim: Optional[int] = None,
           forster_kw: Optional[dict] = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 64 features; nothing is downloaded).

    Balanced sampling without replacement (deterministic by seed), train and test disjoint.
    classes: two labels -> +-0.5 scalar targets (C = 1); None or more labels -> one-hot
    (C = number of classes); ``targets`` overrides ('pm_half', 'one_hot'). Inputs go
    through :func:`preprocess` (M_0 = 64, fewer with drop_constant / pca_dim).
    ``forster=True`` (needs N >= M_0) implies drop_constant unless given. Many digit
    class pairs are not in general position (pixels non-zero in one or two images), so
    the Forster iteration may fail for them: use ``pca_dim`` (e.g. 32 or 48) then.
    x_train (n_train, M_0), y_train (n_train, C), x_test (n_test, M_0), y_test (n_test, C).
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no network access
    d = load_digits()
    x_all, labels = np.asarray(d.data, dtype=np.float64), np.asarray(d.target, dtype=np.int64)
    classes = _check_classes(classes, labels, "digits")
    rng = np.random.default_rng(seed)
    itr = _balanced_indices(labels, classes, int(n_train), rng, "digits training set")
    ite = _balanced_indices(labels, classes, int(n_test), rng, "digits test set (disjoint from training)",
                            exclude=itr)
    return _finish("digits", x_all[itr], labels[itr], x_all[ite], labels[ite], classes, targets,
                   forster=forster, preprocessing=preprocessing, drop_constant=drop_constant,
                   pca_dim=pca_dim, forster_kw=forster_kw,
                   extra={"seed": seed, "source": "sklearn.datasets.load_digits (bundled)",
                          "raw_dim": 64, "indices_train": itr, "indices_test": ite})


# ----------------------------------------------------------------------------- local files

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":          # gzip magic, whatever the file name says
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path!r}: a gzip file that cannot be decompressed (truncated or corrupt? "
                             f"{type(e).__name__}: {e})") from None
    return raw


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (gzipped or plain): magic 00 00 <dtype> <ndim>, big-endian int32 dims, data."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
                         f"{len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_MNIST_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_MNIST_EXPECTED = ("a directory with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                   "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz), "
                   "or a single .npz file with arrays x_train, y_train, x_test, y_test")
_CIFAR_EXPECTED = ("the python-pickle batches directory cifar-10-batches-py (data_batch_1 .. data_batch_5, "
                   "test_batch) or its parent directory, the archive cifar-10-python.tar.gz, "
                   "or a single .npz file with arrays x_train, y_train, x_test, y_test")


def _not_found(what: str, path, expected: str, detail: str = "") -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found at {str(path)!r}{': ' + detail if detail else ''}. "
                             f"Expected {expected}. {_NO_DOWNLOAD}")


def _load_npz(path: str, what: str) -> dict:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        f = np.load(path, allow_pickle=False)
        if isinstance(f, np.ndarray):
            raise ValueError("a single .npy array, not an .npz archive")
        with f:
            files = list(f.files)
            arrays = {k: np.asarray(f[k]) for k in keys if k in files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what} npz file {path!r} cannot be read (truncated or corrupt? "
                         f"{type(e).__name__}: {e})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{what} npz file {path!r} lacks arrays {missing} (has {files}); expected keys {list(keys)}")
    return arrays


def _find_mnist(directory: str) -> dict:
    out, missing = {}, []
    for key, names in _MNIST_FILES.items():
        for name in names:
            hits = [os.path.join(directory, name + ext) for ext in ("", ".gz")
                    if os.path.isfile(os.path.join(directory, name + ext))]
            if hits:
                out[key] = hits[0]
                break
        else:
            missing.append(names[0] + "[.gz]")
    if missing:
        raise _not_found("MNIST files", directory, _MNIST_EXPECTED, "missing " + ", ".join(missing))
    return out


def _read_mnist(path) -> dict:
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".npz"):
        return _load_npz(path, "MNIST")
    if os.path.isdir(path):
        files = _find_mnist(path)
        return {k: read_idx(p) for k, p in files.items()}
    raise _not_found("MNIST data", path, _MNIST_EXPECTED)


def _unpickle_batch(fileobj, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: dict with data (n, 3072) uint8 and labels (n,). Trusted files only."""
    try:
        d = pickle.load(fileobj, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise ValueError(f"CIFAR-10 batch {name}: not a readable python pickle batch (truncated or corrupt? "
                         f"{type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR-10 batch {name}: expected a pickled dict, got {type(d).__name__}")
    get = lambda k: d[k.encode()] if k.encode() in d else d.get(k)
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise ValueError(f"CIFAR-10 batch {name}: expected keys 'data' and 'labels', got {list(d)}")
    return np.asarray(data), np.asarray(labels)


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _read_cifar_dir(directory: str) -> dict:
    names = _CIFAR_TRAIN + ("test_batch",)
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise _not_found("CIFAR-10 batches", directory, _CIFAR_EXPECTED, "missing " + ", ".join(missing))
    parts = {}
    for n in names:
        with open(os.path.join(directory, n), "rb") as f:
            parts[n] = _unpickle_batch(f, os.path.join(directory, n))
    return _cifar_concat(parts)


def _read_cifar_tar(path: str) -> dict:
    parts = {}
    try:
        tar = tarfile.open(path, "r:*")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{path!r}: not a readable tar archive (truncated or corrupt? {type(e).__name__}: {e})") from None
    with tar:
        for m in members:
            base = os.path.basename(m.name)
            if m.isfile() and base in _CIFAR_TRAIN + ("test_batch",):
                parts[base] = _unpickle_batch(tar.extractfile(m), f"{path}:{m.name}")
    missing = [n for n in _CIFAR_TRAIN + ("test_batch",) if n not in parts]
    if missing:
        raise _not_found("CIFAR-10 batches", path, _CIFAR_EXPECTED, "archive lacks " + ", ".join(missing))
    return _cifar_concat(parts)


def _cifar_concat(parts: dict) -> dict:
    return {"x_train": np.concatenate([parts[n][0] for n in _CIFAR_TRAIN]),
            "y_train": np.concatenate([parts[n][1] for n in _CIFAR_TRAIN]),
            "x_test": parts["test_batch"][0], "y_test": parts["test_batch"][1]}


def _read_cifar(path) -> dict:
    path = os.fspath(path)
    if os.path.isfile(path):
        if path.endswith(".npz"):
            raw = _load_npz(path, "CIFAR-10")
            for k in ("x_train", "x_test"):   # (n, 32, 32, 3) -> channel-first like the batches
                if raw[k].ndim == 4 and raw[k].shape[-1] == 3:
                    raw[k] = np.transpose(raw[k], (0, 3, 1, 2))
            return raw
        if path.endswith((".tar.gz", ".tgz", ".tar")):
            return _read_cifar_tar(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data_batch_1")) or not os.path.isdir(
                os.path.join(path, "cifar-10-batches-py")):
            return _read_cifar_dir(path)
        return _read_cifar_dir(os.path.join(path, "cifar-10-batches-py"))
    raise _not_found("CIFAR-10 data", path, _CIFAR_EXPECTED)


def _from_splits(name: str, raw: dict, path, classes, n_train, n_test, seed, forster, targets,
                 preprocessing, drop_constant, pca_dim, forster_kw) -> Dataset:
    xtr = np.asarray(raw["x_train"])
    xte = np.asarray(raw["x_test"])
    for k, x in (("x_train", xtr), ("x_test", xte)):
        if x.ndim < 2 or x.dtype.kind not in "biuf":
            raise ValueError(f"{name} {k}: expected a numeric array (n, ...), got dtype {x.dtype} shape {x.shape}")
        _check_finite(x, f"{name} {k}")
    ltr = _as_labels(raw["y_train"], xtr.shape[0], f"{name} y_train")
    lte = _as_labels(raw["y_test"], xte.shape[0], f"{name} y_test")
    classes = _check_classes(classes, ltr, name)
    rng = np.random.default_rng(seed)
    itr = _balanced_indices(ltr, classes, int(n_train), rng, f"{name} training split")
    ite = _balanced_indices(lte, classes, int(n_test), rng, f"{name} test split")
    return _finish(name, xtr[itr], ltr[itr], xte[ite], lte[ite], classes, targets, forster=forster,
                   preprocessing=preprocessing, drop_constant=drop_constant, pca_dim=pca_dim,
                   forster_kw=forster_kw,
                   extra={"seed": seed, "source": os.fspath(path), "raw_dim": int(np.prod(xtr.shape[1:])),
                          "indices_train": itr, "indices_test": ite})


def load_mnist(path, classes: Optional[Sequence[int]] = (0, 1), n_train: int = 100, n_test: int = 50,
               seed: int = 0, forster: bool = False, targets: str = "auto", *, preprocessing: bool = True,
               drop_constant: Optional[bool] = None, pca_dim: Optional[int] = None,
               forster_kw: Optional[dict] = None) -> Dataset:
    """MNIST (or Fashion-MNIST) from local files: a directory of IDX files (gzipped or not) or an
    .npz with x_train, y_train, x_test, y_test. Nothing is downloaded.

    Paper setting by default: classes (0, 1), N = 100 balanced train samples from the
    training split, 50 test samples from the test split, +-0.5 targets, M_0 = 784.
    Other arguments as in :func:`digits`. x_train (N, 784), y_train (N, C), x_test (N', 784), y_test (N', C).
    """
    return _from_splits("mnist", _read_mnist(path), path, classes, n_train, n_test, seed, forster, targets,
                        preprocessing, drop_constant, pca_dim, forster_kw)


def load_cifar10(path, classes: Optional[Sequence[int]] = (0, 1), n_train: int = 100, n_test: int = 50,
                 seed: int = 0, forster: bool = False, targets: str = "auto", *, preprocessing: bool = True,
                 drop_constant: Optional[bool] = None, pca_dim: Optional[int] = None,
                 forster_kw: Optional[dict] = None) -> Dataset:
    """CIFAR-10 from local files: the cifar-10-batches-py directory (or its parent, or the
    cifar-10-python.tar.gz archive) or an .npz with x_train, y_train, x_test, y_test.
    Nothing is downloaded; the pickle batches are unpickled, so load trusted files only.

    Paper setting by default: classes (0, 1), N = 100, N' = 50, +-0.5 targets, M_0 = 3072
    (channel-first flattening, as in the batches). x_train (N, 3072), y_train (N, C), ...
    """
    return _from_splits("cifar10", _read_cifar(path), path, classes, n_train, n_test, seed, forster, targets,
                        preprocessing, drop_constant, pca_dim, forster_kw)


# ----------------------------------------------------------------------------- a user's own files

USER_FORMATS = ("npz", "csv")
_USER_EXPECTED = {
    "npz": ("an .npz file (numpy.savez) with arrays x_train, y_train, x_test, y_test, or with x and y "
            "(then split into n_train / n_test disjoint samples by seed); x: (n, features...) numeric; "
            "y: integer class labels (n,) or real targets (n,) / (n, C)"),
    "csv": ("a .csv file, one sample per row, numeric columns: the features, then the target in the "
            "last column (integers only: class labels; otherwise a real target, C = 1); an optional "
            "header row; split into n_train / n_test disjoint samples by seed"),
}


def _read_user_npz(path: str) -> dict:
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable .npz file ({type(e).__name__}: {e}); expected "
                         f"{_USER_EXPECTED['npz']}") from None
    if isinstance(f, np.ndarray):
        raise ValueError(f"{path!r} holds a single array, not an .npz archive; expected {_USER_EXPECTED['npz']}")
    with f:
        for keys in (("x_train", "y_train", "x_test", "y_test"), ("x", "y")):
            if set(keys) <= set(f.files):
                try:
                    return {k: np.asarray(f[k]) for k in keys}
                except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a truncated member
                    raise ValueError(f"{path!r}: cannot read its arrays ({type(e).__name__}: {e})") from None
    raise ValueError(f"{path!r} has arrays {sorted(f.files)}; expected {_USER_EXPECTED['npz']}")


def _read_csv(path: str) -> dict:
    import csv
    with open(path, newline="") as fh:
        lines = [(i + 1, row) for i, row in enumerate(csv.reader(fh)) if any(c.strip() for c in row)]
    if not lines:
        raise ValueError(f"{path!r} is empty; expected {_USER_EXPECTED['csv']}")
    header = None
    try:
        [float(c) for c in lines[0][1]]
    except ValueError:
        header, lines = lines[0][1], lines[1:]
    if not lines:
        raise ValueError(f"{path!r} has a header row and no data rows")
    ncol = len(lines[0][1])
    values = []
    for lineno, row in lines:
        if len(row) != ncol:
            raise ValueError(f"{path!r} line {lineno}: {len(row)} columns, the first data row has {ncol}")
        try:
            values.append([float(c) for c in row])
        except ValueError:
            bad = next(c for c in row if not _is_float(c))
            raise ValueError(f"{path!r} line {lineno}: {bad!r} is not a number") from None
    if ncol < 2:
        raise ValueError(f"{path!r} has {ncol} column(s); expected at least one feature column and the target")
    table = np.array(values)
    _check_finite(table, f"{path!r}")
    return {"x": table[:, :-1], "y": table[:, -1], "header": header}


def _is_float(c: str) -> bool:
    try:
        float(c)
        return True
    except ValueError:
        return False


def _is_labels(y: np.ndarray) -> bool:
    """Class labels: integer or bool dtype, or (a CSV column) integral real values, one per sample."""
    y = np.asarray(y)
    flat = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
    if y.dtype.kind in "biu":
        return flat
    return flat and y.dtype.kind == "f" and y.size > 0 and bool(np.all(np.isfinite(y) & (y == np.round(y))))


def load_arrays(path, format: Optional[str] = None, classes: Optional[Sequence[int]] = (0, 1),
                n_train: int = 100, n_test: int = 50, seed: int = 0, forster: bool = False,
                targets: str = "auto", *, preprocessing: bool = True, drop_constant: Optional[bool] = None,
                pca_dim: Optional[int] = None, forster_kw: Optional[dict] = None) -> Dataset:
    """A user's own data from an .npz or .csv file (``format``: "npz" | "csv", default from the suffix);
    the formats are in ``USER_FORMATS`` / the README. Nothing is downloaded.

    Class labels (integer y) go through the paper's conventions as for MNIST: ``classes``, balanced
    samples, +-0.5 targets for two classes, one-hot for more. Real-valued y are regression targets
    (n, C), used as given (``classes`` ignored), on n_train / n_test random rows. A single table (x, y
    or a CSV) is split into disjoint train and test samples by ``seed``. Inputs: the paper's
    :func:`preprocess` unless ``preprocessing=False``. Returns x_train (N, M_0), y_train (N, C), ...
    """
    path = os.fspath(path)
    fmt = format or os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in USER_FORMATS:
        raise ValueError(f"format must be one of {list(USER_FORMATS)} (or a path ending in .npz / .csv), "
                         f"got {format or path!r}")
    if not os.path.isfile(path):
        raise _not_found(f"{fmt} data file", path, _USER_EXPECTED[fmt])
    raw = _read_user_npz(path) if fmt == "npz" else _read_csv(path)
    name = f"{fmt}:{os.path.basename(path)}"
    extra = {"seed": seed, "source": path, "format": fmt}
    if "x_train" in raw:
        if _is_labels(raw["y_train"]):
            return _from_splits(name, raw, path, classes, n_train, n_test, seed, forster, targets,
                                preprocessing, drop_constant, pca_dim, forster_kw)
        parts = {k: (_as_float_matrix(raw[f"x_{k}"], f"{name} x_{k}"), raw[f"y_{k}"]) for k in ("train", "test")}
        parts = {k: (x, _as_targets(y, x.shape[0], f"{name} y_{k}")) for k, (x, y) in parts.items()}
        rng = np.random.default_rng(seed)
        itr, ite = (_random_rows(parts[k][0].shape[0], n, rng, f"{name} {k} split")
                    for k, n in (("train", n_train), ("test", n_test)))
        return _finish(name, parts["train"][0][itr], parts["train"][1][itr], parts["test"][0][ite],
                       parts["test"][1][ite], None, targets, forster=forster, preprocessing=preprocessing,
                       drop_constant=drop_constant, pca_dim=pca_dim, forster_kw=forster_kw,
                       extra={**extra, "indices_train": itr, "indices_test": ite})
    x = _as_float_matrix(raw["x"], f"{name} x")
    rng = np.random.default_rng(seed)
    if _is_labels(raw["y"]):
        labels = _as_labels(raw["y"], x.shape[0], f"{name} y")
        classes = _check_classes(classes, labels, name)
        itr = _balanced_indices(labels, classes, int(n_train), rng, f"{name} training samples")
        ite = _balanced_indices(labels, classes, int(n_test), rng, f"{name} test samples (disjoint from training)",
                                exclude=itr)
        ytr, yte = labels[itr], labels[ite]
    else:
        y = _as_targets(raw["y"], x.shape[0], f"{name} y")
        rows = _random_rows(x.shape[0], int(n_train) + int(n_test), rng, f"{name} (train + test samples)")
        itr, ite = rows[:int(n_train)], rows[int(n_train):]
        ytr, yte, classes = y[itr], y[ite], None
    return _finish(name, x[itr], ytr, x[ite], yte, classes, targets, forster=forster, preprocessing=preprocessing,
                   drop_constant=drop_constant, pca_dim=pca_dim, forster_kw=forster_kw,
                   extra={**extra, "indices_train": itr, "indices_test": ite})


def _random_rows(n_rows: int, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n > n_rows:
        raise ValueError(f"{what}: asked for {n} samples, the file has {n_rows}")
    return rng.permutation(n_rows)[:n]


# ----------------------------------------------------------------------------- dispatcher

DATASETS = ("synthetic", "digits", "mnist", "cifar10") + USER_FORMATS
_ALIASES = {"cifar": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10", "sklearn_digits": "digits"}


def make_dataset(name: str, **kw: Any) -> Dataset:
    """Build a dataset by name: "synthetic" (n_train, n_test, dim, ...), "digits" (...),
    "mnist" / "cifar10" (path=..., ...), "npz" / "csv" (a user's file, path=...; :func:`load_arrays`).
    Keyword arguments go to the builder."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key == "synthetic":
        return synthetic(**kw)
    if key == "digits":
        return digits(**kw)
    if key in ("mnist", "cifar10"):
        if kw.get("path") is None:
            expected = _MNIST_EXPECTED if key == "mnist" else _CIFAR_EXPECTED
            raise ValueError(f"dataset {key!r} needs path=... pointing to local files: {expected}. {_NO_DOWNLOAD}")
        return (load_mnist if key == "mnist" else load_cifar10)(**kw)
    if key in USER_FORMATS:
        if kw.get("path") is None:
            raise ValueError(f"dataset {key!r} needs path=... (--data-path): {_USER_EXPECTED[key]}")
        return load_arrays(format=key, **kw)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
