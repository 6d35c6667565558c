"""P6: tokens per second of a streamed chat completion, client -> gateway -> engine against
client -> engine, with the same client (the official openai SDK, streaming) and the same prompt,
interleaved. The engine is the real llama.cpp session (smollm2-135m) launched through the
extension's REST API in a `jupyter server` subprocess.

tokens/s = streamed content chunks (llama.cpp sends one token per chunk) / seconds from the
request to the last chunk; the decode rate (first chunk to last) is reported too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import openai
from common import stats, write
from p1_proxy import TOKEN, JupyterServer

RUNS = 8
MAX_TOKENS = 128
PROMPT = "Write a short story about a lighthouse keeper and a storm."


def one(client: openai.OpenAI, model: str) -> dict[str, float]:
    start = time.perf_counter()
    first = last = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS,
        temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    assert first is not None and last is not None and tokens > 1
    return {"tokens": tokens, "tokens_per_s": tokens / (last - start),
            "decode_tokens_per_s": (tokens - 1) / (last - first), "ttft_s": first - start}


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmpdir:
        srv = JupyterServer(Path(tmpdir))
        sid = None
        try:
            session = srv.launch()
            sid = session["id"]
            endpoint = session["endpoints"][0]
            direct = openai.OpenAI(base_url=endpoint + "/v1", api_key=srv.api_key(sid),
                                   max_retries=0)
            gateway = openai.OpenAI(base_url=srv.url + "hpcserve/v1", api_key=TOKEN,
                                    max_retries=0)
            cases = {"direct": (direct, session["model"]), "gateway": (gateway, session["name"])}
            for client, model in cases.values():  # warm-up
                one(client, model)
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
            for _ in range(RUNS):
                for name, (client, model) in cases.items():
                    runs[name].append(one(client, model))
            direct.close()
            gateway.close()
        finally:
            if sid:
                srv.stop(sid)
            srv.close()
    out = {}
    for name, samples in runs.items():
        out[name] = {k: stats([s[k] for s in samples])
                     for k in ("tokens_per_s", "decode_tokens_per_s", "ttft_s", "tokens")}
        print(f"{name:8} tokens/s median {out[name]['tokens_per_s']['median']:7.1f} "
              f"(decode {out[name]['decode_tokens_per_s']['median']:7.1f})  "
              f"ttft median {out[name]['ttft_s']['median'] * 1000:6.1f} ms  "
              f"tokens {out[name]['tokens']['median']:.0f}")
    ratio = out["gateway"]["tokens_per_s"]["median"] / out["direct"]["tokens_per_s"]["median"]
    ttft_over = out["gateway"]["ttft_s"]["median"] - out["direct"]["ttft_s"]["median"]
    print(f"gateway / direct tokens/s: {ratio:.3f}; extra time to first token "
          f"{ttft_over * 1000:.1f} ms")
    result = {"runs": RUNS, "max_tokens": MAX_TOKENS, "client": "openai SDK, stream=True",
              "engine": "llama.cpp smollm2-135m on CPU", **out,
              "gateway_over_direct_tokens_per_s": round(ratio, 4),
              "gateway_extra_ttft_s": round(ttft_over, 5)}
    print("wrote", write("p6_gateway", result))
    return result


if __name__ == "__main__":
    main()
