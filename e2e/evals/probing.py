"""Sparse probing as PyPI `sae-probes` 0.4.2 runs it (Kantamneni et al. 2025, "Are Sparse
Autoencoders Useful? A Case Study in Sparse Probing"; SAEBench's `sparse_probing_sae_probes`),
"normal" setting, pinned against its own code in tests/test_evals_probing.py.

- Data: the binary classification datasets its wheel ships (`sae_probes/data/cleaned_data/
  *.csv.zst`, listed in `probing_datasets_MASTER.csv.zst`), read from the wheel itself, which
  `make install` downloads beside the GGUF (no hub); labels by scikit-learn's LabelEncoder; the
  first `max_rows` rows (its MAX_AMT, 5,000).
- Split (`normal_split`): `min(size - 100, 1024)` training rows, half of each class, the rest
  of the loaded rows (less one) for the test, drawn by `numpy.random.RandomState(seed)` as its
  `get_train_test_indices` draws them.
- Activations (`last_token_resid`): the residual at `blocks.<layer>.hook_resid_pre` of each
  prompt's last token, the prompt tokenized as its `model.tokenizer` does (TransformerLens's
  tokenizer with BOS, the text truncated from the left to fit `max_seq_len`, 1,024). They are
  the model's as this project runs it (the space the dictionary was trained in).
- Probes (`sparse_probe`): latents ranked by |mean(class 1) - mean(class 0)| after
  `mean_act_normalization`, a logistic regression on the top k (L1, saga) whose C is chosen
  from 10 values by validation AUC (`find_best_reg`), then test accuracy, AUC, weighted F1.
  The baseline on the raw residual is its `logreg` baseline (L2, every dimension).
"""

from __future__ import annotations

import functools
import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from e2e.data.tokens import DataUnavailableError
from e2e.lm.corpus import sources_dir
from e2e.model import Positions, resid_pre

WHEEL = "sae_probes-0.4.2-py3-none-any.whl"
DATA = "sae_probes/data/"
KS = (1, 2, 5)  # SAEBench's default k values


def wheel_path() -> Path:
    """The sae-probes wheel (`make install` downloads it); DataUnavailableError without it."""
    path = sources_dir() / WHEEL
    if not path.exists():
        raise DataUnavailableError(
            f"sparse probing reads its datasets from {path}, which is missing: "
            f"pip download --no-deps sae-probes==0.4.2 -d {sources_dir()} (make install does)")
    return path


@functools.lru_cache(maxsize=32)
def _read_csv(wheel: Path, member: str):
    """A CSV of the wheel, read once per process (as sae-probes caches its reads): the step
    reads each dataset once per dictionary; callers never modify the frame."""
    import pandas as pd

    with zipfile.ZipFile(wheel) as z:
        return pd.read_csv(io.BytesIO(z.read(DATA + member)), compression="zstd")


def _master(wheel: Path):
    df = _read_csv(wheel, "probing_datasets_MASTER.csv.zst")
    return df[df["Data type"] == "Binary Classification"]


def binary_datasets(wheel: Path | None = None) -> list[str]:
    """The numbered tags of the wheel's binary datasets (`100_news_fake`, ...), its order."""
    names = _master(wheel or wheel_path())["Dataset save name"]
    return [n.split("/")[-1].split(".")[0] for n in names]


def read_dataset(tag: str, wheel: Path | None = None) -> tuple[list[str], np.ndarray, int]:
    """(prompts, labels 0/1, the dataset's full size) of a numbered tag; ValueError naming the
    tags if it is not one of the wheel's."""
    from sklearn.preprocessing import LabelEncoder

    wheel = wheel or wheel_path()
    tags = binary_datasets(wheel)
    if tag not in tags:
        raise ValueError(f"{tag!r} is not a dataset of sae-probes 0.4.2; its binary datasets: "
                         f"{', '.join(tags)}")
    # as sae-probes reads a numbered tag: the first row whose tag is the part after the number
    master = _master(wheel)
    save_name = master[master["Dataset Tag"] == tag.split("_", 1)[1]]["Dataset save name"]
    df = _read_csv(wheel, save_name.iloc[0] + ".zst")
    return df["prompt"].tolist(), LabelEncoder().fit_transform(df["target"].values), len(df)


