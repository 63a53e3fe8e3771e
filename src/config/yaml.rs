//! tessera's YAML configuration: [`Config::parse`] reads it with errors that name the
//! file, the line and the field (validation errors too: [`locate_yaml`] finds the line
//! of the field a message starts with), [`Config::to_yaml`] writes it.
//!
//! ```yaml
//! cores: [0, 1]            # or "0x3", or "0-1"
//! idle: adaptive           # or busy
//! bdevs:
//!   - {type: malloc, name: Malloc0, size: 1GiB, block_size: 4096}
//!   - {type: uring, name: data0, path: /var/lib/tessera/data0.img, size: 64GiB}
//! ```
//!
//! The schema is the serde shape of [`Config`] and its parts.

use super::{Config, ConfigError};

impl Config {
    /// Parses YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let cfg: Config = match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
                let mut message = inner.to_string();
                // serde_yaml appends its own "at line L column C"; we print it in front.
                if let Some(i) = message.find(" at line ") {
                    message.truncate(i);
                }
                // ... and may prefix part of the path, which we print whole.
                if let Some((head, rest)) = message.split_once(": ")
                    && !head.contains(' ')
                    && path.starts_with(head)
                {
                    message = rest.to_string();
                }
                let message = if path.is_empty() || path == "." {
                    message
                } else {
                    format!("{path}: {message}")
                };
                return Err(ConfigError::Parse {
                    file: file.to_string(),
                    line,
                    column,
                    message,
                });
            }
        };
        cfg.validate(file).map_err(|e| match e {
            // Point at the line of the field the message starts with.
            ConfigError::Invalid { file, message } => {
                let field = message.split(": ").next().unwrap_or("");
                match locate_yaml(text, field) {
                    Some(line) => ConfigError::Parse {
                        file,
                        line,
                        column: 1,
                        message,
                    },
                    None => ConfigError::Invalid { file, message },
                }
            }
            e => e,
        })?;
        Ok(cfg)
    }

    /// The configuration as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }
}

