//! Why subtensor refused a transaction, in the chain's own terms.
//!
//! A transaction can be refused at two stages, and they look different on the wire:
//!
//! - **In the transaction pool**, before any block includes it. The node answers the
//!   submission with JSON-RPC error 1010 (`Invalid Transaction`); its `data` is either a
//!   standard `InvalidTransaction` text (`Transaction is outdated` for a used nonce,
//!   `Transaction has a bad signature`, ...) or `Custom error: N`, where `N` is one of
//!   subtensor's `CustomTransactionError` codes ([`custom_error_name`]). Subtensor's
//!   transaction extension (`SubtensorTransactionExtension`) validates `serve_axon` (serving
//!   checks and rate limit) and the weights calls' stake threshold there, so those never
//!   become events. Other pool errors have codes 1011–1021 (`Priority is too low` for a
//!   second transaction with the same nonce, ...).
//! - **At dispatch**, once included: the block's events hold `System.ExtrinsicFailed` with a
//!   module error, e.g. `SubtensorModule::SettingWeightsTooFast` or `CommitRevealEnabled`.
//!
//! [`Rejection::name`] gives the subtensor error name for both, so callers can react to
//! `ServingRateLimitExceeded` whichever stage caught it.

use std::fmt;

use subxt::error::{DispatchError, RpcError};
use subxt::ext::subxt_rpcs;

/// JSON-RPC error code of a transaction the pool found invalid (`Invalid Transaction`).
pub const POOL_INVALID_TX: i32 = 1010;

/// The name of subtensor's `CustomTransactionError` with pool code `code`.
///
/// From opentensor/subtensor: `pallets/subtensor/src/lib.rs` (`CustomTransactionError` and its
/// `From<..> for u8`) at spec 365 (commit bdd42c880, codes 0–20 and 255), and
/// `common/src/transaction_error.rs` at spec 425 (14bc6f9f9, which adds 21–27). The codes
/// of both overlap unchanged.
pub fn custom_error_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "ColdkeyInSwapSchedule",
        1 => "StakeAmountTooLow",
        2 => "BalanceTooLow",
        3 => "SubnetNotExists",
        4 => "HotkeyAccountDoesntExist",
        5 => "NotEnoughStakeToWithdraw",
        6 => "RateLimitExceeded",
        7 => "InsufficientLiquidity",
        8 => "SlippageTooHigh",
        9 => "TransferDisallowed",
        10 => "HotKeyNotRegisteredInNetwork",
        11 => "InvalidIpAddress",
        12 => "ServingRateLimitExceeded",
        13 => "InvalidPort",
        14 => "ZeroMaxAmount",
        15 => "InvalidRevealRound",
        16 => "CommitNotFound",
        17 => "CommitBlockNotInRevealRange",
        18 => "InputLengthsUnequal",
        19 => "UidNotFound",
        20 => "EvmKeyAssociateRateLimitExceeded",
        21 => "ColdkeySwapDisputed",
        22 => "InvalidRealAccount",
        23 => "FailedShieldedTxParsing",
        24 => "InvalidShieldedTxPubKeyHash",
        25 => "NonAssociatedColdKey",
        26 => "DelegateTakeTooLow",
        27 => "DelegateTakeTooHigh",
        255 => "BadRequest",
        _ => return None,
    })
}

/// What a pool code means for the miner's two calls, when it is one they can meet.
fn custom_error_hint(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "the hotkey's stake weight is below the chain's StakeThreshold for setting weights",
        6 => "weights set again within the subnet's WeightsSetRateLimit",
        10 => "the hotkey is not registered on any subnet",
        11 => "subtensor refuses this ip (127.0.0.1, ::1, 255.255.255.255 or an all-ones IPv6)",
        12 => "served again within the subnet's ServingRateLimit blocks",
        13 => "port 0",
        255 => "another pallet error during validation (e.g. InvalidIpType)",
        _ => return None,
    })
}

/// Why a submitted transaction did not take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The pool refused it with `InvalidTransaction::Custom(code)` (RPC error 1010,
    /// `Custom error: N`): a subtensor check.
    PoolCustom {
        /// Subtensor's `CustomTransactionError` code.
        code: u8,
    },
    /// The pool refused it with a standard `InvalidTransaction` (RPC error 1010), e.g.
    /// `Transaction is outdated` (nonce already used) or `Transaction has a bad signature`.
    PoolInvalid {
        /// The node's text.
        reason: String,
    },
    /// Another submission error (1011–1021: unknown validity, temporarily banned, already
    /// imported, priority too low, ...) or a JSON-RPC error without pool meaning.
    Pool {
        /// JSON-RPC error code.
        code: i32,
        /// The error message.
        message: String,
        /// The error's data, if any (JSON text).
        data: Option<String>,
    },
    /// Included in a block, where the dispatch failed with a pallet error.
    Dispatch {
        /// The pallet (`SubtensorModule`).
        pallet: String,
        /// The error's name (`SettingWeightsTooFast`).
        error: String,
    },
    /// Anything else: a non-module dispatch error, or the pool dropping or invalidating the
    /// transaction after accepting it.
    Other(String),
}

