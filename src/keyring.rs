//! The keyring: named keys that TLS and in-band authentication refer to, as SPDK's
//! `keyring_file` module keeps them. A key is a name and the path of a file holding its
//! material; the file is checked when the key is added (an absolute path, no access for
//! group or others, owned by this process's user) and again each time the key is read,
//! which is the only moment its material is in memory. Nothing here logs, prints or
//! formats the material: [`Secret`] shows its length only, and zeroes itself when
//! dropped. The keyring is global: a name cannot name another keyring (`other:key`).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The largest key file read.
pub const MAX_KEY_BYTES: u64 = 8192;

/// Why a key could not be added, removed or read; [`KeyError::errno`] is SPDK's code.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "key `{name}`: the keyring is global; a name cannot name another keyring (`{prefix}:`)"
    )]
    OtherKeyring { name: String, prefix: String },
    #[error("key `{0}` already exists")]
    Exists(String),
    #[error("key `{0}` does not exist")]
    NoSuchKey(String),
    #[error("key `{name}`: the key file `{path}` is not an absolute path")]
    NotAbsolute { name: String, path: PathBuf },
    #[error("key `{name}`: cannot stat the key file `{path}`: {cause}")]
    Stat {
        name: String,
        path: PathBuf,
        cause: io::Error,
    },
    #[error(
        "key `{name}`: the key file `{path}` has mode {mode:04o}; group and others must have no access (chmod 600)"
    )]
    Mode {
        name: String,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "key `{name}`: the key file `{path}` belongs to uid {owner}, not to this process's uid {ours}"
    )]
    Owner {
        name: String,
        path: PathBuf,
        owner: u32,
        ours: u32,
    },
    #[error("key `{name}`: the key file `{path}` holds {size} bytes, more than {MAX_KEY_BYTES}")]
    TooBig {
        name: String,
        path: PathBuf,
        size: u64,
    },
    #[error("key `{name}`: cannot read the key file `{path}`: {cause}")]
    Read {
        name: String,
        path: PathBuf,
        cause: io::Error,
    },
}

impl KeyError {
    /// The errno SPDK answers with for the same failure.
    pub fn errno(&self) -> i32 {
        match self {
            KeyError::OtherKeyring { .. } => libc::EINVAL,
            KeyError::Exists(_) => libc::EEXIST,
            KeyError::NoSuchKey(_) => libc::ENOKEY,
            KeyError::NotAbsolute { .. } | KeyError::Mode { .. } | KeyError::Owner { .. } => {
                libc::EPERM
            }
            KeyError::Stat { cause, .. } => cause.raw_os_error().unwrap_or(libc::EIO),
            KeyError::TooBig { .. } => libc::ENOBUFS,
            KeyError::Read { .. } => libc::EIO,
        }
    }
}

/// A key's material, zeroed when dropped; its `Debug` shows its length only.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// The material.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// What `keyring_get_keys` says of a key (never its material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    pub path: PathBuf,
}

/// The target's keys.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: Mutex<BTreeMap<String, PathBuf>>,
}

