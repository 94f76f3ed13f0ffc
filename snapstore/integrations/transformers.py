"""Record the loaders of a Hugging Face ``Trainer``, with each sample's loss.

``Trainer`` builds its loaders itself (``get_train_dataloader`` and
``get_eval_dataloader``, each prepared by its Accelerator). ``record`` makes
those two methods of one trainer return recording streams of the loaders they
build, and its ``compute_loss`` log a loss per sample, so one line records
``train()`` and ``evaluate()``::

    with snapstore.integrations.transformers.record(trainer, "runs/bert.snap"):
        trainer.train()
        trainer.evaluate()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..recording import Recorder, RecordingLoader


def per_sample_loss(outputs: Any, inputs: dict[str, Any]) -> torch.Tensor | None:
    """Cross-entropy per sample, float32 ``(batch,)``, from ``outputs["logits"]`` and ``inputs["labels"]``.

    Logits ``(B, C)`` (sequence classification): one value per sample. Logits
    ``(B, T, V)`` (a causal LM, whose labels are its inputs): the mean over the
    sample's tokens of the next-token loss, labels shifted by one and ``-100``
    ignored, as the model computes its own loss. ``None`` (nothing logged) when
    the inputs carry no labels.
    """
    labels = inputs.get("labels")
    logits = outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else outputs[1]
    if labels is None:
        return None
    logits = logits.detach().float()
    if logits.ndim == 2:
        return F.cross_entropy(logits, labels, reduction="none")
    tokens = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
    counted = (labels[:, 1:] != -100).sum(1).clamp(min=1)
    return tokens.sum(1) / counted


@contextlib.contextmanager
def record(trainer: Any, path: Any, *, loss: Callable[[Any, dict[str, Any]], torch.Tensor | None] | None
           = per_sample_loss, raw: Any = "auto", seen: Any = "full", **recorder_options: Any) -> Iterator[Recorder]:
    """Record ``trainer``'s train loader as stream ``"train"`` and its eval loader as ``"eval"``, in ``path``.

    Parameters
    ----------
    trainer : transformers.Trainer
        Its ``get_train_dataloader``, ``get_eval_dataloader`` and
        ``compute_loss`` are replaced on this instance until the block ends.
    path : str or os.PathLike
        The snapshot (``snapstore.Recorder(path, **recorder_options)``).
    loss : callable or None, default ``per_sample_loss``
        ``(outputs, inputs) -> (batch,)`` tensor logged as output ``"loss"``
        of the batch the step computed; ``None`` logs nothing.
    raw, seen : see ``Recorder.wrap``.

    Yields
    ------
    Recorder
        Closed, with every epoch committed, when the block ends.
    """
    streams: dict[str, RecordingLoader] = {}
    steps: dict[str, tuple[int, int]] = {}  # stream -> (epoch, compute_loss calls in it)
    originals = trainer.get_train_dataloader, trainer.get_eval_dataloader, trainer.compute_loss

    with Recorder(path, **recorder_options) as rec:

        def stream(name: str, loader: Any) -> RecordingLoader:
            if name in streams:
                streams[name].replace_loader(loader)  # evaluate() builds a new loader each time
            else:
                streams[name] = rec.wrap(loader, name=name, raw=raw, seen=seen)
            return streams[name]

        def get_train_dataloader() -> RecordingLoader:
            return stream("train", originals[0]())

        def get_eval_dataloader(eval_dataset: Any = None) -> RecordingLoader:
            return stream("eval", originals[1](eval_dataset))

        def compute_loss(model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            value, outputs = originals[2](model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            current = streams.get("train" if model.training else "eval")
            if loss is not None and current is not None and current.position is not None:
                _log(current, steps, loss(outputs, inputs))
            return (value, outputs) if return_outputs else value

        trainer.get_train_dataloader = get_train_dataloader
        trainer.get_eval_dataloader = get_eval_dataloader
        trainer.compute_loss = compute_loss
        try:
            yield rec
        finally:
            for name in ("get_train_dataloader", "get_eval_dataloader", "compute_loss"):
                trainer.__dict__.pop(name, None)


def _log(stream: RecordingLoader, steps: dict[str, tuple[int, int]], value: torch.Tensor | None) -> None:
    """Log ``value`` for the batch this step computed: the Trainer fetches the batches of a gradient
    accumulation round before it computes them, so the step's batch is counted, not the last one yielded."""
    if value is None:
        return
    epoch, _ = stream.position  # type: ignore[misc]
    last, calls = steps.get(stream.name, (epoch, 0))
    calls = calls if last == epoch else 0
    stream.log(batch_index=calls, loss=value)
    steps[stream.name] = (epoch, calls + 1)
