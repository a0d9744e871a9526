//! Cross-checks against the pinned Python `bittensor-wallet` 4.1.1 (venv `bt10`): our
//! signatures verify in Python, Python's verify here, and wallet files cross over both ways;
//! plus ed25519 signatures of bittensor 11's `sp_core` (venv `bt11`, used by btauth/1).

use prompting_keys::{Keypair, Wallet, verify_hex};
use prompting_testkit::{Venv, run_python};

const MESSAGES: [&str; 3] = [
    "1795303292740406005.5EtaiguVmKZ9Vewv7HkS86hWTS8Lf4twTSADg29PH5rM5Wng.5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe.49c892ca-e602-11f1-86a3-02fc00000001.ca1659dce88b7e912d1f1034ab5c0cdf1323832155edd48d50d189dbd42f2e9a",
    "é 🙂 \"quoted\" it's\nnewline",
    "",
];

/// Runs `script` and returns its stdout lines.
fn python_lines(script: &str, args: &[&str]) -> Vec<String> {
    let output = run_python(Venv::Bt10, script, args, b"");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const VERIFY_SCRIPT: &str = r#"
import sys
from bittensor_wallet import Keypair
ss58 = sys.argv[1]
for pair in sys.argv[2:]:
    message_hex, signature = pair.split(":")
    print(Keypair(ss58_address=ss58).verify(bytes.fromhex(message_hex), signature))
"#;

#[test]
fn our_signatures_verify_in_python() {
    let keypair = Keypair::from_mnemonic(
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
    )
    .unwrap();
    let mut pairs = Vec::new();
    let mut expected = Vec::new();
    for message in MESSAGES {
        let signature = keypair.sign_hex(message.as_bytes());
        pairs.push(format!("{}:{signature}", hex::encode(message)));
        expected.push("True");
        // The same signature over a different message must be refused by Python too.
        pairs.push(format!(
            "{}:{signature}",
            hex::encode(format!("{message}!"))
        ));
        expected.push("False");
    }
    let wrapped = keypair.sign_hex(b"<Bytes>wrapped</Bytes>");
    pairs.push(format!("{}:{wrapped}", hex::encode("wrapped")));
    expected.push("True");

    let ss58 = keypair.ss58_address();
    let mut args = vec![ss58.as_str()];
    args.extend(pairs.iter().map(String::as_str));
    assert_eq!(python_lines(VERIFY_SCRIPT, &args), expected);
}

const SIGN_SCRIPT: &str = r#"
import sys
from bittensor_wallet import Keypair
keypair = Keypair.create_from_mnemonic(sys.argv[1])
print(keypair.ss58_address)
for message_hex in sys.argv[2:]:
    print("0x" + keypair.sign(bytes.fromhex(message_hex)).hex())
"#;

#[test]
fn python_signatures_verify_here() {
    let (keypair, mnemonic) = Keypair::generate();
    let mut args = vec![mnemonic.clone()];
    args.extend(MESSAGES.iter().map(hex::encode));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = python_lines(SIGN_SCRIPT, &args);
    assert_eq!(lines.len(), 1 + MESSAGES.len());
    assert_eq!(lines[0], keypair.ss58_address());
    for (message, signature) in MESSAGES.iter().zip(&lines[1..]) {
        assert_eq!(
            verify_hex(&lines[0], message.as_bytes(), signature),
            Ok(true)
        );
        assert_eq!(
            verify_hex(&lines[0], format!("{message}?").as_bytes(), signature),
            Ok(false)
        );
    }
}

const LOAD_WALLET_SCRIPT: &str = r#"
import json, sys
from bittensor_wallet import Keypair, Wallet
from bittensor_wallet.keyfile import deserialize_keypair_from_keyfile_data
wallet = Wallet(name=sys.argv[2], hotkey=sys.argv[3], path=sys.argv[1])
hotkey = wallet.hotkey
print(hotkey.ss58_address)
print(wallet.hotkeypub.ss58_address)
data = open(wallet.hotkey_file.path, "rb").read()
print(deserialize_keypair_from_keyfile_data(data).ss58_address)
print(Keypair.create_from_mnemonic(json.loads(data)["secretPhrase"]).ss58_address)
print("0x" + hotkey.sign(b"signed by python").hex())
"#;

#[test]
fn hotkeys_we_write_load_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let wallet = Wallet::new(path, "dev", "hk");
    let status = wallet.create_hotkey_if_missing().unwrap();
    assert!(status.was_created());
    let keypair = status.keypair();

    let lines = python_lines(LOAD_WALLET_SCRIPT, &[path, "dev", "hk"]);
    assert_eq!(lines.len(), 5);
    for line in &lines[..4] {
        assert_eq!(line, &keypair.ss58_address());
    }
    assert_eq!(
        verify_hex(&keypair.ss58_address(), b"signed by python", &lines[4]),
        Ok(true)
    );
}

