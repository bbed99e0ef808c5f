"""How fast a cancel takes effect at a large size (issue 11), and the step time the status reports.

Protocol: tiny random-weight models on the CPU; one 150-step frame at SIZE x SIZE; once
the status shows step 2 (so ``step_s`` is known) the job is cancelled, and the time until
its status reads ``cancelled`` is printed next to ``step_s``. The cancel is checked before
every UNet/ControlNet block, so it should take a fraction of one step.

    .venv-engine/bin/python benchmarks/bench_cancel.py 512
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, load_core, make_tiny_models, png  # noqa: E402


def main() -> int:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    _, process_mod = load_core("vf_core_bench_fd")
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_models(f"{tmp}/m")
        engine = process_mod.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=f"{tmp}/d", device="cpu",
                                         env={"HF_HUB_OFFLINE": "1"}, startup_timeout=300)
        client = engine.start()
        try:
            ramp = np.linspace(0, 65535, size, dtype=np.float32)[:, None].repeat(size, 1).astype(np.uint16)
            depth = client.upload_blob(png(ramp))
            job_id = client.submit({
                "prompt": "x", "steps": 150, "width": size, "height": size, "batch_size": 1, "device": "cpu",
                "models": {"base": f"{tmp}/m/sd15", "controlnet_depth": f"{tmp}/m/controlnet-depth",
                           "controlnet_pose": None},
                "frames": [{"frame": 1, "depth": depth}]})
            status = client.status(job_id)
            while status["step"] < 2 and status["status"] in ("queued", "running"):
                time.sleep(0.2)
                status = client.status(job_id)
            sent = time.perf_counter()
            at_cancel = client.cancel(job_id)["step"]
            while client.status(job_id)["status"] not in ("cancelled", "done", "failed"):
                time.sleep(0.05)
            final = client.status(job_id)
            print(json.dumps({"size": size, "step_s": final["step_s"], "cancel_at_step": at_cancel,
                              "final_step": final["step"], "status": final["status"],
                              "cancel_to_cancelled_s": round(time.perf_counter() - sent, 2)}))
        finally:
            engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
