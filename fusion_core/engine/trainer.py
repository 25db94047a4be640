"""The training loop every recipe shares, so loop numerics cannot drift between recipes.

Pieces: seeding, the optimizer (:mod:`.optim`), gradient clipping and accumulation, EMA
(:mod:`.ema`), bf16 autocast on CUDA, optional ``torch.compile`` of the backbone and activation
checkpointing, NaN/inf detection without a host sync, data-loading workers (:mod:`.loader`),
streams (:class:`~fusion_core.data.ExampleStream`), JSONL metrics, tqdm progress, atomic
checkpoints and exact resume, DDP/FSDP2 with sharded checkpoints (:mod:`.sharded`).

Exactness: the examples of step ``s`` are a pure function of (seed, s) — a per-epoch permutation
of the dataset — and every random draw of the loss is keyed to its example (``Batch.seeds``). Each
modality's loss is a sum divided by the *global* count of its targets in the step (all
micro-batches, all processes), so 1 process, N processes and any accumulation give the same
gradient, and a resumed run continues exactly where a straight run would be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..model import Batch, FusionModel
from ..pretrained import is_sharded, model_config, save_pretrained
from ..storage import load_weights, state_dict_for_safetensors
from ..validation import check_fits
from .checkpoint import find_resumable, load_state, save_checkpoint
from .data import ExampleStream
from .distributed import (DistInfo, all_gather_object, all_reduce_sum, barrier, check_device_name, resolve_device,
                          wrap_model)
from .ema import EMA
from .loader import Collate, StepBatches
from .metrics import MetricsLog
from .optim import SCHEDULES, OptimArgs, build_optimizer, lr_factor  # noqa: F401 (re-exported)
from .runfolder import start_fresh
from .sharded import load_sharded, save_sharded

log = logging.getLogger("fusion_core")


PRECISIONS = ("auto", "fp32", "bf16")
MAX_STEPS = 10**9
STRATEGIES = ("ddp", "fsdp")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainArgs:
    steps: int = 1000
    batch_size: int = 32  # examples per optimizer step, over all processes and micro-batches
    grad_accum: int = 1
    optim: OptimArgs = field(default_factory=OptimArgs)
    ema_decay: float = 0.0  # 0 = no EMA
    ema_warmup: bool = True  # the decay of update n is min(ema_decay, (1 + n) / (10 + n)) (fusion_core.engine.ema)
    ckpt_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    progress: bool = True
    seed: int = 0
    deterministic: bool = False
    compile: bool = False  # compile each transformer block (Transformer.compile_blocks)
    # torch.compile's mode for those blocks: "reduce-overhead" replays them as CUDA graphs (small
    # models whose steps are launch-bound); "default" | "reduce-overhead" | "max-autotune" |
    # "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    # next-token loss through a linear head (Adapter.head_linear) this many scored positions at a
    # time, never holding the full (positions x vocabulary) logits (fusion_core.lm_loss); 0 = plain
    lm_loss_chunk: int = 0
    # recompute each block's activations in the backward pass instead of keeping them: memory for
    # longer rows or larger models at about a third more compute
    activation_checkpointing: bool = False
    # data-loading worker processes that collate each step's micro-batches ahead of the training
    # loop (0 = in the loop); batches are a function of (seed, step), so resume stays exact
    workers: int = 0
    prefetch: int = 2  # steps each worker keeps ready
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    strategy: str = "ddp"  # ddp | fsdp (multi-process only)
    device: str = "auto"

    def __post_init__(self):
        for key in ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every", "prefetch"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.workers < 0 or self.lm_loss_chunk < 0:
            raise ValueError(f"train.workers and train.lm_loss_chunk must be >= 0, got {self.workers}, "
                             f"{self.lm_loss_chunk}")
        if self.keep_last < 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"need train.keep_last >= 0 and train.ema_decay in [0, 1), got "
                             f"{self.keep_last}, {self.ema_decay}")
        for key, options in (("precision", PRECISIONS), ("strategy", STRATEGIES), ("compile_mode", COMPILE_MODES)):
            if getattr(self, key) not in options:
                raise ValueError(f"train.{key} must be one of {options}, got {getattr(self, key)!r}")
        if self.steps > MAX_STEPS:
            raise ValueError(f"train.steps must be <= {MAX_STEPS:.0e} (the papers train 250k), got {self.steps}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must be a multiple of train.grad_accum="
                             f"{self.grad_accum} (each micro-batch gets batch_size / grad_accum examples)")
        check_device_name(self.device)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; no update was applied."""


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (offset by rank); optionally force deterministic kernels."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), np_state[2], np_state[3], np_state[4]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict) -> None:
    py = s["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])



class Trainer:
    """Train a :class:`FusionModel` on an indexable dataset of examples.

    Build the model after ``seed_everything(seed)`` with the *same* seed on every process: FSDP
    shards the weights each process built, it does not broadcast them.

    Args:
        model: the model (unwrapped; the trainer wraps it for DDP/FSDP).
        dataset: ``dataset[i]`` is one example (what ``collate`` takes), reshuffled every epoch;
            or an :class:`~fusion_core.data.ExampleStream` for data read in order from disk.
        collate: ``collate(model, examples, seeds) -> Batch`` (packing, max length).
        args: :class:`TrainArgs`.
        run_dir: where metrics, checkpoints and the config go.
        config_yaml: the resolved config, stored in every checkpoint.
        dist_info: from :func:`~fusion_core.distributed.init_distributed` (default: 1 process).

    Raises:
        ValueError: a batch that does not split over accumulation and processes, an empty
            dataset, a device that is not here, or a step that cannot fit in memory or would take
            longer than ten minutes (estimated before anything runs; the message names the sizes).
    """

    def __init__(self, model: FusionModel, dataset: Sequence, collate: Collate, args: TrainArgs,
                 run_dir: str | Path, config_yaml: str = "", dist_info: DistInfo | None = None):
        self.info = dist_info or DistInfo(device=resolve_device(args.device))
        per_micro = args.batch_size / (args.grad_accum * self.info.world_size)
        if per_micro != int(per_micro) or per_micro < 1:
            raise ValueError(f"batch_size={args.batch_size} must be a positive multiple of "
                             f"grad_accum x processes = {args.grad_accum} x {self.info.world_size}")
        if not isinstance(dataset, ExampleStream) and len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        args = self._clamp_warmup(args)
        self.dataset, self.collate, self.args = dataset, collate, args
        self._check_memory(model, int(per_micro))
        self.model = model.to(self.info.device)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config_yaml = config_yaml
        if args.compile:
            self.model.backbone.compile_blocks(**({} if args.compile_mode == "default" else {"mode": args.compile_mode}))
        self.model.lm_loss_chunk = args.lm_loss_chunk
        self.model.backbone.activation_checkpointing = args.activation_checkpointing
        self.wrapped = wrap_model(self.model, self.info, args.strategy) if self.info.enabled else self.model
        # build the model with the same seed on every rank (FSDP shards, it does not broadcast);
        # from here on each rank gets its own stream (dropout), offset by rank
        seed_everything(args.seed, self.info.rank, args.deterministic)
        if self.info.enabled and args.strategy == "ddp":
            self.wrapped.find_unused_parameters = True  # a rank's batch may lack a modality
        self.opt, self.sched = build_optimizer(self.model, args.optim, args.steps)
        self.ema = EMA(self.model, args.ema_decay, args.ema_warmup) if args.ema_decay > 0 else None
        self._fused = bool(self.opt.param_groups[0].get("fused"))
        self._bad_step = torch.tensor(-1, device=self.info.device)  # first non-finite step since the last check
        self._bad_values = torch.zeros(len(self.model.adapters) + 2, dtype=torch.float64, device=self.info.device)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.info.is_main)
        self.step = 0
        # wall seconds spent in fit() up to self.step, across resumes (kept in every checkpoint;
        # time after the last checkpoint of a crashed run is lost with its steps)
        self.train_seconds = 0.0
        self.modalities = list(self.model.adapters)
        bf16 = args.precision == "bf16" or (args.precision == "auto" and self.info.device.type == "cuda")
        self.precision = "bf16 autocast" if bf16 else "fp32"  # what train.precision resolved to here
        self.autocast = (lambda: torch.autocast(self.info.device.type, dtype=torch.bfloat16)) if bf16 \
            else contextlib.nullcontext

    @staticmethod
    def _clamp_warmup(args: TrainArgs) -> TrainArgs:
        """A warmup as long as the run (``TrainArgs(steps=40)`` with the default 4000) would train
        at a sliver of the learning rate throughout: clamp it to a tenth of the steps, warning."""
        if args.optim.warmup <= args.steps // 2:
            return args
        clamped = max(args.steps // 10, 1 if args.optim.warmup else 0)
        msg = (f"train.optim.warmup={args.optim.warmup} is longer than half the run (train.steps={args.steps}): "
               f"warming up over {clamped} step{'s' * (clamped != 1)} instead, so the run reaches its learning rate")
        warnings.warn(msg, UserWarning, stacklevel=3)
        return dataclasses.replace(args, optim=dataclasses.replace(args.optim, warmup=clamped))

    def _check_memory(self, model: FusionModel, per_micro: int) -> None:
        """Refuse, before anything runs, a step that cannot fit in memory: the weights with their
        gradients and AdamW state, and the activations of one micro-batch estimated from one
        example's positions (the size is named, with what to change)."""
        from .loader import HostCollate

        n_params = sum(p.numel() for p in model.parameters())
        state = 4 * n_params * (4 + (self.args.ema_decay > 0))  # weights, grads, AdamW m and v, EMA
        positions = 0
        if not isinstance(self.dataset, ExampleStream):
            first = self.collate(HostCollate(model), [self.dataset[0]], [0])
            positions = int((~first.layout.host.padding).sum())
        a = model.backbone.args
        tokens = per_micro * positions
        layers = 1 if self.args.activation_checkpointing else a.n_layers
        act = 4 * tokens * layers * (10 * a.dim + 3 * a.hidden_dim) + 4 * tokens * a.dim * a.n_layers
        check_fits(state + act, f"training {n_params / 1e6:,.1f} M parameters on micro-batches of {per_micro} "
                   f"examples x {positions} positions (train.batch_size={self.args.batch_size}, "
                   f"train.grad_accum={self.args.grad_accum})", self.info.device)
        row = int(first.layout.host.seq_len) if positions else 0
        # a step's work: 6 FLOPs per weight per position, plus attention's 12 per query, key and width
        flops = self.args.grad_accum * (6 * n_params * tokens + 12 * tokens * row * a.dim * a.n_layers)
        if flops > STEP_FLOPS_CHECKED:
            seconds = flops / device_flops(self.info.device)
            if seconds > MAX_STEP_SECONDS:
                raise ValueError(f"one training step would take about {seconds / 60:,.0f} minutes on this machine "
                                 f"({flops:.2g} FLOPs: {per_micro} examples x {positions} positions per micro-batch, "
                                 f"attention over rows of {row}); refused — shorten the examples (or patch them), "
                                 "lower train.batch_size, or use a faster device")

    def check_resume(self, config=None) -> None:
        """Before a resume writes anything: the newest good checkpoint must fit the model built
        from this command's config (a ``model.*`` override that changes a weight's shape cannot
        resume the same run).

        Raises:
            ValueError: names the weights whose shapes differ and the model settings that changed.
        """
        path = find_resumable(self.ckpt_dir)
        if path is None:
            return
        saved = saved_shapes(path)
        own = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        bad = [k for k in saved if k in own and saved[k] != own[k]]
        bad += [k for k in saved if k not in own] + [k for k in own if k not in saved and _persistent(self.model, k)]
        if not bad:
            return
        changed = _changed_model_keys(path / "config.yaml", config)
        what = f" ({', '.join(changed)})" if changed else ""
        k = bad[0]
        raise ValueError(f"the model this command builds{what} does not fit the run's checkpoint {path.name}: "
                         f"{k} is {saved.get(k, 'absent')} there, {own.get(k, 'absent')} now; resume continues "
                         "the same model — start a new run for a different one (nothing was written)")

    # -- data -----------------------------------------------------------------------------------
    def _global_positions(self, step: int) -> list[int]:
        bs = self.args.batch_size
        return list(range(step * bs, (step + 1) * bs))

    def _example(self, position: int):
        if isinstance(self.dataset, ExampleStream):  # read in order, by this process's own cursor
            if "_cursor" not in self.__dict__:
                self._cursor = self.dataset.cursor()
            return self._cursor.get(position)
        n = len(self.dataset)
        epoch, i = divmod(position, n)
        perm = self.__dict__.setdefault("_perms", {})
        if epoch not in perm:
            g = torch.Generator().manual_seed(self.args.seed * 7919 + epoch)
            perm.clear()
            perm[epoch] = torch.randperm(n, generator=g).tolist()
        return self.dataset[perm[epoch][i]]

    def micro_batches(self, step: int) -> list[tuple[list, list[int]]]:
        """This process's micro-batches of ``step``: (examples, seeds) each."""
        pos = self._global_positions(step)
        mb = len(pos) // self.args.grad_accum
        out = []
        for m in range(self.args.grad_accum):
            mine = pos[m * mb : (m + 1) * mb][self.info.rank :: self.info.world_size]
            seeds = [self.args.seed * 1_000_003 + p for p in mine]
            out.append(([self._example(p) for p in mine], seeds))
        return out

    def collated(self, step: int) -> list[Batch]:
        """Step ``step``'s micro-batches of this process, collated."""
        return [self.collate(self.model, ex, seeds) for ex, seeds in self.micro_batches(step)]

    def _steps(self):
        """Each remaining step's collated micro-batches, in order: built here, or by
        ``train.workers`` processes ahead of the loop (pinned, then copied without blocking)."""
        if self.args.workers == 0:
            for step in range(self.step, self.args.steps):
                yield self.collated(step)
            return
        loader = torch.utils.data.DataLoader(
            StepBatches(self.model, self.collate, self.micro_batches, self.args.steps), batch_size=None,
            sampler=range(self.step, self.args.steps),
            num_workers=self.args.workers, prefetch_factor=self.args.prefetch,
            pin_memory=self.info.device.type == "cuda", persistent_workers=False)
        for batches in loader:
            yield [b.to(self.info.device) for b in batches]

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def _sharded(self) -> bool:
        return self.info.enabled and self.args.strategy == "fsdp"

    def _full_states(self, optimizer: bool = True) -> tuple[dict, dict | None]:
        """Full (unsharded, CPU) model and optimizer state dicts (the optimizer's keyed by
        parameter name, as sharded checkpoints store it); collective under FSDP."""
        if not self._sharded:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            return (state_dict_for_safetensors(self.model),
                    get_optimizer_state_dict(self.model, self.opt) if optimizer else None)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = {k: v.contiguous() for k, v in get_model_state_dict(self.model, options=opts).items()}
        return model_sd, get_optimizer_state_dict(self.model, self.opt, options=opts) if optimizer else None

    def _model_json(self) -> str:
        """The checkpoint's ``model.json``: a checkpoint folder is also a ``from_pretrained`` folder."""
        return json.dumps(model_config(self.model, {"step": self.step}), indent=1)

    def save(self) -> Path | None:
        """Write a checkpoint: sharded under FSDP (every process its own shards, nothing
        gathered; :mod:`fusion_core.sharded`), else safetensors weights + ``state.pt``."""
        rngs = all_gather_object(_rng_state(), self.info)
        if self._sharded:
            state = {"step": self.step, "train_seconds": self.train_seconds, "scheduler": self.sched.state_dict(),
                     "rng": rngs, "world_size": self.info.world_size}
            ema = self.ema.shadow if self.ema is not None else None
            return save_sharded(self.ckpt_dir, self.step, self.model, self.opt, ema, state, self.config_yaml,
                                self.args.keep_last, {"model.json": self._model_json()}, self.info)
        model_sd, opt_sd = self._full_states()
        ema_sd = self.ema.state_dict() if self.ema is not None else None
        if not self.info.is_main:
            barrier(self.info)
            return None
        weights = {"model": model_sd}
        if ema_sd is not None:
            weights["ema"] = ema_sd
        state = {"step": self.step, "train_seconds": self.train_seconds, "optimizer": opt_sd,
                 "scheduler": self.sched.state_dict(), "rng": rngs, "world_size": self.info.world_size}
        path = save_checkpoint(self.ckpt_dir, self.step, weights, state, self.config_yaml, self.args.keep_last,
                               extra={"model.json": self._model_json()})
        barrier(self.info)
        return path

    def export(self, directory: str | Path, metadata: dict | None = None) -> Path | None:
        """Write the trained model (and its EMA weights) as a ``save_pretrained`` folder; collective
        under FSDP, rank 0 writes. Returns the folder on rank 0."""
        model_sd, _ = self._full_states(optimizer=False)
        ema_sd = self.ema.state_dict() if self.ema is not None else None
        path = None
        if self.info.is_main:
            path = save_pretrained(self.model, directory, ema=ema_sd, weights=model_sd,
                                   metadata={"step": self.step, **(metadata or {})})
        barrier(self.info)
        return path

    def resume(self) -> bool:
        """Load the newest good checkpoint, if any. Returns whether one was loaded."""
        path = find_resumable(self.ckpt_dir)
        if path is None:
            return False
        state = load_state(path)
        if is_sharded(path):  # saved by any number of processes, resharded to this run's
            load_sharded(path, self.model, self.opt, self.ema.shadow if self.ema is not None else None, self.info)
        else:
            from safetensors.torch import load_file
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            if self._sharded:
                opts = StateDictOptions(full_state_dict=True)
                set_model_state_dict(self.model, load_file(str(path / "model.safetensors")), options=opts)
            else:
                load_weights(self.model, path / "model.safetensors")
            optim = state["optimizer"]
            if isinstance(next(iter(optim.get("state", {})), ""), int):  # an older, id-keyed state
                self.opt.load_state_dict(optim)
            else:
                set_optimizer_state_dict(self.model, self.opt, optim,
                                         options=StateDictOptions(full_state_dict=self._sharded))
            if self.ema is not None:
                self.ema.load_state_dict(load_file(str(path / "ema.safetensors")))
        self.sched.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        _set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])
        self.step = int(state["step"])
        if self.ema is not None:
            self.ema.num_updates = self.step  # one update per step: the warm-up continues where it was
        self.train_seconds = float(state.get("train_seconds", 0.0))  # older checkpoints lack it
        self.metrics.truncate_after(self.step)
        if self.info.is_main:
            log.info("resumed from %s (step %d)", path, self.step)
        return True

    # -- the loop ---------------------------------------------------------------------------------
    def train_step(self, batches: list[Batch] | None = None) -> dict:
        """One optimizer step. Nothing here waits for the GPU: the loss, its parts and the
        gradient norm stay on the device (:meth:`fit` reads them when it logs), and a step whose
        loss or gradient is not finite is skipped on the device by the fused optimizer (its
        ``found_inf``) and reported at the next log or checkpoint. Without a fused optimizer
        (FSDP shards) the check is a host sync, as it costs nothing on a CPU."""
        model, info = self.model, self.info
        model.train()
        batches = self.collated(self.step) if batches is None else batches
        local = torch.zeros(len(self.modalities) + 2, dtype=torch.float64)
        for b in batches:  # counted on the CPU copy of each layout: no GPU sync
            for name, n in model.target_counts(b).items():
                local[self.modalities.index(name)] += n
            local[-2] += int((~b.layout.host.padding).sum())  # tokens
            local[-1] += len(b.examples)
        if info.enabled:  # global counts, kept on the device
            total = all_reduce_sum(local.to(info.device), info)
            normalize = {m: total[i].clamp(min=1.0).float() for i, m in enumerate(self.modalities)}
        else:
            total = local
            normalize = {m: max(float(total[i]), 1.0) for i, m in enumerate(self.modalities)}
        sums = torch.zeros(len(self.modalities) + 1, dtype=torch.float64, device=info.device)
        for i, b in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.wrapped, "no_sync") else self.wrapped.no_sync()
            with sync:
                with self.autocast():
                    out = self.wrapped(b, normalize=normalize)
                for name, v in out.parts.items():
                    sums[self.modalities.index(name)] += v.detach().double()
                sums[-1] += out.loss.detach().double()
                (out.loss * info.world_size).backward()  # DDP averages; our parts are global sums
        all_reduce_sum(sums, info)
        clip = self.args.optim.grad_clip
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        values = torch.cat([sums, grad_norm.detach().double().reshape(1).to(sums.device)])
        finite = torch.isfinite(values).all()
        lr = self.opt.param_groups[0]["lr"]
        if self._fused:  # skipped on the device when not finite: no sync
            self.opt.found_inf = (~finite).float()  # 0-dim, like the step counters it adjusts
            first = (~finite) & (self._bad_step < 0)
            self._bad_step = torch.where(first, self.step, self._bad_step)
            self._bad_values = torch.where(first, values, self._bad_values)
        elif not bool(finite):
            self._bad_step, self._bad_values = torch.tensor(self.step), values
            self.opt.zero_grad(set_to_none=True)
            self._check_finite()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(model)
        self.step += 1
        return {"step": self.step, "lr": lr, "values": values, "total": total}

    def _check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` if a step since the last check was not finite (a host
        sync: called when logging, checkpointing and at the end)."""
        step = int(self._bad_step)
        if step < 0:
            return
        values = self._bad_values.cpu()
        for i, name in enumerate(self.modalities):
            if not torch.isfinite(values[i]):
                raise TrainingDiverged(f"step {step}: loss part {name!r} is {values[i].item()} (no update applied)")
        raise TrainingDiverged(f"step {step}: gradient norm is {values[-1].item()} (no update applied)")

    def _record(self, rec: dict) -> dict:
        """A step's record for the metrics log, read from the device (the step's one sync)."""
        values, total = rec["values"].cpu(), rec["total"].cpu()
        out = {"step": rec["step"], "loss": float(values[-2]), "lr": rec["lr"], "grad_norm": float(values[-1])}
        for i, m in enumerate(self.modalities):
            if total[i] > 0:
                out[f"loss/{m}"] = float(values[i])
        return out

    def fit(self, resume: bool = False) -> list[dict]:
        """Train to ``args.steps`` (from the latest good checkpoint with ``resume``)."""
        a, info = self.args, self.info
        if not self.step and not (resume and self.resume()) and info.is_main:
            if resume:
                log.warning("no usable checkpoint in %s; starting from step 0", self.ckpt_dir)
            start_fresh(self.run_dir)  # a fresh history: earlier checkpoints and metrics moved aside
        self.run_dir.mkdir(parents=True, exist_ok=True)
        records = []
        bar = tqdm(total=a.steps, initial=self.step, disable=not (a.progress and info.is_main),
                   desc="train", dynamic_ncols=True)
        t_last, counted = time.perf_counter(), torch.zeros(2, dtype=torch.float64)
        t_fit, seconds_before = t_last, self.train_seconds
        self.model.train()  # before any worker starts: collation reads the mode (CFG dropout)
        steps = self._steps()
        while self.step < a.steps:
            rec = self.train_step(next(steps))
            counted = counted.to(rec["total"].device) + rec["total"][-2:]  # tokens, samples (device under DDP)
            if self.step % a.log_every == 0 or self.step == a.steps:
                self._check_finite()
                out = self._record(rec)
                dt = time.perf_counter() - t_last
                tok, smp = counted.cpu().tolist()
                out.update(tokens_per_s=tok / dt, samples_per_s=smp / dt, peak_mem_mb=_peak_mem_mb(info.device))
                t_last, counted = time.perf_counter(), torch.zeros(2, dtype=torch.float64)
                self.metrics.write(out)
                records.append(out)
                bar.set_postfix(loss=f"{out['loss']:.4f}", tok_s=f"{out['tokens_per_s']:.0f}")
            bar.update(1)
            self.train_seconds = seconds_before + time.perf_counter() - t_fit
            if self.step % a.ckpt_every == 0 or self.step == a.steps:
                self._check_finite()
                self.save()
        bar.close()
        return records


STEP_FLOPS_CHECKED = 1e12  # below this a step takes seconds anywhere: not measured
MAX_STEP_SECONDS = 600.0  # one step longer than this is a mistake, not a run


def device_flops(device: torch.device) -> float:
    """This machine's float32 matmul rate (FLOP/s) on ``device``, measured in ~0.1 s."""
    n = 512
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.1:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def saved_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of the model weights in a checkpoint folder, read from the safetensors header
    or the sharded index (no tensor is loaded)."""
    if is_sharded(path):
        from .sharded import read_index

        meta = read_index(path).state_dict_metadata
        return {k[len("model."):]: tuple(v.size) for k, v in meta.items()
                if k.startswith("model.") and hasattr(v, "size")}
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _persistent(model: torch.nn.Module, key: str) -> bool:
    """Whether a state-dict key is stored (tied aliases are stored once)."""
    return key in state_dict_for_safetensors(model)


def _changed_model_keys(saved_config: Path, config) -> list[str]:
    """``model.KEY=NEW (the run has OLD)`` for each model setting that differs."""
    if config is None or not saved_config.is_file():
        return []
    from omegaconf import OmegaConf

    try:
        old = OmegaConf.to_container(OmegaConf.load(saved_config)).get("model", {})
        new = OmegaConf.to_container(config, resolve=True).get("model", {})
    except Exception:  # noqa: BLE001 - only for the message
        return []
    return [f"model.{k}={new[k]} where the run has {old.get(k)}" for k in sorted(new) if old.get(k) != new[k]]


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
