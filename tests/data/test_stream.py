"""Streaming: same batches as map-style, lazy reading, disjoint rank shares, exact resume, bad rows."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_swift.data import sources
from lit_swift.data.datamodule import SFTDataModule
from lit_swift.data.embedding import EmbeddingDataModule
from lit_swift.data.plan import Encoded, check_trainer
from lit_swift.data.preference import KTODataModule, PreferenceDataModule
from lit_swift.data.prompts import PromptDataModule
from lit_swift.data.stream import RowStream, StreamLoader, StreamPlan, shuffle_buffer

SMOLLM2 = "smollm2-135m-instruct"


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def qa_rows(n: int) -> list[dict]:
    return [
        {"query": f"What is {i} + {i}?", "response": f"It is {2 * i}." + " Yes." * (i % 5)} for i in range(n)
    ]


def same(a: list[dict], b: list[dict]) -> bool:
    def equal(x, y) -> bool:
        return torch.equal(x, y) if torch.is_tensor(x) else x == y

    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=False)
    )


def sft(path: str, **kwargs) -> SFTDataModule:
    args = {"max_length": 128, "batch_size": 4, "shuffle": False, **kwargs}
    dm = SFTDataModule(SMOLLM2, path, **args)
    dm.setup("fit")
    return dm


# ----- toy streams: row i of the file is the item i -----
def toy_file(tmp_path, n: int) -> str:
    return write_jsonl(tmp_path / "toy.jsonl", [{"text": str(i)} for i in range(n)])


def toy_loader(path: str, num_workers: int = 0, **plan) -> StreamLoader:
    rows = RowStream([sources.DatasetSpec(path)], "text", lambda row, where, raw: Encoded([int(row.text)]))
    args = {
        "units": lambda items: ((item,) for item in items),
        "weight": len,
        "collate": lambda units, total: {"ids": [i for unit in units for _, i in unit], "total": total},
        "batch_size": 2,
        **plan,
    }
    return StreamLoader(rows, StreamPlan(**args), num_workers)


def test_shuffle_buffer_is_a_seeded_permutation():
    def shuffled(seed: int, size: int = 10) -> list[int]:
        return list(shuffle_buffer(iter(range(100)), size, random.Random(seed)))

    assert sorted(shuffled(0)) == list(range(100)) and shuffled(0) != list(range(100))
    assert shuffled(0) == shuffled(0) and shuffled(0) != shuffled(1)
    assert sorted(shuffled(0, size=1000)) == list(range(100))  # a buffer larger than the stream


def test_ranks_get_disjoint_complete_shares(tmp_path):
    """21 rows, batch 2, accumulate 2, 2 ranks: steps of 8 rows; 2 full steps, the ragged 5 rows left out."""
    path = toy_file(tmp_path, 21)
    layout = {"accumulate": 2, "world_size": 2, "shuffle_buffer": 5, "seed": 3}
    loaders = [toy_loader(path, rank=r, **layout) for r in (0, 1)]
    shares = [list(loader) for loader in loaders]
    ids = [[i for b in share for i in b["ids"]] for share in shares]
    assert len(shares[0]) == len(shares[1]) == 4 and not set(ids[0]) & set(ids[1])
    assert len(set(ids[0] + ids[1])) == 16 and all(b["total"] == 8 for share in shares for b in share)
    assert loaders[0].report.num_dropped == 3  # micro-batches of the ragged last step
    single = [i for b in toy_loader(path, shuffle_buffer=5, seed=3) for i in b["ids"]]
    assert sorted(single) == list(range(21))  # one rank, no accumulation: every row once, nothing dropped
    assert ids[0][:4] + ids[1][:4] == single[:8]  # rank 0 takes the step's first 2 micro-batches


def test_workers_split_encoding_but_keep_stream_order(tmp_path):
    path = toy_file(tmp_path, 23)
    in_process = list(toy_loader(path, shuffle_buffer=4, accumulate=3))
    assert same(list(toy_loader(path, num_workers=2, shuffle_buffer=4, accumulate=3)), in_process)


def test_epochs_reshuffle_reproducibly(tmp_path):
    path = toy_file(tmp_path, 30)
    loader = toy_loader(path, shuffle_buffer=8)

    def epoch(e: int) -> list[int]:
        loader.set_epoch(e)
        return [i for b in loader for i in b["ids"]]

    assert epoch(0) == epoch(0) and epoch(0) != epoch(1) and sorted(epoch(1)) == list(range(30))


def test_resume_replays_to_the_position_and_checks_it(tmp_path):
    path = toy_file(tmp_path, 12)
    loader = toy_loader(path, shuffle_buffer=3)
    full = list(loader)
    loader.resume_at(0, 2, rows_read=loader.rows_read_at(2))
    assert list(loader) == full[2:]
    loader.resume_at(0, 2, rows_read=99)
    with pytest.warns(UserWarning, match="took 7 records, the checkpoint recorded 99; the data changed"):
        assert list(loader) == full[2:]
    loader.resume_at(0, 9)
    with pytest.warns(UserWarning, match="epoch 0 has 6 batches, the checkpoint had done 9"):
        assert list(loader) == []


def test_reader_is_lazy_and_memory_bounded(tmp_path, monkeypatch):
    """setup reads no training row; each batch needs only the rows of the shuffle buffer and one batch."""
    path = write_jsonl(tmp_path / "big.jsonl", qa_rows(3000))
    num_read = [0]
    read_jsonl = sources._READERS[".jsonl"]

    def counting(p):
        for record in read_jsonl(p):
            num_read[0] += 1
            yield record

    monkeypatch.setitem(sources._READERS, ".jsonl", counting)
    dm = sft(path, streaming=True, shuffle=True, shuffle_buffer=16)
    assert num_read[0] == 0 and dm.train_samples == []
    batches = iter(dm.train_dataloader())
    for k in range(1, 4):
        next(batches)
        assert num_read[0] == 16 + 4 * k == dm._stream.rows_read  # buffer full, then 4 rows per batch


def test_stream_equals_map_style_without_shuffle(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(22))
    assert same(list(sft(path, streaming=True).train_dataloader()), list(sft(path).train_dataloader()))
    packed = {"packing": True, "batch_size": 2}
    # one packing buffer holding every sample = the map-style FFD over the whole file
    stream = sft(path, streaming=True, packing_buffer=100, **packed)
    assert same(list(stream.train_dataloader()), list(sft(path, **packed).train_dataloader()))


def test_packed_stream_serves_every_sample_once(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    dm = sft(path, streaming=True, packing=True, packing_buffer=7, shuffle=True, shuffle_buffer=5)
    batches = list(dm.train_dataloader())
    served = sorted(
        tuple(b["input_ids"][b["segment_ids"] == k].tolist())
        for b in batches
        for k in range(int(b["num_samples"]))
    )
    assert served == sorted(tuple(s.input_ids) for s in sft(path).train_samples)
    assert all(b["input_ids"].shape[1] <= 128 and "cu_seqlens" in b for b in batches)


def test_resume_continues_with_the_next_batch(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(30))
    args = {"streaming": True, "shuffle": True, "shuffle_buffer": 6, "packing": True, "packing_buffer": 9}
    dm = sft(path, **args, batch_size=2)
    loader = dm.train_dataloader()
    loader.set_epoch(1)
    full = list(loader)
    state = {"epoch": 1, "batches_done": 3}
    state["stream"] = {"seed": 42, "epoch": 1, "batches_done": 3, "rows_read": loader.rows_read_at(3)}
    resumed = sft(path, **args, batch_size=2)
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    loader.set_epoch(1)
    assert same(list(loader), full[3:])
    assert same(list(loader), full)  # the skip applies to one pass only
    with pytest.raises(ValueError, match="seed 42, this run has seed 7"):
        sft(path, **args, seed=7).load_state_dict(state)


class Recorder(L.LightningModule):
    """Records the token ids of every training batch; trains nothing that changes the data."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].tolist())
        return self.weight.sum() * batch["input_ids"].float().mean()

    def configure_optimizers(self):
        assert self.trainer.estimated_stepping_batches > 0  # builds the train loader early, as objectives do
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(
    path: str,
    root,
    max_steps: int,
    ckpt: str | None = None,
    at_epoch_end: bool = False,
    streaming: bool = True,
) -> list:
    """The batches a run of `max_steps` sees; it saves `last.ckpt` every step, or at epoch (and train) end."""
    stream_args = {"shuffle_buffer": 4, "num_workers": 1} if streaming else {}
    dm = SFTDataModule(SMOLLM2, path, max_length=128, batch_size=2, streaming=streaming, **stream_args)
    when = {"every_n_epochs": 1} if at_epoch_end else {"every_n_train_steps": 1}
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, **when)],
        default_root_dir=root,
    )
    model = Recorder()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model.seen


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[str, list]:
    """10 rows, batch 2: 5 batches per epoch; 8 steps run into epoch 1."""
    root = tmp_path_factory.mktemp("uninterrupted")
    path = write_jsonl(root / "qa.jsonl", qa_rows(10))
    return path, fit(path, root, 8)


