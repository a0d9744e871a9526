//! BTLM's hyper-parameters: `config.json` as the Cerebras code writes it, normalised and
//! checked.

use serde::Deserialize;

use crate::error::{BtlmError, Result};

/// How positions are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionEmbeddingType {
    /// Attention with linear biases (BTLM's choice).
    Alibi,
    /// A learned absolute position table `transformer.wpe` (GPT-2 style).
    Learned,
}

/// The model hyper-parameters, normalised from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub n_positions: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// MLP inner size.
    pub n_inner: usize,
    /// Layer-norm epsilon.
    pub layer_norm_epsilon: f64,
    /// ALiBi or learned positions.
    pub position_embedding_type: PositionEmbeddingType,
    /// Multiplier of the token (and position) embeddings.
    pub embeddings_scale: f64,
    /// Multiplier of the output logits (`mup_output_alpha · mup_width_scale`).
    pub output_logits_scale: f64,
    /// Scale attention scores by `1/d` (muP) instead of `1/√d`.
    pub scale_qk_dot_by_d: bool,
    /// Scale attention scores at all.
    pub scale_attn_weights: bool,
    /// Further divide attention scores of block `i` by `i + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
}

/// `config.json` as written by the Cerebras code (both the `mup_*` names and the early ones).
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    n_positions: Option<usize>,
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    position_embedding_type: Option<String>,
    mup_embeddings_scale: Option<f64>,
    embeddings_scale: Option<f64>,
    mup_output_alpha: Option<f64>,
    mup_width_scale: Option<f64>,
    output_logits_scale: Option<f64>,
    mup_scale_qk_dot_by_d: Option<bool>,
    scale_qk_dot_by_d: Option<bool>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    alibi_scaling: Option<serde_json::Value>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

impl Config {
    /// The published `cerebras/btlm-3b-8k-base` configuration.
    pub fn btlm_3b_8k() -> Self {
        Config {
            vocab_size: 50257,
            n_positions: 8192,
            n_embd: 2560,
            n_layer: 32,
            n_head: 32,
            n_inner: 6826,
            layer_norm_epsilon: 1e-5,
            position_embedding_type: PositionEmbeddingType::Alibi,
            embeddings_scale: 14.6,
            output_logits_scale: 2.22 * 0.1,
            scale_qk_dot_by_d: true,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
        }
    }

