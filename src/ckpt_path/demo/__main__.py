"""The demo: convert a real old checkpoint across the example graph and prove it still works.

Run from the repository root (``make demo``). It trains the 0.1.0 model for a few steps, saves
its checkpoint the way an old release would have (no stamp), then uses the installed
``ckpt-path`` command exactly as a user would: inspect, stamp, plan, convert to ``latest``
and to ``lam@latest``. Each converted checkpoint is loaded into that version's model class
with ``strict=True`` and must forecast the same as the old model, feature by feature.
Exit code 1 if anything differs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ckpt_path.demo.models import make_checkpoint, make_fields, make_model, outputs

OUT = Path("demo-out")
CONVERTERS = Path("converters")
TOLERANCE = 1e-12
"""Largest difference allowed; models run in float64, where reordering sums costs ~1e-16."""


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to people


def _ckpt_path(*args: str, expect_failure: bool = False) -> str:
    exe = shutil.which("ckpt-path", path=str(Path(sys.executable).parent)) or "ckpt-path"
    command = (
        [exe, *args, "--converters", str(CONVERTERS)]
        if args[0]
        in {
            "plan",
            "convert",
            "graph",
        }
        else [exe, *args]
    )
    _say("\n$ ckpt-path " + " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - our own command
    text = (done.stdout + done.stderr).rstrip()
    _say(text)
    if (done.returncode != 0) != expect_failure:
        _say(f"demo: unexpected exit code {done.returncode}")
        sys.exit(1)
    return text


def _forecast(checkpoint_file: Path, version: str, fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ckpt = torch.load(checkpoint_file, weights_only=True)
    model = make_model(version).double()
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return outputs(model, fields, version)


def _compare(name: str, old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> float:
    worst = max(float((old[f] - new[f]).abs().max()) for f in old)
    verdict = "same forecast" if worst <= TOLERANCE else "DIFFERENT forecast"
    _say(f"   {name}: {verdict} (largest difference over all features: {worst:.1e})")
    return worst


def main() -> None:
    """Run the demo; exit 1 when a converted checkpoint forecasts differently."""
    if not CONVERTERS.is_dir():
        _say("demo: run it from the repository root (it uses ./converters)")
        sys.exit(1)
    OUT.mkdir(exist_ok=True)
    old = OUT / "forecaster-0.1.0.ckpt"
    _say("== 1. An old release (0.1.0) trains a model and saves a checkpoint, with no stamp.")
    torch.save(make_checkpoint("0.1.0", seed=7, train_steps=20), old)
    _ckpt_path("inspect", str(old))

    _say("\n== 2. Stamp it once with the version that wrote it, and see the path to the newest code.")
    _ckpt_path("stamp", str(old), "0.1.0")
    _ckpt_path("plan", str(old), "latest")

    _say("\n== 3. Dry run: what each step adds, removes and reshapes, without reading tensor data.")
    _ckpt_path("convert", str(old), "--dry-run")

    _say("\n== 4. Convert to latest and to the lam branch; shapes are checked after every step.")
    latest = OUT / "forecaster-latest.ckpt"
    lam = OUT / "forecaster-lam.ckpt"
    _ckpt_path("convert", str(old), "-o", str(latest), "--force")
    _ckpt_path("convert", str(old), "-o", str(lam), "--to", "lam@latest", "--force")
    _ckpt_path("inspect", str(latest))

    _say("\n== 5. A downgrade that would lose information needs consent.")
    _ckpt_path("plan", str(latest), "0.3.0", expect_failure=True)
    back = OUT / "forecaster-0.3.0.ckpt"
    _ckpt_path("convert", str(latest), "-o", str(back), "--to", "0.3.0", "--allow-lossy", "--force")

    _say("\n== 6. Load each result into that version's model with strict=True and forecast.")
    fields = {name: field.double() for name, field in make_fields(seed=123, batch=3, nodes=7).items()}
    reference = _forecast(old, "0.1.0", fields)
    worst = max(
        _compare("1.1.0 (latest) vs 0.1.0", reference, _forecast(latest, "1.1.0", fields)),
        _compare("1.0.0+lam vs 0.1.0", reference, _forecast(lam, "1.0.0+lam", fields)),
        _compare("0.3.0 (downgraded from 1.1.0) vs 0.1.0", reference, _forecast(back, "0.3.0", fields)),
    )
    if worst > TOLERANCE:
        _say("\ndemo: FAILED, a converted checkpoint forecasts differently")
        sys.exit(1)
    _say(f"\nDemo passed: every converted checkpoint loads with strict=True and forecasts like 0.1.0. Files in {OUT}/")


if __name__ == "__main__":
    main()
