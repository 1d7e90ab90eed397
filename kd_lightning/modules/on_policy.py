"""On-policy and sequence-level distillation of causal language models: the batch a step trains on is sampled.

GKD (Agarwal et al. ICLR 2024, "On-Policy Distillation of Language Models", TRL's ``GKDTrainer``): with probability
``lmbda`` per batch the student samples continuations of the batch's prompts, the teacher scores every token the
student produced, and the token losses (generalized JSD with β, reverse KL, ...) run on the generated tokens only;
otherwise the batch trains as it came (off-policy). Sequence-level KD (Kim & Rush 2016) is the sibling in which the
*teacher* generates (``samples_from: teacher``): the student learns the teacher's own sequences, with the hard-label
loss on them and any token loss.

What a rolled-out batch is, from a batch of prompt/completion samples (labels ``-100`` on each prompt, as
``TextDataModule(prompt_length=...)`` makes them): each sample's prompt is its tokens before its first label; the
prompts are left-padded for Hugging Face ``generate`` (KV cache, ``do_sample``, ``temperature``, ``top_p``,
``max_new_tokens``), and each ``prompt + continuation`` (up to and including the first end-of-sequence token) is
re-packed right-padded: ``input_ids`` and ``attention_mask`` ``[B, L']``, ``labels`` ``-100`` on the prompt and the
padding and the generated token elsewhere. The token losses read the labelled positions (``positions: labelled``,
required with on-policy batches), so they run on the generated tokens only; a student-generated batch has no
hard-label loss (the student's own samples are not targets: the ``ce`` component is 0 there).

Determinism: whether a batch is rolled out and what is sampled come from seeds derived from ``(seed, epoch,
batch index)`` (and the process rank for the samples), never from the global random state, so a killed and resumed
run rolls out the same batches with the same samples; ``lmbda = 0`` draws nothing and is the off-policy run bit for
bit. Under DDP every process samples for its own shard (the draw is the same on every process, so they roll out
together), and a rolled-out batch is normalised by its own count of generated tokens summed over the processes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.tokens import IGNORE_INDEX, is_causal_lm
from kd_lightning.data.resumable import derive_seed

SAMPLERS = ("student", "teacher")


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected {name} in [0, 1] but got {name}={value!r}; GKD's lmbda is a probability per batch.")


class OnPolicy:
    """The sampling of on-policy (GKD) or sequence-level distillation; give it to ``OfflineDistillation(on_policy=)``.

    Args:
        lmbda: probability that a batch is replaced by sampled continuations of its prompts (GKD's λ; TRL's default
            0.5); 0 is off-policy training, 1 samples every batch.
        samples_from: ``"student"`` (on-policy, GKD) or ``"teacher"`` (sequence-level KD: the teacher's generations).
        temperature: sampling temperature (TRL's default 0.9); the losses keep their own temperature.
        top_p: nucleus sampling mass (1.0: off).
        max_new_tokens: tokens generated per prompt at most (TRL's default 128); the prompt plus these must fit the
            model's positions.
        seed: base seed of the draws and samples; ``None``: the run's ``seed_everything`` seed (0 without one).

    Example (YAML, the model's ``on_policy``)::

        on_policy:
          class_path: kd_lightning.OnPolicy
          init_args: {lmbda: 0.5, temperature: 0.9, max_new_tokens: 64}
    """

    def __init__(
        self,
        lmbda: float = 0.5,
        samples_from: str = "student",
        temperature: float = 0.9,
        top_p: float = 1.0,
        max_new_tokens: int = 128,
        seed: int | None = None,
    ) -> None:
        _check_fraction("lmbda", lmbda)
        if samples_from not in SAMPLERS:
            raise ValueError(
                f"expected samples_from in {list(SAMPLERS)} but got {samples_from!r}: 'student' is on-policy "
                f"distillation (GKD), 'teacher' sequence-level KD."
            )
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"expected a sampling temperature > 0 but got temperature={temperature!r}.")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"expected top_p in (0, 1] but got top_p={top_p!r}; 1.0 samples from every token.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"expected max_new_tokens to be an integer >= 1 but got {max_new_tokens!r}.")
        self.lmbda, self.samples_from = float(lmbda), samples_from
        self.temperature, self.top_p, self.max_new_tokens = float(temperature), float(top_p), max_new_tokens
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"OnPolicy(lmbda={self.lmbda}, samples_from={self.samples_from!r}, temperature={self.temperature}, "
            f"top_p={self.top_p}, max_new_tokens={self.max_new_tokens}, seed={self.seed})"
        )

    # ----------------------------------------------------------------- before the first step
    def base_seed(self) -> int:
        return int(self.seed if self.seed is not None else os.environ.get("PL_GLOBAL_SEED", 0))

    def check(self, student: nn.Module, teacher: nn.Module | None, positions: int | None, prompt: int | None) -> None:
        """Raise unless the sampling network can generate and ``prompt + max_new_tokens`` fits ``positions``."""
        sampler = student if self.samples_from == "student" else teacher
        role = f"the {self.samples_from}"
        if sampler is None:
            raise ValueError(
                "samples_from: teacher needs a teacher network that runs (a FrozenTeacher); this teacher is stored "
                "outputs: sample from the student, or give the teacher network."
            )
        if not is_causal_lm(sampler) or not callable(getattr(sampler, "generate", None)):
            raise ValueError(
                f"on_policy samples continuations with {role}, but {type(sampler).__name__} is not a causal language "
                f"model with generate(); on-policy and sequence-level distillation need causal LMs "
                f"(model_from_config(task: causal_lm), pretrained_model of a causal LM)."
            )
        if positions is not None and prompt is not None and prompt + self.max_new_tokens > positions:
            raise ValueError(
                f"on_policy.max_new_tokens={self.max_new_tokens} after prompts of up to {prompt} tokens makes "
                f"{prompt + self.max_new_tokens} positions, beyond the {positions} of {role} "
                f"({type(sampler).__name__}); lower max_new_tokens to {max(positions - prompt, 1)} or the prompts "
                f"(TextDataModule prompt_length)."
            )

    # ----------------------------------------------------------------- a step
    def draws(self, epoch: int, batch_idx: int) -> bool:
        """Whether the batch ``batch_idx`` of ``epoch`` is sampled (the same on every process); ``lmbda = 0`` draws
        nothing."""
        if self.lmbda == 0:
            return False
        if self.lmbda == 1:
            return True
        generator = torch.Generator().manual_seed(derive_seed(self.base_seed(), 1, epoch, batch_idx))
        return bool(torch.rand((), generator=generator) < self.lmbda)

    @torch.no_grad()
    def rollout(
        self, sampler: nn.Module, batch: Batch, epoch: int, batch_idx: int, rank: int, ids: dict[str, int | None]
    ) -> Batch:
        """The batch of ``prompt + sampled continuation`` sequences (see the module docstring).

        Args:
            sampler: the network that generates (the student, or the teacher network).
            batch: a causal-LM batch of prompt/completion samples (labels ``-100`` on the prompts).
            epoch, batch_idx, rank: what the samples' seed is derived from.
            ids: ``{"pad": ..., "eos": ...}`` token ids (``eos`` ``None``: generate ``max_new_tokens`` each).
        """
        prompts, prompt_mask, lengths = left_padded_prompts(batch)
        positions = getattr(getattr(sampler, "config", None), "n_positions", None) or getattr(
            getattr(sampler, "config", None), "max_position_embeddings", None
        )
        if positions is not None and prompts.shape[1] + self.max_new_tokens > positions:
            raise ValueError(
                f"a prompt of {prompts.shape[1]} tokens plus max_new_tokens={self.max_new_tokens} exceeds the "
                f"{positions} positions of {type(sampler).__name__}; shorten the prompts (TextDataModule "
                f"prompt_length) or lower on_policy.max_new_tokens."
            )
        was_training = sampler.training
        sampler.eval()
        device = prompts.device
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(derive_seed(self.base_seed(), 2, epoch, batch_idx, rank))
                generated = sampler.generate(
                    input_ids=prompts,
                    attention_mask=prompt_mask,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    top_k=0,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=ids["pad"],
                    eos_token_id=ids["eos"],
                )
        finally:
            sampler.train(was_training)
        return repacked(prompts, lengths, generated[:, prompts.shape[1] :], ids, batch)


def left_padded_prompts(batch: Batch) -> tuple[Tensor, Tensor, list[int]]:
    """``(prompts [B, P], their attention mask [B, P], each prompt's length)``: each sample's tokens before its first
    label, left-padded to the longest (a sample with no label is all prompt)."""
    if batch.labels is None or not batch.is_sequence or "input_ids" not in batch.inputs:
        raise ValueError(
            "on-policy distillation samples continuations of prompts, but the batch has no token labels to tell "
            "prompt from completion; use TextDataModule(task: clm, prompt_length: N), whose labels are -100 on the "
            "prompt."
        )
    input_ids, labels = batch.inputs["input_ids"], batch.labels
    mask = batch.attention_mask
    real = mask.bool() if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    labelled = (labels != IGNORE_INDEX) & real
    real_lengths = real.sum(1)
    first = torch.where(labelled.any(1), labelled.int().argmax(1), real_lengths)
    lengths = [max(int(n), 1) for n in first.tolist()]  # a prompt holds at least the first token
    width = max(lengths)
    prompts = input_ids.new_zeros((len(lengths), width))
    prompt_mask = torch.zeros_like(prompts)
    for row, length in enumerate(lengths):
        prompts[row, width - length :] = input_ids[row, :length]
        prompt_mask[row, width - length :] = 1
    return prompts, prompt_mask, lengths


def repacked(prompts: Tensor, lengths: list[int], continuation: Tensor, ids: dict[str, int | None], batch: Batch):
    """The right-padded batch of each ``prompt + continuation`` (cut after the first end-of-sequence token), labels
    on the continuation only."""
    rows, eos = [], ids["eos"]
    width = prompts.shape[1]
    for row, length in enumerate(lengths):
        tokens = continuation[row]
        if eos is not None:
            ends = (tokens == eos).nonzero()
            if len(ends):
                tokens = tokens[: int(ends[0]) + 1]
        rows.append((prompts[row, width - length :], tokens))
    total = max(len(prompt) + len(tokens) for prompt, tokens in rows)
    input_ids = prompts.new_full((len(rows), total), ids["pad"] if ids["pad"] is not None else 0)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (prompt, tokens) in enumerate(rows):
        end = len(prompt) + len(tokens)
        input_ids[row, : len(prompt)], input_ids[row, len(prompt) : end] = prompt, tokens
        attention[row, :end] = 1
        labels[row, len(prompt) : end] = tokens
    inputs = {"input_ids": input_ids, "attention_mask": attention}
    return Batch(inputs, labels, batch.index, None, batch.part)


def token_ids(datamodule: Any, network: nn.Module) -> dict[str, int | None]:
    """``{"pad": ..., "eos": ...}`` for generation: the datamodule's tokenizer's, else the network config's (an id
    outside the vocabulary counts as none)."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    config = getattr(network, "config", None)
    vocab = getattr(config, "vocab_size", None)

    def valid(value: Any) -> int | None:
        return int(value) if isinstance(value, int) and (vocab is None or 0 <= value < vocab) else None

    def first(name: str) -> int | None:
        found = [valid(getattr(source, name, None)) for source in (tokenizer, config)]
        return next((value for value in found if value is not None), None)

    eos, pad = first("eos_token_id"), first("pad_token_id")
    return {"eos": eos, "pad": pad if pad is not None else (eos if eos is not None else 0)}
