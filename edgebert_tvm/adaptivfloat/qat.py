"""Short quantization-aware fine-tuning of a trained EdgeBERT checkpoint.

Starts from a checkpoint the training recipe produced and keeps what the recipe decided: the
embeddings stay frozen (the recipe freezes them too; here they are quantized once), attention spans
stay fixed, and pruned weights stay zero (their mask is re-applied after every step). Every Linear
weight is seen through the format's quantizer with a straight-through gradient, so the float master
weights learn to sit well on the grid. Loss: CE of the final classifier plus the mean CE of the
off-ramps (the recipe's two stages at once, so the exits stay calibrated to the changed backbone).
Batches come from the recipe's tokenised, length-bucketed batcher.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from ..data import Example
from ..training.batches import batches, encode_examples
from . import fake_quant


@dataclasses.dataclass
class QATConfig:
    steps: int = 100
    batch_size: int = 16
    lr: float = 2e-5
    max_seq_len: int = 64
    seed: int = 0


def _linear_masks(model: nn.Module) -> list[tuple[nn.Linear, torch.Tensor]]:
    return [(m, m.weight.detach() != 0) for m in model.modules() if isinstance(m, nn.Linear)]


def finetune(model: nn.Module, quantizer: fake_quant.Quantizer, tokenizer: Path, examples: list[Example],
             config: QATConfig) -> dict[str, float]:
    """Fine-tune `model` in place with fake-quantized weights; on return its weights are on the grid."""
    torch.manual_seed(config.seed)
    fake_quant.quantize_weights_(model, quantizer)  # embeddings: quantized once, then frozen
    masks = _linear_masks(model)
    for name, param in model.named_parameters():
        param.requires_grad = not (name.startswith("backbone.embeddings") or name == "span_z")
    fake_quant.attach(model, quantizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / config.steps)
    encoded = encode_examples(Tokenizer.from_file(str(tokenizer)), examples, config.max_seq_len)
    model.train()
    start, losses = time.perf_counter(), []
    stream = batches(encoded, config.batch_size, seed=config.seed)
    for _ in tqdm(range(config.steps), desc="QAT", unit="step"):
        batch = next(stream, None)
        if batch is None:
            stream = batches(encoded, config.batch_size, seed=config.seed + len(losses))
            batch = next(stream)
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (rows, exits, labels)
        labels = batch["labels"]
        final = F.cross_entropy(logits[:, -1], labels)
        ramps = torch.stack([F.cross_entropy(logits[:, i], labels) for i in range(logits.shape[1] - 1)]).mean()
        loss = final + ramps
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for module, mask in masks:
                module.parametrizations.weight.original.mul_(mask)
        losses.append(loss.item())
    fake_quant.detach(model)
    model.eval()
    return {"steps": config.steps, "seconds": time.perf_counter() - start,
            "loss_first20": sum(losses[:20]) / min(20, len(losses)), "loss_last20": sum(losses[-20:]) / min(20, len(losses))}
