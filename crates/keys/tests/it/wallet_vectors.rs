//! Keys and keyfiles written by Python bittensor load to the right identities, and keyfiles we
//! write are byte-for-byte what bittensor-wallet 4 writes.

use crate::support;

use std::path::Path;

use prompting_keys::{Keypair, PublicKey, Wallet, keyfile};
use support::{fixture, json_fixture};

#[test]
fn keys_json_mnemonics_give_the_recorded_keys_and_signatures_verify() {
    let keys = json_fixture("legacy/keys.json");
    assert_eq!(keys["ss58_format"], 42);
    for role in ["miner_hotkey", "validator_hotkey", "coldkey"] {
        let entry = &keys[role];
        let keypair = Keypair::from_mnemonic(entry["mnemonic"].as_str().unwrap()).unwrap();
        assert_eq!(
            keypair.public_key().to_hex(),
            entry["public_key_hex"].as_str().unwrap(),
            "{role}"
        );
        let ss58 = entry["ss58"].as_str().unwrap();
        assert_eq!(keypair.ss58_address(), ss58, "{role}");
        assert_eq!(PublicKey::from_ss58(ss58).unwrap(), keypair.public_key());

        let message = entry["message_utf8"].as_str().unwrap().as_bytes();
        let signature = entry["signature_hex"].as_str().unwrap();
        assert_eq!(entry["signature_verifies"], true);
        assert_eq!(
            prompting_keys::verify_hex(ss58, message, signature),
            Ok(true),
            "{role}"
        );
        assert_eq!(
            prompting_keys::verify_hex(ss58, b"another message", signature),
            Ok(false),
            "{role}"
        );
    }
}

#[test]
fn legacy_wallet_files_load_to_the_keys_json_identities() {
    let keys = json_fixture("legacy/keys.json");
    let wallets = fixture("legacy/wallets");
    let miner = Wallet::new(&wallets, "miner", "default");
    let validator = Wallet::new(&wallets, "validator", "default");
    let ss58 = |role: &str| keys[role]["ss58"].as_str().unwrap().to_owned();

    let miner_hotkey = miner.load_hotkey().unwrap();
    assert_eq!(miner_hotkey.ss58_address(), ss58("miner_hotkey"));
    assert_eq!(
        miner_hotkey.mnemonic(),
        keys["miner_hotkey"]["mnemonic"].as_str()
    );
    assert_eq!(
        miner.load_hotkey_public().unwrap().to_ss58(),
        ss58("miner_hotkey")
    );
    assert_eq!(miner.load_coldkeypub().unwrap().to_ss58(), ss58("coldkey"));

    let validator_hotkey = validator.load_hotkey().unwrap();
    assert_eq!(validator_hotkey.ss58_address(), ss58("validator_hotkey"));
    assert_eq!(
        validator.load_hotkey_public().unwrap().to_ss58(),
        ss58("validator_hotkey")
    );
    assert_eq!(
        validator.load_coldkeypub().unwrap().to_ss58(),
        ss58("coldkey")
    );
    // The validator's coldkey is stored unencrypted.
    assert_eq!(
        validator.load_coldkey(None).unwrap().ss58_address(),
        ss58("coldkey")
    );
}

#[test]
fn bittensor_6_keyfiles_without_private_key_load() {
    let files = json_fixture("v6/keyfiles.json");
    let wire = json_fixture("v6/wire_results.json");
    let expected = [
        (
            "~/.bittensor/wallets/axonw/hotkeys/hk1",
            wire["keys"]["axon_ss58"].as_str().unwrap(),
            true,
        ),
        (
            "~/.bittensor/wallets/axonw/coldkeypub.txt",
            wire["keys"]["cold_ss58"].as_str().unwrap(),
            false,
        ),
        (
            "~/.bittensor/wallets/mnw/hotkeys/hk",
            "5Ey8t8pBJSYqLYCzeC3HiPJu5DxzXy2Dzheaj29wRHvhjoai",
            true,
        ),
    ];
    for (name, ss58, has_secret) in expected {
        let contents = files[name].as_str().unwrap().as_bytes();
        assert!(!files[name].as_str().unwrap().contains("privateKey"));
        assert_eq!(
            keyfile::public_key_from_json(contents).unwrap().to_ss58(),
            ss58,
            "{name}"
        );
        match keyfile::keypair_from_json(contents) {
            Ok(keypair) => {
                assert!(has_secret, "{name} has no secret");
                assert_eq!(keypair.ss58_address(), ss58, "{name}");
            }
            Err(err) => {
                assert!(!has_secret, "{name}: {err}");
                assert_eq!(err, keyfile::KeyfileError::NoSecret);
            }
        }
    }
    let axon_hotkey = keyfile::keypair_from_json(
        files["~/.bittensor/wallets/axonw/hotkeys/hk1"]
            .as_str()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        hex::encode(axon_hotkey.private_key().as_ref()),
        wire["keys"]["axon_priv"].as_str().unwrap()
    );
    let mnemonic_hotkey = keyfile::keypair_from_json(
        files["~/.bittensor/wallets/mnw/hotkeys/hk"]
            .as_str()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        mnemonic_hotkey.mnemonic(),
        Some("arrive produce someone view end scout bargain coil slight festival excess struggle")
    );
}

#[test]
fn written_hotkey_files_match_bittensor_wallet_bytes_and_modes() {
    let keys = json_fixture("legacy/keys.json");
    let files = json_fixture("v6/keyfiles.json");
    let dir = tempfile::tempdir().unwrap();
    let wallet = Wallet::new(dir.path(), "miner", "default");
    let keypair =
        Keypair::from_mnemonic(keys["miner_hotkey"]["mnemonic"].as_str().unwrap()).unwrap();
    wallet.write_hotkey(&keypair).unwrap();

    let read = |path: &Path| std::fs::read(path).unwrap();
    assert_eq!(
        String::from_utf8(read(&wallet.hotkey_path())).unwrap(),
        String::from_utf8(read(&fixture("legacy/wallets/miner/hotkeys/default"))).unwrap()
    );
    assert_eq!(
        String::from_utf8(read(&wallet.hotkeypub_path())).unwrap(),
        String::from_utf8(read(&fixture(
            "legacy/wallets/miner/hotkeys/defaultpub.txt"
        )))
        .unwrap()
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let recorded = files["~/.bittensor/wallets/axonw/hotkeys/hk1 (mode)"]
            .as_str()
            .unwrap();
        let mode = std::fs::metadata(wallet.hotkey_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(format!("{mode:#o}"), recorded);
    }
}
