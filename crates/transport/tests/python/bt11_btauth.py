"""bittensor 11.3.0's `http_auth` as a JSON filter, for the btauth/1 interop tests.

Usage: bt11_btauth.py < ops.json > results.json

ops.json is a list of operations; the output is a list of results, in order:

- {"op": "sign", "mnemonic", "crypto": "sr25519"|"ed25519", "method", "path", "body_hex",
   "receiver": str|null, "nonce_ns": int}
  -> {"headers": {...}, "payload_hex"}  (the headers of `http_auth.sign`, and
     `http_auth.build_payload` for the same request)
- {"op": "verify", "headers": [[name, value], ...], "body_hex", "method", "path",
   "self_hotkey", "now_ns", "require_receiver", "store"}
  -> {"ok": true, "hotkey", "nonce_ns", "crypto_type"} or {"ok": false, "error", "message"}
  Operations naming the same "store" share one `InMemoryNonceStore`.
- {"op": "accepted_prefixes"} -> {"prefixes": [...]}: the SS58 prefixes `sp_core.verify`
  decodes (every prefix tried on one key).
"""
import json
import sys

import bittensor_core
from bittensor import http_auth
from bittensor import sp_core

CRYPTO = {"sr25519": sp_core.CRYPTO_SR25519, "ed25519": sp_core.CRYPTO_ED25519}
STORES = {}


def sign(op):
    keypair = sp_core.Keypair.create_from_mnemonic(op["mnemonic"], CRYPTO[op["crypto"]])
    body = bytes.fromhex(op["body_hex"])
    headers = http_auth.sign(
        keypair,
        method=op["method"],
        path=op["path"],
        body=body,
        receiver_ss58=op["receiver"],
        nonce_ns=op["nonce_ns"],
    )
    payload = http_auth.build_payload(
        scheme=op["crypto"],
        method=op["method"],
        path=op["path"],
        body=body,
        nonce_ns=op["nonce_ns"],
        sender_ss58=keypair.ss58_address,
        receiver_ss58=op["receiver"],
    )
    return {"headers": headers, "payload_hex": payload.hex()}


def verify(op):
    store = STORES.setdefault(op["store"], http_auth.InMemoryNonceStore())
    # A dict built from the header list, as frameworks hand it over: the last value wins.
    headers = {name: value for name, value in op["headers"]}
    try:
        caller = http_auth.verify(
            headers,
            bytes.fromhex(op["body_hex"]),
            method=op["method"],
            path=op["path"],
            self_hotkey_ss58=op["self_hotkey"],
            require_receiver=op["require_receiver"],
            nonce_store=store,
            now_ns=op["now_ns"],
        )
    except http_auth.AuthError as err:
        return {"ok": False, "error": type(err).__name__, "message": str(err)}
    return {
        "ok": True,
        "hotkey": caller.hotkey_ss58,
        "nonce_ns": caller.nonce_ns,
        "crypto_type": caller.crypto_type,
    }


def accepted_prefixes(_op):
    keypair = sp_core.Keypair.create_from_seed(bytes(range(32)), sp_core.CRYPTO_SR25519)
    account = bittensor_core.ss58_decode(keypair.ss58_address)
    message = b"prefix probe"
    signature = bytes(keypair.sign(message))
    prefixes = []
    for prefix in range(16384):
        address = bittensor_core.ss58_encode(account, prefix)
        try:
            if sp_core.verify(message, signature, address, sp_core.CRYPTO_SR25519):
                prefixes.append(prefix)
        except ValueError:
            pass
    return {"prefixes": prefixes}


OPS = {"sign": sign, "verify": verify, "accepted_prefixes": accepted_prefixes}

json.dump([OPS[op["op"]](op) for op in json.load(sys.stdin)], sys.stdout)
