//! Native BTLM backend: Cerebras `btlm-3b-8k-base` run with candle, replacing the Python
//! `CerebrasBTLMMiner` of text-prompting v2.1.6 (a transformers pipeline on a GPU).
//!
//! - [`model`]: the BTLM network (ALiBi, SwiGLU, muP scales) with a KV cache ([`kv_cache`];
//!   the engine keeps caches for reuse in a [`kv_pool`]), built from
//!   [`config`], [`attention`], the block layers and [`linear`] projections (f32, bf16/f16
//!   and q8_0/q4k quantized weights); [`loader`] picks the run format; [`weights`] reads
//!   `pytorch_model.bin` (the only weights on the hub) and `.safetensors`.
//! - [`tokenizer`]: GPT-2 byte-level BPE, built from `vocab.json` + `merges.txt` when there
//!   is no `tokenizer.json` (the hub repo has none).
//! - [`generation`]: decoding with stop strings and incremental UTF-8 output;
//!   [`sampling`]: greedy or sampled token choice, repetition penalty, Hugging Face's
//!   `no_repeat_ngram_size`.
//! - [`prompt`]: the Python miner's prompt format; [`args`]: its `--btlm.*` flags.
//! - [`engine`]: one thread owning the model runs steps that advance every running
//!   sequence together (continuous batching; [`sequence`] is the per-request state machine
//!   the engine and [`sequence::generate`] share); [`miner::BtlmMiner`] implements
//!   [`prompting_miner::Miner`] on top of it and reports its batch slots as the pipeline's
//!   capacity.
//!
//! ```no_run
//! use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let args = BtlmArgs { quantize: prompting_btlm_backend::options::Quantization::Q8_0, ..Default::default() };
//! let miner = BtlmMiner::from_args(&args)?; // downloads (or finds in the HF cache) and loads
//! # Ok(()) }
//! ```
//!
//! # Differences from the Python miner
//!
//! - **Completion text.** Python returned `generated_text.split(":")[-1]`, i.e. only what
//!   followed the *last colon* of prompt + output, so any answer containing a colon
//!   ("Note: …", "12:30") was cut. Here the completion is exactly the generated
//!   continuation (without the leading text of the prompt). It also stops before the stop
//!   strings (default `"\nuser:"`, `"\nsystem:"`) instead of letting the model write the
//!   next turns; the stop string is not part of the completion.
//! - **Device.** `--btlm.device` defaults to `cuda`, as in Python; a build without the `cuda`
//!   feature runs on the CPU after one warning, a `cuda` build stops with one error line when
//!   it cannot open the GPU. On CPU, `--btlm.dtype bf16|f16` stores half-precision weights and computes
//!   with f32 activations (candle has no fast CPU bf16 matmul).
//! - **Sampling.** `--btlm.top_k` defaults to 50 and `--btlm.top_p` to 1, the values
//!   transformers used implicitly. A temperature of 0 means greedy.
//! - **Empty requests** (no messages) are refused as bad requests; Python generated from
//!   `"assistant: "` alone.
//! - **Tokenization cleanup.** transformers' `clean_up_tokenization_spaces` is not applied:
//!   the text is the exact decoding of the generated tokens.
#![warn(missing_docs)]

pub mod args;
pub mod attention;
mod batcher;
pub mod config;
mod deadline_guard;
mod elementwise;
pub mod engine;
pub mod error;
pub mod generation;
pub mod heap_keeper;
pub mod host_memory;
pub mod hub;
pub mod huge_pages;
pub mod kernels;
pub mod kv_cache;
pub mod kv_pages;
pub mod kv_pool;
mod layers;
pub mod linear;
pub mod loader;
pub mod miner;
pub mod model;
pub mod options;
pub mod pack_cache;
pub mod prompt;
pub mod sampling;
pub mod sequence;
pub mod speed_probe;
mod step;
mod step_cost;
pub mod step_profile;
mod team;
pub mod tokenizer;
pub mod weights;

pub use args::BtlmArgs;
pub use error::{BtlmError, Result};
pub use miner::BtlmMiner;
