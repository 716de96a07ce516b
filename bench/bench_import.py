"""Import speed and memory of ``import_vlfeedback`` on a synthetic VLFeedback-layout JSONL.

Each size runs in a fresh process (so its peak RSS is its own) on a new SQLite ledger: records of
4 answers with 3 rated aspects each, ~1 KiB of text per answer, images drawn from 16 tiny shared
PNG files. Goal: 80,000 records in under 5 minutes, and a peak RSS that does not grow with the
file (20k vs 80k within 15%).

Run: ``python -m bench.bench_import`` (options: ``--sizes 20000,80000``).
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
from PIL import Image

from services.pair_builder.dataset_io import import_vlfeedback
from shared.blobs.store import BlobStore
from shared.ledger import Ledger

MODELS = ["gpt4v", "llava-v1.5-7b", "llava-v1.5-13b", "qwen-vl-chat", "idefics-9b", "fuyu-8b"]
ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")
SHARED_IMAGES = 16
GOAL_S = 300.0
RSS_GROWTH_LIMIT = 1.15

app = typer.Typer(add_completion=False)


def write_images(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(SHARED_IMAGES):
        out = io.BytesIO()
        Image.new("RGB", (32, 32), (n * 15, 100, 200)).save(out, format="PNG")
        (root / f"img_{n:02d}.png").write_bytes(out.getvalue())


def synthetic_record(n: int) -> dict:
    models = [MODELS[(n + k) % len(MODELS)] for k in range(4)]
    filler = "The image shows a small red circle on a white background. " * 16
    return {
        "id": f"synthetic-{n:08d}",
        "prompt": f"Describe the image in detail ({n}).",
        "models": models,
        "img_path": f"img_{n % SHARED_IMAGES:02d}.png",
        "completions": [
            {
                "model": model,
                "response": f"{model} answer {n}: {filler}",
                "annotations": {
                    aspect: {
                        "Rating": "N/A" if (n + k) % 97 == 0 else str(1 + (n * 7 + k * 3 + a) % 5),
                        "Rationale": f"{model} is rated on {aspect.lower()}: the answer is grounded.",
                    }
                    for a, aspect in enumerate(ASPECTS)
                },
            }
            for k, model in enumerate(models)
        ],
    }


def write_jsonl(path: Path, records: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for n in range(records):
            out.write(json.dumps(synthetic_record(n)) + "\n")


def cpu_s() -> float:
    """CPU seconds of this process: unlike wall time, unaffected by other processes on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@app.command()
def main(
    sizes: str = typer.Option("20000,80000", help="Comma-separated record counts, each in its own process."),
    one: int = typer.Option(0, help="Internal: measure one size in this process and print JSON."),
) -> None:
    if one:
        print(json.dumps(measure(one)))
        return
    results = []
    for size in [int(s) for s in sizes.split(",")]:
        run = subprocess.run(
            [sys.executable, "-m", "bench.bench_import", "--one", str(size)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{result['records']:>7} records: import {result['import_s']:7.1f} s "
            f"({result['records_per_s']:7.0f} records/s, {result['import_cpu_s']:.1f} CPU s), "
            f"re-run {result['rerun_s']:6.1f} s, "
            f"peak RSS {result['peak_rss_mib']:6.1f} MiB (before import {result['rss_before_mib']:.1f})"
        )
    largest = max(results, key=lambda r: r["records"])
    smallest = min(results, key=lambda r: r["records"])
    growth = largest["peak_rss_mib"] / smallest["peak_rss_mib"]
    print(
        f"peak RSS {largest['records']} vs {smallest['records']}: x{growth:.2f} (limit x{RSS_GROWTH_LIMIT})"
    )
    if largest["records"] >= 80_000:
        verdict = "meets" if largest["import_s"] < GOAL_S else "MISSES"
        print(
            f"{largest['records']} records in {largest['import_s']:.1f} s: {verdict} the {GOAL_S:.0f} s goal"
        )


def measure(records: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images")
        source = root / "vlfeedback.jsonl"
        write_jsonl(source, records)
        ledger = Ledger(f"sqlite:///{root / 'ledger.db'}")
        ledger.migrate()
        blobs = BlobStore(str(root / "blobs"))
        rss_before = peak_rss_mib()
        started, cpu_started = time.perf_counter(), cpu_s()
        report = import_vlfeedback(source, root / "images", ledger, blobs, show_progress=False)
        import_s, import_cpu_s = time.perf_counter() - started, cpu_s() - cpu_started
        started = time.perf_counter()
        rerun = import_vlfeedback(source, root / "images", ledger, blobs, show_progress=False)
        rerun_s = time.perf_counter() - started
        ledger.close()
    assert report.records_imported == records and rerun.facts_inserted == 0, (report, rerun)
    return {
        "records": records,
        "facts": report.facts_inserted,
        "import_s": round(import_s, 2),
        "records_per_s": round(records / import_s, 1),
        "import_cpu_s": round(import_cpu_s, 2),
        "rerun_s": round(rerun_s, 2),
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


if __name__ == "__main__":
    app()