def train_test_indices(y: np.ndarray, num_train: int, num_test: int, pos_ratio: float = 0.5,
                       seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """sae-probes' `get_train_test_indices`: class-balanced draws without replacement."""
    rng = np.random.RandomState(seed)
    pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]
    pos_train = int(np.ceil(pos_ratio * num_train))
    pos_test = int(np.ceil(pos_ratio * num_test))
    train_pos = rng.choice(pos, size=pos_train, replace=False)
    train_neg = rng.choice(neg, size=num_train - pos_train, replace=False)
    test_pos = rng.choice(np.setdiff1d(pos, train_pos), size=pos_test, replace=False)
    test_neg = rng.choice(np.setdiff1d(neg, train_neg), size=num_test - pos_test,
                          replace=False)
    return (rng.permutation(np.concatenate([train_pos, train_neg])),
            rng.permutation(np.concatenate([test_pos, test_neg])))


def normal_split(y: np.ndarray, size: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """The "normal" setting's split of the loaded rows' labels `y` of a dataset of `size` rows
    (`generate_sae_activations_normal`); ValueError when they cannot hold it."""
    num_train = min(size - 100, 1024)
    num_test = len(y) - num_train - 1
    why = f"{len(y)} rows cannot hold its {num_train} class-balanced training rows and a test set"
    if num_test < 1 or num_train + min(100, num_test) > len(y):
        raise ValueError(why)
    try:
        return train_test_indices(y, num_train, num_test, 0.5, seed)
    except ValueError:  # a class with too few rows for its half
        raise ValueError(why) from None


def prompt_ids(tokenizer, prompt: str, max_seq_len: int = 1024) -> list[int]:
    """A prompt's ids as sae-probes runs them: TransformerLens's tokenizer with BOS (a BOS first
    unless the tokenizer adds one), truncated from the left to `max_seq_len` as a Hugging Face
    tokenizer truncates: the text's tokens, the BOS kept."""
    ids = tokenizer(prompt)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        return ids[-max_seq_len:]
    text = ids[1:] if ids and ids[0] == bos else ids
    return [bos, *text[len(text) - min(len(text), max_seq_len - 1):]]


def last_kept(ids: list[list[int]], positions: Positions | None = None) -> list[int]:
    """Each row's last position the dictionary acts on (`e2e.model.positions`: from `skip` on,
    its token not excluded; sae-probes reads the last token, where the field's SAEs act);
    ValueError naming the first row without one."""
    positions = positions or Positions()
    out = []
    for n, row in enumerate(ids):
        at = next((i for i in range(len(row) - 1, positions.skip - 1, -1)
                   if row[i] not in positions.exclude), None)
        if at is None:
            raise ValueError(f"prompt {n} has no position the dictionary acts on (its "
                             f"{len(row)} tokens are skipped or excluded)")
        out.append(at)
    return out


def last_token_resid(model, prompts: list[str], layer: int, max_seq_len: int = 1024,
                     batch_size: int = 32, positions: Positions | None = None) -> torch.Tensor:
    """(n, d_model) float32: each prompt's residual at `blocks.<layer>.hook_resid_pre` at its
    last token the dictionary acts on (`last_kept`)."""
    ids = [prompt_ids(model.tokenizer, p, max_seq_len) for p in prompts]
    return resid_at(model, ids, last_kept(ids, positions), layer, batch_size)


@torch.no_grad()
def resid_at(model, ids: list[list[int]], at: list[int], layer: int,
             batch_size: int = 32) -> torch.Tensor:
    """(n, d_model) float32: the residual at `blocks.<layer>.hook_resid_pre` of each token row
    `ids[i]` at position `at[i]`. Rows run in batches of similar length, padded on the right
    (a causal model: a pad never reaches an earlier position)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.cfg.d_model)
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        width = max(len(ids[i]) for i in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        for j, i in enumerate(rows):
            tokens[j, :len(ids[i])] = torch.tensor(ids[i])
        resid = resid_pre(model, tokens.to(model.cfg.device), layer)
        pos = torch.tensor([at[i] for i in rows], device=resid.device)
        out[rows] = resid[torch.arange(len(rows), device=resid.device), pos].float().cpu()
    return out


def one_blas_thread():
    """A context in which NumPy's and SciPy's BLAS run on one thread. The probes' products are
    small (at most 1,024 rows by d_model), and OpenBLAS's threads cost more than they give:
    sae-probes' dense baseline took 37 s on one dataset with 2 threads and 2.9 s with one, the
    same numbers (benchmarks/bench_probing.py)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def mean_act_normalization(x: torch.Tensor) -> torch.Tensor:
    """Each column divided by its mean |value| over the rows where it is non-zero."""
    col_means = x.abs().sum(0) / ((x != 0).sum(0) + 1e-6)
    return x / (col_means + 1e-6)


def ranked(x_train: torch.Tensor, y_train: torch.Tensor) -> torch.Tensor:
    """Column indices by |difference of class means| after `mean_act_normalization`, largest
    first (`get_sorted_indices`)."""
    x = mean_act_normalization(x_train)
    diff = x[y_train == 1].mean(0) - x[y_train == 0].mean(0)
    return torch.argsort(torch.abs(diff), descending=True)


@dataclass(frozen=True)
class ProbeMetrics:
    test_f1: float
    test_acc: float
    test_auc: float
    val_auc: float


def _logreg(penalty: str, seed: int, c: float | None = None):
    """sae-probes' classifier: L1 by saga or L2 by lbfgs, 1,000 iterations at most (L1 written
    as scikit-learn 1.8+ asks, `l1_ratio=1`, the same fit as its deprecated `penalty="l1"`)."""
    from sklearn.linear_model import LogisticRegression

    kw = {} if c is None else {"C": c}
    if penalty == "l1":
        return LogisticRegression(l1_ratio=1, solver="saga", random_state=seed, max_iter=1000,
                                  **kw)
    return LogisticRegression(random_state=seed, max_iter=1000, **kw)


def _cv_splits(x: np.ndarray, y: np.ndarray, seed: int) -> list:
    """`get_cv` then `get_splits`: leave-2-out (≤ 12 rows), 6 stratified folds (< 128), else
    the last min(20%, 100) rows; a fold is used when its validation holds both classes."""
    from sklearn.model_selection import LeavePOut, StratifiedKFold

    n = len(x)
    if n >= 128:
        val = min(int(0.2 * n), 100)
        return [(list(range(n - val)), list(range(n - val, n)))]
    cv = LeavePOut(2) if n <= 12 else StratifiedKFold(n_splits=6, shuffle=True,
                                                       random_state=seed)
    return [(a, b) for a, b in cv.split(x, y) if len(np.unique(y[b])) == 2]


def find_best_reg(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, penalty: str = "l2", seed: int = 42) -> ProbeMetrics:
    """sae-probes' `find_best_reg`: C from logspace(5, -5, 10) by mean validation AUC, a final
    fit on the training rows shuffled by RandomState(seed), the test metrics. In float64:
    scikit-learn converts sae-probes' torch tensors to it (a float32 array stays float32, and
    saga's path differs)."""
    x_train, x_test = (np.asarray(x, dtype=np.float64) for x in (x_train, x_test))
    with warnings.catch_warnings(), one_blas_thread():  # sae-probes silences them too: a
        warnings.simplefilter("ignore", ConvergenceWarning)  # probe stopped at 1,000
        return _find_best_reg(x_train, y_train, x_test, y_test, penalty, seed)  # is scored


def _find_best_reg(x_train, y_train, x_test, y_test, penalty, seed) -> ProbeMetrics:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    best_c, scores = None, []
    if len(x_train) > 3:
        splits = _cv_splits(x_train, y_train, seed)
        cs = np.logspace(5, -5, 10)
        for c in cs:
            fold = []
            for a, b in splits:
                if len(np.unique(y_train[a])) < 2:
                    fold.append(0.5)
                    continue
                m = _logreg(penalty, seed, c).fit(x_train[a], y_train[a])
                fold.append(roc_auc_score(y_train[b], m.predict_proba(x_train[b])[:, 1]))
            scores.append(np.mean(fold))
        best_c = cs[int(np.argmax(scores))]
    shuffle = np.random.RandomState(seed).permutation(len(x_train))
    model = _logreg(penalty, seed, best_c).fit(x_train[shuffle], y_train[shuffle])
    proba = model.predict_proba(x_test)[:, 1]
    val = (float(np.max(scores)) if best_c is not None else
           roc_auc_score(y_train[shuffle], model.predict_proba(x_train[shuffle])[:, 1]))
    pred = model.predict(x_test)
    return ProbeMetrics(float(f1_score(y_test, pred, average="weighted")),
                        float(accuracy_score(y_test, pred)),
                        float(roc_auc_score(y_test, proba)), float(val))


def sparse_probe(x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor,
                 y_test: np.ndarray, ks=KS, penalty: str = "l1", seed: int = 42
                 ) -> dict[int, ProbeMetrics]:
    """k -> the metrics of a probe on the top-k columns of x (n, n_latents: a dictionary's
    codes, or the raw residual's dimensions) by `ranked` (`run_sae_eval`)."""
    order = ranked(x_train.float(), torch.as_tensor(y_train))
    out = {}
    for k in ks:
        top = order[:k]
        out[k] = find_best_reg(x_train[:, top].numpy(), y_train, x_test[:, top].numpy(), y_test,
                               penalty, seed)
    return out
