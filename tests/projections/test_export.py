"""Export bundles verify with a standard-library script, and tampered copies do not."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import subprocess
import sys

import pytest

import ledgerflow as lf
from ledgerflow.events import open_store
from ledgerflow.projections import export_run

PIPELINE = str(pathlib.Path(__file__).parent / "pipelines" / "audited.py")
VERIFIER = str(pathlib.Path(__file__).parents[2] / "examples" / "verify_export.py")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, ray_address):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("export")
    settings = lf.Settings.resolve(home=str(home / "home"), address=ray_address)
    result = lf.run(PIPELINE, params={"marker_dir": str(home)}, run_id="exported", settings=settings)
    assert result.status == "waiting_for_approval"
    path = home / "exported.jsonl"

    async def write():  # type: ignore[no-untyped-def]
        store = await open_store(settings.store_url)
        try:
            return await export_run(store, "exported", str(path))
        finally:
            await store.close()

    header = asyncio.run(write())
    return path, header


def _verify(path: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, VERIFIER, str(path), *extra], capture_output=True, text=True)


def test_export_untouched_verifies(bundle):
    path, header = bundle
    result = _verify(path, header["head_hash"])
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "ok"


def test_export_changed_byte_rejected(bundle, tmp_path):
    path, _ = bundle
    lines = path.read_text().splitlines()
    event = json.loads(lines[3])
    last_digit = event["recorded_at"][-2]
    event["recorded_at"] = event["recorded_at"][:-2] + ("1" if last_digit != "1" else "2") + "Z"
    lines[3] = json.dumps(event)
    tampered = tmp_path / "changed.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    assert _verify(tampered).returncode == 1


def test_export_changed_payload_rejected(bundle, tmp_path):
    path, _ = bundle
    lines = path.read_text().splitlines()
    event = json.loads(lines[2])
    payload = bytearray(base64.b64decode(event["payload"]))
    payload[-1] ^= 0x01
    event["payload"] = base64.b64encode(bytes(payload)).decode()
    lines[2] = json.dumps(event)
    tampered = tmp_path / "payload.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    assert _verify(tampered).returncode == 1


def test_export_dropped_line_rejected(bundle, tmp_path):
    path, _ = bundle
    lines = path.read_text().splitlines()
    tampered = tmp_path / "dropped.jsonl"
    tampered.write_text("\n".join(lines[:4] + lines[5:]) + "\n")
    assert _verify(tampered).returncode == 1
    tail_cut = tmp_path / "tail.jsonl"
    tail_cut.write_text("\n".join(lines[:-1]) + "\n")
    assert _verify(tail_cut).returncode == 1


def test_export_reordered_lines_rejected(bundle, tmp_path):
    path, _ = bundle
    lines = path.read_text().splitlines()
    lines[3], lines[4] = lines[4], lines[3]
    tampered = tmp_path / "reordered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    assert _verify(tampered).returncode == 1


def test_export_other_head_rejected(bundle):
    path, _ = bundle
    assert _verify(path, "00" * 32).returncode == 1
