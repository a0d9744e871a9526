"""Floods an axon as outsiders would, and checks between floods that a registered validator's
real bittensor 10.5 Dendrite is still served. Prints, as JSON, what the validator saw after
each flood. Usage: bt10_flood.py < spec.json

spec: {"axon": {"port", "hotkey"}, "validator_mnemonic", "stranger_mnemonic",
       "lowstake_mnemonic", "nonce_flood", "lowstake_flood", "sockets"}
"""
import asyncio
import json
import sys
import time
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


class FloodDendrite(bt.Dendrite):
    """Signs each request with a chosen nonce (the attacker's own key: a valid signature)."""

    nonce = None

    def preprocess_synapse_for_request(self, target_axon_info, synapse, timeout=12.0):
        synapse = super().preprocess_synapse_for_request(target_axon_info, synapse, timeout)
        if self.nonce is not None:
            synapse.dendrite.nonce = self.nonce
            message = (
                f"{synapse.dendrite.nonce}.{synapse.dendrite.hotkey}.{synapse.axon.hotkey}."
                f"{synapse.dendrite.uuid}.{synapse.body_hash}"
            )
            synapse.dendrite.signature = f"0x{self.keypair.sign(message).hex()}"
        return synapse


def axon_info(target):
    return bt.AxonInfo(
        version=1,
        ip="127.0.0.1",
        port=target["port"],
        ip_type=4,
        hotkey=target["hotkey"],
        coldkey=target["hotkey"],
    )


async def query(dendrite, target, text, timeout=12.0):
    [response] = await dendrite.forward(
        [axon_info(target)], Prompting(roles=["user"], messages=[text]), timeout=timeout
    )
    return {
        "completion": response.completion,
        "status_code": response.dendrite.status_code,
        "status_message": response.dendrite.status_message,
    }


async def honest(out, name, validator, good, axon):
    """The validator's kept dendrite and a new one, after a flood."""
    out[name] = {
        "kept": await query(good, axon, f"{name}: kept"),
    }
    fresh = bt.Dendrite(wallet=validator)
    out[name]["fresh"] = await query(fresh, axon, f"{name}: fresh")
    await fresh.aclose_session()


async def nonce_flood(key, axon, count, label):
    """`count` requests, each from a new endpoint (uuid) with a nonce near 2^64 and the
    longest timeout: every one a live entry in the nonce table. Returns their statuses."""
    flood = FloodDendrite(wallet=key)
    statuses = {}
    for i in range(count):
        flood.uuid = f"{label}-{i}"
        flood.nonce = 2**64 - 1_000_000 + i
        result = await query(flood, axon, f"flood {i}", timeout=300.0)
        statuses[str(result["status_code"])] = statuses.get(str(result["status_code"]), 0) + 1
    await flood.aclose_session()
    return statuses


async def main():
    spec = json.load(sys.stdin)
    axon = spec["axon"]
    validator = Keypair.create_from_mnemonic(spec["validator_mnemonic"])
    stranger = Keypair.create_from_mnemonic(spec["stranger_mnemonic"])
    lowstake = Keypair.create_from_mnemonic(spec["lowstake_mnemonic"])
    out = {}

    good = bt.Dendrite(wallet=validator)
    out["before"] = await query(good, axon, "before")

    # An unregistered key fills the legacy nonce table (issue 12 D2).
    out["nonce_flood_statuses"] = await nonce_flood(stranger, axon, spec["nonce_flood"], "stranger")
    await honest(out, "after_nonce_flood", validator, good, axon)

    # A registered low-stake key fills its own table.
    out["lowstake_flood_statuses"] = await nonce_flood(lowstake, axon, spec["lowstake_flood"], "lowstake")
    await honest(out, "after_lowstake_flood", validator, good, axon)

    # Sockets that never send a request, more than the axon's connection slots (issue 12 D1):
    # silent ones, a byte, a partial HTTP/2 preface.
    sockets = []
    payloads = [b"", b"P", b"PRI * HTTP/2.0\r\n"]
    for i in range(spec["sockets"]):
        reader, writer = await asyncio.open_connection("127.0.0.1", axon["port"])
        writer.write(payloads[i % len(payloads)])
        await writer.drain()
        sockets.append((reader, writer))
    started = time.monotonic()
    await honest(out, "with_idle_sockets", validator, good, axon)
    out["with_idle_sockets"]["seconds"] = time.monotonic() - started
    for _, writer in sockets:
        writer.close()

    await good.aclose_session()
    json.dump(out, sys.stdout)


asyncio.run(main())
