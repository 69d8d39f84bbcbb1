"""Read the report of `pip install --dry-run --report` for the GPU image's set (`make gpu-resolve`) and check that it
is the CUDA stack Dockerfile.gpu is built for: torch is a CUDA build (not the local +cpu wheel) and the CUDA toolkit
torch pins has the major.minor of the image's ``nvidia/cuda`` base. Exit 0 with a one-line summary, 1 naming the
mismatch.

    python k8s/check_gpu_resolve.py .venv/gpu-resolve.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).with_name("Dockerfile.gpu")


def check(report: dict, dockerfile: str) -> tuple[list[str], str]:
    packages = {i["metadata"]["name"].lower(): i["metadata"] for i in report["install"]}
    torch, vllm = packages["torch"], packages["vllm"]
    problems = []
    if "+cpu" in torch["version"]:
        problems.append(f"torch {torch['version']} is the CPU build; resolve against the package index alone")
    pins = [re.search(r"cuda-toolkit\[.*\]==(\d+)\.(\d+)", d) for d in torch.get("requires_dist", [])]
    cuda = next((m.groups() for m in pins if m), None)
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-devel-", dockerfile, re.M)
    if cuda is None:
        problems.append(f"torch {torch['version']} pins no cuda-toolkit: not a CUDA build")
    elif base is None or base.groups() != cuda:
        image = ".".join(base.groups()) if base else "none"
        problems.append(f"Dockerfile.gpu's CUDA base is {image}, torch {torch['version']} needs CUDA {'.'.join(cuda)}")
    summary = (
        f"gpu extra resolves for Linux x86_64: {len(packages)} packages, torch {torch['version']} "
        f"(CUDA {'.'.join(cuda or ('?', '?'))}), vllm {vllm['version']}, triton {packages['triton']['version']}"
    )
    return problems, summary


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_gpu_resolve.py REPORT.json", file=sys.stderr)
        return 2
    problems, summary = check(json.loads(Path(argv[0]).read_text()), DOCKERFILE.read_text())
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
