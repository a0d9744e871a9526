//! What a miner knows of its subnet: who is registered, with which stake and permit.
//!
//! The chain client (`prompting-chain`) fills these types and the miner pipeline
//! (`prompting-miner`) reads them; this crate sits under both so neither pulls the other.
//! Snapshots are immutable and swapped atomically when refreshed, so the request path reads
//! them without taking a lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

/// One registered neuron, as the chain reports it.
///
/// The consensus scores (`rank`, `trust`, `consensus`, `incentive`) are the chain's u16
/// values divided by 65535, and `emission` is in units of 1e9 (α on a subnet), as bittensor's
/// `metagraph.R`/`T`/`C`/`I`/`E` report them; a metagraph file without them reads 0.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NeuronInfo {
    /// Position of the neuron on the subnet.
    pub uid: u16,
    /// SS58 address of the hotkey.
    pub hotkey: String,
    /// SS58 address of the coldkey that owns the hotkey (may be empty when unknown).
    #[serde(default)]
    pub coldkey: String,
    /// Stake, in α of the subnet (1 α = 1e9 units): the stake weight bittensor 10's
    /// `metagraph.S` reports (see docs/chain.md); τ on chains before dynamic TAO.
    #[serde(default)]
    pub stake: f64,
    /// Whether the neuron may set weights (is a validator).
    #[serde(default)]
    pub validator_permit: bool,
    /// The axon address the neuron published, as `ip:port`, if any.
    #[serde(default)]
    pub axon: Option<String>,
    /// Rank (bittensor's `metagraph.R`), in [0, 1].
    #[serde(default)]
    pub rank: f64,
    /// Trust (`metagraph.T`), in [0, 1].
    #[serde(default)]
    pub trust: f64,
    /// Consensus (`metagraph.C`), in [0, 1].
    #[serde(default)]
    pub consensus: f64,
    /// Incentive (`metagraph.I`), in [0, 1].
    #[serde(default)]
    pub incentive: f64,
    /// Emission per tempo (`metagraph.E`), in units of 1e9 (α on a subnet).
    #[serde(default)]
    pub emission: f64,
}

/// What a policy needs to know of one caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallerInfo {
    /// The caller's uid on the subnet.
    pub uid: u16,
    /// Its stake, in α (see [`NeuronInfo::stake`]).
    pub stake: f64,
    /// Whether it holds a validator permit.
    pub validator_permit: bool,
}

/// An immutable view of a subnet at one block.
#[derive(Debug, Clone, Default)]
pub struct Metagraph {
    /// The subnet.
    pub netuid: u16,
    /// The block this view was read at.
    pub block: u64,
    /// When this view was read.
    pub fetched_at: Option<SystemTime>,
    neurons: Vec<NeuronInfo>,
    by_hotkey: HashMap<String, usize>,
}

impl Metagraph {
    /// Builds a view from the neurons of `netuid` at `block`.
    pub fn new(netuid: u16, block: u64, neurons: Vec<NeuronInfo>) -> Self {
        let by_hotkey = neurons
            .iter()
            .enumerate()
            .map(|(i, n)| (n.hotkey.clone(), i))
            .collect();
        Metagraph {
            netuid,
            block,
            fetched_at: Some(SystemTime::now()),
            neurons,
            by_hotkey,
        }
    }

    /// All neurons, in the order given.
    pub fn neurons(&self) -> &[NeuronInfo] {
        &self.neurons
    }

    /// The neuron whose hotkey is `hotkey`, if registered.
    pub fn neuron(&self, hotkey: &str) -> Option<&NeuronInfo> {
        self.by_hotkey.get(hotkey).map(|&i| &self.neurons[i])
    }
}

/// The policies' read-only window on the subnet.
pub trait MetagraphView: Send + Sync + 'static {
    /// What is known of `hotkey`; `None` when it is not registered.
    fn caller(&self, hotkey: &str) -> Option<CallerInfo>;
    /// The current block (drives the prompt cache's span).
    fn block(&self) -> u64;
}

impl MetagraphView for Metagraph {
    fn caller(&self, hotkey: &str) -> Option<CallerInfo> {
        self.neuron(hotkey).map(CallerInfo::from)
    }

    fn block(&self) -> u64 {
        self.block
    }
}

impl From<&NeuronInfo> for CallerInfo {
    fn from(n: &NeuronInfo) -> Self {
        CallerInfo {
            uid: n.uid,
            stake: n.stake,
            validator_permit: n.validator_permit,
        }
    }
}

/// A metagraph snapshot that a refresher (e.g. the chain client) replaces atomically.
#[derive(Debug, Default)]
pub struct SharedMetagraph {
    current: ArcSwap<Metagraph>,
}

impl SharedMetagraph {
    /// Starts with `initial`.
    pub fn new(initial: Metagraph) -> Self {
        SharedMetagraph {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Metagraph> {
        self.current.load_full()
    }

    /// Replaces the snapshot; readers see either the old or the new one, never a mix.
    pub fn store(&self, next: Metagraph) {
        self.current.store(Arc::new(next));
    }
}

impl MetagraphView for SharedMetagraph {
    fn caller(&self, hotkey: &str) -> Option<CallerInfo> {
        self.current.load().neuron(hotkey).map(CallerInfo::from)
    }

    fn block(&self) -> u64 {
        self.current.load().block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neuron(uid: u16, hotkey: &str, stake: f64) -> NeuronInfo {
        NeuronInfo {
            uid,
            hotkey: hotkey.into(),
            coldkey: String::new(),
            stake,
            validator_permit: stake > 10.0,
            axon: None,
            ..NeuronInfo::default()
        }
    }

    #[test]
    fn lookup_and_atomic_swap() {
        let shared = SharedMetagraph::new(Metagraph::new(1, 10, vec![neuron(0, "a", 100.0)]));
        assert_eq!(shared.caller("a").map(|c| c.uid), Some(0));
        assert!(shared.caller("b").is_none());
        let before = shared.load();
        shared.store(Metagraph::new(1, 11, vec![neuron(3, "b", 1.0)]));
        assert_eq!(shared.block(), 11);
        assert!(shared.caller("a").is_none());
        assert_eq!(
            shared.caller("b").map(|c| (c.uid, c.validator_permit)),
            Some((3, false))
        );
        // A reader holding the old snapshot keeps a consistent view.
        assert_eq!(before.block, 10);
        assert!(before.neuron("a").is_some());
    }
}