/// The line (1-based) of the field at `path` (`pools[1].bdevs`, `nvmf.subsystems[0].nqn`)
/// in YAML `text`, following block mappings and sequences by indentation; a flow
/// collection (`{...}`, `[...]`) stops the walk at its line. `None` if not found.
pub fn locate_yaml(text: &str, path: &str) -> Option<usize> {
    enum Seg<'a> {
        Key(&'a str),
        Index(usize),
    }
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            segs.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Some(n) = idx.strip_suffix(']') {
                segs.push(Seg::Index(n.parse().ok()?));
            }
        }
    }
    if segs.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let meaningful = |l: &str| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#')
    };
    // The node we are in: its line and the indentation of its content.
    let mut cur: Option<(usize, usize)> = None;
    for seg in segs {
        if let Some((line, _)) = cur {
            let t = lines[line].trim_start();
            let value = t.split_once(':').map_or("", |(_, v)| v.trim_start());
            if t.trim_start_matches("- ").starts_with('{')
                || value.starts_with('{')
                || value.starts_with('[')
            {
                return Some(line + 1); // flow collection: cannot go deeper
            }
        }
        match seg {
            Seg::Key(k) => {
                let want = format!("{k}:");
                let (from, parent) = match cur {
                    None => (0, None),
                    Some((l, ind)) => (l, Some(ind)),
                };
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().skip(from) {
                    if !meaningful(l) {
                        continue;
                    }
                    let ind = indent(l);
                    let t = l.trim_start();
                    let (content, cind) = match t.strip_prefix("- ") {
                        Some(r) if Some(i) == cur.map(|c| c.0) => (r.trim_start(), ind + 2),
                        _ => (t, ind),
                    };
                    if let Some(p) = parent
                        && i != from
                        && ind <= p
                    {
                        break;
                    }
                    if parent.is_none() && ind != 0 {
                        continue;
                    }
                    if content.starts_with(&want) {
                        hit = Some((i, cind));
                        break;
                    }
                }
                cur = Some(hit?);
            }
            Seg::Index(n) => {
                let (from, key_ind) = cur?;
                let mut item_ind = None;
                let mut count = 0;
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().skip(from + 1) {
                    if !meaningful(l) {
                        continue;
                    }
                    let ind = indent(l);
                    let dash = l.trim_start().starts_with('-');
                    if ind < key_ind || (ind == key_ind && !dash) {
                        break;
                    }
                    if dash && item_ind.is_none() {
                        item_ind = Some(ind);
                    }
                    if dash && Some(ind) == item_ind {
                        if count == n {
                            hit = Some((i, ind));
                            break;
                        }
                        count += 1;
                    }
                }
                cur = Some(hit?);
            }
        }
    }
    cur.map(|(l, _)| l + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BdevConfig, Size};
    use crate::reactor::IdlePolicy;

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(
            "cores: \"0x3\"\nidle: busy\nbdevs:\n  - {type: malloc, name: M0, size: 64MiB}\n  - {type: null, name: N0, size: 1TiB, block_size: 512}\n  - {type: uring, name: U0, path: /tmp/x.img, size: 1G, options: {queue_depth: 64}}\n  - {type: error, name: E0, base: M0, volatile_cache: true}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.cores.cpus(), &[0, 1]);
        assert_eq!(c.idle, IdlePolicy::Busy);
        assert_eq!(c.bdevs.len(), 4);
        assert_eq!(
            c.bdevs[1],
            BdevConfig::Null {
                name: "N0".into(),
                size: Size(1 << 40),
                block_size: 512,
                uuid: None
            }
        );
        // Round trip.
        let again = Config::parse(&c.to_yaml(), "again").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = Config::parse(
            "cores: [0]\nbdevs:\n  - type: malloc\n    name: M0\n    size: lots\n",
            "bad.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("bad.yaml:3:"), "{e}");
        assert!(
            e.contains("bdevs[0]: size: size `lots` does not start with a number"),
            "{e}"
        );
        let e = Config::parse("cores: [0]\nidle: sometimes\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.yaml:2:") && e.contains("idle"), "{e}");
        let e = Config::parse(
            "bdevs:\n  - {type: malloc, name: M0, size: 1M, colour: red}\n",
            "bad.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("colour") && e.starts_with("bad.yaml:2:"), "{e}");
        let e = Config::parse("bdevs:\n  - {type: tape, name: T}\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bdevs[0]: type: `tape`"), "{e}");
        let e = Config::parse(
            "bdevs:\n  - {type: error, name: E, base: nope}\n",
            "bad.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bdevs[0].base") && e.contains("nope"), "{e}");
        let e = Config::parse("cores: 0-\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cores"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_line() {
        let text = "cores: [0]\nbdevs:\n  - {type: malloc, name: M0, size: 1M}\npools:\n  - name: p\n    bdevs: [M0]\n  - name: q\n    bdevs: []\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:8:") && e.contains("pools[1].bdevs"),
            "{e}"
        );
        let text = "bdevs:\n  - {type: malloc, name: M0, size: 1M}\n  - {type: malloc, name: M0, size: 1M}\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:3:") && e.contains("bdevs[1].name"),
            "{e}"
        );
        let text = "nvmf:\n  subsystems:\n    - nqn: nqn.2016-06.io.x:a\n    - nqn: bad\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:4:") && e.contains("subsystems[1].nqn"),
            "{e}"
        );
        let text = "nbd:\n  listen: nowhere\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:2:") && e.contains("nbd.listen"),
            "{e}"
        );
        assert_eq!(
            locate_yaml("a:\n  b:\n    - x\n    - y\n", "a.b[1]"),
            Some(4)
        );
        assert_eq!(locate_yaml("a: 1\n", "zz"), None);
    }
}