@pytest.mark.parametrize(
    "stop, at_epoch_end",
    [(3, False), (6, False), (5, False), (5, True)],
    ids=["mid-epoch-0", "mid-epoch-1", "last-batch-of-epoch-0", "saved-at-train-end"],
)
def test_lightning_resume_matches_the_uninterrupted_run(uninterrupted, tmp_path, stop, at_epoch_end):
    """A run cut at `stop` and resumed from its last.ckpt to step 8 sees the batches of the uninterrupted run.

    The checkpoint names where to continue: mid-epoch, the running epoch after its batches done; at an
    epoch's last batch or at the end of training, the start of the next epoch.
    """
    path, full = uninterrupted
    assert len(full) == 8 and full[5:8] != full[:3]  # epoch 1 is reshuffled
    first = fit(path, tmp_path, stop, at_epoch_end=at_epoch_end)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["SFTDataModule"]["stream"]
    assert state["seed"] == 42 and (state["epoch"], state["batches_done"]) == divmod(stop, 5)
    resumed = fit(path, tmp_path, 8, str(tmp_path / "last.ckpt"), at_epoch_end)
    assert first + resumed == full


@pytest.mark.parametrize("stop, at_epoch_end", [(3, False), (5, False), (5, True)])
def test_map_style_lightning_resume_matches_the_uninterrupted_run(tmp_path, stop, at_epoch_end):
    """The same checkpoint positions for map-style data (a save at train end used to lose epoch 1)."""
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(10))
    full = fit(path, tmp_path / "full", 8, streaming=False)
    first = fit(path, tmp_path, stop, at_epoch_end=at_epoch_end, streaming=False)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["SFTDataModule"]
    assert (state["epoch"], state["batches_done"]) == divmod(stop, 5)
    resumed = fit(path, tmp_path, 8, str(tmp_path / "last.ckpt"), at_epoch_end, streaming=False)
    assert first + resumed == full


