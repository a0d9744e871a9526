//! `TerminalInfo`: what one end of a call (dendrite = client, axon = server) says about itself.

use serde::{Deserialize, Serialize};

use crate::lenient;
use crate::python_repr::float_repr;

/// Bittensor's `TerminalInfo`: every field optional, serialized as JSON `null` when absent
/// (Python's `model_dump()` keeps `None` fields), numbers read leniently (`"200"`, `"5.0"`).
///
/// The field order is Python's and is the order of the `bt_header_{axon,dendrite}_*` headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TerminalInfo {
    /// HTTP-like status code of the call (`200` success, `401`, `403`, `408`, `500`...).
    #[serde(default, deserialize_with = "lenient::opt_u16")]
    pub status_code: Option<u16>,
    /// Human-readable status (`"Success"`, an error message).
    #[serde(default)]
    pub status_message: Option<String>,
    /// Seconds this terminal spent on the call.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub process_time: Option<f64>,
    /// IP address of the terminal.
    #[serde(default)]
    pub ip: Option<String>,
    /// Port of the terminal.
    #[serde(default, deserialize_with = "lenient::opt_u16")]
    pub port: Option<u16>,
    /// Bittensor version of the terminal as an integer (`644` for 6.4.4, `10005000` for 10.5.0).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub version: Option<u64>,
    /// Replay-protection nonce: a nanosecond timestamp (`time.time_ns()`, about 1.8e18, in
    /// bittensor 7+; `time.monotonic_ns()` in 6.x).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub nonce: Option<u64>,
    /// The terminal's UUID (stable per dendrite/axon process).
    #[serde(default)]
    pub uuid: Option<String>,
    /// SS58 address of the terminal's hotkey.
    #[serde(default)]
    pub hotkey: Option<String>,
    /// `0x`-prefixed hex sr25519 signature (see [`crate::signing`] for the signed messages).
    #[serde(default)]
    pub signature: Option<String>,
}

/// Why a `bt_header_{axon,dendrite}_<field>` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldValueError {
    /// The field is not one of `TerminalInfo`'s (Python ignores such headers).
    UnknownField,
    /// The value does not parse as the field's type.
    Invalid(String),
}

impl TerminalInfo {
    /// The headers Python's `Synapse.to_headers()` emits for this terminal:
    /// `{prefix}{field}` = `str(value)` for every field that is not `None`, in field order.
    pub(crate) fn header_pairs(&self, prefix: &str) -> Vec<(String, String)> {
        let fields: [(&str, Option<String>); 10] = [
            ("status_code", self.status_code.map(|v| v.to_string())),
            ("status_message", self.status_message.clone()),
            ("process_time", self.process_time.map(float_repr)),
            ("ip", self.ip.clone()),
            ("port", self.port.map(|v| v.to_string())),
            ("version", self.version.map(|v| v.to_string())),
            ("nonce", self.nonce.map(|v| v.to_string())),
            ("uuid", self.uuid.clone()),
            ("hotkey", self.hotkey.clone()),
            ("signature", self.signature.clone()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (format!("{prefix}{name}"), v)))
            .collect()
    }

    /// Sets `field` from a header value, parsing numbers as Python's `int()`/`float()` do.
    pub(crate) fn set_from_header(
        &mut self,
        field: &str,
        value: &str,
    ) -> Result<(), FieldValueError> {
        fn int<T: TryFrom<i128>>(value: &str) -> Result<T, FieldValueError> {
            lenient::parse_py_int(value)
                .ok_or_else(|| FieldValueError::Invalid("not an integer".into()))
                .and_then(|v| {
                    T::try_from(v).map_err(|_| FieldValueError::Invalid("out of range".into()))
                })
        }
        match field {
            "status_code" => self.status_code = Some(int(value)?),
            "status_message" => self.status_message = Some(value.to_owned()),
            "process_time" => {
                self.process_time = Some(
                    lenient::parse_py_float(value)
                        .ok_or_else(|| FieldValueError::Invalid("not a number".into()))?,
                )
            }
            "ip" => self.ip = Some(value.to_owned()),
            "port" => self.port = Some(int(value)?),
            "version" => self.version = Some(int(value)?),
            "nonce" => self.nonce = Some(int(value)?),
            "uuid" => self.uuid = Some(value.to_owned()),
            "hotkey" => self.hotkey = Some(value.to_owned()),
            "signature" => self.signature = Some(value.to_owned()),
            _ => return Err(FieldValueError::UnknownField),
        }
        Ok(())
    }

