//! Who may call: the identity checks of the blacklist (steps 1–5), and the reasons a caller
//! is refused by any step.
//!
//! The rate limit (step 6) and the prompt cache (step 7) keep state; they live in
//! [`crate::request_history`] and [`crate::prompt_cache`]. The pipeline runs all of them in
//! order.

use std::collections::HashSet;
use std::fmt;

use crate::config::BlacklistConfig;
use crate::metagraph::CallerInfo;

/// Why a caller was refused. `Display` gives the reason string sent to the caller (the
/// transport wraps it as `Forbidden. Key is blacklisted: {reason}.`).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The hotkey is in `--miner.blacklist.blacklist`.
    BlacklistedHotkey,
    /// The hotkey is not registered and unregistered callers are not allowed.
    NotRegistered,
    /// `--miner.blacklist.force_validator_permit` and the hotkey holds no permit.
    ValidatorPermitRequired,
    /// `--miner.blacklist.force_validator_permit` and the (allowed) hotkey is not registered.
    ValidatorPermitRequiredNotRegistered,
    /// The caller's stake is below `--miner.blacklist.minimum_stake_requirement`.
    StakeBelowMinimum {
        /// The caller's stake, in α (0 when unregistered).
        stake: f64,
        /// The required minimum, in α.
        minimum: f64,
    },
    /// The hotkey made too many accepted requests in the rate window.
    RateLimited {
        /// The caller.
        hotkey: String,
        /// Requests allowed per window.
        requests: usize,
        /// The window, in minutes.
        minutes: u64,
    },
    /// The same messages were seen within the prompt cache's span.
    PromptSentRecently {
        /// The span, in blocks.
        block_span: u64,
    },
}

impl Refusal {
    /// The kind of refusal, a label without caller data (for metrics).
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::BlacklistedHotkey => RefusalKind::BlacklistedHotkey,
            Refusal::NotRegistered => RefusalKind::NotRegistered,
            Refusal::ValidatorPermitRequired | Refusal::ValidatorPermitRequiredNotRegistered => {
                RefusalKind::NoValidatorPermit
            }
            Refusal::StakeBelowMinimum { .. } => RefusalKind::StakeBelowMinimum,
            Refusal::RateLimited { .. } => RefusalKind::RateLimited,
            Refusal::PromptSentRecently { .. } => RefusalKind::PromptCache,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BlacklistedHotkey => f.write_str("blacklisted hotkey"),
            Refusal::NotRegistered => f.write_str("hotkey not registered"),
            Refusal::ValidatorPermitRequired => f.write_str("validator permit required"),
            Refusal::ValidatorPermitRequiredNotRegistered => {
                f.write_str("validator permit required, but hotkey not registered")
            }
            Refusal::StakeBelowMinimum { stake, minimum } => {
                write!(f, "stake {stake} α below minimum {minimum} α")
            }
            Refusal::RateLimited {
                hotkey,
                requests,
                minutes,
            } => write!(
                f,
                "{hotkey} request frequency exceeded {requests} requests in {minutes} minutes."
            ),
            Refusal::PromptSentRecently { block_span } => write!(
                f,
                "Blacklisted: Prompt sent recently in last {block_span} blocks."
            ),
        }
    }
}

/// A refusal's kind, for metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalKind {
    /// In `--miner.blacklist.blacklist`.
    BlacklistedHotkey,
    /// Not registered on the subnet.
    NotRegistered,
    /// No validator permit (registered or not).
    NoValidatorPermit,
    /// Stake below the minimum.
    StakeBelowMinimum,
    /// Too many requests in the rate window.
    RateLimited,
    /// Prompt seen recently.
    PromptCache,
}

impl RefusalKind {
    /// Every kind, in a stable order.
    pub const ALL: [RefusalKind; 6] = [
        RefusalKind::BlacklistedHotkey,
        RefusalKind::NotRegistered,
        RefusalKind::NoValidatorPermit,
        RefusalKind::StakeBelowMinimum,
        RefusalKind::RateLimited,
        RefusalKind::PromptCache,
    ];

