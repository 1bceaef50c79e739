"""The plan's checks of a model folder and its tokenizer (`jobs.plan.sources.check_sources`,
issue 43): what used to fail in the cell, a while after submission, is one line before
anything is written."""

from __future__ import annotations

import re
import shutil

import datasets
import pytest
import torch

from e2e.config import CellConfig, ConfigError, DataConfig, ModelConfig
from jobs.plan.sources import check_sources


@pytest.fixture(scope="module")
def model_and_text(tmp_path_factory):
    """A tiny GPT-2 with its own tokenizer (embedding rows = tokens), and a text dataset."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from e2e.lm.pretrain import train_tokenizer

    root = tmp_path_factory.mktemp("sources")
    text = ["In the beginning God created the heaven and the earth."] * 20
    tok = train_tokenizer(text, 300)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2,
                               n_positions=64)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": text})}).save_to_disk(
        str(root / "text"))
    return root


def _cfg(model, data) -> CellConfig:
    return CellConfig(model=ModelConfig(str(model)),
                      data=DataConfig(dataset=str(data), column="text", context_length=16))


def test_a_model_and_its_own_tokenizer_pass(model_and_text):
    check_sources(_cfg(model_and_text / "model", model_and_text / "text"))


def test_a_tokenizer_with_tokens_past_the_embedding_is_refused_for_text(model_and_text,
                                                                        tmp_path):
    from transformers import AutoTokenizer

    shutil.copytree(model_and_text / "model", tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    n = len(tok)
    tok.add_tokens(["<extra_0>", "<extra_1>"])
    tok.save_pretrained(tmp_path / "model")
    with pytest.raises(ConfigError, match=f"has {n + 2:,} tokens but the model's embedding "
                                          f"{n:,} rows"):
        check_sources(_cfg(tmp_path / "model", model_and_text / "text"))


def test_a_model_folder_without_a_tokenizer_is_refused(model_and_text, tmp_path):
    shutil.copytree(model_and_text / "model", tmp_path / "model")
    for f in (tmp_path / "model").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    with pytest.raises(ConfigError, match="has no tokenizer"):
        check_sources(_cfg(tmp_path / "model", model_and_text / "text"))


def test_a_real_lm_grid_given_a_dataset_without_its_eval_split_is_refused_by_the_plan(
        model_and_text, tmp_path):
    """Issue 43: `grid=smollm2` reads its own LM unless told otherwise; with another model and
    a text dataset that has no `validation` split, the plan passed and every cell failed at
    start. Sources not built by the grid are checked as on any grid."""
    from jobs.plan.make import make_plan

    args = ["grid=smollm2", f"root={tmp_path / 'root'}", "executor=local", "layers=[1]",
            f"model.name_or_path={model_and_text / 'model'}", "data.column=text",
            f"data.dataset={model_and_text / 'text'}", "data.context_length=16"]
    with pytest.raises(ConfigError, match="text has no split 'validation'; it has \\['train'\\]"):
        make_plan(args)
    assert make_plan([*args, "data.eval_split=train"]).cells
    assert not (tmp_path / "root").exists()


def test_excluded_tokens_are_checked_against_the_models_tokenizer(model_and_text):
    """`data.exclude_tokens`: `special` means the tokenizer's special ids; ids outside the
    vocabulary, and `special` for a tokenizer without special tokens, are one line each."""
    from dataclasses import replace

    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from e2e.model import positions_for

    cfg = _cfg(model_and_text / "model", model_and_text / "text")
    tok = AutoTokenizer.from_pretrained(model_and_text / "model")
    special = replace(cfg.data, exclude_tokens="special")
    check_sources(replace(cfg, data=special))
    got = positions_for(special, tok, len(tok))
    assert got.exclude == tuple(sorted(tok.all_special_ids)) and tok.eos_token_id in got.exclude
    assert positions_for(replace(special, exclude_tokens="special,7"), tok, len(tok)).exclude \
        == tuple(sorted({*tok.all_special_ids, 7}))
    with pytest.raises(ConfigError, match=r"id\(s\) \[5000\] outside the model's vocabulary"):
        check_sources(replace(cfg, data=replace(cfg.data, exclude_tokens="[0,5000]")))
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")))
    with pytest.raises(ConfigError, match="the model's tokenizer has no special tokens"):
        positions_for(special, bare, 3)
    for bad in ("eos", "[0,2", "0,2]", "[]", "[0,,2]", "-1"):
        with pytest.raises(ConfigError, match=f"data.exclude_tokens='{re.escape(bad)}' is "
                                              "invalid: must be special, token ids"):
            replace(cfg.data, exclude_tokens=bad)
    for bad in (float("inf"), float("nan"), 1.0):
        with pytest.raises(ConfigError, match="exclude_norm_multiple=.* must be 0 .off. or > 1"):
            replace(cfg.data, exclude_norm_multiple=bad)
    with pytest.raises(ConfigError, match="data.context_length=1 is invalid"):
        replace(cfg.data, context_length=1)
    with pytest.raises(ConfigError, match="unset with source=synthetic"):
        replace(cfg, source="synthetic", loss=replace(cfg.loss, setting="local"),
                data=replace(cfg.data, exclude_tokens="[3]"))
    every = replace(cfg.data, exclude_tokens=f"[{','.join(map(str, range(len(tok))))}]")
    with pytest.raises(ConfigError, match=f"names every id of the model's vocabulary "
                                          f"\\({len(tok)}\\), so no position is left"):
        positions_for(every, tok, len(tok))
    positions_for(replace(every, exclude_tokens=f"[{','.join(map(str, range(1, len(tok))))}]"),
                  tok, len(tok))  # one id left: rows may still hold it
    with pytest.raises(ConfigError, match="data.skip_positions=15 is invalid: must be >= 0 and "
                                          "<= data.context_length - 2 \\(14\\)"):
        replace(cfg.data, context_length=16, skip_positions=15)  # no position predicts a token


def test_one_exclusion_spelled_differently_is_one_cell(tmp_path):
    """Cell ids hash the config: an id list is stored sorted, once each, whatever its spelling;
    `special` is unchanged (the folders of grid=smollm2 keep their names)."""
    from jobs.plan.make import make_plan

    def first(value: str):
        plan = make_plan(["grid=smollm2", f"root={tmp_path}", "executor=local", "layers=[6]",
                          f"data.exclude_tokens={value}", "dry_run=true"])
        return plan.cells[0].cfg.data.exclude_tokens, plan.cells[0].dir.name

    assert first("[0,1,2]") == first("[2, 1,0]") == first("[1,0,2,2]") == ("[0,1,2]", first(
        "[0,1,2]")[1])
    assert first("special,5,1") == first("5,special,1")
    assert first("special")[0] == "special" and first("special")[1] != first("[0,1,2]")[1]
    assert first("special")[1] == make_plan(["grid=smollm2", f"root={tmp_path}",
                                             "executor=local", "layers=[6]", "dry_run=true"]
                                            ).cells[0].dir.name


def test_a_grid_whose_own_lm_is_not_built_yet_checks_the_excluded_ids_at_the_plan(tmp_path):
    """The vocabulary of a grid's own LM is known before it is built (SmolLM2's GGUF: 49,152
    ids, special 0-2; the small LM: its `vocab_size`, EOS 0): ids past it are one line at the
    plan, not a failure of every cell after the build. Nothing is written."""
    from jobs.plan.make import make_plan

    for grid, vocab in (("smollm2", 49152), ("smoke", 512)):
        for dry in ("true", "false"):
            with pytest.raises(ConfigError, match=rf"id\(s\) \[{vocab}\] outside the model's "
                                                  rf"vocabulary \(0..{vocab - 1}\)"):
                make_plan([f"grid={grid}", f"root={tmp_path}", "executor=local",
                           f"data.exclude_tokens=[3,{vocab}]", f"dry_run={dry}"])
    # a hub model the dry run does not reach: its vocabulary from the grid's `model_sizes`
    for grid, vocab in (("pythia-410m", 50304), ("paper", 50257)):
        with pytest.raises(ConfigError, match=rf"id\(s\) \[{vocab}\] outside"):
            make_plan([f"grid={grid}", f"root={tmp_path}", "executor=local", "dry_run=true",
                       f"data.exclude_tokens=special,{vocab}"])
    assert list(tmp_path.iterdir()) == []


def test_relative_model_and_data_paths_are_made_absolute_by_the_plan(model_and_text, tmp_path,
                                                                     monkeypatch):
    """A model or dataset given relative to the working directory (`../m`, `./m`) names the
    same folder in every cell: the plan makes it absolute before hashing and storing it (a
    cell folder reads `../` paths relative to itself)."""
    import os

    from jobs.plan.make import make_plan

    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    rel = os.path.relpath(model_and_text, here)
    assert rel.startswith("..")
    plan = make_plan(["grid=smollm2", "root=runs", "executor=local", "layers=[1]",
                      f"model.name_or_path={rel}/model", f"data.dataset={rel}/text",
                      "data.column=text", "data.context_length=16", "data.eval_split=train",
                      "dry_run=true"])
    cfg = plan.cells[0].cfg
    assert cfg.model.name_or_path == str(model_and_text / "model")
    assert cfg.data.dataset == str(model_and_text / "text")
    assert not plan.needs_pretrain  # no cell reads the grid's own LM: it is not built
    with pytest.raises(ConfigError, match=r"id\(s\) \[5000\] outside"):  # the dry run too
        make_plan(["grid=smollm2", "root=runs", "executor=local", "layers=[1]",
                   f"model.name_or_path={rel}/model", f"data.dataset={rel}/text",
                   "data.column=text", "data.context_length=16", "data.eval_split=train",
                   "data.exclude_tokens=[5000]", "dry_run=true"])
    (here / "gpt2").mkdir()  # a grid's default hub id is never taken for a folder of the cwd
    paper = make_plan(["grid=paper", "root=runs", "executor=local", "layers=[6]",
                       "settings=[local]", "dry_run=true"])
    assert paper.cells[0].cfg.model.name_or_path == "gpt2"


def test_a_grid_whose_own_lm_is_not_built_yet_refuses_a_split_its_rows_will_not_have(tmp_path):
    """Issue 43: on a fresh root `grid=smoke data.eval_split=nope` passed the plan, pre-trained
    the LM, then failed every cell; the splits and column of a grid's own rows are known."""
    from jobs.plan.make import make_plan

    with pytest.raises(ConfigError, match=r"data.eval_split=nope is invalid: the grid's own "
                                          r"token rows \(.*\) will have \['train', 'validation'\]"):
        make_plan(["grid=smoke", f"root={tmp_path}", "executor=local", "data.eval_split=nope"])
    with pytest.raises(ConfigError, match="data.eval_split=nope is invalid"):  # the dry run too
        make_plan(["grid=smoke", f"root={tmp_path}", "executor=local", "data.eval_split=nope",
                   "dry_run=true"])
    assert list(tmp_path.iterdir()) == []


def test_pre_tokenized_rows_with_ids_past_the_embedding_are_refused_by_the_plan(model_and_text,
                                                                              tmp_path):
    """Issue 43's case for rows without a tokenizer record: ids up to 999 for an embedding of
    fewer rows failed the cell with an IndexError; the plan reads ids spread over the rows."""
    from dataclasses import replace

    n = len(__import__("transformers").AutoTokenizer.from_pretrained(model_and_text / "model"))
    rows = [[1, 2, 3, 4] * 4] * 40
    rows[33] = [5, 999] * 8
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": rows})}).save_to_disk(
        str(tmp_path / "ids"))
    cfg = _cfg(model_and_text / "model", tmp_path / "ids")
    cfg = replace(cfg, data=replace(cfg.data, column="input_ids"))
    with pytest.raises(ConfigError, match=f"holds token id 999 but the model's embedding has "
                                          f"{n:,} rows"):
        check_sources(cfg)
