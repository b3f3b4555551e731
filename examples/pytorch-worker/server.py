"""A PyTorch model server for a Hearth session: the warm-state example.

At start it builds a model and loads its weights into GPU memory (the slow part a
persistent session exists to pay only once), then answers one forward pass per request
over plain HTTP. It keeps everything in VRAM between requests, so a turn costs a forward
pass, not a load. It reports how many times it has warmed up, so "no re-warm" is visible.

Run by the agent's process runtime (PORT comes from the agent) or by hand:
    PORT=8000 python3 server.py
Endpoints:
    GET  /healthz   200 once the weights are resident
    GET  /state     JSON: warmups, requests, device, load_seconds, vram bytes
    POST /forward   body: JSON {"tokens": [int, ...]} (optional); returns the output summary
Environment:
    PORT          listen port (default 8000)
    MODEL_DIM     hidden size (default 4096)
    MODEL_LAYERS  layers (default 16): 16 x 4096^2 fp16 = 512 MiB of weights
    STATE_DIR     where the warm-up counter lives (default /tmp)
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

PORT = int(os.environ.get("PORT", "8000"))
DIM = int(os.environ.get("MODEL_DIM", "4096"))
LAYERS = int(os.environ.get("MODEL_LAYERS", "16"))
STATE_DIR = os.environ.get("STATE_DIR", "/tmp")
COUNTER = os.path.join(STATE_DIR, "hearth-pytorch-worker.warmups")


def bump_warmups() -> int:
    try:
        with open(COUNTER) as f:
            n = int(f.read().strip() or "0")
    except (FileNotFoundError, ValueError):
        n = 0
    n += 1
    with open(COUNTER, "w") as f:
        f.write(str(n))
    return n


def load_model():
    """Builds the weights on the CPU, then moves them into VRAM: a model load."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    layers = [torch.nn.Linear(DIM, DIM, bias=False) for _ in range(LAYERS)]
    model = torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.GELU())])
    model = model.to(device=device, dtype=dtype).eval()
    with torch.inference_mode():
        model(torch.zeros(1, DIM, device=device, dtype=dtype))  # warm kernels
    if device == "cuda":
        torch.cuda.synchronize()
    return model, device, dtype


started = time.monotonic()
MODEL, DEVICE, DTYPE = load_model()
LOAD_SECONDS = time.monotonic() - started
WARMUPS = bump_warmups()
REQUESTS = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: one line per request is too much for turns
        pass

    def reply(self, code: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            self.reply(200, {"ok": True})
        elif self.path == "/state":
            vram = torch.cuda.memory_allocated() if DEVICE == "cuda" else 0
            self.reply(200, {
                "warmups": WARMUPS,
                "requests": REQUESTS,
                "device": DEVICE,
                "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else None,
                "load_seconds": round(LOAD_SECONDS, 3),
                "vram_allocated_bytes": vram,
                "pid": os.getpid(),
            })
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        global REQUESTS
        if self.path != "/forward":
            self.reply(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b"{}"
        try:
            tokens = json.loads(raw or b"{}").get("tokens", [1, 2, 3])
        except json.JSONDecodeError as e:
            self.reply(400, {"error": f"body is not JSON: {e}"})
            return
        t0 = time.monotonic()
        with torch.inference_mode():
            x = torch.zeros(1, DIM, device=DEVICE, dtype=DTYPE)
            for i, tok in enumerate(tokens[:DIM]):
                x[0, i % DIM] = float(tok % 7)
            y = MODEL(x)
            total = float(y.float().sum().item())  # .item() waits for the GPU
        REQUESTS += 1
        self.reply(200, {"sum": total, "forward_ms": round((time.monotonic() - t0) * 1000, 3),
                         "warmups": WARMUPS, "requests": REQUESTS})


if __name__ == "__main__":
    print(f"pytorch worker: {LAYERS}x{DIM} on {DEVICE} loaded in {LOAD_SECONDS:.2f}s "
          f"(warm-up #{WARMUPS}); listening on :{PORT}", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