    /// Parses and validates a `config.json`. Absent keys take the Cerebras `BTLMConfig`
    /// defaults; unsupported settings (non-SwiGLU activations, `alibi_scaling`) are refused.
    pub fn from_json(json: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| BtlmError::Config(e.to_string()))?;
        if let Some(t) = &raw.model_type
            && t != "btlm"
        {
            return Err(BtlmError::Config(format!(
                "model_type is {t:?}, this backend runs \"btlm\" models only"
            )));
        }
        let activation = raw.activation_function.as_deref().unwrap_or("gelu_new");
        if activation != "swiglu" {
            return Err(BtlmError::Config(format!(
                "activation_function {activation:?} is not supported (BTLM uses \"swiglu\")"
            )));
        }
        if let Some(v) = &raw.alibi_scaling
            && !v.is_null()
        {
            return Err(BtlmError::Config(format!(
                "alibi_scaling {v} is not supported (position interpolation is not implemented; \
                 use a checkpoint with alibi_scaling null)"
            )));
        }
        let position_embedding_type = match raw.position_embedding_type.as_deref() {
            None | Some("learned") => PositionEmbeddingType::Learned,
            Some("alibi") => PositionEmbeddingType::Alibi,
            Some(other) => {
                return Err(BtlmError::Config(format!(
                    "position_embedding_type {other:?} is not supported (alibi or learned)"
                )));
            }
        };
        let n_embd = raw.n_embd.unwrap_or(768);
        let output_logits_scale = match raw.output_logits_scale {
            Some(s) => s,
            None => raw.mup_output_alpha.unwrap_or(1.0) * raw.mup_width_scale.unwrap_or(1.0),
        };
        let cfg = Config {
            vocab_size: raw.vocab_size.unwrap_or(50257),
            n_positions: raw.n_positions.unwrap_or(1024),
            n_embd,
            n_layer: raw.n_layer.unwrap_or(12),
            n_head: raw.n_head.unwrap_or(12),
            n_inner: raw.n_inner.unwrap_or(4 * n_embd),
            layer_norm_epsilon: raw.layer_norm_epsilon.unwrap_or(1e-5),
            position_embedding_type,
            embeddings_scale: raw
                .mup_embeddings_scale
                .or(raw.embeddings_scale)
                .unwrap_or(1.0),
            output_logits_scale,
            scale_qk_dot_by_d: raw
                .mup_scale_qk_dot_by_d
                .or(raw.scale_qk_dot_by_d)
                .unwrap_or(false),
            scale_attn_weights: raw.scale_attn_weights.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: raw.scale_attn_by_inverse_layer_idx.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the sizes are usable.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.n_inner),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(BtlmError::Config(format!("{name} must be positive")));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(BtlmError::Config(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            )));
        }
        for (name, v) in [
            ("layer_norm_epsilon", self.layer_norm_epsilon),
            ("embeddings scale", self.embeddings_scale),
            ("output logits scale", self.output_logits_scale),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(BtlmError::Config(format!(
                    "{name} must be positive, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// The size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The number of weights the matrix multiplications of one token read
    /// (all blocks plus the output projection).
    pub fn matmul_params(&self) -> usize {
        let e = self.n_embd;
        let block = e * 3 * e + e * e + 2 * e * self.n_inner + self.n_inner * e;
        self.n_layer * block + self.vocab_size * e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = include_str!("../tests/fixtures/btlm-tiny/config.json");

    #[test]
    fn tiny_config_parses() {
        let c = Config::from_json(TINY).expect("tiny config");
        assert_eq!((c.n_embd, c.n_head, c.n_inner, c.n_layer), (64, 4, 170, 2));
        assert_eq!(c.position_embedding_type, PositionEmbeddingType::Alibi);
        assert!((c.output_logits_scale - 0.222).abs() < 1e-12);
        assert!((c.embeddings_scale - 14.6).abs() < 1e-12);
        assert!(c.scale_qk_dot_by_d);
        assert_eq!(c.eos_token_id, Some(1000));
    }

    fn edit(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(TINY).expect("json");
        f(v.as_object_mut().expect("object"));
        v.to_string()
    }

    #[test]
    fn early_key_names_are_accepted() {
        let json = edit(|m| {
            m.remove("mup_embeddings_scale");
            m.remove("mup_output_alpha");
            m.remove("mup_width_scale");
            m.remove("mup_scale_qk_dot_by_d");
            m.insert("embeddings_scale".into(), 3.0.into());
            m.insert("output_logits_scale".into(), 0.5.into());
            m.insert("scale_qk_dot_by_d".into(), false.into());
            m.insert("n_inner".into(), serde_json::Value::Null);
        });
        let c = Config::from_json(&json).expect("early names");
        assert_eq!(c.embeddings_scale, 3.0);
        assert_eq!(c.output_logits_scale, 0.5);
        assert!(!c.scale_qk_dot_by_d);
        assert_eq!(c.n_inner, 256);
    }

    #[test]
    fn unsupported_settings_are_refused() {
        let cases: Vec<(String, &str)> = vec![
            (
                edit(|m| {
                    m.insert(
                        "alibi_scaling".into(),
                        serde_json::json!({"type": "linear", "factor": 2.0}),
                    );
                }),
                "alibi_scaling",
            ),
            (
                edit(|m| {
                    m.insert("activation_function".into(), "gelu_new".into());
                }),
                "activation_function",
            ),
            (
                edit(|m| {
                    m.insert("n_head".into(), 5.into());
                }),
                "multiple of n_head",
            ),
            (
                edit(|m| {
                    m.insert("position_embedding_type".into(), "rotary".into());
                }),
                "rotary",
            ),
            (
                edit(|m| {
                    m.insert("model_type".into(), "gpt2".into());
                }),
                "model_type",
            ),
            ("{not json".to_string(), "invalid model config"),
        ];
        for (json, needle) in cases {
            let err = Config::from_json(&json).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        // A null alibi_scaling is fine.
        let ok = edit(|m| {
            m.insert("alibi_scaling".into(), serde_json::Value::Null);
        });
        assert!(Config::from_json(&ok).is_ok());
    }

    #[test]
    fn real_model_size() {
        let c = Config::btlm_3b_8k();
        c.validate().expect("valid");
        assert_eq!(c.head_dim(), 80);
        // ~2.6 B weights in matmuls.
        let p = c.matmul_params();
        assert!((2_500_000_000..2_800_000_000).contains(&p), "{p}");
    }
}
