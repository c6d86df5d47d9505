//! The configuration file: TOML read through the serde derive of [`NetDmaConfig`], its
//! ranges checked by [`NetDmaConfig::validate`], and its errors turned into
//! [`ConfigError`]s that name the key by its dotted TOML name.
//!
//! `toml`'s error carries a message and the byte span of what it refused, but not the key.
//! The document is parsed once into `toml`'s spanned tree, the configuration is
//! deserialized from that tree, and an error's span is looked up in the same tree: a span
//! that is a key is a key the configuration does not have (`deny_unknown_fields` refuses
//! it while reading the key), a span inside a value belongs to the deepest key whose value
//! holds it.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::keys::{is_section, key_by_toml, Source};
use super::{ConfigError, NetDmaConfig};

/// Parses and checks a whole file; `path` only names it in errors.
pub(super) fn from_toml(text: &str, path: Option<&Path>) -> Result<NetDmaConfig, ConfigError> {
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: path.map(Path::to_path_buf),
        message: e.to_string().trim_end().to_owned(),
    };
    let doc = DeTable::parse(text).map_err(parse_error)?;
    let cfg = NetDmaConfig::deserialize(toml::Deserializer::from(doc.clone())).map_err(
        |mut e| match e.span().and_then(|span| locate(doc.get_ref(), &span, "")) {
            Some(found) => found.into_error(text),
            None => {
                // Nothing in the document to name: keep toml's message with its line.
                e.set_input(Some(text));
                parse_error(e)
            }
        },
    )?;
    cfg.validate()?;
    Ok(cfg)
}

/// Where in the document an error's span lies.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// On the key itself: `deny_unknown_fields` refused it.
    Key(String),
    /// In the value of this key.
    Value {
        key: String,
        span: Range<usize>,
        /// "a table" or "an array", shown instead of the value when it spans lines.
        compound: Option<&'static str>,
    },
}

impl Found {
    fn into_error(self, text: &str) -> ConfigError {
        match self {
            Found::Key(key) => ConfigError::UnknownKey(key),
            Found::Value {
                key,
                span,
                compound,
            } => {
                let written = text.get(span).unwrap_or_default().trim();
                let value = match compound {
                    Some(kind) if written.contains('\n') => kind.to_owned(),
                    _ => written.to_owned(),
                };
                let expected = match key_by_toml(&key) {
                    Some(info) => info.kind.expected(Source::File),
                    None if is_section(&key) => format!("a table ([{key}])"),
                    // Not reached: the derive refuses an unknown key before its value.
                    None => return ConfigError::UnknownKey(key),
                };
                ConfigError::InvalidValue {
                    key,
                    value,
                    expected,
                }
            }
        }
    }
}

/// Finds the key of `table` (a table at dotted `prefix`) that `span` belongs to: a key,
/// else the deepest value holding it.
fn locate(table: &DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<Found> {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        if k.span() == *span {
            return Some(Found::Key(key));
        }
        // A table's span may be only its header: look inside it whatever its span.
        if let DeValue::Table(sub) = v.get_ref() {
            if let Some(found) = locate(sub, span, &key) {
                return Some(found);
            }
        }
        let value_span = v.span();
        if value_span.start <= span.start && span.end <= value_span.end {
            let compound = match v.get_ref() {
                DeValue::Table(_) => Some("a table"),
                DeValue::Array(_) => Some("an array"),
                _ => None,
            };
            return Some(Found::Value {
                key,
                span: value_span,
                compound,
            });
        }
    }
    None
}
