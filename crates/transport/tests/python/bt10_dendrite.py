"""Drives a real bittensor 10.5 Dendrite against an axon under test and prints, as JSON, what
the Python client saw for each case. Usage: bt10_dendrite.py < spec.json

spec: {"axon": {"port", "hotkey"}, "slow_axon": {"port", "hotkey"},
       "validator_mnemonic", "stranger_mnemonic", "blocked_mnemonic"}
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


class StreamPrompting(bt.StreamingSynapse):
    """text-prompting's streaming synapse: the body is text chunks."""

    roles: List[str] = pydantic.Field(..., frozen=True)
    messages: List[str] = pydantic.Field(..., frozen=True)
    completion: str = ""
    required_hash_fields: List[str] = pydantic.Field(["messages"], frozen=True)

    async def process_streaming_response(self, response):
        async for chunk in response.content.iter_any():
            text = chunk.decode("utf-8")
            self.completion += text
            yield text

    def deserialize(self):
        return self.completion

    def extract_response_json(self, response):
        headers = {k.decode(): v.decode() for k, v in response.raw_headers}

        def info(prefix):
            return {k[len(prefix):]: v for k, v in headers.items() if k.startswith(prefix)}

        return {
            "name": headers.get("name", ""),
            "timeout": float(headers.get("timeout", 0)),
            "dendrite": info("bt_header_dendrite_"),
            "axon": info("bt_header_axon_"),
            "roles": self.roles,
            "messages": self.messages,
            "completion": self.completion,
        }


class TamperingDendrite(bt.Dendrite):
    """A Dendrite that corrupts its requests after signing them, in one of several ways."""

    mode = None
    fixed_nonce = None

    def preprocess_synapse_for_request(self, target_axon_info, synapse, timeout=12.0):
        synapse = super().preprocess_synapse_for_request(target_axon_info, synapse, timeout)
        if self.mode == "bad_signature":
            synapse.dendrite.signature = "0x" + "11" * 64
        elif self.mode == "fixed_nonce":
            synapse.dendrite.nonce = self.fixed_nonce
            message = (
                f"{synapse.dendrite.nonce}.{synapse.dendrite.hotkey}.{synapse.axon.hotkey}."
                f"{synapse.dendrite.uuid}.{synapse.body_hash}"
            )
            synapse.dendrite.signature = f"0x{self.keypair.sign(message).hex()}"
        elif self.mode == "tampered_body":
            # Change the body after signing (frozen field: bypass pydantic).
            synapse.__dict__["messages"] = ["something else entirely"]
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


def view(synapse):
    return {
        "completion": synapse.completion,
        "dendrite_status_code": synapse.dendrite.status_code,
        "dendrite_status_message": synapse.dendrite.status_message,
        "axon_status_code": synapse.axon.status_code,
        "axon_status_message": synapse.axon.status_message,
    }


async def query(dendrite, target, roles, messages, timeout=5.0):
    [response] = await dendrite.forward(
        [axon_info(target)], Prompting(roles=roles, messages=messages), timeout=timeout
    )
    return view(response)


async def main():
    spec = json.load(sys.stdin)
    axon, slow_axon = spec["axon"], spec["slow_axon"]
    validator = Keypair.create_from_mnemonic(spec["validator_mnemonic"])
    stranger = Keypair.create_from_mnemonic(spec["stranger_mnemonic"])
    blocked = Keypair.create_from_mnemonic(spec["blocked_mnemonic"])
    out = {}

    good = bt.Dendrite(wallet=validator)
    out["success"] = await query(good, axon, ["system", "user"], ["Be brief.", "What is the capital of France?"])
    out["unicode"] = await query(good, axon, ["user"], ["é 🙂 \"quoted\" it's\nnewline\ttab \\ back"])
    out["backend_error"] = await query(good, axon, ["user"], ["raise"])
    # The client gives up after 1 s (the axon's deadline is the same 1 s).
    out["client_timeout"] = await query(good, axon, ["user"], ["sleep"], timeout=1.0)
    # The slow axon caps every request at 1 s: it answers 408 while the client still waits.
    out["server_timeout"] = await query(good, slow_axon, ["user"], ["sleep"], timeout=5.0)

    # Streaming.
    chunks = []
    final = None
    async for item in good.call_stream(
        axon_info(axon), StreamPrompting(roles=["user"], messages=["stream these words please"]), timeout=5.0,
        deserialize=False,
    ):
        if isinstance(item, str):
            chunks.append(item)
        else:
            final = item
    out["stream"] = {"chunks": chunks, "completion": final.completion if final else None,
                     "status_code": final.dendrite.status_code if final else None}
    await good.aclose_session()

    unregistered = bt.Dendrite(wallet=stranger)
    out["unregistered"] = await query(unregistered, axon, ["user"], ["hello"])
    await unregistered.aclose_session()

    blacklisted = bt.Dendrite(wallet=blocked)
    out["blacklisted"] = await query(blacklisted, axon, ["user"], ["hello"])
    await blacklisted.aclose_session()

    tamper = TamperingDendrite(wallet=validator)
    tamper.mode = "bad_signature"
    out["bad_signature"] = await query(tamper, axon, ["user"], ["hello"])
    tamper.mode = "tampered_body"
    out["tampered_body"] = await query(tamper, axon, ["user"], ["hello"])
    tamper.mode = "fixed_nonce"
    tamper.fixed_nonce = __import__("time").time_ns()
    out["replay_first"] = await query(tamper, axon, ["user"], ["hello once"])
    out["replay_second"] = await query(tamper, axon, ["user"], ["hello once"])
    await tamper.aclose_session()

    json.dump(out, sys.stdout)


asyncio.run(main())
