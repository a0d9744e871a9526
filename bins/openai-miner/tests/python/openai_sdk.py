# The official `openai` SDK against the miner's /v1/* with an --openai_api.key bearer key.
# Reads {"base_url", "key", "wrong_key", "model"} as JSON on stdin; prints what the SDK saw
# as JSON on stdout (the Rust test judges it).
import json
import sys

import openai

spec = json.load(sys.stdin)
messages = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]


def client(key):
    return openai.OpenAI(base_url=spec["base_url"], api_key=key, max_retries=0, timeout=30.0)


def refusal(call):
    try:
        call()
    except openai.APIStatusError as e:
        return {
            "class": type(e).__name__,
            "status": e.status_code,
            "body": e.body,
            "code": e.code,
            "type": e.type,
            "message": e.message,
        }
    return None


out = {"sdk_version": openai.__version__}
good = client(spec["key"])

plain = good.chat.completions.create(
    model=spec["model"], messages=messages, max_tokens=16, temperature=0.5
)
out["plain"] = plain.model_dump()

chunks = []
stream = good.chat.completions.create(
    model=spec["model"], messages=messages, max_tokens=16, stream=True
)
for chunk in stream:
    chunks.append(chunk.model_dump())
out["stream"] = chunks

# Asks for a usage chunk, as clients that count tokens do.
chunks = []
stream = good.chat.completions.create(
    model=spec["model"],
    messages=messages,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    chunks.append(chunk.model_dump())
out["stream_with_usage"] = chunks

out["models"] = [m.model_dump() for m in good.models.list()]

bad = client(spec["wrong_key"])
out["wrong_key"] = refusal(
    lambda: bad.chat.completions.create(model=spec["model"], messages=messages)
)
out["wrong_key_stream"] = refusal(
    lambda: list(
        bad.chat.completions.create(model=spec["model"], messages=messages, stream=True)
    )
)

json.dump(out, sys.stdout)
