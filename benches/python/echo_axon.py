"""A real bittensor 10.5 Axon with an echo forward, for side-by-side load tests.

Usage: echo_axon.py PORT WALLET_DIR
Its hotkey is the mini secret [1] + [0]*30 + [0xbe] (key 0 of prompting_benches::hotkeys).
Prints "listening 127.0.0.1:PORT <ss58>" once serving; runs until killed.
"""
import sys
import time
from typing import List

import bittensor as bt
import bittensor.utils.networking as networking

networking.get_external_ip = lambda: "127.0.0.1"

import pydantic  # noqa: E402
from bittensor_wallet import Keypair, Wallet  # noqa: E402


class Prompting(bt.Synapse):
    roles: List[str] = pydantic.Field(..., frozen=True)
    messages: List[str] = pydantic.Field(..., frozen=True)
    completion: str = ""
    required_hash_fields: List[str] = pydantic.Field(["messages"], frozen=True)


def forward(synapse: Prompting) -> Prompting:
    synapse.completion = "echo: " + synapse.messages[-1]
    return synapse


def main():
    port, wallet_dir = int(sys.argv[1]), sys.argv[2]
    seed = bytes([1] + [0] * 30 + [0xBE])
    keypair = Keypair.create_from_seed(seed.hex())
    wallet = Wallet(name="bench", hotkey="default", path=wallet_dir)
    wallet.set_hotkey(keypair, encrypt=False, overwrite=True)
    wallet.set_coldkeypub(keypair, encrypt=False, overwrite=True)
    axon = bt.Axon(wallet=wallet, ip="127.0.0.1", port=port, external_ip="127.0.0.1")
    axon.attach(forward_fn=forward)
    axon.start()
    print(f"listening 127.0.0.1:{port} {keypair.ss58_address}", flush=True)
    while True:
        time.sleep(3600)


main()
