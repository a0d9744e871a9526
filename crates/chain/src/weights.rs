//! Weights as `set_weights` takes them: `u16`s scaled so the largest is 65535.

use crate::error::ChainError;

/// Scales `weights` (non-negative, finite) so the largest becomes `u16::MAX`, dropping uids
/// whose scaled weight is 0, as the Python SDK's `convert_weights_and_uids_for_emit` does.
pub fn normalize_weights(
    uids: &[u16],
    weights: &[f32],
) -> Result<(Vec<u16>, Vec<u16>), ChainError> {
    if uids.len() != weights.len() {
        return Err(ChainError::InvalidArgument(format!(
            "{} uids but {} weights",
            uids.len(),
            weights.len()
        )));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(ChainError::InvalidArgument(
            "weights must be finite and non-negative".into(),
        ));
    }
    let max = weights.iter().copied().fold(0.0f32, f32::max);
    if max == 0.0 {
        return Ok((Vec::new(), Vec::new()));
    }
    Ok(uids
        .iter()
        .zip(weights)
        .filter_map(|(&uid, &w)| {
            let scaled = (f64::from(w) / f64::from(max) * f64::from(u16::MAX)).round() as u16;
            (scaled > 0).then_some((uid, scaled))
        })
        .unzip())
}

/// The miner's weights: all on its own uid.
pub fn self_weights(own_uid: u16) -> (Vec<u16>, Vec<u16>) {
    (vec![own_uid], vec![u16::MAX])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_by_the_maximum_and_drops_zeros() {
        assert_eq!(
            normalize_weights(&[0, 1, 2, 3], &[0.0, 0.0, 1.0, 0.0]).expect("valid"),
            (vec![2], vec![65535])
        );
        assert_eq!(
            normalize_weights(&[4, 7], &[0.5, 0.25]).expect("valid"),
            (vec![4, 7], vec![65535, 32768])
        );
        assert_eq!(
            normalize_weights(&[1], &[0.0]).expect("valid"),
            (vec![], vec![])
        );
        assert_eq!(
            self_weights(9),
            normalize_weights(&[9], &[1.0]).expect("valid")
        );
        assert!(normalize_weights(&[1, 2], &[1.0]).is_err());
        assert!(normalize_weights(&[1], &[f32::NAN]).is_err());
        assert!(normalize_weights(&[1], &[-1.0]).is_err());
    }
}
