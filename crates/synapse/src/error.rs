//! The errors of the JSON body codec and of the header codec.

/// A synapse JSON body that cannot be read. The axon answers these with HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The bytes are not JSON.
    #[error("synapse body is not valid JSON: {reason}")]
    InvalidJson {
        /// What the JSON parser said.
        reason: String,
    },
    /// The JSON is not an object.
    #[error("synapse body is not a JSON object")]
    NotAnObject,
    /// A field without a default (e.g. `roles`, `messages`) is absent.
    #[error("synapse {synapse} is missing required field `{field}`")]
    MissingField {
        /// The synapse type (`Prompting`).
        synapse: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A base field (`timeout`, `dendrite`, ...) has a value of the wrong type.
    #[error("synapse field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The synapse-specific fields do not match their types (e.g. a number in `messages`).
    #[error("synapse {synapse} fields are invalid: {reason}")]
    InvalidBody {
        /// The synapse type (`Prompting`).
        synapse: &'static str,
        /// What the deserializer said.
        reason: String,
    },
}

/// A synapse header that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The value does not parse as the field's type (e.g. `bt_header_axon_port: http`).
    #[error("header `{name}` has an invalid value {value:?}: {reason}")]
    InvalidValue {
        /// The header's name (lower case).
        name: String,
        /// The header's value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The body's `computed_body_hash` claim (header) differs from the hash of the received body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Hash mismatch between header body hash {claimed} and parsed body hash {computed}")]
pub struct BodyHashMismatch {
    /// The hash the `computed_body_hash` header claims.
    pub claimed: String,
    /// The hash of the received body.
    pub computed: String,
}
