//! `$NACL` keyfiles written by Python bittensor decrypt here. Each argon2i derivation takes
//! 512 MiB and, in an unoptimized build, well over a minute, so the two real files are checked
//! one after another in a single test; wrong passwords and tampering are covered with a cheap
//! cost by the unit tests of `keyfile::encryption`.

use crate::support;

use base64::Engine;
use prompting_keys::Wallet;
use prompting_keys::keyfile::{self, KeyfileError};
use prompting_keys::wallet::WalletError;
use support::{fixture, json_fixture};

#[test]
fn nacl_keyfiles_written_by_python_decrypt_to_the_right_keys() {
    let started = std::time::Instant::now();
    // bittensor 6.4.4 vector: password, plaintext, encrypted bytes.
    let vector = json_fixture("v6/nacl_keyfile_vector.json");
    let encrypted = base64::engine::general_purpose::STANDARD
        .decode(vector["encrypted_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        keyfile::Encryption::detect(&encrypted),
        keyfile::Encryption::Nacl
    );
    let password = vector["password"].as_str().unwrap();
    let plain = keyfile::decrypt_nacl(&encrypted, password).unwrap();
    assert_eq!(
        plain.as_slice(),
        vector["plaintext"].as_str().unwrap().as_bytes()
    );
    let keypair = keyfile::keypair_from_json(&plain).unwrap();
    assert_eq!(
        keypair.ss58_address(),
        "5FJ4gu9eVX6DG4qYi1hxkUgu1yaTm1CnQ4MiiZPjPVaXiATo"
    );
    assert_eq!(keypair.mini_secret(), Some(&[3u8; 32]));

    // bittensor-wallet 4.1.1 wallet: the miner's coldkey with keys.json's password.
    let keys = json_fixture("legacy/keys.json");
    let wallet = Wallet::new(fixture("legacy/wallets"), "miner", "default");
    let coldkey = wallet
        .load_coldkey(Some(keys["coldkey_password"].as_str().unwrap()))
        .unwrap();
    assert_eq!(
        coldkey.ss58_address(),
        keys["coldkey"]["ss58"].as_str().unwrap()
    );
    assert_eq!(coldkey.mnemonic(), keys["coldkey"]["mnemonic"].as_str());
    eprintln!("two argon2i derivations took {:?}", started.elapsed());
}

#[test]
fn encrypted_coldkey_needs_a_password_and_names_its_file() {
    let wallet = Wallet::new(fixture("legacy/wallets"), "miner", "default");
    let err = wallet.load_coldkey(None).unwrap_err();
    assert!(
        matches!(
            &err,
            WalletError::Keyfile {
                source: KeyfileError::PasswordRequired,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("miner/coldkey"), "{err}");
    assert!(err.to_string().contains("password"), "{err}");
}
