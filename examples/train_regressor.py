"""Train a small MLP regressor with DistributedDataParallel and export it for `kubemaas serve`.

In a TrainingJob (the operator sets the environment):

    command: ["python", "examples/train_regressor.py", "--epochs", "5"]

By hand, one machine, two processes:

    KUBEMAAS_PROCS_PER_WORKER=2 KUBEMAAS_CHECKPOINT_DIR=/tmp/ckpt KUBEMAAS_OUTPUT_DIR=/tmp/models \\
        kubemaas train -- python examples/train_regressor.py

It learns y = sin(x0) + x1^2 / 2 - 0.3 x2 x3 (plus a little noise) from data it generates.
Each rank draws its own batches, and the batch of step s is a pure function of (seed, rank, s),
so a run that resumes from a checkpoint trains on exactly the data the interrupted run would
have: resuming is invisible in the final parameters. Checkpoints go to --checkpoint-dir
($KUBEMAAS_CHECKPOINT_DIR), the servable model to --output ($KUBEMAAS_OUTPUT_DIR) as
`<output>/<name>/model.yaml` and `<output>/<name>/<version>/model.pt`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kubemaas.logs import kv
from kubemaas_trainer import checkpoint, distributed, export

FEATURES = 4
log = logging.getLogger("train_regressor")


def target(x: torch.Tensor) -> torch.Tensor:
    """The function the model learns."""
    return torch.sin(x[:, 0:1]) + 0.5 * x[:, 1:2] ** 2 - 0.3 * x[:, 2:3] * x[:, 3:4]


def batch_for(step: int, *, rank: int, seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch `rank` trains on at `step`: depends on nothing else, so resume is exact."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_000_007 + step)
    x = torch.randn(batch_size, FEATURES, generator=generator)
    noise = 0.05 * torch.randn(batch_size, 1, generator=generator)
    return x, target(x) + noise


def build_model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(FEATURES, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    )


def parameter_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("KUBEMAAS_CHECKPOINT_DIR") or None,
        help="default $KUBEMAAS_CHECKPOINT_DIR; unset: no checkpoints, no resume",
    )
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps; default once per epoch")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    parser.add_argument(
        "--output",
        default=os.environ.get("KUBEMAAS_OUTPUT_DIR") or None,
        help="model repository to export into; default $KUBEMAAS_OUTPUT_DIR; unset: no export",
    )
    parser.add_argument("--name", default="regressor", help="model name in the repository")
    parser.add_argument("--report", type=Path, help="folder for a per-rank JSON summary (rank-N.json)")
    parser.add_argument(
        "--sleep-per-step", type=float, default=0.0, help="slow down, to watch or interrupt a run"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.steps_per_epoch < 1 or args.batch_size < 1:
        parser.error("--epochs, --steps-per-epoch and --batch-size must be >= 1")
    if args.checkpoint_every <= 0:
        args.checkpoint_every = args.steps_per_epoch
    return args


def write_report(folder: Path, rank: int, report: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".rank-{rank}.json.tmp"
    temp.write_text(json.dumps(report, indent=2))
    os.replace(temp, folder / f"rank-{rank}.json")


def train(args: argparse.Namespace, ctx: distributed.DistributedContext) -> dict[str, Any]:
    torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = build_model(args.hidden).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    store = checkpoint.CheckpointStore(args.checkpoint_dir, keep=args.keep) if args.checkpoint_dir else None
    start = 0
    latest = store.load_latest() if store else None
    if latest is not None:
        model.load_state_dict(latest.state["model"])
        optimizer.load_state_dict(latest.state["optimizer"])
        start = latest.step

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    loss_fn = nn.MSELoss()
    total = args.epochs * args.steps_per_epoch
    log.info("training", extra=kv(start_step=start, total_steps=total, restart_count=ctx.restart_count))

    epoch_losses: list[dict[str, float | int]] = []
    running = torch.zeros(2, device=ctx.device)  # loss sum, step count (this epoch, this rank)
    for step in range(start + 1, total + 1):
        x, y = batch_for(step, rank=ctx.rank, seed=args.seed, batch_size=args.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x.to(ctx.device)), y.to(ctx.device))
        loss.backward()
        optimizer.step()
        running += torch.stack([loss.detach(), torch.ones((), device=ctx.device)])
        if args.sleep_per_step:
            time.sleep(args.sleep_per_step)

        if store is not None and (step % args.checkpoint_every == 0 or step == total):
            store.save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        if step % args.steps_per_epoch == 0 or step == total:
            dist.all_reduce(running)  # every rank's steps: the loss of the whole epoch
            epoch = (step - 1) // args.steps_per_epoch + 1
            mean = float(running[0] / running[1])
            epoch_losses.append({"epoch": epoch, "step": step, "loss": mean})
            log.info("epoch done", extra=kv(epoch=epoch, step=step, loss=f"{mean:.5f}"))
            running.zero_()

    report: dict[str, Any] = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "restart_count": ctx.restart_count,
        "start_step": start,
        "final_step": total,
        "losses": epoch_losses,
        "param_sha256": parameter_digest(model),
    }
    if args.output:
        example, _ = batch_for(0, rank=0, seed=args.seed, batch_size=8)
        exported = export.export_model(
            ddp,
            example.to(ctx.device),
            args.output,
            name=args.name,
            inputs=[("x", "FP32", [FEATURES])],
            outputs=[("y", "FP32", [1])],
            max_batch_size=64,
        )
        report["export"] = {"version": exported.version, "path": str(exported.model_file)}
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with distributed.session() as ctx:
        report = train(args, ctx)
        if args.report is not None:
            write_report(args.report, ctx.rank, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
