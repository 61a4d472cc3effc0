"""The concurrency autoscaler against load traces: provisioning used vs ideal, shortfall, events.

`make bench-autoscaling` runs this. It simulates every standard trace (step, ramp, spike,
diurnal, noisy constant) through the real `decide` function
(`kubemaas_operator.autoscaling.simulation`: 1 s ticks, a decision every 2 s, pods ready 5 s
after they are created), prints the tables and writes them into docs/autoscaling.md between its
markers. Deterministic and CPU-only: a unit test checks the docs against a fresh run. A
benchmark, not a test: nothing here asserts; the targets are checked and reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kubemaas_operator.autoscaling.simulation import benchmark_spec, render_tables, run_benchmark, simulate
from kubemaas_operator.autoscaling.traces import spike_trace

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "autoscaling.md"
BEGIN, END = "<!-- bench-autoscaling:begin -->", "<!-- bench-autoscaling:end -->"


def spike_targets() -> str:
    """The issue's spike targets (shortfall < 5% of the time, used <= 1.3x ideal), per delay."""
    lines = []
    for delay in (60.0, 300.0):  # the CRD default first
        result = simulate(spike_trace(), benchmark_spec(scale_down_delay_seconds=delay))
        met = result.shortfall_share < 0.05 and result.ratio <= 1.3
        lines.append(
            f"spike, scaleDownDelaySeconds {delay:g}: shortfall {result.shortfall_share:.1%} (< 5%), "
            f"used/ideal {result.ratio:.2f}x (<= 1.3x): {'met' if met else 'MISSED'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/autoscaling.md alone")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tables = render_tables(run_benchmark())
    print(tables)
    print(spike_targets())
    print(f"\n[bench-autoscaling] simulated in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.no_write:
        return 0
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"[bench-autoscaling] {DOC} lacks the {BEGIN} / {END} markers", file=sys.stderr)
        return 1
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{tables}{END}{tail}")
    print(f"[bench-autoscaling] wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
