from dataclasses import replace

import datasets
import pytest
import torch

from e2e.config import DataConfig
from e2e.data import tokens
from e2e.data.tokens import DataUnavailableError, TokenStream, check_dataset, eval_stream


class _Tok:
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [int(w) for w in text.split()]}


def _dataset(tmp_path):
    docs = [" ".join(str(10 * d + i) for i in range(1, 4 + d % 3)) for d in range(1, 30)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                          "validation": datasets.Dataset.from_dict({"text": docs[:5]})}
                         ).save_to_disk(str(tmp_path / "ds"))
    return DataConfig(dataset=str(tmp_path / "ds"), column="text", context_length=7,
                      eval_split="validation")


def test_eos_between_documents_no_bos_fixed_context(tmp_path):
    cfg = _dataset(tmp_path)
    batch = TokenStream(cfg, _Tok(), 0, "train").next_batch(6)
    assert batch.shape == (6, 7)
    flat = batch.flatten().tolist()
    docs = [d for d in " ".join(map(str, flat)).split(" 0") if d.strip()]
    for d in docs[:-1]:  # each complete document: consecutive tokens of one doc id
        ids = [int(t) for t in d.split()]
        assert len({t // 10 for t in ids}) == 1 and ids == sorted(ids)
    assert flat[0] != 0  # the stream starts with a document token, not a BOS/EOS


def test_order_is_deterministic_from_seed(tmp_path):
    cfg = _dataset(tmp_path)
    a = TokenStream(cfg, _Tok(), 3, "train").next_batch(8)
    b = TokenStream(cfg, _Tok(), 3, "train").next_batch(8)
    c = TokenStream(cfg, _Tok(), 4, "train").next_batch(8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_state_restores_mid_stream_and_across_epochs(tmp_path):
    cfg = _dataset(tmp_path)
    s = TokenStream(cfg, _Tok(), 0, "train")
    s.next_batch(5)
    state = s.state_dict()
    want = torch.cat([s.next_batch(5) for _ in range(8)])  # runs past an epoch boundary
    r = TokenStream(cfg, _Tok(), 0, "train")
    r.load_state_dict(state)
    assert torch.equal(torch.cat([r.next_batch(5) for _ in range(8)]), want)


def test_eval_stream_held_out_or_paper_seed_offset(tmp_path):
    cfg = _dataset(tmp_path)
    assert eval_stream(cfg, _Tok(), 0).split == "validation"
    paper = eval_stream(replace(cfg, eval_split=None), _Tok(), 0)
    assert (paper.split, paper.seed) == ("train", 42)


def _hub_stand_in(monkeypatch):
    """A streamed dataset like the hub's: 8 shards, 4,000 short documents, read through the
    same `_open_streaming` a hub name goes through (issue 20, item 1)."""
    import e2e.data.tokens as tokens

    def gen(shards):
        for s in shards:
            for i in range(500):
                yield {"text": " ".join(str(1 + (s * 500 + i + j) % 997) for j in range(1 + i % 9))}

    def open_streaming(name, split):
        return datasets.IterableDataset.from_generator(gen, gen_kwargs={"shards": list(range(8))})

    monkeypatch.setattr(tokens, "_open_streaming", open_streaming)
    return DataConfig(dataset="stand-in/hub", column="text", context_length=16,
                      shuffle_buffer=50)


def test_a_streamed_dataset_resumes_exactly_with_a_shuffle_buffer(monkeypatch):
    cfg = _hub_stand_in(monkeypatch)
    whole = TokenStream(cfg, _Tok(), 0, "train")
    want = [whole.next_batch(32) for _ in range(23)]
    s = TokenStream(cfg, _Tok(), 0, "train")
    for _ in range(3):
        s.next_batch(32)
    r = TokenStream(cfg, _Tok(), 0, "train")
    r.load_state_dict(s.state_dict())
    got = [r.next_batch(32) for _ in range(20)]
    assert sum(torch.equal(a, b) for a, b in zip(got, want[3:], strict=True)) == 20


def test_a_streamed_dataset_resumes_exactly_across_an_epoch(monkeypatch):
    cfg = _hub_stand_in(monkeypatch)
    s = TokenStream(cfg, _Tok(), 0, "train")
    n_epoch = 0
    while s.epoch == 0:  # find the batch at which the first epoch ends (≈ 4,000 docs)
        s.next_batch(64)
        n_epoch += 1
    whole = TokenStream(cfg, _Tok(), 0, "train")
    want = [whole.next_batch(64) for _ in range(n_epoch + 5)]
    s = TokenStream(cfg, _Tok(), 0, "train")
    for _ in range(n_epoch + 1):
        s.next_batch(64)
    assert s.epoch == 1
    r = TokenStream(cfg, _Tok(), 0, "train")
    r.load_state_dict(s.state_dict())
    got = [r.next_batch(64) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(got, want[n_epoch + 1:], strict=True))
    assert not torch.equal(want[0], want[n_epoch + 1])  # the second epoch is reshuffled


def _empty_rows(tmp_path, column: str, empty, n: int = 30) -> DataConfig:
    kind = datasets.Value("string") if column == "text" else datasets.Sequence(
        datasets.Value("int64"))
    ds = datasets.Dataset.from_dict({column: [empty] * n}, datasets.Features({column: kind}))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "empty"))
    return DataConfig(dataset=str(tmp_path / "empty"), column=column, context_length=7)


@pytest.mark.parametrize("column, empty", [("text", ""), ("text", "   "), ("input_ids", [])])
def test_a_dataset_of_empty_rows_is_refused_by_the_plan_and_stops_a_stream(tmp_path, monkeypatch,
                                                                           column, empty):
    """Issue 43: such a stream spun for ever (10 min of CPU, deaf to SIGTERM); now the plan's
    check refuses the dataset in one line, and a stream gives up after a bounded number of
    documents without a usable token (here 100: 3 epochs and more; an empty text is an EOS,
    so 20 rows of 7 take 140 documents)."""
    cfg = _empty_rows(tmp_path, column, empty)
    with pytest.raises(DataUnavailableError, match="has no usable row: its 30 rows'"):
        check_dataset(cfg)
    monkeypatch.setattr(tokens, "MAX_EMPTY_DOCS", 100)
    with pytest.raises(DataUnavailableError, match="100 documents in a row without a token"):
        TokenStream(cfg, _Tok(), 0, "train").next_batch(20)


def test_a_dataset_with_no_rows_is_one_error_not_a_recursion(tmp_path, monkeypatch):
    cfg = _empty_rows(tmp_path, "text", "", n=0)
    with pytest.raises(DataUnavailableError, match="cannot be read as a saved dataset"):
        check_dataset(cfg)  # datasets itself cannot open a saved dataset of no rows
    monkeypatch.setattr(tokens, "_open_local", lambda path, split: datasets.Dataset.from_dict(
        {"text": []}, datasets.Features({"text": datasets.Value("string")})))
    with pytest.raises(DataUnavailableError, match="has no rows"):  # as one in memory
        TokenStream(cfg, _Tok(), 0, "train").next_batch(1)


def test_a_dataset_whose_first_rows_are_empty_is_not_refused(tmp_path):
    """The plan's probe reads rows spread over the dataset, then all of them: 1,000 empty rows
    before 500 of text (a newcomer's case) are a usable dataset; 3,000 empty rows are not."""
    docs = [""] * 1000 + ["1 2 3"] * 500
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(
        str(tmp_path / "late"))
    check_dataset(DataConfig(dataset=str(tmp_path / "late"), column="text", context_length=7))
    few = [""] * 3000  # one usable row the spread probe (rows 0, 3, 6, ...) misses: the scan
    few[1] = "1 2"     # finds it
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": few})}).save_to_disk(
        str(tmp_path / "one"))
    check_dataset(DataConfig(dataset=str(tmp_path / "one"), column="text", context_length=7))


def test_a_few_empty_rows_among_real_ones_are_read_past(tmp_path):
    docs = ["", "1 2 3", "", "", "4 5 6 7 8"] * 6
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(
        str(tmp_path / "mixed"))
    cfg = DataConfig(dataset=str(tmp_path / "mixed"), column="text", context_length=7)
    check_dataset(cfg)
    assert TokenStream(cfg, _Tok(), 0, "train").next_batch(3).shape == (3, 7)