impl Rejection {
    /// The subtensor error name, whichever stage refused the transaction: the pool's
    /// `CustomTransactionError` name or the dispatch's pallet error name.
    pub fn name(&self) -> Option<&str> {
        match self {
            Rejection::PoolCustom { code } => custom_error_name(*code),
            Rejection::Dispatch { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the chain refused the call for coming too early (serving or weights rate
    /// limit), so that retrying later can succeed.
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self.name(),
            Some(
                "ServingRateLimitExceeded"
                    | "SettingWeightsTooFast"
                    | "RateLimitExceeded"
                    | "CommittingWeightsTooFast"
            )
        )
    }

    /// Interprets the error subxt returned for a submission or for a dispatched transaction.
    pub fn from_subxt(err: &subxt::Error) -> Rejection {
        match err {
            subxt::Error::Rpc(RpcError::ClientError(subxt_rpcs::Error::User(user))) => {
                let data = user.data.as_ref().map(|raw| raw.get().to_string());
                Rejection::from_rpc_error(user.code, &user.message, data.as_deref())
            }
            subxt::Error::Runtime(DispatchError::Module(module)) => match module.details() {
                Ok(details) => Rejection::Dispatch {
                    pallet: details.pallet.name().to_string(),
                    error: details.variant.name.clone(),
                },
                Err(_) => Rejection::Other(module.to_string()),
            },
            other => Rejection::Other(other.to_string()),
        }
    }

    /// Interprets a JSON-RPC error answering `author_submitAndWatchExtrinsic`; `data` is the
    /// error's JSON `data` (a JSON string such as `"Custom error: 12"`, quotes included).
    pub fn from_rpc_error(code: i32, message: &str, data: Option<&str>) -> Rejection {
        let text = data.map(|raw| {
            serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.trim().to_string())
        });
        if code == POOL_INVALID_TX
            && let Some(text) = &text
        {
            if let Some(n) = text.strip_prefix("Custom error: ")
                && let Ok(code) = n.trim().parse::<u8>()
            {
                return Rejection::PoolCustom { code };
            }
            return Rejection::PoolInvalid {
                reason: text.clone(),
            };
        }
        Rejection::Pool {
            code,
            message: message.to_string(),
            data: text,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::PoolCustom { code } => {
                let name = custom_error_name(*code).unwrap_or("unknown code");
                write!(
                    f,
                    "{name} (transaction pool: InvalidTransaction::Custom({code}), RPC error {POOL_INVALID_TX})"
                )?;
                if let Some(hint) = custom_error_hint(*code) {
                    write!(f, ": {hint}")?;
                }
                Ok(())
            }
            Rejection::PoolInvalid { reason } => {
                write!(
                    f,
                    "{reason} (transaction pool, RPC error {POOL_INVALID_TX})"
                )
            }
            Rejection::Pool {
                code,
                message,
                data,
            } => {
                write!(f, "{message} (RPC error {code})")?;
                if let Some(data) = data {
                    write!(f, ": {data}")?;
                }
                Ok(())
            }
            Rejection::Dispatch { pallet, error } => {
                write!(f, "{pallet}::{error} (dispatch failed in the block)")
            }
            Rejection::Other(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_custom_codes_are_named() {
        let r =
            Rejection::from_rpc_error(1010, "Invalid Transaction", Some("\"Custom error: 12\""));
        assert_eq!(r, Rejection::PoolCustom { code: 12 });
        assert_eq!(r.name(), Some("ServingRateLimitExceeded"));
        assert!(r.is_rate_limit());
        let text = r.to_string();
        assert!(
            text.starts_with(
                "ServingRateLimitExceeded (transaction pool: InvalidTransaction::Custom(12), RPC error 1010)"
            ),
            "{text}"
        );
        for (code, name) in [
            (1, "StakeAmountTooLow"),
            (6, "RateLimitExceeded"),
            (10, "HotKeyNotRegisteredInNetwork"),
            (11, "InvalidIpAddress"),
            (13, "InvalidPort"),
            (255, "BadRequest"),
        ] {
            assert_eq!(custom_error_name(code), Some(name));
        }
        assert_eq!(custom_error_name(200), None);
        assert!(
            Rejection::PoolCustom { code: 200 }
                .to_string()
                .contains("unknown code")
        );
    }

    #[test]
    fn standard_pool_errors_keep_the_node_text() {
        let r = Rejection::from_rpc_error(
            1010,
            "Invalid Transaction",
            Some("\"Transaction is outdated\""),
        );
        assert_eq!(
            r,
            Rejection::PoolInvalid {
                reason: "Transaction is outdated".into()
            }
        );
        assert_eq!(r.name(), None);
        assert!(!r.is_rate_limit());
        let r = Rejection::from_rpc_error(1014, "Priority is too low: (0 vs 0)", Some("\"x\""));
        assert_eq!(
            r.to_string(),
            "Priority is too low: (0 vs 0) (RPC error 1014): x"
        );
    }

    #[test]
    fn dispatch_errors_are_named() {
        let r = Rejection::Dispatch {
            pallet: "SubtensorModule".into(),
            error: "SettingWeightsTooFast".into(),
        };
        assert_eq!(r.name(), Some("SettingWeightsTooFast"));
        assert!(r.is_rate_limit());
        assert_eq!(
            r.to_string(),
            "SubtensorModule::SettingWeightsTooFast (dispatch failed in the block)"
        );
    }
}