const CREATE_WALLET_SCRIPT: &str = r#"
import sys
from bittensor_wallet import Wallet
wallet = Wallet(name=sys.argv[2], hotkey=sys.argv[3], path=sys.argv[1])
wallet.create_new_hotkey(use_password=False, overwrite=False, suppress=True)
wallet.create_coldkey_from_uri("//Alice", use_password=False, overwrite=False, suppress=True)
print(wallet.hotkey.ss58_address)
print(wallet.coldkeypub.ss58_address)
"#;

#[test]
fn wallets_python_writes_load_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let lines = python_lines(CREATE_WALLET_SCRIPT, &[path, "py", "hk"]);
    let wallet = Wallet::new(path, "py", "hk");
    assert_eq!(wallet.load_hotkey().unwrap().ss58_address(), lines[0]);
    assert_eq!(wallet.load_hotkey_public().unwrap().to_ss58(), lines[0]);
    assert_eq!(wallet.load_coldkeypub().unwrap().to_ss58(), lines[1]);
    assert_eq!(lines[1], "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
}

const SS58_SCRIPT: &str = r#"
import sys
from scalecodec.utils.ss58 import ss58_encode
for pair in sys.argv[1:]:
    account, prefix = pair.split(":")
    print(ss58_encode("0x" + account, int(prefix)))
"#;

#[test]
fn ss58_addresses_match_python_for_one_and_two_byte_prefixes() {
    let prefixes = [0u16, 2, 42, 63, 64, 255, 1284, 4096, 16383];
    let cases: Vec<([u8; 32], u16)> = prefixes
        .iter()
        .enumerate()
        .map(|(index, &prefix)| {
            let keypair = Keypair::from_mini_secret(&[index as u8; 32]);
            (*keypair.public_key().as_bytes(), prefix)
        })
        .collect();
    let args: Vec<String> = cases
        .iter()
        .map(|(account, prefix)| format!("{}:{prefix}", hex::encode(account)))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = python_lines(SS58_SCRIPT, &args);
    assert_eq!(lines.len(), cases.len());
    for ((account, prefix), python) in cases.iter().zip(&lines) {
        assert_eq!(&prompting_keys::ss58::encode(account, *prefix), python);
        assert_eq!(
            prompting_keys::ss58::decode(python),
            Ok((*account, *prefix))
        );
    }
}

const ED25519_SCRIPT: &str = r#"
import sys
from bittensor import sp_core
mnemonic = sys.argv[1]
keypair = sp_core.Keypair.create_from_mnemonic(mnemonic, sp_core.CRYPTO_ED25519)
print(bytes(keypair.public_key).hex())
for message_hex in sys.argv[2:]:
    signature = sp_core.sign(bytes.fromhex(message_hex), mnemonic=mnemonic, crypto_type=sp_core.CRYPTO_ED25519)
    print(bytes(signature).hex())
"#;

#[test]
fn python_ed25519_signatures_verify_here() {
    let (_, mnemonic) = Keypair::generate();
    let payload = "btauth/1\ned25519\nPOST\n/Prompting";
    let wrapped = format!("<Bytes>{payload}</Bytes>");
    let args = [
        mnemonic.clone(),
        hex::encode(payload),
        hex::encode(&wrapped),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_python(Venv::Bt11, ED25519_SCRIPT, &args, b"");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3);
    let mut public = [0u8; 32];
    hex::decode_to_slice(lines[0], &mut public).unwrap();
    let public = prompting_keys::PublicKey(public);
    for line in &lines[1..] {
        let mut signature = [0u8; 64];
        hex::decode_to_slice(line, &mut signature).unwrap();
        assert!(prompting_keys::verify_ed25519(
            &public,
            payload.as_bytes(),
            &signature
        ));
        assert!(!prompting_keys::verify_ed25519(
            &public, b"other", &signature
        ));
        assert!(!prompting_keys::verify(
            &public,
            payload.as_bytes(),
            &signature
        ));
    }
}
