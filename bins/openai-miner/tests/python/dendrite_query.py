"""Queries a miner's axon with a real bittensor 10.5 Dendrite and prints, as JSON, what the
Python client saw for each query. Usage: dendrite_query.py < spec.json

spec: {"port": int, "hotkey": ss58 of the axon, "timeout": seconds,
       "queries": [{"roles": [...], "messages": [...]}, ...]}
The dendrite signs with a freshly generated keypair (any caller is a validator under --dev).
"""
import asyncio
import json
import sys
from typing import List

import bittensor as bt
import bittensor.utils.networking as networking

# No internet here: the Dendrite looks up its external IP at start.
networking.get_external_ip = lambda: "127.0.0.1"

import pydantic  # noqa: E402
from bittensor_wallet import Keypair  # noqa: E402


class Prompting(bt.Synapse):
    """text-prompting v2.1.6's synapse."""

    roles: List[str] = pydantic.Field(..., frozen=True)
    messages: List[str] = pydantic.Field(..., frozen=True)
    completion: str = ""
    required_hash_fields: List[str] = pydantic.Field(["messages"], frozen=True)

    def deserialize(self):
        return self


async def main():
    spec = json.load(sys.stdin)
    axon = bt.AxonInfo(
        version=1,
        ip="127.0.0.1",
        port=spec["port"],
        ip_type=4,
        hotkey=spec["hotkey"],
        coldkey=spec["hotkey"],
    )
    caller = Keypair.create_from_mnemonic(Keypair.generate_mnemonic())
    dendrite = bt.Dendrite(wallet=caller)
    out = []
    for query in spec["queries"]:
        [response] = await dendrite.forward(
            [axon],
            Prompting(roles=query["roles"], messages=query["messages"]),
            timeout=spec["timeout"],
        )
        out.append({
            "completion": response.completion,
            "dendrite_status_code": response.dendrite.status_code,
            "dendrite_status_message": response.dendrite.status_message,
            "axon_status_code": response.axon.status_code,
            "axon_hotkey": response.axon.hotkey,
        })
    await dendrite.aclose_session()
    json.dump(out, sys.stdout)


asyncio.run(main())
