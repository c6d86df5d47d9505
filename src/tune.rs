//! The copybreak tuner's file edit: `tcp_dma_copybreak` rewritten in a `netdma.toml`
//! that keeps everything else, comments included (`copybreak_tune --write`).

use netdma::config::{ConfigError, Copybreak};

/// Sets `tcp_dma_copybreak` in the TOML document `doc`, keeping every other key, the
/// layout and all comments (including a comment after the old value).
pub fn update_copybreak(doc: &str, copybreak: Copybreak) -> Result<String, ConfigError> {
    let mut document: toml_edit::DocumentMut =
        doc.parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Parse {
                path: None,
                message: e.to_string().trim_end().to_owned(),
            })?;
    let mut value = match copybreak {
        Copybreak::Bytes(n) => {
            let i = i64::try_from(n).map_err(|_| ConfigError::OutOfRange {
                key: "tcp_dma_copybreak".to_owned(),
                value: n.to_string(),
                range: format!("0..={} (a TOML integer) or \"auto\"", i64::MAX),
            })?;
            toml_edit::Value::from(i)
        }
        Copybreak::Auto => toml_edit::Value::from("auto"),
    };
    let key = "tcp_dma_copybreak";
    match document.get_mut(key) {
        Some(toml_edit::Item::Value(old)) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        Some(item) => *item = toml_edit::Item::Value(value),
        None => {
            document.insert(key, toml_edit::Item::Value(value));
        }
    }
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdma::config::NetDmaConfig;

    #[test]
    fn update_copybreak_keeps_comments_and_keys() {
        let doc = "# netdma tuning\n\
                   enabled = true # keep me\n\
                   tcp_dma_copybreak = 4096 # written by the tuner\n\
                   chunk_size = 8192\n\
                   \n\
                   [wait]\n\
                   # spin a little\n\
                   spin_us = 5\n";
        let out = update_copybreak(doc, Copybreak::Bytes(32768)).unwrap();
        assert_eq!(out, doc.replace("= 4096", "= 32768"));
        let c = NetDmaConfig::from_toml_str(&out).unwrap();
        assert_eq!(c.tcp_dma_copybreak, Copybreak::Bytes(32768));
        assert_eq!(c.chunk_size, 8192);
        assert_eq!(c.wait.spin_us, 5);

        let out = update_copybreak(&out, Copybreak::Auto).unwrap();
        assert!(
            out.contains("tcp_dma_copybreak = \"auto\" # written by the tuner"),
            "{out}"
        );
        assert!(out.contains("# spin a little") && out.contains("enabled = true # keep me"));

        // Absent key: added at the top level, not under [wait].
        let doc = "# only a table\n[wait]\nspin_us = 5 # x\n";
        let out = update_copybreak(doc, Copybreak::Bytes(1024)).unwrap();
        let c = NetDmaConfig::from_toml_str(&out).unwrap();
        assert_eq!(c.tcp_dma_copybreak, Copybreak::Bytes(1024));
        assert_eq!(c.wait.spin_us, 5);
        assert!(
            out.contains("# only a table") && out.contains("spin_us = 5 # x"),
            "{out}"
        );

        assert!(matches!(
            update_copybreak("x = = 1", Copybreak::Auto),
            Err(ConfigError::Parse { path: None, .. })
        ));
        if usize::BITS == 64 {
            assert!(matches!(
                update_copybreak("", Copybreak::Bytes(usize::MAX)),
                Err(ConfigError::OutOfRange { .. })
            ));
        }
    }

    #[test]
    fn never_round_trips_through_a_file() {
        let doc = update_copybreak("", Copybreak::NEVER).unwrap();
        let c = NetDmaConfig::from_toml_str(&doc).unwrap();
        assert_eq!(c.tcp_dma_copybreak, Copybreak::NEVER);
        assert_eq!(Copybreak::NEVER.bytes(), Some(i64::MAX as usize));
    }
}
