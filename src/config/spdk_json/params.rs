//! Decoding method parameters, for the calls of a configuration file and the JSON-RPC
//! methods alike: each method has a param struct with `#[serde(deny_unknown_fields)]`;
//! serde's messages are rewritten so that each error names the offending parameter the
//! way an operator reads it (`unknown parameter "foo"`, `missing parameter "lvs_name"`,
//! `"size_in_mib": expected an integer, got string "big"`). Pure and total.
//!
//! [`ParamError`] is what a call's parameters can be refused with; the RPC gives each
//! kind its JSON-RPC code, a configuration file reports the message.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why a call's parameters are refused. The message names the parameter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// Missing, malformed or conflicting parameters (JSON-RPC: invalid params).
    #[error("{0}")]
    Invalid(String),
    /// Well-formed, but asking for what tessera does not do (SPDK: `-EINVAL`).
    #[error("{0}")]
    Unsupported(String),
    /// Naming something that does not exist (SPDK: `-ENODEV`).
    #[error("{0} does not exist")]
    NoSuch(String),
}

impl ParamError {
    /// [`ParamError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> ParamError {
        ParamError::Invalid(message.into())
    }

    /// [`ParamError::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> ParamError {
        ParamError::Unsupported(message.into())
    }
}

/// Decodes `params` (absent, null or an object) into `T`.
pub fn decode<T: DeserializeOwned>(params: Option<Value>) -> Result<T, ParamError> {
    let v = match params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(m)) => Value::Object(m),
        Some(_) => {
            return Err(ParamError::invalid(
                "params must be an object of named parameters",
            ));
        }
    };
    decode_value(v).map_err(ParamError::Invalid)
}

/// Refuses a parameter SPDK has but tessera does not implement, unless it has the value
/// that means "off".
pub fn unsupported<T: PartialEq + Default>(
    name: &str,
    value: &Option<T>,
) -> Result<(), ParamError> {
    match value {
        Some(v) if *v != T::default() => Err(ParamError::unsupported(format!(
            "\"{name}\" is not supported by tessera"
        ))),
        _ => Ok(()),
    }
}

/// Decodes a JSON value into `T`; the error message names the parameter.
pub fn decode_value<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        describe(&path, &inner)
    })
}

/// Rewrites one of serde's messages for the parameter at `path` (`.` for the top).
pub fn describe(path: &str, message: &str) -> String {
    let path = if path == "." { "" } else { path };
    let join = |field: &str| {
        if path.is_empty() {
            field.to_string()
        } else if path.ends_with(field) {
            path.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = tail
            .strip_prefix(", expected one of ")
            .or_else(|| tail.strip_prefix(", expected "))
            .map(|s| s.replace('`', "\""));
        return match expected {
            Some(list) => format!("unknown parameter \"{}\" (known: {list})", join(field)),
            None => format!("unknown parameter \"{}\"", join(field)),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return format!("missing parameter \"{}\"", join(field));
    }
    let named = |m: String| {
        if path.is_empty() {
            m
        } else {
            format!("\"{path}\": {m}")
        }
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
            return named(format!(
                "expected {}, got {}",
                friendly(expected),
                got.replace('`', "")
            ));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        return named(format!("invalid length {rest}"));
    }
    named(message.to_string())
}

/// serde's name of an expected type, for people.
fn friendly(expected: &str) -> String {
    let e = expected.trim();
    let int = |bits: &str, signed: bool| {
        format!(
            "an integer ({}{bits})",
            if signed { "signed " } else { "unsigned " }
        )
    };
    match e {
        "u8" => int("8-bit", false),
        "u16" => int("16-bit", false),
        "u32" => int("32-bit", false),
        "u64" | "usize" => int("64-bit", false),
        "i8" | "i16" | "i32" => int("32-bit", true),
        "i64" | "isize" => int("64-bit", true),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "a boolean".into(),
        "a string" => "a string".into(),
        "a sequence" => "an array".into(),
        "a map" => "an object".into(),
        _ if e.starts_with("struct ") => "an object".into(),
        _ => e.replace('`', "\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        traddr: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        lvs_name: String,
        #[serde(default)]
        size_in_mib: u64,
        #[serde(default)]
        thin_provision: bool,
        #[serde(default)]
        listen_address: Option<Inner>,
    }

    fn err(v: Value) -> String {
        decode::<P>(Some(v)).unwrap_err().to_string()
    }

    #[test]
    fn messages_name_the_parameter() {
        assert_eq!(
            err(serde_json::json!({"lvs_name": "a", "foo": 1})),
            "unknown parameter \"foo\" (known: \"lvs_name\", \"size_in_mib\", \"thin_provision\", \"listen_address\")"
        );
        assert_eq!(err(serde_json::json!({})), "missing parameter \"lvs_name\"");
        assert_eq!(
            err(serde_json::json!({"lvs_name": "a", "size_in_mib": "big"})),
            "\"size_in_mib\": expected an integer (unsigned 64-bit), got string \"big\""
        );
        assert_eq!(
            err(serde_json::json!({"lvs_name": "a", "size_in_mib": -1})),
            "\"size_in_mib\": expected an integer (unsigned 64-bit), got integer -1"
        );
        assert_eq!(
            err(serde_json::json!({"lvs_name": 5})),
            "\"lvs_name\": expected a string, got integer 5"
        );
        assert_eq!(
            err(serde_json::json!({"lvs_name": "a", "thin_provision": "yes"})),
            "\"thin_provision\": expected a boolean, got string \"yes\""
        );
        assert_eq!(
            err(serde_json::json!({"lvs_name": "a", "listen_address": {}})),
            "missing parameter \"listen_address.traddr\""
        );
        assert!(
            err(serde_json::json!({"lvs_name": "a", "listen_address": {"traddr": "x", "y": 1}}))
                .starts_with("unknown parameter \"listen_address.y\"")
        );
        let e = decode::<P>(Some(serde_json::json!([1]))).unwrap_err();
        assert!(matches!(e, ParamError::Invalid(_)), "{e:?}");
        // Absent params are an empty object.
        assert_eq!(
            decode::<P>(None).unwrap_err().to_string(),
            "missing parameter \"lvs_name\""
        );
    }
}