    /// A snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::BlacklistedHotkey => "blacklisted_hotkey",
            RefusalKind::NotRegistered => "not_registered",
            RefusalKind::NoValidatorPermit => "no_validator_permit",
            RefusalKind::StakeBelowMinimum => "stake_below_minimum",
            RefusalKind::RateLimited => "rate_limited",
            RefusalKind::PromptCache => "prompt_cache",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What the identity checks decided.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityVerdict {
    /// In the whitelist: skips the remaining blacklist checks, including the rate limit.
    Whitelisted,
    /// Passed steps 2–5; the rate limit and the prompt cache still apply.
    Passed,
    /// Refused.
    Refused(Refusal),
}

/// Steps 1–5 of the blacklist: whitelist, blacklist, registration, validator permit and
/// minimum stake. Stateless.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    whitelist: HashSet<String>,
    blacklist: HashSet<String>,
    allow_non_registered: bool,
    force_validator_permit: bool,
    minimum_stake: f64,
}

impl IdentityPolicy {
    /// The policy the flags describe.
    pub fn new(config: &BlacklistConfig) -> Self {
        IdentityPolicy {
            whitelist: config.whitelist.iter().cloned().collect(),
            blacklist: config.blacklist.iter().cloned().collect(),
            allow_non_registered: config.allow_non_registered,
            force_validator_permit: config.force_validator_permit,
            minimum_stake: config.minimum_stake_requirement,
        }
    }

    /// Whether `hotkey` is whitelisted.
    pub fn is_whitelisted(&self, hotkey: &str) -> bool {
        self.whitelist.contains(hotkey)
    }

