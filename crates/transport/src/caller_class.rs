//! Who a caller is, as far as the axon's bounded tables care: the nonce table, the btauth/1
//! replay store and the connection limit give registered keys room of their own, so that
//! nothing an unregistered key sends can push a registered validator out.

use prompting_miner::Pipeline;

/// The class of a hotkey for the bounds of the tables that remember it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallerClass {
    /// Neither registered on the subnet nor whitelisted. Free to create in any number: all
    /// such keys share one bounded table, and what one of them does can only affect the others.
    Unregistered,
    /// Registered on the subnet (any stake) or whitelisted. Such keys are few (a subnet has a
    /// bounded number of uids), so each gets a bounded table of its own that only its own
    /// signed requests can fill.
    Registered,
}

impl CallerClass {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerClass::Unregistered => "unregistered",
            CallerClass::Registered => "registered",
        }
    }
}

/// Tells the class of a hotkey (SS58 address with the subnet's prefix, as the metagraph
/// lists it).
pub trait ClassifyCaller: Send + Sync {
    /// The class of `hotkey`.
    fn class_of(&self, hotkey: &str) -> CallerClass;
}

/// Everyone is [`CallerClass::Unregistered`]: one shared table (a verifier used outside an
/// axon, which knows no metagraph).
#[derive(Debug, Default, Clone, Copy)]
pub struct NobodyRegistered;

impl ClassifyCaller for NobodyRegistered {
    fn class_of(&self, _hotkey: &str) -> CallerClass {
        CallerClass::Unregistered
    }
}

impl ClassifyCaller for Pipeline {
    fn class_of(&self, hotkey: &str) -> CallerClass {
        if self.is_whitelisted(hotkey) || self.caller(hotkey).is_some() {
            CallerClass::Registered
        } else {
            CallerClass::Unregistered
        }
    }
}