/// Checks a key file as SPDK's `keyring_file` does; returns its size.
fn check_file(name: &str, path: &Path) -> Result<u64, KeyError> {
    if !path.is_absolute() {
        return Err(KeyError::NotAbsolute {
            name: name.into(),
            path: path.into(),
        });
    }
    let m = std::fs::metadata(path).map_err(|cause| KeyError::Stat {
        name: name.into(),
        path: path.into(),
        cause,
    })?;
    if m.mode() & 0o077 != 0 {
        return Err(KeyError::Mode {
            name: name.into(),
            path: path.into(),
            mode: m.mode() & 0o7777,
        });
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let ours = unsafe { libc::getuid() };
    if m.uid() != ours {
        return Err(KeyError::Owner {
            name: name.into(),
            path: path.into(),
            owner: m.uid(),
            ours,
        });
    }
    Ok(m.len())
}

impl Keyring {
    fn keys(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PathBuf>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `keyring_file_add_key`: adds key `name` held in the file at `path`.
    pub fn add_file_key(&self, name: &str, path: &Path) -> Result<(), KeyError> {
        if let Some((prefix, _)) = name.split_once(':')
            && !prefix.is_empty()
        {
            return Err(KeyError::OtherKeyring {
                name: name.into(),
                prefix: prefix.into(),
            });
        }
        let mut keys = self.keys();
        if keys.contains_key(name) {
            return Err(KeyError::Exists(name.into()));
        }
        check_file(name, path)?;
        keys.insert(name.into(), path.into());
        tracing::info!(key = name, path = %path.display(), "key added");
        Ok(())
    }

    /// `keyring_file_remove_key`.
    pub fn remove_key(&self, name: &str) -> Result<(), KeyError> {
        match self.keys().remove(name) {
            Some(_) => {
                tracing::info!(key = name, "key removed");
                Ok(())
            }
            None => Err(KeyError::NoSuchKey(name.into())),
        }
    }

    /// The keys, by name.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys()
            .iter()
            .map(|(name, path)| KeyInfo {
                name: name.clone(),
                path: path.clone(),
            })
            .collect()
    }

    /// Reads key `name`'s material, checking its file again first.
    pub fn read(&self, name: &str) -> Result<Secret, KeyError> {
        let path = self
            .keys()
            .get(name)
            .cloned()
            .ok_or_else(|| KeyError::NoSuchKey(name.into()))?;
        read_key_file(name, &path)
    }
}

/// Reads the key file at `path` after the keyring's checks (absolute, mode 0600 or
/// stricter, ours, at most [`MAX_KEY_BYTES`]); `name` is what errors call the key (a
/// keyring name, or the configuration field that names the file).
pub fn read_key_file(name: &str, path: &Path) -> Result<Secret, KeyError> {
    let size = check_file(name, path)?;
    if size > MAX_KEY_BYTES {
        return Err(KeyError::TooBig {
            name: name.into(),
            path: path.into(),
            size,
        });
    }
    let read = |cause| KeyError::Read {
        name: name.into(),
        path: path.into(),
        cause,
    };
    let mut buf = Zeroizing::new(Vec::with_capacity(size as usize));
    use std::io::Read;
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read)?;
    if buf.len() as u64 > MAX_KEY_BYTES {
        return Err(KeyError::TooBig {
            name: name.into(),
            path: path.into(),
            size: buf.len() as u64,
        });
    }
    Ok(Secret(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_key_file_is_checked_on_add_and_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let body = "NVMeTLSkey-1:01:MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmZwJEiQ:";
        let good = key_file(dir.path(), "good", body, 0o600);
        let open = key_file(dir.path(), "open", body, 0o644);
        let k = Keyring::default();
        k.add_file_key("key0", &good).unwrap();
        let s = k.read("key0").unwrap();
        assert_eq!(s.expose(), body.as_bytes());
        assert_eq!(format!("{s:?}"), format!("Secret({} bytes)", body.len()));
        assert_eq!(
            k.list(),
            [KeyInfo {
                name: "key0".into(),
                path: good.clone()
            }]
        );

        let e = k.add_file_key("key0", &good).unwrap_err();
        assert_eq!(e.errno(), libc::EEXIST, "{e}");
        let e = k.add_file_key("key1", &open).unwrap_err();
        assert_eq!(e.errno(), libc::EPERM, "{e}");
        assert!(e.to_string().contains("mode 0644"), "{e}");
        let e = k
            .add_file_key("key1", Path::new("relative/key"))
            .unwrap_err();
        assert_eq!(e.errno(), libc::EPERM, "{e}");
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = k
            .add_file_key("key1", &dir.path().join("missing"))
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
        let e = k.add_file_key("other:key1", &good).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{e}");
        // ":name" is the global keyring's own spelling.
        k.add_file_key(":key2", &good).unwrap();

        // Loosened after it was added: refused when read.
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = k.read("key0").unwrap_err();
        assert_eq!(e.errno(), libc::EPERM, "{e}");
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&good, vec![b'x'; MAX_KEY_BYTES as usize + 1]).unwrap();
        let e = k.read("key0").unwrap_err();
        assert_eq!(e.errno(), libc::ENOBUFS, "{e}");

        k.remove_key("key0").unwrap();
        let e = k.remove_key("key0").unwrap_err();
        assert_eq!(e.errno(), libc::ENOKEY, "{e}");
        let e = k.read("key0").unwrap_err();
        assert_eq!(e.errno(), libc::ENOKEY, "{e}");
        // No error names the material.
        for e in [
            k.add_file_key(":key2", &good).unwrap_err().to_string(),
            k.add_file_key("key3", &open).unwrap_err().to_string(),
        ] {
            assert!(!e.contains(body), "{e}");
        }
    }
}