    /// Overwrites this terminal's fields with every field `other` has (Python dendrite's
    /// merge of response headers: `{**local.model_dump(exclude_none=True),
    /// **server.model_dump(exclude_none=True)}`).
    pub fn merge_from(&mut self, other: &TerminalInfo) {
        fn take<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
            if let Some(value) = theirs {
                *mine = Some(value.clone());
            }
        }
        take(&mut self.status_code, &other.status_code);
        take(&mut self.status_message, &other.status_message);
        take(&mut self.process_time, &other.process_time);
        take(&mut self.ip, &other.ip);
        take(&mut self.port, &other.port);
        take(&mut self.version, &other.version);
        take(&mut self.nonce, &other.nonce);
        take(&mut self.uuid, &other.uuid);
        take(&mut self.hotkey, &other.hotkey);
        take(&mut self.signature, &other.signature);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_nulls_and_python_field_order() {
        let info = TerminalInfo {
            port: Some(8091),
            hotkey: Some("5Abc".into()),
            ..TerminalInfo::default()
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"status_code":null,"status_message":null,"process_time":null,"ip":null,"port":8091,"version":null,"nonce":null,"uuid":null,"hotkey":"5Abc","signature":null}"#
        );
    }

    #[test]
    fn json_numbers_may_be_strings_and_fields_may_be_missing() {
        let info: TerminalInfo = serde_json::from_str(
            r#"{"status_code":"200","process_time":"0.5","port":8091.0,"nonce":"1795303299506817297"}"#,
        )
        .unwrap();
        assert_eq!(info.status_code, Some(200));
        assert_eq!(info.process_time, Some(0.5));
        assert_eq!(info.port, Some(8091));
        assert_eq!(info.nonce, Some(1_795_303_299_506_817_297));
        assert_eq!(info.ip, None);
    }

    #[test]
    fn json_rejects_non_numbers() {
        assert!(serde_json::from_str::<TerminalInfo>(r#"{"port":"http"}"#).is_err());
        assert!(serde_json::from_str::<TerminalInfo>(r#"{"port":70000}"#).is_err());
        assert!(serde_json::from_str::<TerminalInfo>(r#"{"nonce":-1}"#).is_err());
    }

    #[test]
    fn headers_skip_none_and_render_like_python_str() {
        let info = TerminalInfo {
            status_code: Some(200),
            process_time: Some(5.698204040527344e-05),
            nonce: Some(42),
            ..TerminalInfo::default()
        };
        assert_eq!(
            info.header_pairs("bt_header_axon_"),
            vec![
                ("bt_header_axon_status_code".to_string(), "200".to_string()),
                (
                    "bt_header_axon_process_time".to_string(),
                    "5.698204040527344e-05".to_string()
                ),
                ("bt_header_axon_nonce".to_string(), "42".to_string()),
            ]
        );
    }

    #[test]
    fn set_from_header_parses_and_rejects() {
        let mut info = TerminalInfo::default();
        info.set_from_header("port", "18092").unwrap();
        info.set_from_header("process_time", "3.0003325939178467")
            .unwrap();
        assert_eq!(info.port, Some(18092));
        assert_eq!(info.process_time, Some(3.0003325939178467));
        assert_eq!(
            info.set_from_header("port", "x"),
            Err(FieldValueError::Invalid("not an integer".into()))
        );
        assert_eq!(
            info.set_from_header("colour", "x"),
            Err(FieldValueError::UnknownField)
        );
    }

    #[test]
    fn merge_overwrites_only_present_fields() {
        let mut local = TerminalInfo {
            hotkey: Some("local".into()),
            nonce: Some(1),
            ..TerminalInfo::default()
        };
        let server = TerminalInfo {
            status_code: Some(200),
            nonce: Some(2),
            ..TerminalInfo::default()
        };
        local.merge_from(&server);
        assert_eq!(local.hotkey.as_deref(), Some("local"));
        assert_eq!(local.nonce, Some(2));
        assert_eq!(local.status_code, Some(200));
    }
}