def test_bad_row_raises_when_the_stream_reaches_it(tmp_path):
    rows = qa_rows(40)
    rows[25] = '{"query": "broken",'
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    dm = sft(path, streaming=True)  # setup does not read the file, so it cannot see the bad row
    batches = iter(dm.train_dataloader())
    assert len([next(batches) for _ in range(6)]) == 6  # rows 1-24
    with pytest.raises(ValueError, match=r"qa.jsonl:26: invalid JSON at column 20: Expecting"):
        next(batches)


def test_skipped_and_truncated_rows_are_reported_per_pass(tmp_path, caplog):
    rows = qa_rows(12)
    rows[3], rows[7] = "[1, 2]", {"query": "no answer"}
    rows[5] = {"query": "long " * 100, "response": "short"}
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    dm = sft(path, streaming=True, on_bad_row="skip", truncation="drop")
    with caplog.at_level("INFO"):
        assert len(list(dm.train_dataloader())) == 3  # 9 rows kept
    assert "train stream, epoch 0: kept 10 of 12 rows (kind 'chat'); skipped 2: bad_type 1" in caplog.text
    assert "qa.jsonl:4: expected a JSON object, got list" in caplog.text
    assert (
        "train stream, epoch 0: 1 sample(s) handled by truncation=drop (longer than max_length 128)"
        in caplog.text
    )
    caplog.clear()
    batches = iter(dm.train_dataloader())
    next(batches)
    with caplog.at_level("INFO"):
        dm.teardown("fit")  # a run that stops mid-pass reports what it read so far
    assert "train stream, epoch 0 (run ended mid-pass): kept 4 of 5 rows" in caplog.text


def test_validation_and_trainer_requirements(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(6))
    with pytest.raises(ValueError, match="val_split=0.2 needs every training row up front"):
        sft(path, streaming=True, val_split=0.2)
    with pytest.raises(ValueError, match="no such file"):
        sft(str(tmp_path / "missing.jsonl"), streaming=True)
    dm = sft(path, streaming=True, val_dataset=path)
    assert len(dm.val_samples) == 6 and len(list(dm.val_dataloader())) == 2  # validation stays map-style

    def trainer(max_steps: int):
        connector = SimpleNamespace(use_distributed_sampler=False)
        return SimpleNamespace(world_size=1, max_steps=max_steps, _accelerator_connector=connector)

    check_trainer(trainer(-1))
    check_trainer(trainer(10), streaming=True)
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        check_trainer(trainer(-1), streaming=True)


def test_other_datamodules_stream_like_their_map_style(tmp_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"Say {i}.", "solution": str(i)} for i in range(5)]
    )
    pairs = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": f"{i}+{i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}", "margin": i}
            for i in range(5)
        ],
    )
    kto = write_jsonl(
        tmp_path / "k.jsonl", [{"prompt": f"{i}?", "completion": f"{i}", "label": i % 2} for i in range(5)]
    )
    texts = write_jsonl(
        tmp_path / "e.jsonl", [{"query": f"q{i}", "positive": f"p{i}", "negatives": ["n"]} for i in range(5)]
    )
    cases = [
        (PromptDataModule, prompts, {}),
        (PreferenceDataModule, pairs, {"margin_column": "margin"}),
        (KTODataModule, kto, {}),
        (EmbeddingDataModule, texts, {"num_negatives": 2}),
    ]
    for cls, path, extra in cases:
        batches = []
        for streaming in (False, True):
            dm = cls(SMOLLM2, path, batch_size=2, shuffle=False, streaming=streaming, **extra)
            dm.setup("fit")
            batches.append(list(dm.train_dataloader()))
        assert same(*batches), cls.__name__
    with pytest.raises(ValueError, match="need the training rows in memory"):
        dm = PreferenceDataModule(SMOLLM2, pairs, streaming=True)
        dm.setup("fit")
        assert dm.num_row_ids
