//! A metagraph for local development only: every caller counts as a registered validator.

use std::time::Duration;

use tokio::time::Instant;

use crate::metagraph::{CallerInfo, MetagraphView};

/// Treats every hotkey as a registered validator (uid 0, [`DevMetagraph::DEFAULT_STAKE`] τ
/// unless set otherwise). Its block advances every [`DevMetagraph::BLOCK_TIME`] from 0, so
/// the prompt cache's span behaves as on a chain.
///
/// Never use it on a real network: it lets anyone through the registration, permit and stake
/// checks. Constructing one logs a warning saying so.
#[derive(Debug, Clone)]
pub struct DevMetagraph {
    stake: f64,
    started: Instant,
}

impl DevMetagraph {
    /// The stake every caller is given by [`DevMetagraph::new`], in α.
    pub const DEFAULT_STAKE: f64 = 1000.0;
    /// Time per block (as on Bittensor chains).
    pub const BLOCK_TIME: Duration = Duration::from_secs(12);

    /// Every caller is a validator holding [`DevMetagraph::DEFAULT_STAKE`] α.
    pub fn new() -> Self {
        Self::with_stake(Self::DEFAULT_STAKE)
    }

    /// Every caller is a validator holding `stake` α.
    pub fn with_stake(stake: f64) -> Self {
        tracing::warn!(
            stake,
            "DEVELOPMENT METAGRAPH: every caller is treated as a registered validator with \
             {stake} α; blacklist checks on registration, permit and stake are meaningless. \
             Never use this on a real network."
        );
        DevMetagraph {
            stake,
            started: Instant::now(),
        }
    }
}

impl Default for DevMetagraph {
    fn default() -> Self {
        Self::new()
    }
}

impl MetagraphView for DevMetagraph {
    fn caller(&self, _hotkey: &str) -> Option<CallerInfo> {
        Some(CallerInfo {
            uid: 0,
            stake: self.stake,
            validator_permit: true,
        })
    }

    fn block(&self) -> u64 {
        let elapsed = self.started.elapsed().as_secs();
        elapsed / Self::BLOCK_TIME.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn everyone_is_a_validator_and_blocks_advance() {
        let dev = DevMetagraph::with_stake(7.0);
        let caller = dev.caller("anyone").expect("registered");
        assert_eq!((caller.stake, caller.validator_permit), (7.0, true));
        assert_eq!(dev.block(), 0);
        tokio::time::advance(DevMetagraph::BLOCK_TIME * 3).await;
        assert_eq!(dev.block(), 3);
        assert_eq!(
            DevMetagraph::default().caller("x").map(|c| c.stake),
            Some(1000.0)
        );
    }
}
