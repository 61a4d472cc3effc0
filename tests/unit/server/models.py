"""Small TorchScript models and repositories for the server tests, built in temporary folders."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from kubemaas_server.model_config import DataType, DynamicBatching, ModelConfig, TensorSpec
from kubemaas_server.repository import save_model


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec(name, DataType(datatype), tuple(shape))


class Mlp(torch.nn.Module):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class IntAffine(torch.nn.Module):
    """Two outputs from one INT64 input: 2x+1 per element and the row sum."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2 + 1, x.sum(dim=1, keepdim=True)


class Text(torch.nn.Module):
    """BYTES in, BYTES and INT64 out: upper-cased strings and their lengths."""

    def forward(self, text: list[str]) -> dict[str, list[str] | torch.Tensor]:
        lengths = torch.tensor([len(item) for item in text], dtype=torch.int64).reshape(-1, 1)
        upper = [item.upper() for item in text]
        out: dict[str, list[str] | torch.Tensor] = {"length": lengths, "upper": upper}
        return out


class Poison(torch.nn.Module):
    """Doubles its input, but raises for any row whose first value is below -1000."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] < -1000.0).any()):
            raise RuntimeError("poisoned row")
        return x * 2.0


class Slow(torch.nn.Module):
    """Row-wise and deliberately slow (tens of ms), so concurrent requests pile up into batches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(1024, 1024) / 32.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.repeat(1, 128)
        for _ in range(20):
            y = torch.tanh(y @ self.weight)
        return y[:, :8]


class RowSum(torch.nn.Module):
    """Unbatched model with a variable dimension: [-1, 3] FP64 -> [3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=0)


class Kinds(torch.nn.Module):
    """One input of every fixed-size datatype, each returned plus one (BOOL negated)."""

    def forward(
        self,
        b: torch.Tensor,
        i8: torch.Tensor,
        i16: torch.Tensor,
        i32: torch.Tensor,
        u8: torch.Tensor,
        f16: torch.Tensor,
        bf16: torch.Tensor,
        f64: torch.Tensor,
    ) -> tuple[
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
    ]:
        return ~b, i8 + 1, i16 + 1, i32 + 1, u8 + 1, f16 + 1, bf16 + 1, f64 + 1


KIND_TYPES = ["BOOL", "INT8", "INT16", "INT32", "UINT8", "FP16", "BF16", "FP64"]

# Signatures of the repository's models that tests build requests from (the fuzzer among them).
MLP = ModelConfig(
    "mlp", inputs=(spec("input", "FP32", [16]),), outputs=(spec("output", "FP32", [4]),), max_batch_size=8
)
INTS = ModelConfig(
    "ints",
    inputs=(spec("x", "INT64", [4]),),
    outputs=(spec("doubled", "INT64", [4]), spec("total", "INT64", [1])),
    max_batch_size=16,
)
TEXT = ModelConfig(
    "text",
    inputs=(spec("text", "BYTES", [1]),),
    outputs=(spec("length", "INT64", [1]), spec("upper", "BYTES", [1])),
    max_batch_size=8,
)
ROWSUM = ModelConfig("rowsum", inputs=(spec("x", "FP64", [-1, 3]),), outputs=(spec("y", "FP64", [3]),))
KINDS = ModelConfig(
    "kinds",
    inputs=tuple(spec(f"in_{t.lower()}", t, [2]) for t in KIND_TYPES),
    outputs=tuple(spec(f"out_{t.lower()}", t, [2]) for t in KIND_TYPES),
    max_batch_size=4,
)
BROKEN = ModelConfig(
    "broken", inputs=(spec("x", "FP32", [2]),), outputs=(spec("y", "FP32", [2]),), max_batch_size=4
)
# The version each of them serves (mlp has two; the highest is served).
SERVED_VERSIONS = {"mlp": "2", "ints": "1", "text": "1", "rowsum": "1", "kinds": "1", "broken": ""}


def build_repository(root: Path) -> Path:
    """Every test model, plus a broken one, in one repository."""
    torch.manual_seed(0)
    save_model(root, MLP, Mlp([16, 32, 4]))
    # Version 1 of mlp is older; version 2 must be served (a differently seeded net).
    save_model(root, MLP, Mlp([16, 32, 4]), version=2)
    save_model(root, INTS, IntAffine())
    save_model(root, TEXT, Text())
    save_model(
        root,
        ModelConfig(
            "poison",
            inputs=(spec("x", "FP32", [2]),),
            outputs=(spec("y", "FP32", [2]),),
            max_batch_size=32,
            dynamic_batching=DynamicBatching(max_queue_delay_ms=50.0),
        ),
        Poison(),
    )
    save_model(
        root,
        ModelConfig(
            "slow",
            inputs=(spec("x", "FP32", [8]),),
            outputs=(spec("y", "FP32", [8]),),
            max_batch_size=32,
            dynamic_batching=DynamicBatching(max_queue_delay_ms=50.0),
        ),
        Slow(),
    )
    save_model(root, ROWSUM, RowSum())
    save_model(root, KINDS, Kinds())
    broken = root / "broken"
    save_model(root, BROKEN, Poison())
    (broken / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    return root


class Busy(torch.nn.Module):
    """Runs for as many matmul rounds as its input says, so a test controls how long a request takes."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(128, 128) / 12.0)

    def forward(self, rounds: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.weight
        for _ in range(int(rounds.max().item())):
            y = torch.tanh(y @ self.weight)
        return rounds + 0.0 * y.sum()


def build_busy_repository(root: Path) -> Path:
    save_model(
        root,
        ModelConfig(
            "busy",
            inputs=(spec("rounds", "FP32", [1]),),
            outputs=(spec("out", "FP32", [1]),),
            max_batch_size=8,
        ),
        Busy(),
    )
    return root


def build_overload_repository(root: Path, *, max_queue_size: int, queue_timeout_ms: float) -> Path:
    """Two `Busy` models with shedding settings: `queued` admits `max_queue_size` waiting
    requests, `timed` keeps the default bound and answers requests that waited longer than
    `queue_timeout_ms` UNAVAILABLE."""
    for name, batching in (
        ("queued", DynamicBatching(max_queue_size=max_queue_size)),
        ("timed", DynamicBatching(default_queue_timeout_ms=queue_timeout_ms)),
    ):
        save_model(
            root,
            ModelConfig(
                name,
                inputs=(spec("rounds", "FP32", [1]),),
                outputs=(spec("out", "FP32", [1]),),
                max_batch_size=8,
                dynamic_batching=batching,
            ),
            Busy(),
        )
    return root
