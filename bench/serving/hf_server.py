"""Baseline (c) for bench/serving: a plain transformers + PEFT ``generate`` server, one request at a time.

Just enough of ``POST /v1/chat/completions`` (streaming, with a final ``usage`` chunk) for the benchmark client;
not part of ftops. Run: ``python bench/serving/hf_server.py BASE_DIR ADAPTER_DIR PORT``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


def main() -> None:
    base_dir, adapter_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    lock = threading.Lock()  # plain generate: one request at a time
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        ids = tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        max_tokens = int(body.get("max_tokens") or 16)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        count = {"n": 0}

        def run() -> None:
            with lock, torch.inference_mode():
                out = model.generate(
                    **ids,
                    max_new_tokens=max_tokens,
                    min_new_tokens=max_tokens if body.get("ignore_eos") else 0,
                    do_sample=False,
                    streamer=streamer,
                )
                count["n"] = out.shape[1] - ids["input_ids"].shape[1]

        thread = threading.Thread(target=run)
        thread.start()
        rid = f"chatcmpl-{uuid.uuid4().hex}"

        async def events():
            loop = asyncio.get_running_loop()
            iterator = iter(streamer)
            while True:
                text = await loop.run_in_executor(None, next, iterator, None)
                if text is None:
                    break
                chunk = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            await loop.run_in_executor(None, thread.join)
            prompt = ids["input_ids"].shape[1]
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": count["n"],
                "total_tokens": prompt + count["n"],
            }
            final = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
