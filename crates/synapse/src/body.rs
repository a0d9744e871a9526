//! The `SynapseBody` trait: what one synapse type adds to the base fields every request carries.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::python_repr::PyStr;

/// A field without a default value in the Python synapse class, and the JSON of an *empty*
/// value of its type.
///
/// Python's `Synapse.to_headers()` sends each such field as
/// `bt_header_input_obj_<name>: base64(json.dumps(type(value)()))` so that the axon can
/// build a placeholder synapse from headers alone: `[]` for a list (`W10=`), `0` for an int
/// (`MA==`), `""` for a str (`IiI=`), `0.0` for a float, `{}` for a dict, `false` for a bool.
/// Fields with a default (like `Prompting.completion`) are not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredField {
    /// The field's name.
    pub name: &'static str,
    /// `json.dumps()` of an empty value of the field's type.
    pub empty_json: &'static str,
}

/// The synapse-specific part of a request: a serde type for the fields the Python subclass
/// adds to `bittensor.Synapse`, and the facts the codec needs about them.
///
/// Adding a synapse type means implementing this trait; the envelope
/// ([`crate::Synapse`]), the JSON codec and the header codec are generic over it.
///
/// The type must serialize as a JSON object (a struct with named fields). Deserialization
/// must give the Python defaults to fields that have one (`#[serde(default)]`), ignore
/// unknown fields (serde's default), and serialize every field (Python's `model_dump()`
/// keeps `None` as `null`).
///
/// ```
/// use prompting_synapse::{PyStr, RequiredField, Synapse, SynapseBody};
/// use serde::{Deserialize, Serialize};
///
/// /// Python: `class Dummy(bt.Synapse): input: int; text: str = "hello";
/// /// required_hash_fields = ["input", "text"]`.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Dummy {
///     input: i64,
///     #[serde(default = "hello")]
///     text: String,
/// }
///
/// fn hello() -> String {
///     "hello".into()
/// }
///
/// impl SynapseBody for Dummy {
///     const NAME: &'static str = "Dummy";
///     const HASH_FIELDS: &'static [&'static str] = &["input", "text"];
///     const REQUIRED_FIELDS: &'static [RequiredField] =
///         &[RequiredField { name: "input", empty_json: "0" }];
///
///     fn hash_field(&self, name: &str) -> Option<&dyn PyStr> {
///         match name {
///             "input" => Some(&self.input),
///             "text" => Some(&self.text),
///             _ => None,
///         }
///     }
/// }
///
/// let synapse = Synapse::<Dummy>::from_json(br#"{"input": 21}"#)?;
/// assert_eq!(synapse.body.text, "hello");
/// let headers = synapse.to_headers();
/// assert!(headers.contains(&("bt_header_input_obj_input".into(), "MA==".into())));
/// # Ok::<(), prompting_synapse::BodyError>(())
/// ```
pub trait SynapseBody:
    Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
    /// The Python class name: the HTTP route (`POST /<NAME>`) and the `name` field.
    const NAME: &'static str;

    /// The class's `required_hash_fields`, in the order Python hashes them.
    const HASH_FIELDS: &'static [&'static str];

    /// The fields without a default, which the body must carry and which
    /// `bt_header_input_obj_*` headers announce, in class definition order.
    const REQUIRED_FIELDS: &'static [RequiredField];

    /// The value of a hashed field (a name from [`SynapseBody::HASH_FIELDS`]); its Python
    /// `str()` is what gets hashed. `None` for a name that is not a field.
    fn hash_field(&self, name: &str) -> Option<&dyn PyStr>;

    /// Takes the mutable fields of a successful (HTTP 200) response into this, the caller's
    /// copy. Python's dendrite copies every field that is not frozen; the default
    /// replaces everything, types with frozen fields override it.
    fn accept_response(&mut self, from_server: Self) {
        *self = from_server;
    }
}
