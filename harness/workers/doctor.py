"""`reprod-harness doctor`: each framework imported in a fresh process of its worker's interpreter and described."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBES = {
    "torch": (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({'version': torch.__version__, "
        "'cuda_build': torch.version.cuda, 'cudnn': torch.backends.cudnn.version() if c else None, "
        "'nccl': '.'.join(map(str, torch.cuda.nccl.version())) if c else None, "
        "'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))"
    ),
    "paddle": (
        "import json, paddle; c = paddle.device.is_compiled_with_cuda(); print(json.dumps({'version': paddle.__version__, "
        "'cuda_build': paddle.version.cuda() if c else None, 'cudnn': paddle.version.cudnn() if c else None, "
        "'nccl': str(paddle.version.nccl()) if c else None, "
        "'devices': [paddle.device.cuda.get_device_name(i) for i in range(paddle.device.cuda.device_count())] if c else []}))"
    ),
}
INSTALL_HINT = {
    "torch": 'pip install -e ".[torch]"  (or a CUDA build from pytorch.org)',
    "paddle": 'pip install -e ".[paddle]"  (or paddlepaddle-gpu from paddlepaddle.org.cn)',
}


def probe(framework: str, timeout: float = 120.0, python: str | None = None) -> dict:
    """Import one framework in a fresh process of its worker's interpreter (default: this one) and
    describe it ({"error": ...} when it cannot)."""
    env = dict(os.environ, GLOG_minloglevel="2")
    try:
        proc = subprocess.run([python or sys.executable, "-c", PROBES[framework]], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"importing {framework} took over {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return {"error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe(info: dict) -> str:
    cuda = f"CUDA {info['cuda_build']}" if info.get("cuda_build") else "CPU build"
    extra = "".join(f", {k} {info[k]}" for k in ("cudnn", "nccl") if info.get(k))
    devices = ", ".join(info["devices"]) or "no GPU visible"
    return f"{info['version']} ({cuda}{extra}); devices: {devices}"


def describe_interpreter(info: dict) -> str:
    """A worker's interpreter as harness/workers/interpreters.describe_all found it."""
    where = info.get("interpreter", "")
    if "error" in info:
        return f"{where}: {info['error']}"
    versions = ", ".join(f"{label} {info[key]}" for key, label in
                         (("python", "Python"), ("numpy", "numpy"), ("harness", "reprod-harness")) if key in info)
    missing = f"; cannot import {info['missing']}" if "missing" in info else ""
    return f"{where} ({versions}{missing})"
