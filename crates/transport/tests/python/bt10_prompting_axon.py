"""A real bittensor 10.5 Axon serving text-prompting v2.1.6's synapses, for the dendrite tests.

Usage: bt10_prompting_axon.py WALLET_PATH PORT BLOCKED_HOTKEY

Serves on 127.0.0.1:PORT without any chain (`axon.start()`, no `serve`), with the wallet
`WALLET_PATH/miner` (hotkey `default`). Prints `READY <port>` once listening, then runs until
its stdin closes.

* Prompting: forward = "echo: " + last message; the message "sleep" sleeps 3 s first.
* StreamPrompting: streams the same text 3 bytes at a time (multi-byte characters get
  split across chunks); the message "slow-stream" streams "partial" then stalls 3 s.
* A blacklist refuses BLOCKED_HOTKEY with reason "hotkey not registered".
"""
import asyncio
import sys
from typing import List, Tuple

import bittensor.utils.networking as networking

# No internet here: the Axon would look up its external IP online.
networking.get_external_ip = lambda: "127.0.0.1"

import bittensor as bt  # noqa: E402
import pydantic  # noqa: E402
from bittensor_wallet import Wallet  # noqa: E402


class Prompting(bt.Synapse):
    """text-prompting v2.1.6's Prompting synapse."""

    required_hash_fields: List[str] = pydantic.Field(["messages"], frozen=True)
    roles: List[str] = pydantic.Field(..., frozen=True)
    messages: List[str] = pydantic.Field(..., frozen=True)
    completion: str = ""

    def deserialize(self):
        return self


class StreamPrompting(bt.StreamingSynapse):
    """text-prompting v2.1.6's StreamPrompting synapse."""

    required_hash_fields: List[str] = pydantic.Field(["messages"], frozen=True)
    roles: List[str] = pydantic.Field(..., frozen=True)
    messages: List[str] = pydantic.Field(..., frozen=True)
    completion: str = ""

    async def process_streaming_response(self, response):
        if self.completion is None:
            self.completion = ""
        async for chunk in response.content.iter_any():
            tokens = chunk.decode("utf-8").split("\n")
            for token in tokens:
                if token:
                    self.completion += token
            yield tokens

    def deserialize(self):
        return self.completion

    def extract_response_json(self, response):
        headers = {k.decode("utf-8"): v.decode("utf-8") for k, v in response.raw_headers}

        def extract_info(prefix):
            return {
                key.split("_")[-1]: value
                for key, value in headers.items()
                if key.startswith(prefix)
            }

        return {
            "name": headers.get("name", ""),
            "timeout": float(headers.get("timeout", 0)),
            "total_size": int(headers.get("total_size", 0)),
            "header_size": int(headers.get("header_size", 0)),
            "dendrite": extract_info("bt_header_dendrite"),
            "axon": extract_info("bt_header_axon"),
            "roles": self.roles,
            "messages": self.messages,
            "completion": self.completion,
        }


def main():
    wallet_path, port, blocked = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    async def forward(synapse: Prompting) -> Prompting:
        last = synapse.messages[-1] if synapse.messages else ""
        if last == "sleep":
            await asyncio.sleep(3)
        synapse.completion = "echo: " + last
        return synapse

    def blacklist(synapse: Prompting) -> Tuple[bool, str]:
        if synapse.dendrite.hotkey == blocked:
            return True, "hotkey not registered"
        return False, "allowed"

    async def stream_forward(synapse: StreamPrompting) -> StreamPrompting.BTStreamingResponse:
        last = synapse.messages[-1] if synapse.messages else ""

        async def streamer(send):
            if last == "slow-stream":
                await send({"type": "http.response.body", "body": b"partial", "more_body": True})
                await asyncio.sleep(3)
                return
            data = ("echo: " + last).encode("utf-8")
            for start in range(0, len(data), 3):
                piece = data[start : start + 3]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                await asyncio.sleep(0.01)

        return synapse.create_streaming_response(streamer)

    def stream_blacklist(synapse: StreamPrompting) -> Tuple[bool, str]:
        if synapse.dendrite.hotkey == blocked:
            return True, "hotkey not registered"
        return False, "allowed"

    wallet = Wallet(path=wallet_path, name="miner", hotkey="default")
    axon = bt.Axon(wallet=wallet, ip="127.0.0.1", port=port, external_ip="127.0.0.1")
    axon.attach(forward_fn=forward, blacklist_fn=blacklist)
    axon.attach(forward_fn=stream_forward, blacklist_fn=stream_blacklist)
    axon.start()
    print(f"READY {port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        axon.stop()


if __name__ == "__main__":
    main()