    /// Judges `hotkey`, known to the metagraph as `caller` (`None`: not registered).
    pub fn check(&self, hotkey: &str, caller: Option<&CallerInfo>) -> IdentityVerdict {
        if self.whitelist.contains(hotkey) {
            return IdentityVerdict::Whitelisted;
        }
        if self.blacklist.contains(hotkey) {
            return IdentityVerdict::Refused(Refusal::BlacklistedHotkey);
        }
        if caller.is_none() && !self.allow_non_registered {
            return IdentityVerdict::Refused(Refusal::NotRegistered);
        }
        if self.force_validator_permit {
            match caller {
                Some(info) if !info.validator_permit => {
                    return IdentityVerdict::Refused(Refusal::ValidatorPermitRequired);
                }
                None => {
                    return IdentityVerdict::Refused(Refusal::ValidatorPermitRequiredNotRegistered);
                }
                Some(_) => {}
            }
        }
        let stake = caller.map_or(0.0, |c| c.stake);
        // A NaN stake (a broken metagraph) is refused too.
        if self.minimum_stake > 0.0 && (stake.is_nan() || stake < self.minimum_stake) {
            return IdentityVerdict::Refused(Refusal::StakeBelowMinimum {
                stake,
                minimum: self.minimum_stake,
            });
        }
        IdentityVerdict::Passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(stake: f64, validator_permit: bool) -> CallerInfo {
        CallerInfo {
            uid: 1,
            stake,
            validator_permit,
        }
    }

    fn policy(edit: impl FnOnce(&mut BlacklistConfig)) -> IdentityPolicy {
        let mut config = BlacklistConfig::default();
        edit(&mut config);
        IdentityPolicy::new(&config)
    }

    fn refused(r: Refusal) -> IdentityVerdict {
        IdentityVerdict::Refused(r)
    }

    #[test]
    fn whitelist_skips_every_other_check() {
        let p = policy(|c| {
            c.whitelist = vec!["w".into()];
            c.force_validator_permit = true;
            c.minimum_stake_requirement = 100.0;
        });
        assert_eq!(p.check("w", None), IdentityVerdict::Whitelisted);
        assert_eq!(p.check("x", None), refused(Refusal::NotRegistered));
    }

    #[test]
    fn blacklist_refuses_even_registered_validators() {
        let p = policy(|c| c.blacklist = vec!["b".into()]);
        assert_eq!(
            p.check("b", Some(&info(1e6, true))),
            refused(Refusal::BlacklistedHotkey)
        );
        assert_eq!(
            p.check("c", Some(&info(0.0, false))),
            IdentityVerdict::Passed
        );
    }

    #[test]
    fn registration_is_required_unless_allowed() {
        assert_eq!(
            policy(|_| {}).check("u", None),
            refused(Refusal::NotRegistered)
        );
        assert_eq!(
            policy(|c| c.allow_non_registered = true).check("u", None),
            IdentityVerdict::Passed
        );
    }

    #[test]
    fn validator_permit_when_forced() {
        let p = policy(|c| c.force_validator_permit = true);
        assert_eq!(
            p.check("m", Some(&info(5.0, false))),
            refused(Refusal::ValidatorPermitRequired)
        );
        assert_eq!(
            p.check("v", Some(&info(5.0, true))),
            IdentityVerdict::Passed
        );
        // Unregistered and not allowed: the registration check answers first.
        assert_eq!(p.check("u", None), refused(Refusal::NotRegistered));
        let p = policy(|c| {
            c.force_validator_permit = true;
            c.allow_non_registered = true;
        });
        assert_eq!(
            p.check("u", None),
            refused(Refusal::ValidatorPermitRequiredNotRegistered)
        );
    }

    #[test]
    fn minimum_stake_is_enforced() {
        let p = policy(|c| c.minimum_stake_requirement = 10.0);
        assert_eq!(
            p.check("poor", Some(&info(9.5, true))),
            refused(Refusal::StakeBelowMinimum {
                stake: 9.5,
                minimum: 10.0
            })
        );
        assert_eq!(
            p.check("ok", Some(&info(10.0, false))),
            IdentityVerdict::Passed
        );
        assert!(matches!(
            p.check("nan", Some(&info(f64::NAN, true))),
            IdentityVerdict::Refused(Refusal::StakeBelowMinimum { .. })
        ));
        // Unregistered callers hold no stake.
        let p = policy(|c| {
            c.minimum_stake_requirement = 1.0;
            c.allow_non_registered = true;
        });
        assert_eq!(
            p.check("u", None),
            refused(Refusal::StakeBelowMinimum {
                stake: 0.0,
                minimum: 1.0
            })
        );
    }

    #[test]
    fn reason_strings_match_the_python_miner() {
        assert_eq!(Refusal::BlacklistedHotkey.to_string(), "blacklisted hotkey");
        assert_eq!(Refusal::NotRegistered.to_string(), "hotkey not registered");
        assert_eq!(
            Refusal::ValidatorPermitRequired.to_string(),
            "validator permit required"
        );
        assert_eq!(
            Refusal::ValidatorPermitRequiredNotRegistered.to_string(),
            "validator permit required, but hotkey not registered"
        );
        assert_eq!(
            Refusal::RateLimited {
                hotkey: "5Hk".into(),
                requests: 50,
                minutes: 5
            }
            .to_string(),
            "5Hk request frequency exceeded 50 requests in 5 minutes."
        );
        assert_eq!(
            Refusal::PromptSentRecently { block_span: 7200 }.to_string(),
            "Blacklisted: Prompt sent recently in last 7200 blocks."
        );
        assert_eq!(
            Refusal::StakeBelowMinimum {
                stake: 2.5,
                minimum: 1000.0
            }
            .to_string(),
            "stake 2.5 α below minimum 1000 α"
        );
    }

    #[test]
    fn kinds_are_stable_labels() {
        for (i, kind) in RefusalKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        assert_eq!(
            Refusal::ValidatorPermitRequiredNotRegistered.kind(),
            RefusalKind::NoValidatorPermit
        );
        assert_eq!(RefusalKind::PromptCache.as_str(), "prompt_cache");
    }
}
