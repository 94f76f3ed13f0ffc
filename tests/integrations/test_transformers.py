"""The Hugging Face Trainer (the real package, a tiny BERT built from a config, on CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import snapstore

transformers = pytest.importorskip("transformers")
from snapstore.integrations.transformers import record  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


class Sentences(Dataset):
    """Token ids (16,) with a label that depends on them: something a tiny BERT can learn."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 60, (n, 16), generator=g)
        self.labels = (self.ids[:, 0] > 32).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(16, dtype=torch.long), "labels": self.labels[i]}


def trainer(tmp_path: Path) -> Any:
    transformers.set_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].clone()),
                                    with_kwargs=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2,
                                          per_device_train_batch_size=4, per_device_eval_batch_size=5,
                                          gradient_accumulation_steps=2, report_to=[], save_strategy="no",
                                          logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    t = transformers.Trainer(model=model, args=args, train_dataset=Sentences(24, 1), eval_dataset=Sentences(10, 2))
    t.seen = seen
    return t


def test_record_a_trainer_in_one_line_with_per_sample_loss(tmp_path: Path) -> None:
    bare = trainer(tmp_path)
    bare.train()
    bare.evaluate()

    recorded = trainer(tmp_path)
    with record(recorded, tmp_path / "bert.snap"):
        recorded.train()
        metrics = recorded.evaluate()
    assert len(bare.seen) == len(recorded.seen) == 12 + 2
    for a, b in zip(bare.seen, recorded.seen):
        assert torch.equal(a, b)
    assert "get_train_dataloader" not in vars(recorded)  # the trainer is itself again

    snap = snapstore.open(tmp_path / "bert.snap")
    train, evaluation = snap["train"], snap["eval"]
    assert train.epochs == [0, 1] and evaluation.epochs == [0]
    steps = [b for b in recorded.seen[:12]]
    for e in range(2):
        ep = train.epoch(e)
        assert ep.complete and len(ep.order) == 24
        seen_ids = torch.cat(steps[6 * e:6 * e + 6])
        np.testing.assert_array_equal(ep.to_numpy()["input_ids"], seen_ids.numpy())
        assert np.isfinite(ep.outputs["loss"]).all() and (ep.outputs["loss"] > 0).all()
    ev = evaluation.epoch(0)
    assert ev.order.tolist() == list(range(10))
    assert np.isclose(ev.outputs["loss"].mean(), metrics["eval_loss"], rtol=1e-4)
