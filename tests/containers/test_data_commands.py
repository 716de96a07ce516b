"""`vlf import` and `vlf export` in the CPU image (no torch), run as the chart runs containers:
the data commands need only the light ``data`` extra."""

from __future__ import annotations

import os
import subprocess

import pyarrow.parquet as pq

from shared.contracts import events as ev
from shared.ledger import Ledger
from tests.containers.podman import CPU_IMAGE, LIMITS, PODMAN, require_image
from tests.integration.test_import_sources import COLOURS, release_folder

IMAGE_UID = 10001


def _vlf_in_image(data, *args: str) -> subprocess.CompletedProcess:
    command = [
        *PODMAN, "run", "--rm", *LIMITS,
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", f"{IMAGE_UID}:{IMAGE_UID}", "--network", "none",
        "--tmpfs", "/tmp:rw,size=256m,mode=1777",
        "--volume", f"{data}:/data:rw", "--workdir", "/data",
        "-e", "VLF_LEDGER_URL=sqlite:////data/ledger.db", "-e", "VLF_BLOB_URL=/data/blobs",
        CPU_IMAGE, "vlf.cli", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_cpu_image_imports_a_release_and_exports_trl_pairs(tmp_path):
    require_image(CPU_IMAGE)
    data = tmp_path / "data"
    release_folder(data / "VLFeedback", "vlfeedback_80k.jsonl", prefixed=False)
    for path in [data, *data.rglob("*")]:
        os.chown(path, IMAGE_UID, IMAGE_UID)

    imported = _vlf_in_image(data, "import", "/data/VLFeedback")
    exported = _vlf_in_image(data, "export", "trl", "/data/out")
    torch_free = subprocess.run(
        [*PODMAN, "run", "--rm", *LIMITS, "--network", "none", "--entrypoint", "python", CPU_IMAGE, "-c",
         "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"],
        capture_output=True,
        text=True,
    )  # fmt: skip

    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "imported 3 of 3 records" in imported.stdout
    assert exported.returncode == 0, exported.stdout + exported.stderr
    ledger = Ledger(f"sqlite:///{data / 'ledger.db'}")
    try:
        assert ledger.count(ev.Instruction) == len(COLOURS)
        train_pairs = sum(pair.split == "train" for pair in ledger.iter_facts(ev.Pair))
    finally:
        ledger.close()
    assert train_pairs > 0 and pq.read_table(data / "out" / "train.parquet").num_rows == train_pairs
    assert torch_free.returncode == 0, "the CPU image stays without torch"
