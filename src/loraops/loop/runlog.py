"""What of a training's output reaches the run's log: loraops' own lines, the loss every 10 steps, each
validation loss, and a remote job's own log lines (without progress bars); the rest stays in the log
file logged to MLflow."""

from __future__ import annotations

from collections.abc import Callable

from loraops.train.render import parse_metrics_line


def training_log(
    log: Callable[[str], None], step: Callable[[], int], *, remote: bool
) -> Callable[[str], None]:
    """A line handler for the trainer's output that passes the lines worth reading to ``log``;
    ``step()`` is the metric step reached so far."""

    def show(line: str) -> None:
        if line.startswith("[loraops]"):
            log(line.removeprefix("[loraops] "))
            return
        parsed = parse_metrics_line(line)
        if parsed is None:
            if remote and line.strip() and "it/s]" not in line and "%|" not in line:
                log(f"[job] {line}")  # the job's CloudWatch log
            return
        if "loss" in parsed and step() % 10 == 1:
            log(f"train step {step()} epoch {parsed.get('epoch', 0.0):.2f} loss {parsed['loss']:.4f}")
        elif "eval_loss" in parsed:
            log(f"val   epoch {parsed.get('epoch', 0.0):.2f} loss {parsed['eval_loss']:.4f}")

    return show
