"""`check` runs the round trip of a reversible file whose ops change the checkpoint outside the state dict."""

from __future__ import annotations

from pathlib import Path

from ckpt_path.check import check_directory

SCHEMA = '{"version": "%s", "tensors": {"%s": {"shape": [2, 3], "dtype": "float32"}}}'


def _project(tmp_path: Path, ops: str) -> Path:
    directory = tmp_path / "converters"
    (directory / "schemas").mkdir(parents=True)
    (directory / "001_meta.py").write_text(
        'from ckpt_path.ops import MoveMeta, Rename\nsource = "1.0.0"\ntarget = "1.1.0"\nreversible = True\n'
        f"ops = [{ops}]\n",
        encoding="utf-8",
    )
    (directory / "schemas" / "1.0.0.json").write_text(SCHEMA % ("1.0.0", "enc.w"), encoding="utf-8")
    (directory / "schemas" / "1.1.0.json").write_text(SCHEMA % ("1.1.0", "encoder.w"), encoding="utf-8")
    return directory


def test_a_reversible_file_with_metadata_ops_passes_its_round_trip(tmp_path):
    """A rename plus a MoveMeta of a hyper-parameter round-trips: check reports no problem."""
    directory = _project(tmp_path, 'Rename("enc.{p}", "encoder.{p}"), MoveMeta("hyper_parameters.lr", "optim.lr")')
    findings = check_directory(directory)
    assert [f for f in findings if f.problem] == [], [str(f) for f in findings]
    assert not any("round trip not checked" in f.message for f in findings)
