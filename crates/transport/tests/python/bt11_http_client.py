"""A bittensor 11.3 validator's side of btauth/1 over real HTTP: signs requests with
`http_auth.sign` and POSTs them (urllib) to the miner under test. Prints, as JSON, the
status and body the miner answered for each case.

stdin: {"url": "http://127.0.0.1:PORT", "miner": SS58, "validator_mnemonic", "stranger_mnemonic"}
"""
import json
import sys
import time
import urllib.error
import urllib.request

from bittensor import http_auth
from bittensor import sp_core

spec = json.load(sys.stdin)
validator = sp_core.Keypair.create_from_mnemonic(spec["validator_mnemonic"], sp_core.CRYPTO_SR25519)
stranger = sp_core.Keypair.create_from_mnemonic(spec["stranger_mnemonic"], sp_core.CRYPTO_SR25519)


def post(path, body_obj, keypair=validator, receiver=spec["miner"], nonce_ns=None, tamper=None, headers=None):
    body = json.dumps(body_obj).encode()
    signed = http_auth.sign(
        keypair,
        method="POST",
        path=path,
        body=body,
        receiver_ss58=receiver,
        nonce_ns=nonce_ns if nonce_ns is not None else time.time_ns(),
    )
    if headers is not None:
        signed = headers
    if tamper is not None:
        body = json.dumps(tamper).encode()
    request = urllib.request.Request(spec["url"] + path, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in signed.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"status": response.status, "body": json.loads(response.read()), "headers": signed}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": json.loads(err.read()), "headers": signed}


prompt = {"roles": ["system", "user"], "messages": ["Be brief.", "What is the capital of France?"]}
out = {}
out["valid"] = post("/Prompting", prompt)
out["replayed"] = post("/Prompting", prompt, headers=out["valid"]["headers"])
out["stale"] = post("/Prompting", prompt, nonce_ns=time.time_ns() - 60_000_000_000)
out["tampered"] = post("/Prompting", prompt, tamper={"roles": ["user"], "messages": ["something else"]})
out["wrong_receiver"] = post("/Prompting", prompt, receiver=stranger.ss58_address)
out["unregistered"] = post("/Prompting", prompt, keypair=stranger)
out["chat"] = post(
    "/v1/chat/completions",
    {"model": "any", "messages": [{"role": "user", "content": "hello from bittensor 11"}], "max_tokens": 5},
)
for case in out.values():
    case.pop("headers", None)
json.dump(out, sys.stdout)
